"""CUDA loads: bit-exact for every dtype. Skipped, with the reason, on machines without a GPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from flashpack import assign_from_file, pack_to_file, read_flashpack_file
from flashpack.deserialization import iterate_from_flash_tensor
from flashpack.utils import NAME_TO_DTYPE
from test_roundtrip import random_tensor

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")

ALL_DTYPES = sorted(NAME_TO_DTYPE.values(), key=str)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(
        a.cpu().contiguous().reshape(-1).view(torch.uint8), b.cpu().contiguous().reshape(-1).view(torch.uint8)
    )


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
