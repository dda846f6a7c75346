"""Example sources: SFT and preference hub datasets through the real `datasets.load_dataset` call on local folders
laid out as the hub's, local instruction/prompt/pair/chat files with their bad rows, and preference pairs built
from a text corpus."""

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from picolm.data.records import render_chat, render_instruction
from picolm.data.sources import corpus_pairs, load_source
from picolm.errors import PicolmError


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def write_parquet(path, rows: list[dict]):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_jsonl_gz(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    return path


def error_of(spec, **kwargs) -> str:
    with pytest.raises(PicolmError) as excinfo:
        load_source(str(spec), **kwargs)
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def loaded(calls):
    return [(args, kwargs["split"], kwargs["streaming"]) for args, kwargs in calls]


# ---------------------------------------------------------------- hub example sources on local copies

ALPACA_ROWS = [
    {"instruction": "Give three tips for staying healthy.", "input": "",
     "output": "1. Eat well.\n2. Sleep.\n3. Move."},
    {"instruction": "Translate to French.", "input": "Good morning",
     "output": "Bonjour"},
    {"instruction": "  Name a colour. ", "input": "   ", "output": "Blue."},
]


def test_alpaca_from_a_local_copy(tmp_path, load_dataset_calls):
    folder = tmp_path / "alpaca"  # the hub's layout: data/train-00000-of-00001-<hash>.parquet, with a text column
    write_parquet(folder / "data" / "train-00000-of-00001-a09b74b3ef9c3b56.parquet",
                  [{**row, "text": "ignored"} for row in ALPACA_ROWS])
    data = load_source("alpaca", hub_dir=str(folder))
    assert data.task == "sft" and list(data.splits) == ["all"]
    assert data.splits["all"] == [
        {"id": "0", "prompt": "### Instruction:\nGive three tips for staying healthy.\n\n### Response:\n",
         "response": "1. Eat well.\n2. Sleep.\n3. Move."},
        {"id": "1", "prompt": "### Instruction:\nTranslate to French.\n\n### Input:\nGood morning\n\n### Response:\n",
         "response": "Bonjour"},
        {"id": "2", "prompt": "### Instruction:\nName a colour.\n\n### Response:\n", "response": "Blue."},
    ]
    assert loaded(load_dataset_calls) == [((str(folder), None), "train", False)]


DOLLY_ROWS = [
    {"instruction": "When did Virgin Australia start operating?",
     "context": "Virgin Australia commenced services on 31 August 2000.",
     "response": "On 31 August 2000.", "category": "closed_qa"},
    {"instruction": "Which is a species of fish? Tope or Rope", "context": "", "response": "Tope",
     "category": "classification"},
    {"instruction": "Why can camels survive long without water?", "context": "",
     "response": "They store fat in their humps.", "category": "open_qa"},
]


def test_dolly_from_a_local_copy_uses_context_as_input_and_honours_limit(tmp_path, load_dataset_calls):
    folder = tmp_path / "dolly"  # the hub's layout: one databricks-dolly-15k.jsonl, all of it the train split
    write_jsonl(folder / "databricks-dolly-15k.jsonl", DOLLY_ROWS)
    data = load_source("dolly", hub_dir=str(folder), limit=2)
    assert data.task == "sft"
    assert data.splits == {"all": [
        {"id": "0", "prompt": "### Instruction:\nWhen did Virgin Australia start operating?\n\n### Input:\n"
                              "Virgin Australia commenced services on 31 August 2000.\n\n### Response:\n",
         "response": "On 31 August 2000."},
        {"id": "1", "prompt": "### Instruction:\nWhich is a species of fish? Tope or Rope\n\n### Response:\n",
         "response": "Tope"},
    ]}
    assert loaded(load_dataset_calls) == [((str(folder), None), "train", False)]


def rm_static_rows(split, count):
    return [{"prompt": f"\n\nHuman: {split} question {i}?\n\nAssistant:", "response": f" good {split} {i}",
             "chosen": f" good {split} {i}", "rejected": f" bad {split} {i}"} for i in range(count)]


def test_rm_static_from_a_local_copy_maps_test_to_validation(tmp_path, load_dataset_calls):
    folder = tmp_path / "rm-static"
    write_parquet(folder / "data" / "train-00000-of-00001-2a1df75c6bce91ab.parquet", rm_static_rows("train", 4))
    write_parquet(folder / "data" / "test-00000-of-00001-8c7c51afc6d45980.parquet", rm_static_rows("test", 3))
    data = load_source("rm-static", hub_dir=str(folder), limit=3)
    assert data.task == "dpo"
    assert set(data.splits) == {"train", "validation"}  # prepare halves validation into val and test
    assert data.splits["train"] == [{"id": str(i), "prompt": f"\n\nHuman: train question {i}?\n\nAssistant:",
                                     "chosen": f" good train {i}", "rejected": f" bad train {i}"} for i in range(3)]
    assert [r["chosen"] for r in data.splits["validation"]] == [" good test 0", " good test 1", " good test 2"]
    assert [split for _, split, _ in loaded(load_dataset_calls)] == ["train", "test"]


def transcript(*turns):
    return "".join(f"\n\n{speaker}: {text}" if text else f"\n\n{speaker}:"
                   for speaker, text in zip(["Human", "Assistant"] * len(turns), turns))


HH_TRAIN = [
    {"chosen": transcript("What is 2+2?", "4."), "rejected": transcript("What is 2+2?", "5.")},
    {"chosen": transcript("Hi", "Hello!", "Tell me a joke", "Why did the hen cross? To lay."),
     "rejected": transcript("Hi", "Hello!", "Tell me a joke", "No.")},
]
HH_TEST = [{"chosen": transcript("Capital of France?", "Paris."),
            "rejected": transcript("Capital of France?", "Rome.")}]


def hh_folder(root, train=HH_TRAIN):
    """The hub's layout: <subset>/<split>.jsonl.gz, every subset's files joining the same split."""
    write_jsonl_gz(root / "harmless-base" / "train.jsonl.gz", train)
    write_jsonl_gz(root / "harmless-base" / "test.jsonl.gz", HH_TEST)
    return root


def test_hh_rlhf_from_a_local_copy_splits_transcripts_at_the_last_assistant_turn(tmp_path, load_dataset_calls):
    folder = hh_folder(tmp_path / "hh")
    data = load_source("hh-rlhf", hub_dir=str(folder))
    assert data.task == "dpo" and set(data.splits) == {"train", "validation"}
    assert data.splits["train"] == [
        {"id": "0", "prompt": "\n\nHuman: What is 2+2?\n\nAssistant:", "chosen": " 4.", "rejected": " 5."},
        {"id": "1", "prompt": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Tell me a joke\n\nAssistant:",
         "chosen": " Why did the hen cross? To lay.", "rejected": " No."},
    ]
    assert data.splits["validation"] == [
        {"id": "0", "prompt": "\n\nHuman: Capital of France?\n\nAssistant:", "chosen": " Paris.", "rejected": " Rome."}]
    for row, record in zip(HH_TRAIN, data.splits["train"]):
        assert record["prompt"] + record["chosen"] == row["chosen"]
        assert record["prompt"] + record["rejected"] == row["rejected"]
    assert loaded(load_dataset_calls) == [((str(folder), None), "train", False), ((str(folder), None), "test", False)]
    assert len(load_source("hh-rlhf", hub_dir=str(folder), limit=1).splits["train"]) == 1


HH_BAD = [
    HH_TRAIN[0],
    {"chosen": transcript("Hi", "Sure.", "More?", "Yes."), "rejected": transcript("Hi", "No.", "More?", "No.")},
    {"chosen": transcript("Q?", "A."), "rejected": transcript("Q?", "")},
    HH_TRAIN[1],
    {"chosen": "no transcript at all", "rejected": "none"},
]


def test_hh_rlhf_bad_rows_name_the_split_and_row(tmp_path, hf_offline):
    folder = hh_folder(tmp_path / "hh", HH_BAD)
    message = error_of("hh-rlhf", hub_dir=str(folder))
    assert message.startswith("Anthropic/hh-rlhf:train:2: rejected: chosen and rejected transcripts differ")
    assert "--skip-bad-rows" in message


def test_hh_rlhf_skips_bad_rows_when_asked_and_reports_them(tmp_path, hf_offline, capsys):
    folder = hh_folder(tmp_path / "hh", HH_BAD)
    data = load_source("hh-rlhf", hub_dir=str(folder), skip_bad_rows=True)
    assert [r["id"] for r in data.splits["train"]] == ["0", "3"]
    assert [r["chosen"] for r in data.splits["train"]] == [" 4.", " Why did the hen cross? To lay."]
    err = capsys.readouterr().err
    assert "skipped 3 bad row(s):" in err
    assert "Anthropic/hh-rlhf:train:2: rejected: chosen and rejected transcripts differ" in err
    assert "Anthropic/hh-rlhf:train:3: rejected: empty rejected response" in err
    assert "Anthropic/hh-rlhf:train:5: chosen: no '\\n\\nAssistant:' turn" in err


def test_hub_copy_without_an_example_column_names_it(tmp_path, hf_offline):
    write_jsonl(tmp_path / "dolly" / "dolly.jsonl", [{"instruction": "x", "input": "y", "response": "z"}])
    assert error_of("dolly", hub_dir=str(tmp_path / "dolly")) == \
        f"{tmp_path / 'dolly'}: context: dataset has no field 'context'"


def test_failing_example_hub_load_is_one_clear_line(tmp_path, hf_offline):
    (tmp_path / "empty").mkdir()
    message = error_of("rm-static", hub_dir=str(tmp_path / "empty"))
    assert message.startswith("rm-static: could not load the splits of Dahoas/rm-static from the local copy")
    assert "--hub-dir" in message


# ---------------------------------------------------------------- local example files


def test_local_instruction_jsonl(tmp_path):
    path = write_jsonl(tmp_path / "custom.jsonl", [
        {"instruction": "Summarise.", "input": "A long text.", "output": "Short."},
        {"instruction": "Say hi.", "output": "Hi!", "id": "greet"},
    ])
    data = load_source(str(path))
    assert data.task == "sft"
    assert data.splits["all"] == [
        {"id": "0", "prompt": render_instruction("Summarise.", "A long text."), "response": "Short."},
        {"id": "greet", "prompt": "### Instruction:\nSay hi.\n\n### Response:\n", "response": "Hi!"},
    ]
    assert data.splits["all"][0]["prompt"] == \
        "### Instruction:\nSummarise.\n\n### Input:\nA long text.\n\n### Response:\n"


def test_local_json_array_like_alpaca_data_json(tmp_path):
    path = tmp_path / "alpaca_data.json"
    path.write_text(json.dumps(ALPACA_ROWS, indent=4), encoding="utf-8")
    data = load_source(str(path))
    assert data.task == "sft"
    assert [r["prompt"] for r in data.splits["all"]] == [render_instruction(r["instruction"], r["input"])
                                                         for r in ALPACA_ROWS]
    assert [r["response"] for r in data.splits["all"]] == [r["output"] for r in ALPACA_ROWS]


def test_local_json_lines_with_a_json_suffix(tmp_path):
    path = write_jsonl(tmp_path / "pairs.json", [{"prompt": "Q", "chosen": "good", "rejected": "bad"}])
    assert load_source(str(path)).splits["all"] == [{"id": "0", "prompt": "Q", "chosen": "good", "rejected": "bad"}]


def test_text_rows_in_a_json_array_and_a_field_spec_keep_their_meaning(tmp_path):
    path = tmp_path / "docs.json"
    path.write_text(json.dumps([{"text": "one", "body": "b1"}, {"text": "two", "body": "b2"}]), encoding="utf-8")
    data = load_source(str(path))
    assert data.task == "text" and data.splits["all"] == [{"text": "one"}, {"text": "two"}]
    assert load_source(f"{path}:body").splits["all"] == [{"text": "b1"}, {"text": "b2"}]
    rows = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "p", "response": "r", "note": "n"}])
    assert load_source(f"{rows}:note").splits["all"] == [{"text": "n"}]


