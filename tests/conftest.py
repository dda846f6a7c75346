"""Shared fixtures: Hugging Face libraries kept offline, with their caches under pytest's temporary folder."""

import sys
from pathlib import Path

import pytest

# the files that run picolm against transformers and trl (loading, export, PicolmForCausalLM, logits, tokenizers,
# decoding and DPO losses checked against theirs): marked `interop`, which `.ci/run` runs again on their newest releases
INTEROP_FILES = ("test_interop.py", "test_hf_model.py", "test_picolm_transformers.py", "test_model.py",
                 "test_tokenizer.py", "test_generate.py", "test_preference_loss.py", "test_lora.py",
                 "test_instruct_eval.py", "test_data_formats.py")


def pytest_configure(config):
    missing = [name for name in INTEROP_FILES if not (Path(__file__).parent / name).is_file()]
    if missing:  # a renamed file would silently drop out of the newest-transformers run
        raise pytest.UsageError(f"tests/conftest.py INTEROP_FILES names missing files: {', '.join(missing)}")


def pytest_collection_modifyitems(items):
    for item in items:
        if item.path.name in INTEROP_FILES:
            item.add_marker(pytest.mark.interop)


@pytest.fixture(scope="session")
def hf_offline(tmp_path_factory):
    """`datasets` and `transformers` run offline and cache under a temporary folder (never ~/.cache)."""
    cache = tmp_path_factory.mktemp("hf-cache")
    patch = pytest.MonkeyPatch()
    for name, value in {"HF_HOME": cache, "HF_DATASETS_CACHE": cache / "datasets", "HF_HUB_OFFLINE": "1",
                        "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}.items():
        patch.setenv(name, str(value))
    if "datasets" in sys.modules:  # imported before the environment was set: patch what it read
        config = sys.modules["datasets"].config
        patch.setattr(config, "HF_DATASETS_CACHE", cache / "datasets")
        patch.setattr(config, "HF_HUB_OFFLINE", True)
    yield cache
    patch.undo()


@pytest.fixture
def load_dataset_calls(hf_offline, monkeypatch):
    """Every call picolm makes to `datasets.load_dataset`, passed through to the real function."""
    import datasets

    calls, real = [], datasets.load_dataset

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", spy)
    return calls


@pytest.fixture(scope="session")
def numeric_data(tmp_path_factory):
    """A small built-in numeric data directory (600 sequences), prepared once per session."""
    from picolm.data.pack import prepare
    from picolm.data.preparation import PrepareOptions

    out = tmp_path_factory.mktemp("numeric")
    prepare(PrepareOptions(source="numeric", out=str(out), num_sequences=600), log=lambda *a: None)
    return out


TINY = ["--model.n_layer", "2", "--model.n_head", "2", "--model.n_embd", "32", "--model.block_size", "32",
        "--train.batch_size", "8", "--train.eval_every", "10", "--train.eval_batches", "2", "--log.progress", "false"]


@pytest.fixture(scope="session")
def trained_run(numeric_data, tmp_path_factory):
    """A tiny numeric model trained for 20 steps through the CLI."""
    from picolm.cli import main

    run = tmp_path_factory.mktemp("runs") / "numeric"
    assert main(["train", "--data", str(numeric_data), "--out", str(run), "--train.max_steps", "20", *TINY]) == 0
    return run


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matrices: with the cores shared, more threads only wait on each other (100x slower here)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
