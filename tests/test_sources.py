"""Sources: local text/jsonl/parquet files, errors that name file and line, and hub loaders run through the
real `datasets.load_dataset` call on local folders laid out as the hub's datasets are."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from picolm.data.sources import _wikitext_articles, load_hub, load_source
from picolm.errors import PicolmError


def texts(data, split="all"):
    return [r["text"] for r in data.splits[split]]


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def write_parquet(path, columns: dict):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path


def load_error(spec) -> str:
    with pytest.raises(PicolmError) as excinfo:
        load_source(str(spec))
    return str(excinfo.value)


# ---------------------------------------------------------------- local text files


@pytest.mark.parametrize(("content", "expected"), [
    pytest.param("first doc\nsecond doc\n  third, padded  \n", ["first doc", "second doc", "third, padded"],
                 id="one-per-line"),
    pytest.param("no trailing newline", ["no trailing newline"], id="single-line"),
    pytest.param("windows\r\nline ends\r\n", ["windows", "line ends"], id="crlf"),
    pytest.param("naïve 東京 🚀\nü\n", ["naïve 東京 🚀", "ü"], id="unicode"),
    pytest.param("para one\nstill one\n\npara two\n\n\n\npara three\nend\n",
                 ["para one\nstill one", "para two", "para three\nend"], id="blank-line-blocks"),
    pytest.param("\n\nlead blank\n\ntail\n\n", ["lead blank", "tail"], id="blocks-with-outer-blanks"),
])
def test_text_file_documents(tmp_path, content, expected):
    path = tmp_path / "corpus.txt"
    path.write_bytes(content.encode("utf-8"))
    data = load_source(str(path))
    assert list(data.splits) == ["all"]
    assert texts(data) == expected


def test_text_file_whitespace_only_line_separates_blocks(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("para one\nstill one\n   \npara two\n", encoding="utf-8")
    assert texts(load_source(str(path))) == ["para one\nstill one", "para two"]


# ---------------------------------------------------------------- local jsonl and parquet files


def test_jsonl_default_field(tmp_path):
    path = write_jsonl(tmp_path / "docs.jsonl", [{"text": "alpha", "id": 1}, {"text": "béta 東"}, {"text": "  "}])
    with path.open("a", encoding="utf-8") as f:
        f.write("\n")  # blank lines are skipped
    assert texts(load_source(str(path))) == ["alpha", "béta 東"]


def test_jsonl_named_field(tmp_path):
    path = write_jsonl(tmp_path / "docs.jsonl", [{"body": "one", "text": 3}, {"body": "two"}])
    assert texts(load_source(f"{path}:body")) == ["one", "two"]


@pytest.mark.parametrize(("suffix", "field"), [("", "text"), (":story", "story")])
def test_parquet_field(tmp_path, suffix, field):
    path = write_parquet(tmp_path / "docs.parquet", {field: ["first", None, "  ", "second 🚀"], "n": [1, 2, 3, 4]})
    assert texts(load_source(f"{path}{suffix}")) == ["first", "second 🚀"]


def test_field_suffix_works_when_the_path_has_a_colon(tmp_path):
    path = write_jsonl(tmp_path / "run:12" / "docs.jsonl", [{"body": "one"}])
    assert texts(load_source(f"{path}:body")) == ["one"]


# ---------------------------------------------------------------- local file errors


@pytest.mark.parametrize(("name", "content", "field", "expected"), [
    pytest.param("empty.txt", b"", "", "{path}: file holds no text", id="empty-txt"),
    pytest.param("blank.txt", b"\n  \n\n", "", "{path}: file holds no text", id="blank-txt"),
    pytest.param("bad.txt", b"fine\nalso fine\nbroken \xff\xfe here\nok\n", "", "{path}:3: not UTF-8 text",
                 id="txt-not-utf8-line-3"),
    pytest.param("empty.jsonl", b"", "", "{path}: file holds no text", id="empty-jsonl"),
    pytest.param("bad.jsonl", b'{"text": "ok"}\n{"text": "caf\xe9"}\n', "", "{path}:2: not UTF-8 text",
                 id="jsonl-not-utf8-line-2"),
    pytest.param("bad.jsonl", b'{"text": "ok"}\n\n{"text": oops}\n', "", "{path}:3: not valid JSON",
                 id="jsonl-not-json-line-3"),
    pytest.param("bad.jsonl", b'{"text": "ok"}\n{"body": "x"}\n', "", "{path}:2: text: no field 'text'",
                 id="jsonl-missing-default-field"),
    pytest.param("bad.jsonl", b'{"body": "ok"}\n{"body": "x"}\n{"text": "x"}\n', ":body",
                 "{path}:3: body: no field 'body'", id="jsonl-missing-named-field"),
    pytest.param("bad.jsonl", b'{"text": "ok"}\n["text"]\n', "", "{path}:2: text: no field 'text'",
                 id="jsonl-row-not-an-object"),
    pytest.param("bad.jsonl", b'{"text": ["a"]}\n', "", "{path}:1: text: expected a string",
                 id="jsonl-field-not-a-string"),
])
def test_local_file_errors_name_file_and_line(tmp_path, name, content, field, expected):
    path = tmp_path / name
    path.write_bytes(content)
    message = load_error(f"{path}{field}")
    assert message.startswith(expected.format(path=path))
    assert "\n" not in message


def test_parquet_missing_column_names_file_and_column(tmp_path):
    path = write_parquet(tmp_path / "docs.parquet", {"text": ["a", "b"]})
    message = load_error(f"{path}:story")
    assert message.startswith(f"{path}: story: no column 'story'")


def test_unreadable_parquet_names_the_file(tmp_path):
    path = tmp_path / "docs.parquet"
    path.write_bytes(b"this is not parquet at all")
    assert load_error(path).startswith(f"{path}: not a readable parquet file")


def test_missing_local_file_names_it(tmp_path):
    assert load_error(tmp_path / "nowhere.jsonl") == f"{tmp_path / 'nowhere.jsonl'}: no such file"


@pytest.mark.parametrize("name", ["tinystorie", "wikitext", "the-pile"])
def test_unknown_source_name_lists_the_known_ones(name):
    message = load_error(name)
    assert message.startswith(f"{name}: unknown source")
    for known in ("numeric", "stories", "tinystories", "wikitext-103", "openwebtext", "fineweb"):
        assert known in message


# ---------------------------------------------------------------- hub loaders on local copies


def story_split(split: str, count: int) -> list[str]:
    return [f"Once upon a time, {split} story number {i} happened." for i in range(count)]


def tinystories_folder(root, layout: str):
    """Files named as `datasets` infers splits: the hub's `data/<split>-00000-of-00001.parquet` shards, or
    `<split>.jsonl` (the keyword in the file name)."""
    for split, count in (("train", 6), ("validation", 3)):
        rows = story_split(split, count)
        if layout == "parquet":
            write_parquet(root / "data" / f"{split}-00000-of-00001.parquet", {"text": rows})
        else:
            write_jsonl(root / f"{split}.jsonl", [{"text": row} for row in rows])
    return root


@pytest.mark.parametrize("layout", ["parquet", "jsonl"])
def test_tinystories_from_a_local_copy_keeps_its_splits(tmp_path, load_dataset_calls, layout):
    folder = tinystories_folder(tmp_path / "tinystories", layout)
    data = load_hub("tinystories", hub_dir=str(folder))
    assert set(data.splits) == {"train", "validation"}
    assert texts(data, "train") == story_split("train", 6)
    assert texts(data, "validation") == story_split("validation", 3)
    assert [(args, kwargs["split"], kwargs["streaming"]) for args, kwargs in load_dataset_calls] == [
        ((str(folder), None), "train", False), ((str(folder), None), "validation", False)]


def test_hub_limit_is_applied_per_split(tmp_path, load_dataset_calls):
    folder = tinystories_folder(tmp_path / "tinystories", "jsonl")
    data = load_hub("tinystories", hub_dir=str(folder), limit=2)
    assert texts(data, "train") == story_split("train", 2)
    assert texts(data, "validation") == story_split("validation", 2)


WIKI_ARTICLES = {
    "train": [[" = Alpha = \n", "", " Alpha is the first letter . \n", "", " = = History = = \n", "",
               " It came from aleph . \n", ""],
              [" = Beta = \n", "", " Beta follows alpha . \n", ""]],
    "validation": [[" = Gamma = \n", "", " Gamma rays @-@ high energy . \n", ""]],
    "test": [[" = Delta = \n", "", " = = = Deep heading = = = \n", " Delta is a river mouth . \n", ""],
             [" = Epsilon = \n", " Small . \n"]],
}


def wiki_rows(split: str) -> list[str]:
    """WikiText-style rows: a leading empty row, then each article's title, paragraphs and empty rows."""
    return [""] + [row for article in WIKI_ARTICLES[split] for row in article]