@pytest.mark.parametrize("prompt_key", ["prompt", "input"])
@pytest.mark.parametrize("response_key", ["response", "output"])
def test_local_prompt_response(tmp_path, prompt_key, response_key):
    path = write_jsonl(tmp_path / "sft.jsonl", [{prompt_key: "2+2=", response_key: "4", "id": 7},
                                               {prompt_key: "Capital of Peru?", response_key: " Lima"}])
    data = load_source(str(path))
    assert data.task == "sft"
    assert data.splits["all"] == [{"id": "7", "prompt": "2+2=", "response": "4"},
                                  {"id": "1", "prompt": "Capital of Peru?", "response": " Lima"}]


@pytest.mark.parametrize("prompt_key", ["prompt", "input"])
def test_local_preference_pairs(tmp_path, prompt_key):
    path = write_jsonl(tmp_path / "prefs.jsonl", [
        {prompt_key: "Write a haiku.", "chosen": "Old pond, a frog jumps", "rejected": "no"},
        {prompt_key: "2+2?", "chosen": "4", "rejected": "22", "id": "math"},
    ])
    data = load_source(str(path))
    assert data.task == "dpo"
    assert data.splits["all"] == [
        {"id": "0", "prompt": "Write a haiku.", "chosen": "Old pond, a frog jumps", "rejected": "no"},
        {"id": "math", "prompt": "2+2?", "chosen": "4", "rejected": "22"},
    ]


