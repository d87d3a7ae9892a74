"""Loading weight files the way ``safetensors.torch.load_file`` does, through the engine.

``load_file`` takes a ``.safetensors`` or a ``.flashpack`` file (told apart by content) and
returns a dict name -> tensor, the same as ``safetensors.torch.load_file`` gives for the same
tensors: every dtype both formats have, 0-dim and empty tensors kept, names as in the file.
``load_checkpoint`` does the same for a checkpoint of many files, loaded as one job.

The engine opens and validates every file and moves the bytes (copy-on-write mapping, or its
reader pool, or the pinned staging pool for CUDA); here they only become tensors.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from . import _engine
from ._engine import DeviceArg as DeviceArg
from ._engine import TensorNotFoundError as TensorNotFoundError  # public here and in flashpack
from ._engine import UnsupportedTensorError as UnsupportedTensorError
from ._engine import check_backend, check_loadable, dtype_to_string, resolve_device, string_to_dtype
from ._engine import open_weights as open_weights  # with entries_of and load_entries: one file's tensors
from ._process_group import maybe_init_distributed
from .distributed import load_weights_distributed
from .storage import view_bytes

PathArg = str | os.PathLike[str]

__all__ = ["TensorNotFoundError", "UnsupportedTensorError", "load_checkpoint", "load_file"]


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of an open file: ``start..end`` are its bytes in the file."""

    file: int
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    end: int
    st_dtype: str | None = None
    st_shape: tuple[int, ...] | None = None

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def entries_of(handle: _engine.WeightFile, file: int = 0) -> list[TensorEntry]:
    """The tensors of an open file in file order."""
    out = []
    for name, dtype, st_dtype, shape, start, end, st_shape in handle.tensors:
        try:
            torch_dtype = string_to_dtype(dtype)
        except ValueError:
            raise ValueError(f"{handle.path}: tensor '{name}': dtype {dtype} has no torch equivalent") from None
        st = tuple(st_shape) if st_shape is not None else None
        out.append(TensorEntry(file, name, torch_dtype, tuple(shape), start, end, st_dtype, st))
    return out


def view_of(memory: Any, offset: int, entry: TensorEntry) -> torch.Tensor:
    """A tensor viewing ``entry.nbytes`` bytes of ``memory`` from ``offset`` (no copy)."""
    return view_bytes(memory, offset, entry.nbytes, entry.dtype, entry.shape)


def _progress(progress: bool | None) -> bool:
    return sys.stderr.isatty() if progress is None else bool(progress)


def load_entries(
    handles: Sequence[_engine.WeightFile],
    entries: Sequence[TensorEntry],
    device: torch.device,
    eager: bool,
    progress: bool,
) -> list[torch.Tensor]:
    """The tensors of ``entries`` (of files ``handles``) on ``device``, read as one job.

    CPU lazy: views of one copy-on-write mapping per file (nothing read now). CPU eager (always
    when a file is a URL: URLs are never mapped): one owned buffer filled by the engine's reader
    pool across all files (parallel ranged GETs for URLs). MPS (any other device):
    that buffer, then one copy per distinct byte range. CUDA: one new tensor per distinct byte
    range, streamed through the pinned pool. On a device, tied tensors (one byte range under
    several names) stay one tensor, as they are on CPU.
    """
    if device.type == "cpu" and not eager and not any(h.is_remote for h in handles):
        maps = {k: handles[k].map() for k in sorted({e.file for e in entries})}
        return [view_of(maps[e.file], e.start, e) for e in entries]
    if device.type == "cuda":
        return _load_cuda(handles, entries, device, progress)
    memory, offsets = _engine.read_host(handles, [(e.file, e.start, e.end) for e in entries], progress)
    tensors = [view_of(memory, off, e) for off, e in zip(offsets, entries, strict=True)]
    if device.type == "cpu":
        return tensors
    out, _ = _one_per_range(entries, lambda k, _: tensors[k].to(device))
    return out


