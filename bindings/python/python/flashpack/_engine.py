"""The bridge to the engine: the one module that calls ``flashpack._core``.

Everything else in the package calls these functions (tests/test_imports.py holds that). Here
and only here:

* the device of a load is resolved (:func:`resolve_device`: ``"cpu"``, ``"cuda[:N]"``, an ordinal,
  ``"mps"``), and CUDA is handled: the device index, torch's current stream (finished before the
  engine writes device memory on its own streams), the pinned staging pool;
* the reader settings of :mod:`flashpack.settings` are handed to the engine's reads;
* what the engine reports becomes the documented exceptions: a tensor torch cannot hold is an
  :class:`UnsupportedTensorError`, a missing name a :class:`TensorNotFoundError`, an unknown
  ``backend`` a ``safetensors.SafetensorError``. (The engine raises ``OSError`` subclasses,
  ``ValueError`` and ``RuntimeError`` itself; they pass through unchanged.)

Calls go through the ``_core`` module's attributes at call time, so a test may wrap one of them.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from safetensors import SafetensorError

from . import _core, settings
from ._core import File as File
from ._core import Footer as Footer
from ._core import Memory as Memory
from ._core import Payload as Payload
from ._core import Record as Record
from ._core import WeightFile as WeightFile

__version__: str = _core.__version__

PathArg = str | bytes | os.PathLike[str] | os.PathLike[bytes]
DeviceArg = str | int | torch.device
Phases = list[tuple[str, float]]

# ---------------------------------------------------------------------------------------------
# Dtypes: the engine's names and this torch build's dtypes

# Every stored dtype the engine knows, mapped to this torch build's dtype (older torch builds
# lack a few fp8 / unsigned types; those names simply cannot be loaded there).
NAME_TO_DTYPE: dict[str, torch.dtype] = {
    name: dt for name in _core.dtype_names() if isinstance(dt := getattr(torch, name, None), torch.dtype)
}
DTYPE_TO_NAME: dict[torch.dtype, str] = {dt: name for name, dt in NAME_TO_DTYPE.items()}


def string_to_dtype(string: str) -> torch.dtype:
    """The torch dtype for a footer dtype name."""
    try:
        return NAME_TO_DTYPE[string]
    except KeyError:
        raise ValueError(f"Unsupported dtype string in metadata: {string!r}") from None


def dtype_to_string(dtype: torch.dtype) -> str:
    """The footer name of a torch dtype."""
    try:
        return DTYPE_TO_NAME[dtype]
    except KeyError:
        raise ValueError(f"Unsupported dtype for packing: {dtype}") from None


# ---------------------------------------------------------------------------------------------
# Errors


class TensorNotFoundError(KeyError, ValueError, SafetensorError):
    """A tensor asked for by name that the file or checkpoint does not hold.

    A ``KeyError`` (a lookup by name that failed, as in a dict), for code written against
    earlier releases a ``ValueError``, and for code written against safetensors its
    ``SafetensorError`` (what ``safetensors.safe_open(...).get_tensor`` raises here). The message
    names the file and the tensor (``str()`` gives it without ``KeyError``'s quotes).
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class UnsupportedTensorError(NotImplementedError, SafetensorError):
    """A tensor the file holds that torch cannot hold: a dtype torch lacks (safetensors'
    ``F6_E2M3``, ``F6_E3M2``), or ``F4`` with an odd last dimension (torch's
    ``float4_e2m1fn_x2`` holds two values per byte). The file opens and its other tensors load;
    the message (the engine's) names the file, the tensor, its dtype and why. A
    ``NotImplementedError`` and safetensors' ``SafetensorError`` (what safetensors raises)."""


# Public as ``flashpack.TensorNotFoundError`` / ``flashpack.UnsupportedTensorError``; named (in
# reprs, tracebacks and pickles) by the module that defined them before this bridge existed.
TensorNotFoundError.__module__ = UnsupportedTensorError.__module__ = "flashpack.loading"

#: The ``backend=`` values safetensors 0.8 accepts, and what each means here: ``"mmap"`` (the
#: default) loads on CPU lazily, as views of a copy-on-write mapping of the file (unless
#: ``eager=True``); ``"pread"`` reads the bytes now, into owned memory, with the engine's reader
#: pool (``eager=True``). CUDA loads stream through the pinned staging pool and URLs are read
#: with ranged GETs whichever it is.
BACKENDS = ("mmap", "pread")


def check_backend(backend: str) -> bool:
    """True when ``backend`` asks for an eager read (``"pread"``); an unknown one is refused as
    safetensors refuses it (its ``SafetensorError``, the same words)."""
    if backend not in BACKENDS:
        expected = ", ".join(f'"{b}"' for b in BACKENDS)
        raise SafetensorError(f'backend "{backend}" is invalid (expected one of: {expected})')
    return backend == "pread"


@dataclass(frozen=True)
class UnloadableEntry:
    """A tensor of an open file that cannot be loaded (see :class:`UnsupportedTensorError`):
    its safetensors dtype and header shape, its bytes, and the engine's message."""

    name: str
    st_dtype: str
    st_shape: tuple[int, ...]
    start: int
    end: int
    message: str

    def error(self) -> UnsupportedTensorError:
        return UnsupportedTensorError(self.message)


def unloadable_of(handle: WeightFile) -> list[UnloadableEntry]:
    """The tensors of an open file that cannot be loaded, in file order."""
    return [UnloadableEntry(n, d, tuple(shape), s, e, m) for n, d, shape, s, e, m in handle.unloadable]


def check_loadable(handles: Sequence[WeightFile], names: Iterable[str] | None = None) -> None:
    """Raises the first unloadable tensor's error: of all of ``handles``' tensors (``names``
    None: a whole-file load, which fails as ``safetensors.torch.load_file`` does), or of
    ``names``."""
    wanted = None if names is None else set(names)
    for h in handles:
        for u in unloadable_of(h):
            if wanted is None or u.name in wanted:
                raise u.error()


# ---------------------------------------------------------------------------------------------
# Devices


def resolve_device(device: DeviceArg | None, where: object = None, *, meta_to_cpu: bool = False) -> torch.device:
    """The device a load writes to: ``None`` (the CPU), ``"cpu"``, ``"cuda[:N]"``, ``N`` (a CUDA
    ordinal, as safetensors takes) or ``"mps"``; a CUDA device gets its index (torch's current
    device when none is given). ``meta_to_cpu``: a model built on the meta device loads onto
    the CPU. Another device is a ValueError, one torch cannot reach a RuntimeError; both name
    ``where`` (the file) when given."""
    if device is None:
        return torch.device("cpu")
    dev = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
    if meta_to_cpu and dev.type == "meta":
        return torch.device("cpu")
    prefix = f"{where}: " if where is not None else ""
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"{prefix}Unsupported device: {dev} (cpu, cuda[:N] and mps are)")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"{prefix}cannot load to {dev}: torch sees no CUDA device")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError(f"{prefix}cannot load to {dev}: torch sees no MPS device")
    return dev