def test_local_chat_messages_give_one_record_per_assistant_turn(tmp_path):
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
    ]
    path = write_jsonl(tmp_path / "chat.jsonl", [
        {"messages": conversation, "id": "c1"},
        {"messages": [{"role": "user", "content": "Bye"}, {"role": "assistant", "content": "See you."}]},
    ])
    data = load_source(str(path))
    assert data.task == "sft"
    assert data.splits["all"] == [
        {"id": "c1-0", "prompt": "<|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\n", "response": "Hello!"},
        {"id": "c1-1", "prompt": "<|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\nHello!\n<|user|>\n2+2?\n"
                                 "<|assistant|>\n", "response": "4"},
        {"id": "1-0", "prompt": "<|user|>\nBye\n<|assistant|>\n", "response": "See you."},
    ]
    assert render_chat(conversation) == data.splits["all"][1]["prompt"][:-len("<|assistant|>\n")] + "<|assistant|>\n4\n"


def test_instruction_rows_may_mix_with_prompt_rows_of_the_same_task(tmp_path):
    path = write_jsonl(tmp_path / "mixed.jsonl", [{"instruction": "Do it.", "output": "Done."},
                                                 {"prompt": "P", "response": "R"},
                                                 {"messages": [{"role": "user", "content": "U"},
                                                               {"role": "assistant", "content": "A"}]}])
    assert [r["response"] for r in load_source(str(path)).splits["all"]] == ["Done.", "R", "A"]


