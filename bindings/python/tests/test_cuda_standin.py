"""The extension's CUDA entry points (``_core``) with real driver calls, against the strict stand-in
for the CUDA driver (crates/cuda-standin), fed with device addresses allocated from it.

``make test-cuda-standin`` (part of ``make test``) runs this file with the stand-in first on
``LD_LIBRARY_PATH`` and ``FLASHPACK_REQUIRE_STANDIN=1``; elsewhere it skips with the reason. The
torch glue (``read_flashpack_file(device="cuda")``) needs a real GPU: test_cuda.py. Nothing
measured here is GPU evidence.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import flashpack
from flashpack import _core, pack_to_file
from flashpack.utils import NAME_TO_DTYPE
from remote_servers import nginx  # noqa: F401 - the fixture of the URL test
from test_roundtrip import random_tensor


def _load_standin() -> ctypes.CDLL | None:
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    return lib if hasattr(lib, "standin_record") else None


LIB = _load_standin()
if LIB is None and os.environ.get("FLASHPACK_REQUIRE_STANDIN") == "1":
    raise RuntimeError("FLASHPACK_REQUIRE_STANDIN=1 but libcuda.so.1 is not the CUDA stand-in")
pytestmark = pytest.mark.skipif(
    LIB is None, reason="needs the CUDA stand-in on LD_LIBRARY_PATH: make test-cuda-standin"
)


class Driver:
    """The few driver calls a framework makes (contexts, allocations, read-back), through ctypes,
    plus the stand-in's controls."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib
        self.check(lib.cuInit(0), "cuInit")

    @staticmethod
    def check(rc: int, what: str) -> None:
        assert rc == 0, f"{what} failed with CUresult {rc}"

    def ctx(self, ordinal: int) -> int:
        dev, ctx = ctypes.c_int(), ctypes.c_void_p()
        self.check(self.lib.cuDeviceGet(ctypes.byref(dev), ordinal), "cuDeviceGet")
        self.check(self.lib.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev), "cuDevicePrimaryCtxRetain")
        return int(ctx.value or 0)

    def current(self) -> int:
        ctx = ctypes.c_void_p()
        self.check(self.lib.cuCtxGetCurrent(ctypes.byref(ctx)), "cuCtxGetCurrent")
        return int(ctx.value or 0)

    def set_current(self, ctx: int) -> None:
        self.check(self.lib.cuCtxSetCurrent(ctypes.c_void_p(ctx or None)), "cuCtxSetCurrent")

    def _in(self, ctx: int, f: Callable[[], int], what: str) -> None:
        self.check(self.lib.cuCtxPushCurrent_v2(ctypes.c_void_p(ctx)), "cuCtxPushCurrent")
        try:
            self.check(f(), what)
        finally:
            self.check(self.lib.cuCtxPopCurrent_v2(None), "cuCtxPopCurrent")

    def alloc(self, ctx: int, n: int) -> int:
        p = ctypes.c_uint64()
        self._in(ctx, lambda: self.lib.cuMemAlloc_v2(ctypes.byref(p), ctypes.c_size_t(n)), "cuMemAlloc")
        return p.value

    def read(self, ctx: int, ptr: int, n: int) -> bytes:
        buf = ctypes.create_string_buffer(n)
        self._in(ctx, lambda: self.lib.cuMemcpyDtoH_v2(buf, ctypes.c_uint64(ptr), ctypes.c_size_t(n)), "cuMemcpyDtoH")
        return buf.raw

    def free(self, ctx: int, ptr: int) -> None:
        self._in(ctx, lambda: self.lib.cuMemFree_v2(ctypes.c_uint64(ptr)), "cuMemFree")

    def record(self) -> dict[str, Any]:
        buf = ctypes.create_string_buffer(1 << 20)
        n = self.lib.standin_record(buf, ctypes.c_size_t(len(buf)))
        return dict(json.loads(buf.raw[:n]))

    def fail(self, kind: str, nth: int) -> None:
        assert self.lib.standin_fail(kind.encode(), ctypes.c_uint64(nth)) == 0, kind

    def reset(self) -> None:
        self.lib.standin_reset()


@pytest.fixture()
def drv() -> Any:
    d = Driver(LIB)  # type: ignore[arg-type]
    d.reset()
    _core.set_pinned_pool_limit(1 << 30)
    yield d
    assert d.record()["violations"] == [], "the stand-in saw misuse of the driver"


