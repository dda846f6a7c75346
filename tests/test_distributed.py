"""torchrun data parallelism on CPU (gloo): DDP and FSDP2 against one process, resume across world sizes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from picolm.data.loader import ShuffledEpochs
from picolm.errors import PicolmError

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ["--model.n_layer", "2", "--model.n_head", "2", "--model.n_embd", "32", "--model.block_size", "32",
            "--train.batch_size", "8", "--train.eval_every", "3", "--train.eval_batches", "2", "--train.log_every",
            "1", "--train.schedule", "constant", "--train.device", "cpu", "--log.progress", "false",
            "--train.num_samples", "1", "--train.sample_tokens", "4"]


def picolm(*args, processes: int = 1) -> subprocess.CompletedProcess:
    """`picolm ARGS`, under `torchrun --nproc_per_node N` when N > 1; the exit code is checked by the caller."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                "--standalone"] if processes > 1 else [sys.executable]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([*launcher, "-m", "picolm", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def train(data, out, steps, processes=1, *extra, resume=False):
    args = ["train", "--resume", str(out)] if resume else ["train", "--data", str(data), "--out", str(out), *SETTINGS]
    result = picolm(*args, "--train.max_steps", str(steps), *extra, processes=processes)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def train_losses(run_dir) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r]


def assert_same_losses(a, b):
    assert [step for step, _ in a] == [step for step, _ in b]
    for (_, x), (_, y) in zip(a, b):
        assert x == pytest.approx(y, abs=1e-5)


@pytest.fixture(scope="module")
def one_process(numeric_data, tmp_path_factory):
    """Six steps of batch 8 in one process: the reference."""
    run = tmp_path_factory.mktemp("one") / "run"
    train(numeric_data, run, 6)
    return run


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_with_half_the_batch_each_match_one_process(numeric_data, one_process, tmp_path, parallel):
    run = tmp_path / "run"
    result = train(numeric_data, run, 6, 2, "--train.parallel", parallel)
    assert_same_losses(train_losses(run), train_losses(one_process))
    # rank 0 alone writes: one row per step, one summary line, the full weights in the checkpoint
    assert len(train_losses(run)) == 6
    assert result.stdout.count("run directory:") == 1
    assert "x 2 processes" in result.stdout
    from picolm.checkpoint import load_checkpoint

    state, reference = (load_checkpoint(r / "checkpoints" / "last.pt") for r in (run, one_process))
    assert state["tokens_seen"] == reference["tokens_seen"]
    for name, tensor in reference["model_state_dict"].items():
        assert state["model_state_dict"][name].shape == tensor.shape
    assert (run / "samples.txt").exists() == (parallel == "ddp")  # a sharded run leaves sampling to picolm generate


@pytest.mark.slow
@pytest.mark.parametrize("first, then", [(2, 2), (2, 1), (1, 2)])
def test_resume_continues_under_the_same_or_another_world_size(numeric_data, one_process, tmp_path, first, then):
    run = tmp_path / "run"
    train(numeric_data, run, 3, first)
    train(numeric_data, run, 6, then, *(["--train.parallel", "fsdp"] if then > 1 else []), resume=True)
    assert_same_losses(train_losses(run), train_losses(one_process))


def test_a_batch_that_does_not_split_over_the_processes_is_refused(numeric_data, tmp_path, monkeypatch):
    from picolm.config import build_config
    from picolm.train.trainer import Trainer

    monkeypatch.setenv("WORLD_SIZE", "3")
    config = build_config(None, {"data.path": str(numeric_data), "train.batch_size": 8, "train.max_steps": 1})
    with pytest.raises(PicolmError, match="does not split evenly over 3 processes") as error:
        Trainer(config, tmp_path / "run", log=lambda *a: None)
    assert error.value.field == "train.batch_size"


def test_fsdp_refuses_muon():
    from picolm.config import build_config

    with pytest.raises(PicolmError, match="fsdp shards") as error:
        build_config(None, {"train.parallel": "fsdp", "train.optimizer": "muon", "train.max_steps": 1}).validate()
    assert error.value.field == "train.optimizer"


class Walk(ShuffledEpochs):
    items_per_epoch = 40


def test_the_data_walk_resumes_under_another_world_size():
    whole = Walk(seed=3)
    expected = whole.next_items(30)
    ranks = [Walk(seed=3, rank=r, world_size=2) for r in range(2)]
    read = [item for _ in range(5) for walk in ranks for item in walk.next_items(1)]  # 10 items, interleaved
    assert read == expected[:10]
    alone = Walk(seed=3)
    alone.load_state_dict(ranks[0].state_dict())
    assert alone.next_items(20) == expected[10:30]
    four = Walk(seed=3, rank=1, world_size=4)
    with pytest.raises(PicolmError, match="do not split evenly over 4 processes"):
        four.load_state_dict(Walk(seed=3, world_size=1).state_dict() | {"cursor": 7})