# ---------------------------------------------------------------- bad rows in local example files

GOOD_PAIR = {"prompt": "Q", "chosen": "good", "rejected": "bad"}
GOOD_SFT = {"prompt": "Q", "response": "A"}
USER = {"role": "user", "content": "Hi"}


@pytest.mark.parametrize(("rows", "bad_line", "expected"), [
    pytest.param([GOOD_PAIR, {"prompt": "Q", "chosen": "  ", "rejected": "bad"}, GOOD_PAIR], 2,
                 "chosen: empty chosen response", id="empty-chosen"),
    pytest.param([GOOD_PAIR, GOOD_PAIR, {"prompt": "Q", "chosen": "same", "rejected": "same"}], 3,
                 "rejected: chosen and rejected are identical", id="identical-chosen-rejected"),
    pytest.param([{"question": "Q", "answer": "A"}, GOOD_SFT], 1, "unknown row layout", id="unknown-layout"),
    pytest.param([GOOD_SFT, {"question": "Q", "answer": "A"}, GOOD_SFT], 2,
                 "row layout is unknown (answer, question), but the file's first row is sft", id="unknown-later"),
    pytest.param([GOOD_SFT, GOOD_PAIR, GOOD_SFT], 2, "row layout is dpo", id="mixed-sft-then-dpo"),
    pytest.param([GOOD_PAIR, GOOD_SFT], 2, "row layout is sft", id="mixed-dpo-then-sft"),
    pytest.param([GOOD_SFT, {"prompt": "Q", "response": ""}], 2, "response: empty response", id="empty-response"),
    pytest.param([GOOD_SFT, {"instruction": "Do", "input": "x"}], 2, "output: instruction row: expected a string",
                 id="instruction-without-output"),
    pytest.param([GOOD_SFT, {"messages": "Hi"}], 2, "messages: expected a list", id="messages-not-a-list"),
    pytest.param([GOOD_SFT, {"messages": [USER, {"role": "bot", "content": "x"}]}], 2,
                 "messages: message 2: unknown role 'bot'", id="messages-unknown-role"),
    pytest.param([GOOD_SFT, {"messages": [USER]}], 2, "messages: no assistant turn", id="messages-no-assistant"),
    pytest.param([GOOD_SFT, {"messages": [USER, {"role": "assistant"}]}], 2, "messages: message 2: expected",
                 id="messages-no-content"),
    pytest.param([GOOD_SFT, ["Q", "A"]], 2, "row layout is unknown (a JSON list)", id="row-not-an-object"),
])
def test_bad_example_rows_name_file_and_line_or_are_skipped(tmp_path, capsys, rows, bad_line, expected):
    path = write_jsonl(tmp_path / "examples.jsonl", rows)
    message = error_of(path)
    assert message.startswith(f"{path}:{bad_line}: {expected}")
    assert message.endswith("(pass --skip-bad-rows to report and skip such rows)")

    data = load_source(str(path), skip_bad_rows=True)
    kept = [row for line, row in enumerate(rows, start=1) if line != bad_line]
    assert len(data.splits["all"]) == len(kept)
    assert data.task == ("dpo" if "chosen" in kept[0] else "sft")
    err = capsys.readouterr().err
    assert "skipped 1 bad row(s):" in err and f"{path}:{bad_line}: {expected}" in err


