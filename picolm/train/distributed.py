"""Data-parallel training under torchrun: PyTorch DDP, or FSDP2 (`fully_shard`) for models that do not fit one device.

`torchrun --nproc_per_node N -m picolm train ...` sets WORLD_SIZE, RANK and LOCAL_RANK; without them picolm runs in
one process and nothing here does anything. The backend is NCCL on CUDA and gloo on CPUs. Every rank builds the same
model from the same seed, reads its own slice of each batch, and keeps the same evaluation; rank 0 alone writes the
run directory. Checkpoints hold full (unsharded) weights and optimizer states in the one-process layout, so a run
resumes under any world size that divides its batch, or in one process.
"""

from __future__ import annotations

import gc
import os
from contextlib import contextmanager, nullcontext

import torch
import torch.distributed as dist
from torch import nn

from picolm.errors import PicolmError

PARALLEL_KINDS = ("ddp", "fsdp")


def launched() -> bool:
    """Started by torchrun (or another launcher that sets the same variables) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


class DataParallel(nn.parallel.DistributedDataParallel):
    """DDP that reads the wrapped model's attributes (`config`, ...) through itself, so objectives need not know."""

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


class Distributed:
    """The process group of a torchrun launch (or a stand-in for one process): rank, collectives, wrapping."""

    def __init__(self, kind: str = "ddp"):
        self.kind = kind
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.active = self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        return self.active and self.kind == "fsdp"

    def device(self, requested: torch.device) -> torch.device:
        """Each rank on its own GPU (LOCAL_RANK); CPU ranks share the CPU."""
        if self.active and requested.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return requested

    def start(self, device: torch.device) -> None:
        if not self.active or dist.is_initialized():
            return
        if device.type == "cuda":
            torch.cuda.set_device(device)
        try:
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        except (RuntimeError, ValueError) as exc:
            raise PicolmError(f"could not join the torchrun process group ({exc})", field="torchrun") from None

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The model as the training step calls it: DDP around it, or the model itself sharded in place by FSDP2."""
        if not self.active:
            return model
        if self.kind == "ddp":
            return DataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        from torch.distributed.fsdp import fully_shard

        for block in getattr(model, "blocks", []):
            fully_shard(block)
        fully_shard(model)
        return model

    def no_sync(self, model: nn.Module, last: bool):
        """Accumulating micro-batches: gradients are reduced across ranks only on the step's last backward."""
        if not self.active or last:
            if self.sharded:
                model.set_requires_gradient_sync(True)
            return nullcontext()
        if self.sharded:
            model.set_requires_gradient_sync(False)
            return nullcontext()
        return model.no_sync()

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum over ranks (a copy; the argument is left alone)."""
        if not self.active:
            return tensor
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor

    def agree(self, flags: list[bool], device: torch.device) -> list[bool]:
        """Each flag true on every rank when it is true on one: stopping (Ctrl-C, a time budget) must be agreed."""
        if not self.active:
            return flags
        values = torch.tensor([float(flag) for flag in flags], device=device)
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
        return [bool(v) for v in values.tolist()]

    def gather(self, obj) -> list:
        """Every rank's object, in rank order, on every rank."""
        if not self.active:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    @contextmanager
    def main_first(self):
        """Rank 0 runs the block (creating the run directory) before the other ranks go on."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def close(self, wait: bool = True) -> None:
        """Leave the group cleanly: gloo can abort at exit ("terminate called without an active exception") when
        the group is destroyed while the model and optimizer still hold its buffers."""
        if not (self.active and dist.is_initialized()):
            return
        if wait:
            dist.barrier()
        gc.collect()
        dist.destroy_process_group()


def full_model_state(model: nn.Module, distributed: Distributed) -> dict:
    """The model's full state dict (FSDP2 gathers it on rank 0 alone, the others get {}; every rank must call it)."""
    if not distributed.sharded:
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_model_state(model: nn.Module, state: dict, distributed: Distributed) -> None:
    if not distributed.sharded:
        model.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, distributed: Distributed) -> dict:
    """The optimizer's state dict in the one-process layout (parameters numbered in group order); under FSDP2 on
    rank 0 alone, as `full_model_state`."""
    if not distributed.sharded:
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    by_name = get_optimizer_state_dict(model, optimizer,
                                       options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not by_name:  # gathered on rank 0 only
        return {}
    numbers, groups = {}, []
    for group in by_name["param_groups"]:
        groups.append({**group, "params": [numbers.setdefault(name, len(numbers)) for name in group["params"]]})
    return {"state": {numbers[name]: value for name, value in by_name["state"].items()}, "param_groups": groups}


def load_full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict,
                              distributed: Distributed) -> None:
    """Load a one-process optimizer state dict; FSDP2 takes each rank's shard of it."""
    from picolm.train.optim import load_optimizer_state

    if not distributed.sharded:
        load_optimizer_state(optimizer, state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    names = {id(p): name for name, p in model.named_parameters()}
    ordered = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    settings = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    by_name = {"state": {ordered[number]: value for number, value in state["state"].items()},
               "param_groups": [{**group, "params": [ordered[n] for n in group["params"]]}
                                for group in state["param_groups"]]}
    set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))
    for group, current in zip(optimizer.param_groups, settings):
        group.update(current)
