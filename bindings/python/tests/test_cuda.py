"""CUDA loads: bit-exact for every dtype, pinned staging within its bound. The GPU tests skip,
with the reason, on machines without a GPU; the driver-missing behaviour is tested there instead."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from flashpack import _core, assign_from_file, pack_to_file, read_flashpack_file
from flashpack.deserialization import (
    iterate_from_flash_tensor,
    pinned_pool_stats,
    release_pinned_pool,
    set_pinned_pool_limit,
)
from flashpack.utils import NAME_TO_DTYPE
from test_roundtrip import random_tensor

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")

ALL_DTYPES = sorted(NAME_TO_DTYPE.values(), key=str)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(
        a.cpu().contiguous().reshape(-1).view(torch.uint8), b.cpu().contiguous().reshape(-1).view(torch.uint8)
    )


@needs_gpu
def test_every_dtype_several_blocks_odd_sizes(tmp_path: Path) -> None:
    # Sizes that are not multiples of 4 KiB or of any chunk size; one block per dtype.
    sd = {f"t{i}": random_tensor(d, (4097 * (i + 1) + 13,), i) for i, d in enumerate(ALL_DTYPES)}
    sd["big"] = random_tensor(torch.float32, ((48 << 20) // 4 + 1,), 99)
    path = tmp_path / "m.flashpack"
    pack_to_file(sd, path, None)
    for _ in range(2):  # two loads in a row reuse whatever the engine keeps between loads
        storage, meta = read_flashpack_file(path, device="cuda")
        loaded = dict(iterate_from_flash_tensor(storage, meta))
        assert all(t.is_cuda for t in loaded.values())
        for name, t in sd.items():
            assert same_bits(loaded[name], t), name
        stats = pinned_pool_stats()
        assert 0 < stats["peak"] <= stats["limit"], stats
        assert stats["allocated"] == stats["idle"], stats  # nothing held after the load
    before = pinned_pool_stats()
    storage, meta = read_flashpack_file(path, device="cuda")
    assert pinned_pool_stats()["peak"] == before["peak"], "a third load reuses the pool"
    assert release_pinned_pool() == before["allocated"]
    assert pinned_pool_stats()["allocated"] == 0


@needs_gpu
def test_load_after_torch_freed_memory(tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(1024, 1024), torch.nn.Linear(1024, 7))
    path = tmp_path / "m.flashpack"
    pack_to_file(model, path, None)
    scratch = [torch.randn(4 << 20, device="cuda") * 2 for _ in range(8)]  # kernels using memory...
    del scratch  # ...then freed: the caching allocator hands this memory to the load
    fresh = torch.nn.Sequential(torch.nn.Linear(1024, 1024), torch.nn.Linear(1024, 7))
    assign_from_file(fresh, path, device="cuda")
    torch.cuda.synchronize()
    for (name, a), b in zip(fresh.state_dict().items(), model.state_dict().values()):
        assert a.is_cuda and same_bits(a, b), name


@needs_gpu
def test_pinned_memory_stays_within_a_small_limit(tmp_path: Path) -> None:
    sd = {"w": random_tensor(torch.bfloat16, ((40 << 20) // 2 + 3,), 1), "i": random_tensor(torch.int32, (1001,), 2)}
    path = tmp_path / "m.flashpack"
    pack_to_file(sd, path, None)
    release_pinned_pool()
    set_pinned_pool_limit(6 << 20)
    try:
        storage, meta = read_flashpack_file(path, device="cuda:0")
        loaded = dict(iterate_from_flash_tensor(storage, meta))
        assert all(same_bits(loaded[k], v) for k, v in sd.items())
        # Everything the load allocated is idle again, all of it within the limit.
        stats = pinned_pool_stats()
        assert 0 < stats["allocated"] == stats["idle"] <= 6 << 20, stats
    finally:
        set_pinned_pool_limit(1 << 30)
        release_pinned_pool()


@needs_gpu
def test_a_load_to_another_device_leaves_torchs_current_device(tmp_path: Path) -> None:
    path = tmp_path / "m.flashpack"
    pack_to_file({"w": torch.randn(1000)}, path, None)
    last = torch.cuda.device_count() - 1
    torch.cuda.set_device(0)
    storage, meta = read_flashpack_file(path, device=f"cuda:{last}")
    assert storage.device == torch.device("cuda", last)
    assert torch.cuda.current_device() == 0


@pytest.mark.skipif(_core.cuda_available(), reason="the CUDA driver is present here")
def test_without_a_driver_cuda_loads_fail_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "m.flashpack"
    pack_to_file({"w": torch.arange(10.0)}, path, None)
    handle = _core.open(str(path))
    with pytest.raises(RuntimeError, match="CUDA driver not found"):
        handle.to_cuda(0, [(0, 40, 4096)])
    assert release_pinned_pool() == 0
    assert pinned_pool_stats()["allocated"] == 0
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            read_flashpack_file(path, device="cuda")


@needs_gpu
def test_nccl_one_gpu_smoke(tmp_path: Path) -> None:
    """Distributed loading over NCCL on one GPU, both strategies (a subprocess keeps the process
    group out of this test process)."""
    import subprocess
    import sys
    import textwrap

    path = tmp_path / "m.flashpack"
    sd = {"w": random_tensor(torch.bfloat16, ((9 << 20) // 2 + 5,), 3), "i": random_tensor(torch.int64, (77,), 4)}
    pack_to_file(sd, path, None)
    script = textwrap.dedent(f"""
        import os, torch, torch.distributed as dist
        from flashpack.deserialization import iterate_from_flash_tensor, read_flashpack_file_distributed, maybe_init_distributed
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29577", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        maybe_init_distributed(device=torch.device("cuda"))
        assert dist.get_backend() == "nccl", dist.get_backend()
        for sharded in (False, True):
            storage, meta = read_flashpack_file_distributed({str(path)!r}, device="cuda", sharded=sharded, verify=True)
            got = dict(iterate_from_flash_tensor(storage, meta))
            print(sharded, {{k: v.is_cuda for k, v in got.items()}}, storage.io)
            torch.save({{k: v.cpu() for k, v in got.items()}}, {str(tmp_path)!r} + f"/out{{int(sharded)}}.pt")
        dist.destroy_process_group()
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for k in (0, 1):
        got = torch.load(tmp_path / f"out{k}.pt")
        assert all(same_bits(got[n], t) for n, t in sd.items())