def wiki_expected(split: str) -> list[str]:
    return ["".join(article).strip() for article in WIKI_ARTICLES[split]]


def test_wikitext_articles_regroups_rows_under_top_level_titles():
    articles = [a for a in _wikitext_articles(iter(wiki_rows("train"))) if a]  # load_hub drops empty ones
    assert articles == wiki_expected("train")


def test_wikitext_from_a_local_copy_is_regrouped_into_articles(tmp_path, load_dataset_calls):
    folder = tmp_path / "wikitext"
    for split in WIKI_ARTICLES:  # the hub's layout: wikitext-103-raw-v1/<split>-00000-of-00001.parquet
        write_parquet(folder / f"{split}-00000-of-00001.parquet", {"text": wiki_rows(split)})
    data = load_hub("wikitext-103", hub_dir=str(folder))
    assert set(data.splits) == {"train", "validation", "test"}
    for split in WIKI_ARTICLES:
        assert texts(data, split) == wiki_expected(split)
    assert texts(data, "train")[0].startswith("= Alpha =") and "= = History = =" in texts(data, "train")[0]
    assert [kwargs["split"] for _, kwargs in load_dataset_calls] == ["train", "validation", "test"]


@pytest.mark.parametrize("name", ["openwebtext", "fineweb"])
def test_streaming_sources_from_a_local_copy(tmp_path, load_dataset_calls, name):
    pages = [f"web page {i}: some text about topic {i % 3}." for i in range(7)]
    write_jsonl(tmp_path / name / "train.jsonl", [{"text": page, "id": i} for i, page in enumerate(pages)]
                + [{"text": "   ", "id": 99}])
    data = load_hub(name, hub_dir=str(tmp_path / name), limit=5)
    assert list(data.splits) == ["all"]
    assert texts(data) == pages[:5]
    assert [(kwargs["split"], kwargs["streaming"]) for _, kwargs in load_dataset_calls] == [("train", True)]


