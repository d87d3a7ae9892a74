"""Child processes for the crash-safety tests (test_crash_safety.py), run with the project venv:

    python crash_worker.py pack SEED MIB DEST     build state_dict(SEED, MIB), print READY, wait for a
                                                 line on stdin, pack it to DEST, print DONE
    python crash_worker.py lazy-truncate PATH    lazy-load PATH, truncate it in place, touch every
                                                 tensor (dies with SIGBUS by design)
    python crash_worker.py huge DIR              load DIR/valid.fp once, limit the address space to
                                                 what is mapped then plus 1 GiB, and check every
                                                 crafted DIR/*.flashpack is rejected fast with a
                                                 ValueError naming it

``state_dict`` is deterministic, so the parent can rebuild what a child packed.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from pathlib import Path

import torch


def state_dict(seed: int, mib: int) -> dict[str, torch.Tensor]:
    """About ``mib`` MiB: one big int32 tensor (cheap to build, distinct per seed) and a few small
    tensors of other dtypes, so the file has several macroblocks."""
    n = (mib << 20) // 4
    big = torch.arange(n, dtype=torch.int64).mul_(2 * seed + 1).add_(seed).to(torch.int32)
    g = torch.Generator().manual_seed(seed)
    return {
        "big": big,
        "w": torch.randn(256, 64, generator=g),
        "h": torch.randn(1000, generator=g).to(torch.bfloat16),
        "step": torch.tensor(seed, dtype=torch.int64),
    }


def payload_bytes(sd: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in sd.values())


def _pack(seed: int, mib: int, dest: str) -> None:
    import flashpack

    sd = state_dict(seed, mib)
    print("READY", flush=True)
    sys.stdin.readline()
    flashpack.pack_to_file(sd, dest)
    print("DONE", flush=True)


def _lazy_truncate(path: str) -> None:
    import flashpack

    storage, meta = flashpack.read_flashpack_file(path)  # lazy: a private mapping of the file
    total = sum(float(t.double().sum()) for _, t in flashpack.iterate_from_flash_tensor(storage, meta))
    print(f"LOADED {total}", flush=True)
    os.truncate(path, 4096)
    print("TRUNCATED", flush=True)
    total = sum(float(t.double().sum()) for _, t in flashpack.iterate_from_flash_tensor(storage, meta))
    print(f"SURVIVED {total}", flush=True)


def _mapped_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def _huge(directory: str) -> None:
    import flashpack
    from flashpack import _core

    files = sorted(Path(directory).glob("*.flashpack"))
    # Warm up every path once on a valid file (DIR/valid.fp) so that lazily created thread pools
    # and allocator arenas exist before the limit: only the crafted files' cost is measured.
    valid = Path(directory) / "valid.fp"
    flashpack.get_flashpack_file_metadata(valid)
    flashpack.read_flashpack_file(valid)
    flashpack.read_flashpack_file(valid, eager=True)
    _core.load(str(valid), eager=True, io="direct")
    limit = _mapped_bytes() + (1 << 30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for path in files:
        calls = {
            "metadata": lambda: flashpack.get_flashpack_file_metadata(path),
            "lazy": lambda: flashpack.read_flashpack_file(path),
            "eager": lambda: flashpack.read_flashpack_file(path, eager=True),
            "eager direct": lambda: _core.load(str(path), eager=True, io="direct"),
            "eager buffered": lambda: _core.load(str(path), eager=True, io="buffered"),
        }
        for what, call in calls.items():
            start = time.perf_counter()
            try:
                call()
            except ValueError as e:
                assert str(path) in str(e), f"{path.name} {what}: error does not name the file: {e}"
            else:
                raise AssertionError(f"{path.name} {what}: a crafted file was accepted")
            took = time.perf_counter() - start
            assert took < 2.0, f"{path.name} {what}: took {took:.2f} s"
        assert not flashpack.is_flashpack_file(path)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    print(f"OK {len(files)} files, peak RSS grew by {grown} KiB", flush=True)


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "pack":
        _pack(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    elif cmd == "lazy-truncate":
        _lazy_truncate(sys.argv[2])
    elif cmd == "huge":
        _huge(sys.argv[2])
    else:
        raise SystemExit(f"unknown command {cmd!r}")
