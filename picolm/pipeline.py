"""`picolm pipeline RECIPE.yaml`: prepare -> pretrain (or --init-from) -> SFT -> DPO -> evaluation -> report.md on
any data: built-in sources, local files or hub names (offline through --hub-dir).

A pipeline recipe (picolm/recipes/pipelines/*.yaml):

    title: ...            one line
    description: ...      what the pipeline trains, for the report
    data:                 name -> `picolm prepare` options (source, vocab_size, limit, ...)
    stages:               pretraining, sft, dpo (any of them, in that order), each:
                            recipe: a training recipe (a path beside the pipeline recipe, or a built-in one's name)
                            data: the data name it trains on
                            settings: dotted settings over the recipe; a value `data:NAME` is that data's folder
    evaluate:             sft: and pairs: data names held out for the report; samples, max_new_tokens; lexicon:
                          horror (built in), a word-list file or none
    eta:                  optional: each part's seconds on the reference CPU as [fixed, per step], for the ETA

Each data name is prepared into OUT/data/NAME and each stage trains a run directory (OUT/base, OUT/sft, OUT/dpo),
each starting from the one before. What every step was made from is kept in OUT/pipeline.json: running the pipeline
again continues where it stopped, and a step whose inputs changed since (a setting, its data, the run it started
from) is refused rather than silently mixed with the old one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path


from picolm.analysis.experiment import BUILT_IN, built_in_or_path, flatten, read_document
from picolm.errors import PicolmError

PIPELINES = BUILT_IN / "pipelines"
KEYS = ("title", "description", "data", "stages", "evaluate", "eta")
STAGES = {"pretraining": "base", "sft": "sft", "dpo": "dpo"}  # stage -> its run folder and the model's name
STAGE_KEYS = ("recipe", "data", "settings")
EVALUATE_KEYS = ("sft", "pairs", "samples", "max_new_tokens", "lexicon")
DATA_REFERENCE = "data:"
SET_BY_PIPELINE = {"data.path": "a stage's data", "train.init_from": "--init-from, or the stage before",
                   "train.device": "--device"}  # settings the pipeline gives every stage: named elsewhere
DATA_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # a folder under OUT/data
RECORD = "pipeline.json"


@dataclass
class Stage:
    name: str  # pretraining | sft | dpo
    recipe: Path
    data: str
    settings: dict[str, object]


@dataclass
class Pipeline:
    path: Path
    title: str
    description: str
    data: dict[str, dict]
    stages: list[Stage]
    evaluate: dict = field(default_factory=dict)
    eta: dict[str, tuple[float, float]] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)
    lexicon: object = None  # picolm.eval.lexicon.Lexicon, read with the recipe; None: no lexicon rate

    @property
    def name(self) -> str:
        return self.path.stem

    def line(self, key: str) -> int | None:
        return self.lines.get(key)


@dataclass
class PipelineOptions:
    out: Path | None = None  # default runs/pipeline-NAME
    device: str = "auto"
    init_from: str | None = None  # a pretrained run or checkpoint: the pretraining stage is skipped
    hub_dir: str | None = None  # local copies of hub datasets
    samples: int | None = None  # held-out prompts sampled per model (default: the recipe's)
    settings: dict[str, object] = field(default_factory=dict)  # "section.key" for every stage, "STAGE.section.key"


def _recipe_path(value, beside: Path) -> Path | None:
    """A training recipe: a path relative to the pipeline recipe, else a built-in recipe by name."""
    for candidate in (beside / str(value), BUILT_IN / str(value), BUILT_IN / f"{value}.yaml"):
        if candidate.is_file():
            return candidate.resolve()
    return None


def load_pipeline(target: str | Path) -> Pipeline:
    """Read and check a pipeline recipe; every stage's training config is built here once, so a bad setting stops
    the pipeline before anything is prepared or trained."""
    from picolm.data.preparation import PrepareOptions

    path = built_in_or_path(target, PIPELINES)
    document, lines, fail = read_document(path, "pipeline", KEYS, lambda: [p.stem for p in PIPELINES.glob("*.yaml")])
    for key in ("data", "stages"):
        if not isinstance(document.get(key), dict) or not document[key]:
            raise fail(f"missing {key!r}: a mapping", key)
    options = {f.name for f in dataclasses.fields(PrepareOptions)} - {"out", "hub_dir"}
    for name, entry in document["data"].items():
        if not DATA_NAME.fullmatch(str(name)):
            raise fail("a data name is letters, digits, '.', '_' and '-' (it names a folder)", f"data.{name}")
        if not isinstance(entry, dict) or not entry.get("source"):
            raise fail("a mapping of `picolm prepare` options with a source", f"data.{name}")
        for key in entry:
            if key not in options:
                raise fail(f"not a `picolm prepare` option ({', '.join(sorted(options))})", f"data.{name}.{key}")
    stages = []
    for name, entry in document["stages"].items():
        where = f"stages.{name}"
        if name not in STAGES:
            raise fail(f"unknown stage; a pipeline has {', '.join(STAGES)}, in that order", where)
        if not isinstance(entry, dict):
            raise fail(f"a mapping with {', '.join(STAGE_KEYS)}", where)
        for key in entry:
            if key not in STAGE_KEYS:
                raise fail(f"unknown key; a stage has {', '.join(STAGE_KEYS)}", f"{where}.{key}")
        recipe = _recipe_path(entry.get("recipe"), path.parent) if entry.get("recipe") else None
        if recipe is None:
            raise fail("the stage's training recipe was not found (a path beside this file or a built-in name)",
                       f"{where}.recipe")
        if entry.get("data") not in document["data"]:
            raise fail(f"names no data of this recipe ({', '.join(document['data'])})", f"{where}.data")
        stages.append(Stage(name, recipe, entry["data"], flatten(entry.get("settings") or {})))
    if [s.name for s in stages] != [s for s in STAGES if s in document["stages"]]:
        raise fail(f"stages run in the order {', '.join(STAGES)}", "stages")
    evaluate = document.get("evaluate") or {}
    for key, value in evaluate.items():
        if key not in EVALUATE_KEYS:
            raise fail(f"unknown key; evaluate has {', '.join(EVALUATE_KEYS)}", f"evaluate.{key}")
        if key in ("sft", "pairs") and value not in document["data"]:
            raise fail(f"names no data of this recipe ({', '.join(document['data'])})", f"evaluate.{key}")
        if key in ("samples", "max_new_tokens") and not (type(value) is int and 1 <= value <= 100_000):
            raise fail("a whole number from 1 to 100000", f"evaluate.{key}")
    eta = {}
    for part, value in (document.get("eta") or {}).items():
        if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value)):
            raise fail("[fixed seconds, seconds per step] on the reference CPU", f"eta.{part}")
        eta[part] = (float(value[0]), float(value[1]))
    pipeline = Pipeline(path, str(document.get("title", path.stem)), str(document.get("description", "")).strip(),
                        document["data"], stages, evaluate, eta, lines)
    for stage in stages:
        stage_config(pipeline, stage, {})
    try:
        pipeline.lexicon = _lexicon(pipeline)  # a missing word list stops the pipeline now, not after its training
    except PicolmError as exc:
        where = f"{exc.path}, line {exc.line}" if exc.line else str(exc.path)
        raise fail(f"{exc.message} ({where})", "evaluate.lexicon") from None
    return pipeline


def _settings_for(stage: Stage, settings: dict[str, object]) -> dict[str, object]:
    """The command line's settings for one stage: `section.key` reach every stage, `STAGE.section.key` one."""
    chosen = {}
    for key, value in settings.items():
        head, _, rest = key.partition(".")
        if head in STAGES:
            if head == stage.name:
                chosen[rest] = value
        else:
            chosen[key] = value
    return chosen


