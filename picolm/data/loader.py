"""Batches of (input, target) windows from a token file or its shards, resumable from a small state dict; and the
evaluation windows every family scores (`window_batches`): window slicing lives here and nowhere else.

Each epoch visits every non-overlapping window of `block_size + 1` tokens once, in an order drawn
from (seed, epoch) and shifted by a per-epoch offset so window boundaries move between epochs. The
state is just (epoch, cursor), so a resumed run reads exactly the batches an uninterrupted one would;
`ShuffledEpochs` is that mechanism, shared with the SFT/DPO example batches.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from picolm.data.tokens import load_meta, read_tokens
from picolm.errors import PicolmError


class ShuffledEpochs:
    """A resumable walk over `items_per_epoch` items: each epoch visits them in an order drawn from
    (seed, epoch); ranks take disjoint items of that order; the state is just (epoch, cursor)."""

    def __init__(self, seed: int = 0, rank: int = 0, world_size: int = 1):
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch, self.cursor, self._order = 0, 0, None

    items_per_epoch: int

    def _new_epoch(self, generator: torch.Generator) -> torch.Tensor:
        return torch.randperm(self.items_per_epoch, generator=generator)

    def _item(self, index: int):
        return index

    def next_items(self, count: int) -> list:
        """The next `count` items of this rank (`_item` of each drawn index), crossing epochs as needed."""
        items = []
        while len(items) < count:
            if self._order is None:
                self._order = self._new_epoch(torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch))
            index = self.cursor * self.world_size + self.rank
            if index >= len(self._order):
                self.epoch, self.cursor, self._order = self.epoch + 1, 0, None
                continue
            items.append(self._item(int(self._order[index])))
            self.cursor += 1
        return items

    def epochs_done(self) -> float:
        return self.epoch + self.cursor / (self.items_per_epoch / self.world_size)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor, "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        """Resume where the saved walk stopped; a run saved under another number of processes continues from the
        same place in the epoch's order when the items it had read split evenly over the new ranks."""
        read = int(state["cursor"]) * int(state.get("world_size", 1))
        if read % self.world_size:
            raise PicolmError(f"the run stopped after {read} items of its epoch, which do not split evenly over "
                              f"{self.world_size} processes: resume with a process count that divides {read}",
                              field="torchrun")
        self.epoch, self.cursor, self._order = int(state["epoch"]), read // self.world_size, None


