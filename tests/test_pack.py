"""`prepare` and token files: headers, round trips, split ratios, kind files, determinism, limits, tokenizers,
errors; and the numeric generator's rules."""

import json
import random
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

from picolm.data.pack import prepare
from picolm.data.preparation import PrepareOptions
from picolm.data.tokens import MAGIC, read_tokens, write_tokens
from picolm.data.synthetic import KINDS, NumericSpec, generate_numeric
from picolm.errors import PicolmError
from picolm.tokenizer import load_tokenizer

SPLIT_NAMES = ("train", "val", "test")


def quiet(*_args):
    pass


def run_prepare(tmp_path, name="data", **options):
    out = tmp_path / name
    meta = prepare(PrepareOptions(out=str(out), **options), log=quiet)
    return out, meta


def documents(tokens: np.ndarray, eos_id: int) -> list[np.ndarray]:
    """Token ids of each document (EOS removed); every document ends with EOS."""
    assert len(tokens) and tokens[-1] == eos_id
    ends = np.flatnonzero(tokens == eos_id)
    starts = np.concatenate([[0], ends[:-1] + 1])
    return [tokens[s:e] for s, e in zip(starts, ends)]


def decoded_documents(out, split: str) -> list[str]:
    tokenizer = load_tokenizer(out / "tokenizer")
    return [tokenizer.decode(doc.tolist()) for doc in documents(read_tokens(out / f"{split}.bin"), tokenizer.eos_id)]


def all_documents(out) -> Counter:
    return Counter(text for split in SPLIT_NAMES for text in decoded_documents(out, split))


def follows_rule(kind: str, values: list[int], max_value: int) -> bool:
    """An independent statement of each numeric kind's rule."""
    diffs = [b - a for a, b in zip(values, values[1:])]
    if kind == "counting":
        return all(d == 1 for d in diffs)
    if kind == "arithmetic":
        return len(set(diffs)) == 1 and abs(diffs[0]) >= 2
    if kind == "geometric":
        return values[0] >= 1 and any(all(b == a * r for a, b in zip(values, values[1:])) for r in (2, 3))
    if kind == "alternating":
        return values[0] != values[1] and all(v == values[i % 2] for i, v in enumerate(values))
    if kind == "random_walk":
        return all(abs(d) <= 3 and (d != 0 or a in (0, max_value)) for a, d in zip(values, diffs))
    raise AssertionError(kind)


