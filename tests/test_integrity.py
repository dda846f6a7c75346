"""Nothing lost, nothing mixed: one writer per run and data folder, data folders replaced whole, tokenizer identity,
settings applied or refused, full disks, and hand-edited checkpoints, each met with one line."""

import json
import os
import resource
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from conftest import TINY

from picolm.checkpoint import link_checkpoint, load_checkpoint, load_weights, save_checkpoint
from picolm.cli import main
from picolm.data.pack import prepare
from picolm.data.preparation import PrepareOptions
from picolm.data.tokens import load_meta
from picolm.errors import PicolmError
from picolm.locks import LOCK_FILE, lock_folder
from picolm.tokenizer import load_tokenizer

HOLD_LOCK = """
import sys, time
from pathlib import Path
from picolm.locks import {kind}
{kind}(Path(sys.argv[1])).acquire()
print("held", flush=True)
time.sleep(120)
"""


@contextmanager
def lock_held_elsewhere(path: Path, kind: str = "lock_folder"):
    """Another process holding the lock of `path`, as a training or preparing process would; killed with -9 after."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK.format(kind=kind), str(path)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.kill()
        holder.wait()


def one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture(scope="module")
def char_data(tmp_path_factory) -> Path:
    """Text data made by a character tokenizer: ids that mean nothing to the numeric models."""
    root = tmp_path_factory.mktemp("char")
    text = root / "text.txt"
    text.write_text("\n\n".join(f"the cat sat on mat number {i} and then it ran away" for i in range(300)))
    prepare(PrepareOptions(source=str(text), out=str(root / "data"), tokenizer="char"), log=lambda *a: None)
    return root / "data"


# -- one writer ---------------------------------------------------------------------------------------------
def test_a_second_writer_of_a_run_exits_2_naming_the_holder_and_a_killed_holder_frees_it(numeric_data, tmp_path,
                                                                                        capsys):
    run, fresh = tmp_path / "run", tmp_path / "fresh"
    assert main(["train", "--data", str(numeric_data), "--out", str(run), "--train.max_steps", "2", *TINY]) == 0
    rows = (run / "metrics.jsonl").read_text()
    command = ["train", "--data", str(numeric_data), "--out", str(fresh), "--train.max_steps", "2", *TINY]
    with lock_held_elsewhere(run) as holder, lock_held_elsewhere(fresh) as other:
        assert main(["train", "--resume", str(run), "--train.max_steps", "4"]) == 2
        assert f"{run}: in use by PID {holder.pid} (one writer at a time)" in one_error_line(capsys)
        assert main(command) == 2
        assert f"{fresh}: in use by PID {other.pid}" in one_error_line(capsys)
    assert (run / "metrics.jsonl").read_text() == rows
    assert main(command) == 0  # kill -9 released the locks
    assert main(["train", "--resume", str(run), "--train.max_steps", "4"]) == 0


def test_a_run_that_fails_before_writing_leaves_no_folder(numeric_data, tmp_path, capsys):
    run = tmp_path / "typo"
    assert main(["train", "--data", str(numeric_data), "--out", str(run), *TINY, "--model.n_embd", "33"]) == 2
    assert not run.exists()


def test_a_run_is_never_written_among_the_users_files(numeric_data, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.yaml.bak").write_text("my notes")
    assert main(["train", "--data", str(numeric_data), "--out", str(mine), "--train.max_steps", "1", *TINY]) == 2
    assert "no picolm run" in one_error_line(capsys)
    assert [p.name for p in mine.iterdir()] == ["config.yaml.bak"]


def test_one_compare_and_one_prepare_per_folder(tmp_path):
    from picolm.analysis.experiment import load_experiment, run_experiment

    target = tmp_path / "data"
    with lock_held_elsewhere(target, "lock_beside"):
        with pytest.raises(PicolmError, match=r"in use by PID \d+"):
            prepare(PrepareOptions(source="numeric", out=str(target), num_sequences=100), log=lambda *a: None)
    assert not target.exists()
    out = tmp_path / "compare"
    with lock_held_elsewhere(out):
        experiment = load_experiment(Path("picolm/recipes/positions-compare.yaml"))
        with pytest.raises(PicolmError, match=r"in use by PID \d+"):
            run_experiment(experiment, out, log=lambda *a: None)
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]


TRY_LOCK = """
import sys
from pathlib import Path
from picolm.errors import PicolmError
from picolm.locks import lock_folder
try:
    lock_folder(Path(sys.argv[1])).acquire()
    print("acquired")
