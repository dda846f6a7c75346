"""Named sources -> canonical records, grouped by split.

A source is built-in (`numeric`, `stories`), a Hugging Face hub dataset loaded with the real
`datasets.load_dataset` call (text: `tinystories`, `wikitext-103`, `openwebtext`, `fineweb`; examples: `alpaca`,
`dolly` for SFT, `rm-static`, `hh-rlhf` for preference pairs; `NAME:CONFIG` picks another of the dataset's configs;
`hf:NAME[:CONFIG]` is any hub dataset or local dataset folder), a local file (`path.txt`, `path.jsonl[:field]`,
`path.json[:field]`, `path.parquet[:field]`, the text and JSON ones also gzipped as `.gz`), or `pairs:SOURCE`:
preference pairs built from a text source's documents (`corpus_pairs`). `stream_source` yields a text source's
documents one at a time instead, for corpora larger than memory (the web sources, `hf:` text datasets and large
local text files).

Records are text `{"text"}` (numeric also has `"kind"`), SFT `{"id", "prompt", "response"}` or preference
`{"id", "prompt", "chosen", "rejected"}`; `SourceData.task` says which. A `.jsonl`/`.json` file whose first row is
not `{"text"}` is an example file: its layout is detected from that row and every row must share it; an `hf:`
dataset's layout is detected from its columns. The layouts (`example_rows`): instruction/input/output (Alpaca,
Dolly's context/response), prompt|input with response|output|completion or with chosen/rejected, chosen/rejected
dialogues without a prompt (Anthropic HH), and TRL's conversational rows (`messages`; prompt/completion or
chosen/rejected as message lists). Example rows are checked with `sft_record`/`pair_record`; a bad row stops the
load with its file and line (hub rows: `repo:split` and row number), or is reported on stderr and skipped with
`skip_bad_rows=True`.
"""

from __future__ import annotations

import gzip
import json
import random
import re
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from itertools import chain, islice
from pathlib import Path

from picolm.data.records import (CHAT_ROLES, BadRows, detect_task, pair_record, render_chat_prompt,
                                 render_instruction, sft_record)
from picolm.errors import PicolmError, first_line

Records = list[dict]


@dataclass
class SourceData:
    """Records by split: `{"all": [...]}` to be split by ratio, or the source's own train/validation/test."""

    splits: dict[str, Records]
    has_kinds: bool = False
    task: str = "text"  # text: {"text"} records; sft: {id, prompt, response}; dpo: {id, prompt, chosen, rejected}


class RowProblem(ValueError):
    """Raised by a row converter for a row that cannot be used; the loader hands it to `BadRows`."""

    def __init__(self, message: str, row_field: str | None = None):
        super().__init__(message)
        self.row_field = row_field


@dataclass(frozen=True)
class HubSource:
    repo: str
    config: str | None
    text_field: str | None  # text sources: the column holding the text
    splits: dict[str, str] = field(default_factory=dict)  # picolm split -> the dataset's; empty: by name (hf:NAME)
    streaming: bool = False
    wikitext_articles: bool = False  # WikiText stores one paragraph per row; regroup into articles
    task: str | None = "text"  # None: detected from the dataset's columns (hf:NAME)
    columns: tuple[str, ...] = ()  # example sources: the columns `example_rows` reads

    @property
    def needs(self) -> tuple[str, ...]:
        return self.columns or ((self.text_field,) if self.text_field else ())


# ---------------------------------------------------------------- example rows -> rows for sft_record/pair_record


def _string(row: dict, name: str, what: str) -> str:
    value = row.get(name)
    if not isinstance(value, str):
        found = ", ".join(sorted(k for k, v in row.items() if v is not None)) or "no fields"
        raise RowProblem(f"{what}: expected a string {name!r}, found {found}", row_field=name)
    return value


def instruction_row(row: dict, instruction: str = "instruction", input: str = "input",
                    output: str = "output") -> dict:
    """An Alpaca-style row -> `{prompt, response}`, the prompt rendered with `render_instruction`."""
    text = _string(row, instruction, "instruction row")
    if not text.strip():
        raise RowProblem("empty instruction", row_field=instruction)
    context = row.get(input)
    if context is not None and not isinstance(context, str):
        raise RowProblem("expected a string", row_field=input)
    return {"prompt": render_instruction(text, context or ""),
            "response": _string(row, output, "instruction row")}


ASSISTANT_MARK = "\n\nAssistant:"


