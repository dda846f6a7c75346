"""The TRL side of a DPO throughput benchmark: `trl.DPOTrainer` (TRL 1.16) for one epoch over plain-string
preference pairs on a small randomly initialised GPT-2 on CPU, in pairs per second of `trainer.train()`.

Two settings: `fair=True` is float32 without gradient checkpointing (the way picolm trains on CPU);
`fair=False` keeps DPOConfig's own defaults, which in TRL 1.16 are bf16 mixed precision (`bf16=True`, i.e. bf16
autocast over float32 weights) and gradient checkpointing (`gradient_checkpointing=True`). In both, the workload is
the same (sigmoid DPO, beta 0.1, learning rate 5e-6, the batch size and epochs asked for) and only what is needed to
run offline on CPU changes from the defaults: `use_cpu=True` (without it a CPU-only machine refuses DPOConfig's
default bf16), no reporting, no checkpoints, no logging, no progress bar. DPOConfig's `max_length` default, 1024,
leaves these ~120-token pairs untruncated (TRL 1.16 has no `max_prompt_length`).

    python benchmarks/trl_dpo_peer.py
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from pathlib import Path

EOS = "<|endoftext|>"
CORPUS_STORIES = 2000  # stories the pairs are drawn from, and the peer tokenizer is trained on


def corpus(seed: int = 0) -> list[str]:
    from picolm.data.stories import generate_stories

    return generate_stories(CORPUS_STORIES, seed=seed)


def train_peer_tokenizer(texts: list[str], vocab_size: int = 512):
    """A byte-level BPE (256 byte symbols, EOS, merges up to `vocab_size`) trained with `tokenizers`, wrapped as
    a `PreTrainedTokenizerFast` with EOS as the pad token. (Under transformers 5, `GPT2TokenizerFast(vocab_file=...,
    merges_file=...)` silently gives an empty vocabulary, so the `tokenizers` object is wrapped directly.)"""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS)


def make_peer_model(out_dir: str, vocab_size: int = 512, n_layer: int = 4, n_head: int = 4, n_embd: int = 256,
                    n_positions: int = 256, texts: list[str] | None = None) -> tuple[str, str]:
    """Save a randomly initialised `GPT2LMHeadModel` (seed 0) under out_dir/model and a byte-level BPE tokenizer of
    the same vocabulary, trained on `texts` (by default the story corpus `make_pairs` draws from), under
    out_dir/tokenizer. Returns (model_dir, tokenizer_dir)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    model_dir, tokenizer_dir = Path(out_dir) / "model", Path(out_dir) / "tokenizer"
    tokenizer = train_peer_tokenizer(corpus() if texts is None else texts, vocab_size)
    if len(tokenizer) != vocab_size:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens, not {vocab_size}: too little training text")
    tokenizer.save_pretrained(tokenizer_dir)
    eos_id = tokenizer.eos_token_id
    config = GPT2Config(vocab_size=vocab_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                        n_positions=n_positions, bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id)
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(model_dir)
    return str(model_dir), str(tokenizer_dir)