def _cuda_index(device: torch.device) -> int:
    """The ordinal of a CUDA device (torch's current one when it has none)."""
    return device.index if device.index is not None else torch.cuda.current_device()


def _before_engine_writes(device: torch.device) -> int:
    """The caching allocator may hand out memory that kernels queued on torch's stream still
    use; the engine copies on its own streams, so that work must be finished first. Returns the
    device's ordinal."""
    index = _cuda_index(device)
    torch.cuda.current_stream(index).synchronize()
    return index


def set_cuda_device(index: int) -> None:
    """Make CUDA device ``index`` this process's current one (a rank's own GPU)."""
    torch.cuda.set_device(index)


def synchronize(device: torch.device) -> None:
    """Wait for all work queued on ``device`` (nothing to wait for on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release_pinned_pool() -> int:
    """Free the pinned host staging buffers that CUDA loads keep for reuse; returns bytes freed."""
    return int(_core.release_pinned_pool())


def pinned_pool_stats() -> dict[str, int]:
    """Pinned staging memory in bytes: allocated (in use plus idle), idle, leaked (given up after
    a failed CUDA operation: never reused, still counted against the limit), peak and the limit."""
    return dict(_core.pinned_pool_stats())


def set_pinned_pool_limit(limit_bytes: int) -> None:
    """Bound the pinned staging memory of CUDA loads (default 1 GiB, or
    ``FLASHPACK_PINNED_POOL_BYTES`` as set when the pool was first used; the variable is read
    once). Idle buffers over the new bound are freed now, busy ones when their load ends."""
    _core.set_pinned_pool_limit(int(limit_bytes))


# ---------------------------------------------------------------------------------------------
# Opening files and URLs


def open_file(path: PathArg) -> File:
    """A FlashPack file with its validated footer, for range reads and device loads."""
    return _core.open(os.fsdecode(path))


def open_weights(path: PathArg) -> WeightFile:
    """The engine's handle of a FlashPack or safetensors file or URL (validated)."""
    return _core.open_weights(os.fsdecode(path))


def open_checkpoint(path: PathArg, variant: str | None = None) -> tuple[pathlib.Path | str, list[WeightFile]]:
    """Where a checkpoint is (its index or weight file) and its files, each validated."""
    return _core.open_checkpoint(os.fsdecode(path), variant)


def read_footer(path: PathArg) -> Footer:
    """The validated footer of a local FlashPack file."""
    return _core.read_footer(os.fsdecode(path))


def decode_footer(json: bytes, payload_len: int) -> Footer:
    """A footer from its JSON, validated against a payload of ``payload_len`` bytes."""
    return _core.Footer.decode(json, payload_len)


def is_remote(location: str) -> bool:
    """True when the engine reads ``location`` as a URL."""
    return _core.is_remote(location)


