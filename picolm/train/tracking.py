"""Metrics out: metrics.jsonl and metrics.csv always; TensorBoard and Weights & Biases when asked."""

from __future__ import annotations

import csv
import json
import os
import re
import uuid
from pathlib import Path

import torch
import yaml

from picolm.config import Config
from picolm.errors import PicolmError
from picolm.files import write_text_atomically


def summarize(name: str, values: torch.Tensor) -> dict[str, float]:
    """Mean, std, min and max of a distribution as metrics `<name>_mean` and so on."""
    values = values.detach().float().flatten()
    return {f"{name}_mean": float(values.mean()), f"{name}_std": float(values.std()),
            f"{name}_min": float(values.min()), f"{name}_max": float(values.max())}


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The rows of metrics.jsonl; a torn last line (the process was killed while writing it) is dropped."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines):
                raise PicolmError("not a JSON row", path=path, line=number) from None
    return rows


def wandb_mode() -> str:
    """Online when credentials are configured, else offline (a run `wandb sync` can upload later)."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    netrc = Path.home() / ".netrc"
    has_netrc = netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore")
    return "online" if os.environ.get("WANDB_API_KEY") or has_netrc else "offline"


def architecture_name(config: Config, label: str | None = None) -> str:
    """The model family (the method family's `label`, else the network's arch) and what sets it apart from a plain
    GPT: gpt, gpt_rope_linear, mdlm_rope, sdd, hf_llama."""
    m = config.model
    if m.arch == "hf":
        return "hf_" + _slug(Path(config.train.hf_model).name)
    family = label or m.arch
    variants = [m.position if m.position != "none" else "nopos"] if m.position != "learned" else []
    variants += ["linear"] * (m.attention == "linear") + ["diff"] * m.differential + ["swiglu"] * (m.mlp == "swiglu")
    return "_".join([family, *variants])


def size_name(config: Config) -> str:
    """The preset whose shape the model has, else its parameter count without embeddings (3.2M)."""
    from picolm.config import PRESETS

    m = config.model
    for name, preset in PRESETS.items():
        if all(getattr(m, key) == preset[key] for key in ("n_layer", "n_head", "n_embd")):
            return name
    return f"{12 * m.n_layer * m.n_embd ** 2 / 1e6:.2g}M"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "_", text)


def run_name(config: Config, family, source: str, runs: Path) -> str:
    """`{architecture}-{dataset}-{size}-v{n}` for trackers, n one more than the highest among the runs beside this
    one; the dataset is the data's source (`tinystories`, or a local file's stem)."""
    dataset = Path(source.split(":")[0]).stem if "." in source else source
    stem = f"{architecture_name(config, family.label)}-{_slug(dataset)}-{size_name(config)}"
    taken = [0]
    for saved in runs.glob("*/config.yaml") if runs.is_dir() else []:
        found = re.fullmatch(re.escape(stem) + r"-v(\d+)", _saved_run_name(saved))
        taken.append(int(found.group(1)) if found else 0)
    return f"{stem}-v{max(taken) + 1}"


def _saved_run_name(config_yaml: Path) -> str:
    """The run name in a sibling run's config.yaml; "" when the file is broken (it is that run's problem)."""
    try:
        saved = yaml.safe_load(config_yaml.read_text(encoding="utf-8"))
        return str(saved["log"]["run_name"])
    except (OSError, UnicodeDecodeError, yaml.YAMLError, TypeError, KeyError):
        return ""


class Tracker:
    """Writes rows `{"step": N, "train/loss": ...}`; a resumed run drops rows past its checkpoint."""

    def __init__(self, run_dir: Path, config: Config, resume_step: int | None = None):
        self.run_dir = run_dir
        self.rows = read_metrics(run_dir) if resume_step is not None else []
        self.rows = [r for r in self.rows if r["step"] <= (resume_step or 0)]
        self.backends = []
        self._rewrite_jsonl()
        self.jsonl = (run_dir / "metrics.jsonl").open("a", encoding="utf-8")
        if "tensorboard" in config.log.backends:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise PicolmError("--log tensorboard needs the tensorboard package (pip install tensorboard)") \
                    from None
            self.backends.append(TensorBoardBackend(SummaryWriter(str(run_dir / "tensorboard"))))
        if "wandb" in config.log.backends:
            self.backends.append(WandbBackend(run_dir, config, resume=resume_step is not None))

    def _rewrite_jsonl(self) -> None:
        """Whole files (a kill while resuming keeps the old rows): the rows up to the checkpoint, and the histograms."""
        write_text_atomically(self.run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in self.rows))
        histograms = self.run_dir / "histograms.jsonl"
        if histograms.exists():  # a resumed run drops the histograms past its checkpoint too
            last = self.rows[-1]["step"] if self.rows else 0
            kept = []
            for line in histograms.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    if json.loads(line)["step"] <= last:
                        kept.append(line)
                except (json.JSONDecodeError, KeyError, TypeError):
                    pass  # a torn line
            write_text_atomically(histograms, "".join(line + "\n" for line in kept))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        row = {"step": step, **{k: float(v) for k, v in metrics.items()}}
        self.rows.append(row)
        self.jsonl.write(json.dumps(row) + "\n")
        self.jsonl.flush()
        values = {k: v for k, v in row.items() if k != "step"}
        for backend in self.backends:
            backend.log(step, values)

    def log_histogram(self, step: int, name: str, values: torch.Tensor, bins: int = 30) -> None:
        """A distribution's histogram, to histograms.jsonl and the backends."""
        values = values.detach().float().flatten().cpu()
        counts, edges = torch.histogram(values, bins=bins)
        with (self.run_dir / "histograms.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, "name": name, "edges": edges.tolist(),
                                "counts": counts.long().tolist()}) + "\n")
        for backend in self.backends:
            backend.log_histogram(step, name, values)

    def add_figures(self, figures: dict[str, object], step: int) -> None:
        """Figures drawn from the finished run (matplotlib, by name) to TensorBoard as `figures/<name>`; W&B's run
        has finished with the training and takes none."""
        for backend in self.backends:
            if isinstance(backend, TensorBoardBackend):
                backend.add_figures(figures, step)

    def write_csv(self) -> None:
        columns = ["step"] + sorted({k for r in self.rows for k in r} - {"step"})
        tmp = self.run_dir / "metrics.csv.tmp"
        with tmp.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(tmp, self.run_dir / "metrics.csv")

    def close(self) -> None:
        self.write_csv()
        self.jsonl.close()
        for backend in self.backends:
            backend.close()