def test_bad_row_in_a_json_array_is_named_by_its_line(tmp_path):
    path = tmp_path / "data.json"
    path.write_text('[\n  {"instruction": "A", "output": "B"},\n  {"instruction": "C",\n   "output": ""}\n]\n',
                    encoding="utf-8")
    assert error_of(path).startswith(f"{path}:3: response: empty response")
    assert load_source(str(path), skip_bad_rows=True).splits["all"] == [
        {"id": "0", "prompt": render_instruction("A"), "response": "B"}]


@pytest.mark.parametrize(("content", "expected"), [
    pytest.param('[\n{"prompt": "a", "response": "b"},\n{"prompt": oops}\n]', "{path}:3: not valid JSON",
                 id="bad-json-inside-array"),
    pytest.param('[{"prompt": "a", "response": "b"}\n{"prompt": "c", "response": "d"}]',
                 "{path}:2: not valid JSON (expected ',' or ']'", id="missing-comma"),
    pytest.param('[{"prompt": "a", "response": "b"}]\n[]', "{path}:1: not valid JSON (extra data", id="extra-data"),
    pytest.param("[]", "{path}: file holds no text", id="empty-array"),
])
def test_broken_json_arrays_name_the_line(tmp_path, content, expected):
    path = tmp_path / "data.json"
    path.write_text(content, encoding="utf-8")
    assert error_of(path).startswith(expected.format(path=path))


def test_a_text_file_with_an_example_row_names_the_mismatch(tmp_path):
    path = write_jsonl(tmp_path / "docs.jsonl", [{"text": "a doc"}, GOOD_SFT, {"text": "another"}])
    assert error_of(path).startswith(f"{path}:2: text: no field 'text' (this row holds sft example fields")
    assert load_source(str(path), skip_bad_rows=True).splits["all"] == [{"text": "a doc"}, {"text": "another"}]


def test_a_file_of_only_bad_rows_is_an_error_even_when_skipping(tmp_path, capsys):
    path = write_jsonl(tmp_path / "examples.jsonl", [GOOD_SFT | {"response": " "}, {"prompt": "Q", "response": ""}])
    assert error_of(path, skip_bad_rows=True) == f"{path}: file holds no usable examples"
    assert "skipped" not in capsys.readouterr().err  # nothing was loaded, so nothing to report


# ---------------------------------------------------------------- preference pairs from a corpus


def sentences(topic, count, start=0):
    return " ".join(f"The {topic} number {i} stood quietly by the old mill today." for i in range(start, start + count))


DOCS = [{"text": sentences("owl", 6)}, {"text": sentences("fox", 5) + "\nA new line follows here."},
        {"text": "Too short to split into a prompt and a continuation."},
        {"text": " ".join(f"w{i}" for i in range(60))},  # one long "sentence": only another document can corrupt it
        {"text": sentences("bee", 40)}]