def text_corpus(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = ["the", "fox", "jumped", "over", "a", "lazy", "dog", "and", "then", "slept", "café", "東京", "it's"]
    lines = {" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) + f" #{i}" for i in range(count)}
    return sorted(lines)


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def numeric_dir(tmp_path_factory):
    return run_prepare(tmp_path_factory.mktemp("numeric"), source="numeric", num_sequences=500)


# ---------------------------------------------------------------- token files


@pytest.mark.parametrize(("dtype", "values"), [
    (np.uint16, [0, 1, 2, 65535, 7, 0, 300]),
    (np.uint32, [0, 65536, 4_294_967_295, 50257, 1]),
    (np.uint8, [0, 255, 4]),
    (np.uint16, []),
])
def test_read_tokens_returns_what_write_tokens_wrote(tmp_path, dtype, values):
    tokens = np.array(values, dtype=dtype)
    path = tmp_path / "t.bin"
    write_tokens(path, tokens)
    back = read_tokens(path)
    assert back.dtype == dtype
    np.testing.assert_array_equal(back, tokens)
    header = np.fromfile(path, dtype=np.int32, count=256)  # the layout, read independently
    assert list(header[:5]) == [MAGIC, 1, np.dtype(dtype).itemsize, len(values), 0]
    assert not header[5:].any()
    np.testing.assert_array_equal(np.fromfile(path, dtype=dtype, offset=1024), tokens)
    assert path.stat().st_size == 1024 + len(values) * np.dtype(dtype).itemsize


def rewrite_header(path, index: int, value: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[index * 4:index * 4 + 4] = np.int32(value).tobytes()
    path.write_bytes(bytes(raw))


def corrupt(path, how: str) -> None:
    write_tokens(path, np.arange(100, dtype=np.uint16))
    if how == "magic":
        rewrite_header(path, 0, 0x12345678)
    elif how == "text":
        path.write_text("1 2 3 4 5\n" * 200)
    elif how == "short":
        path.write_bytes(path.read_bytes()[:100])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "version":
        rewrite_header(path, 1, 7)
    elif how == "width":
        rewrite_header(path, 2, 3)
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[:-10])


@pytest.mark.parametrize(("how", "why"), [
    ("magic", "not a picolm token file (bad header)"),
    ("text", "not a picolm token file (bad header)"),
    ("short", "not a picolm token file (bad header)"),
    ("empty", "not a picolm token file (bad header)"),
    ("version", "token file version 7 is not supported"),
    ("width", "bad header: 3 bytes per token"),
    ("truncated", "truncated: the header promises"),
])
def test_bad_token_file_names_the_file(tmp_path, how, why):
    path = tmp_path / "train.bin"
    corrupt(path, how)
    with pytest.raises(PicolmError) as excinfo:
        read_tokens(path)
    assert str(excinfo.value).startswith(f"{path}: {why}")


def test_missing_token_file_names_it(tmp_path):
    with pytest.raises(PicolmError, match="no such token file") as excinfo:
        read_tokens(tmp_path / "val.bin")
    assert str(tmp_path / "val.bin") in str(excinfo.value)


# ---------------------------------------------------------------- prepare: numeric


def test_numeric_prepare_writes_the_data_directory(numeric_dir):
    out, meta = numeric_dir
    for split in SPLIT_NAMES:
        assert (out / f"{split}.bin").is_file() and (out / f"{split}.kind.bin").is_file()
    assert (out / "tokenizer" / "picolm_tokenizer.json").is_file()
    assert json.loads((out / "meta.json").read_text()) == json.loads(json.dumps(meta))
    assert meta["tokenizer"] == "numeric" and meta["dtype"] == "uint16"
    assert meta["kinds"] == sorted(KINDS)
    assert load_tokenizer(out / "tokenizer").vocab_size == meta["vocab_size"]


def test_numeric_split_counts_follow_default_ratios(numeric_dir):
    out, meta = numeric_dir
    assert {s: meta["splits"][s]["documents"] for s in SPLIT_NAMES} == {"train": 400, "val": 50, "test": 50}
    for split in SPLIT_NAMES:
        tokens = read_tokens(out / f"{split}.bin")
        assert meta["splits"][split]["tokens"] == len(tokens)
        assert int((tokens == meta["eos_id"]).sum()) == meta["splits"][split]["documents"]


def test_numeric_prepare_keeps_every_generated_document_once(numeric_dir):
    out, _ = numeric_dir
    generated = Counter(r["text"] for r in generate_numeric(NumericSpec(num_sequences=500, seed=0)))
    assert all_documents(out) == generated


def labelled_documents(out, meta, split: str) -> list[tuple[str, list[int]]]:
    """(kind, values) per document, the kind read from the kind file, checked constant over the document."""
    tokens, kinds = read_tokens(out / f"{split}.bin"), read_tokens(out / f"{split}.kind.bin")
    assert kinds.dtype == np.uint8 and len(kinds) == len(tokens)
    tokenizer = load_tokenizer(out / "tokenizer")
    labelled, start = [], 0
    for doc in documents(tokens, tokenizer.eos_id):
        doc_kinds = set(kinds[start:start + len(doc) + 1].tolist())  # the document and its EOS
        assert len(doc_kinds) == 1
        labelled.append((meta["kinds"][doc_kinds.pop()], [int(v) for v in tokenizer.decode(doc.tolist()).split()]))
        start += len(doc) + 1
    assert start == len(tokens)
    return labelled


@pytest.mark.parametrize("split", SPLIT_NAMES)
def test_kind_file_labels_every_token_with_its_documents_rule(numeric_dir, split):
    out, meta = numeric_dir
    labelled = labelled_documents(out, meta, split)
    for kind, values in labelled:
        assert follows_rule(kind, values, 99), (kind, values)
    assert {kind for kind, _ in labelled} == set(KINDS)


def test_counting_documents_decode_to_consecutive_numbers(numeric_dir):
    out, meta = numeric_dir
    counting = [values for kind, values in labelled_documents(out, meta, "train") if kind == "counting"]
    assert len(counting) > 50
    for values in counting:
        assert len(values) >= 8
        assert values == list(range(values[0], values[0] + len(values)))


@pytest.mark.parametrize(("ratios", "expected"), [
    ((0.6, 0.3, 0.1), {"train": 300, "val": 150, "test": 50}),
    ((0.9, 0.02, 0.08), {"train": 450, "val": 10, "test": 40}),
])
def test_custom_split_ratios(tmp_path, ratios, expected):
    _, meta = run_prepare(tmp_path, source="numeric", num_sequences=500, split_ratios=ratios)
    assert {s: meta["splits"][s]["documents"] for s in SPLIT_NAMES} == expected
    assert meta["split_ratios"] == list(ratios)


def data_files(out) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()
            and p.name != "meta.json"}


def test_same_seed_gives_identical_bytes(tmp_path):
    first, _ = run_prepare(tmp_path, "a", source="numeric", num_sequences=300, seed=5)
    second, _ = run_prepare(tmp_path, "b", source="numeric", num_sequences=300, seed=5)
    assert data_files(first) == data_files(second)
    assert set(data_files(first)) >= {"train.bin", "val.bin", "test.bin", "train.kind.bin"}


def test_different_seed_gives_different_data(tmp_path):
    first, _ = run_prepare(tmp_path, "a", source="numeric", num_sequences=300, seed=5)
    second, _ = run_prepare(tmp_path, "b", source="numeric", num_sequences=300, seed=6)
    for name in ("train.bin", "val.bin", "test.bin"):
        assert (first / name).read_bytes() != (second / name).read_bytes()


def test_limit_is_respected(tmp_path):
    out, meta = run_prepare(tmp_path, source="numeric", num_sequences=500, limit=120)
    assert {s: meta["splits"][s]["documents"] for s in SPLIT_NAMES} == {"train": 96, "val": 12, "test": 12}
    assert sum(all_documents(out).values()) == 120


def test_numeric_vocabulary_covers_values_seen_only_outside_train(tmp_path):
    out, _ = run_prepare(tmp_path, source="numeric", num_sequences=12, seed=0)
    assert all_documents(out) == Counter(r["text"] for r in generate_numeric(NumericSpec(num_sequences=12)))


def test_kind_seen_only_outside_train_is_encoded(tmp_path):
    _, meta = run_prepare(tmp_path, source="numeric", num_sequences=12, seed=16, max_value=99)
    assert sum(meta["splits"][s]["documents"] for s in SPLIT_NAMES) == 12


def test_impossible_numeric_options_raise_picolm_error(tmp_path):
    with pytest.raises(PicolmError, match="max_value|max-value"):
        run_prepare(tmp_path, source="numeric", num_sequences=50, max_value=10)


# ---------------------------------------------------------------- prepare: text files


@pytest.mark.parametrize("tokenizer", ["bpe", None])
def test_text_file_with_small_bpe(tmp_path, tokenizer):
    lines = text_corpus(200)
    path = write_lines(tmp_path / "corpus.txt", lines)
    out, meta = run_prepare(tmp_path, source=str(path), tokenizer=tokenizer, vocab_size=300)
    assert meta["tokenizer"] == "bpe" and meta["vocab_size"] <= 300
    assert load_tokenizer(out / "tokenizer").kind == "bpe"
    assert meta["kinds"] is None and not (out / "train.kind.bin").exists()
    assert {s: meta["splits"][s]["documents"] for s in SPLIT_NAMES} == {"train": 160, "val": 20, "test": 20}
    assert all_documents(out) == Counter(lines)
    assert max(int(read_tokens(out / f"{s}.bin").max()) for s in SPLIT_NAMES) < meta["vocab_size"]


def test_text_file_with_char_tokenizer(tmp_path):
    lines = text_corpus(100)
    path = write_lines(tmp_path / "corpus.txt", lines)
    out, meta = run_prepare(tmp_path, source=str(path), tokenizer="char")
    assert meta["tokenizer"] == "char"
    assert meta["vocab_size"] == 3 + len(set("".join(lines)))
    assert all_documents(out) == Counter(lines)
    tokens = read_tokens(out / "train.bin")
    assert len(tokens) == sum(len(t) + 1 for t in decoded_documents(out, "train"))  # one token per character


def test_char_vocabulary_covers_characters_seen_only_outside_train(tmp_path):
    lines = [f"line {i} with a rare {chr(0x3B1 + i)}" for i in range(20)]  # each line has its own letter
    path = write_lines(tmp_path / "corpus.txt", lines)
    out, _ = run_prepare(tmp_path, source=str(path), tokenizer="char")
    assert all_documents(out) == Counter(lines)


# ---------------------------------------------------------------- prepare: errors


@pytest.mark.parametrize("ratios", [(0.5, 0.3, 0.3), (1.2, -0.1, -0.1), (0.8, 0.1, 0.05)])
def test_invalid_split_ratios_are_refused(tmp_path, ratios):
    with pytest.raises(PicolmError, match=r"--split-ratios: split ratios .* must be non-negative and sum to 1"):
        run_prepare(tmp_path, source="numeric", num_sequences=100, split_ratios=ratios)


def test_zero_val_ratio_leaves_val_empty_and_is_refused(tmp_path):
    with pytest.raises(PicolmError, match=r"^numeric: the val split is empty"):
        run_prepare(tmp_path, source="numeric", num_sequences=100, split_ratios=(0.9, 0.0, 0.1))
    assert not (tmp_path / "data").exists()


def test_too_few_documents_to_split_is_refused(tmp_path):
    path = write_lines(tmp_path / "tiny.txt", ["only one document", "and another"])
    with pytest.raises(PicolmError, match=r"--split-ratios: only 2 documents: too few to split"):
        run_prepare(tmp_path, source=str(path))


def test_source_with_an_empty_validation_split_is_refused(tmp_path, hf_offline):
    folder = tmp_path / "tinystories"
    folder.mkdir()
    write_lines(folder / "train.jsonl", [json.dumps({"text": f"story {i}"}) for i in range(10)])
    write_lines(folder / "validation.jsonl", [json.dumps({"text": "the only validation story"})])
    with pytest.raises(PicolmError, match=r"^tinystories: the val split is empty"):
        run_prepare(tmp_path, source="tinystories", hub_dir=str(folder))


def test_source_splits_are_kept_and_validation_halved_into_val_and_test(tmp_path, hf_offline):
    folder = tmp_path / "tinystories"
    folder.mkdir()
    train = [f"train story {i}" for i in range(10)]
    validation = [f"validation story {i}" for i in range(4)]
    write_lines(folder / "train.jsonl", [json.dumps({"text": t}) for t in train])
    write_lines(folder / "validation.jsonl", [json.dumps({"text": t}) for t in validation])
    out, meta = run_prepare(tmp_path, source="tinystories", hub_dir=str(folder), vocab_size=300)
    assert meta["split_ratios"] is None and meta["hub_repo"] == "roneneldan/TinyStories"
    assert decoded_documents(out, "train") == train
    assert decoded_documents(out, "val") == validation[:2]
    assert decoded_documents(out, "test") == validation[2:]


def test_unknown_tokenizer_is_refused(tmp_path):
    with pytest.raises(PicolmError, match=r"--tokenizer: unknown tokenizer 'wordpiece'"):
        run_prepare(tmp_path, source="numeric", num_sequences=100, tokenizer="wordpiece")


# ---------------------------------------------------------------- the numeric generator


SPECS = [
    NumericSpec(num_sequences=500, seed=0),
    NumericSpec(num_sequences=500, min_length=3, max_length=5, max_value=10, seed=1),
    NumericSpec(num_sequences=500, min_length=20, max_length=30, max_value=60, seed=2),
    NumericSpec(num_sequences=250, min_length=4, max_length=4, max_value=200, seed=3),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"len{s.min_length}-{s.max_length}-max{s.max_value}")
def test_every_sequence_follows_its_kind(spec):
    records = generate_numeric(spec)
    assert len(records) == spec.num_sequences
    for record in records:
        values = [int(v) for v in record["text"].split()]
        assert follows_rule(record["kind"], values, spec.max_value), record
        assert all(0 <= v <= spec.max_value for v in values), record
        low = 3 if record["kind"] == "geometric" else spec.min_length
        assert low <= len(values) <= spec.max_length, record


@pytest.mark.parametrize("spec", SPECS[:2], ids=["default", "short"])
def test_kinds_come_in_equal_shares(spec):
    assert Counter(r["kind"] for r in generate_numeric(spec)) == {k: spec.num_sequences // 5 for k in KINDS}


def test_generator_is_deterministic_for_a_seed():
    spec = NumericSpec(num_sequences=200, seed=9)
    assert generate_numeric(spec) == generate_numeric(replace(spec))
    assert generate_numeric(spec) != generate_numeric(replace(spec, seed=10))


def test_lengths_and_values_use_their_whole_range():
    """Not a constant: lengths span [min_length, max_length] and values reach both ends of [0, max_value]."""
    records = generate_numeric(NumericSpec(num_sequences=1000, seed=4))
    lengths = {len(r["text"].split()) for r in records if r["kind"] != "geometric"}
    assert lengths == set(range(8, 17))
    values = {int(v) for r in records for v in r["text"].split()}
    assert {0, 99} <= values


@pytest.mark.parametrize("changes", [{"max_value": 20}, {"min_length": 2}, {"min_length": 12, "max_length": 10}])
def test_impossible_specs_are_refused(changes):
    with pytest.raises(PicolmError, match="numeric data needs"):
        generate_numeric(replace(NumericSpec(num_sequences=10), **changes))


def test_geometric_sequences_have_at_least_three_terms_for_every_valid_spec():
    spec = NumericSpec(num_sequences=200, min_length=3, max_length=4, max_value=8, seed=0)
    short = [r["text"] for r in generate_numeric(spec) if len(r["text"].split()) < 3]
    assert short == []


def test_preparing_text_over_numeric_data_removes_the_old_kind_files(tmp_path):
    out, _ = run_prepare(tmp_path, source="numeric", num_sequences=200)
    assert (out / "train.kind.bin").exists()
    path = write_lines(tmp_path / "corpus.txt", text_corpus(60))
    run_prepare(tmp_path, source=str(path), tokenizer="char")
    assert not list(out.glob("*.kind.bin"))
