"""Distributed loading: the file is read once per job and replicated with torch.distributed.

Two strategies, decided by the source rank and broadcast so every rank runs the same plan:

* ``broadcast``: the source rank reads the whole payload with the engine, then broadcasts it.
  Only the source rank needs the file.
* ``sharded``: every rank reads its own slice of the payload with the engine, and the slices are
  all-gathered. Each payload byte is read once in total and the disk reads run in parallel.
  ``contiguous`` takes one slice per rank (one round); ``windows`` goes in rounds of
  ``FLASHPACK_SHARD_BYTES`` per rank (default 256 MiB), which bounds each collective.

Blocks travel as raw bytes, so every dtype works. NCCL carries the data for CUDA loads, gloo
for CPU loads; control messages (configuration, per-rank status) always go over gloo with a
timeout, so a failure on one rank becomes an error on every rank instead of a hang.
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from . import _engine, settings
from ._engine import string_to_dtype
from ._process_group import agree as _agree
from ._process_group import control_group as _control_group
from ._process_group import maybe_init_distributed as maybe_init_distributed  # this module's public name too
from .constants import DEFAULT_SHARD_STRATEGY, SHARD_ALIGN_BYTES, SHARD_STRATEGIES
from .storage import FlashTensorStorage, footer_metadata, view_bytes
from .utils import timer

STRATEGIES = ("broadcast", "sharded")
# Shard boundaries fall on this grid: whole checksum chunks (so shards can be verified) and
# O_DIRECT-aligned reads.
SHARD_GRID = SHARD_ALIGN_BYTES
# Largest single broadcast message.
BROADCAST_PIECE = 256 << 20


@dataclass
class _Plan:
    strategy: str
    shard_bytes: int
    rounds: int
    verify: bool


def resolve_strategy(sharded: bool, shard_strategy: str | None) -> tuple[str, str]:
    """``("sharded" or "broadcast", shard strategy)`` for a load asked as ``sharded`` /
    ``shard_strategy``, the environment applied (ValueError for an unknown strategy)."""
    if settings.distributed_sharded():
        sharded = True
    name = (shard_strategy or settings.shard_strategy() or DEFAULT_SHARD_STRATEGY).strip().lower()
    if name not in SHARD_STRATEGIES:
        raise ValueError(f"unknown shard strategy {name!r}; expected one of {', '.join(SHARD_STRATEGIES)}")
    return ("sharded" if sharded else "broadcast"), name


def read_flashpack_file_distributed(
    path: str | os.PathLike[str],
    device: str | torch.device = "cuda",
    src: int = 0,
    chunk_bytes: int = 0,
    num_streams: int = 0,
    silent: bool = True,
    metadata: dict[str, Any] | None = None,
    sharded: bool = False,
    shard_strategy: str | None = None,
    verify: bool = False,
) -> tuple[FlashTensorStorage, dict[str, Any]]:
    """Load a file on every rank of the default process group, reading it once in total.

    Rank ``src`` decides the strategy (``sharded``/``shard_strategy``, or
    ``FLASHPACK_DISTRIBUTED_SHARDED=1`` / ``FLASHPACK_SHARD_STRATEGY`` in its environment) and
    every other rank follows, so per-rank settings cannot make the collectives disagree. The
    returned storage records what this rank read in ``storage.io`` (``bytes_read``).
    """
    del chunk_bytes, num_streams, metadata  # the engine sizes its reads; the footer comes from src
    storage = read_storage_distributed(path, device, src, silent, sharded, shard_strategy, verify)
    assert storage.footer is not None
    return storage, footer_metadata(storage.footer)


def read_storage_distributed(
    path: str | os.PathLike[str],
    device: str | torch.device = "cuda",
    src: int = 0,
    silent: bool = True,
    sharded: bool = False,
    shard_strategy: str | None = None,
    verify: bool = False,
) -> FlashTensorStorage:
    """:func:`read_flashpack_file_distributed` without the metadata dict: the storage carries the
    footer (rank ``src``'s, decoded and validated by the engine on every rank) and its records."""
    path = os.fsdecode(path)
    device = _engine.resolve_device(device, path)
    group = _control_group()
    config = _decide(src, sharded, shard_strategy, verify, group)
    handle = _open_everywhere(path, src, config["strategy"] == "sharded", silent, group)
    footer = _share_footer(handle, src, group)
    plan = _plan(config, footer.payload_len, dist.get_world_size(), footer)
    with timer("alloc", silent):
        padded = max(footer.payload_len, plan.rounds * dist.get_world_size() * plan.shard_bytes)
        buffer = torch.empty(padded, dtype=torch.uint8, device=device)
    if plan.strategy == "broadcast":
        bytes_read = _broadcast_payload(handle, buffer, footer.payload_len, src, plan, silent, group)
    else:
        bytes_read = _gather_shards(handle, buffer, footer.payload_len, plan, silent, group)
    _engine.synchronize(device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tensors = [buffer[off : off + n].view(string_to_dtype(dt)) for dt, off, n, _ in footer.blocks]
    io = {"bytes_read": bytes_read, "strategy": plan.strategy, "rounds": plan.rounds, "rank": dist.get_rank()}
    return FlashTensorStorage(blocks=tensors, backing=buffer, io=io, footer=footer, records=footer.records)


def _decide(src: int, sharded: bool, shard_strategy: str | None, verify: bool, group: Any) -> dict[str, Any]:
    """Rank ``src`` decides the plan (its arguments and environment); every rank learns it."""
    box: list[Any] = [None]
    if dist.get_rank() == src:
        try:
            strategy, shard_name = resolve_strategy(sharded, shard_strategy)
            window = settings.shard_bytes() if shard_name == "windows" else 0
            box[0] = {"strategy": strategy, "shard_name": shard_name, "window": window, "verify": bool(verify)}
        except Exception as e:  # noqa: BLE001 - reported on every rank below
            box[0] = {"error": f"{type(e).__name__}: {e}"}
    dist.broadcast_object_list(box, src=src, group=group)
    config: dict[str, Any] = box[0]
    if "error" in config:
        raise RuntimeError(f"distributed load: rank {src} could not plan it: {config['error']}")
    return config


def _open_everywhere(path: str, src: int, sharded: bool, silent: bool, group: Any) -> Any:
    """Open and validate the file where it is read (every rank when sharded, else rank ``src``);
    every rank raises if one could not, or if a rank's file differs from rank ``src``'s. The
    open file on this rank, or None."""
    rank = dist.get_rank()
    handle, status, digest = None, None, None
    need_file = sharded or rank == src
    if need_file:
        try:
            with timer("read_metadata", silent):
                handle = _engine.open_file(path)
            digest = hashlib.sha256(handle.footer.json).hexdigest()
        except Exception as e:  # noqa: BLE001 - reported on every rank below
            status = f"{type(e).__name__}: {e}"
    info: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(info, (status, digest), group=group)
    failed = [f"rank {r}: {s}" for r, (s, _) in enumerate(info) if s is not None]
    if failed:
        raise RuntimeError("distributed load failed while opening the file: " + "; ".join(failed))
    if need_file and info[src][1] != digest:
        status = f"{path} differs from rank {src}'s file (footer checksum {digest} vs {info[src][1]})"
    _agree(status, "comparing the file across ranks", group)
    return handle


def _share_footer(handle: Any, src: int, group: Any) -> _engine.Footer:
    """Rank ``src``'s footer on every rank: its own where a rank opened the file (the same, as
    checked), else decoded and validated from what ``src`` broadcast."""
    box: list[Any] = [
        (handle.footer.json, handle.payload_len) if dist.get_rank() == src and handle is not None else None
    ]
    dist.broadcast_object_list(box, src=src, group=group)
    footer_json, payload_len = box[0]
    return handle.footer if handle is not None else _engine.decode_footer(footer_json, payload_len)


def _read_range(handle: Any, offset: int, length: int, into: torch.Tensor, verify: bool) -> int:
    """Read payload bytes [offset, offset+length) into ``into`` (a uint8 tensor of that length);
    returns the bytes read from the disk."""
    return _engine.read_range(handle, offset, into[:length] if length > 0 else into[:0], verify)


def _broadcast_payload(
    handle: Any, buffer: torch.Tensor, payload_len: int, src: int, plan: _Plan, silent: bool, group: Any
) -> int:
    """The ``broadcast`` strategy: rank ``src`` reads the whole payload into ``buffer``, then
    broadcasts it in pieces. Returns the bytes this rank read."""
    status, bytes_read = None, 0
    if dist.get_rank() == src:
        try:
            with timer("read_payload", silent):
                bytes_read = _read_range(handle, 0, payload_len, buffer[:payload_len], plan.verify)
        except Exception as e:  # noqa: BLE001 - reported on every rank below
            status = f"{type(e).__name__}: {e}"
    _agree(status, f"rank {src} read the payload", group)
    with timer("broadcast", silent):
        for start in range(0, payload_len, BROADCAST_PIECE):
            dist.broadcast(buffer[start : min(payload_len, start + BROADCAST_PIECE)], src=src)
    return bytes_read


def _gather_shards(handle: Any, buffer: torch.Tensor, payload_len: int, plan: _Plan, silent: bool, group: Any) -> int:
    """The ``sharded`` strategy: in each round every rank reads its shard, then the shards are
    all-gathered into ``buffer``. Returns the bytes this rank read."""
    rank, world, s = dist.get_rank(), dist.get_world_size(), plan.shard_bytes
    # gloo gathers from a tensor of its own (NCCL reads each rank's shard in place).
    mine = torch.empty(s, dtype=torch.uint8, device=buffer.device) if dist.get_backend() == "gloo" else None
    bytes_read = 0
    for r in range(plan.rounds):
        base = r * world * s
        lo = min(payload_len, base + rank * s)
        hi = min(payload_len, base + (rank + 1) * s)
        status = None
        target = mine if mine is not None else buffer[base + rank * s : base + (rank + 1) * s]
        try:
            with timer(f"read_shard_{r}", silent):
                bytes_read += _read_range(handle, lo, hi - lo, target[: hi - lo], plan.verify)
        except Exception as e:  # noqa: BLE001 - reported on every rank below
            status = f"{type(e).__name__}: {e}"
        _agree(status, f"reading shards (round {r})", group)
        with timer(f"all_gather_{r}", silent):
            dist.all_gather_into_tensor(buffer[base : base + world * s], target)
    return bytes_read


def _plan(config: dict[str, Any], payload_len: int, world: int, footer: _engine.Footer) -> _Plan:
    strategy = config["strategy"]
    if strategy == "broadcast":
        return _Plan("broadcast", 0, 0, config["verify"])
    # Shards are whole checksum chunks (so each rank can verify its own) and O_DIRECT-aligned.
    grid = math.lcm(SHARD_GRID, footer.checksum_chunk_bytes or SHARD_GRID)
    per_rank = -(-payload_len // world) if payload_len else grid
    if config["window"]:
        per_rank = min(per_rank, config["window"])
    shard = max(grid, -(-per_rank // grid) * grid)
    rounds = max(1, -(-payload_len // (world * shard)))
    return _Plan("sharded", shard, rounds, config["verify"])


def load_weights_distributed(
    read: Any,
    device: torch.device,
    src: int = 0,
    silent: bool = True,
) -> dict[str, torch.Tensor]:
    """Tensors (``load_file`` / ``load_checkpoint`` under ``use_distributed_loading``) on every
    rank of the default process group, read once: rank ``src`` runs ``read()`` (which returns
    ``(memory, [(name, dtype name, shape, offset, nbytes), ...])`` from one engine job into host
    memory), then the bytes are broadcast (NCCL for CUDA, gloo for CPU) in pieces of at most
    256 MiB. Only rank ``src`` needs the files. Any failure on ``src`` (an exception of any
    class) is a RuntimeError naming it on every rank (chained from the original on ``src``;
    KeyboardInterrupt stays itself there). A tensor whose offset is not a multiple of its element
    size is copied to aligned memory (only those); the others view the broadcast buffer.

    For CUDA, rank ``src`` holds the whole job in host memory once (the broadcast needs it on
    its device), unlike a single-process CUDA load, which streams through the pinned pool.
    """
    rank = dist.get_rank()
    group = _control_group()
    memory, layout, status, error = None, None, None, None
    if rank == src:
        try:
            with timer("read_payload", silent):
                memory, layout = read()
        except BaseException as e:  # noqa: BLE001 - any failure (a TypeError, Ctrl-C...) must reach every rank now
            status, error = f"{type(e).__name__}: {e}", e
    try:
        _agree(status, f"rank {src} read the weights", group)
    except RuntimeError as agreed:
        if error is not None and not isinstance(error, Exception):
            raise error from None  # KeyboardInterrupt / SystemExit stay themselves where they happened
        raise agreed from error
    finally:
        # No reference cycle exception -> traceback -> this frame, which holds the process
        # group: torn down late at interpreter exit, it aborts the process.
        error = None
    box: list[Any] = [layout]
    dist.broadcast_object_list(box, src=src, group=group)
    layout = box[0]
    total = max((off + n for _, _, _, off, n in layout), default=0)
    if rank == src and device.type == "cpu":
        buffer = (
            torch.frombuffer(memory, dtype=torch.uint8, count=total) if total else torch.empty(0, dtype=torch.uint8)
        )
    else:
        buffer = torch.empty(total, dtype=torch.uint8, device=device)
        if rank == src and total:
            buffer.copy_(torch.frombuffer(memory, dtype=torch.uint8, count=total))
    with timer("broadcast", silent):
        for start in range(0, total, BROADCAST_PIECE):
            dist.broadcast(buffer[start : min(total, start + BROADCAST_PIECE)], src=src)
    _engine.synchronize(device)
    out = {}
    for name, dtype_name, shape, off, n in layout:
        dtype, shape = string_to_dtype(dtype_name), tuple(shape)
        if n == 0:
            out[name] = torch.empty(shape, dtype=dtype, device=device)
        elif device.type == "cpu" and rank == src:
            out[name] = view_bytes(memory, off, n, dtype, shape)
        else:
            out[name] = _typed(buffer[off : off + n], dtype).view(shape)
    return out


def _typed(raw: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The bytes ``raw`` (a uint8 slice) as ``dtype``: a view, or an aligned copy when the slice
    starts at an offset that is not a multiple of the element size (a legal safetensors layout
    that ``view`` refuses)."""
    if raw.storage_offset() % dtype.itemsize:
        raw = raw.clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return raw.view(dtype)
