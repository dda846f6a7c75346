"""Batches of (input, target) windows from a token file, resumable from a small state dict.

Each epoch visits every non-overlapping window of `block_size + 1` tokens once, in an order drawn
from (seed, epoch) and shifted by a per-epoch offset so window boundaries move between epochs. The
state is just (epoch, cursor), so a resumed run reads exactly the batches an uninterrupted one would;
`ShuffledEpochs` is that mechanism, shared with the SFT/DPO example batches.
"""

from __future__ import annotations

import numpy as np
import torch

from picolm.data.pack import read_tokens
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
    def __init__(self, path, block_size: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        super().__init__(seed, rank, world_size)
        self.path = path
        self.tokens = read_tokens(path)
        self.block_size = block_size
        if self.items_per_epoch < 1:
            raise PicolmError(f"only {len(self.tokens)} tokens: training needs at least 2 x block_size "
                              f"= {2 * block_size}", path=path)
        self._offset = 0

    @property
    def items_per_epoch(self) -> int:
        """Windows per epoch."""
        return (len(self.tokens) - 1 - (self.block_size - 1)) // self.block_size

    def _new_epoch(self, generator: torch.Generator) -> torch.Tensor:
        self._offset = int(torch.randint(0, self.block_size, (1,), generator=generator))
        return super()._new_epoch(generator)

    def _item(self, index: int) -> np.ndarray:
        start = self._offset + index * self.block_size
        return np.asarray(self.tokens[start:start + self.block_size + 1], dtype=np.int64)

    def next_batch(self, batch_size: int) -> dict[str, torch.Tensor]:
        """The next `batch_size` windows of this rank as input_ids and targets."""
        batch = torch.from_numpy(np.stack(self.next_items(batch_size)))
        return {"input_ids": batch[:, :-1], "targets": batch[:, 1:]}


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
