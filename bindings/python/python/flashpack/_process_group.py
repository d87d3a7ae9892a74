"""The default process group of a distributed load: joined (or formed from torchrun's
variables), and the small control messages every rank exchanges over gloo with a timeout, so a
failure on one rank becomes an error on every rank instead of a hang.

Below :mod:`flashpack.utils` (which gives :func:`maybe_init_distributed` the original package's
path, ``flashpack.utils.maybe_init_distributed``) and :mod:`flashpack.distributed` (the loads).
"""

from __future__ import annotations

import datetime
from typing import Any

import torch
import torch.distributed as dist

from . import _engine, settings


def timeout() -> datetime.timedelta:
    return datetime.timedelta(seconds=settings.dist_timeout_s())


def maybe_init_distributed(
    rank: int | None = None,
    local_rank: int | None = None,
    world_size: int | None = None,
    device: torch.device | None = None,
) -> tuple[int, int, int]:
    """Join the default process group, initialising it from torchrun's variables (``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) or the arguments when it
    does not exist yet. Returns ``(rank, local_rank, world_size)``.

    A ``world_size`` (or ``rank``) that disagrees with an existing group is reported on every
    rank by the load's status exchange; a group that cannot form (e.g. a world size larger than
    the number of processes) fails after ``FLASHPACK_DIST_TIMEOUT`` seconds (default 300).
    """
    if local_rank is None:
        local_rank = settings.torchrun_local_rank()
    asked = (rank, world_size)
    if not dist.is_initialized():
        rank = rank if rank is not None else settings.torchrun_rank()
        world_size = world_size if world_size is not None else settings.torchrun_world_size()
        if rank < 0 or world_size < 1:
            raise RuntimeError(
                "distributed loading needs a process group: run under torchrun, call "
                "torch.distributed.init_process_group, or pass rank= and world_size= (with MASTER_ADDR "
                "and MASTER_PORT set)"
            )
        backend = "nccl" if device is not None and device.type == "cuda" else "gloo"
        if backend == "nccl":
            _engine.set_cuda_device(local_rank)
        try:
            dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timeout())
        except Exception as e:  # a store timeout, a refused connection...
            raise RuntimeError(
                f"rank {rank}: could not form the process group of {world_size} ranks "
                f"(timeout {timeout().total_seconds():.0f} s): {e}"
            ) from e
    actual = (dist.get_rank(), dist.get_world_size())
    problem = None
    if asked[1] is not None and asked[1] != actual[1]:
        problem = f"asked for world_size={asked[1]} but the process group has {actual[1]} ranks"
    elif asked[0] is not None and asked[0] != actual[0]:
        problem = f"asked for rank={asked[0]} but is rank {actual[0]} of the process group"
    agree(problem, "checking the process group", control_group())
    return actual[0], local_rank, actual[1]


def control_group() -> Any:
    """A gloo group for small control messages (works beside NCCL, honours the timeout).

    Not cached: a process group object kept alive in a module global past
    ``destroy_process_group`` is torn down at interpreter exit after the C++ runtime it needs,
    which aborted about one process exit in five in the tests."""
    return dist.group.WORLD if dist.get_backend() == "gloo" else dist.new_group(backend="gloo", timeout=timeout())


def agree(ok: str | None, what: str, group: Any) -> None:
    """Every rank says whether its part went well; every rank raises if any did not."""
    statuses: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(statuses, ok, group=group)
    failed = [f"rank {r}: {s}" for r, s in enumerate(statuses) if s is not None]
    if failed:
        raise RuntimeError(f"distributed load failed while {what}: " + "; ".join(failed))
