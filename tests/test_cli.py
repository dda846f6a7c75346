"""The command line as users and scripts see it: verbs, help, outputs, exit codes and one-line errors."""

import argparse
import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from picolm.cli import main
from picolm.loading import load_model
from conftest import TINY

def picolm(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "picolm", *args], capture_output=True, text=True, timeout=120,
                          **kwargs)


def test_help_lists_the_verbs_and_their_options():
    result = picolm("--help")
    assert result.returncode == 0
    for verb in ("prepare", "train", "eval", "generate", "quickstart"):
        assert verb in result.stdout
    for verb, option in [("prepare", "--vocab-size"), ("train", "--resume"), ("eval", "--split"),
                         ("generate", "--top-p"), ("quickstart", "--pretrain-minutes")]:
        help_text = picolm(verb, "--help").stdout
        assert option in help_text and "default" in help_text, verb


def test_train_writes_a_complete_run_directory(trained_run):
    for name in ("config.yaml", "metrics.jsonl", "metrics.csv", "checkpoints/last.pt", "checkpoints/best.pt",
                 "tokenizer/picolm_tokenizer.json", "plots/loss.png", "samples.txt"):
        assert (trained_run / name).is_file(), name
    assert (trained_run / "plots" / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "[sample]" in (trained_run / "samples.txt").read_text()


def test_recipe_and_overrides_end_up_in_the_resolved_config(numeric_data, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model:\n  n_layer: 3\n  position: rope\ntrain:\n  lr: 0.01\n")
    run = tmp_path / "run"
    assert main(["train", str(recipe), "--data", str(numeric_data), "--out", str(run), *TINY,
                 "--train.max_steps", "2", "--train.lr=0.002"]) == 0
    import yaml

    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"]["n_layer"] == 2  # the command line beats the recipe
    assert config["model"]["position"] == "rope" and config["train"]["lr"] == 0.002


def test_eval_json_reports_loss_perplexity_accuracy_and_kinds(trained_run, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["eval", str(trained_run), "--split", "test", "--json", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["perplexity"] == pytest.approx(2.718281828 ** metrics["loss"], rel=1e-6)
    assert 0.0 <= metrics["accuracy"] <= 1.0
    for kind in ("counting", "arithmetic", "geometric", "alternating", "random_walk"):
        assert f"accuracy/{kind}" in metrics and f"accuracy_after_3/{kind}" in metrics
    assert "perplexity" in capsys.readouterr().out


def argmax_continuation(loaded, prompt: str, new_tokens: int) -> str:
    """The prompt and its greedy continuation, the whole context through forward() at every step."""
    ids = loaded.tokenizer.encode(prompt)
    for _ in range(new_tokens):
        with torch.no_grad():
            next_id = int(loaded.model(torch.tensor([ids]))[0, -1].argmax())
        if next_id == loaded.tokenizer.eos_id:
            break
        ids.append(next_id)
    return loaded.tokenizer.decode(ids)


def test_greedy_generation_is_the_argmax_continuation(trained_run, capsys):
    assert main(["generate", str(trained_run), "--prompt", "3 4 5", "--temperature", "0",
                 "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out.strip() == argmax_continuation(load_model(trained_run), "3 4 5", 5)


@pytest.mark.parametrize("dtype", ["bfloat16", "int8"])
def test_low_precision_weights_cost_little_perplexity_and_decode_their_own_argmax(trained_run, dtype, tmp_path, capsys):
    perplexity = {}
    for weights in ("float32", dtype):
        out = tmp_path / f"{weights}.json"
        assert main(["eval", str(trained_run), "--split", "test", "--dtype", weights, "--json", str(out)]) == 0
        perplexity[weights] = json.loads(out.read_text())["perplexity"]
    assert perplexity[dtype] != perplexity["float32"]  # the weights really changed
    assert perplexity[dtype] == pytest.approx(perplexity["float32"], rel=0.01)
    capsys.readouterr()
    assert main(["generate", str(trained_run), "--prompt", "3 4 5", "--temperature", "0", "--max-new-tokens", "5",
                 "--dtype", dtype]) == 0
    assert capsys.readouterr().out.strip() == argmax_continuation(load_model(trained_run, dtype=dtype), "3 4 5", 5)


def test_sampling_is_reproducible_for_a_seed(trained_run, capsys):
    args = ["generate", str(trained_run), "--prompt", "10 20", "--temperature", "1.0", "--top-k", "20",
            "--max-new-tokens", "8"]
    main(args + ["--seed", "1"])
    main(args + ["--seed", "1"])
    first, second = capsys.readouterr().out.strip().splitlines()
    assert first == second


@pytest.mark.parametrize(("args", "message"), [
    (["eval", "no/such/run"], "no/such/run: no such run directory or checkpoint"),
    (["train", "--data", "no/such/data", "--out", "x"], "no/such/data: no such data directory"),
    (["prepare", "--source", "missing.jsonl", "--out", "x"], "missing.jsonl: no such file"),
    (["train", "--data", "d", "--model.n_layers", "2"], "model.n_layers: unknown field"),
    (["train", "--data", "d", "--train.lr", "fast"], "train.lr: expected float, got 'fast'"),
    (["eval", "x", "--device", "mps"], "--device: mps is not available on this machine"),
    (["eval", "x", "--device", "tpu"], "--device: unknown device 'tpu'"),
    (["prepare", "--source", "numeric", "--out", "x", "--limit", "-5"], "argument --limit: must be at least 1, got -5"),
    (["generate", "x", "--temperature", "1e-300"], "argument --temperature: must be 0 or at least 0.0001"),
    (["train", "--data", "d", "--train.max_steps", "-1"], "train.max_steps: must be at least 1 (got -1)"),
    (["prepare", "--source", "stories", "--out", "x", "--vocab-size", "1e9"], "must be at most 16777216, got 1e9"),
    (["prepare", "--out", "x"], "the following arguments are required: --source"),
])
def test_bad_input_gives_one_line_and_status_2(args, message, tmp_path):
    result = picolm(*args, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr


def test_non_utf8_and_bad_json_lines_are_named(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"text": "fine"}\n{"text": oops}\n')
    result = picolm("prepare", "--source", str(bad), "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and f"{bad}:2: not valid JSON" in result.stderr
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"fine\ncaf\xe9\n")
    result = picolm("prepare", "--source", str(latin), "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and f"{latin}:2: not UTF-8 text" in result.stderr


def test_not_a_checkpoint_is_refused(tmp_path):
    fake = tmp_path / "model.pt"
    fake.write_bytes(b"definitely not a checkpoint")
    result = picolm("generate", str(fake), "--prompt", "1")
    assert result.returncode == 2 and "not a readable checkpoint" in result.stderr


def test_resume_refuses_model_changes_and_keeps_the_run(trained_run):
    before = (trained_run / "checkpoints" / "last.pt").read_bytes()
    result = picolm("train", "--resume", str(trained_run), "--model.n_embd", "64")
    assert result.returncode == 2 and "model.n_embd: cannot change it when resuming (the run has 32)" in result.stderr
    assert (trained_run / "checkpoints" / "last.pt").read_bytes() == before
    same = picolm("train", "--resume", str(trained_run), "--model.bias", "true", "--model.n_embd", "32",
                  "--train.max_steps", "20")
    assert same.returncode == 0, same.stderr  # restating the run's own values is no change


def test_ctrl_c_saves_a_checkpoint_and_resume_finishes(numeric_data, tmp_path):
    run = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "picolm", "train", "--data", str(numeric_data), "--out",
                                str(run), "--train.max_steps", "100000", *TINY],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (run / "metrics.jsonl").exists() or not (run / "metrics.jsonl").read_text().count("\n") > 3:
        assert time.time() < deadline and process.poll() is None
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130 and "Traceback" not in stderr
    from picolm.checkpoint import load_checkpoint

    stopped_at = load_checkpoint(run / "checkpoints" / "last.pt")["global_step"]
    assert stopped_at > 0
    result = picolm("train", "--resume", str(run), "--train.max_steps", str(stopped_at + 5))
    assert result.returncode == 0, result.stderr
    assert load_checkpoint(run / "checkpoints" / "last.pt")["global_step"] == stopped_at + 5


def test_generate_with_a_blank_prompt_starts_a_new_document(trained_run, capsys):
    assert main(["generate", str(trained_run), "--prompt", " ", "--max-new-tokens", "4", "--temperature", "0"]) == 0
    assert all(part.isdigit() for part in capsys.readouterr().out.split())  # numbers, or nothing before EOS


def test_numeric_prompt_and_continuation_are_separated(trained_run, capsys):
    assert main(["generate", str(trained_run), "--prompt", "3 4 5", "--max-new-tokens", "3", "--temperature", "1",
                 "--top-k", "5"]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed.startswith("3 4 5") and all(part.isdigit() for part in printed.split())


def test_eval_refuses_an_empty_evaluation(trained_run):
    result = picolm("eval", str(trained_run), "--batch-size", "0")
    assert result.returncode == 2 and "argument --batch-size: must be at least 1, got 0" in result.stderr


def test_train_help_prints_every_setting_with_the_help_of_its_field(capsys):
    """The help text lives in each dataclass field's metadata; `picolm train --help` prints all of them."""
    import dataclasses

    from picolm.config import SECTIONS

    assert main(["train", "--help"]) == 0
    text = "".join(capsys.readouterr().out.split())  # wrapping moves line breaks; the words stay in order
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            assert f.metadata["help"], f"{section}.{f.name} has no help text"
            assert f"--{section}.{f.name}" + "".join(f.metadata["help"].split()) in text


def test_sampling_options_come_from_their_dataclass(capsys):
    import dataclasses

    from picolm.config import SamplingOptions

    assert main(["generate", "--help"]) == 0
    text = "".join(capsys.readouterr().out.split())
    for f in dataclasses.fields(SamplingOptions):
        assert "--" + f.name.replace("_", "-") in text and "".join(f.metadata["help"].split()) in text


TRAINING_VERBS = {"train", "compare", "pipeline", "quickstart"}


def verb_defaults() -> dict[str, dict]:
    """Every verb of the real parser, with the defaults it sets (`run`, `trains`, ...)."""
    from picolm import cli

    verbs = next(a for a in cli.parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {name: sub._defaults for name, sub in verbs.choices.items()}


@pytest.mark.parametrize("verb", sorted(verb_defaults()))
def test_threads_sleep_when_waiting_for_the_verbs_that_train_only(verb, monkeypatch):
    """Sleeping OpenMP threads share a busy machine well but made decoding 2.5-3x slower (docs/BENCHMARKS.md)."""
    from picolm import cli

    environment, seen = {}, []
    monkeypatch.setattr(cli.common.os, "environ", environment)
    args = argparse.Namespace(verb=verb, debug=False, settings={},
                              **{**verb_defaults()[verb], "run": lambda args: seen.append(dict(environment)) or 0})
    monkeypatch.setattr(cli, "parse", lambda root, argv: args)
    assert main([verb]) == 0
    assert seen == [{"OMP_WAIT_POLICY": "PASSIVE"} if verb in TRAINING_VERBS else {}]
    environment["OMP_WAIT_POLICY"] = "ACTIVE"  # a value the user set is kept
    main([verb])
    assert seen[-1] == {"OMP_WAIT_POLICY": "ACTIVE"}


def test_the_command_line_is_parsed_before_torch_is_imported():
    """What lets `main` set how OpenMP threads wait before torch reads it."""
    code = "import sys, picolm.cli as c; c.parser(); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"