def make_file(tmp_path: Path) -> tuple[Path, bytes]:
    """Every dtype (one block each), sizes that are multiples of neither 4 KiB nor a chunk."""
    dtypes = sorted(NAME_TO_DTYPE.values(), key=str)
    sd = {f"t{i}": random_tensor(d, (4099 * (i % 5 + 1) + 13,), i) for i, d in enumerate(dtypes)}
    sd["scalar"] = torch.tensor(7, dtype=torch.int64)
    path = tmp_path / "m.flashpack"
    pack_to_file(sd, path, None)
    return path, path.read_bytes()


def load(drv: Driver, path: Path, ordinal: int = 0, **kw: Any) -> tuple[Any, list[tuple[int, int, int]]]:
    """Opens `path`, allocates one device buffer per block on device `ordinal` and streams the file
    into them; returns the handle and `(offset, length, address)` per block."""
    ctx = drv.ctx(ordinal)
    handle = _core.open(str(path))
    regions = [(off, n, drv.alloc(ctx, n)) for _, off, n, _ in handle.footer.blocks if n]
    handle.to_cuda(ordinal, regions, **kw)
    return handle, regions


def assert_landed(drv: Driver, raw: bytes, regions: list[tuple[int, int, int]], ordinal: int = 0) -> None:
    ctx = drv.ctx(ordinal)
    for off, n, ptr in regions:
        assert drv.read(ctx, ptr, n) == raw[off : off + n], f"block at {off} differs"
        drv.free(ctx, ptr)


def within(seconds: float, f: Callable[[], Any]) -> Any:
    """Runs `f` (which releases the GIL in the engine) on a thread; a hang fails the test."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = f()
        except BaseException as e:  # noqa: BLE001 - handed to the caller below
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"did not finish within {seconds} s"
    if "error" in out:
        raise out["error"]
    return out.get("value")


def test_every_dtype_lands_bit_exact_and_the_pool_is_reused(drv: Driver, tmp_path: Path) -> None:
    assert _core.cuda_available()
    path, raw = make_file(tmp_path)
    flashpack.release_pinned_pool()
    allocs = []
    for _ in range(3):
        handle, regions = load(drv, path, threads=3, chunk_bytes=65536)
        assert len(regions) == len(handle.footer.blocks) >= 20
        assert_landed(drv, raw, regions)
        stats = flashpack.pinned_pool_stats()
        assert 0 < stats["allocated"] == stats["idle"] <= stats["limit"], stats
        allocs.append(drv.record()["calls"]["cuMemHostAlloc"])
    assert allocs[0] == allocs[1] == allocs[2], "later loads reuse the pinned buffers"
    assert flashpack.release_pinned_pool() == stats["allocated"]
    assert flashpack.pinned_pool_stats()["allocated"] == 0
    assert drv.record()["pinned_bytes"] == flashpack.pinned_pool_stats()["leaked"]


def test_verify_names_the_tensor_of_a_flipped_byte(drv: Driver, tmp_path: Path) -> None:
    # Larger than one 4 MiB checksum chunk, and stored first (largest first).
    sd = {"big": random_tensor(torch.float32, (6 << 18,), 1), "small": random_tensor(torch.int8, (999,), 2)}
    path = tmp_path / "m.flashpack"
    pack_to_file(sd, path, None)
    raw = path.read_bytes()
    _, regions = load(drv, path, verify=True)
    assert_landed(drv, raw, regions)
    at = 1 << 20  # inside 'big', in a checksum chunk that holds nothing else
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(bytes([raw[at] ^ 0x10]))
    with pytest.raises(ValueError, match=r"checksum mismatch.*tensor 'big'") as e:
        load(drv, path, verify=True)
    assert str(path) in str(e.value)
    stats = flashpack.pinned_pool_stats()
    assert stats["allocated"] == stats["idle"], stats


def test_bad_regions_are_refused_naming_the_file(drv: Driver, tmp_path: Path) -> None:
    path, _ = make_file(tmp_path)
    handle = _core.open(str(path))
    ptr = drv.alloc(drv.ctx(0), 64)
    for regions, word in [
        ([(handle.payload_len - 8, 16, ptr)], "outside"),
        ([(0, 32, ptr), (16, 32, ptr)], "overlap"),
    ]:
        with pytest.raises(ValueError, match=word) as e:
            handle.to_cuda(0, regions)
        assert str(path) in str(e.value)
    assert drv.record()["calls"].get("cuStreamCreate", 0) == 0


def test_the_callers_context_is_unchanged_after_success_and_failure(drv: Driver, tmp_path: Path) -> None:
    path, raw = make_file(tmp_path)
    ctx0 = drv.ctx(0)
    drv.set_current(ctx0)  # as torch does for its current device
    try:
        _, regions = load(drv, path, ordinal=1, threads=2, chunk_bytes=65536)
        assert drv.current() == ctx0, "a load to cuda:1 moved the caller's current device"
        assert_landed(drv, raw, regions, ordinal=1)
        drv.fail("copy", 2)
        with pytest.raises(RuntimeError, match="cuMemcpyHtoDAsync"):
            load(drv, path, ordinal=1, threads=2, chunk_bytes=65536)
        drv.fail("copy", 0)
        assert drv.current() == ctx0, "a failed load moved the caller's current device"
    finally:
        drv.set_current(0)


@pytest.mark.parametrize("kind", ["copy", "record", "event", "sync", "stream", "hostalloc"])
def test_each_injected_failure_names_the_file_and_the_next_load_works(
    drv: Driver, tmp_path: Path, kind: str
) -> None:
    path, raw = make_file(tmp_path)
    if kind == "hostalloc":
        flashpack.release_pinned_pool()  # so that the load must allocate
    drv.fail(kind, 2 if kind in ("copy", "record", "stream") else 1)
    with pytest.raises(RuntimeError) as e:
        within(30, lambda: load(drv, path, threads=3, chunk_bytes=65536))
    drv.fail(kind, 0)
    assert str(path) in str(e.value), e.value
    _, regions = within(30, lambda: load(drv, path, threads=3, chunk_bytes=65536))
    assert_landed(drv, raw, regions)
    stats = flashpack.pinned_pool_stats()
    assert stats["allocated"] == stats["idle"], stats


POOL_ENV_SCRIPT = """
import json, os, sys
from pathlib import Path
import flashpack
from flashpack import _core
sys.path.insert(0, {tests!r})
from test_cuda_standin import Driver, LIB, load

