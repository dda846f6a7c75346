"""Web-scale preparation: streamed sources, held-out splits, train shards written in flat memory, and the
loader that samples windows across shards. The oracle for the shards is the `tokenizers` library encoding the
same train documents directly (the streamed path encodes through tiktoken, in worker processes or not)."""

import json
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from picolm.cli import main
from picolm.data.loader import TokenWindows, train_windows
from picolm.data.pack import prepare
from picolm.data.preparation import PrepareOptions
from picolm.data.tokens import TokenWriter, read_tokens, write_tokens
from picolm.data.sources import read_text_file, stream_local, stream_text_file
from picolm.errors import PicolmError
from picolm.tokenizer import load_tokenizer
from conftest import TINY

WORDS = ["the", "fox", "jumped", "over", "a", "lazy", "dog", "and", "then", "slept", "café", "東京", "it's", "river",
         "stone", "quietly", "under", "bright", "morning", "light"]


def web_pages(count: int, seed: int = 0) -> list[str]:
    """Distinct documents of a few sentences, some with paragraph breaks."""
    rng = random.Random(seed)
    pages = []
    for i in range(count):
        sentences = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14))).capitalize() + "."
                     for _ in range(rng.randint(1, 5))]
        pages.append(f"Page {i}. " + (" " if rng.random() < 0.7 else "\n\n").join(sentences))
    return pages


def write_jsonl(path, texts):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": t, "url": f"https://example.org/{i}"}, ensure_ascii=False) + "\n"
                            for i, t in enumerate(texts)), encoding="utf-8")
    return path


def quiet(*_args):
    pass


def streamed(tmp_path, source, name="data", **options):
    out = tmp_path / name
    options = {"stream": True, "vocab_size": 400, "shard_tokens": 1500, "workers": 0, **options}
    return out, prepare(PrepareOptions(source=str(source), out=str(out), **options), log=quiet)


def documents(tokens: np.ndarray, eos_id: int) -> list[list[int]]:
    ends = np.flatnonzero(tokens == eos_id)
    assert len(tokens) and tokens[-1] == eos_id
    return [d.tolist() for d in np.split(np.asarray(tokens), ends + 1)[:-1]]


def decoded(out, split: str) -> list[str]:
    tokenizer = load_tokenizer(out / "tokenizer")
    return [tokenizer.decode(ids[:-1]) for ids in documents(read_tokens(out / f"{split}.bin"), tokenizer.eos_id)]


def train_tokens(out, meta) -> np.ndarray:
    return np.concatenate([np.asarray(read_tokens(out / shard["file"])) for shard in meta["shards"]])


@pytest.fixture(scope="module")
def pages():
    return web_pages(600)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, pages):
    return write_jsonl(tmp_path_factory.mktemp("web") / "pages.jsonl", pages)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, corpus):
    """The corpus streamed into shards of 1,500 tokens, encoded in this process."""
    return streamed(tmp_path_factory.mktemp("sharded"), corpus)


# ---------------------------------------------------------------- streamed preparation


def test_shards_hold_the_train_documents_as_the_tokenizer_encodes_them(sharded, pages):
    out, meta = sharded
    tokenizer = load_tokenizer(out / "tokenizer")
    held_out = set(decoded(out, "val")) | set(decoded(out, "test"))
    train = [p for p in pages if p not in held_out]
    expected = [i for p in train for i in tokenizer.tok.encode(p, add_special_tokens=False).ids + [tokenizer.eos_id]]
    assert train_tokens(out, meta).tolist() == expected
    assert meta["splits"]["train"] == {"documents": len(train), "tokens": len(expected)}
    assert not (out / "train.bin").exists()


def test_shards_are_cut_at_shard_tokens_and_listed_in_meta(sharded):
    out, meta = sharded
    shards = meta["shards"]
    assert len(shards) >= 4
    assert [s["file"] for s in shards] == [f"train-{i:05d}.bin" for i in range(len(shards))]
    assert [len(read_tokens(out / s["file"])) for s in shards] == [s["tokens"] for s in shards]
    assert all(s["tokens"] == 1500 for s in shards[:-1]) and 0 < shards[-1]["tokens"] <= 1500
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["meta.json", "tokenizer", "val.bin", "test.bin", *(s["file"] for s in shards)])  # no .tmp left


