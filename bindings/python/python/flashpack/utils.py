"""Small torch-side helpers: dtype names, name filters, timing output."""

from __future__ import annotations

import importlib.util
import logging
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from ._engine import DTYPE_TO_NAME as DTYPE_TO_NAME  # the engine's dtype names, re-exported here (their old home)
from ._engine import NAME_TO_DTYPE as NAME_TO_DTYPE
from ._engine import dtype_to_string as dtype_to_string
from ._engine import string_to_dtype as string_to_dtype
from ._process_group import maybe_init_distributed as _maybe_init_distributed

logger = logging.getLogger("flashpack")


def human_duration(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.2f}µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f}ms"
    if seconds < 60:
        return f"{seconds:.2f}s"
    return f"{int(seconds // 60)}m{seconds % 60:.0f}s"


def human_num_elements(elements: int) -> str:
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if elements > scale:
            return f"{elements / scale:.2f}{suffix}"
    return str(elements)


def print_phases(phases: list[tuple[str, float]], silent: bool) -> None:
    """Prints engine phase timings as `name: duration` lines."""
    if not silent:
        for name, seconds in phases:
            print(f"{name}: {human_duration(seconds)}")


@contextmanager
def timer(name: str, silent: bool = False) -> Iterator[None]:
    start = time.perf_counter()
    yield
    print_phases([(name, time.perf_counter() - start)], silent)


def is_ignored_tensor_name(
    name: str,
    ignore_names: list[str] | None = None,
    ignore_prefixes: list[str] | None = None,
    ignore_suffixes: list[str] | None = None,
) -> bool:
    return (
        (ignore_names is not None and name in ignore_names)
        or (ignore_prefixes is not None and name.startswith(tuple(ignore_prefixes)))
        or (ignore_suffixes is not None and name.endswith(tuple(ignore_suffixes)))
    )


def filter_state_dict(
    state_dict: dict[str, torch.Tensor],
    ignore_names: list[str] | None = None,
    ignore_prefixes: list[str] | None = None,
    ignore_suffixes: list[str] | None = None,
) -> dict[str, torch.Tensor]:
    return {
        k: v
        for k, v in state_dict.items()
        if not is_ignored_tensor_name(k, ignore_names, ignore_prefixes, ignore_suffixes)
    }


def get_module_and_attribute(model: torch.nn.Module, name: str) -> tuple[torch.nn.Module, str]:
    module_path, _, attr = name.rpartition(".")
    return model.get_submodule(module_path), attr


@contextmanager
def atomic_path(destination: str | os.PathLike[str]) -> Iterator[Path]:
    """A new, empty temporary file beside ``destination`` for the caller to write; when the block
    completes it is flushed to disk and renamed over ``destination``, on any error (or Ctrl-C)
    it is removed. ``destination`` is therefore always either its old self or complete."""
    destination = Path(destination)
    temporary = destination.with_name(f".{destination.name}.{secrets.token_hex(6)}.tmp")
    os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield temporary
        fd = os.open(temporary, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, destination)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


@contextmanager
def staged_files(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary folder inside ``folder`` to write files into; when the block completes each
    file is renamed to the same place in ``folder`` (one atomic replacement per file); the
    temporary folder is removed in any case."""
    folder = Path(folder)
    staging = Path(tempfile.mkdtemp(prefix=".flashpack-staging-", dir=folder))
    try:
        yield staging
        for source in sorted(p for p in staging.rglob("*") if p.is_file()):
            target = folder / source.relative_to(staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a broken or deliberately blocked package
        return False


def diffusers_is_available() -> bool:
    """True when diffusers can be imported (without importing it)."""
    return _installed("diffusers")


def transformers_is_available() -> bool:
    """True when transformers can be imported (without importing it)."""
    return _installed("transformers")


def maybe_init_distributed(
    rank: int | None = None, local_rank: int | None = None, world_size: int | None = None, **kwargs: Any
) -> tuple[int, int, int]:
    """Join (or create from torchrun's variables) the default process group; see
    :func:`flashpack.distributed.maybe_init_distributed`."""
    # The original's `flashpack.utils` path (and signature) of the function that lives in the low
    # module `_process_group`, which `distributed` uses too.
    return _maybe_init_distributed(rank=rank, local_rank=local_rank, world_size=world_size, **kwargs)
