"""`picolm quickstart`: built-in stories -> BPE tokenizer -> tiny model -> evaluation -> samples."""

from __future__ import annotations

from pathlib import Path

from picolm.config import build_config
from picolm.data.pack import PrepareOptions, load_meta, prepare

RECIPE = Path(__file__).parent / "recipes" / "stories-tiny.yaml"


def run_quickstart(out: Path, device: str = "auto", minutes: float = 3.0, max_steps: int | None = None):
    """Returns the training result."""
    from picolm.train.report import finish_run
    from picolm.eval.lm import evaluate_tokens, load_split
    from picolm.train.trainer import Trainer

    data_dir, run_dir = out / "data", out / "run"
    if (data_dir / "meta.json").exists() and load_meta(data_dir)["source"] == "stories":
        print(f"using the story corpus already in {data_dir}")
    else:
        print("generating the built-in story corpus and training a BPE tokenizer...")
        prepare(PrepareOptions(source="stories", out=str(data_dir), vocab_size=2048))
    config = build_config(RECIPE, {"data.path": str(data_dir), "train.device": device,
                                   "train.max_minutes": minutes if max_steps is None else None,
                                   "train.max_steps": max_steps})
    trainer = Trainer(config, run_dir, resume=(run_dir / "checkpoints" / "last.pt").exists())
    budget = f"{max_steps} steps" if max_steps else f"{minutes:g} minutes"
    print(f"training a {trainer.model.num_params() / 1e6:.2f}M-parameter model for {budget} on {trainer.device}")
    result = trainer.fit()
    tokens, _ = load_split(data_dir, "test")
    test = evaluate_tokens(trainer.model, tokens, config.model.block_size, max_windows=200, device=trainer.device)
    print(f"test: loss {test['loss']:.4f}, perplexity {test['perplexity']:.2f}, accuracy {test['accuracy']:.3f}")
    finish_run(trainer, result)
    return result
