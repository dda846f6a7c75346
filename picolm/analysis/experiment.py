"""`picolm compare RECIPE.yaml`: one experiment. One dataset; several runs that share a training recipe and
differ in a few settings, trained for the same steps; each evaluated on the same splits, sampled and analysed;
then one report (`table.md`, `results.json`) and the loss curves of all runs on one plot (`curves.png`).

A compare recipe (see recipes/*-compare.yaml):

    title: ...               one line
    description: ...         what the experiment asks
    data:                    `picolm prepare` options, or a list of them: the first that can be prepared is used
    recipe:                  the shared training recipe: sections model, train, objective, ... as in `picolm train`
    runs:                    name -> the settings that make the run different (dotted keys or nested sections)
    evaluate:                splits (default [test]), metrics (as `picolm eval --metrics`), max_windows (256)
    analyze:                 [pca, attention, neurons] for `picolm analyze` on every run (default: none)
    samples:                 prompts, max_new_tokens, temperature, steps: sampled text and generation tokens/s
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from picolm.errors import PicolmError
from picolm.methods.next_token import WARMUP_NUMBERS

KEYS = ("title", "description", "data", "recipe", "runs", "evaluate", "analyze", "samples")
ONCE = ("length", "generation", "speed")  # metrics that do not read the split: evaluated once, on the last split
SAMPLE_KEYS = ("prompts", "max_new_tokens", "temperature", "top_k", "steps", "seed")
BUILT_IN = Path(__file__).resolve().parent.parent / "recipes"


@dataclass
class Experiment:
    path: Path
    title: str
    description: str
    data: list[dict]
    recipe: dict[str, object]
    runs: dict[str, dict[str, object]]
    splits: list[str] = field(default_factory=lambda: ["test"])
    metrics: list[str] = field(default_factory=lambda: ["perplexity", "accuracy"])
    max_windows: int | None = 256  # evaluation windows per split: a whole training split would take long
    analyze: list[str] = field(default_factory=list)
    samples: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.stem


def is_experiment(target: str) -> bool:
    """A compare recipe given by path (…yaml) or by the name of a built-in one (numeric-compare)."""
    return target.endswith((".yaml", ".yml")) or (BUILT_IN / f"{target}.yaml").is_file()


def flatten(settings, prefix: str = "") -> dict[str, object]:
    """{"model": {"attention": "linear"}} and {"model.attention": "linear"} both give the second."""
    flat = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _lines(node: yaml.Node, prefix: str = "") -> dict[str, int]:
    """The line of every key of a YAML mapping, by dotted path: bad settings are reported where they are."""
    lines = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            name = f"{prefix}{key.value}"
            lines[name] = key.start_mark.line + 1
            lines.update(_lines(value, name + "."))
    return lines


def built_in_or_path(target: str | Path, folder: Path) -> Path:
    """A recipe by path, or a built-in one in `folder` by name."""
    path = Path(target)
    return folder / f"{target}.yaml" if not path.is_file() and (folder / f"{target}.yaml").is_file() else path


def built_in_experiments() -> list[str]:
    """The names of the built-in compare recipes (the training recipes beside them have no runs)."""
    return [p.stem for p in BUILT_IN.glob("*.yaml") if "runs" in (yaml.safe_load(p.read_text(encoding="utf-8")) or {})]


def read_document(path: Path, kind: str, keys: tuple[str, ...], built_in: Callable[[], list[str]]):
    """A YAML recipe of `kind` (compare, pipeline): the mapping, the line of every key, and `fail(why, key)`, the
    one-line error at a key's line. A missing file names the built-in recipes (`built_in()`); an unknown top-level
    key is refused."""
    try:
        text = path.read_text(encoding="utf-8")
        document, lines = yaml.safe_load(text), _lines(yaml.compose(text))
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise PicolmError(f"{kind} recipe not found (built-in: {', '.join(sorted(built_in()))})", path=path) from None
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise PicolmError(f"not a YAML {kind} recipe ({getattr(exc, 'problem', exc)})", path=path) from None

    def fail(why: str, key: str):
        return PicolmError(why, path=path, line=lines.get(key), field=key)

    if not isinstance(document, dict):
        raise PicolmError(f"a {kind} recipe is a mapping with {', '.join(keys)}", path=path, line=1)
    for key in document:
        if key not in keys:
            raise fail(f"unknown key; a {kind} recipe has {', '.join(keys)}", key)
    return document, lines, fail


def load_experiment(target: str | Path) -> Experiment:
    """Read and check a compare recipe; every run's training config is built once here, so a bad setting stops
    the experiment before anything is trained."""
    from picolm.config import build_config
    from picolm.methods import check_config

    path = built_in_or_path(target, BUILT_IN)
    document, lines, fail = read_document(path, "compare", KEYS, built_in_experiments)
    for key in ("data", "recipe", "runs"):
        if not document.get(key):
            raise PicolmError(f"missing {key!r}", path=path, field=key)
    data = document["data"] if isinstance(document["data"], list) else [document["data"]]
    if not all(isinstance(d, dict) and d.get("source") for d in data):
        raise fail("each data entry is a mapping of `picolm prepare` options with a source", "data")
    runs = document["runs"]
    if not isinstance(runs, dict) or not all(isinstance(r, dict) or r is None for r in runs.values()):
        raise fail("runs: a mapping of run name -> the settings that make it different", "runs")
    evaluate = document.get("evaluate") or {}
    samples = document.get("samples") or {}
    for key in samples:
        if key not in SAMPLE_KEYS:
            raise fail(f"unknown key; samples has {', '.join(SAMPLE_KEYS)}", f"samples.{key}")
    experiment = Experiment(path, str(document.get("title", path.stem)), str(document.get("description", "")).strip(),
                            data, flatten(document["recipe"]), {name: flatten(r or {}) for name, r in runs.items()},
                            list(evaluate.get("splits", ["test"])), list(evaluate.get("metrics", ["perplexity", "accuracy"])),
                            evaluate.get("max_windows", 256), list(document.get("analyze") or []), samples)
    for name, settings in experiment.runs.items():
        try:
            check_config(build_config(None, {**experiment.recipe, **settings}))
        except PicolmError as exc:
            key = exc.field if exc.field in settings else None
            where = f"runs.{name}.{key}" if key else f"recipe.{exc.field}"
            raise PicolmError(f"run {name}: {exc.message}", path=path, line=lines.get(where), field=exc.field) from None
    return experiment


def prepare_data(experiment: Experiment, out: Path, log=print) -> Path:
    """The experiment's data directory: the first source of `data` that can be prepared (kept if already there)."""
    from picolm.data.pack import prepare
    from picolm.data.preparation import PrepareOptions
    from picolm.data.tokens import load_meta

    failures = []
    for options in experiment.data:
        target = out / options["source"].replace("/", "_")
        if (target / "meta.json").is_file() and load_meta(target).get("source") == options["source"]:
            log(f"using {target}")
            return target
        log(f"preparing {options['source']} into {target}")
        try:
            prepare(PrepareOptions(out=str(target), **options), log=lambda line: log("  " + line))
            return target
        except PicolmError as exc:
            failures.append(f"{options['source']}: {exc}")
            log(f"  {options['source']} is not available ({exc}); trying the next source")
    raise PicolmError("no data source could be prepared: " + "; ".join(failures), path=experiment.path)