except PicolmError as exc:
    print(exc)
"""


def another_process_tries(folder: Path) -> str:
    return subprocess.run([sys.executable, "-c", TRY_LOCK, str(folder)], capture_output=True, text=True,
                          timeout=60).stdout.strip()


def test_the_same_process_may_lock_again_and_other_processes_may_not(tmp_path):
    first = lock_folder(tmp_path / "run").acquire()
    second = lock_folder(tmp_path / "run").acquire()  # a notebook resuming while the first trainer still exists
    first.release()  # the lock passed to `second`
    assert f"in use by PID {os.getpid()}" in another_process_tries(tmp_path / "run")
    second.release()
    second.release()
    assert another_process_tries(tmp_path / "run") == "acquired"


# -- data folders replaced whole ------------------------------------------------------------------------------
def numeric(out: Path, **options) -> PrepareOptions:
    return PrepareOptions(source="numeric", out=str(out), num_sequences=200, **options)


def test_prepare_refuses_a_folder_of_the_users_files(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    with pytest.raises(PicolmError, match="not a picolm data folder"):
        prepare(numeric(out), log=lambda *a: None)
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]


def test_prepare_replaces_a_data_folder_whole_and_a_failure_keeps_the_old_one(tmp_path, monkeypatch):
    out = tmp_path / "data"
    prepare(numeric(out, max_value=40), log=lambda *a: None)
    old_meta = load_meta(out)
    import picolm.data.pack as pack

    def fail(*args, **kwargs):
        raise KeyboardInterrupt  # a Ctrl-C while the token files are written

    monkeypatch.setattr(pack, "write_tokens", fail)
    with pytest.raises(KeyboardInterrupt):
        prepare(numeric(out, max_value=70), log=lambda *a: None)
    assert load_meta(out) == old_meta
    assert load_tokenizer(out / "tokenizer").vocab_size == old_meta["vocab_size"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no half-built folder, no lock file left
    monkeypatch.undo()
    prepare(numeric(out, max_value=70), log=lambda *a: None)
    assert load_meta(out)["vocab_size"] == old_meta["vocab_size"] + 30
    assert load_tokenizer(out / "tokenizer").fingerprint == load_meta(out)["tokenizer_fingerprint"]


def test_a_prepare_killed_midway_is_cleaned_up_by_the_next(tmp_path):
    out = tmp_path / "data"
    prepare(numeric(out), log=lambda *a: None)
    (tmp_path / ".data.partial-99999").mkdir()  # what a kill -9 mid-prepare leaves
    (tmp_path / ".data.partial-99999" / "train.bin.tmp").write_bytes(b"x" * 100)
    prepare(numeric(out, seed=1), log=lambda *a: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


# -- tokenizer identity ----------------------------------------------------------------------------------------
def test_a_model_never_meets_another_tokenizers_data(trained_run, char_data, tmp_path, capsys):
    mismatch = "made by another tokenizer"
    assert main(["eval", str(trained_run), "--data", str(char_data)]) == 2
    assert mismatch in one_error_line(capsys)
    assert main(["train", "--data", str(char_data), "--init-from", str(trained_run), "--out", str(tmp_path / "ft"),
                 "--train.max_steps", "1", "--log.progress", "false"]) == 2
    assert mismatch in one_error_line(capsys)
    assert main(["analyze", str(trained_run), "--data", str(char_data), "--what", "neurons",
                 "--out", str(tmp_path / "analysis")]) == 2
    assert mismatch in one_error_line(capsys)
    assert load_checkpoint(trained_run / "checkpoints" / "last.pt")["tokenizer_fingerprint"] == \
        load_tokenizer(trained_run / "tokenizer").fingerprint


def test_resume_refuses_data_remade_by_another_tokenizer(numeric_data, tmp_path, capsys):
    data = tmp_path / "data"
    prepare(numeric(data), log=lambda *a: None)
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(run), "--train.max_steps", "2", *TINY]) == 0
    prepare(numeric(data, max_value=40), log=lambda *a: None)  # the folder now holds another vocabulary's ids
    assert main(["train", "--resume", str(run), "--train.max_steps", "4"]) == 2
    assert "made by another tokenizer" in one_error_line(capsys)


def test_data_prepared_before_fingerprints_is_checked_by_its_tokenizer(trained_run, char_data, tmp_path, capsys):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(char_data, old)
    meta = load_meta(old)
    del meta["tokenizer_fingerprint"]
    (old / "meta.json").write_text(json.dumps(meta))
    assert main(["eval", str(trained_run), "--data", str(old)]) == 2
    assert "made by another tokenizer" in one_error_line(capsys)


# -- settings applied or refused -------------------------------------------------------------------------------
def test_dropout_and_a_shorter_context_apply_to_a_started_model_and_the_shape_is_refused(trained_run, numeric_data,
                                                                                        tmp_path, capsys):
    run = tmp_path / "ft"
    base = ["train", "--data", str(numeric_data), "--init-from", str(trained_run), "--train.max_steps", "2",
            "--train.batch_size", "4", "--train.eval_batches", "1", "--log.progress", "false"]
    assert main([*base, "--out", str(run), "--model.dropout", "0.1", "--model.block_size", "16"]) == 0
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert (state["model_config"]["dropout"], state["model_config"]["block_size"]) == (0.1, 16)
    assert state["model_state_dict"]["position.wpe.weight"].shape[0] == 16
    started = load_checkpoint(trained_run / "checkpoints" / "last.pt")["model_state_dict"]["position.wpe.weight"]
    assert not torch.equal(state["model_state_dict"]["position.wpe.weight"], started[:16])  # cropped, then trained
    for setting, value, why in [("--model.n_layer", "3", "keeps its shape"), ("--model.block_size", "64", "longer"),
                                ("--model.position", "rope", "keeps its shape")]:
        assert main([*base, "--out", str(tmp_path / setting), setting, value]) == 2
        line = one_error_line(capsys)
        assert setting.removeprefix("--") in line and why in line
    assert main(["train", "--data", str(numeric_data), "--init-from", str(trained_run), "--dry-run",
                 "--model.block_size", "24"]) == 0
    assert "context 24" in capsys.readouterr().out


def test_a_mistyped_reference_fails_rather_than_falling_back(trained_run, tmp_path, capsys):
    pairs = tmp_path / "pairs"
    prepare(PrepareOptions(source="horror-dpo", out=str(pairs), num_sequences=40), log=lambda *a: None)
    assert main(["eval", str(trained_run), "--metrics", "preference", "--pairs", str(pairs),
                 "--reference", str(tmp_path / "no-such-run")]) == 2
    assert "no-such-run" in one_error_line(capsys)


def test_a_broken_config_beside_does_not_stop_a_new_run(numeric_data, tmp_path):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.yaml").write_text("log: [unclosed\n")
    (tmp_path / "list").mkdir()
    (tmp_path / "list" / "config.yaml").write_text("- 1\n- 2\n")
    assert main(["train", "--data", str(numeric_data), "--out", str(tmp_path / "new"), "--train.max_steps", "1",
                 *TINY]) == 0


# -- full disks and hand-edited checkpoints ----------------------------------------------------------------------
@contextmanager
def files_limited_to(size: int):
    """Writes past `size` bytes fail with EFBIG, as on a full disk (the kernel's file-size limit, for this process)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def checkpoint_state(step: int) -> dict:
    weights = {"w": torch.full((64, 64), float(step))}
    return {"architecture": "gpt", "model_config": {}, "model_state_dict": weights, "global_step": step,
            "optimizer_state_dict": [{"exp_avg": torch.zeros(256, 256)}]}


@pytest.mark.parametrize("limit", [8_000, 40_000], ids=["weights-fail", "checkpoint-fails"])
def test_a_full_disk_keeps_the_previous_checkpoint_pair_and_leaves_no_temporary_files(tmp_path, limit):
    path = tmp_path / "last.pt"
    save_checkpoint(checkpoint_state(1), path, weights=path.with_suffix(".safetensors"))
    with files_limited_to(limit), pytest.raises(PicolmError) as failure:
        save_checkpoint(checkpoint_state(2), path, weights=path.with_suffix(".safetensors"))
    message = str(failure.value)
    assert "File too large" in message and "the previous one is kept" in message and "\n" not in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "last.safetensors"]
    assert load_checkpoint(path)["global_step"] == 1
    assert load_weights(path.with_suffix(".safetensors"))[1]["global_step"] == "1"


