"""What a load gives before any module sees it: the blocks of a file as typed tensors, with
the engine's footer, and the tensors as views of those blocks.

Used by :mod:`flashpack.deserialization` (single-process loads) and :mod:`flashpack.distributed`
(loads shared by the ranks of a process group), so that neither needs the other.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from . import _engine
from ._engine import string_to_dtype
from .utils import is_ignored_tensor_name


@dataclass
class FlashTensorStorage:
    """The macroblocks of a loaded file, one 1-D tensor per dtype."""

    blocks: list[torch.Tensor]
    backing: Any = field(default=None, repr=False)
    # What a distributed load did on this rank (strategy, bytes read), else None.
    io: dict[str, Any] | None = None
    # The file's footer as the engine decoded it (None for a checkpoint or a bare tensor).
    footer: _engine.Footer | None = field(default=None, repr=False)
    # Where each tensor sits in ``blocks``: the footer's records, or one per block for a checkpoint.
    records: list[_engine.Record] | None = field(default=None, repr=False)

    def block(self, idx: int) -> torch.Tensor:
        return self.blocks[idx]

    def __len__(self) -> int:
        return len(self.blocks)

    @property
    def device(self) -> torch.device:
        return self.blocks[0].device if self.blocks else torch.device("cpu")


def footer_metadata(footer: _engine.Footer) -> dict[str, Any]:
    """The footer as the original API's dict (its JSON as stored). The one place Python reads
    footer JSON; everything else uses the engine's decoded :class:`flashpack._engine.Footer`."""
    metadata: dict[str, Any] = json.loads(footer.json)
    return metadata


def metadata_of(storage: FlashTensorStorage, path: str) -> dict[str, Any]:
    """What :func:`read_flashpack_file` returns beside the storage: the footer as a dict, or for
    a checkpoint a footer-shaped index of its tensors (each at offset 0 of its own block)."""
    if storage.footer is not None:
        return footer_metadata(storage.footer)
    index = [
        {"name": r.name, "shape": r.shape, "offset": 0, "length": r.length, "macroblock": r.block,
         "dtype": str(storage.blocks[r.block].dtype)}
        for r in storage.records or []
    ]  # fmt: skip
    return {"format": "checkpoint", "source": path, "index": index}


# (name, block, offset, length, shape, what to show in an error), one per tensor.
_Placement = tuple[str, int, int, int, tuple[int, ...], Any]


def placements(records: list[_engine.Record]) -> Iterator[_Placement]:
    """The placements of a footer's (or a checkpoint's) records, for :func:`views`."""
    return ((r.name, r.block, r.offset, r.length, tuple(r.shape), r) for r in records)


def views(
    storage: FlashTensorStorage,
    placed: Iterator[_Placement],
    ignore_names: list[str] | None = None,
    ignore_prefixes: list[str] | None = None,
    ignore_suffixes: list[str] | None = None,
) -> Iterator[tuple[int, str, torch.Tensor, Any]]:
    """``(index, name, view of its block, the record)`` per placement not filtered out (``index``
    counts every placement, filtered or not)."""
    for index, (name, block_idx, offset, length, shape, rec) in enumerate(placed):
        if is_ignored_tensor_name(name, ignore_names, ignore_prefixes, ignore_suffixes):
            continue
        if not 0 <= block_idx < len(storage):
            raise ValueError(f"tensor '{name}': macroblock {block_idx} does not exist ({len(storage)} blocks)")
        try:
            view = storage.block(block_idx).narrow(0, offset, length).view(shape)
        except RuntimeError as e:
            raise ValueError(f"tensor '{name}': record {rec} does not fit its block: {e}") from e
        yield index, name, view, rec


def revert_storage(storage: FlashTensorStorage) -> dict[str, torch.Tensor]:
    """The tensors of a loaded storage by name (views of its blocks)."""
    return {name: view.detach() for _, name, view, _ in views(storage, placements(storage.records or []))}


def view_bytes(memory: Any, offset: int, nbytes: int, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    """A tensor of ``dtype`` and ``shape`` viewing ``nbytes`` bytes of ``memory`` (anything with
    the buffer protocol) from ``offset``, without a copy."""
    if nbytes == 0:
        return torch.empty(shape, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = torch.frombuffer(memory, dtype=torch.uint8, count=nbytes, offset=offset)
    return raw.view(dtype).view(shape)


def block_views(memory: Any, blocks: list[tuple[str, int, int, int]]) -> list[torch.Tensor]:
    """One 1-D tensor per block of a footer (``(dtype name, offset, bytes, elements)``), viewing
    ``memory`` (loaded payload bytes, anything with the buffer protocol) without a copy."""
    return [view_bytes(memory, off, n, string_to_dtype(d), (-1,) if n else (0,)) for d, off, n, _ in blocks]
