"""Responses to held-out prompts, and what is scored on them: ROUGE-L F1 (rouge_score) and corpus chrF (sacrebleu)
against reference responses, and instruction-format compliance.

One generation pass serves every metric of `picolm eval` that reads responses (instruct, format, lexicon, samples)
and the post-training report. The scores are the maintained libraries' own: ROUGE-L F1 is rouge_score's
`RougeScorer(["rougeL"])` (its default tokenizer: lower-cased alphanumeric words, no stemming) averaged over the
responses, from 0 to 1; chrF is sacrebleu's `CHRF()` corpus score over all responses, from 0 to 100.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from picolm.config import SamplingOptions
from picolm.data.examples import read_records
from picolm.data.records import BadRows
from picolm.generate import TextGenerator

TEMPLATE_HEADERS = ("### Instruction:", "### Input:", "### Response:")
BATCH = 16


@dataclass
class Responses:
    """What a model wrote after each prompt, beside the reference response where the data has one."""

    prompts: list[str]
    texts: list[str]
    ended: list[bool]  # whether EOS ended the response (rather than the token budget)
    references: list[str] | None = None

    def samples(self) -> list[dict]:
        """One {prompt, reference, response} per prompt, for `--json` and the report."""
        references = self.references or [None] * len(self.prompts)
        return [{"prompt": p, "reference": r, "response": t} for p, r, t in zip(self.prompts, references, self.texts)]


def instructions(data_dir: str | Path, split: str, count: int, generator: TextGenerator):
    """The first `count` instructions of an SFT folder's split as prompt ids (the last tokens of one too long for the
    context, said once), and their reference responses."""
    records = read_records(Path(data_dir) / f"{split}.jsonl", "sft", BadRows(skip=True))[:count]
    return [generator.encode_prompt(r["prompt"]) for r in records], [r["response"] for r in records]


def respond(generator: TextGenerator, prompts: list[list[int]], options: SamplingOptions,
            references: list[str] | None = None) -> Responses:
    """Each prompt's response (up to its EOS, cut before the first stop string), BATCH prompts at a time: the same
    seed draws the same responses."""
    completed = generator.complete_ended(prompts, options, BATCH)
    return Responses([generator.tokenizer.decode(p) for p in prompts], [text for text, _ in completed],
                     [end for _, end in completed], references)


def reference_scores(texts: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE-L F1 (0 to 1) and corpus chrF (0 to 100) of the texts against their references."""
    from rouge_score.rouge_scorer import RougeScorer
    from sacrebleu.metrics import CHRF

    scorer = RougeScorer(["rougeL"])
    rouge = [scorer.score(reference, text)["rougeL"].fmeasure for text, reference in zip(texts, references)]
    return {"rouge_l": sum(rouge) / len(rouge), "chrf": CHRF().corpus_score(texts, [references]).score}


def format_scores(responses: Responses) -> dict[str, float]:
    """Instruction-format compliance: the share of responses that ended with EOS, are not empty and repeat none of
    the template's headers, and each of the three alone."""
    ended = responses.ended
    nonempty = [bool(text.strip()) for text in responses.texts]
    clean = [not any(h in text for h in TEMPLATE_HEADERS) for text in responses.texts]
    n = len(ended)
    return {"compliance": sum(all(t) for t in zip(ended, nonempty, clean)) / n, "ended_with_eos": sum(ended) / n,
            "non_empty": sum(nonempty) / n, "no_template_leak": sum(clean) / n}