def _train_run(name: str, config, run_dir: Path) -> Path:
    """Train one run, or continue it: an earlier run with other model or data settings is never overwritten."""
    from picolm.analysis.report import train_stage
    from picolm.config import SECTIONS, filled_in_by_training, load_config

    if (run_dir / "config.yaml").is_file():
        saved = load_config(run_dir / "config.yaml").to_dict()
        for section in ("model", "data", "objective"):
            for key, value in config.to_dict()[section].items():
                if not filled_in_by_training(SECTIONS[section], key, value) and saved[section].get(key) != value:
                    raise PicolmError(f"{run_dir} was trained with {section}.{key} = {saved[section].get(key)!r}, "
                                      f"not {value!r}: remove it or pass another --out", field=f"runs.{name}")
    return train_stage(name, config, run_dir)


def as_trained(settings: dict[str, object], config) -> dict[str, object]:
    """The values a run trained with (its resolved config: the recipe, then the run's settings, then the command
    line's) of the settings named; a preset, which is no setting of its own, as the fields it sets."""
    from picolm.config import PRESETS

    keys = [name for key, value in settings.items()
            for name in ([f"model.{field}" for field in PRESETS[value]] if key == "model.preset" else [key])]
    resolved = config.to_dict()
    return {key: resolved[key.split(".")[0]][key.split(".", 1)[1]] for key in dict.fromkeys(keys)}