class TokenWindows(ShuffledEpochs):
    """Windows of `block_size + 1` tokens from one token file or several shards, each memory-mapped. The windows
    of all shards form one global index that epochs shuffle; a window never straddles two shards."""

    def __init__(self, paths: str | Path | list, block_size: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        super().__init__(seed, rank, world_size)
        self.paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
        self.shards = [read_tokens(path) for path in self.paths]
        self.block_size = block_size
        counts = [max(0, (len(tokens) - block_size) // block_size) for tokens in self.shards]
        self._first = np.cumsum([0, *counts])  # global index of each shard's first window
        if self.items_per_epoch < 1 and len(self.shards) == 1:
            raise PicolmError(f"only {len(self.shards[0])} tokens: training needs at least 2 x block_size "
                              f"= {2 * block_size}", path=self.paths[0])
        if self.items_per_epoch < 1:
            raise PicolmError(f"no shard holds 2 x block_size = {2 * block_size} tokens (the largest holds "
                              f"{max(map(len, self.shards))}); prepare with a larger --shard-tokens",
                              path=Path(self.paths[0]).parent)
        self._offset = 0

    @property
    def items_per_epoch(self) -> int:
        """Windows per epoch."""
        return int(self._first[-1])

    def _new_epoch(self, generator: torch.Generator) -> torch.Tensor:
        self._offset = int(torch.randint(0, self.block_size, (1,), generator=generator))
        return super()._new_epoch(generator)

    def _item(self, index: int) -> np.ndarray:
        shard = int(np.searchsorted(self._first, index, side="right")) - 1
        start = self._offset + (index - int(self._first[shard])) * self.block_size
        return np.asarray(self.shards[shard][start:start + self.block_size + 1], dtype=np.int64)

    def next_batch(self, batch_size: int) -> dict[str, torch.Tensor]:
        """The next `batch_size` windows of this rank as input_ids and targets."""
        batch = torch.from_numpy(np.stack(self.next_items(batch_size)))
        return {"input_ids": batch[:, :-1], "targets": batch[:, 1:]}


def train_windows(data_dir: str | Path, block_size: int, seed: int = 0, rank: int = 0,
                  world_size: int = 1) -> TokenWindows:
    """The training windows of a data directory: the train shards its meta.json lists, else train.bin."""
    data_dir = Path(data_dir)
    shards = load_meta(data_dir).get("shards")
    if not shards:
        return TokenWindows(data_dir / "train.bin", block_size, seed, rank, world_size)
    windows = TokenWindows([data_dir / s["file"] for s in shards], block_size, seed, rank, world_size)
    for shard, tokens, path in zip(shards, windows.shards, windows.paths):
        if len(tokens) != shard["tokens"]:
            raise PicolmError(f"holds {len(tokens):,} tokens, but meta.json lists {shard['tokens']:,}", path=path)
    return windows


def check_split(tokens: np.ndarray, path, vocab_size: int, block_size: int) -> None:
    """Refuse token files that the model cannot read: too short for one window, or ids past its vocabulary."""
    if len(tokens) < block_size + 1:
        raise PicolmError(f"only {len(tokens)} tokens: fewer than one window of block_size + 1 = {block_size + 1}",
                          path=path)
    top = int(tokens.max())
    if top >= vocab_size:
        raise PicolmError(f"token id {top} is outside the model's vocabulary of {vocab_size}", path=path)


def eval_windows(tokens: np.ndarray, block_size: int, max_windows: int | None = None) -> list[int]:
    """Start offsets of non-overlapping windows for evaluation, evenly spread when capped."""
    count = (len(tokens) - 1) // block_size
    if count == 0:
        return []
    if max_windows is None or max_windows >= count:
        return [i * block_size for i in range(count)]
    return [int(i) * block_size for i in np.linspace(0, count - 1, max_windows).round()]


def position_in_document(tokens: np.ndarray, eos_id: int) -> np.ndarray:
    """For each token, how many tokens of its document come before it."""
    index = np.arange(len(tokens))
    starts = np.zeros(len(tokens), dtype=np.int64)
    eos = np.flatnonzero(tokens == eos_id)
    starts[eos[eos + 1 < len(tokens)] + 1] = eos[eos + 1 < len(tokens)] + 1
    return index - np.maximum.accumulate(starts)


def window_batches(tokens: np.ndarray, block_size: int, batch_size: int, max_windows: int | None = None,
                   kinds: np.ndarray | None = None, eos_id: int = 0):
    """Evaluation batches over the non-overlapping windows of a split (evenly spread when capped): `input_ids`
    (B, T) and `targets` (B, T), the tokens that follow. With `kinds` (numeric data), also the sequence kind of each
    of the window's T + 1 tokens (`kinds`; -1 for end-of-text, which belongs to no kind's numbers) and how many
    tokens of its document precede it (`document_positions`)."""
    if batch_size < 1 or (max_windows is not None and max_windows < 1):
        raise PicolmError("batch size and number of windows must be at least 1", field="evaluation")
    starts = eval_windows(tokens, block_size, max_windows)
    if not starts:
        raise PicolmError(f"only {len(tokens)} tokens: fewer than one window of block_size + 1", field="evaluation")
    positions = position_in_document(np.asarray(tokens), eos_id) if kinds is not None else None
    return (_window_batch(tokens, starts[b:b + batch_size], block_size, kinds, positions, eos_id)
            for b in range(0, len(starts), batch_size))


def _window_batch(tokens, starts: list[int], block_size: int, kinds, positions, eos_id: int) -> dict[str, torch.Tensor]:
    rows = torch.from_numpy(np.stack([np.asarray(tokens[s:s + block_size + 1], dtype=np.int64) for s in starts]))
    batch = {"input_ids": rows[:, :-1], "targets": rows[:, 1:]}
    if kinds is not None:
        index = np.stack([np.arange(s, s + block_size + 1) for s in starts])
        batch["kinds"] = torch.from_numpy(kinds[index].astype(np.int64)).masked_fill(rows == eos_id, -1)
        batch["document_positions"] = torch.from_numpy(positions[index])
    return batch
