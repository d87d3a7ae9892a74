"""``flashpack.safe_open``: one file's tensors on demand, shaped like ``safetensors.safe_open``.

Reads only what is asked for, through the engine: ``get_tensor`` reads that tensor's bytes;
``get_slice(name)[rows]`` on a row-major tensor reads the rows' one contiguous byte range (what a
tensor-parallel rank needs). Other slices read the rows that cover them, then slice in torch:
``[:, a:b]`` reads the whole tensor, ``[r0:r1, a:b]`` and ``[r0:r1:step]`` read rows ``r0..r1``.
Indexing with tensors, lists or ``None`` reads the whole tensor.

Packed fp4 (safetensors' ``F4``, torch's ``float4_e2m1fn_x2``: two 4-bit values per byte):
``get_shape()`` is the header's shape, counting 4-bit values, as safetensors gives it; a tensor
and an index are in torch's shape, whose last dimension counts bytes (value pairs), so
``get_slice(name)[index]`` is ``get_tensor(name)[index]`` (a row is whole bytes: only the last
dimension packs). safetensors 0.8 cannot slice an ``F4`` tensor at all (a ``RuntimeError``).

The handle closes at the end of the ``with`` block (or on :meth:`safe_open.close`): the engine's
file and mapping are released (tensors already returned stay valid, as safetensors' do), and
every later call is a ``safetensors.SafetensorError`` "File is closed", as there.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

import torch
from safetensors import SafetensorError

from . import _engine
from ._engine import (
    DeviceArg,
    TensorNotFoundError,
    UnloadableEntry,
    check_backend,
    open_weights,
    resolve_device,
    unloadable_of,
)
from .loading import PathArg, TensorEntry, entries_of, load_entries

__all__ = ["TensorSlice", "safe_open"]


class safe_open:  # noqa: N801 - the name safetensors users know
    """``with flashpack.safe_open("model.safetensors", framework="pt", device="cpu") as f:``

    ``f.keys()`` (sorted by name, as safetensors' ``keys()`` is), ``f.offset_keys()`` (in the
    order of the tensors' bytes in the file), ``f.metadata()`` (the ``__metadata__`` strings or None),
    ``f.get_tensor(name)``, ``f.get_tensors()`` (all, as ``load_file`` gives them),
    ``f.get_slice(name)`` (``.get_shape()``, ``.get_dtype()``, ``[...]``), ``f.close()``.
    Works for ``.safetensors`` and ``.flashpack`` files, local or at a URL (``https://``,
    ``s3://``, ...: the open fetches only the header, each read only its ranges). Each call reads
    only its bytes (see the module docs for what a slice costs); a missing name is a
    :class:`TensorNotFoundError` (a KeyError, a ValueError and safetensors' ``SafetensorError``)
    naming the file. ``backend`` takes safetensors 0.8's values: ``"mmap"`` (default;
    ``get_tensors()`` views a copy-on-write mapping) or ``"pread"`` (``get_tensors()`` reads
    everything now with the reader pool); ``get_tensor`` and slices read only their bytes either way.
    """

    def __init__(
        self, filename: PathArg, framework: str = "pt", device: DeviceArg = "cpu", *, backend: str = "mmap"
    ) -> None:
        if framework not in ("pt", "torch", "pytorch"):
            raise ValueError(
                f"framework {framework!r} is not supported: flashpack.safe_open returns torch tensors ('pt')"
            )
        self._eager = check_backend(backend)
        self._device = resolve_device(device)
        handle = open_weights(filename)
        self._path = handle.path
        self._entries = {e.name: e for e in entries_of(handle)}
        self._unloadable = {u.name: u for u in unloadable_of(handle)}
        self._metadata = handle.metadata
        self._handle: _engine.WeightFile | None = handle

    def __enter__(self) -> safe_open:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Releases the engine's handle (its file and any mapping it holds); tensors already
        returned stay valid. Later calls raise ``SafetensorError("File is closed")``."""
        self._handle = None

    def _open(self) -> _engine.WeightFile:
        if self._handle is None:
            raise SafetensorError(f"File is closed: {self._path}")
        return self._handle

    def keys(self) -> list[str]:
        """The tensor names, sorted (safetensors' ``keys()`` order, whatever the file's order)."""
        self._open()
        return sorted([*self._entries, *self._unloadable])

    def offset_keys(self) -> list[str]:
        """The tensor names in the order of their bytes in the file (``load_file``'s order)."""
        self._open()
        spans = [(e.start, e.end, e.name) for e in self._entries.values()]
        spans += [(u.start, u.end, u.name) for u in self._unloadable.values()]
        return [name for *_, name in sorted(spans)]

    def metadata(self) -> dict[str, str] | None:
        self._open()
        return self._metadata

    def _entry(self, name: str) -> TensorEntry:
        self._open()
        try:
            return self._entries[name]
        except KeyError:
            if name in self._unloadable:
                raise self._unloadable[name].error() from None
            raise TensorNotFoundError(f"{self._path}: the file has no tensor {name!r}") from None

    def get_tensor(self, name: str) -> torch.Tensor:
        """Tensor ``name`` on the device, reading only its bytes."""
        return self._load([self._entry(name)], eager=True)[0]

    def get_tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor, as ``load_file`` gives them (file order; lazy views on CPU with
        ``backend="mmap"``, read now with ``"pread"``); a tensor torch cannot hold fails it, as
        in safetensors."""
        handle = self._open()
        if self._unloadable:
            raise next(iter(self._unloadable.values())).error()
        entries = entries_of(handle)
        tensors = load_entries([handle], entries, self._device, self._eager, progress=False)
        return {e.name: t for e, t in zip(entries, tensors, strict=True)}

    def get_slice(self, name: str) -> TensorSlice:
        self._open()
        if name in self._unloadable:
            return TensorSlice(self, self._unloadable[name])
        return TensorSlice(self, self._entry(name))

    def _load(self, entries: list[TensorEntry], eager: bool) -> list[torch.Tensor]:
        return load_entries([self._open()], entries, self._device, eager=eager, progress=False)

    def _read_rows(self, e: TensorEntry, r0: int, r1: int) -> torch.Tensor:
        """Rows ``r0..r1`` of ``e`` (row-major: one contiguous byte range), on the device."""
        row = e.nbytes // e.shape[0] if e.shape[0] else 0
        part = TensorEntry(e.file, e.name, e.dtype, (r1 - r0, *e.shape[1:]), e.start + r0 * row, e.start + r1 * row)
        return self._load([part], eager=True)[0]


def _expand(index: Any, ndim: int) -> tuple[Any, ...] | None:
    """``index`` as one entry per leading dimension (Ellipsis expanded), or None when it holds
    something other than ints, slices and one Ellipsis (then the whole tensor is read)."""
    items = index if isinstance(index, tuple) else (index,)
    if not all(isinstance(i, (int, slice)) or i is Ellipsis for i in items) or any(isinstance(i, bool) for i in items):
        return None
    if sum(i is Ellipsis for i in items) > 1:
        return None
    if Ellipsis in items:
        k = items.index(Ellipsis)
        fill = max(0, ndim - (len(items) - 1))
        items = items[:k] + (slice(None),) * fill + items[k + 1 :]
    return items


class TensorSlice:
    """A tensor not read yet: ``get_shape()`` (the safetensors header's shape), ``get_dtype()``
    (safetensors' name, e.g. "F32") and indexing, which reads only the rows the index needs (see
    the module docs). For a tensor torch cannot hold, the two getters work and indexing raises
    :class:`~flashpack.UnsupportedTensorError`, as safetensors' ``SafetensorError``."""

    def __init__(self, owner: safe_open, entry: TensorEntry | UnloadableEntry) -> None:
        self._owner = owner
        self._tensor = entry

    def get_shape(self) -> list[int]:
        e = self._tensor
        if isinstance(e, UnloadableEntry):
            return list(e.st_shape)
        return list(e.st_shape if e.st_shape is not None else e.shape)

    def get_dtype(self) -> str:
        e = self._tensor
        if isinstance(e, UnloadableEntry):
            return e.st_dtype
        return e.st_dtype if e.st_dtype is not None else str(e.dtype).removeprefix("torch.")

    @property
    def _entry(self) -> TensorEntry:
        e = self._tensor
        if isinstance(e, UnloadableEntry):
            self._owner._open()
            raise e.error()
        return e

    def __getitem__(self, index: Any) -> torch.Tensor:
        e = self._entry
        items = _expand(index, len(e.shape)) if e.shape else None
        if not items:
            return self._owner.get_tensor(e.name)[index]
        first, rest = items[0], items[1:]
        n = e.shape[0]
        if isinstance(first, int):
            i = first + n if first < 0 else first
            if not 0 <= i < n:
                raise IndexError(f"index {first} is out of bounds for dimension 0 with size {n}")
            return self._owner._read_rows(e, i, i + 1)[(0, *rest)]
        start, stop, step = first.indices(n)
        if step <= 0:
            raise ValueError("step must be greater than zero")
        stop = max(start, stop)
        return self._owner._read_rows(e, start, stop)[(slice(0, stop - start, step), *rest)]