def shared_settings(trained: dict[str, dict]) -> dict[str, object]:
    """Of the settings the recipe and the command line give every run, those all runs trained with the same value."""
    first, *others = trained.values()
    return {key: value for key, value in first.items() if all(o.get(key) == value for o in others)}


def sampling(experiment: Experiment, model):
    """The recipe's sampling settings (`samples`) for this model: `steps` only where its sampler reads them, so one
    recipe samples every family."""
    from picolm.config import SamplingOptions
    from picolm.generate import sampler_for

    settings = experiment.samples
    steps = settings.get("steps") if "steps" in sampler_for(model).reads else None
    return SamplingOptions(max_new_tokens=int(settings.get("max_new_tokens", 40)),
                           temperature=float(settings.get("temperature", 0.8)), top_k=settings.get("top_k"),
                           seed=int(settings.get("seed", 0)), steps=steps)


def evaluate_run(experiment: Experiment, loaded, device) -> dict:
    """Every split's metrics, as {"test/loss": ...}; metrics that ignore the split are computed once (`generation`
    with the recipe's sampling settings)."""
    from picolm.eval.suite import EvalRequest, RunEvaluation

    result = {}
    for i, split in enumerate(experiment.splits):
        last = i == len(experiment.splits) - 1
        metrics = tuple(m for m in experiment.metrics if last or m not in ONCE)
        request = EvalRequest(metrics=metrics, split=split, max_windows=experiment.max_windows,
                              sampling=sampling(experiment, loaded.model))
        values = RunEvaluation(loaded, request, device).run()
        result.update({key if key.split("/")[0] in ONCE else f"{split}/{key}": value for key, value in values.items()
                       if key not in ("checkpoint", "split", "tokens")})
    return result


def sample_run(experiment: Experiment, loaded, device) -> dict:
    """Text from the run's model for each prompt, its generation speed in new tokens per second, and the share of
    the new tokens asked for that it wrote (`length`: a row ends early at its EOS)."""
    from picolm.generate import generate_ids

    options = sampling(experiment, loaded.model)
    tokenizer = loaded.tokenizer
    prompts = [tokenizer.encode(p) for p in experiment.samples.get("prompts", [])]
    generate_ids(loaded.model, prompts[:1], replace(options, max_new_tokens=2), tokenizer.eos_id,
                 tokenizer.vocab_size, device)  # warm-up: the first call pays for allocations, not the timing
    started = time.perf_counter()
    rows = generate_ids(loaded.model, prompts, options, tokenizer.eos_id, tokenizer.vocab_size, device)
    seconds = time.perf_counter() - started
    new_tokens = sum(map(len, rows))
    return {"texts": [tokenizer.decode(p + r) for p, r in zip(prompts, rows)],
            "tokens_per_second": new_tokens / seconds if seconds > 0 else 0.0,
            "length": new_tokens / (len(prompts) * options.max_new_tokens)}


def analyze_checkpoint(experiment: Experiment, checkpoint: Path, out: Path, device, log=print) -> list[str]:
    from picolm.analysis.interpret import analyze_run

    try:
        return [str(p) for p in analyze_run(checkpoint, ",".join(experiment.analyze), out=out, device=device, log=log)]
    except PicolmError as exc:  # e.g. a model analyze cannot look inside: the experiment goes on without it
        log(f"analyze skipped: {exc}")
        return []


