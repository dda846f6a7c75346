"""Named sources -> canonical records `{"text": ..., ["kind": ...]}`, grouped by split.

A source is built-in (`numeric`, `stories`), a Hugging Face hub dataset loaded with the real
`datasets.load_dataset` call (`tinystories`, `wikitext-103`, `openwebtext`, `fineweb`), or a local
file (`path.txt`, `path.jsonl[:field]`, `path.parquet[:field]`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from picolm.errors import PicolmError

Records = list[dict]


@dataclass
class SourceData:
    """Records by split: `{"all": [...]}` to be split by ratio, or the source's own train/validation/test."""

    splits: dict[str, Records]
    has_kinds: bool = False
    task: str = "text"  # text: {"text"} records; sft: {id, prompt, response}; dpo: {id, prompt, chosen, rejected}


@dataclass(frozen=True)
class HubSource:
    repo: str
    config: str | None
    text_field: str
    splits: dict[str, str] = field(default_factory=dict)  # picolm split -> the dataset's split
    streaming: bool = False
    wikitext_articles: bool = False  # WikiText stores one paragraph per row; regroup into articles


HUB_SOURCES = {
    "tinystories": HubSource("roneneldan/TinyStories", None, "text", {"train": "train", "validation": "validation"}),
    "wikitext-103": HubSource("Salesforce/wikitext", "wikitext-103-raw-v1", "text",
                              {"train": "train", "validation": "validation", "test": "test"},
                              wikitext_articles=True),
    "openwebtext": HubSource("Skylion007/openwebtext", None, "text", {"train": "train"}, streaming=True),
    "fineweb": HubSource("HuggingFaceFW/fineweb", "sample-10BT", "text", {"train": "train"}, streaming=True),
}
BUILTIN_SOURCES = ("numeric", "stories")
WIKITEXT_TITLE = re.compile(r"^ = [^=].* = $")
BLANK_LINE = re.compile(r"\n[ \t]*\n")
FIELD_SUFFIX = re.compile(r"^(?P<path>.+\.(?:jsonl|json|parquet)):(?P<field>[^/\\]+)$")


def read_text_file(path: Path) -> Records:
    """One document per blank-line-separated block when there are several blocks and some span several
    lines, else one document per line."""
    lines = []
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                lines.append(raw.decode("utf-8-sig" if number == 1 else "utf-8").rstrip("\r\n"))
            except UnicodeDecodeError:
                raise PicolmError("not UTF-8 text", path=path, line=number) from None
    blocks = [b.strip() for b in BLANK_LINE.split("\n".join(lines)) if b.strip()]
    paragraphs = len(blocks) > 1 and any("\n" in b for b in blocks)
    docs = blocks if paragraphs else [line.strip() for line in lines]
    records = [{"text": d} for d in docs if d]
    if not records:
        raise PicolmError("file holds no text", path=path)
    return records


def read_jsonl_file(path: Path, text_field: str) -> Records:
    records = []
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8-sig" if number == 1 else "utf-8"))
            except UnicodeDecodeError:
                raise PicolmError("not UTF-8 text", path=path, line=number) from None
            except json.JSONDecodeError as exc:
                raise PicolmError(f"not valid JSON ({exc.msg})", path=path, line=number) from None
            if not isinstance(row, dict) or text_field not in row:
                raise PicolmError(f"no field {text_field!r}", path=path, line=number, field=text_field)
            if not isinstance(row[text_field], str):
                raise PicolmError("expected a string", path=path, line=number, field=text_field)
            if row[text_field].strip():
                records.append({"text": row[text_field]})
    if not records:
        raise PicolmError("file holds no text", path=path)
    return records


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


def _split_field(spec: str, default: str) -> tuple[Path, str]:
    """`data/x.jsonl:body` -> (data/x.jsonl, "body"); colons elsewhere in the path are kept."""
    match = FIELD_SUFFIX.match(spec)
    return (Path(match["path"]), match["field"]) if match else (Path(spec), default)


def load_local(spec: str) -> SourceData:
    path, text_field = _split_field(spec, "text")
    if not path.exists():
        raise PicolmError("no such file", path=path)
    if path.is_dir():
        raise PicolmError("is a directory; name a .txt, .jsonl or .parquet file", path=path)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return SourceData({"all": read_jsonl_file(path, text_field)})
    if suffix == ".parquet":
        return SourceData({"all": read_parquet_file(path, text_field)})
    return SourceData({"all": read_text_file(path)})


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


def load_hub(name: str, hub_dir: str | None = None, limit: int | None = None) -> SourceData:
    """Load a hub dataset with `datasets.load_dataset`; `hub_dir` points the same call at a local copy."""
    import datasets

    source = HUB_SOURCES[name]
    path, config = (hub_dir, None) if hub_dir else (source.repo, source.config)
    splits = {}
    for ours, theirs in source.splits.items():
        try:
            rows = datasets.load_dataset(path, config, split=theirs, streaming=source.streaming)
        except Exception as exc:  # network, missing split, schema: all become one clear line
            raise PicolmError(f"could not load {source.repo} split {theirs!r} "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                              "without internet, download it first or pass --hub-dir with a local copy",
                              field=name) from None
        if source.text_field not in (rows.column_names or [source.text_field]):
            raise PicolmError(f"dataset has no field {source.text_field!r}", path=path, field=source.text_field)
        splits[ours] = [{"text": t} for t in _hub_texts(rows, source, limit)]
    return SourceData(splits if len(splits) > 1 else {"all": splits["train"]})


def load_builtin(name: str, options: dict) -> SourceData:
    if name == "numeric":
        from picolm.data.synthetic import NumericSpec, generate_numeric

        spec = NumericSpec(**{k: v for k, v in options.items() if v is not None and k in NumericSpec.__annotations__})
        return SourceData({"all": generate_numeric(spec)}, has_kinds=True)
    from picolm.data.stories import DEFAULT_NUM_STORIES, generate_stories

    count = options.get("num_sequences") or DEFAULT_NUM_STORIES
    return SourceData({"all": [{"text": t} for t in generate_stories(count, seed=options.get("seed", 0))]})


def load_source(spec: str, options: dict | None = None, hub_dir: str | None = None,
                limit: int | None = None) -> SourceData:
    options = options or {}
    if spec in BUILTIN_SOURCES:
        return load_builtin(spec, options)
    if spec in HUB_SOURCES:
        return load_hub(spec, hub_dir, limit)
    if Path(_split_field(spec, "text")[0]).suffix or Path(spec).exists():
        return load_local(spec)
    known = ", ".join(BUILTIN_SOURCES + tuple(HUB_SOURCES))
    raise PicolmError(f"unknown source; use one of {known}, or a .txt/.jsonl/.parquet file", field=spec)