def hub_error(name, folder) -> str:
    with pytest.raises(PicolmError) as excinfo:
        load_hub(name, hub_dir=str(folder))
    message = str(excinfo.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("name", ["tinystories", "wikitext-103", "openwebtext"])
def test_failing_hub_load_is_one_clear_line(tmp_path, hf_offline, name):
    (tmp_path / "empty").mkdir()
    message = hub_error(name, tmp_path / "empty")
    assert message.startswith(f"{name}: could not load ") and "from the local copy" in message
    assert "doesn't contain any data files" in message and "--hub-dir" in message


def test_hub_copy_missing_a_split_names_it(tmp_path, hf_offline):
    write_jsonl(tmp_path / "ts" / "train.jsonl", [{"text": "only training data"}])
    message = hub_error("tinystories", tmp_path / "ts")
    assert message == ("tinystories: the local copy has no 'validation' split (it holds train); pass --split-ratios to "
                       "re-split what it holds")


def test_hub_copy_without_the_text_field_names_it(tmp_path, hf_offline):
    write_jsonl(tmp_path / "web" / "train.jsonl", [{"content": "a page"}])
    message = hub_error("openwebtext", tmp_path / "web")
    assert message == f"{tmp_path / 'web'}: text: dataset has no field 'text'"


def test_load_source_routes_hub_names_to_load_hub(tmp_path, load_dataset_calls):
    folder = tinystories_folder(tmp_path / "tinystories", "jsonl")
    data = load_source("tinystories", hub_dir=str(folder))
    assert texts(data, "validation") == story_split("validation", 3)
    assert len(load_dataset_calls) == 2


def test_a_stray_blank_line_does_not_merge_a_one_document_per_line_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("first\nsecond\nthird\n\n", encoding="utf-8")
    assert texts(load_source(str(path))) == ["first", "second", "third"]


def test_a_directory_is_not_a_source(tmp_path):
    folder = tmp_path / "corpus.txt"
    folder.mkdir()
    with pytest.raises(PicolmError, match="is a directory"):
        load_source(str(folder))
