"""`picolm eval`: every metric for any checkpoint, chosen with --metrics.

perplexity, accuracy  the model's family's evaluation of a split: loss / perplexity / accuracy (response tokens only
                      for SFT data, chosen responses for DPO data); a masked-diffusion model's perplexity is its
                      ELBO bound, an sdd model's the exp of its denoising loss (the `note` says which)
kinds                 per-kind accuracy of numeric data (also after each sequence's first numbers)
length                numeric accuracy on sequences longer than any seen in training
preference            on pairs (--pairs, else the run's DPO data): implicit-reward accuracy and margin against a
                      reference model (--reference, else the run's --init-from; none: log-probs), beside the
                      reference-free summed log-prob accuracy and the per-token "chosen more likely"
generation            Self-BLEU and distinct-1/2 over --samples sampled continuations of held-out prompts
instruct              ROUGE-L F1 and chrF of responses to held-out instructions against their references, and
                      their format compliance (SFT data: --instructions, else --data)
format                instruction-format compliance of the responses to instruction data
lexicon               the share of the responses' words in a lexicon (built-in horror words, or --lexicon FILE)
samples               the responses themselves, each with its prompt and reference, in the --json output
speed                 greedy decoding tokens/s at batch 1 and 8 (a diffusion model: new tokens/s at its steps)

instruct, format, lexicon and samples read one set of responses to the first --samples held-out prompts of the
instruction data (an SFT folder's instructions, a DPO folder's prompts, a text folder's document openings), greedy
unless a --temperature is given. Which metrics a model can give is its family's `evaluations` (the response metrics
count as its `format` and `generation`).
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from picolm.config import ObjectiveConfig, SamplingOptions, config_from_dict
from picolm.data.examples import in_order, load_examples
from picolm.data.loader import check_split, window_batches
from picolm.data.preparation import encode_split
from picolm.data.records import BadRows
from picolm.data.synthetic import NumericSpec, generate_numeric
from picolm.data.tokens import load_meta, load_split
from picolm.errors import PicolmError
from picolm.eval.instruct import Responses, format_scores, instructions, reference_scores, respond
from picolm.eval.lexicon import HORROR, load_lexicon
from picolm.eval.pairs import likelihood_scores, response_lengths, reward_scores, summed_log_probs
from picolm.eval.quality import distinct_n, self_bleu
from picolm.eval.samples import document_openings
from picolm.generate import TextGenerator, generate_ids
from picolm.methods import family_for, family_of
from picolm.methods.family import perplexity
from picolm.methods.next_token import WARMUP_NUMBERS
from picolm.methods.preference import Preference
from picolm.methods.sequences import pair_log_probs

METRICS = ("perplexity", "accuracy", "kinds", "length", "preference", "generation", "instruct", "format", "lexicon",
           "samples", "speed")
COUNTS_AS = {"instruct": "format", "lexicon": "generation", "samples": "generation"}  # in a family's `evaluations`
GENERATION_TEMPERATURE = 0.8  # `generation` samples (its diversity is the point) unless --temperature says otherwise
BATCH = 16


@dataclass
class EvalRequest:
    metrics: tuple[str, ...] = ("perplexity", "accuracy")
    split: str = "test"
    data: str | None = None  # default: the data the run trained on
    pairs: str | None = None  # a DPO data directory for `preference`
    reference: str | None = None  # a run or checkpoint: the reference model for `preference`
    instructions: str | None = None  # an SFT data directory for `instruct` and `format`
    lexicon: str | None = None  # a word-list file for `lexicon` (default: the built-in horror lexicon)
    samples: int = 32  # prompts to generate for (`generation` and the response metrics)
    # temperature None: each metric's own (GENERATION_TEMPERATURE for `generation`, greedy for the responses)
    sampling: SamplingOptions = field(default_factory=lambda: SamplingOptions(max_new_tokens=64, top_k=50,
                                                                              temperature=None))
    batch_size: int = BATCH
    max_windows: int | None = None

    def validate(self) -> None:
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown:
            raise PicolmError(f"unknown metric {unknown[0]!r}; choose from {', '.join(METRICS)}", field="--metrics")
        if self.samples < 2:
            raise PicolmError("needs at least 2 samples", field="--samples")
        if self.lexicon and "lexicon" not in self.metrics:
            raise PicolmError("a word list is for --metrics lexicon", field="--lexicon")
        self.sampling.validate()

    def with_temperature(self, temperature: float) -> SamplingOptions:
        """The sampling options, with this temperature unless one was given."""
        given = self.sampling.temperature
        return replace(self.sampling, temperature=temperature if given is None else given)


class RunEvaluation:
    def __init__(self, loaded, request: EvalRequest, device="cpu"):
        request.validate()
        self.loaded, self.request, self.device = loaded, request, device
        self.model, self.tokenizer = loaded.model, loaded.tokenizer
        self.family = family_of(self.model.config)
        self.generator = TextGenerator(self.model, self.tokenizer, device)
        self.sampled, self.decoding = (request.with_temperature(t) for t in (GENERATION_TEMPERATURE, 0.0))
        for options in (self.sampled, self.decoding):
            self.generator.check(options)
        self.train_config = loaded.checkpoint.get("train_config", {})
        self.data_dir = request.data or self.train_config.get("data", {}).get("path")
        self.lexicon = load_lexicon(request.lexicon) if request.lexicon else HORROR
        self._responses: Responses | None = None

    def _meta(self, data_dir) -> dict:
        if not data_dir:
            raise PicolmError("this checkpoint names no data directory; pass --data", field="--data")
        return load_meta(data_dir)

    def run(self) -> dict:
        result = {"checkpoint": str(self.loaded.path), "split": self.request.split}
        wanted = set(self.request.metrics)
        refused = [m for m in METRICS if m in wanted and COUNTS_AS.get(m, m) not in self.family.evaluations]
        if refused:
            raise PicolmError(f"{refused[0]!r} is not for {self.family.title} models ({self.family.kind}); they give "
                              f"{', '.join(self.family.evaluations)}", field="--metrics")
        if wanted & {"perplexity", "accuracy", "kinds"}:
            result.update(self.language_modelling("kinds" in wanted))
        for name, method in (("length", self.longer_sequences), ("preference", self.preference),
                             ("generation", self.generation), ("instruct", self.instruct),
                             ("format", self.format_compliance), ("lexicon", self.lexicon_rate),
                             ("samples", self.samples), ("speed", self.speed)):
            if name in wanted:
                result.update(method())
        return result

    def _objective(self, family, task: str):
        """The family's objective with the run's settings (the model's own config)."""
        config = replace(config_from_dict(self.train_config), model=self.model.config)
        return family.objective(config, self.tokenizer, task)

    def _evaluate(self, family, task: str, batches, kind_names=None) -> dict:
        metrics = family.evaluate(self.model, batches, self._objective(family, task), self.device,
                                  kind_names=kind_names)
        return {**metrics, "note": family.note} if family.note else metrics

    def language_modelling(self, need_kinds: bool) -> dict:
        meta = self._meta(self.data_dir)
        task = meta.get("task", "text")
        block = self.model.config.block_size
        if need_kinds and not meta.get("kinds"):
            raise PicolmError("`kinds` needs data with sequence kinds (numeric)", path=self.data_dir)
        family = family_for("auto", task, self.model.config, data=str(self.data_dir))
        if task == "text":
            tokens, kinds = load_split(self.data_dir, self.request.split, self.tokenizer)
            check_split(tokens, Path(self.data_dir) / f"{self.request.split}.bin", self.model.config.vocab_size, block)
            batches = window_batches(tokens, block, self.request.batch_size, self.request.max_windows, kinds,
                                     self.tokenizer.eos_id)
            return self._evaluate(family, task, batches, meta.get("kinds"))
        examples = load_examples(self.data_dir, self.request.split, task, self.tokenizer, block, BadRows(skip=True),
                                 family.predicts_next)
        if task == "sft":
            batches = in_order(examples, self.request.batch_size, self.tokenizer.eos_id, collate=family.collate)
            return self._evaluate(family, task, batches)
        per_token = pair_log_probs(self.model, examples, self.request.batch_size, self.tokenizer.eos_id, self.device,
                                   nullcontext, length_normalize=True)
        loss = float(-per_token[:, 0].mean())
        return {"loss": loss, "perplexity": perplexity(loss), "chosen_more_likely":
                float((per_token[:, 0] > per_token[:, 1]).float().mean())}

    def longer_sequences(self) -> dict:
        meta = self._meta(self.data_dir)
        if not meta.get("kinds"):
            raise PicolmError("`length` needs numeric data", path=self.data_dir)
        options = meta.get("options", {})
        trained = options.get("max_length") or NumericSpec.max_length
        top = options.get("max_value") or NumericSpec.max_value
        longest = min(2 * trained, top // 2)
        if longest <= trained:
            raise PicolmError(f"max_value {top} leaves no room for sequences longer than {trained}", path=self.data_dir)
        records = generate_numeric(NumericSpec(num_sequences=500, min_length=trained + 1, max_length=longest,
                                               max_value=top, seed=1_000_003))
        tokens, kinds = encode_split(self.tokenizer, records, meta["kinds"])
        batches = window_batches(tokens, self.model.config.block_size, self.request.batch_size,
                                 self.request.max_windows, kinds, self.tokenizer.eos_id)
        metrics = self._evaluate(self.family, "text", batches, meta["kinds"])
        return {"length/sequence_lengths": f"{trained + 1}-{longest}", "length/accuracy": metrics["accuracy"],
                **{f"length/{k}": v for k, v in metrics.items() if k.startswith(f"accuracy_after_{WARMUP_NUMBERS}")}}

    def _reference_model(self):
        from picolm.loading import load_start

        if self.request.reference:  # named: it must load (a mistyped path is an error, not "no reference")
            return load_start(self.request.reference, device=self.device).model, self.request.reference
        source = self.train_config.get("train", {}).get("init_from")
        if not source or not Path(source).exists():
            return None, f"none (log-probabilities; the run's init_from {source} is not here)" if source else None
        return load_start(source, device=self.device).model, str(source)

    def preference(self) -> dict:
        pairs_dir = self.request.pairs or self.data_dir
        if self._meta(pairs_dir).get("task") != "dpo":
            raise PicolmError("`preference` needs pairs: pass --pairs with a DPO data directory", path=pairs_dir)
        reference, source = self._reference_model()
        pairs = load_examples(pairs_dir, self.request.split, "dpo", self.tokenizer, self.model.config.block_size,
                              BadRows(skip=True))
        objective = Preference(ObjectiveConfig(**self.train_config.get("objective", {})))
        policy = summed_log_probs(self.model, pairs, self.tokenizer.eos_id, self.device)
        lengths = response_lengths(pairs)
        if reference is None:
            rewards = reward_scores(policy, torch.zeros_like(policy), lengths, 1.0, objective.length_normalize)
        else:
            rewards = reward_scores(policy, summed_log_probs(reference, pairs, self.tokenizer.eos_id, self.device),
                                    lengths, objective.config.beta, objective.length_normalize)
        likelihood = likelihood_scores(policy, lengths)
        return {"preference/accuracy": rewards["rewards_accuracy"], "preference/margin": rewards["rewards_margin"],
                "preference/logps_accuracy": likelihood["logps_accuracy"],
                "preference/chosen_more_likely": likelihood["chosen_more_likely"],
                "preference/reference": source or "none (log-probabilities)", "preference/pairs": len(pairs)}

    def _prompts(self, data_dir, count: int) -> list[list[int]]:
        meta = self._meta(data_dir)
        if meta.get("task", "text") == "text":
            tokens, _ = load_split(data_dir, self.request.split, self.tokenizer)
            return document_openings(tokens, self.tokenizer.eos_id, count, prompt_tokens=8)
        examples = load_examples(data_dir, self.request.split, meta["task"], self.tokenizer,
                                 self.model.config.block_size, BadRows(skip=True))
        return [p.tolist() for p in examples.prompts[:count]]

    def generation(self) -> dict:
        prompts = self._prompts(self.data_dir, self.request.samples)
        texts = self.generator.complete(prompts, self.sampled)
        return {"generation/samples": len(texts), "generation/self_bleu": self_bleu(texts),
                "generation/distinct_1": distinct_n(texts, 1), "generation/distinct_2": distinct_n(texts, 2)}

    def responses(self) -> Responses:
        """The responses to the first --samples held-out prompts of the instruction data, written once for every
        metric that reads them; an SFT folder's come with its reference responses."""
        if self._responses is None:
            data_dir = self.request.instructions or self.data_dir
            references = None
            if self._meta(data_dir).get("task") == "sft":
                prompts, references = instructions(data_dir, self.request.split, self.request.samples, self.generator)
            else:
                prompts = self._prompts(data_dir, self.request.samples)
            if not prompts:
                raise PicolmError(f"no held-out prompts in the {self.request.split} split", path=data_dir)
            self._responses = respond(self.generator, prompts, self.decoding, references)
        return self._responses

    def _instruction_responses(self, metric: str) -> Responses:
        data_dir = self.request.instructions or self.data_dir
        if self._meta(data_dir).get("task") != "sft":
            raise PicolmError(f"`{metric}` needs instruction data: pass --instructions (or --data) with an SFT data "
                              "directory", path=data_dir)
        return self.responses()

    def instruct(self) -> dict:
        responses = self._instruction_responses("instruct")
        scores = reference_scores(responses.texts, responses.references)
        return {"instruct/samples": len(responses.texts), "instruct/rouge_l": scores["rouge_l"],
                "instruct/chrf": scores["chrf"], **self._format(responses)}

    def format_compliance(self) -> dict:
        return self._format(self._instruction_responses("format"))

    @staticmethod
    def _format(responses: Responses) -> dict:
        return {f"format/{name}": value for name, value in format_scores(responses).items()}

    def lexicon_rate(self) -> dict:
        texts = self.responses().texts
        return {"lexicon/name": self.lexicon.name, "lexicon/words": len(self.lexicon.words),
                "lexicon/rate": self.lexicon.mean_rate(texts), "lexicon/samples": len(texts)}

    def samples(self) -> dict:
        return {"samples": self.responses().samples()}

    def speed(self, new_tokens: int = 200, prompt_tokens: int = 16) -> dict:
        """Greedy new tokens per second at batch 1 and 8 after random prompts, with the sampler's settings (a
        diffusion model writes inside its context, at --steps denoising steps, default one per new token)."""
        sampler = self.generator.sampler
        length = sampler.room(self.model, prompt_tokens, new_tokens)
        options = SamplingOptions(max_new_tokens=length, temperature=0.0, steps=self.request.sampling.steps)
        vocab = self.tokenizer.vocab_size
        result = {f"speed/{name}": value for name, value in sampler.settings(options).items()}
        for batch in (1, 8):
            prompts = torch.randint(0, vocab, (batch, prompt_tokens), generator=torch.Generator().manual_seed(0))
            generate_ids(self.model, prompts[:, :4].tolist(), replace(options, max_new_tokens=8), device=self.device)
            start = time.perf_counter()
            generate_ids(self.model, prompts.tolist(), options, vocab_size=vocab, device=self.device)
            result[f"speed/tokens_per_second_batch_{batch}"] = batch * length / (time.perf_counter() - start)
        return result