class QuietTracker:
    """Stands in for the tracker on torchrun ranks other than 0: only rank 0 writes the run's logs."""

    def log(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def log_histogram(self, step: int, name: str, values: torch.Tensor, bins: int = 30) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardBackend:
    def __init__(self, writer):
        self.writer = writer

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step)

    def log_histogram(self, step: int, name: str, values: torch.Tensor) -> None:
        self.writer.add_histogram(name, values, step)

    def add_figures(self, figures: dict[str, object], step: int) -> None:
        """After training: the closed writer opens a second event file in the run's folder, closed again here."""
        for name, figure in figures.items():
            self.writer.add_figure(f"figures/{name}", figure, step, close=False)
        self.writer.close()

    def close(self) -> None:
        self.writer.close()


class WandbBackend:
    def __init__(self, run_dir: Path, config: Config, resume: bool):
        try:
            import wandb
        except ImportError:
            raise PicolmError("--log wandb needs the wandb package (pip install wandb)") from None
        self.wandb = wandb
        self.run = wandb.init(project=config.log.project, name=config.log.run_name or run_dir.name,
                              config=config.to_dict(), dir=str(run_dir), mode=wandb_mode(),
                              id=self._run_id(run_dir), resume="allow" if resume else None)

    @staticmethod
    def _run_id(run_dir: Path) -> str:
        """A W&B id made once per run directory, so a resumed run continues the same W&B run."""
        path = run_dir / "wandb_run_id"
        if not path.exists():
            path.write_text(f"{run_dir.name}-{uuid.uuid4().hex[:8]}", encoding="utf-8")
        return path.read_text(encoding="utf-8").strip()

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(dict(metrics), step=step)

    def log_histogram(self, step: int, name: str, values: torch.Tensor) -> None:
        self.run.log({name: self.wandb.Histogram(values.numpy())}, step=step)

    def close(self) -> None:
        self.run.finish()
