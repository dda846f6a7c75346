"""A pipeline's models side by side on held-out data, and its report.md.

Per model: the SFT test loss (response tokens only); on test pairs, how often the chosen response is more likely
(per token) and the summed-log-prob accuracy, and for a model given a reference, DPO's implicit-reward accuracy and
margin against it; for responses sampled after held-out prompts, ROUGE-L and chrF against the SFT references, format
compliance, and the rate of a lexicon's words. Data not given leaves its columns out (— in the table).
"""

from __future__ import annotations

import os
from pathlib import Path

from picolm.config import ObjectiveConfig, SamplingOptions
from picolm.data.examples import in_order, load_examples
from picolm.data.records import BadRows
from picolm.errors import PicolmError
from picolm.eval.instruct import format_scores, instructions, reference_scores, respond
from picolm.eval.lexicon import HORROR, Lexicon
from picolm.eval.pairs import likelihood_scores, response_lengths, reward_scores, summed_log_probs
from picolm.generate import TextGenerator
from picolm.loading import load_model
from picolm.methods import FAMILIES
from picolm.methods.preference import Preference
from picolm.methods.sft import MaskedResponse
from picolm.runtime import resolve_device

BATCH = 16
CURVES_CAPTION = "SFT monitor and DPO rewards"


def sampling(max_new_tokens: int) -> SamplingOptions:
    """The report's samples: temperature 0.8, top-k 50, the same seed for every model."""
    return SamplingOptions(max_new_tokens=max_new_tokens, temperature=0.8, top_k=50, seed=0)


def held_out_prompts(sft_data: Path | None, pairs, generator: TextGenerator, count: int):
    """The first `count` test prompts as ids: the SFT test instructions with their reference responses, else the
    test pairs' prompts (no references); none without either."""
    if sft_data is not None:
        return instructions(sft_data, "test", count, generator)
    return [p.tolist() for p in pairs.prompts[:count]] if pairs is not None else [], None


def evaluate_stages(stages: dict[str, Path], sft_data: Path | None, pairs_data: Path | None, *,
                    references: dict[str, str] | None = None, samples: int = 96, device="auto",
                    max_new_tokens: int = 120, lexicon: Lexicon | None = HORROR) -> dict:
    """`stages` maps model names to run directories (trained one from another: they share a tokenizer, the last
    one's encodes the data); `references` maps a model to the one its implicit rewards are measured against (the
    quickstart: {"dpo": "sft"}). Returns the metrics and samples per model."""
    references = references or {}
    for policy, reference in references.items():
        if policy not in stages or reference not in stages:
            raise PicolmError(f"{policy} -> {reference}: both must be among {', '.join(stages)}", field="references")
    device = resolve_device(device, field="--device")
    loaded = {name: load_model(path, device=device) for name, path in stages.items()}
    last = list(loaded.values())[-1]
    tokenizer, block_size, quiet = last.tokenizer, last.model.config.block_size, BadRows(skip=True)
    sft_test = load_examples(sft_data, "test", "sft", tokenizer, block_size, quiet) if sft_data else None
    pairs = load_examples(pairs_data, "test", "dpo", tokenizer, block_size, quiet) if pairs_data else None
    prompts, answers = held_out_prompts(sft_data, pairs, TextGenerator(last.model, tokenizer, device), samples)
    results = {"prompts": [tokenizer.decode(p) for p in prompts], "references": answers, "stages": {},
               "preference": {}}
    if sft_test is not None:
        results["sft_test_examples"] = len(sft_test)
    if pairs is not None:
        results["test_pairs"] = len(pairs)
    summed = {}
    for name, entry in loaded.items():
        model, stage = entry.model, {"checkpoint_step": entry.checkpoint["global_step"]}
        if sft_test is not None:
            sft = FAMILIES["sft"].evaluate(model, in_order(sft_test, BATCH, tokenizer.eos_id), MaskedResponse(),
                                           device)
            stage.update(sft_test_loss=sft["loss"], sft_test_perplexity=sft["perplexity"])
        if pairs is not None:
            summed[name] = summed_log_probs(model, pairs, tokenizer.eos_id, device)
            stage.update(likelihood_scores(summed[name], response_lengths(pairs)))
        if prompts:
            responses = respond(TextGenerator(model, tokenizer, device), prompts, sampling(max_new_tokens), answers)
            stage["samples"] = responses.texts
            if answers is not None:
                stage.update(reference_scores(responses.texts, answers))
                stage["format_compliance"] = format_scores(responses)["compliance"]
            if lexicon is not None:
                stage["lexicon_rate"] = lexicon.mean_rate(responses.texts)
        results["stages"][name] = stage
    for policy, reference in references.items() if pairs is not None else ():
        objective = Preference(ObjectiveConfig(**loaded[policy].checkpoint["train_config"]["objective"]))
        rewards = reward_scores(summed[policy], summed[reference], response_lengths(pairs), objective.config.beta,
                                objective.length_normalize)
        results["stages"][policy].update(preference_accuracy=rewards["rewards_accuracy"],
                                         reward_margin=rewards["rewards_margin"])
        results["preference"][policy] = {"reference": reference, "loss": objective.config.loss,
                                         "beta": objective.config.beta}
    if lexicon is not None:
        results["lexicon"] = lexicon.name
    for name, stage in results["stages"].items():
        print(f"{name:>5}: " + ", ".join(f"{heading} {_cell(stage, key, digits)}"
                                         for key, heading, digits in _columns(results) if key in stage))
    return results