def run_experiment(experiment: Experiment, out: str | Path | None = None, overrides: dict | None = None,
                   data_dir: str | Path | None = None, device: str = "auto", log=print) -> Path:
    """Prepare, train, evaluate, sample and analyse every run; write table.md, results.json and curves.png.
    Returns the report. An interrupted experiment picks up where it stopped when run again."""
    from picolm.config import build_config, load_config
    from picolm.data.tokens import load_meta
    from picolm.loading import load_model
    from picolm.locks import lock_folder
    from picolm.runtime import resolve_device

    started = time.perf_counter()
    device = str(resolve_device(device, field="--device"))
    out = Path(out or f"runs/compare-{experiment.name.removesuffix('-compare')}")
    with lock_folder(out):  # one compare writes a folder at a time
        data = Path(data_dir) if data_dir else prepare_data(experiment, out / "data", log)
        load_meta(data)
        every_run = {**experiment.recipe, **(overrides or {})}  # the settings given to all runs
        results, every_run_trained = {}, {}
        for name, settings in experiment.runs.items():
            config = build_config(None, {**experiment.recipe, **settings, **(overrides or {}), "data.path": str(data),
                                         "train.device": device})
            run_dir = _train_run(name, config, out / "runs" / name)
            trained = load_config(run_dir / "config.yaml")
            own = as_trained(settings, trained)
            every_run_trained[name] = {k: v for k, v in as_trained(every_run, trained).items() if k not in own}
            checkpoint = run_dir / "checkpoints" / "last.pt"
            log(f"evaluating {name}")
            loaded = load_model(checkpoint, device=device)
            entry = {"settings": own, "parameters": loaded.model.num_params(),
                     "steps": loaded.checkpoint["global_step"], "tokens_seen": loaded.checkpoint["tokens_seen"],
                     "train_minutes": loaded.checkpoint["elapsed_seconds"] / 60}
            entry["metrics"] = evaluate_run(experiment, loaded, device)
            if experiment.samples.get("prompts"):
                entry["samples"] = sample_run(experiment, loaded, device)
            if experiment.analyze:
                entry["analysis"] = analyze_checkpoint(experiment, checkpoint, run_dir / "analysis", device, log)
            results[name] = entry
        shared = shared_settings(every_run_trained)
        for name, entry in results.items():  # a value that ended different in one run is that run's own
            entry["settings"].update({k: v for k, v in every_run_trained[name].items() if k not in shared})
        return write_report(experiment, out, data, shared, results, (time.perf_counter() - started) / 60)


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return "—" if value is None else str(value)


def _settings_text(settings: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items()) or "(the shared recipe)"


def results_table(experiment: Experiment, results: dict) -> str:
    """One row per run: what it changes, its size and training, and each split's loss, perplexity and accuracy."""
    split_columns = []
    for split in experiment.splits:
        for metric in ("loss", "perplexity", "accuracy", "ignore_acc"):  # the shared names (the notes say what)
            if any(f"{split}/{metric}" in r["metrics"] for r in results.values()):
                split_columns.append(f"{split}/{metric}")
    extra = [name for name in ("length/accuracy", "generation/distinct_2", "generation/self_bleu")
             if any(name in r["metrics"] for r in results.values())]
    speed = ["tokens/s", "sample length"] if any("samples" in r for r in results.values()) else []
    header = ["run", "settings", "parameters", "steps", "train min", *split_columns, *extra, *speed]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, r in results.items():
        cells = [name, _settings_text(r["settings"]), f"{r['parameters']:,}", str(r["steps"]), f"{r['train_minutes']:.1f}"]
        cells += [_cell(r["metrics"].get(c)) for c in split_columns + extra]
        cells += [f"{r['samples']['tokens_per_second']:.0f}", f"{r['samples']['length']:.0%}"] if speed and \
            "samples" in r else ["—"] * len(speed)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def kind_tables(experiment: Experiment, results: dict) -> list[str]:
    """Numeric data: per split, each sequence kind's loss, accuracy, and accuracy after its first numbers (where
    the rule is determined) for every run; then the same accuracy on the longer sequences."""
    after = f"accuracy_after_{WARMUP_NUMBERS}"
    tables = []
    for split, title in [*((s, f"### {s} split") for s in experiment.splits),
                         ("length", "### Sequences longer than any seen in training")]:
        kinds = sorted({k.rsplit("/", 1)[1] for r in results.values() for k in r["metrics"]
                        if k.startswith(f"{split}/{after}/")})
        if not kinds:
            continue
        metrics = [m for m in ("loss", "accuracy", after) if any(f"{split}/{m}/{kinds[0]}" in r["metrics"]
                                                                 for r in results.values())]
        header = ["kind", *(f"{run} {m.replace('_', ' ')}" for run in results for m in metrics)]
        lines = [title, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join([kind, *(_cell(r["metrics"].get(f"{split}/{m}/{kind}")) for r in results.values()
                                              for m in metrics)]) + " |" for kind in kinds]
        tables.append("\n".join(lines))
    return tables