def transcript_pair(row: dict) -> dict:
    """Two full transcripts (Anthropic HH) -> the shared conversation up to and including the chosen transcript's
    last "\\n\\nAssistant:" as the prompt, and the rest of each as chosen and rejected."""
    chosen, rejected = _string(row, "chosen", "transcript pair"), _string(row, "rejected", "transcript pair")
    cut = chosen.rfind(ASSISTANT_MARK)
    if cut < 0:
        raise RowProblem("no '\\n\\nAssistant:' turn in the chosen transcript (a preference row without a prompt "
                         "holds two whole '\\n\\nHuman: ... \\n\\nAssistant: ...' dialogues)", row_field="chosen")
    prompt = chosen[:cut + len(ASSISTANT_MARK)]
    if not rejected.startswith(prompt):
        raise RowProblem("chosen and rejected transcripts differ before the last assistant turn",
                         row_field="rejected")
    return {"prompt": prompt, "chosen": chosen[len(prompt):], "rejected": rejected[len(prompt):]}


def checked_messages(messages, name: str) -> list[dict]:
    """A list of `{role, content}` messages with known roles, or a `RowProblem` naming the field."""
    if not isinstance(messages, list):
        raise RowProblem("expected a list of {role, content} messages", row_field=name)
    for number, message in enumerate(messages, start=1):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise RowProblem(f"message {number}: expected an object with role and content strings", row_field=name)
        if message.get("role") not in CHAT_ROLES:
            raise RowProblem(f"message {number}: unknown role {message.get('role')!r} "
                             f"(use {', '.join(CHAT_ROLES)})", row_field=name)
    return messages


