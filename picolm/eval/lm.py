"""Language-model evaluation: loss, perplexity and next-token accuracy over a token file,
per sequence kind (and after each sequence's first numbers) when the data records kinds."""

from __future__ import annotations

import math
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from picolm.data.loader import eval_windows
from picolm.data.pack import read_tokens
from picolm.errors import PicolmError

WARMUP_NUMBERS = 3  # "after the first three numbers": the continuation is then determined


def evaluation_metric_names(kind_names: list[str] | None) -> list[str]:
    """The metrics `evaluate_tokens` reports for data with these sequence kinds."""
    per_kind = [f"{metric}/{kind}" for kind in kind_names or [] for metric in
                ("loss", "accuracy", f"accuracy_after_{WARMUP_NUMBERS}")]
    return ["loss", "perplexity", "accuracy", *per_kind]


def position_in_document(tokens: np.ndarray, eos_id: int) -> np.ndarray:
    """For each token, how many tokens of its document come before it."""
    index = np.arange(len(tokens))
    starts = np.zeros(len(tokens), dtype=np.int64)
    eos = np.flatnonzero(tokens == eos_id)
    starts[eos[eos + 1 < len(tokens)] + 1] = eos[eos + 1 < len(tokens)] + 1
    return index - np.maximum.accumulate(starts)


@torch.no_grad()
def evaluate_tokens(model, tokens: np.ndarray, block_size: int, batch_size: int = 16, max_windows: int | None = None,
                    kinds: np.ndarray | None = None, kind_names: list[str] | None = None, eos_id: int = 0,
                    device="cpu", autocast=nullcontext) -> dict[str, float]:
    """Mean loss, perplexity and accuracy over evaluation windows; per-kind loss and accuracies when kinds are
    given (over the numbers of each kind; end-of-text tokens count in the overall figures only)."""
    if batch_size < 1 or (max_windows is not None and max_windows < 1):
        raise PicolmError("batch size and number of windows must be at least 1", field="evaluation")
    starts = eval_windows(tokens, block_size, max_windows)
    if not starts:
        raise PicolmError(f"only {len(tokens)} tokens: fewer than one window of block_size + 1", field="evaluation")
    was_training = model.training
    model.eval()
    positions = position_in_document(np.asarray(tokens), eos_id) if kinds is not None else None
    loss_sum, correct_sum, count = 0.0, 0, 0
    per_kind = {}  # kind id -> [correct, total, correct after warmup, total after warmup, loss sum]
    for b in range(0, len(starts), batch_size):
        rows = np.stack([np.asarray(tokens[s:s + block_size + 1], dtype=np.int64) for s in starts[b:b + batch_size]])
        batch = torch.from_numpy(rows).to(device)
        with autocast():
            logits = model(batch[:, :-1]).float()
        targets = batch[:, 1:]
        losses = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
        loss_sum += losses.sum().item()
        losses = losses.view(targets.shape).cpu().numpy()
        hits = (logits.argmax(-1) == targets).cpu().numpy()
        correct_sum += int(hits.sum())
        count += targets.numel()
        if kinds is not None:
            target_index = np.stack([np.arange(s + 1, s + block_size + 1) for s in starts[b:b + batch_size]])
            target_kind = kinds[target_index]
            is_number = rows[:, 1:] != eos_id
            target_position = positions[target_index]
            # the model knows where the document starts only if its opening EOS is inside the window
            in_view = target_position <= np.arange(block_size)
            after_warmup = (target_position >= WARMUP_NUMBERS) & in_view
            for k in np.unique(target_kind):
                sel = (target_kind == k) & is_number
                late = sel & after_warmup
                tally = per_kind.setdefault(int(k), [0, 0, 0, 0, 0.0])
                tally[0] += int(hits[sel].sum())
                tally[1] += int(sel.sum())
                tally[2] += int(hits[late].sum())
                tally[3] += int(late.sum())
                tally[4] += float(losses[sel].sum())
    model.train(was_training)
    loss = loss_sum / max(count, 1)
    result = {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "accuracy": correct_sum / max(count, 1),
              "tokens": count}
    for k, (c, n, c_late, n_late, kind_loss) in sorted(per_kind.items()):
        name = kind_names[k] if kind_names else str(k)
        result[f"loss/{name}"] = kind_loss / max(n, 1)
        result[f"accuracy/{name}"] = c / max(n, 1)
        result[f"accuracy_after_{WARMUP_NUMBERS}/{name}"] = c_late / max(n_late, 1)
    return result


def load_split(data_dir: str | Path, split: str) -> tuple[np.ndarray, np.ndarray | None]:
    data_dir = Path(data_dir)
    kind_path = data_dir / f"{split}.kind.bin"
    return read_tokens(data_dir / f"{split}.bin"), (np.asarray(read_tokens(kind_path)) if kind_path.exists() else None)