def write_report(experiment: Experiment, out: Path, data: Path, shared: dict, results: dict, minutes: float) -> Path:
    """table.md, results.json and curves.png; `shared`: the settings every run trained with, as its config.yaml has
    them."""
    from picolm.analysis.curves import loss_figure, save_figure
    from picolm.data.tokens import load_meta
    from picolm.train.tracking import read_metrics

    meta = load_meta(data)
    curves = save_figure(loss_figure({name: read_metrics(out / "runs" / name) for name in results},
                                     title=experiment.title), out / "curves.png")
    (out / "results.json").write_text(json.dumps({"title": experiment.title, "data": str(data), "settings": shared,
                                                  "runs": results}, indent=1), encoding="utf-8")
    parts = [f"# {experiment.title}", experiment.description,
             f"Data: `{data}` (source {meta['source']}, {meta['tokenizer']} tokenizer, vocabulary of "
             f"{meta['vocab_size']}, {meta['splits']['train']['tokens']:,} training tokens). "
             f"Every run trained with: {_settings_text(shared)} (the recipe's settings after the command line's, "
             f"from each run's config.yaml; a preset as the fields it sets). "
             f"Metrics are those of each run's last checkpoint, so every run is compared at the same step count. "
             f"Written by `picolm compare {experiment.path}` in {minutes:.1f} minutes.",
             "## Results", results_table(experiment, results)]
    notes = {f"{name}: {value}" for name, r in results.items() for key, value in r["metrics"].items()
             if key.rsplit("/", 1)[-1] in ("bound", "note")}
    parts += sorted(notes)
    parts.append(f"![loss curves]({curves.name})")
    kinds = kind_tables(experiment, results)
    if kinds:
        parts += ["## Per sequence kind", f"Accuracy after {WARMUP_NUMBERS} counts only the numbers that follow the first "
                  f"{WARMUP_NUMBERS} of their sequence, where each rule is determined.", *kinds]
    parts.append("Every figure of every run: `results.json`.")
    if any("samples" in r for r in results.values()):
        parts.append("## Samples")
        for name, r in results.items():
            if "samples" in r:
                parts.append(f"**{name}** ({r['samples']['tokens_per_second']:.0f} new tokens/s):\n\n"
                             + "\n".join(f"> {text!r}" for text in r["samples"]["texts"]))
    if any(r.get("analysis") for r in results.values()):
        parts.append("## Inside the models")
        for name, r in results.items():
            for path in r.get("analysis", []):
                if path.endswith(".png"):
                    parts.append(f"**{name}**, {Path(path).stem}:\n\n![{name} {Path(path).stem}]"
                                 f"({Path(path).relative_to(out)})")
    report = out / "table.md"
    report.write_text("\n\n".join(p for p in parts if p) + "\n", encoding="utf-8")
    return report
