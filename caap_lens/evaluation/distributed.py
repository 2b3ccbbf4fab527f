"""Sharding on torch.distributed: rank and world size, process-group set-up, deterministic slices.

Launch the same script or ``caap-lens evaluate`` under ``torchrun --nproc_per_node N`` or
``accelerate launch --num_processes N``: both set ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` and a rendezvous
address, and `Distributed` joins the process group (``nccl`` with one GPU per rank when CUDA is
available, else ``gloo`` on CPU). Without those variables it is a single process and nothing is set up.

The work is a list of chunks (``plan.chunk`` items each, in the plan's item order); rank ``r`` of ``W``
takes the contiguous slice `shard` gives it — the same for every run with the same ``W``, disjoint and
covering. Chunk contents do not depend on ``W``, so a unit is computed in the same batch whatever the
number of ranks: 1- and N-process runs give the same numbers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence


def shard(n: int, rank: int, world: int) -> range:
    """The contiguous slice ``[lo, hi)`` of ``n`` chunks that rank ``rank`` of ``world`` takes.

    The first ``n % world`` ranks take one more; a rank may get none (``n < world``).

    Example:
        >>> [list(shard(5, r, 2)) for r in range(2)]
        [[0, 1, 2], [3, 4]]
    """
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"bad rank {rank} of world {world}")
    base, extra = divmod(n, world)
    lo = rank * base + min(rank, extra)
    return range(lo, lo + base + (1 if rank < extra else 0))


@dataclass
class Distributed:
    """The process group of this run (or a single process)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False
    backend: str | None = None
    manual: bool = False  # a slice given by hand (independent jobs, e.g. a SLURM array): no process group

    @classmethod
    def by_hand(cls, rank: int, world: int) -> Distributed:
        """Rank ``rank`` of ``world`` independent jobs, without torch.distributed."""
        shard(0, rank, world)  # checks the pair
        return cls(rank, world, manual=True)

    @property
    def grouped(self) -> bool:
        return self.world > 1 and not self.manual

    @classmethod
    def setup(cls, backend: str | None = None, device: Any = None) -> Distributed:
        """Joins the process group if launched by torchrun/accelerate (env ``WORLD_SIZE`` > 1)."""
        import torch
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), False,
                       dist.get_backend())
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = torch.cuda.is_available() and (device is None or str(device).startswith("cuda"))
        backend = backend or ("nccl" if use_cuda else "gloo")
        if use_cuda:
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
        return cls(rank, world, local, True, backend)

    def barrier(self) -> None:
        if self.grouped:
            import torch.distributed as dist

            dist.barrier()

    def broadcast_error(self, message: str | None) -> str | None:
        """Rank 0's error message (or None) on every rank, so all ranks stop together."""
        if not self.grouped:
            return message
        import torch.distributed as dist

        box = [message]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        if not self.grouped:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        if self.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()
            self.owns_group = False

    def device(self, requested: Any = None) -> Any:
        """One GPU per rank (``cuda:local_rank``) when CUDA is used, else the requested device."""
        import torch

        if requested is None or str(requested) == "cuda":
            if torch.cuda.is_available() and (requested is not None or self.backend == "nccl"):
                return torch.device("cuda", self.local_rank)
            return None if requested is None else torch.device(requested)
        return torch.device(requested)


def chunked(indices: Sequence[int], size: int) -> list[list[int]]:
    """Consecutive chunks of ``size`` indices (the last may be shorter)."""
    return [list(indices[i : i + size]) for i in range(0, len(indices), size)]
