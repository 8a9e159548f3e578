"""Data-parallel training under ``torchrun``: one process per CPU socket / GPU, gloo on CPU, nccl on CUDA.

Contrastive losses need every rank to see the global batch's negatives, so features are gathered with
gradients (losses.gather_with_grad). Each rank then computes the same global loss; the all-gather's
backward sums the gradient of every rank's copy into the local slice (W x the single-process gradient),
and DistributedDataParallel averages over the W ranks, which gives back exactly the single-process
gradient of the global batch (tests/test_distributed.py checks this with 2 CPU processes).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, indices: np.ndarray) -> np.ndarray:
        """This rank's contiguous slice of a global batch (equal sizes: the batch must divide evenly)."""
        n = len(indices) // self.size
        return indices[self.rank * n:(self.rank + 1) * n]


def init_distributed() -> World:
    """Join the process group torchrun set up (RANK/WORLD_SIZE in the environment); a no-op otherwise."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return World(dist.get_rank(), dist.get_world_size())


def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """All ranks' tensors concatenated (labels, ids): no gradient needed."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def wrap(module: torch.nn.Module, world: World) -> torch.nn.Module:
    """DistributedDataParallel around ``module`` when there is more than one rank."""
    if world.size <= 1:
        return module
    from torch.nn.parallel import DistributedDataParallel
    return DistributedDataParallel(module, find_unused_parameters=False)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    """Leave the group together: a rank that tears gloo down while its peer is still in a collective aborts the
    peer ("terminate called without an active exception"), so every rank first meets at a barrier."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