def test_corpus_pairs_continue_the_document_and_corrupt_the_continuation():
    pairs = corpus_pairs(DOCS, seed=3)
    # a third of the words, at least 8 (or half of a shorter document: the 10-word one)
    assert {p["id"]: len(p["prompt"].split()) for p in pairs} == {"0": 22, "1": 20, "2": 5, "3": 20, "4": 146}
    continuations = {p["chosen"] for p in pairs}
    for pair in pairs:
        text = DOCS[int(pair["id"])]["text"]
        words = text.split()
        assert text.startswith(pair["prompt"] + pair["chosen"])  # prompt + chosen is the document's start
        prompt_words = len(pair["prompt"].split())
        assert pair["chosen"].split() == words[prompt_words:prompt_words + 120]  # the true continuation, capped
        assert pair["rejected"] != pair["chosen"]
        shuffled = sorted(pair["rejected"].split()) == sorted(pair["chosen"].split())
        assert shuffled or pair["rejected"] in continuations - {pair["chosen"]}
    assert pairs[3]["rejected"] in continuations  # w0..w59 has one sentence: another document's continuation
    assert pairs[0]["chosen"].startswith(" ")  # the whitespace between prompt and continuation stays with it


def test_corpus_pairs_use_both_corruptions_and_are_deterministic():
    docs = [{"text": sentences(f"animal{d}", 6)} for d in range(30)]
    pairs = corpus_pairs(docs, seed=1)
    assert corpus_pairs(docs, seed=1) == pairs
    assert corpus_pairs(docs, seed=2) != pairs
    kinds = {"shuffled" if sorted(p["rejected"].split()) == sorted(p["chosen"].split()) else "other" for p in pairs}
    assert kinds == {"shuffled", "other"}


def test_corpus_pairs_need_a_difference_to_show():
    assert corpus_pairs([{"text": sentences("owl", 5)}], seed=0)[0]["rejected"] != sentences("owl", 5)
    assert corpus_pairs([{"text": " ".join(["same"] * 30)}] * 2, seed=0) == []  # no order, no other continuation


def test_pairs_from_a_local_text_file_and_a_builtin(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(d["text"].replace("\n", " ") for d in DOCS) + "\n", encoding="utf-8")
    data = load_source(f"pairs:{path}", {"seed": 5})
    assert data.task == "dpo" and list(data.splits) == ["all"] and len(data.splits["all"]) == 5
    assert data.splits == load_source(f"pairs:{path}", {"seed": 5}).splits
    stories = load_source("pairs:stories", {"num_sequences": 6, "seed": 0})
    assert stories.task == "dpo" and len(stories.splits["all"]) == 7  # 6 stories and 1 tale, each long enough


def test_pairs_from_a_hub_source_keep_its_splits(tmp_path, load_dataset_calls):
    for split, count in (("train", 4), ("validation", 2)):
        write_jsonl(tmp_path / "ts" / f"{split}.jsonl", [{"text": sentences(f"{split}{i}", 5)} for i in range(count)])
    data = load_source("pairs:tinystories", {"seed": 0}, hub_dir=str(tmp_path / "ts"), limit=3)
    assert data.task == "dpo"
    assert {name: len(pairs) for name, pairs in data.splits.items()} == {"train": 3, "validation": 2}


def test_pairs_need_a_text_source_with_long_enough_documents(tmp_path):
    path = write_jsonl(tmp_path / "sft.jsonl", [GOOD_SFT])
    assert error_of(f"pairs:{path}") == f"pairs:{path}: pairs are built from a text source; {path} holds sft examples"
    short = tmp_path / "short.txt"
    short.write_text("a few words\nand a few more\n", encoding="utf-8")
    assert error_of(f"pairs:{short}").startswith(f"pairs:{short}: no pairs in the all split")
    assert error_of("pairs:").startswith("pairs:: name the text source")
    assert error_of("pairs:nonsense").startswith("nonsense: unknown source")


def test_unknown_source_lists_the_example_sources():
    message = error_of("alpacca")
    for known in ("alpaca", "dolly", "rm-static", "hh-rlhf", "pairs:SOURCE", ".json"):
        assert known in message