def stage_config(pipeline: Pipeline, stage: Stage, settings: dict[str, object], folders: dict[str, Path] | None = None,
                 fixed: dict[str, object] | None = None):
    """The stage's resolved config: its recipe, the pipeline's settings (`data:NAME` as `folders[NAME]`), the command
    line's, then `fixed` (what the pipeline sets: data, the run it starts from, the device). A bad setting is one line
    naming the pipeline recipe's line."""
    from picolm.config import build_config
    from picolm.methods import check_config

    given = {**stage.settings, **_settings_for(stage, settings)}
    for key in given.keys() & SET_BY_PIPELINE.keys():
        line = pipeline.line(f"stages.{stage.name}.settings.{key}") if key in stage.settings else None
        raise PicolmError(f"set by the pipeline: use {SET_BY_PIPELINE[key]}", path=pipeline.path, line=line, field=key)
    for key, value in given.items():
        if isinstance(value, str) and value.startswith(DATA_REFERENCE):
            name = value[len(DATA_REFERENCE):]
            if name not in pipeline.data:
                raise PicolmError(f"names no data of this recipe ({', '.join(pipeline.data)})", path=pipeline.path,
                                  line=pipeline.line(f"stages.{stage.name}.settings.{key}"), field=key)
            given[key] = str((folders or {}).get(name, name))
    try:
        config = build_config(stage.recipe, {**given, **(fixed or {})})
        check_config(config)
    except PicolmError as exc:
        if exc.field not in given:
            raise
        where = f"stages.{stage.name}.settings.{exc.field}"
        raise PicolmError(f"stage {stage.name}: {exc.message}", path=pipeline.path, line=pipeline.line(where),
                          field=exc.field) from None
    return config


