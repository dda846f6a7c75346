"""Base vs SFT vs DPO on held-out story specifications, and the quickstart's report.md.

Per model: the SFT test loss (response tokens only), how often the chosen story is more likely than the
rejected one, DPO's reward accuracy and margin against its reference (the SFT model), and the horror-lexicon
rate of stories sampled for held-out prompts.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

from picolm.config import ObjectiveConfig, SamplingOptions
from picolm.data.examples import in_order, load_examples
from picolm.data.records import BadRows
from picolm.data.specs import horror_lexicon_rate
from picolm.generate import TextGenerator
from picolm.loading import load_model
from picolm.methods import FAMILIES
from picolm.methods.preference import Preference
from picolm.methods.sequences import pair_log_probs
from picolm.methods.sft import MaskedResponse
from picolm.runtime import resolve_device

BATCH = 16


def sample_responses(model, tokenizer, prompts, max_new_tokens: int, device, seed: int = 0) -> list[str]:
    """One sampled response per prompt (temperature 0.8, top-k 50), the same seed for every model."""
    options = SamplingOptions(max_new_tokens=max_new_tokens, temperature=0.8, top_k=50, seed=seed)
    return TextGenerator(model, tokenizer, device).complete([p.tolist() for p in prompts], options)


def evaluate_stages(stages: dict[str, Path], sft_data: Path, dpo_data: Path, samples: int = 16,
                    device="auto", max_new_tokens: int = 120) -> dict:
    """`stages` maps base, sft and dpo to run directories; returns metrics and samples per stage."""
    device = resolve_device(device, field="--device")
    loaded = {name: load_model(path, device=device) for name, path in stages.items()}
    tokenizer = loaded["dpo"].tokenizer
    block_size = loaded["dpo"].model.config.block_size
    quiet = BadRows(skip=True)
    sft_test = load_examples(sft_data, "test", "sft", tokenizer, block_size, quiet)
    pairs = load_examples(dpo_data, "test", "dpo", tokenizer, block_size, quiet)
    objective = ObjectiveConfig(**loaded["dpo"].checkpoint["train_config"]["objective"])
    dpo = Preference(objective)
    pairs.reference = pair_log_probs(loaded["sft"].model, pairs, BATCH, tokenizer.eos_id, device, nullcontext,
                                     dpo.length_normalize)
    prompts = [tokenizer.decode(p.tolist()) for p in pairs.prompts[:samples]]
    results = {"prompts": prompts, "test_pairs": len(pairs), "sft_test_examples": len(sft_test), "stages": {}}
    for name, entry in loaded.items():
        model = entry.model
        sft = FAMILIES["sft"].evaluate(model, in_order(sft_test, BATCH, tokenizer.eos_id), MaskedResponse(), device)
        per_token = pair_log_probs(model, pairs, BATCH, tokenizer.eos_id, device, nullcontext, length_normalize=True)
        stories = sample_responses(model, tokenizer, pairs.prompts[:samples], max_new_tokens, device)
        stage = {"sft_test_loss": sft["loss"], "sft_test_perplexity": sft["perplexity"],
                 "chosen_more_likely": float((per_token[:, 0] > per_token[:, 1]).float().mean()),
                 "horror_lexicon_rate": sum(map(horror_lexicon_rate, stories)) / max(len(stories), 1),
                 "samples": stories, "checkpoint_step": entry.checkpoint["global_step"]}
        if name == "dpo":
            preference = FAMILIES["dpo"].evaluate(model, in_order(pairs, BATCH, tokenizer.eos_id), dpo, device)
            stage["preference_accuracy"] = preference["rewards/accuracies"]
            stage["reward_margin"] = preference["rewards/margins"]
        results["stages"][name] = stage
        print(f"{name:>5}: SFT test loss {stage['sft_test_loss']:.3f}, chosen more likely "
              f"{stage['chosen_more_likely']:.3f}, horror-lexicon rate {stage['horror_lexicon_rate']:.3f}"
              + (f", preference accuracy {stage['preference_accuracy']:.3f}, reward margin "
                 f"{stage['reward_margin']:.3f}" if name == "dpo" else ""))
    results["objective"] = asdict(objective)
    return results


def _cell(stage: dict, key: str, digits: int = 3) -> str:
    return f"{stage[key]:.{digits}f}" if key in stage else "—"


def _training_table(stages: dict, training: dict) -> list[str]:
    """Per model: its budget, the steps it trained, the checkpoint evaluated and the training loop's wall time."""
    note = ("A budget in steps trains the same models and gives the same numbers on every machine for a seed; the "
            "times are this machine's (the training loop with its evaluations; data, set-up and sampling apart).")
    lines = ["## Training", "", note, "", "| model | budget | steps trained | checkpoint evaluated | training time |",
             "|---|---|---|---|---|"]
    for name, run in training.items():
        lines.append(f"| {name} | {run['budget']} | {run['steps']} | step {stages[name]['checkpoint_step']} "
                     f"| {run['minutes']:.1f} min |")
    return lines + [""]


def write_report(out: Path, results: dict, curves: Path, minutes: float, training: dict) -> Path:
    """report.md: the metrics table, how each model was trained, the plots, and sample stories for the same prompts
    before and after. `training` maps each model to its budget, steps trained and training minutes."""
    stages = results["stages"]
    lines = [
        "# picolm quickstart report", "",
        f"Pretraining on the built-in stories, SFT on story specifications, DPO toward horror "
        f"({results['objective']['loss']} loss, beta {results['objective']['beta']}); {minutes:.1f} minutes in all "
        f"on this machine.",
        f"Held-out: {results['sft_test_examples']} SFT test examples, {results['test_pairs']} test pairs, "
        f"{len(results['prompts'])} prompts sampled per model.", "",
        "| model | SFT test loss | SFT test perplexity | chosen more likely | preference accuracy | reward margin "
        "| horror-lexicon rate |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, stage in stages.items():
        lines.append(f"| {name} | {_cell(stage, 'sft_test_loss')} | {_cell(stage, 'sft_test_perplexity', 2)} "
                     f"| {_cell(stage, 'chosen_more_likely')} | {_cell(stage, 'preference_accuracy')} "
                     f"| {_cell(stage, 'reward_margin')} | {_cell(stage, 'horror_lexicon_rate')} |")
    lines += [
        "",
        "- *SFT test loss*: cross-entropy on the response tokens of held-out SFT examples.",
        "- *chosen more likely*: share of test pairs whose horror story has a higher mean log-probability per token "
        "than the wholesome one.",
        "- *preference accuracy* and *reward margin*: DPO's implicit rewards beta * log(pi / pi_ref) on test pairs, "
        "against the SFT model as reference.",
        "- *horror-lexicon rate*: share of words in sampled stories that belong to the horror lexicon.", "",
        *_training_table(stages, training),
        "## Curves", "",
        f"![SFT monitor and DPO rewards]({curves.relative_to(out).as_posix()})", "",
        "Loss curves: [base](base/plots/loss.png), [SFT](sft/plots/loss.png), [DPO](dpo/plots/loss.png).", "",
        "## Samples for held-out prompts", "",
    ]
    for i, prompt in enumerate(results["prompts"][:3]):
        lines += [f"### Prompt {i + 1}", "", "```", prompt, "```", ""]
        for name, stage in stages.items():
            lines += [f"**{name}**: {stage['samples'][i].strip()}", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
