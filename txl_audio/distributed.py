"""Processes launched by ``torchrun``: who this process is, sums over all of them, and teardown.

With one process (no WORLD_SIZE > 1 in the environment) every operation is a no-op, so the training
loop reads the same either way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass
class Processes:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    owns_group: bool = False  # we called init_process_group, so we tear it down

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes files."""
        return self.rank == 0

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over all processes, in place."""
        if self.world > 1:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def broadcast_flag(self, flag: bool, device: torch.device) -> bool:
        """Rank 0's ``flag`` on every rank (e.g. rank 0's clock decides when all stop)."""
        t = torch.tensor([1.0 if flag else 0.0], device=device)
        if self.world > 1:
            dist.broadcast(t, src=0)
        return bool(t.item())

    def gather_to_main(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` on rank 0 (a list in rank order), None on the others."""
        if self.world == 1:
            return [obj]
        out: list[Any] | None = [None] * self.world if self.main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        """Wait for every rank. Before tearing the group down after a good run: a rank that tore it
        down while another still had gloo collectives in flight aborted that process ("terminate
        called without an active exception")."""
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        """Tear the process group down, if we made it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def init_processes(use_cuda: bool) -> Processes:
    """This process's place among those torchrun started (and the process group: NCCL on CUDA, gloo
    on CPU); a single process when WORLD_SIZE is unset or 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Processes()
    p = Processes(
        rank=int(os.environ["RANK"]),
        world=world,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        local_world=int(os.environ.get("LOCAL_WORLD_SIZE", str(world))),
    )
    if use_cuda:
        torch.cuda.set_device(p.local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
        p.owns_group = True
    return p
