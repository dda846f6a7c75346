"""Sparse distribution diffusion (SDD, experimental; the network is picolm/models/sdd.py): its noise, its training
rows, its loss and evaluation, its vocabulary and its sampler.

Noise at level t in [0, 1]: each candidate is swapped for a uniformly random token of the vocabulary with
probability s(p, t) = t^(1 + p) (p: its weight before noising; likely candidates survive longer), and the
weights move toward uniform: p_t = (1 - t) p + t / k. At t = 0 the state is clean; at t = 1 every candidate is
random with weight 1/k, in expectation the uniform distribution over the vocabulary.

Training rows. Text windows are cut to documents: when a window holds a whole document after its first EOS, the row
is that document (from its first token to its EOS), and the rest of the row is padding whose input and target are
the IGNORE token (an extra last vocabulary id); otherwise the window is used as it is. Instruction rows (SFT) are
prompt + response + EOS + IGNORE padding to the context; the prompt stays clean and is not scored. The loss is the
cross-entropy of the clean token (IGNORE at padding) at every scored position, at t drawn antithetically across the
batch. It is a denoising loss, not a bound on the likelihood: its exp is reported as `perplexity` (and as
`denoising_perplexity`, which says what it is), comparable between sdd runs only.

Sampler. The length is decided before denoising: the canvas is the whole context, as in training: the prompt
(clean), the requested number of free positions, then EOS and IGNORE to the end (clean), and EOS and IGNORE are never
proposed inside the free positions, so every sample has exactly the requested length. The free positions start as
seeded random candidates with weight 1/k (t = 1); each of `steps` forward passes replaces every free position's
candidates with the prediction's top k (or, `stochastic`, k draws from it without replacement), weighted by the
softmax at the step's temperature (constant, or `linear` / `cosine` from 1.5x down to 0.5x, as the public SDD
implementation's schedules) and mixed toward uniform by the next t (scaled by 1 - confidence with
`confidence_weighted`). No re-noising. The result is the last step's first candidate.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import replace

import torch
import torch.nn.functional as F

from picolm.config import Config, ModelConfig, ObjectiveConfig, SamplingOptions, refuse_failed
from picolm.errors import PicolmError
from picolm.methods.family import Family, Objective
from picolm.methods.noise import antithetic_times
from picolm.methods.sampling import WholeCanvas, filter_logits, gumbel_noise, seeded_generator

NOT_A_BOUND = ("sdd's loss is a denoising cross-entropy (clean token from a noisy candidate state, averaged over "
               "stratified t), not a bound on the likelihood: its perplexity is exp of that loss")
TIMES_PER_ROW = 4  # noise levels each evaluation row is scored at


def final_k(objective: ObjectiveConfig) -> int:
    """The largest k an sdd run trains with (the curriculum's last, else objective.sdd_k): the sampler's k."""
    return objective.sdd_k_curriculum[-1] if objective.sdd_k_curriculum else objective.sdd_k


def k_at(curriculum: list[int], fraction: float) -> int:
    """The curriculum's k at a fraction of training: the steps are split evenly between its entries."""
    stage = min(max(int(fraction * len(curriculum)), 0), len(curriculum) - 1)
    return curriculum[stage]


# ---------------------------------------------------------------- noise, rows, loss


def clean_state(x0: torch.Tensor, k: int, vocab_size: int, generator: torch.Generator | None = None):
    """Clean tokens (B, L) -> ids (B, L, k) with x0 first (p = 1) and k - 1 random tokens (p = 0), and probs."""
    idx = torch.randint(vocab_size, (*x0.shape, k), generator=generator, device=x0.device)
    idx[..., 0] = x0
    probs = torch.zeros(idx.shape, device=x0.device)
    probs[..., 0] = 1.0
    return idx, probs


def swap_probability(probs: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """s(p, t) = t^(1 + p) for a candidate of weight p at a row's noise level t (B,): 0 at t = 0, 1 at t = 1,
    smaller for likelier candidates in between."""
    return t.view(-1, *[1] * (probs.dim() - 1)) ** (1 + probs)


def add_noise(idx: torch.Tensor, probs: torch.Tensor, t: torch.Tensor, vocab_size: int,
              generator: torch.Generator | None = None):
    """Swap each candidate for a uniformly random token with probability s(p, t); weights -> (1 - t) p + t / k.
    Returns the noisy ids, probs, and where a swap happened."""
    swapped = torch.rand(idx.shape, generator=generator, device=idx.device) < swap_probability(probs, t)
    random_tokens = torch.randint(vocab_size, idx.shape, generator=generator, device=idx.device)
    tt = t.view(-1, *[1] * (probs.dim() - 1))
    return torch.where(swapped, random_tokens, idx), (1 - tt) * probs + tt / idx.shape[-1], swapped


def documents(rows: torch.Tensor, eos_id: int, ignore_id: int) -> torch.Tensor:
    """Training windows (B, L) -> the clean rows: where a whole document follows the window's first EOS, that
    document moved to the start (its EOS kept) and IGNORE after it; other windows as they are."""
    B, L = rows.shape
    pos = torch.arange(L, device=rows.device)
    eos = rows == eos_id
    first = torch.where(eos.any(1), eos.int().argmax(1), L)
    start = first + 1
    later = eos & (pos[None, :] >= start[:, None])
    end = torch.where(later.any(1), later.int().argmax(1), L)  # the document's EOS
    whole = end < L
    start = torch.where(whole, start, 0)
    length = torch.where(whole, end - start + 1, L)
    shifted = rows.gather(1, (start[:, None] + pos[None, :]).clamp(max=L - 1))
    return torch.where(pos[None, :] < length[:, None], shifted, ignore_id)


def instruction_rows(batch: dict[str, torch.Tensor], ignore_id: int, width: int):
    """Canvas rows (`collate_canvas`) -> (clean rows with IGNORE padding out to `width`, where the prompt is)."""
    rows, real, response = batch["input_ids"], batch["real"], batch["response"]
    pad = width - rows.shape[1]
    x0 = F.pad(rows.masked_fill(~real, ignore_id), (0, pad), value=ignore_id)
    return x0, F.pad(real & ~response, (0, pad), value=False)


def training_rows(batch: dict[str, torch.Tensor], eos_id: int, ignore_id: int, width: int):
    """(clean rows, prompt positions or None) of a batch of text windows or of instruction rows."""
    if "response" in batch:
        return instruction_rows(batch, ignore_id, width)
    return documents(batch["input_ids"], eos_id, ignore_id), None


def score(logits: torch.Tensor, x0: torch.Tensor, ignore_id: int, prompt: torch.Tensor | None = None):
    """Summed cross-entropy over the scored positions (all but the prompt), accuracy on real tokens, ignore_acc on
    padding (IGNORE targets): `{name: (sum, count)}`."""
    losses = F.cross_entropy(logits.float().flatten(0, 1), x0.flatten(), reduction="none").view(x0.shape)
    scored = torch.ones_like(x0, dtype=torch.bool) if prompt is None else ~prompt
    correct = (logits.argmax(-1) == x0) & scored
    padding = x0 == ignore_id
    return {"loss": ((losses * scored).sum(), scored.sum()),
            "accuracy": ((correct & ~padding).sum(), (scored & ~padding).sum()),
            "ignore_acc": ((correct & padding).sum(), (scored & padding).sum())}


def denoising_metrics(model, x0: torch.Tensor, t: torch.Tensor, k: int, generator: torch.Generator | None = None,
                      prompt: torch.Tensor | None = None):
    """Noise clean rows x0 (B, L) to level t (B,) with k candidates (the prompt, where given, stays clean) and
    score the model's predictions."""
    config = model.config
    clean = clean_state(x0, k, config.vocab_size, generator)
    idx, probs, _ = add_noise(*clean, t, config.vocab_size, generator)
    if prompt is not None:
        idx, probs = (torch.where(prompt[..., None], c, n) for c, n in zip(clean, (idx, probs)))
    return score(model(idx, probs), x0, config.ignore_id, prompt)


class SparseDistributionDiffusion(Objective):
    """The denoising cross-entropy of each row's clean tokens from a noisy k-candidate state, t antithetic across
    the batch; k fixed (objective.sdd_k) or on a curriculum (objective.sdd_k_curriculum), logged as train/k."""

    def __init__(self, config: ObjectiveConfig, eos_id: int | None = None):
        self.curriculum = list(config.sdd_k_curriculum) or [config.sdd_k]
        self.k = self.curriculum[0]
        self.eos_id = eos_id

    def set_progress(self, fraction: float) -> None:
        self.k = k_at(self.curriculum, fraction)

    def loss(self, model, batch: dict[str, torch.Tensor]):
        if self.eos_id is None:
            raise RuntimeError("no eos_id: text windows are cut into documents at EOS")
        x0, prompt = training_rows(batch, self.eos_id, model.config.ignore_id, model.config.block_size)
        t = antithetic_times(len(x0), 0.0, device=x0.device)
        metrics = denoising_metrics(model, x0, t, self.k, prompt=prompt)
        total, count = metrics["loss"]
        loss = total / count
        metrics["loss"] = (loss.detach() * count, count)
        one = torch.ones((), device=x0.device)
        metrics["k"] = (one * self.k, one)
        return loss, metrics


# ---------------------------------------------------------------- sampler


def temperature_at(step: int, steps: int, temperature: float, schedule: str) -> float:
    """The softmax temperature of a step: constant, or falling from 1.5x to 0.5x `temperature` linearly or along
    a half cosine (the public SDD implementation's linear_decay and cosine_decay, scaled by the temperature)."""
    progress = step / max(steps - 1, 1)
    if schedule == "linear":
        return temperature * (1.5 - progress)
    if schedule == "cosine":
        return temperature * (0.5 + (1 + math.cos(math.pi * progress)) / 2)
    return temperature


@torch.inference_mode()
def sample(model, prompts: list[list[int]], length: int, steps: int, k: int | None = None, temperature: float = 1.0,
           schedule: str = "constant", confidence_weighted: bool = False, stochastic: bool = False,
           logits_filter=None, vocab_size: int | None = None, eos_id: int | None = None, seed: int | None = 0,
           device="cpu", trace: list | None = None) -> torch.Tensor:
    """(B, length) new tokens after each prompt, denoised in `steps` forward passes (see the module's docstring).
    `vocab_size` (the tokenizer's) keeps proposals inside the real vocabulary; EOS and IGNORE are never proposed."""
    config = model.config
    L, V, ignore_id = config.block_size, config.vocab_size, config.ignore_id
    k = k or config.sdd_k or 1
    if steps < 1:
        raise PicolmError("must be at least 1", field="--steps")
    if any(len(p) + length > L for p in prompts):
        raise PicolmError(f"prompt and {length} new tokens need at most {L} positions", field="prompt")
    was_training = model.training
    model.eval()
    generator = seeded_generator(seed, device)
    B = len(prompts)
    idx = torch.randint(V, (B, L, k), generator=generator, device=device)
    probs = torch.full((B, L, k), 1.0 / k, device=device)
    free = torch.zeros(B, L, dtype=torch.bool, device=device)
    tail = ([eos_id] if eos_id is not None else []) + [ignore_id] * L
    for b, prompt in enumerate(prompts):
        start, end = len(prompt), len(prompt) + length
        free[b, start:end] = True
        idx[b, ~free[b], 0] = torch.tensor(list(prompt) + tail[:L - end], dtype=torch.long, device=device)
    probs = torch.where(free[..., None], probs, F.one_hot(torch.zeros_like(free, dtype=torch.long), k).float())
    allowed = torch.zeros(V, dtype=torch.bool, device=device)
    allowed[:vocab_size or V] = True
    allowed[[i for i in (eos_id, ignore_id) if i is not None]] = False
    one_hot = F.one_hot(torch.zeros((), dtype=torch.long, device=device), k).float()
    try:
        for s in range(steps):
            tau = temperature_at(s, steps, temperature, schedule)
            logits = model(idx, probs).float().masked_fill(~allowed, float("-inf"))
            scaled = logits / tau if tau > 0 else logits
            if logits_filter is not None:
                scaled = logits_filter(scaled)
            keys = scaled + gumbel_noise(scaled.shape, generator, device) if stochastic and tau > 0 else scaled
            candidates = keys.topk(k, dim=-1).indices
            weights = scaled.gather(-1, candidates).softmax(-1) if tau > 0 else one_hot.expand(B, L, k)
            noise = torch.full((B, L, 1), 1.0 - (s + 1) / steps, device=device)
            if confidence_weighted and tau > 0:
                noise = noise * (1 - scaled.softmax(-1).amax(-1, keepdim=True))
            new_probs = (1 - noise) * weights + noise / k
            idx = torch.where(free[..., None], candidates, idx)
            probs = torch.where(free[..., None], new_probs, probs)
            if trace is not None:
                trace.append((idx.clone(), probs.clone()))
    finally:
        model.train(was_training)
    return torch.stack([idx[b, len(p):len(p) + length, 0] for b, p in enumerate(prompts)])


class SDDSampler(WholeCanvas):
    reads = ("steps", "temperature_schedule", "confidence_weighted", "stochastic")
    refusal = "an sdd model denoises candidate sets of a length decided before it starts"

    def denoise(self, model, prompts, length: int, options: SamplingOptions, eos_id, vocab_size, device):
        """A prompt of just EOS (an empty prompt) writes a new document from the first position, as training rows
        start."""
        prompts = [[] if eos_id is not None and list(p) == [eos_id] else list(p) for p in prompts]
        rows = sample(model, prompts, length, options.steps or length, temperature=options.temperature,
                      schedule=options.temperature_schedule, confidence_weighted=options.confidence_weighted,
                      stochastic=options.stochastic,
                      logits_filter=lambda logits: filter_logits(logits, options.top_k, options.top_p),
                      vocab_size=vocab_size, eos_id=eos_id, seed=options.seed, device=device)
        return rows.tolist()


class SDDFamily(Family):
    kind = "sdd"
    title = "sparse distribution diffusion"
    tasks = ("text", "sft")
    settings = ("sdd_k", "sdd_k_curriculum")
    sets = ("ignore_id", "sdd_k")
    causal = False
    predicts_next = False
    evaluations = ("perplexity", "accuracy", "generation", "format", "speed")
    aliases = {"perplexity": "denoising_perplexity"}
    extra_metrics = ("ignore_acc",)
    note = NOT_A_BOUND
    sampler = SDDSampler()

    def claims(self, model: ModelConfig) -> bool:
        return model.arch == "sdd"

    def starts_from(self, model: ModelConfig) -> bool:
        return self.claims(model)

    @property
    def causal_message(self) -> str:
        return ("sparse distribution diffusion denoises every position from both sides: set model.causal false (an "
                "sdd model has no causal form, no KV cache and no left-to-right decoding)")

    def check(self, config: Config, fresh: bool = True) -> list[str]:
        m, o = config.model, config.objective
        k = final_k(o)
        k_field = "objective.sdd_k_curriculum" if o.sdd_k_curriculum else "objective.sdd_k"
        if m.arch != "sdd":
            raise PicolmError("the sdd objective needs model.arch sdd", field="model.arch")
        super().check(config, fresh)
        checks = [
            (m.attention != "linear", "model.attention",
             "linear attention is built in its causal form; sdd needs softmax attention"),
            (not m.differential, "model.differential", "differential inputs do not apply to sdd"),
            (not config.train.hf_model, "train.hf_model", "a Hugging Face causal LM cannot be an sdd model"),
            (o.sdd_k >= 1, "objective.sdd_k", "must be at least 1"),
            (all(k >= 1 for k in o.sdd_k_curriculum), "objective.sdd_k_curriculum", "every k must be at least 1"),
            (all(a < b for a, b in zip(o.sdd_k_curriculum, o.sdd_k_curriculum[1:])), "objective.sdd_k_curriculum",
             f"must increase (got {o.sdd_k_curriculum})"),
            (m.vocab_size <= 0 or k <= m.vocab_size, k_field,
             f"k = {k} candidates per position is more than the vocabulary of {m.vocab_size}"),
        ]
        refuse_failed(checks)
        return []

    def vocabulary(self, model: ModelConfig, tokenizer, objective: ObjectiveConfig) -> ModelConfig:
        """The IGNORE token after the tokenizer's ids (the last vocabulary id) and the sampler's k."""
        size = self._vocab_size(model, tokenizer.vocab_size, extra=1, what=" plus the IGNORE token")
        k = final_k(objective)
        if k > size:
            field = "objective.sdd_k_curriculum" if objective.sdd_k_curriculum else "objective.sdd_k"
            raise PicolmError(f"k = {k} candidates per position is more than the vocabulary of {size}", field=field)
        return replace(model, vocab_size=size, ignore_id=size - 1, sdd_k=k)

    def objective(self, config: Config, tokenizer, task: str) -> Objective:
        return SparseDistributionDiffusion(config.objective, tokenizer.eos_id)

    def evaluate(self, model, batches, objective: SparseDistributionDiffusion, device="cpu", autocast=nullcontext,
                 kind_names=None) -> dict[str, float]:
        return self.finish(self.score(model, batches, objective.eos_id, device, autocast))

    @classmethod
    @torch.no_grad()
    def score(cls, model, batches, eos_id: int, device="cpu", autocast=nullcontext, times: int = TIMES_PER_ROW,
              seed: int = 0) -> dict[str, float]:
        """Denoising loss, accuracy (real tokens) and ignore_acc (padding) over evaluation rows, each at `times`
        stratified noise levels, with the model's k (the sampler's). t and the noise come from a fixed seed: two
        evaluations of one model agree exactly."""
        config = model.config
        k = config.sdd_k or 1
        was_training = model.training
        model.eval()
        generator = torch.Generator(device=device).manual_seed(seed)
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        try:
            for batch in batches:
                batch = {name: value.to(device) for name, value in batch.items()}
                x0, prompt = training_rows(batch, eos_id, config.ignore_id, config.block_size)
                x0 = x0.repeat(times, 1)
                prompt = prompt.repeat(times, 1) if prompt is not None else None
                t = antithetic_times(len(x0), 0.0, generator, device)
                with autocast():
                    metrics = denoising_metrics(model, x0, t, k, generator, prompt)
                for name, (total, count) in metrics.items():
                    sums[name] = sums.get(name, 0.0) + float(total)
                    counts[name] = counts.get(name, 0) + int(count)
        finally:
            model.train(was_training)
        # a metric with nothing to count (ignore_acc on rows without padding) is left out, not NaN
        return {name: sums[name] / counts[name] for name in ("loss", "accuracy", "ignore_acc") if counts[name]}
