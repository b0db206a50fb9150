"""Multi-process training (DDP) under `torchrun`: one process per GPU, or per CPU worker with gloo.

`torchrun --nproc_per_node=N stages/finetune.py` (one node) or `torchrun --nnodes=M --rdzv-backend=c10d ...`
(several) sets WORLD_SIZE, RANK and LOCAL_RANK; a plain `python stages/finetune.py` sets none of them and
every helper here is a no-op (world of one). Rank 0 alone logs, checkpoints and saves; every rank trains
on its own shard of each epoch. What rank 0 reads from its disk at the start (the checkpoint to resume)
reaches the other ranks by `broadcast`, so other nodes need not see rank 0's files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from aigi.errors import AigiError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


SINGLE = World()  # a plain `python stages/finetune.py`


def world() -> World:
    """This process's place, from torchrun's environment (a world of one without torchrun)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return SINGLE
    return World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))


def init(device: torch.device) -> tuple[World, torch.device]:
    """Join the process group (nccl on CUDA, gloo on CPU); each rank takes the GPU of its local rank."""
    w = world()
    if not w.distributed:
        return w, device
    if device.type == "cuda":
        if w.local_rank >= torch.cuda.device_count():
            raise AigiError(f"torchrun started {w.size} processes per node but only {torch.cuda.device_count()} "
                            f"GPUs are visible; use --nproc_per_node={torch.cuda.device_count()}")
        device = torch.device("cuda", w.local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise AigiError(f"multi-process training supports CUDA and CPU, not {device.type}; set model.device")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return w, device


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum of `values` over all ranks (itself without a process group)."""
    if dist.is_initialized():
        values = values.clone()
        dist.all_reduce(values)
    return values


def broadcast(value: Any) -> Any:
    """Rank 0's `value` on every rank (any picklable object; itself without a process group)."""
    if not dist.is_initialized():
        return value
    box = [value if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def check_same(value: str, what: str) -> None:
    """Refuse to train when the ranks disagree on `value` (e.g. the fingerprint of params, data and code):
    a node with other data or code would otherwise train silently on something else."""
    if not dist.is_initialized():
        return
    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    if len(set(values)) > 1:
        odd = [rank for rank, v in enumerate(values) if v != values[0]]
        raise AigiError(f"ranks {odd} have other {what} than rank 0; give every node the same checkout, "
                        f"params.yaml and data (dvc pull)")
