"""Fault injection: `picolm train`, `prepare` and `export` killed with SIGKILL at random moments, many times, and
every run, data and export folder left behind checked to be either the old one or a consistent new one.

    python benchmarks/fault_injection.py --trials 20 --seed 0

Each trial starts the verb as a child process (`python -m picolm ...`) and kills it after a delay drawn uniformly
from [0, 1.2 x the verb's measured duration], so kills land in imports, set-up, writing and renaming alike (and
some runs finish, exercising the replacement). Local files only (built-in numeric data, a tiny model), bounded by
--trials. Checks after each kill:

- prepare into a folder holding data version A, writing version B: the folder holds A or B whole (meta.json, the
  tokenizer's fingerprint, every split's token file readable with as many tokens as meta.json says, every id inside
  the vocabulary); any half-built sibling is removed by the next prepare.
- train (a fresh run, or a resume of it): config.yaml loads, checkpoints/last.pt loads, last.safetensors holds the
  same step or one save behind (a kill between the two renames), metrics.jsonl parses (a torn last line is allowed:
  it is dropped on resume), and the next trial resumes it; at the end a resume to the last step must succeed and
  leave metrics with steps in order.
- export into a new folder: it is absent (or empty) or complete (config.json, model.safetensors, tokenizer.json,
  with the run's tokenizer fingerprint).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from picolm.checkpoint import load_checkpoint, load_weights
from picolm.config import load_config
from picolm.data.tokens import load_meta, read_tokens
from picolm.tokenizer import load_tokenizer
from picolm.train.tracking import read_metrics

TINY = ["--model.n_layer", "2", "--model.n_head", "2", "--model.n_embd", "32", "--model.block_size", "32",
        "--train.batch_size", "8", "--train.eval_every", "5", "--train.eval_batches", "2",
        "--train.checkpoint_every", "5", "--log.progress", "false"]


def picolm(*args: str) -> list[str]:
    return [sys.executable, "-m", "picolm", *args]


def run_to_end(command: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr}")
    return time.perf_counter() - started


def run_killed(command: list[str], delay: float) -> int | None:
    """Start `command`, SIGKILL it after `delay` s; its exit status if it ended first, else None."""
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        return child.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
        return None


# -- checks: each returns "" when the folder is consistent, else what is wrong ------------------------------------
def data_problem(folder: Path, versions: set[int]) -> str:
    try:
        meta = load_meta(folder)
        if meta["options"]["max_value"] not in versions:
            return f"max_value {meta['options']['max_value']} is neither version"
        tokenizer = load_tokenizer(folder / "tokenizer")
        if tokenizer.fingerprint != meta["tokenizer_fingerprint"]:
            return "tokenizer and meta.json disagree"
        for split, counts in meta["splits"].items():
            tokens = read_tokens(folder / f"{split}.bin")
            if len(tokens) != counts["tokens"] or int(np.max(tokens)) >= tokenizer.vocab_size:
                return f"{split}.bin does not match meta.json"
    except Exception as exc:  # any failure to read is an inconsistency to report
        return f"{type(exc).__name__}: {exc}"
    return ""


def run_problem(run: Path) -> tuple[str, str]:
    """(problem, note): the note counts allowed states (no checkpoint yet, weights one save behind, a torn row)."""
    if not (run / "checkpoints" / "last.pt").exists():
        return "", "no checkpoint yet"
    try:
        load_config(run / "config.yaml")
        step = load_checkpoint(run / "checkpoints" / "last.pt")["global_step"]
        weights_step = int(load_weights(run / "checkpoints" / "last.safetensors")[1]["global_step"])
        read_metrics(run)
    except Exception as exc:  # any failure to read is an inconsistency to report
        return f"{type(exc).__name__}: {exc}", ""
    if weights_step == step:
        return "", "consistent pair"
    if 0 < step - weights_step <= 5:
        return "", "weights one save behind"
    return f"last.pt at step {step} but last.safetensors at {weights_step}", ""


def export_problem(folder: Path, fingerprint: str) -> str:
    if not folder.exists() or not any(folder.iterdir()):
        return ""
    names = {p.name for p in folder.iterdir()}
    missing = {"config.json", "model.safetensors", "tokenizer.json"} - names
    if missing:
        return f"partial export: missing {sorted(missing)}"
    if json.loads((folder / "config.json").read_text())["picolm_tokenizer_fingerprint"] != fingerprint:
        return "export carries another tokenizer's fingerprint"
    return ""


# -- trials ----------------------------------------------------------------------------------------------------------
def prepare_trials(root: Path, trials: int, rng: random.Random) -> dict:
    target, versions = root / "data", (40, 60)
    run_to_end(picolm("prepare", "--source", "numeric", "--out", str(target), "--num-sequences", "20000",
                      "--max-value", str(versions[0])))
    duration = run_to_end(picolm("prepare", "--source", "numeric", "--out", str(target), "--num-sequences", "20000",
                                 "--max-value", str(versions[1])))
    outcomes, problems = Counter(), []
    for trial in range(trials):
        version = versions[trial % 2]
        before = load_meta(target)["options"]["max_value"]
        status = run_killed(picolm("prepare", "--source", "numeric", "--out", str(target), "--num-sequences", "20000",
                                   "--max-value", str(version)), rng.uniform(0, 1.2 * duration))
        problem = data_problem(target, set(versions))
        after = load_meta(target)["options"]["max_value"] if not problem else None
        outcomes["finished" if status == 0 else "killed"] += 1
        outcomes["new folder" if after == version and before != version else "old folder" if after == before
                 else "other"] += 1
        if problem:
            problems.append(f"prepare trial {trial}: {problem}")
    leftovers = [p.name for p in root.glob(".data.partial-*")]
    run_to_end(picolm("prepare", "--source", "numeric", "--out", str(target), "--num-sequences", "2000"))
    outcomes["half-built folders left by kills"] = len(leftovers)
    outcomes["left after the next prepare"] = len(list(root.glob(".data.partial-*")))
    return {"outcomes": dict(outcomes), "problems": problems, "seconds_per_prepare": round(duration, 1)}


def train_trials(root: Path, trials: int, rng: random.Random) -> dict:
    data, run = root / "train-data", root / "run"
    run_to_end(picolm("prepare", "--source", "numeric", "--out", str(data), "--num-sequences", "2000"))
    last_step = 10 * (trials + 1)
    fresh = picolm("train", "--data", str(data), "--out", str(run), "--train.max_steps", str(last_step), *TINY)
    duration = run_to_end(picolm("train", "--data", str(data), "--out", str(root / "timing"), "--train.max_steps",
                                 "30", *TINY))
    outcomes, problems = Counter(), []
    for trial in range(trials):
        started = (run / "checkpoints" / "last.pt").exists()
        command = picolm("train", "--resume", str(run)) if started else fresh
        status = run_killed(command, rng.uniform(0, 1.2 * duration))
        outcomes["resumed" if started else "fresh"] += 1
        outcomes["finished" if status == 0 else "killed" if status is None else f"exit {status}"] += 1
        if status not in (0, None):
            problems.append(f"train trial {trial}: exit {status} when {'resuming' if started else 'starting'}")
        problem, note = run_problem(run)
        outcomes[note or "inconsistent"] += 1
        if problem:
            problems.append(f"train trial {trial}: {problem}")
    run_to_end(picolm("train", "--resume", str(run)) if (run / "checkpoints" / "last.pt").exists() else fresh)
    steps = [row["step"] for row in read_metrics(run)]
    final = load_checkpoint(run / "checkpoints" / "last.pt")["global_step"]
    if final != last_step or steps != sorted(steps):
        problems.append(f"the final resume ended at step {final} with metric steps {steps}")
    return {"outcomes": dict(outcomes), "problems": problems, "seconds_per_30_steps": round(duration, 1)}


def export_trials(root: Path, trials: int, rng: random.Random) -> dict:
    run = root / "run"
    fingerprint = load_tokenizer(run / "tokenizer").fingerprint
    duration = run_to_end(picolm("export", str(run), "--format", "hf", str(root / "export-timing")))
    outcomes, problems = Counter(), []
    for trial in range(trials):
        target = root / f"export-{trial}"
        status = run_killed(picolm("export", str(run), "--format", "hf", str(target)), rng.uniform(0, 1.2 * duration))
        outcomes["finished" if status == 0 else "killed"] += 1
        complete = target.exists() and any(target.iterdir())
        outcomes["complete export" if complete else "no export"] += 1
        problem = export_problem(target, fingerprint)
        if problem:
            problems.append(f"export trial {trial}: {problem}")
        outcomes["hidden temporary folders left"] += len(list(root.glob(f".export-{trial}.partial-*")))
    return {"outcomes": dict(outcomes), "problems": problems, "seconds_per_export": round(duration, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20, help="kills per verb")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="picolm-faults-") as tmp:
        root = Path(tmp)
        results = {"prepare": prepare_trials(root, args.trials, rng), "train": train_trials(root, args.trials, rng),
                   "export": export_trials(root, args.trials, rng)}
    for verb, result in results.items():
        print(f"{verb}: {json.dumps(result['outcomes'])}")
        for problem in result["problems"]:
            print(f"  PROBLEM {problem}")
    total = sum(len(r["problems"]) for r in results.values())
    print(f"{3 * args.trials} kills, {total} inconsistent folders")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    raise SystemExit(1 if total else 0)


if __name__ == "__main__":
    main()
