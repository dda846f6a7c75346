"""SFT and preference examples: a prepared split read back, encoded with the model's tokenizer, batched.

An SFT example is prompt + response + EOS with the loss on the response only: as next-token rows (`collate_sft`,
inputs and shifted targets) or as whole rows for models that write a response at once (`collate_canvas`). A
preference pair is packed into one row, prompt + chosen + rejected, where the rejected tokens cannot see the chosen
ones and restart their positions after the prompt: the prompt's hidden states are computed once for both
responses. Which collate a run uses is its method family's choice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from picolm.data.loader import ShuffledEpochs
from picolm.data.records import BadRows, pair_record, sft_record
from picolm.errors import PicolmError
from picolm.tokenizer import Tokenizer

SPLITS = ("train", "val", "test")
PROMPT, CHOSEN, REJECTED, PAD = 0, 1, 2, 3  # segments of a packed preference row
IGNORE_INDEX = -100  # a target that is not scored (the prompt, padding): cross-entropy's default ignore_index


def read_records(path: Path, task: str, bad: BadRows) -> list[dict]:
    """Checked records of a prepared `<split>.jsonl`; errors name the file and line."""
    check = sft_record if task == "sft" else pair_record
    records = []
    try:
        f = path.open("rb")
    except FileNotFoundError:
        raise PicolmError("no such split file (run `picolm prepare` first)", path=path) from None
    with f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise PicolmError(f"not a JSON line ({exc})", path=path, line=number) from None
            if not isinstance(row, dict):
                raise PicolmError("not a JSON object", path=path, line=number)
            record = check(row, bad, path=path, line=number, index=number - 1)
            if record is not None:
                record["line"] = number
                records.append(record)
    return records


def join_response(prompt: str, response: str) -> str:
    """The response as it continues the prompt: after a space unless either side already has whitespace."""
    if prompt and response and not prompt[-1].isspace() and not response[0].isspace():
        return " " + response
    return response


@dataclass
class SFTExamples:
    """prompt ids and response ids (EOS included) per example, fitted to the context."""

    prompts: list[np.ndarray]
    responses: list[np.ndarray]
    truncated: int = 0

    def __len__(self) -> int:
        return len(self.prompts)


@dataclass
class PairExamples:
    prompts: list[np.ndarray]
    chosen: list[np.ndarray]
    rejected: list[np.ndarray]
    truncated: int = 0
    reference: torch.Tensor | None = None  # (N, 2): the reference's log-probabilities of chosen and rejected

    def __len__(self) -> int:
        return len(self.prompts)


def _ids(values: list[int]) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)


def encode_sft(records: list[dict], tokenizer: Tokenizer, block_size: int, predict_next: bool = True) -> SFTExamples:
    """Prompt + response + EOS; an example longer than the context loses the start of its prompt first,
    then the end of its response, so the response is kept where it can be. Next-token rows hold one token more
    than the context (block_size inputs predict block_size + 1 tokens' worth); whole rows hold block_size."""
    eos, limit = tokenizer.eos_id, block_size + predict_next
    prompts = tokenizer.encode_batch([r["prompt"] for r in records])
    responses = tokenizer.encode_batch([join_response(r["prompt"], r["response"]) for r in records])
    out = SFTExamples([], [])
    for prompt, response in zip(prompts, responses):
        prompt = prompt or [eos]  # an empty prompt: the response starts a document
        response = response + [eos]
        if len(prompt) + len(response) > limit:
            out.truncated += 1
            response = response[:limit - 1]
            prompt = prompt[-(limit - len(response)):]
        out.prompts.append(_ids(prompt))
        out.responses.append(_ids(response))
    return out


def encode_pairs(records: list[dict], tokenizer: Tokenizer, block_size: int, bad: BadRows,
                 path=None) -> PairExamples:
    """Prompt, chosen + EOS and rejected + EOS ids. A prompt that leaves no room for a response in the context
    is a bad row; responses too long for it lose their ends."""
    eos = tokenizer.eos_id
    prompts = tokenizer.encode_batch([r["prompt"] for r in records])
    chosen = tokenizer.encode_batch([join_response(r["prompt"], r["chosen"]) for r in records])
    rejected = tokenizer.encode_batch([join_response(r["prompt"], r["rejected"]) for r in records])
    out = PairExamples([], [], [])
    for record, prompt, good, poor in zip(records, prompts, chosen, rejected):
        prompt = prompt or [eos]
        room = block_size - len(prompt)
        if room < 1:
            bad.reject(f"the prompt has {len(prompt)} tokens: no room for a response in the model's context of "
                       f"{block_size}", path=path, line=record.get("line"), row_field="prompt")
            continue
        good, poor = good + [eos], poor + [eos]
        if max(len(good), len(poor)) > room:
            out.truncated += 1
            good, poor = good[:room], poor[:room]
        out.prompts.append(_ids(prompt))
        out.chosen.append(_ids(good))
        out.rejected.append(_ids(poor))
    return out


def collate_sft(examples: SFTExamples, indices: list[int], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded rows; targets are IGNORE_INDEX on the prompt and the padding."""
    rows = [np.concatenate([examples.prompts[i], examples.responses[i]]) for i in indices]
    width = max(len(r) for r in rows) - 1
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    targets = np.full((len(rows), width), IGNORE_INDEX, dtype=np.int64)
    for row, i in enumerate(indices):
        ids, start = rows[row], len(examples.prompts[i]) - 1  # the last prompt token predicts the response
        input_ids[row, :len(ids) - 1] = ids[:-1]
        targets[row, start:len(ids) - 1] = ids[start + 1:]
    return {"input_ids": torch.from_numpy(input_ids), "targets": torch.from_numpy(targets)}


def collate_canvas(examples: SFTExamples, indices: list[int], pad_id: int) -> dict[str, torch.Tensor]:
    """Whole rows, prompt + response (its EOS included), right-padded with `pad_id`, for models that write a whole
    response at once: `response` marks the response tokens and `real` every token that is not padding."""
    rows = [np.concatenate([examples.prompts[i], examples.responses[i]]) for i in indices]
    width = max(len(r) for r in rows)
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    response = np.zeros((len(rows), width), dtype=bool)
    real = np.zeros((len(rows), width), dtype=bool)
    for row, (i, ids) in enumerate(zip(indices, rows)):
        input_ids[row, :len(ids)] = ids
        real[row, :len(ids)] = True
        response[row, len(examples.prompts[i]):len(ids)] = True
    return {"input_ids": torch.from_numpy(input_ids), "response": torch.from_numpy(response),
            "real": torch.from_numpy(real)}


def collate_pairs(examples: PairExamples, indices: list[int], pad_id: int) -> dict[str, torch.Tensor]:
    """Packed rows prompt + chosen + rejected, right-padded, with what the model needs to read them:

    positions: the rejected response restarts at the prompt's length; attn_mask (B, 1, L, L): causal, except
    that rejected tokens cannot see chosen ones; predict_at: for every response token, the flat index of the
    position that predicts it (the last prompt token predicts the first token of both); sequence: 2i for
    pair i's chosen tokens and 2i + 1 for its rejected ones; lengths: response lengths in that order."""
    width = max(len(examples.prompts[i]) + len(examples.chosen[i]) + len(examples.rejected[i]) for i in indices)
    B = len(indices)
    input_ids = np.full((B, width), pad_id, dtype=np.int64)
    positions = np.zeros((B, width), dtype=np.int64)
    segments = np.full((B, width), PAD, dtype=np.int64)
    predict_at, targets, sequence, lengths = [], [], [], []
    for row, i in enumerate(indices):
        p, c, r = examples.prompts[i], examples.chosen[i], examples.rejected[i]
        P, C, R = len(p), len(c), len(r)
        input_ids[row, :P + C + R] = np.concatenate([p, c, r])
        positions[row, :P + C + R] = np.concatenate([np.arange(P + C), np.arange(P, P + R)])
        segments[row, :P + C + R] = np.repeat([PROMPT, CHOSEN, REJECTED], [P, C, R])
        base = row * width
        predict_at += [base + P - 1, *range(base + P, base + P + C - 1),
                       base + P - 1, *range(base + P + C, base + P + C + R - 1)]
        targets += [c, r]
        sequence += [2 * row] * C + [2 * row + 1] * R
        lengths += [C, R]
    segment = torch.from_numpy(segments)
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    attn_mask = causal & ~((segment[:, :, None] == REJECTED) & (segment[:, None, :] == CHOSEN))
    batch = {"input_ids": torch.from_numpy(input_ids), "positions": torch.from_numpy(positions),
             "attn_mask": attn_mask[:, None], "predict_at": torch.tensor(predict_at),
             "targets": torch.from_numpy(np.concatenate(targets)), "sequence": torch.tensor(sequence),
             "lengths": torch.tensor(lengths, dtype=torch.float32)}
    if examples.reference is not None:
        batch["reference"] = examples.reference[indices]
    return batch


def default_collate(examples: SFTExamples | PairExamples):
    """Next-token rows for SFT examples, packed rows for preference pairs."""
    return collate_pairs if isinstance(examples, PairExamples) else collate_sft


class ExampleBatches(ShuffledEpochs):
    """Shuffled, resumable batches of examples, made by `collate` (default: `default_collate`)."""

    def __init__(self, examples: SFTExamples | PairExamples, pad_id: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1, collate=None):
        if len(examples) == 0:
            raise PicolmError("no usable examples in the training split", field="data.path")
        super().__init__(seed, rank, world_size)
        self.examples, self.pad_id = examples, pad_id
        self.collate = collate or default_collate(examples)

    @property
    def items_per_epoch(self) -> int:
        return len(self.examples)

    def next_batch(self, batch_size: int) -> dict[str, torch.Tensor]:
        return self.collate(self.examples, self.next_items(batch_size), self.pad_id)


def in_order(examples: SFTExamples | PairExamples, batch_size: int, pad_id: int, limit: int | None = None,
             collate=None):
    """Batches over the first `limit` examples (all by default) in order, for evaluation."""
    collate = collate or default_collate(examples)
    count = len(examples) if limit is None else min(limit, len(examples))
    for start in range(0, count, batch_size):
        yield collate(examples, list(range(start, min(start + batch_size, count))), pad_id)


def load_examples(data_dir: str | Path, split: str, task: str, tokenizer: Tokenizer, block_size: int,
                  bad: BadRows, predict_next: bool = True) -> SFTExamples | PairExamples:
    """A prepared split's examples encoded for a model with this context (`predict_next`: see `encode_sft`)."""
    path = Path(data_dir) / f"{split}.jsonl"
    records = read_records(path, task, bad)
    if task == "sft":
        return encode_sft(records, tokenizer, block_size, predict_next)
    return encode_pairs(records, tokenizer, block_size, bad, path=path)
