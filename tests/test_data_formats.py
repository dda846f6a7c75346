"""Real data formats: Anthropic HH dialogues in local (gzipped) files, local hub copies holding only some splits,
TRL's conversational rows (checked against TRL's own prompt extraction), any hub dataset as `hf:NAME[:CONFIG]`
(run through the real `datasets` calls on local folders), numeric preference pairs at the default lengths, and the
tiny hub copies of tests/hub_copies.py prepared offline."""

import gzip
import json
import math

import pytest

from conftest import TINY
from hub_copies import write_hub_copies
from picolm.cli import main
from picolm.data.pack import prepare
from picolm.data.preparation import PrepareOptions
from picolm.data.records import render_chat_prompt
from picolm.data.sources import hub_source, load_source
from picolm.data.synthetic import NumericSpec, generate_numeric
from test_example_sources import error_of


def write_jsonl(path, rows, zipped=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    if zipped:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def quiet(*_args):
    pass


def records_of(folder, split):
    return [json.loads(line) for line in (folder / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]


# ---------------------------------------------------------------- Anthropic HH dialogues in local files


def dialogue(*turns: str) -> str:
    return "".join(f"\n\n{'Human' if i % 2 == 0 else 'Assistant'}: {turn}" for i, turn in enumerate(turns))


HH_ROWS = [
    {"chosen": dialogue("What is 2+2?", "4."), "rejected": dialogue("What is 2+2?", "5.")},
    {"chosen": dialogue("Hi", "Hello!", "Tell me a joke", "Why did the hen cross? To lay."),
     "rejected": dialogue("Hi", "Hello!", "Tell me a joke", "No.")},
    {"chosen": dialogue("Capital of France?", "Paris."), "rejected": dialogue("Capital of France?", "Rome.")},
]


@pytest.mark.parametrize("name", ["harmless.jsonl", "harmless.jsonl.gz"])
def test_local_hh_dialogues_split_at_the_last_assistant_turn_as_trl_does(tmp_path, name):
    from trl.data_utils import extract_prompt

    path = write_jsonl(tmp_path / name, HH_ROWS, zipped=name.endswith(".gz"))
    data = load_source(str(path))
    assert data.task == "dpo" and list(data.splits) == ["all"]
    # TRL's implicit prompt (the longest shared prefix) is the same cut here, where the replies differ at once
    expected = [{"id": str(i), **extract_prompt(row)} for i, row in enumerate(HH_ROWS)]
    assert data.splits["all"] == expected
    assert expected[1]["prompt"] == dialogue("Hi", "Hello!", "Tell me a joke") + "\n\nAssistant:"


HH_BAD = [HH_ROWS[0],
          {"chosen": dialogue("Hi", "Sure.", "More?", "Yes."), "rejected": dialogue("Hi", "No.", "More?", "No.")},
          HH_ROWS[1], {"chosen": "no dialogue at all", "rejected": "none"}, HH_ROWS[2]]


def test_hh_rows_without_a_shared_prompt_name_file_line_and_field_or_are_skipped(tmp_path, capsys):
    path = write_jsonl(tmp_path / "hh.jsonl.gz", HH_BAD, zipped=True)
    message = error_of(path)
    assert message.startswith(f"{path}:2: rejected: chosen and rejected transcripts differ before the last assistant")
    assert "--skip-bad-rows" in message
    data = load_source(str(path), skip_bad_rows=True)
    assert [r["id"] for r in data.splits["all"]] == ["0", "2", "4"]
    err = capsys.readouterr().err
    assert "skipped 2 bad row(s):" in err and f"{path}:4: chosen: no '\\n\\nAssistant:' turn" in err


def test_prepare_reads_a_gzipped_hh_file_and_stops_on_a_bad_row_with_status_2(tmp_path, capsys):
    path = write_jsonl(tmp_path / "hh.jsonl.gz", HH_BAD * 4, zipped=True)
    out = tmp_path / "data"
    assert main(["prepare", "--source", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{path}:2: rejected: chosen and rejected" in err
    assert main(["prepare", "--source", str(path), "--out", str(out), "--skip-bad-rows"]) == 0
    assert sum(len(records_of(out, split)) for split in ("train", "val", "test")) == 12


def test_a_broken_gzip_file_is_named(tmp_path):
    path = tmp_path / "rows.jsonl.gz"
    path.write_bytes(b"not gzip at all\n")
    assert error_of(path).startswith(f"{path}: not a readable gzip file")


def test_gzipped_text_and_field_specs(tmp_path):
    path = write_jsonl(tmp_path / "docs.jsonl.gz", [{"body": "first"}, {"body": "second"}], zipped=True)
    assert [r["text"] for r in load_source(f"{path}:body").splits["all"]] == ["first", "second"]
    with gzip.open(tmp_path / "corpus.txt.gz", "wt", encoding="utf-8") as f:
        f.write("one line\nanother line\n")
    assert [r["text"] for r in load_source(str(tmp_path / "corpus.txt.gz")).splits["all"]] == ["one line",
                                                                                              "another line"]


# ---------------------------------------------------------------- local hub copies holding only some splits


def hh_copy(root, splits=("test",), count=12):
    for split in splits:
        rows = [{"chosen": dialogue(f"{split} question {i}?", f"Good answer {i}."),
                 "rejected": dialogue(f"{split} question {i}?", f"Bad answer {i}.")} for i in range(count)]
        write_jsonl(root / "harmless-base" / f"{split}.jsonl.gz", rows, zipped=True)
    return root


def test_a_copy_holding_only_test_is_refused_with_the_way_out(tmp_path, hf_offline, capsys):
    folder = hh_copy(tmp_path / "hh")
    assert error_of("hh-rlhf", hub_dir=str(folder)) == ("hh-rlhf: the local copy has no 'train' split (it holds "
                                                        "test); pass --split-ratios to re-split what it holds")
    assert main(["prepare", "--source", "hh-rlhf", "--hub-dir", str(folder), "--out", str(tmp_path / "d")]) == 2
    assert "--split-ratios" in capsys.readouterr().err


@pytest.mark.parametrize("flags", [["--split-ratios", "0.5,0.25,0.25"], ["--ignore-source-splits"]])
def test_a_copy_holding_only_test_is_re_split(tmp_path, load_dataset_calls, flags):
    folder = hh_copy(tmp_path / "hh")
    out = tmp_path / "data"
    assert main(["prepare", "--source", "hh-rlhf", "--hub-dir", str(folder), "--out", str(out), *flags]) == 0
    counts = {split: len(records_of(out, split)) for split in ("train", "val", "test")}
    assert counts == ({"train": 6, "val": 3, "test": 3} if "--split-ratios" in flags else
                      {"train": 10, "val": 1, "test": 1})
    prompts = sorted(r["prompt"] for split in ("train", "val", "test") for r in records_of(out, split))
    assert prompts == sorted(dialogue(f"test question {i}?") + "\n\nAssistant:" for i in range(12))
    assert [kwargs["split"] for _, kwargs in load_dataset_calls] == ["test"]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["options"]["use_source_splits"] is False


def test_given_split_ratios_re_split_a_whole_copy_too(tmp_path, load_dataset_calls):
    folder = hh_copy(tmp_path / "hh", splits=("train", "test"), count=8)
    out = tmp_path / "data"
    assert main(["prepare", "--source", "hh-rlhf", "--hub-dir", str(folder), "--out", str(out)]) == 0
    assert [len(records_of(out, s)) for s in ("train", "val", "test")] == [8, 4, 4]  # its own: test halved
    assert main(["prepare", "--source", "hh-rlhf", "--hub-dir", str(folder), "--out", str(out),
                 "--split-ratios", "0.5,0.25,0.25"]) == 0
    assert [len(records_of(out, s)) for s in ("train", "val", "test")] == [8, 4, 4]  # 16 merged, re-split
    assert {r["prompt"].split()[1] for r in records_of(out, "train")} == {"train", "test"}


def test_a_text_copy_holding_only_validation_is_re_split(tmp_path, load_dataset_calls):
    write_jsonl(tmp_path / "ts" / "validation.jsonl", [{"text": f"Story number {i} ends well."} for i in range(10)])
    meta = prepare(PrepareOptions(source="tinystories", out=str(tmp_path / "d"), hub_dir=str(tmp_path / "ts"),
                                  use_source_splits=False, vocab_size=300), log=quiet)
    assert {s: c["documents"] for s, c in meta["splits"].items()} == {"train": 8, "val": 1, "test": 1}
    assert meta["split_ratios"] == [0.8, 0.1, 0.1]


# ---------------------------------------------------------------- TRL's conversational rows

SKY = [{"role": "user", "content": "What color is the sky?"}]
BLUE, GREEN = {"role": "assistant", "content": "It is blue."}, {"role": "assistant", "content": "It is green."}
SYSTEM = {"role": "system", "content": "Answer briefly."}


def test_conversational_preference_rows_as_trl_documents_them(tmp_path):
    from trl.data_utils import extract_prompt, is_conversational

    explicit = {"prompt": SKY, "chosen": [BLUE], "rejected": [GREEN]}
    implicit = {"chosen": [SYSTEM, *SKY, BLUE], "rejected": [SYSTEM, *SKY, GREEN]}
    assert is_conversational(explicit) and is_conversational(implicit)
    data = load_source(str(write_jsonl(tmp_path / "prefs.jsonl", [explicit, implicit])))
    assert data.task == "dpo"
    trl_implicit = extract_prompt(implicit)
    assert trl_implicit["prompt"] == [SYSTEM, *SKY]
    assert data.splits["all"] == [
        {"id": "0", "prompt": render_chat_prompt(SKY), "chosen": "It is blue.", "rejected": "It is green."},
        {"id": "1", "prompt": render_chat_prompt(trl_implicit["prompt"]),
         "chosen": trl_implicit["chosen"][0]["content"], "rejected": trl_implicit["rejected"][0]["content"]},
    ]
    assert data.splits["all"][1]["prompt"] == ("<|system|>\nAnswer briefly.\n<|user|>\nWhat color is the sky?\n"
                                               "<|assistant|>\n")


def test_prompt_completion_rows_standard_and_conversational(tmp_path):
    rows = [{"prompt": "The sky is", "completion": " blue."},
            {"prompt": SKY, "completion": [BLUE]}]
    data = load_source(str(write_jsonl(tmp_path / "sft.jsonl", rows)))
    assert data.task == "sft"
    assert data.splits["all"] == [{"id": "0", "prompt": "The sky is", "response": " blue."},
                                  {"id": "1", "prompt": render_chat_prompt(SKY), "response": "It is blue."}]


@pytest.mark.parametrize(("row", "expected"), [
    pytest.param({"chosen": [*SKY, BLUE], "rejected": [{"role": "user", "content": "Other?"}, GREEN]},
                 "chosen: expected one assistant message after the prompt, found user, assistant",
                 id="no-shared-prompt"),
    pytest.param({"prompt": SKY, "chosen": [BLUE, *SKY], "rejected": [GREEN]},
                 "chosen: expected one assistant message after the prompt, found assistant, user", id="two-messages"),
    pytest.param({"prompt": SKY, "chosen": [BLUE], "rejected": [{"role": "bot", "content": "x"}]},
                 "rejected: message 1: unknown role 'bot'", id="unknown-role"),
    pytest.param({"prompt": "What color?", "chosen": [BLUE], "rejected": "green"},
                 "rejected: expected a list of {role, content} messages", id="mixed"),
    pytest.param({"chosen": [*SKY, BLUE], "rejected": [*SKY, BLUE]}, "rejected: chosen and rejected are identical",
                 id="identical"),
    pytest.param({"prompt": SKY, "completion": "It is blue."}, "completion: expected a list", id="sft-mixed"),
])
def test_bad_conversational_rows_name_file_line_and_field(tmp_path, row, expected):
    good = {"prompt": SKY, "chosen": [BLUE], "rejected": [GREEN]} if "chosen" in row else \
        {"prompt": SKY, "completion": [BLUE]}
    path = write_jsonl(tmp_path / "rows.jsonl", [good, row])
    assert error_of(path).startswith(f"{path}:2: {expected}")
    assert len(load_source(str(path), skip_bad_rows=True).splits["all"]) == 1


# ---------------------------------------------------------------- any hub dataset: hf:NAME[:CONFIG]


def test_hf_text_dataset_with_a_field_keeps_its_splits(tmp_path, load_dataset_calls):
    folder = tmp_path / "corpus"
    for split, count in (("train", 6), ("validation", 2), ("test", 2)):
        write_jsonl(folder / f"{split}.jsonl", [{"body": f"{split} doc {i}.", "n": i} for i in range(count)])
    data = load_source(f"hf:{folder}", {"text_field": "body"})
    assert data.task == "text" and list(data.splits) == ["train", "validation", "test"]
    assert [r["text"] for r in data.splits["test"]] == ["test doc 0.", "test doc 1."]
    assert [(args, kwargs["split"]) for args, kwargs in load_dataset_calls] == [
        ((str(folder), None), "train"), ((str(folder), None), "validation"), ((str(folder), None), "test")]
    assert error_of(f"hf:{folder}", options={"text_field": "title"}) == f"{folder}: title: dataset has no field 'title'"


def test_hf_held_out_splits_are_found_by_name(tmp_path, hf_offline):
    folder = tmp_path / "corpus"
    for split in ("train", "dev"):  # datasets knows "dev" as validation; picolm halves it into val and test
        write_jsonl(folder / f"{split}.jsonl", [{"text": f"{split} {i}"} for i in range(4)])
    assert list(load_source(f"hf:{folder}").splits) == ["train", "validation"]
    (folder / "train.jsonl").unlink()
    assert error_of(f"hf:{folder}") == (f"hf:{folder}: {folder} has no 'train' split (it holds validation); pass "
                                        "--split-ratios to re-split what it holds")
    assert len(load_source(f"hf:{folder}", use_source_splits=False).splits["all"]) == 4


@pytest.mark.parametrize(("rows", "task", "first"), [
    pytest.param([{"instruction": "Name a colour.", "input": "", "output": "Blue."}], "sft",
                 {"id": "0", "prompt": "### Instruction:\nName a colour.\n\n### Response:\n", "response": "Blue."},
                 id="alpaca"),
    pytest.param([{"messages": [*SKY, BLUE]}], "sft",
                 {"id": "0-0", "prompt": render_chat_prompt(SKY), "response": "It is blue."}, id="messages"),
    pytest.param([{"prompt": SKY, "chosen": [BLUE], "rejected": [GREEN]}], "dpo",
                 {"id": "0", "prompt": render_chat_prompt(SKY), "chosen": "It is blue.", "rejected": "It is green."},
                 id="conversational-pairs"),
    pytest.param([HH_ROWS[0]], "dpo", {"id": "0", "prompt": dialogue("What is 2+2?") + "\n\nAssistant:",
                                       "chosen": " 4.", "rejected": " 5."}, id="hh"),
])
def test_hf_example_datasets_are_read_by_their_columns(tmp_path, load_dataset_calls, rows, task, first):
    write_jsonl(tmp_path / "ds" / "train.jsonl", rows * 3)
    data = load_source(f"hf:{tmp_path / 'ds'}")
    assert data.task == task and list(data.splits) == ["all"] and len(data.splits["all"]) == 3
    assert data.splits["all"][0] == first


def test_hf_dataset_without_a_known_layout_asks_for_a_field(tmp_path, hf_offline):
    write_jsonl(tmp_path / "ds" / "train.jsonl", [{"body": "x", "n": 1}])
    message = error_of(f"hf:{tmp_path / 'ds'}")
    assert message.startswith(f"hf:{tmp_path / 'ds'}: no text column and no example layout")
    assert "(body, n)" in message and "--field" in message
    assert error_of("hf:").startswith("hf:: name a dataset")


HUB_README = """---
configs:
- config_name: small
  data_files:
  - split: train
    path: small/train.jsonl
- config_name: large
  data_files:
  - split: train
    path: large/train.jsonl
---
"""


def test_hf_config_picks_the_dataset_config(tmp_path, load_dataset_calls):
    folder = tmp_path / "multi"
    write_jsonl(folder / "small" / "train.jsonl", [{"text": "small one"}])
    write_jsonl(folder / "large" / "train.jsonl", [{"text": "large one"}, {"text": "large two"}])
    (folder / "README.md").write_text(HUB_README, encoding="utf-8")
    assert [r["text"] for r in load_source(f"hf:{folder}:large").splits["all"]] == ["large one", "large two"]
    assert [r["text"] for r in load_source(f"hf:{folder}:small").splits["all"]] == ["small one"]
    assert load_dataset_calls[0][0] == (str(folder), "large")


def test_wikitext_keeps_its_meaning_and_takes_another_config(hf_offline, load_dataset_calls):
    assert hub_source("wikitext-103").config == "wikitext-103-raw-v1"
    assert hub_source("wikitext-103:wikitext-103-v1") == hub_source("wikitext-103").__class__(
        **{**vars(hub_source("wikitext-103")), "config": "wikitext-103-v1"})
    for spec, config in (("wikitext-103", "wikitext-103-raw-v1"), ("wikitext-103:wikitext-103-v1", "wikitext-103-v1")):
        message = error_of(spec)  # offline: the real call is made with the config, then fails in one line
        assert message.startswith(f"{spec}: could not load Salesforce/wikitext split 'train'")
        assert load_dataset_calls[-1][0] == ("Salesforce/wikitext", config)


def test_hf_text_streams_into_shards(tmp_path, load_dataset_calls):
    docs = [f"Streamed document {i} about the river and the stone." for i in range(40)]
    write_jsonl(tmp_path / "web" / "train.jsonl", [{"content": d} for d in docs])
    out = tmp_path / "data"
    assert main(["prepare", "--source", f"hf:{tmp_path / 'web'}", "--field", "content", "--stream", "--out", str(out),
                 "--vocab-size", "300", "--workers", "0", "--split-ratios", "0.6,0.2,0.2"]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["shards"] and sum(c["documents"] for c in meta["splits"].values()) == 40
    assert meta["hub_repo"] == str(tmp_path / "web")
    assert {kwargs["streaming"] for _, kwargs in load_dataset_calls} == {True}


def test_field_is_refused_where_it_would_be_ignored(tmp_path, capsys):
    assert main(["prepare", "--source", "stories", "--field", "body", "--out", str(tmp_path / "d")]) == 2
    assert capsys.readouterr().err.strip() == ("picolm prepare: error: --field: names the text column of an hf:NAME "
                                               "source; a local file names its own as PATH.jsonl:FIELD, and the named "
                                               "sources know theirs")


# ---------------------------------------------------------------- numeric preference pairs at the default lengths


def test_numeric_pairs_at_the_default_lengths_train_a_dpo_step(tmp_path, one_thread):
    data, run = tmp_path / "pairs", tmp_path / "run"
    assert main(["prepare", "--source", "pairs:numeric", "--tokenizer", "numeric", "--num-sequences", "300",
                 "--out", str(data)]) == 0
    texts = [r["text"] for r in generate_numeric(NumericSpec(num_sequences=300))]  # what was paired, in its order
    pairs = [r for split in ("train", "val", "test") for r in records_of(data, split)]
    assert len(pairs) == sum(len(t.split()) >= 4 for t in texts) > 250  # 3-term geometric sequences are too short
    for pair in pairs:  # the prompt is a third of the numbers, at least half of a sequence shorter than 16
        words = texts[int(pair["id"])].split()
        assert pair["prompt"] + pair["chosen"] == texts[int(pair["id"])]
        assert len(pair["prompt"].split()) == max(len(words) // 3, min(8, len(words) // 2))
        assert pair["rejected"] != pair["chosen"]
    assert main(["train", "--data", str(data), "--out", str(run), "--train.max_steps", "1", *TINY]) == 0
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 1 and "val/rewards/accuracies" in last
    assert last["val/loss"] == pytest.approx(math.log(2), abs=0.05)  # one step away from its reference: -log(1/2)


# ---------------------------------------------------------------- tests/hub_copies.py


def test_hub_copies_prepare_offline_as_their_docstring_says(tmp_path, load_dataset_calls):
    root = write_hub_copies(tmp_path / "copies", rows=16)
    out = tmp_path / "data"
    meta = prepare(PrepareOptions(source="tinystories", hub_dir=str(root / "tinystories"), out=str(out / "ts"),
                                  vocab_size=300), log=quiet)
    assert {s: c["documents"] for s, c in meta["splits"].items()} == {"train": 16, "val": 2, "test": 2}
    meta = prepare(PrepareOptions(source="alpaca", hub_dir=str(root / "alpaca"), out=str(out / "alpaca")), log=quiet)
    assert meta["task"] == "sft" and sum(c["examples"] for c in meta["splits"].values()) == 16
    example = records_of(out / "alpaca", "train")[0]
    assert example["prompt"].startswith("### Instruction:\nWrite a short horror story")
    assert "\n\n### Input:\nTitle: " in example["prompt"]
    meta = prepare(PrepareOptions(source="hh-rlhf", hub_dir=str(root / "hh-rlhf"), out=str(out / "hh")), log=quiet)
    assert {s: c["examples"] for s, c in meta["splits"].items()} == {"train": 16, "val": 2, "test": 2}
    pair = records_of(out / "hh", "train")[0]
    assert pair["prompt"].startswith("\n\nHuman:") and pair["prompt"].endswith("\n\nAssistant:")
    assert pair["chosen"] != pair["rejected"]
