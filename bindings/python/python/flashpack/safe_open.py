"""``flashpack.safe_open``: one file's tensors on demand, shaped like ``safetensors.safe_open``.

Reads only what is asked for, through the engine: ``get_tensor`` reads that tensor's bytes;
``get_slice(name)[rows]`` on a row-major tensor reads the rows' one contiguous byte range (what a
tensor-parallel rank needs). Other slices read the rows that cover them, then slice in torch:
``[:, a:b]`` reads the whole tensor, ``[r0:r1, a:b]`` and ``[r0:r1:step]`` read rows ``r0..r1``.
Indexing with tensors, lists or ``None`` reads the whole tensor.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

import torch

from .loading import (
    DeviceArg,
    PathArg,
    TensorEntry,
    TensorNotFoundError,
    entries_of,
    load_entries,
    open_weights,
    resolve_device,
)

__all__ = ["TensorSlice", "safe_open"]


class safe_open:  # noqa: N801 - the name safetensors users know
    """``with flashpack.safe_open("model.safetensors", framework="pt", device="cpu") as f:``

    ``f.keys()`` (sorted by name, as safetensors' ``keys()`` is), ``f.offset_keys()`` (in the
    order of the tensors' bytes in the file), ``f.metadata()`` (the ``__metadata__`` strings or None),
    ``f.get_tensor(name)``, ``f.get_slice(name)`` (``.get_shape()``, ``.get_dtype()``, ``[...]``).
    Works for ``.safetensors`` and ``.flashpack`` files, local or at a URL (``https://``,
    ``s3://``, ...: the open fetches only the header, each read only its ranges). Each call reads
    only its bytes (see the module docs for what a slice costs); a missing name is a :class:`TensorNotFoundError` (a
    KeyError, also a ValueError) naming the file; safetensors raises its ``SafetensorError``.
    """

    def __init__(self, filename: PathArg, framework: str = "pt", device: DeviceArg = "cpu") -> None:
        if framework not in ("pt", "torch", "pytorch"):
            raise ValueError(
                f"framework {framework!r} is not supported: flashpack.safe_open returns torch tensors ('pt')"
            )
        self._device = resolve_device(device)
        self._handle = open_weights(filename)
        self._entries = {e.name: e for e in entries_of(self._handle)}

    def __enter__(self) -> safe_open:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        return None

    def keys(self) -> list[str]:
        """The tensor names, sorted (safetensors' ``keys()`` order, whatever the file's order)."""
        return sorted(self._entries)

    def offset_keys(self) -> list[str]:
        """The tensor names in the order of their bytes in the file (``load_file``'s order)."""
        return [e.name for e in sorted(self._entries.values(), key=lambda e: e.start)]

    def metadata(self) -> dict[str, str] | None:
        return self._handle.metadata

    def _entry(self, name: str) -> TensorEntry:
        try:
            return self._entries[name]
        except KeyError:
            raise TensorNotFoundError(f"{self._handle.path}: the file has no tensor {name!r}") from None

    def get_tensor(self, name: str) -> torch.Tensor:
        """Tensor ``name`` on the device, reading only its bytes."""
        return load_entries([self._handle], [self._entry(name)], self._device, eager=True, progress=False)[0]

    def get_slice(self, name: str) -> TensorSlice:
        return TensorSlice(self, self._entry(name))

    def _read_rows(self, e: TensorEntry, r0: int, r1: int) -> torch.Tensor:
        """Rows ``r0..r1`` of ``e`` (row-major: one contiguous byte range), on the device."""
        row = e.nbytes // e.shape[0] if e.shape[0] else 0
        part = TensorEntry(e.file, e.name, e.dtype, (r1 - r0, *e.shape[1:]), e.start + r0 * row, e.start + r1 * row)
        return load_entries([self._handle], [part], self._device, eager=True, progress=False)[0]


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
    """A tensor not read yet: ``get_shape()``, ``get_dtype()`` (safetensors' name, e.g. "F32")
    and indexing, which reads only the rows the index needs (see the module docs)."""

    def __init__(self, owner: safe_open, entry: TensorEntry) -> None:
        self._owner = owner
        self._entry = entry

    def get_shape(self) -> list[int]:
        return list(self._entry.shape)

    def get_dtype(self) -> str:
        e = self._entry
        return e.st_dtype if e.st_dtype is not None else str(e.dtype).removeprefix("torch.")

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