def test_val_and_test_are_held_out_disjointly_in_stream_order(sharded, pages):
    out, meta = sharded
    val, test = decoded(out, "val"), decoded(out, "test")
    train = set(pages) - set(val) - set(test)
    assert not set(val) & set(test)
    assert len(val) + len(test) + len(train) == len(pages)
    assert val == [p for p in pages if p in set(val)] and test == [p for p in pages if p in set(test)]
    for held in (val, test):  # 10% each of 600: binomial, 4 standard deviations either side
        assert 60 - 30 < len(held) < 60 + 30
    assert meta["splits"]["val"]["documents"] == len(val) and meta["split_ratios"] == [0.8, 0.1, 0.1]


def test_split_ratios_and_seed_decide_the_held_out_documents(tmp_path, corpus, pages):
    out, _ = streamed(tmp_path, corpus, "wide", split_ratios=(0.5, 0.3, 0.2))
    val, test = decoded(out, "val"), decoded(out, "test")
    assert 180 - 50 < len(val) < 180 + 50 and 120 - 45 < len(test) < 120 + 45
    reseeded, _ = streamed(tmp_path, corpus, "reseeded", split_ratios=(0.5, 0.3, 0.2), seed=1)
    assert decoded(reseeded, "val") != val


def test_worker_processes_write_the_same_files(tmp_path, corpus, sharded):
    out, meta = sharded
    parallel, parallel_meta = streamed(tmp_path, corpus, workers=2)
    for name in ["val.bin", "test.bin", *(s["file"] for s in meta["shards"])]:
        assert (parallel / name).read_bytes() == (out / name).read_bytes(), name
    assert parallel_meta["shards"] == meta["shards"]


def test_the_bpe_learns_from_a_sample_of_train_documents(tmp_path, corpus, pages):
    out, meta = streamed(tmp_path, corpus, tokenizer_sample_mb=0.002)
    held_out = set(decoded(out, "val")) | set(decoded(out, "test"))
    sizes = np.cumsum([len(p.encode()) for p in pages if p not in held_out])
    documents = int(np.searchsorted(sizes, 2000)) + 1  # the shortest prefix reaching 2,000 bytes
    assert meta["tokenizer_sample"] == {"documents": documents, "bytes": int(sizes[documents - 1])}


def test_limit_streams_only_the_first_documents(tmp_path, corpus, pages):
    out, meta = streamed(tmp_path, corpus, limit=200)
    assert sum(meta["splits"][s]["documents"] for s in ("train", "val", "test")) == 200
    assert set(decoded(out, "val")) | set(decoded(out, "test")) <= set(pages[:200])


def test_a_stream_replaces_an_earlier_directory_completely(tmp_path, corpus):
    out, _ = streamed(tmp_path, corpus, shard_tokens=500)
    (out / "train.bin").write_bytes(b"stale")
    _, meta = streamed(tmp_path, corpus, shard_tokens=100_000)
    assert len(meta["shards"]) == 1
    assert sorted(p.name for p in out.glob("train*")) == ["train-00000.bin"]


def test_a_web_source_streams_through_datasets_into_shards(tmp_path, load_dataset_calls):
    pages = web_pages(300, seed=1)
    folder = tmp_path / "openwebtext"  # parquet files named as the hub names a split's files, a "text" column
    folder.mkdir()
    pq.write_table(pa.table({"text": pages[:150]}), folder / "train-00000-of-00002.parquet")
    pq.write_table(pa.table({"text": pages[150:]}), folder / "train-00001-of-00002.parquet")
    out = tmp_path / "owt"
    meta = prepare(PrepareOptions(source="openwebtext", out=str(out), hub_dir=str(folder), shard_tokens=2000,
                                  workers=0), log=quiet)
    assert meta["options"]["stream"] is True and meta["options"]["vocab_size"] == 32_768
    assert meta["hub_repo"] == "Skylion007/openwebtext" and len(meta["shards"]) >= 2
    assert [kwargs["streaming"] for _, kwargs in load_dataset_calls] == [True, True]  # tokenizer sample, encoding
    tokenizer = load_tokenizer(out / "tokenizer")
    train = [tokenizer.decode(ids[:-1]) for ids in documents(train_tokens(out, meta), tokenizer.eos_id)]
    assert sorted(train + decoded(out, "val") + decoded(out, "test")) == sorted(pages)