def chat_rows(messages) -> list[dict]:
    """One `{prompt, response}` per assistant turn: the conversation before it, rendered, then "<|assistant|>\\n"."""
    messages = checked_messages(messages, "messages")
    for number, message in enumerate(messages, start=1):
        if message["role"] == "assistant" and not message["content"].strip():
            raise RowProblem(f"message {number}: empty assistant turn", row_field="messages")
    rows = [{"prompt": render_chat_prompt(messages[:i]), "response": m["content"]}
            for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not rows:
        raise RowProblem("no assistant turn", row_field="messages")
    return rows


def _reply(messages: list[dict], name: str) -> str:
    """The one assistant message that answers a conversational prompt."""
    if len(messages) != 1 or messages[0]["role"] != "assistant":
        found = ", ".join(m["role"] for m in messages) or "nothing"
        raise RowProblem(f"expected one assistant message after the prompt, found {found}", row_field=name)
    return messages[0]["content"]


def conversation_completion(row: dict) -> dict:
    """TRL's conversational prompt-completion row -> `{prompt, response}` in the chat template."""
    return {"prompt": render_chat_prompt(checked_messages(row["prompt"], "prompt")),
            "response": _reply(checked_messages(row.get("completion"), "completion"), "completion")}


def conversation_pair(row: dict) -> dict:
    """TRL's conversational preference row -> `{prompt, chosen, rejected}`: the prompt is the row's `prompt`
    messages, else the messages chosen and rejected share (TRL's implicit prompt), in the chat template; chosen and
    rejected are the assistant replies after it."""
    chosen, rejected = checked_messages(row.get("chosen"), "chosen"), checked_messages(row.get("rejected"), "rejected")
    if chosen == rejected:
        raise RowProblem("chosen and rejected are identical: the pair teaches nothing", row_field="rejected")
    if "prompt" in row:
        prompt = checked_messages(row["prompt"], "prompt")
    else:
        shared = 0
        while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
            shared += 1
        prompt, chosen, rejected = chosen[:shared], chosen[shared:], rejected[shared:]
    return {"prompt": render_chat_prompt(prompt), "chosen": _reply(chosen, "chosen"),
            "rejected": _reply(rejected, "rejected")}


def example_rows(row: dict, task: str, index: int) -> list[dict]:
    """An example row in any accepted layout -> rows for sft_record/pair_record, keeping the row's id."""
    base = row.get("id", index)
    if task == "sft" and "messages" in row:
        return [{**r, "id": f"{base}-{turn}"} for turn, r in enumerate(chat_rows(row["messages"]))]
    if task == "sft" and "instruction" in row:
        converted = instruction_row(row, input="context" if "context" in row and "input" not in row else "input",
                                    output="response" if "response" in row and "output" not in row else "output")
    elif task == "sft" and isinstance(row.get("prompt"), list):
        converted = conversation_completion(row)
    elif task == "dpo" and any(isinstance(row.get(name), list) for name in ("prompt", "chosen", "rejected")):
        converted = conversation_pair(row)
    elif task == "dpo" and "prompt" not in row and "input" not in row:
        converted = transcript_pair(row)
    else:
        return [row]
    return [{**converted, "id": base}]


def _checked(task: str, rows: Callable[[], list[dict]], bad: BadRows, path, line: int, index: int) -> Records:
    """Rows from a converter, checked with `sft_record`/`pair_record`; a problem goes to `bad`."""
    try:
        converted = rows()
    except RowProblem as problem:
        bad.reject(str(problem), path=path, line=line, row_field=problem.row_field)
        return []
    check = sft_record if task == "sft" else pair_record
    records = [check(row, bad, path=path, line=line, index=index) for row in converted]
    return [r for r in records if r is not None]


# ---------------------------------------------------------------- sources

HUB_SOURCES = {
    "tinystories": HubSource("roneneldan/TinyStories", None, "text", {"train": "train", "validation": "validation"}),
    "wikitext-103": HubSource("Salesforce/wikitext", "wikitext-103-raw-v1", "text",
                              {"train": "train", "validation": "validation", "test": "test"},
                              wikitext_articles=True),
    "openwebtext": HubSource("Skylion007/openwebtext", None, "text", {"train": "train"}, streaming=True),
    "fineweb": HubSource("HuggingFaceFW/fineweb", "sample-10BT", "text", {"train": "train"}, streaming=True),
    # example sources, read by `example_rows`; a dataset's only held-out split becomes picolm's validation (halved
    # into val and test)
    "alpaca": HubSource("tatsu-lab/alpaca", None, None, {"train": "train"}, task="sft",
                        columns=("instruction", "input", "output")),
    "dolly": HubSource("databricks/databricks-dolly-15k", None, None, {"train": "train"}, task="sft",
                       columns=("instruction", "context", "response")),
    "rm-static": HubSource("Dahoas/rm-static", None, None, {"train": "train", "validation": "test"}, task="dpo",
                           columns=("prompt", "chosen", "rejected")),
    "hh-rlhf": HubSource("Anthropic/hh-rlhf", None, None, {"train": "train", "validation": "test"}, task="dpo",
                         columns=("chosen", "rejected")),
}
HF_PREFIX = "hf:"
VALIDATION_NAMES = ("validation", "valid", "dev", "val")  # an hf: dataset's validation split, by these names
BUILTIN_SOURCES = ("numeric", "stories", "horror-sft", "horror-dpo")
TALES_PER_STORY = 1 / 6  # the story corpus mixes in horror and wholesome tales, so a base model knows both registers
SEED_OFFSETS = {"stories": 0, "horror-sft": 1, "horror-dpo": 2}  # different specs for each built-in source
PAIRS_PREFIX = "pairs:"
WIKITEXT_TITLE = re.compile(r"^ = [^=].* = $")
BLANK_LINE = re.compile(r"\n[ \t]*\n")
FIELD_SUFFIX = re.compile(r"^(?P<path>.+\.(?:jsonl|json|parquet)(?:\.gz)?):(?P<field>[^/\\]+)$")
JSON_SPACE = re.compile(r"[ \t\n\r]*")
TEXT_PROBE_BYTES = 1 << 20  # streamed .txt files: the layout (blocks or lines) is decided on this much
LAYOUTS = ("text; instruction with output; prompt (or input) with response (or output or completion); "
           "prompt (or input) with chosen and rejected; chosen and rejected dialogues; or messages")


def _file_kind(path: Path) -> str:
    """The suffix that says what a file holds, seen through a `.gz`: "x.jsonl.gz" -> ".jsonl"."""
    return Path(path.stem).suffix.lower() if path.suffix.lower() == ".gz" else path.suffix.lower()


def _raw_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """`(line number, bytes)` for each line of a file, decompressed as it is read when its name ends in `.gz`."""
    if path.suffix.lower() != ".gz":
        with path.open("rb") as f:
            yield from enumerate(f, start=1)
        return
    try:
        with gzip.open(path, "rb") as f:
            yield from enumerate(f, start=1)
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise PicolmError(f"not a readable gzip file ({exc})", path=path) from None


def _text_lines(path: Path) -> Iterator[str]:
    """The file's lines, decoded as UTF-8 (a bad byte is named by its line), without line ends."""
    for number, raw in _raw_lines(path):
        try:
            yield raw.decode("utf-8-sig" if number == 1 else "utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            raise PicolmError("not UTF-8 text", path=path, line=number) from None


def _blocks(lines: list[str]) -> list[str]:
    return [b.strip() for b in BLANK_LINE.split("\n".join(lines)) if b.strip()]


def _paragraph_layout(blocks: list[str]) -> bool:
    """Whether a text holds blank-line-separated documents: several blocks, some spanning several lines."""
    return len(blocks) > 1 and any("\n" in b for b in blocks)


def read_text_file(path: Path) -> Records:
    """One document per blank-line-separated block when there are several blocks and some span several
    lines, else one document per line."""
    lines = list(_text_lines(path))
    blocks = _blocks(lines)
    docs = blocks if _paragraph_layout(blocks) else [line.strip() for line in lines]
    records = [{"text": d} for d in docs if d]
    if not records:
        raise PicolmError("file holds no text", path=path)
    return records


def stream_text_file(path: Path, probe_bytes: int = TEXT_PROBE_BYTES) -> Iterator[str]:
    """`read_text_file`'s documents, one at a time: the layout rule is applied to the first `probe_bytes`."""
    lines = _text_lines(path)
    head, size = [], 0
    for line in lines:
        head.append(line)
        size += len(line) + 1
        if size >= probe_bytes:
            break
    if not _paragraph_layout(_blocks(head)):
        yield from (line.strip() for line in chain(head, lines) if line.strip())
        return
    block: list[str] = []
    for line in chain(head, lines, [""]):
        if line.strip(" \t"):
            block.append(line)
        elif block:
            if text := "\n".join(block).strip():
                yield text
            block = []


def _json_array_start(path: Path) -> bool:
    """Whether the file's first non-blank character is "[" (a JSON array rather than JSON Lines)."""
    for _, raw in _raw_lines(path):
        stripped = raw.lstrip(b"\xef\xbb\xbf \t\r\n")
        if stripped:
            return stripped.startswith(b"[")
    return False


def _json_array_rows(path: Path) -> Iterator[tuple[int, object]]:
    data = b"".join(raw for _, raw in _raw_lines(path))
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PicolmError("not UTF-8 text", path=path, line=data[:exc.start].count(b"\n") + 1) from None
    decoder, line, seen = json.JSONDecoder(), 1, 0
    pos = JSON_SPACE.match(text, text.index("[") + 1).end()
    if text.startswith("]", pos):
        pos += 1
    else:
        while True:
            try:
                row, end = decoder.raw_decode(text, pos)
            except json.JSONDecodeError as exc:
                raise PicolmError(f"not valid JSON ({exc.msg})", path=path, line=exc.lineno) from None
            line, seen = line + text.count("\n", seen, pos), pos
            yield line, row
            pos = JSON_SPACE.match(text, end).end()
            if text.startswith(",", pos):
                pos = JSON_SPACE.match(text, pos + 1).end()
                continue
            if text.startswith("]", pos):
                pos += 1
                break
            raise PicolmError("not valid JSON (expected ',' or ']' after a row)", path=path,
                              line=text.count("\n", 0, pos) + 1)
    if JSON_SPACE.match(text, pos).end() != len(text):
        raise PicolmError("not valid JSON (extra data after the array)", path=path, line=text.count("\n", 0, pos) + 1)


def read_json_rows(path: Path) -> Iterator[tuple[int, object]]:
    """`(line, row)` for each row of a JSON Lines file, or of a `.json` file holding one array of rows (either
    gzipped when its name ends in `.gz`)."""
    if _file_kind(path) == ".json" and _json_array_start(path):
        yield from _json_array_rows(path)
        return
    for number, raw in _raw_lines(path):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8-sig" if number == 1 else "utf-8"))
        except UnicodeDecodeError:
            raise PicolmError("not UTF-8 text", path=path, line=number) from None
        except json.JSONDecodeError as exc:
            raise PicolmError(f"not valid JSON ({exc.msg})", path=path, line=number) from None
        yield number, row


def _row_texts(rows: Iterable[tuple[int, object]], path: Path, text_field: str, bad: BadRows,
               layout_hint: bool = False) -> Iterator[str]:
    for number, row in rows:
        if not isinstance(row, dict) or text_field not in row:
            layout = detect_task(row) if layout_hint and isinstance(row, dict) else None
            hint = (f" (this row holds {layout} example fields, but the file's first row is text; every row must share "
                    "one layout)" if layout and layout != "text" else "")
            bad.reject(f"no field {text_field!r}{hint}", path=path, line=number, row_field=text_field)
        elif not isinstance(row[text_field], str):
            bad.reject("expected a string", path=path, line=number, row_field=text_field)
        elif row[text_field].strip():
            yield row[text_field]


def _text_records(rows: Iterable[tuple[int, object]], path: Path, text_field: str, bad: BadRows,
                  layout_hint: bool = False) -> Records:
    records = [{"text": t} for t in _row_texts(rows, path, text_field, bad, layout_hint)]
    if not records:
        raise PicolmError("file holds no text", path=path)
    return records


def read_jsonl_file(path: Path, text_field: str, bad: BadRows | None = None) -> Records:
    """Text records from one field of each row of a JSON Lines (or `.json` array) file."""
    return _text_records(read_json_rows(path), path, text_field, bad or BadRows())


def read_example_file(path: Path, bad: BadRows) -> SourceData:
    """A `.jsonl`/`.json` file, its layout detected from the first row: text, sft or dpo records."""
    rows = read_json_rows(path)
    task, seen = None, False
    for number, row in rows:
        seen = True
        task = detect_task(row) if isinstance(row, dict) else None
        if task == "text":
            return SourceData({"all": _text_records(chain([(number, row)], rows), path, "text", bad,
                                                    layout_hint=True)})
        if task is not None:
            rows = chain([(number, row)], rows)
            break
        found = ", ".join(sorted(row)) if isinstance(row, dict) else f"a JSON {type(row).__name__}"
        bad.reject(f"unknown row layout: expected {LAYOUTS}; found {found or 'no fields'}", path=path, line=number)
    if task is None:
        raise PicolmError("file holds no usable rows" if seen else "file holds no text", path=path)
    records: Records = []
    for index, (number, row) in enumerate(rows):
        layout = detect_task(row) if isinstance(row, dict) else None
        if layout != task:
            found = ", ".join(sorted(row)) if isinstance(row, dict) else f"a JSON {type(row).__name__}"
            bad.reject(f"row layout is {layout or 'unknown'} ({found or 'no fields'}), but the file's first row is "
                       f"{task}; every row must share one layout", path=path, line=number)
            continue
        records += _checked(task, partial(example_rows, row, task, index), bad, path, number, index)
    if not records:
        raise PicolmError("file holds no usable examples", path=path)
    return SourceData({"all": records}, task=task)


def read_parquet_file(path: Path, text_field: str) -> Records:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path, columns=[text_field])
    except KeyError:
        raise PicolmError(f"no column {text_field!r}", path=path, field=text_field) from None
    except Exception as exc:  # pyarrow raises several types for unreadable files
        if "No match for FieldRef" in str(exc):
            raise PicolmError(f"no column {text_field!r}", path=path, field=text_field) from None
        raise PicolmError(f"not a readable parquet file ({exc})", path=path) from None
    records = [{"text": t} for t in table.column(text_field).to_pylist() if isinstance(t, str) and t.strip()]
    if not records:
        raise PicolmError("file holds no text", path=path)
    return records


def _split_field(spec: str, default: str | None) -> tuple[Path, str | None]:
    """`data/x.jsonl:body` -> (data/x.jsonl, "body"); colons elsewhere in the path are kept."""
    match = FIELD_SUFFIX.match(spec)
    return (Path(match["path"]), match["field"]) if match else (Path(spec), default)


def load_local(spec: str, bad: BadRows | None = None) -> SourceData:
    """A local file: text, or, for a `.jsonl`/`.json` file without a `:field`, whatever layout its rows have."""
    bad = bad if bad is not None else BadRows()
    path, text_field = _split_field(spec, None)
    if not path.exists():
        raise PicolmError("no such file", path=path)
    if path.is_dir():
        raise PicolmError("is a directory; name a .txt, .jsonl, .json or .parquet file, or pass hf:FOLDER for a "
                          "dataset folder", path=path)
    suffix = _file_kind(path)
    if suffix in (".jsonl", ".json"):
        return SourceData({"all": read_jsonl_file(path, text_field, bad)}) if text_field else \
            read_example_file(path, bad)
    if suffix == ".parquet":
        return SourceData({"all": read_parquet_file(path, text_field or "text")})
    return SourceData({"all": read_text_file(path)})


def stream_parquet_file(path: Path, text_field: str, batch_rows: int = 1024) -> Iterator[str]:
    """The non-blank texts of one column, read a batch of rows at a time."""
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for unreadable files
        raise PicolmError(f"not a readable parquet file ({exc})", path=path) from None
    if text_field not in file.schema_arrow.names:
        raise PicolmError(f"no column {text_field!r}", path=path, field=text_field)
    for batch in file.iter_batches(batch_size=batch_rows, columns=[text_field]):
        yield from (t for t in batch.column(0).to_pylist() if isinstance(t, str) and t.strip())


def stream_local(spec: str) -> Iterator[str]:
    """The documents of a local `.txt`, `.jsonl[:field]` or `.parquet[:field]` text file, one at a time."""
    path, text_field = _split_field(spec, "text")
    if not path.is_file():
        raise PicolmError("no such file" if not path.exists() else "is not a file", path=path)
    suffix = _file_kind(path)
    if suffix == ".jsonl":
        return _row_texts(read_json_rows(path), path, text_field, BadRows(), layout_hint=True)
    if suffix == ".parquet":
        return stream_parquet_file(path, text_field)
    if suffix == ".json":
        raise PicolmError("streaming reads JSON Lines (.jsonl) files, not .json", path=path)
    return stream_text_file(path)


def _wikitext_articles(lines: Iterator[str]) -> Iterator[str]:
    article: list[str] = []
    for line in lines:
        if WIKITEXT_TITLE.match(line) and article:
            yield "".join(article).strip()
            article = []
        article.append(line)
    if article:
        yield "".join(article).strip()


def _hub_texts(rows, source: HubSource, limit: int | None) -> Iterator[str]:
    texts = (row[source.text_field] for row in rows)
    if source.wikitext_articles:
        texts = _wikitext_articles(texts)
    count = 0
    for text in texts:
        if text.strip():
            yield text
            count += 1
            if limit is not None and count >= limit:
                return


def _hub_examples(rows, source: HubSource, split: str, bad: BadRows, limit: int | None) -> Records:
    """Checked example records from a split's rows; a bad row is named `repo:split` and its row number."""
    records: Records = []
    where = f"{source.repo}:{split}"
    for index, row in enumerate(rows):
        records += _checked(source.task, partial(example_rows, row, source.task, index), bad, where, index + 1, index)
        if limit is not None and len(records) >= limit:
            return records[:limit]
    return records


def hub_source(spec: str, text_field: str | None = None) -> HubSource | None:
    """The hub dataset a spec names, or None: `NAME[:CONFIG]` is a known source (CONFIG: another of its dataset's
    configs), `hf:NAME[:CONFIG]` any hub dataset or local dataset folder, its text in the column `text_field` or,
    without one, its layout read from its columns."""
    if spec.startswith(HF_PREFIX):
        name, _, config = spec[len(HF_PREFIX):].partition(":")
        if not name:
            raise PicolmError("name a dataset, as in hf:roneneldan/TinyStories or hf:Salesforce/wikitext:"
                              "wikitext-2-raw-v1", field=spec)
        return HubSource(name, config or None, text_field, task="text" if text_field else None)
    name, _, config = spec.partition(":")
    source = HUB_SOURCES.get(name)
    return replace(source, config=config) if source is not None and config else source


def _unloadable(spec: str, what: str, exc: Exception, local: bool) -> PicolmError:
    if local:
        return PicolmError(f"could not load {what} from the local copy ({first_line(exc)}); --hub-dir takes a folder "
                           "of the dataset's files, laid out as on the hub", field=spec)
    return PicolmError(f"could not load {what} ({first_line(exc)}); without internet, download it first or pass "
                       "--hub-dir with a local copy", field=spec)


def _hub_split(spec: str, source: HubSource, path: str, config: str | None, split: str, local: bool):
    """One split through `datasets.load_dataset`; every failure becomes one clear line."""
    import datasets

    try:
        rows = datasets.load_dataset(path, config, split=split, streaming=source.streaming)
    except Exception as exc:  # network, missing split, schema: all become one clear line
        raise _unloadable(spec, f"{source.repo} split {split!r}", exc, local) from None
    for column in source.needs:
        if column not in (rows.column_names or [column]):  # streaming datasets may not know their columns
            raise PicolmError(f"dataset has no field {column!r}", path=path, field=column)
    return rows


def _split_plan(spec: str, source: HubSource, path: str, config: str | None, local: bool,
                use_source_splits: bool) -> dict[str, str]:
    """picolm split -> the dataset's split. A local copy or an hf: dataset is asked which splits it holds (an hf:
    dataset's are found by name); to be re-split (`use_source_splits=False`), every split it holds is loaded."""
    if source.splits and not local:
        return source.splits
    import datasets

    try:
        held = list(datasets.get_dataset_split_names(path, config))
    except Exception as exc:  # as in _hub_split
        raise _unloadable(spec, f"the splits of {source.repo}", exc, local) from None
    if not use_source_splits:
        return {name: name for name in held}
    if source.splits:
        plan = source.splits
    else:
        held_out = [next((n for n in VALIDATION_NAMES if n in held), None), "test" if "test" in held else None]
        plan = dict(zip(("train", "validation", "test"), ["train", *filter(None, held_out)]))
    missing = [repr(theirs) for theirs in plan.values() if theirs not in held]
    if missing:
        raise PicolmError(f"{'the local copy' if local else source.repo} has no {' or '.join(missing)} split (it "
                          f"holds {', '.join(held) or 'none'}); pass --split-ratios to re-split what it holds",
                          field=spec)
    return plan


def _with_layout(spec: str, source: HubSource, rows) -> HubSource:
    """An hf: dataset without a named text field: its task, read from its columns as a local file's from its rows."""
    if source.task is not None:
        return source
    columns = rows.column_names or []
    task = detect_task(dict.fromkeys(columns))
    if task is None:
        raise PicolmError(f"no text column and no example layout ({LAYOUTS}) in its columns "
                          f"({', '.join(columns) or 'none known'}); name the text column with --field", field=spec)
    return replace(source, task=task, text_field="text" if task == "text" else None)


def load_hub(spec: str, hub_dir: str | None = None, limit: int | None = None, bad: BadRows | None = None,
             text_field: str | None = None, use_source_splits: bool = True) -> SourceData:
    """Load a hub dataset (`hub_source`) with `datasets.load_dataset`; `hub_dir` points the same call at a local
    copy. `limit` caps the documents (or example records) per split. With `use_source_splits=False`, every split
    of the dataset or copy is loaded, to be merged and re-split: a copy holding only some splits is usable."""
    source = hub_source(spec, text_field)
    bad = bad if bad is not None else BadRows()
    path, config = (hub_dir, None) if hub_dir else (source.repo, source.config)
    splits = {}
    for ours, theirs in _split_plan(spec, source, path, config, bool(hub_dir), use_source_splits).items():
        rows = _hub_split(spec, source, path, config, theirs, bool(hub_dir))
        source = _with_layout(spec, source, rows)
        splits[ours] = ([{"text": t} for t in _hub_texts(rows, source, limit)] if source.task == "text"
                        else _hub_examples(rows, source, theirs, bad, limit))
    return SourceData(splits if len(splits) > 1 else {"all": next(iter(splits.values()))}, task=source.task)


def stream_hub(spec: str, source: HubSource, hub_dir: str | None = None) -> Iterator[str]:
    """The documents of a hub text source's train split, read through `datasets`' streaming mode."""
    path, config = (hub_dir, None) if hub_dir else (source.repo, source.config)
    split = _split_plan(spec, source, path, config, bool(hub_dir), True)["train"]
    rows = _hub_split(spec, replace(source, streaming=True), path, config, split, bool(hub_dir))
    return _hub_texts(rows, source, None)


def load_builtin(name: str, options: dict) -> SourceData:
    if name == "numeric":
        from picolm.data.synthetic import NumericSpec, generate_numeric

        spec = NumericSpec(**{k: v for k, v in options.items() if v is not None and k in NumericSpec.__annotations__})
        return SourceData({"all": generate_numeric(spec)}, has_kinds=True)
    from picolm.data import specs
    from picolm.data.stories import DEFAULT_NUM_STORIES, generate_stories

    seed = options.get("seed", 0) * len(SEED_OFFSETS) + SEED_OFFSETS[name]
    if name == "horror-sft":
        return SourceData({"all": specs.generate_sft_rows(options.get("num_sequences") or specs.DEFAULT_SFT_ROWS,
                                                          seed=seed)}, task="sft")
    if name == "horror-dpo":
        count = options.get("num_sequences") or specs.DEFAULT_PREFERENCE_ROWS
        return SourceData({"all": specs.generate_preference_rows(count, seed=seed)}, task="dpo")
    count = options.get("num_sequences") or DEFAULT_NUM_STORIES
    texts = generate_stories(count, seed=seed) + specs.generate_tales(round(count * TALES_PER_STORY), seed=seed)
    random.Random(seed).shuffle(texts)
    return SourceData({"all": [{"text": t} for t in texts]})


# ---------------------------------------------------------------- preference pairs from a text corpus

PAIR_MIN_WORDS = 4  # shorter documents are skipped
PAIR_PROMPT_WORDS = (8, 240)  # the prompt is the first third of the words, within these bounds (at most half)
PAIR_CONTINUATION_WORDS = 120  # the chosen continuation is at most this long
WORD = re.compile(r"\S+")
SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+")


def _shuffled_sentences(continuation: str, rng: random.Random) -> str | None:
    """The continuation's sentences in another order, or None when it has fewer than 3 or order cannot show."""
    body = continuation.lstrip()
    sentences = SENTENCE_BREAK.split(body)
    if len(sentences) < 3:
        return None
    order = list(range(len(sentences)))
    rng.shuffle(order)
    if order == sorted(order):
        order = order[1:] + order[:1]
    shuffled = " ".join(sentences[i] for i in order)
    if shuffled == " ".join(sentences):  # repeated sentences: no order to get wrong
        return None
    return continuation[:len(continuation) - len(body)] + shuffled


def _other_continuation(docs: list[tuple[int, str, str]], n: int, rng: random.Random) -> str | None:
    """Another document's continuation that differs from document n's, or None when there is none."""
    if len(docs) < 2:
        return None
    start = rng.randrange(len(docs) - 1)
    start += start >= n
    for j in (*range(start, len(docs)), *range(start)):
        if j != n and docs[j][2] != docs[n][2]:
            return docs[j][2]
    return None


def corpus_pairs(records: Records, seed: int = 0) -> Records:
    """Preference pairs from documents: prompt = a document's first third (at least 8 words, or half of a shorter
    document, such as a numeric sequence), chosen = its true continuation, rejected = that continuation with its
    sentences shuffled, or another document's continuation."""
    docs = []  # (record index, prompt, continuation)
    for index, record in enumerate(records):
        text = record["text"]
        ends = [m.end() for m in WORD.finditer(text)]
        if len(ends) < PAIR_MIN_WORDS:
            continue
        low, high = PAIR_PROMPT_WORDS
        cut = min(max(len(ends) // 3, min(low, len(ends) // 2)), high)
        stop = min(len(ends), cut + PAIR_CONTINUATION_WORDS)
        docs.append((index, text[:ends[cut - 1]], text[ends[cut - 1]:ends[stop - 1]]))
    rng = random.Random(seed)
    pairs = []
    for n, (index, prompt, chosen) in enumerate(docs):
        shuffled = _shuffled_sentences(chosen, rng)
        rejected = shuffled if shuffled is not None and rng.random() < 0.5 else None
        rejected = rejected or _other_continuation(docs, n, rng) or shuffled
        if rejected is not None:
            pairs.append({"id": str(index), "prompt": prompt, "chosen": chosen, "rejected": rejected})
    return pairs


def load_pairs(spec: str, options: dict, hub_dir: str | None, limit: int | None, bad: BadRows,
               use_source_splits: bool = True) -> SourceData:
    """`pairs:SOURCE`: `corpus_pairs` on each split of a text source, seeded by `options["seed"]`."""
    inner = spec[len(PAIRS_PREFIX):]
    if not inner:
        raise PicolmError("name the text source to build pairs from, as in pairs:stories", field=spec)
    data = _load(inner, options, hub_dir, limit, bad, use_source_splits)
    if data.task != "text":
        raise PicolmError(f"pairs are built from a text source; {inner} holds {data.task} examples", field=spec)
    splits = {name: corpus_pairs(records, options.get("seed") or 0) for name, records in data.splits.items()}
    empty = [name for name, pairs in splits.items() if not pairs]
    if empty:
        raise PicolmError(f"no pairs in the {'/'.join(empty)} split: documents need at least {PAIR_MIN_WORDS} "
                          "words and a continuation that differs from another's", field=spec)
    return SourceData(splits, task="dpo")


# ---------------------------------------------------------------- any source by name


def _load(spec: str, options: dict, hub_dir: str | None, limit: int | None, bad: BadRows,
          use_source_splits: bool = True) -> SourceData:
    if spec.startswith(PAIRS_PREFIX):
        return load_pairs(spec, options, hub_dir, limit, bad, use_source_splits)
    if spec in BUILTIN_SOURCES:
        return load_builtin(spec, options)
    if hub_source(spec) is not None:
        return load_hub(spec, hub_dir, limit, bad, options.get("text_field"), use_source_splits)
    if Path(_split_field(spec, None)[0]).suffix or Path(spec).exists():
        return load_local(spec, bad)
    text = ", ".join(BUILTIN_SOURCES + tuple(n for n, s in HUB_SOURCES.items() if s.task == "text"))
    examples = ", ".join(n for n, s in HUB_SOURCES.items() if s.task != "text")
    raise PicolmError(f"unknown source; use one of {text} (text), {examples} (examples), {HF_PREFIX}NAME[:CONFIG] "
                      f"(any hub dataset), {PAIRS_PREFIX}SOURCE (preference pairs from a text source), or a "
                      ".txt/.jsonl/.json/.parquet file", field=spec)


def stream_source(spec: str, hub_dir: str | None = None, limit: int | None = None,
                  text_field: str | None = None) -> Iterator[str]:
    """A text source's documents one at a time, never held together: the web sources and hf: datasets (their
    `text_field`, default "text") through `datasets`' streaming mode, local text files line by line; at most
    `limit` of them."""
    source = hub_source(spec, text_field or "text")
    if source is not None and (source.streaming or spec.startswith(HF_PREFIX)):
        texts = stream_hub(spec, source, hub_dir)
    elif source is None and spec not in BUILTIN_SOURCES and not spec.startswith(PAIRS_PREFIX):
        texts = stream_local(spec)
    else:
        web = ", ".join(n for n, s in HUB_SOURCES.items() if s.streaming)
        raise PicolmError(f"streaming reads the web sources ({web}), {HF_PREFIX}NAME text datasets and local .txt, "
                          ".jsonl and .parquet text files; prepare this source without --stream", field=spec)
    return islice(texts, limit)


def load_source(spec: str, options: dict | None = None, hub_dir: str | None = None, limit: int | None = None,
                skip_bad_rows: bool = False, use_source_splits: bool = True) -> SourceData:
    """A source's records by split; with `skip_bad_rows`, unusable example rows are dropped and listed on
    stderr instead of stopping the load. `options`: the built-in sources' settings (`num_sequences`, `seed`, ...)
    and `text_field`, an hf: dataset's text column. `use_source_splits=False`: the splits will be merged and re-split
    (see `load_hub`)."""
    bad = BadRows(skip=skip_bad_rows)
    data = _load(spec, options or {}, hub_dir, limit, bad, use_source_splits)
    bad.report()
    return data
