"""Data parallelism under torchrun: this process's place in the run, the agreement of the
ranks (a mean, an any, a barrier), and the loss as a module DistributedDataParallel can
wrap. A single process is the same object with one rank, whose agreements are no-ops."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from lohp.losses import Batch
from lohp.policy import LohpPolicy


class LossModule(torch.nn.Module):
    """The loss as a module's forward, so DistributedDataParallel can wrap it (its gradient
    hooks sync every parameter the loss used, whichever policy methods it called)."""

    def __init__(self, policy: LohpPolicy, loss: Any):
        super().__init__()
        self.policy, self.loss = policy, loss

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        return self.loss(self.policy, batch)


@dataclass
class Distributed:
    """This process's place in a data-parallel run (torchrun's environment), or a single process."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str = "cpu") -> "Distributed":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()

        if not dist.is_initialized():
            backend = "nccl" if str(device).startswith("cuda") else "gloo"
            dist.init_process_group(backend)
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))

    def mean(self, value: float) -> float:
        """The mean of a number over ranks (the global batch's loss from each rank's share)."""
        if not self.active:
            return value

        t = torch.tensor([float(value)], dtype=torch.float64)
        dist.all_reduce(t)
        return t.item() / self.world

    def any(self, flag: bool) -> bool:
        if not self.active:
            return flag

        t = torch.tensor([1.0 if flag else 0.0])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def wrap(self, module: torch.nn.Module, device: str) -> torch.nn.Module:
        """``module`` as this run steps it: itself in a single process, else wrapped by
        DistributedDataParallel (whose gradient hooks average the gradients over ranks)."""
        if not self.active:
            return module
        ids = [torch.device(device).index] if str(device).startswith("cuda") else None
        return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)
