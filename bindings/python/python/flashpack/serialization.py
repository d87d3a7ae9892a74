"""Packing a state dict (or module) into a FlashPack file.

Torch work only: each tensor is made CPU, contiguous and (for floating-point tensors, when a
target dtype is given) cast; then the engine plans the layout and writes the file with several
threads, atomically, with the GIL released.
"""

from __future__ import annotations

import os
import time

import torch

from . import _engine
from ._engine import dtype_to_string
from .constants import DEFAULT_ALIGN_BYTES, DEFAULT_NUM_WRITE_WORKERS
from .utils import print_phases

_Entry = tuple[str, str, list[int], "memoryview | None", "int | None"]


def _storage_key(t: torch.Tensor) -> tuple[object, ...] | None:
    """Identity of a tensor's bytes: equal keys mean the same elements in the same storage."""
    if t.numel() == 0 or t.is_meta:
        return None
    return (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)


# Packed sub-byte floats (two values per byte): torch reports them as floating point but cannot
# cast them, and the engine's table does not count them as castable; they keep their dtype.
_PACKED_FLOATS = {d for d in (getattr(torch, "float4_e2m1fn_x2", None),) if d is not None}


def _castable(t: torch.Tensor) -> bool:
    """True for the tensors a ``target_dtype`` cast applies to."""
    return t.is_floating_point() and t.dtype not in _PACKED_FLOATS


def _stored_bytes(name: str, t: torch.Tensor, target_dtype: torch.dtype | None) -> torch.Tensor:
    """The tensor as it is stored: CPU, contiguous, cast if it is floating point, viewed as bytes."""
    if t.is_meta:
        raise ValueError(f"tensor '{name}' is on the meta device and has no data to pack")
    t = t.detach()
    if target_dtype is not None and _castable(t) and t.dtype != target_dtype:
        t = t.to(dtype=target_dtype)
    t = t.to("cpu").contiguous()
    return t.reshape(-1).view(torch.uint8)


def _check_name(name: object, destination: str) -> str:
    """A state dict key as a tensor name: a str that UTF-8 can encode (the footer is UTF-8 JSON)."""
    if not isinstance(name, str):
        raise TypeError(f"{destination}: state dict key {name!r} is a {type(name).__name__}, not a str")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(
            f"{destination}: tensor name {name!r} is not valid Unicode text ({e.reason} at position {e.start})"
        ) from None
    return name


def pack_to_file(
    state_dict_or_model: dict[str, torch.Tensor] | torch.nn.Module,
    destination_path: str | bytes | os.PathLike[str] | os.PathLike[bytes],
    target_dtype: torch.dtype | None = None,
    name_order: list[str] | None = None,
    align_bytes: int = DEFAULT_ALIGN_BYTES,
    silent: bool = True,
    num_workers: int = DEFAULT_NUM_WRITE_WORKERS,
    checksums: bool = True,
) -> None:
    """Write a state dict (or a module's) to a FlashPack file.

    ``target_dtype`` casts floating-point tensors only; integer, bool and complex tensors keep
    their dtype (the file then has one block per dtype). Tensors sharing storage (tied weights)
    are stored once. ``name_order`` packs only the listed names, in that order. ``checksums``
    stores a digest per 4 MiB of payload in the footer (ignored by readers that do not know
    it), checked by ``verify`` and by loads with ``verify=True``.

    The destination is checked before any tensor is prepared, and replaced atomically once the
    new file is complete; Ctrl-C (or any signal handler that raises) stops the pack and leaves
    the destination as it was. OS errors name the destination.
    """
    start = time.perf_counter()
    destination = os.fsdecode(destination_path)
    if isinstance(state_dict_or_model, torch.nn.Module):
        state_dict = state_dict_or_model.state_dict()
    else:
        state_dict = state_dict_or_model
    if align_bytes < 0:
        raise ValueError("align_bytes must be >= 0")
    if target_dtype is not None and not (isinstance(target_dtype, torch.dtype) and target_dtype.is_floating_point):
        raise ValueError(f"target_dtype must be a floating-point torch.dtype, got {target_dtype!r}")
    if target_dtype is not None:
        dtype_to_string(target_dtype)

    if name_order is None:
        names = list(state_dict)
    else:
        present = set(state_dict)
        names = [n for n in name_order if n in present]
    if not names:
        raise ValueError(f"{destination}: no tensors to pack")
    names = [_check_name(name, destination) for name in names]
    _engine.prepare_pack_destination(destination)

    entries: list[_Entry] = []
    first_by_key: dict[tuple[object, ...], int] = {}
    keep_alive: list[torch.Tensor] = []
    for name in names:
        tensor = state_dict[name]
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"'{name}' is a {type(tensor).__name__}, not a tensor")
        key = _storage_key(tensor)
        tied_to = first_by_key.get(key) if key is not None else None
        stored_dtype = target_dtype if target_dtype is not None and _castable(tensor) else tensor.dtype
        shape = list(tensor.shape)
        if tied_to is not None:
            entries.append((name, dtype_to_string(stored_dtype), shape, None, tied_to))
            continue
        if key is not None:
            first_by_key[key] = len(entries)
        data = _stored_bytes(name, tensor, target_dtype)
        keep_alive.append(data)
        entries.append((name, dtype_to_string(stored_dtype), shape, data.numpy().data, None))
    prepare = time.perf_counter() - start

    threads = max(1, min(num_workers, os.cpu_count() or 1))
    phases = _engine.pack(
        destination,
        entries,
        align_bytes=align_bytes,
        largest_first=name_order is None,
        threads=threads,
        progress=not silent,
        checksums=checksums,
    )
    print_phases([("prepare_tensors", prepare), *phases], silent)
    del keep_alive