def load_tokenizer(tokenizer_dir: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


def _take_tokens(words: list[str], start: int, n_tokens: int, count) -> tuple[str, int]:
    """Whole words from words[start:] until they make at least n_tokens tokens: (text with a leading space unless
    at the story's start, index after the last word taken)."""
    end = start
    while end < len(words):
        end += 1
        text = " ".join(words[start:end])
        if count((" " if start else "") + text) >= n_tokens:
            break
    return (" " if start else "") + " ".join(words[start:end]), end


def make_pairs(n: int, seed: int = 0, tokenizer=None, prompt_tokens: int = 40,
               response_tokens: int = 80) -> list[dict]:
    """n preference pairs of plain strings from the story corpus: the prompt is the opening of one story (about
    `prompt_tokens` tokens, whole words), `chosen` its own continuation and `rejected` a stretch from another story
    (about `response_tokens` tokens each, with a leading space so the prompt ends on a token boundary). Lengths are
    measured with `tokenizer` (a tokenizer, a directory, or None for the default peer tokenizer)."""
    if tokenizer is None:
        tokenizer = train_peer_tokenizer(corpus())
    elif isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = load_tokenizer(str(tokenizer))

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    rng = random.Random(seed)
    stories = corpus()
    pairs = []
    while len(pairs) < n:
        a, b = rng.sample(stories, 2)
        wa, wb = a.split(), b.split()
        prompt, cut_a = _take_tokens(wa, 0, prompt_tokens, count)
        chosen, end_a = _take_tokens(wa, cut_a, response_tokens, count)
        _, cut_b = _take_tokens(wb, 0, prompt_tokens, count)
        rejected, end_b = _take_tokens(wb, cut_b, response_tokens, count)
        if end_a == len(wa) or end_b == len(wb):  # a story too short for a full response: draw again
            continue
        pairs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return pairs


def token_lengths(pairs: list[dict], tokenizer) -> dict[str, float]:
    """Mean tokens per prompt, chosen and rejected response (without the EOS TRL appends)."""
    def mean_len(key):
        return sum(len(tokenizer(p[key], add_special_tokens=False)["input_ids"]) for p in pairs) / len(pairs)

    return {key: mean_len(key) for key in ("prompt", "chosen", "rejected")}


def dpo_config(output_dir: str, fair: bool, batch_size: int = 8, epochs: int = 1, **overrides):
    """DPOConfig for the benchmark: offline, no saving or reporting, on CPU; float32 without gradient
    checkpointing when `fair`, TRL's bf16 and gradient-checkpointing defaults otherwise."""
    from trl import DPOConfig

    kwargs = dict(
        output_dir=output_dir,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        per_device_train_batch_size=batch_size,
        num_train_epochs=epochs,
        learning_rate=5e-6,
        beta=0.1,
        loss_type=["sigmoid"],
    )
    if fair:
        # `activation_checkpointing` is transformers 5's name; setting only the deprecated alias
        # `gradient_checkpointing` works too but raises a FutureWarning
        kwargs.update(bf16=False, gradient_checkpointing=False, activation_checkpointing=False)
    kwargs.update(overrides)
    return DPOConfig(**kwargs)


def trl_dpo_pairs_per_second(pairs: list[dict], model_dir: str, tokenizer_dir: str, fair: bool,
                             batch_size: int = 8, epochs: int = 1, whole_job: bool = False) -> dict:
    """Run `trl.DPOTrainer` over `pairs` ({"prompt", "chosen", "rejected"} plain strings) for `epochs` epochs on the
    model saved in model_dir (policy and reference both loaded from it, float32), timing only `trainer.train()`.
    Dataset tokenization and the reference model's loading happen in the trainer's constructor, outside the
    timing. With `whole_job`, the timing covers what picolm's side does: from the constructor (loading, tokenizing)
    through training, an evaluation over the first batch of pairs and the trained model saved."""
    from datasets import Dataset
    from trl import DPOTrainer

    tokenizer = load_tokenizer(tokenizer_dir)
    with tempfile.TemporaryDirectory() as output_dir:
        args = dpo_config(output_dir, fair, batch_size=batch_size, epochs=epochs)
        job_start = time.perf_counter()
        trainer = DPOTrainer(model=model_dir, args=args, train_dataset=Dataset.from_list(pairs),
                             eval_dataset=Dataset.from_list(pairs[:batch_size]) if whole_job else None,
                             processing_class=tokenizer)
        start = time.perf_counter()
        trainer.train()
        if whole_job:
            trainer.evaluate()
            trainer.save_model(str(Path(output_dir) / "final"))
            start = job_start
        seconds = time.perf_counter() - start
    count = len(pairs) * epochs
    return {"pairs_per_second": count / seconds, "seconds": seconds, "pairs": count}


def main() -> None:
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(name, "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    import warnings

    import torch
    import trl
    from transformers.utils import logging as hf_logging

    # transformers 5 renamed gradient checkpointing to activation checkpointing, and TRL's default still sets the old
    # name, so every default DPOConfig (and the Trainer's own calls) warns about it
    warnings.filterwarnings("ignore", message=".*checkpointing.* is deprecated", category=FutureWarning)
    hf_logging.disable_progress_bar()
    torch.set_num_threads(2)
    defaults = dpo_config(tempfile.gettempdir(), fair=False)
    print(f"trl {trl.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads; DPOConfig defaults: "
          f"bf16={defaults.bf16} gradient_checkpointing={defaults.gradient_checkpointing} "
          f"precompute_ref_log_probs={defaults.precompute_ref_log_probs} padding_free={defaults.padding_free} "
          f"max_length={defaults.max_length} max_prompt_length={getattr(defaults, 'max_prompt_length', 'absent')}")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, tokenizer_dir = make_peer_model(tmp)
        tokenizer = load_tokenizer(tokenizer_dir)
        pairs = make_pairs(64, seed=0, tokenizer=tokenizer)
        lengths = token_lengths(pairs, tokenizer)
        print(f"vocab {len(tokenizer)}; mean tokens: prompt {lengths['prompt']:.1f}, chosen {lengths['chosen']:.1f}, "
              f"rejected {lengths['rejected']:.1f} (+1 EOS each response)")
        fair = trl_dpo_pairs_per_second(pairs, model_dir, tokenizer_dir, fair=True, batch_size=8)
        print(f"TRL DPOTrainer float32, no checkpointing: {fair['pairs']} pairs in {fair['seconds']:.2f}s, "
              f"{fair['pairs_per_second']:.2f} pairs/s")
        slow = trl_dpo_pairs_per_second(pairs[:16], model_dir, tokenizer_dir, fair=False, batch_size=8)
        print(f"TRL DPOTrainer defaults (bf16 autocast, gradient checkpointing): {slow['pairs']} pairs in "
              f"{slow['seconds']:.2f}s, {slow['pairs_per_second']:.2f} pairs/s; "
              f"{fair['pairs_per_second'] / slow['pairs_per_second']:.1f}x slower")


if __name__ == "__main__":
    main()