def _one_per_range(
    entries: Sequence[TensorEntry], new: Callable[[int, TensorEntry], torch.Tensor]
) -> tuple[list[torch.Tensor], dict[tuple[int, int, int], torch.Tensor]]:
    """A tensor per entry, made by ``new(index, entry)`` once per distinct byte range of a file:
    tied tensors stay one tensor. Returns them and the one made per range."""
    made: dict[tuple[int, int, int], torch.Tensor] = {}
    out = []
    for k, e in enumerate(entries):
        key = (e.file, e.start, e.end)
        t = made.get(key)
        if t is None:
            t = made[key] = new(k, e)
        elif t.dtype != e.dtype or tuple(t.shape) != e.shape:
            # The same bytes under another dtype or shape: a view of the one allocation.
            t = t.reshape(-1).view(torch.uint8).view(e.dtype).reshape(e.shape)
        out.append(t)
    return out, made


def _load_cuda(
    handles: Sequence[_engine.WeightFile], entries: Sequence[TensorEntry], device: torch.device, progress: bool
) -> list[torch.Tensor]:
    """One CUDA tensor per distinct byte range (tied tensors of a FlashPack file stay one
    tensor), filled by one engine job through the pinned staging pool."""
    out, made = _one_per_range(entries, lambda _, e: torch.empty(e.shape, dtype=e.dtype, device=device))
    _engine.read_to_cuda(handles, [(f, s, e, t) for (f, s, e), t in made.items()], device, progress)
    return out


def load_file(
    filename: PathArg,
    device: DeviceArg = "cpu",
    *,
    backend: str = "mmap",
    eager: bool = False,
    use_distributed_loading: bool = False,
) -> dict[str, torch.Tensor]:
    """Load a ``.safetensors`` or ``.flashpack`` file as a dict name -> tensor, like
    ``safetensors.torch.load_file`` (same names, dtypes, shapes and bytes; 0-dim tensors stay
    0-dim).

    On CPU the default is lazy: the tensors view a private copy-on-write mapping of the file
    (instant; writes to them never reach the file). ``eager=True`` reads every byte now into
    owned memory with the engine's parallel reader (``O_DIRECT`` when the file is not cached).
    ``device="cuda[:N]"`` (or an ordinal) streams each tensor through the bounded pinned staging
    pool into its own CUDA tensor, as FlashPack loads do; ``"mps"`` reads into host memory, then
    copies. A bad file raises ValueError (OSError for OS errors) naming the file and the tensor;
    Ctrl-C stops an eager or CUDA load between chunks.

    ``backend`` takes safetensors 0.8's values (so ``safetensors.torch.load_model`` can call this
    in place of its own): ``"mmap"`` (default) as above, ``"pread"`` the same as ``eager=True``;
    another value is a ``safetensors.SafetensorError``, as there. A tensor torch cannot hold
    (safetensors' ``F6_E2M3``/``F6_E3M2``, ``F4`` with an odd last dimension) fails the load with
    :class:`UnsupportedTensorError` naming it (``safe_open`` still serves the others).

    ``use_distributed_loading=True`` (in a ``torch.distributed`` job, or under torchrun): rank 0
    reads the file and broadcasts the bytes; every rank gets the same dict on ``device``.

    ``filename`` may be a URL (``https://``, ``http://``, ``s3://bucket/key``,
    ``hf://org/repo/file``; see :mod:`flashpack.remote`): read with parallel ranged GETs, eagerly
    on CPU, straight into CUDA memory through the pinned pool on CUDA.
    """
    eager = check_backend(backend) or eager
    dev = resolve_device(device)
    if use_distributed_loading:
        return _distributed(lambda: ([open_weights(filename)], None), dev)
    handle = open_weights(filename)
    check_loadable([handle])
    entries = entries_of(handle)
    tensors = load_entries([handle], entries, dev, eager, progress=False)
    return {e.name: t for e, t in zip(entries, tensors, strict=True)}