out = {{"first": flashpack.pinned_pool_stats()["limit"]}}
os.environ["FLASHPACK_PINNED_POOL_BYTES"] = str(64 << 20)  # too late: read once
load(Driver(LIB), Path({path!r}))
out["after_env_change"] = flashpack.pinned_pool_stats()["limit"]
flashpack.set_pinned_pool_limit(32 << 20)
out["after_call"] = flashpack.pinned_pool_stats()["limit"]
print(json.dumps(out))
"""


def _run_pool_script(tmp_path: Path, env_value: str) -> subprocess.CompletedProcess[str]:
    path, _ = make_file(tmp_path)
    script = POOL_ENV_SCRIPT.format(tests=str(Path(__file__).parent), path=str(path))
    env = dict(os.environ, FLASHPACK_PINNED_POOL_BYTES=env_value)
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)


def test_the_pool_limit_is_read_from_the_environment_once(tmp_path: Path) -> None:
    p = _run_pool_script(tmp_path, str(8 << 20))
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out == {"first": 8 << 20, "after_env_change": 8 << 20, "after_call": 32 << 20}


def test_an_invalid_pool_limit_in_the_environment_is_a_clear_error(tmp_path: Path) -> None:
    p = _run_pool_script(tmp_path, "lots")
    assert p.returncode != 0
    assert "ValueError" in p.stderr and "FLASHPACK_PINNED_POOL_BYTES" in p.stderr, p.stderr


def test_an_interrupted_cuda_load_stops_and_leaves_no_copy_running(drv: Driver, tmp_path: Path) -> None:
    import signal

    class Alarm(Exception):
        pass

    def on_alarm(signum: int, frame: object) -> None:
        raise Alarm

    path, raw = make_file(tmp_path)
    drv.lib.standin_set_delay_us(ctypes.c_uint64(20_000))  # every copy completes 20 ms late
    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, 0.3)
    try:
        with pytest.raises(Alarm):
            load(drv, path, threads=1, chunk_bytes=4096)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        drv.lib.standin_set_delay_us(ctypes.c_uint64(300))
    calls = drv.record()["calls"]
    assert 0 < calls["cuMemcpyHtoDAsync"] < 200, "stopped part-way through the ~600 chunks"
    stats = flashpack.pinned_pool_stats()
    assert stats["allocated"] == stats["idle"], stats
    _, regions = load(drv, path)
    assert_landed(drv, raw, regions)


# ---- one job over many files (flashpack.load_file / load_checkpoint on CUDA) -------------------


def test_a_job_over_many_safetensors_files_lands_bit_exact_within_the_pool_limit(drv: Driver, tmp_path: Path) -> None:
    """What ``load_checkpoint(device="cuda")`` does: every tensor of every shard into its own
    device allocation, one job through one set of pinned staging buffers that stays within the
    pool's limit however many files there are."""
    import safetensors.torch as st

    dtypes = sorted(NAME_TO_DTYPE.values(), key=str)
    files, want = [], {}
    for k in range(3):
        sd = {f"s{k}.t{i}": random_tensor(d, (3000 * (i % 4 + 1) + 7 * k,), i + k) for i, d in enumerate(dtypes) if d in st._TYPES.values()}
        path = tmp_path / f"model-{k}.safetensors"
        st.save_file(sd, path)
        files.append(_core.open_weights(str(path)))
        want.update({n: path.read_bytes()[s:e] for n, _, _, _, s, e, _ in files[-1].tensors})
    ctx = drv.ctx(0)
    pieces, where = [], {}
    for k, f in enumerate(files):
        for name, _, _, _, start, end, _ in f.tensors:
            ptr = drv.alloc(ctx, end - start)
            pieces.append((k, start, end, ptr))
            where[name] = (ptr, end - start)
    flashpack.release_pinned_pool()
    leaked = flashpack.pinned_pool_stats()["leaked"]  # by earlier tests' injected failures
    limit = leaked + (1 << 20)
    _core.set_pinned_pool_limit(limit)
    try:
        _phases, io = _core.read_job_to_cuda(files, pieces, 0, threads=4, chunk_bytes=256 << 10)
        stats = flashpack.pinned_pool_stats()
    finally:
        _core.set_pinned_pool_limit(1 << 30)
    assert 0 < stats["allocated"] <= limit - leaked, stats  # allocated counts no leaked bytes
    assert io["direct_bytes"] + io["buffered_bytes"] >= sum(len(b) for b in want.values())
    for name, (ptr, n) in where.items():
        assert drv.read(ctx, ptr, n) == want[name], name
        drv.free(ctx, ptr)


