"""Every setting the ``flashpack`` package reads from the environment, in one place.

A leaf module: it imports nothing from the package (nor torch), so any module may use it. Each
function reads its variable when called, so a variable set before a load applies to that load.

| variable | meaning | default |
|---|---|---|
| ``FLASHPACK_DIRECT_IO`` | ``0`` never reads with O_DIRECT (else the engine chooses) | on |
| ``FLASHPACK_READ_THREADS`` | reader threads of an eager load (0: the engine chooses) | 0 |
| ``FLASHPACK_READ_CHUNK_BYTES`` | bytes per read of an eager load | 16 MiB |
| ``FLASHPACK_CPU_PARALLEL_READ`` | ``1`` makes CPU loads eager by default (owned memory, parallel reads) | off |
| ``FLASHPACK_HUGE_PAGES`` | ``1`` asks for huge pages for eagerly loaded memory | off |
| ``FLASHPACK_DISTRIBUTED_SHARDED`` | ``1`` makes distributed loads sharded (read on the source rank) | off |
| ``FLASHPACK_SHARD_STRATEGY`` | ``contiguous`` or ``windows`` (read on the source rank) | contiguous |
| ``FLASHPACK_SHARD_BYTES`` | the ``windows`` strategy's bytes per rank and round | 256 MiB |
| ``FLASHPACK_DIST_TIMEOUT`` | seconds before a distributed collective gives up | 300 |
| ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` | torchrun's, when no process group exists yet | none |

The engine reads its own (``FLASHPACK_PINNED_POOL_BYTES``, the ``FLASHPACK_REMOTE_*`` variables);
see the Rust crate's ``settings`` module and ``remote`` docs.

>>> import os
>>> os.environ["FLASHPACK_READ_THREADS"] = "3"
>>> reader_options()["threads"]
3
>>> del os.environ["FLASHPACK_READ_THREADS"]
"""

from __future__ import annotations

import os
from typing import Any

# Eager loads: bytes per read, unless FLASHPACK_READ_CHUNK_BYTES says otherwise.
DEFAULT_READ_CHUNK_BYTES = 16 * 1024 * 1024
DEFAULT_SHARD_BYTES = 256 * 1024 * 1024
DEFAULT_DIST_TIMEOUT_S = 300


def env_flag(name: str, default: bool = False) -> bool:
    """An environment switch: unset gives `default`, "0"/"false"/"no"/"off"/"" are off."""
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() not in ("0", "false", "no", "off", "")


def env_int(name: str, default: int) -> int:
    """An integer from the environment; unset or blank gives `default`, anything else that is
    not an integer is a ValueError naming the variable."""
    value = os.environ.get(name)
    if value is None or not value.strip():
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not an integer") from None


def reader_options() -> dict[str, Any]:
    """The engine's reader settings (the ``io``, ``threads`` and ``chunk_bytes`` arguments of
    its loads): ``FLASHPACK_DIRECT_IO``, ``FLASHPACK_READ_THREADS``, ``FLASHPACK_READ_CHUNK_BYTES``."""
    return {
        "io": "auto" if env_flag("FLASHPACK_DIRECT_IO", default=True) else "buffered",
        "threads": env_int("FLASHPACK_READ_THREADS", 0),
        "chunk_bytes": env_int("FLASHPACK_READ_CHUNK_BYTES", DEFAULT_READ_CHUNK_BYTES),
    }


def cpu_parallel_read() -> bool:
    """``FLASHPACK_CPU_PARALLEL_READ``: CPU loads are eager unless the caller says."""
    return env_flag("FLASHPACK_CPU_PARALLEL_READ")


def huge_pages() -> bool:
    """``FLASHPACK_HUGE_PAGES``: huge pages for eagerly loaded host memory."""
    return env_flag("FLASHPACK_HUGE_PAGES")


def distributed_sharded() -> bool:
    """``FLASHPACK_DISTRIBUTED_SHARDED``: distributed loads are sharded whatever the caller says."""
    return env_flag("FLASHPACK_DISTRIBUTED_SHARDED")


def shard_strategy() -> str | None:
    """``FLASHPACK_SHARD_STRATEGY`` as set (None when unset or empty)."""
    return os.environ.get("FLASHPACK_SHARD_STRATEGY") or None


def shard_bytes() -> int:
    """``FLASHPACK_SHARD_BYTES``: the ``windows`` strategy's bytes per rank and round."""
    return env_int("FLASHPACK_SHARD_BYTES", DEFAULT_SHARD_BYTES)


def dist_timeout_s() -> int:
    """``FLASHPACK_DIST_TIMEOUT``: seconds before forming a process group or a control message
    gives up."""
    return env_int("FLASHPACK_DIST_TIMEOUT", DEFAULT_DIST_TIMEOUT_S)


def torchrun_rank() -> int:
    """torchrun's ``RANK`` (-1 when unset)."""
    return env_int("RANK", -1)


def torchrun_world_size() -> int:
    """torchrun's ``WORLD_SIZE`` (-1 when unset)."""
    return env_int("WORLD_SIZE", -1)


def torchrun_local_rank() -> int:
    """torchrun's ``LOCAL_RANK`` (0 when unset)."""
    return env_int("LOCAL_RANK", 0)


class EnvironmentOverrides:
    """A ``with`` block during which the given variables hold the given values (``None``: left
    as they are), restored (or removed) when it ends. For callers that must hand settings to
    loads which read them from the environment (the vLLM loader's reader options)."""

    def __init__(self, values: dict[str, str | None]) -> None:
        self.values = {k: v for k, v in values.items() if v is not None}
        self.saved: dict[str, str | None] = {}

    def __enter__(self) -> None:
        self.saved = {k: os.environ.get(k) for k in self.values}
        os.environ.update(self.values)

    def __exit__(self, *exc: object) -> None:
        for k, old in self.saved.items():
            if old is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = old