def read_url(url: str, limit: int) -> bytes:
    """The whole object at ``url`` (at most ``limit`` bytes)."""
    return bytes(_core.read_url(url, limit))


def url_size(url: str) -> int:
    """The object's size (FileNotFoundError when there is none)."""
    return _core.url_size(url)


def verify(path: PathArg, progress: bool = False) -> dict[str, Any]:
    """Every checksum of the FlashPack file (or URL) ``path``, checked without loading it."""
    path = os.fsdecode(path)
    if _core.is_remote(path):
        return dict(_core.verify_url(path, progress=progress))
    return dict(_core.verify(path, progress=progress))


# ---------------------------------------------------------------------------------------------
# Reads


def _job_options() -> dict[str, Any]:
    """The reader settings of an eager job into new host memory: ``reader_options()`` and
    ``FLASHPACK_HUGE_PAGES`` (huge pages for that memory)."""
    return {**settings.reader_options(), "huge_pages": settings.huge_pages()}


def load_payload(path: PathArg, eager: bool, progress: bool, verify: bool) -> Payload:
    """A FlashPack file's payload: mapped copy-on-write (lazy), or read into owned memory."""
    return _core.load(os.fsdecode(path), eager=eager, progress=progress, verify=verify, **_job_options())


def read_host(
    handles: Sequence[WeightFile], pieces: Sequence[tuple[int, int, int]], progress: bool, verify: bool = False
) -> tuple[Memory, list[int]]:
    """Bytes ``start..end`` of file ``k`` for each ``(k, start, end)``, read as one job into new
    host memory; returns it and each piece's offset in it."""
    memory, offsets, _phases, _io = _core.read_job(
        list(handles), list(pieces), progress=progress, verify=verify, **_job_options()
    )
    return memory, offsets


def read_to_cuda(
    handles: Sequence[WeightFile],
    pieces: Sequence[tuple[int, int, int, torch.Tensor]],
    device: torch.device,
    progress: bool,
    verify: bool = False,
) -> None:
    """Bytes ``start..end`` of file ``k`` into each CUDA tensor of ``(k, start, end, tensor)``
    (contiguous, exactly that long, on ``device``), as one job through the pinned pool."""
    raw = [(k, start, end, t.data_ptr()) for k, start, end, t in pieces if end > start]
    if not raw:
        return
    index = _before_engine_writes(device)
    _core.read_job_to_cuda(list(handles), raw, index, progress=progress, verify=verify, **settings.reader_options())


def file_to_cuda(
    handle: File, regions: Sequence[tuple[int, torch.Tensor]], device: torch.device, progress: bool, verify: bool
) -> tuple[Phases, dict[str, int]]:
    """Payload bytes from each offset of ``(offset, tensor)`` into that CUDA uint8 tensor (its
    whole length), through the pinned pool."""
    raw = [(offset, t.numel(), t.data_ptr()) for offset, t in regions if t.numel()]
    index = _before_engine_writes(device)
    return handle.to_cuda(index, raw, progress=progress, verify=verify, **settings.reader_options())


def read_range(handle: File, offset: int, into: torch.Tensor, verify: bool) -> int:
    """Payload bytes ``offset..offset + len(into)`` into ``into`` (a uint8 tensor on the CPU or a
    CUDA device); returns the bytes read from the disk."""
    if into.numel() == 0:
        return 0
    if into.device.type == "cuda":
        _, io = file_to_cuda(handle, [(offset, into)], into.device, progress=False, verify=verify)
    else:
        buffer: Any = into.numpy()  # a writable buffer (numpy's stubs do not say so)
        io = handle.read_into(offset, buffer, verify=verify, **settings.reader_options())
    return int(io["direct_bytes"]) + int(io["buffered_bytes"])


# ---------------------------------------------------------------------------------------------
# Writes and the command line


def prepare_pack_destination(path: PathArg) -> None:
    """Refuse a destination a pack could not replace, before any tensor is prepared."""
    _core.prepare_pack_destination(os.fsdecode(path))


def pack(
    path: PathArg,
    entries: Sequence[tuple[str, str, Sequence[int], Any, int | None]],
    align_bytes: int,
    largest_first: bool,
    threads: int,
    progress: bool,
    checksums: bool,
) -> Phases:
    """Write a FlashPack file of ``entries`` atomically; the engine's phase timings."""
    return _core.pack(
        os.fsdecode(path),
        entries,
        align_bytes=align_bytes,
        largest_first=largest_first,
        threads=threads,
        progress=progress,
        checksums=checksums,
    )


def run_command(argv: Sequence[str | os.PathLike[str]]) -> dict[str, Any]:
    """The ``flashpack`` command line run by the engine's parser: ``{"kind": "exit" | "done" |
    "python", ...}`` (``"python"``: a request for :mod:`flashpack.commands`)."""
    return _core.cli(list(argv))