@pytest.mark.parametrize("links", [True, False], ids=["hard-links", "copies"])
def test_a_checkpoint_given_a_second_name_keeps_it_when_the_first_is_saved_again(tmp_path, monkeypatch, links):
    last, best = tmp_path / "last.pt", tmp_path / "best.pt"
    save_checkpoint(checkpoint_state(1), last, weights=last.with_suffix(".safetensors"))
    if not links:  # a file system without hard links
        monkeypatch.setattr("os.link", lambda *args: (_ for _ in ()).throw(OSError(1, "Operation not permitted")))
    link_checkpoint(last, best)
    save_checkpoint(checkpoint_state(2), last, weights=last.with_suffix(".safetensors"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "best.safetensors", "last.pt", "last.safetensors"]
    assert (load_checkpoint(best)["global_step"], load_weights(best.with_suffix(".safetensors"))[1]["global_step"]) \
        == (1, "1")
    assert (load_checkpoint(last)["global_step"], load_weights(last.with_suffix(".safetensors"))[1]["global_step"]) \
        == (2, "2")


def test_a_full_disk_mid_training_is_one_line(numeric_data, tmp_path, capsys):
    run = tmp_path / "run"
    with files_limited_to(60_000):
        code = main(["train", "--data", str(numeric_data), "--out", str(run), "--train.max_steps", "2", *TINY])
    assert code == 2
    line = one_error_line(capsys)
    assert "could not write the checkpoint (File too large)" in line
    assert not list(run.rglob("*.tmp"))


def test_hand_edited_checkpoints_get_one_line(trained_run, tmp_path, capsys):
    state = load_checkpoint(trained_run / "checkpoints" / "last.pt")
    weights = state["model_state_dict"]
    edits = {
        "shape": {**state, "model_config": {**state["model_config"], "n_embd": 64}},
        "missing-tensor": {**state, "model_state_dict": {k: v for k, v in weights.items() if "ln_f" not in k}},
        "missing-tokenizer": {k: v for k, v in state.items() if k != "tokenizer"},
        "broken-tokenizer": {**state, "tokenizer": {"kind": "bpe", "tokenizer_json": "{"}},
    }
    for name, edited in edits.items():
        path = tmp_path / f"{name}.pt"
        save_checkpoint(edited, path)
        assert main(["generate", str(path), "--prompt", "1 2", "--max-new-tokens", "2"]) == 2, name
        assert str(path) in one_error_line(capsys)


def test_a_finished_run_holds_no_lock_and_leaves_no_lock_file(trained_run):
    assert not (trained_run / LOCK_FILE).exists()
    assert another_process_tries(trained_run) == "acquired"


def test_an_export_carries_the_fingerprint_and_its_tokenizer_gives_the_same(trained_run, tmp_path):
    from picolm.interop.export import export_run
    from picolm.interop.hf import load_pretrained_tokenizer

    out = tmp_path / "export"
    export_run(trained_run, out)
    fingerprint = load_tokenizer(trained_run / "tokenizer").fingerprint
    assert json.loads((out / "config.json").read_text())["picolm_tokenizer_fingerprint"] == fingerprint
    assert load_pretrained_tokenizer(str(out), local=True).fingerprint == fingerprint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no lock file or half-built folder beside it


def test_without_an_atomic_swap_two_renames_replace_the_folder_and_a_kill_between_them_is_undone(tmp_path,
                                                                                                 monkeypatch):
    import picolm.data.folder as folder

    out = tmp_path / "data"
    prepare(numeric(out, max_value=40), log=lambda *a: None)
    monkeypatch.setattr(folder, "_exchange", lambda a, b: False)  # a system without renameat2
    prepare(numeric(out, max_value=60), log=lambda *a: None)
    assert load_meta(out)["options"]["max_value"] == 60
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    out.rename(tmp_path / ".data.old-99999")  # a kill between the two renames: only the old folder, moved aside
    with pytest.raises(PicolmError):  # this prepare fails, but first puts the old folder back
        prepare(numeric(out, max_value=60, split_ratios=(0.0, 0.0, 1.0)), log=lambda *a: None)
    assert load_meta(out)["options"]["max_value"] == 60