def test_short_training_reads_the_shards(tmp_path, corpus):
    data, meta = streamed(tmp_path, corpus, shard_tokens=400)
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(run), "--train.max_steps", "4", *TINY]) == 0
    state = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert state["step"] == 4 and len(meta["shards"]) > 10


@pytest.mark.parametrize(("args", "message"), [
    (["--stream", "--shard-tokens", "0"], "--shard-tokens: must be at least 1, got 0"),
    (["--stream", "--workers", "-1"], "--workers: must be at least 0, got -1"),
    (["--stream", "--tokenizer", "char"], "--tokenizer: the char vocabulary needs every symbol"),
    (["--stream", "--subset-ratio", "0.5"], "--subset-ratio: a stream's length is unknown"),
    (["--stream", "--split-ratios", "0.5,0.5,0.5"], "--split-ratios: split ratios (0.5, 0.5, 0.5) must be"),
])
def test_bad_streaming_options_give_one_line_and_status_2(tmp_path, corpus, capsys, args, message):
    assert main(["prepare", "--source", str(corpus), "--out", str(tmp_path / "out"), *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]
    assert not (tmp_path / "out").exists()


def test_sources_that_cannot_stream_are_named(tmp_path, capsys):
    assert main(["prepare", "--source", "stories", "--out", str(tmp_path / "out"), "--stream"]) == 2
    assert "stories: streaming reads the web sources (openwebtext, fineweb)" in capsys.readouterr().err


# ---------------------------------------------------------------- streamed local files


@pytest.mark.parametrize("content", [
    "first doc\nsecond doc\n  third, padded  \n",
    "windows\r\nline ends\r\n",
    "para one\nstill one\n\npara two\n\n\n\npara three\nend\n",
    "\n\nlead blank\n\ntail\n\n",
    "a\n \t\nb\nc\n\n\n",
    "\ufeffbom first\nline\n",
])
def test_a_streamed_text_file_has_read_text_files_documents(tmp_path, content):
    path = tmp_path / "corpus.txt"
    path.write_text(content, encoding="utf-8", newline="")
    assert list(stream_text_file(path)) == [r["text"] for r in read_text_file(path)]


def test_a_streamed_text_file_decides_its_layout_on_its_head(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("one\ntwo\n\n" + "three\n" * 5, encoding="utf-8")
    assert list(stream_text_file(path, probe_bytes=4)) == ["one", "two", *["three"] * 5]
    assert list(stream_text_file(path)) == ["one\ntwo", "\n".join(["three"] * 5)]


def test_streamed_parquet_and_jsonl_fields(tmp_path):
    pq.write_table(pa.table({"body": ["alpha", " ", None, "beta"], "n": [1, 2, 3, 4]}), tmp_path / "x.parquet")
    assert list(stream_local(f"{tmp_path / 'x.parquet'}:body")) == ["alpha", "beta"]
    with pytest.raises(PicolmError, match="no column 'text'"):
        list(stream_local(str(tmp_path / "x.parquet")))
    (tmp_path / "x.jsonl").write_text('{"body": "one"}\n\n{"body": "two"}\n{"other": 1}\n', encoding="utf-8")
    texts = stream_local(f"{tmp_path / 'x.jsonl'}:body")
    assert [next(texts), next(texts)] == ["one", "two"]
    with pytest.raises(PicolmError, match=r"x.jsonl:4: body: no field 'body'"):
        next(texts)


# ---------------------------------------------------------------- token writer


def test_token_writer_fixes_the_header_count_and_never_leaves_a_torn_file(tmp_path):
    path = tmp_path / "t.bin"
    with TokenWriter(path, np.uint32) as writer:
        for start in range(0, 70_000, 7_000):
            writer.write(np.arange(start, start + 7_000))
    assert np.array_equal(read_tokens(path), np.arange(70_000))
    with pytest.raises(RuntimeError), TokenWriter(tmp_path / "u.bin", np.uint16) as writer:
        writer.write(np.arange(10))
        raise RuntimeError("crash")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.bin"]


# ---------------------------------------------------------------- the sharded loader

SHARD_LENGTHS = (100, 57, 230, 12, 81)
BLOCK = 8


@pytest.fixture
def shard_dir(tmp_path):
    """Shards whose tokens are their global positions, so a window names where it came from."""
    starts = np.cumsum([0, *SHARD_LENGTHS])
    shards = []
    for i, (start, length) in enumerate(zip(starts, SHARD_LENGTHS)):
        write_tokens(tmp_path / f"train-{i:05d}.bin", np.arange(start, start + length, dtype=np.uint32))
        shards.append({"file": f"train-{i:05d}.bin", "tokens": length})
    (tmp_path / "meta.json").write_text(json.dumps({"task": "text", "shards": shards}))
    return tmp_path


def shard_of(window) -> int:
    return int(np.searchsorted(np.cumsum(SHARD_LENGTHS), window[0], side="right"))


def epoch_windows(loader) -> list[np.ndarray]:
    return [w.numpy() for w in loader.next_batch(loader.items_per_epoch // loader.world_size)["input_ids"]]


def torch_equal(a, b) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and bool((a == b).all())


def test_windows_come_from_every_shard_and_never_straddle_one(shard_dir):
    loader = train_windows(shard_dir, BLOCK, seed=3)
    assert loader.items_per_epoch == sum(max(0, (n - BLOCK) // BLOCK) for n in SHARD_LENGTHS)
    batch = loader.next_batch(loader.items_per_epoch)
    shard_starts = np.cumsum([0, *SHARD_LENGTHS])
    seen = set()
    for inputs, targets in zip(batch["input_ids"].numpy(), batch["targets"].numpy()):
        window = np.concatenate([inputs, targets[-1:]])
        shard = shard_of(window)
        offset = int(window[0] - shard_starts[shard])
        tokens = read_tokens(shard_dir / f"train-{shard:05d}.bin")
        assert np.array_equal(window, tokens[offset:offset + BLOCK + 1])  # the tokens at its shard offset
        assert np.array_equal(targets, inputs + 1)
        seen.add(shard)
    assert seen == {i for i, n in enumerate(SHARD_LENGTHS) if n >= 2 * BLOCK}
    assert len({int(w[0]) for w in batch["input_ids"]}) == loader.items_per_epoch  # each window once per epoch


def test_a_resumed_loader_gives_the_same_next_batches(shard_dir):
    first = train_windows(shard_dir, BLOCK, seed=1)
    for _ in range(12):  # 60 of the 53 windows: into the second epoch
        first.next_batch(5)
    state = first.state_dict()
    expected = [first.next_batch(5) for _ in range(6)]
    resumed = train_windows(shard_dir, BLOCK, seed=1)
    resumed.load_state_dict(state)
    for batch in expected:
        again = resumed.next_batch(5)
        assert all(torch_equal(batch[k], again[k]) for k in ("input_ids", "targets"))


def test_ranks_see_disjoint_windows_that_cover_the_epoch(shard_dir):
    ranks = [train_windows(shard_dir, BLOCK, seed=2, rank=r, world_size=2) for r in range(2)]
    starts = [{int(w[0]) for w in epoch_windows(loader)} for loader in ranks]
    assert not starts[0] & starts[1]
    whole = train_windows(shard_dir, BLOCK, seed=2)
    assert starts[0] | starts[1] == {int(w[0]) for w in epoch_windows(whole)[:2 * len(starts[0])]}


def test_one_shard_reads_as_the_single_file_it_is(shard_dir):
    alone = TokenWindows(shard_dir / "train-00002.bin", BLOCK, seed=4)
    listed = TokenWindows([shard_dir / "train-00002.bin"], BLOCK, seed=4)
    assert torch_equal(alone.next_batch(40)["input_ids"], listed.next_batch(40)["input_ids"])


def test_shard_problems_are_named(shard_dir):
    meta = json.loads((shard_dir / "meta.json").read_text())
    meta["shards"][1]["tokens"] = 58
    (shard_dir / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(PicolmError, match="train-00001.bin: holds 57 tokens, but meta.json lists 58"):
        train_windows(shard_dir, BLOCK)
    with pytest.raises(PicolmError, match="no shard holds 2 x block_size = 480 tokens"):
        TokenWindows(sorted(shard_dir.glob("train-*.bin")), 240)