def load_checkpoint(
    path: PathArg,
    device: DeviceArg = "cpu",
    *,
    eager: bool = False,
    keys: Iterable[str] | None = None,
    progress: bool | None = None,
    variant: str | None = None,
    use_distributed_loading: bool = False,
) -> dict[str, torch.Tensor]:
    """Load a checkpoint of one or many files as one dict name -> tensor, as one engine job.

    ``path`` is a weight file (safetensors or FlashPack), an index json
    (``model.safetensors.index.json``, ``diffusion_pytorch_model.safetensors.index.json``,
    ``*.index.<variant>.json``, or a multi-file FlashPack index), or a folder holding exactly
    one of those (or exactly one weight file). Every shard is read by one reader pool (files in
    parallel) and, for CUDA, through one pinned staging pool, so memory stays bounded as for one
    file; ``progress`` shows one bar for the whole job (default: when stderr is a terminal).
    ``keys`` loads only those tensors (:class:`TensorNotFoundError`, a KeyError, naming any the
    checkpoint lacks). ``device`` and ``eager`` as for :func:`load_file`. ``variant`` (e.g.
    ``"fp16"``) picks ``*.safetensors.index.fp16.json`` / ``*.fp16.safetensors`` in a folder. A
    bad index or shard raises ValueError naming the index, the shard and the tensor (a shard the
    index lists that is not there: FileNotFoundError; OSError when the OS refuses a read).
    ``use_distributed_loading`` as for :func:`load_file` (rank 0 reads all shards as one job and
    broadcasts).

    ``path`` may be a URL (see :func:`load_file`) of a weight file or of an index json, whose
    shards are the objects beside it.
    """
    dev = resolve_device(device)
    if use_distributed_loading:
        return _distributed(lambda: _open_checkpoint(path, variant, keys), dev, _progress(progress))
    where, handles = _engine.open_checkpoint(path, variant)
    entries = select_entries(where, handles, keys)
    tensors = load_entries(handles, entries, dev, eager, _progress(progress))
    return {e.name: t for e, t in zip(entries, tensors, strict=True)}


def select_entries(
    where: PathArg, handles: Sequence[_engine.WeightFile], keys: Iterable[str] | None
) -> list[TensorEntry]:
    """The tensors to load from a checkpoint's shards (the engine checked that each tensor is in
    exactly one of them): all, or only ``keys`` (TensorNotFoundError naming any the checkpoint lacks)."""
    chosen = {e.name: e for k, h in enumerate(handles) for e in entries_of(h, k)}
    if keys is None:
        check_loadable(handles)
        return list(chosen.values())
    wanted = list(dict.fromkeys([keys] if isinstance(keys, str) else keys))
    check_loadable(handles, wanted)
    missing = [k for k in wanted if k not in chosen]
    if missing:
        raise TensorNotFoundError(f"{where}: the checkpoint has no tensor {', '.join(repr(m) for m in missing)}")
    return [chosen[k] for k in wanted]


def _open_checkpoint(
    path: PathArg, variant: str | None, keys: Iterable[str] | None
) -> tuple[list[_engine.WeightFile], list[TensorEntry]]:
    where, handles = _engine.open_checkpoint(path, variant)
    return handles, select_entries(where, handles, keys)


def _distributed(open_: Any, device: torch.device, progress: bool = False) -> dict[str, torch.Tensor]:
    """Rank 0 opens (``open_()`` gives the handles and the entries, or None for all of the
    handles' tensors) and reads as one job; every rank gets the tensors by broadcast."""
    maybe_init_distributed(device=device)

    def read() -> tuple[Any, list[tuple[str, str, list[int], int, int]]]:
        handles, entries = open_()
        if entries is None:
            check_loadable(handles)
            entries = [e for k, h in enumerate(handles) for e in entries_of(h, k)]
        memory, offsets = _engine.read_host(handles, [(e.file, e.start, e.end) for e in entries], progress)
        layout = [
            (e.name, dtype_to_string(e.dtype), list(e.shape), off, e.nbytes)
            for e, off in zip(entries, offsets, strict=True)
        ]
        return memory, layout

    return load_weights_distributed(read, device)