# ---------------------------------------------------------------- what each step was made from


def _digest(inputs) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _difference(old, new, prefix: str = "") -> str:
    """The first setting that differs between two records, as `key: old -> new`."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                return _difference(old.get(key), new.get(key), f"{prefix}{key}.")
    return f"{prefix.rstrip('.')}: {old!r} -> {new!r}"


class Record:
    """OUT/pipeline.json: for each step (data NAME, a stage), the inputs it was made from."""

    def __init__(self, out: Path):
        self.path = out / RECORD
        try:
            self.steps = json.loads(self.path.read_text(encoding="utf-8")) if self.path.is_file() else {}
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise PicolmError(f"not a pipeline record ({exc}); remove it to start this folder afresh",
                              path=self.path) from None

    def check(self, step: str, inputs: dict, made: bool, folder: Path) -> None:
        """Refuse a step already made from other inputs; record the inputs of one about to be made."""
        from picolm.files import write_text_atomically

        inputs = json.loads(json.dumps(inputs, default=str))  # as the record reads back: lists, not tuples
        old = self.steps.get(step)
        if made and old is not None and old != inputs:
            raise PicolmError(f"{step} was made from other inputs ({_difference(old, inputs)}); pass another --out, "
                              f"or remove {folder} to make it again", path=self.path)
        if old != inputs:
            self.steps[step] = inputs
            write_text_atomically(self.path, json.dumps(self.steps, indent=2, sort_keys=True) + "\n")


def _started(run_dir: Path) -> bool:
    return (run_dir / "config.yaml").is_file() or (run_dir / "checkpoints").is_dir()


def _stage_inputs(config, known: dict[str, object]) -> dict:
    """The stage's resolved settings with the folders it reads replaced by what they hold (`known`: path -> that
    step's inputs), so moving the pipeline's folder changes nothing; the device and trackers are not inputs."""
    sections = config.to_dict()
    sections.pop("log", None)
    sections["train"] = {k: v for k, v in sections["train"].items() if k != "device"}

    def identity(value):
        if isinstance(value, dict):
            return {k: identity(v) for k, v in value.items()}
        return known.get(str(value), value) if isinstance(value, str) and value else value

    return identity(sections)


def _checkpoint_identity(target: str) -> dict:
    """A run or checkpoint given with --init-from: where it is and the step it holds."""
    from picolm.checkpoint import find_checkpoint, load_checkpoint

    path = find_checkpoint(target)
    return {"init_from": str(path.resolve()), "step": load_checkpoint(path, mmap=True)["global_step"]}


# ---------------------------------------------------------------- running it


class Eta:
    """The whole run's time left: the reference CPU's seconds for each part still to run, scaled by this machine's
    pace on the stages trained so far (the reference's own until then); a stage's time budget caps its part."""

    def __init__(self, parts: dict[str, tuple[float, float]]):
        self.parts = parts  # part -> (reference seconds, cap in seconds)
        self.taken = self.reference = 0.0

    def finished(self, part: str, seconds: float, reference: float = 0.0) -> None:
        """`reference`: the reference CPU's seconds for what this part trained here (0: nothing to learn from)."""
        self.parts.pop(part, None)
        if reference:
            self.taken, self.reference = self.taken + seconds, self.reference + reference

    def left(self) -> str:
        if not self.parts:
            return ""
        pace = self.taken / self.reference if self.reference else 1.0
        seconds = sum(min(reference * pace, cap) for reference, cap in self.parts.values())
        basis = (f"at this machine's pace so far, {pace:.2f}x the reference CPU's time" if self.reference
                 else "on the reference 2-core CPU")
        return f"; about {seconds / 60:.1f} minutes left in all ({basis})"


def describe_budget(train) -> str:
    """`300 steps`, `1.5 min`, or two limits joined by `or`, the first reached stopping the run."""
    limits = [f"{train.epochs:g} epochs" if train.epochs is not None
              else f"{train.max_steps} steps" if train.max_steps is not None else None,
              f"{train.max_minutes:g} min" if train.max_minutes is not None else None]
    return " or ".join(limit for limit in limits if limit)


def _reference_seconds(pipeline: Pipeline, part: str, steps: int) -> float:
    fixed, per_step = pipeline.eta.get(part, (0.0, 0.0))
    return fixed + per_step * steps


def _plan(pipeline: Pipeline, configs: dict[str, object]) -> Eta:
    """Each part's reference seconds and cap; a stage budgeted in epochs or minutes alone counts its fixed part (and
    its minutes). No ETA for a recipe that gives no reference times."""
    if not pipeline.eta:
        return Eta({})
    parts = {"data": (_reference_seconds(pipeline, "data", 0), math.inf)}
    for stage, config in configs.items():
        minutes, steps = config.train.max_minutes, config.train.max_steps or 0
        parts[stage] = (_reference_seconds(pipeline, stage, steps), math.inf if minutes is None else minutes * 60)
    parts["evaluation"] = (_reference_seconds(pipeline, "evaluation", 0), math.inf)
    return Eta(parts)


def _trained(target: str | Path) -> tuple[int, float]:
    """Steps trained and the training loop's seconds, from a run's last checkpoint or a checkpoint file (0 and 0
    before a run has one)."""
    from picolm.checkpoint import load_checkpoint

    target = Path(target)
    path = target if target.is_file() else target / "checkpoints" / "last.pt"
    if not path.is_file():
        return 0, 0.0
    state = load_checkpoint(path, mmap=True)
    return state["global_step"], state.get("elapsed_seconds", 0.0)


def _hub_copy(hub_dir: str | None, source: str) -> str | None:
    """--hub-dir for a pipeline: a folder holding a local copy per hub dataset (ROOT/alpaca, ...), or one copy."""
    if hub_dir and (Path(hub_dir) / source).is_dir():
        return str(Path(hub_dir) / source)
    return hub_dir


def _prepare(name: str, options: dict, folder: Path, record: Record, hub_dir: str | None, log) -> Path:
    from picolm.data.pack import prepare
    from picolm.data.preparation import PrepareOptions

    made = (folder / "meta.json").is_file()
    record.check(f"data {name}", options, made, folder)
    if made:
        log(f"using {folder}")
    else:
        log(f"preparing {options['source']} into {folder}")
        prepare(PrepareOptions(**options, out=str(folder), hub_dir=hub_dir), log=lambda line: log("  " + line))
    return folder


def _needed(pipeline: Pipeline, stages: list[Stage], settings: dict[str, object]) -> list[str]:
    """The data the stages to run and the evaluation read (with --init-from, pretraining's corpus is not prepared)."""
    named = {stage.data for stage in stages} | {pipeline.evaluate.get(key) for key in ("sft", "pairs")}
    for stage in stages:
        for value in {**stage.settings, **_settings_for(stage, settings)}.values():
            if isinstance(value, str) and value.startswith(DATA_REFERENCE):
                named.add(value[len(DATA_REFERENCE):])
    return [name for name in pipeline.data if name in named]


def run_pipeline(pipeline: Pipeline, options: PipelineOptions, log=print) -> dict:
    """Prepare, train each stage, evaluate every model and write report.md; returns the evaluation. Run again, it
    continues where it stopped."""
    from picolm.analysis.report import train_stage
    from picolm.locks import lock_folder
    from picolm.runtime import resolve_device

    started = time.perf_counter()
    out = Path(options.out or f"runs/pipeline-{pipeline.name}")
    device = str(resolve_device(options.device, field="--device"))
    stages = [s for s in pipeline.stages if not (options.init_from and s.name == "pretraining")]
    if not stages:
        raise PicolmError("--init-from skips pretraining, the only stage of this pipeline", field="--init-from")
    budgets = {s.name: stage_config(pipeline, s, options.settings) for s in stages}
    start = _checkpoint_identity(options.init_from) if options.init_from else None  # before anything is written
    eta = _plan(pipeline, budgets)
    log(f"pipeline {pipeline.title}: " + ", ".join(f"{s} {describe_budget(c.train)}" for s, c in budgets.items())
        + eta.left())
    with lock_folder(out):  # one pipeline writes a folder at a time
        record = Record(out)
        folders, known = {}, {}
        for name in _needed(pipeline, stages, options.settings):
            hub_dir = _hub_copy(options.hub_dir, pipeline.data[name]["source"])
            folders[name] = _prepare(name, pipeline.data[name], out / "data" / name, record, hub_dir, log)
            known[str(folders[name])] = {"data": pipeline.data[name]}
        eta.finished("data", time.perf_counter() - started)
        runs: dict[str, Path] = {}
        previous = options.init_from
        if previous:
            runs["base"] = Path(previous)
            known[str(previous)] = start
        for stage in stages:
            run_dir = out / STAGES[stage.name]
            fixed = {"data.path": str(folders[stage.data]), "train.device": device}
            if previous:
                fixed["train.init_from"] = str(previous)
            config = stage_config(pipeline, stage, options.settings, folders, fixed)
            inputs = _stage_inputs(config, known)
            record.check(f"stage {stage.name}", inputs, _started(run_dir), run_dir)
            log(f"\n{stage.name}: {describe_budget(config.train)}{eta.left()}")
            steps_before, clock = _trained(run_dir)[0], time.perf_counter()
            train_stage(stage.name, config, run_dir)
            steps = _trained(run_dir)[0] - steps_before
            eta.finished(stage.name, time.perf_counter() - clock,
                         _reference_seconds(pipeline, stage.name, steps) if steps else 0.0)
            runs[STAGES[stage.name]] = run_dir
            known[str(run_dir)] = {"stage": _digest(inputs)}
            previous = run_dir
        log(f"\n== evaluation{eta.left()}")
        results = evaluate_pipeline(pipeline, options, runs, folders, device)
        training = _summary(runs, budgets)
        minutes = (time.perf_counter() - started) / 60
        report = _report(pipeline, out, results, runs, training, minutes)
    log(f"\nreport: {report} ({minutes:.1f} minutes in all)")
    return results


def _summary(runs: dict[str, Path], budgets: dict[str, object]) -> dict[str, dict]:
    """Per model, for the report: its budget, the steps it trained and its training loop's minutes."""
    by_model = {STAGES[stage]: config for stage, config in budgets.items()}
    summary = {}
    for name, run in runs.items():
        steps, seconds = _trained(run)
        budget = describe_budget(by_model[name].train) if name in by_model else "given (--init-from)"
        summary[name] = {"budget": budget, "steps": steps, "minutes": seconds / 60}
    return summary


def _lexicon(pipeline: Pipeline):
    """evaluate.lexicon: horror (built in), none, or a word-list file (a path relative to the recipe)."""
    from picolm.eval.lexicon import HORROR, load_lexicon

    value = str(pipeline.evaluate.get("lexicon", "none"))
    if value == "none":
        return None
    return HORROR if value == "horror" else load_lexicon(pipeline.path.parent / value)


def evaluate_pipeline(pipeline: Pipeline, options: PipelineOptions, runs: dict[str, Path], folders: dict[str, Path],
                      device: str) -> dict:
    """Every model on the held-out data the recipe names; the DPO model's rewards against the model it started from."""
    from picolm.eval.post_training import evaluate_stages

    spec = pipeline.evaluate
    names = list(runs)
    references = {"dpo": names[names.index("dpo") - 1]} if "dpo" in runs and names.index("dpo") > 0 else {}
    return evaluate_stages(runs, folders.get(spec.get("sft")), folders.get(spec.get("pairs")), references=references,
                           samples=options.samples or spec.get("samples", 16), device=device,
                           max_new_tokens=spec.get("max_new_tokens", 120), lexicon=pipeline.lexicon)


def _report(pipeline: Pipeline, out: Path, results: dict, runs: dict[str, Path], training: dict,
            minutes: float) -> Path:
    from picolm.analysis.curves import plot_post_training
    from picolm.eval.post_training import write_report
    from picolm.train.tracking import read_metrics

    curves = plot_post_training({name: read_metrics(run) for name, run in runs.items()}, out / "plots" / "curves.png")
    return write_report(out, results, curves, minutes=minutes, training=training, title=pipeline.title,
                        description=pipeline.description)