def _columns(results: dict) -> list[tuple[str, str, int]]:
    """(key, heading, digits) of the metrics table."""
    lexicon = f"{results['lexicon']}-lexicon rate" if "lexicon" in results else "lexicon rate"
    return [("sft_test_loss", "SFT test loss", 3), ("sft_test_perplexity", "SFT test perplexity", 2),
            ("chosen_more_likely", "chosen more likely", 3), ("preference_accuracy", "preference accuracy", 3),
            ("logps_accuracy", "log-prob accuracy", 3), ("reward_margin", "reward margin", 3),
            ("rouge_l", "ROUGE-L", 3), ("chrf", "chrF", 1), ("format_compliance", "format compliance", 3),
            ("lexicon_rate", lexicon, 3)]


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


def _held_out(results: dict) -> str:
    parts = [f"{results['sft_test_examples']} SFT test examples" if "sft_test_examples" in results else None,
             f"{results['test_pairs']} test pairs" if "test_pairs" in results else None,
             f"{len(results['prompts'])} prompts sampled per model" if results["prompts"] else None]
    return "Held-out: " + (", ".join(p for p in parts if p) or "none") + "."


def _notes(results: dict) -> list[str]:
    against = ", ".join(f"{policy} against {p['reference']} ({p['loss']} loss, beta {p['beta']})"
                        for policy, p in results["preference"].items()) or "no model was given a reference"
    return [
        "- *SFT test loss*: cross-entropy on the response tokens of held-out SFT examples.",
        "- *chosen more likely*: share of test pairs whose chosen response has a higher mean log-probability per "
        "token than the rejected one.",
        f"- *preference accuracy* and *reward margin*: DPO's implicit rewards beta * log(pi / pi_ref) on test pairs "
        f"(`rewards/accuracies`, `rewards/margins`): {against}.",
        "- *log-prob accuracy*: share of test pairs whose chosen response has the higher summed log-probability, no "
        "reference (what simple DPO pipelines report as preference accuracy).",
        "- *ROUGE-L* (F1, 0 to 1, rouge_score) and *chrF* (corpus, 0 to 100, sacrebleu) of the sampled responses "
        "against the held-out SFT references; *format compliance*: share of them that ended with EOS, are not empty "
        "and repeat no template header.",
        "- *lexicon rate*: share of words in sampled responses that belong to the lexicon, averaged over responses.",
    ]


def write_report(out: Path, results: dict, curves: Path | None, minutes: float, training: dict,
                 title: str = "picolm post-training report", description: str = "") -> Path:
    """report.md in `out`: the metrics table, how each model was trained, the plots, and samples for the same prompts
    from every model. `training` maps each model to its budget, steps trained and training minutes; a model's loss
    curve is linked where its run is `out/<model>`."""
    stages = results["stages"]
    columns = [column for column in _columns(results) if any(column[0] in stage for stage in stages.values())]
    lines = [f"# {title}", "", " ".join(filter(None, [description.strip(),
                                                       f"{minutes:.1f} minutes in all on this machine."])),
             _held_out(results), "",
             "| model | " + " | ".join(heading for _, heading, _ in columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    for name, stage in stages.items():
        lines.append(f"| {name} | " + " | ".join(_cell(stage, key, digits) for key, _, digits in columns) + " |")
    lines += ["", *_notes(results), "", *_training_table(stages, training)]
    links = [f"[{name}]({name}/plots/loss.png)" for name in stages if (out / name / "plots" / "loss.png").is_file()]
    if curves is not None or links:
        lines += ["## Curves", ""]
    if curves is not None:
        lines += [f"![{CURVES_CAPTION}]({Path(os.path.relpath(curves, out)).as_posix()})", ""]
    if links:
        lines += ["Loss curves: " + ", ".join(links) + ".", ""]
    lines += ["## Samples for held-out prompts", ""]
    for i, prompt in enumerate(results["prompts"][:3]):
        lines += [f"### Prompt {i + 1}", "", "```", prompt, "```", ""]
        if results["references"]:
            lines += [f"**reference**: {results['references'][i].strip()}", ""]
        for name, stage in stages.items():
            lines += [f"**{name}**: {stage['samples'][i].strip()}", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