def test_a_job_with_a_piece_outside_its_file_is_refused_naming_it(drv: Driver, tmp_path: Path) -> None:
    import safetensors.torch as st

    path = tmp_path / "m.safetensors"
    st.save_file({"w": torch.zeros(100)}, path)
    f = _core.open_weights(str(path))
    ptr = drv.alloc(drv.ctx(0), 1024)
    with pytest.raises(ValueError, match="m.safetensors"):
        _core.read_job_to_cuda([f], [(0, 0, 10_000, ptr)], 0)
    with pytest.raises(ValueError, match="overlap"):
        _, _, _, _, s, _, _ = f.tensors[0]
        _core.read_job_to_cuda([f], [(0, s, s + 64, ptr), (0, s + 32, s + 96, ptr)], 0)
    drv.free(drv.ctx(0), ptr)


# ---- a URL streamed to the device (flashpack.load_file("https://...", device="cuda")) ---------


def test_a_url_streams_to_the_device_bit_exact_through_the_pinned_pool(
    drv: Driver,
    nginx: Any,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What ``load_file(url, device="cuda")`` does: parallel ranged GETs into pinned staging
    buffers, copied to the device, within the pool's limit (never the whole file in host
    memory); a FlashPack file's checksums checked as the parts arrive."""
    import safetensors.torch as st

    monkeypatch.setenv("FLASHPACK_REMOTE_PART_BYTES", str(64 << 10))
    dtypes = [d for d in sorted(NAME_TO_DTYPE.values(), key=str) if d in st._TYPES.values()]
    sd = {f"t{i}": random_tensor(d, (100_000 + 999 * i,), i) for i, d in enumerate(dtypes)}
    st.save_file(sd, nginx.root / "cuda.safetensors")
    # Verified reads stage whole 4 MiB checksum chunks (two buffers at least): a larger file.
    sd["big"] = random_tensor(torch.float32, (6 << 20,), 99)
    pack_to_file(sd, nginx.root / "cuda.flashpack", None)
    ctx = drv.ctx(0)
    for name, verify, pool in (("cuda.safetensors", False, 1 << 20), ("cuda.flashpack", True, 9 << 20)):
        raw = (nginx.root / name).read_bytes()
        f = _core.open_weights(nginx.url(name))
        assert f.is_remote
        pieces = [(0, s, e, drv.alloc(ctx, e - s)) for _, _, _, _, s, e, _ in f.tensors if e > s]
        flashpack.release_pinned_pool()
        leaked = flashpack.pinned_pool_stats()["leaked"]
        limit = leaked + pool
        _core.set_pinned_pool_limit(limit)
        try:
            _core.read_job_to_cuda([f], pieces, 0, verify=verify)
            stats = flashpack.pinned_pool_stats()
        finally:
            _core.set_pinned_pool_limit(1 << 30)
        # Within a pool limit of a fraction of the file: it never was in host memory whole.
        assert 0 < stats["allocated"] <= limit - leaked < len(raw) // 2, stats
        for _, s, e, ptr in pieces:
            assert drv.read(ctx, ptr, e - s) == raw[s:e], f"{name}: bytes {s}..{e} differ"
            drv.free(ctx, ptr)
