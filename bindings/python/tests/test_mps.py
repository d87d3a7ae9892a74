"""Loads onto Apple's MPS device: an eager host read, then one copy per block. The copy test
skips, with the reason, where torch has no MPS device (every non-Mac machine); there the clear
error is tested instead."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from flashpack import pack_to_file, read_flashpack_file
from flashpack.deserialization import iterate_from_flash_tensor
from test_roundtrip import random_tensor

has_mps = torch.backends.mps.is_available()

# MPS has no float64 (nor 64-bit complex); the dtypes it holds, one block each.
MPS_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.uint8, torch.bool]


@pytest.mark.skipif(not has_mps, reason="torch sees no MPS device on this machine")
def test_blocks_reach_mps_bit_exact(tmp_path: Path) -> None:
    sd = {f"t{i}": random_tensor(d, (4097 * (i + 1) + 13,), i) for i, d in enumerate(MPS_DTYPES)}
    path = tmp_path / "m.flashpack"
    pack_to_file(sd, path, None)
    storage, meta = read_flashpack_file(path, device="mps", verify=True)
    assert all(b.device.type == "mps" for b in storage.blocks)
    got = dict(iterate_from_flash_tensor(storage, meta))
    assert set(got) == set(sd)
    for name, t in sd.items():
        # Bit patterns, not values: random bits include NaNs, which never compare equal.
        assert got[name].dtype == t.dtype and got[name].shape == t.shape, name
        assert torch.equal(got[name].cpu().reshape(-1).view(torch.uint8), t.reshape(-1).view(torch.uint8)), name


@pytest.mark.skipif(has_mps, reason="this machine has an MPS device (the copy test runs instead)")
def test_without_mps_the_error_names_the_file_and_device(tmp_path: Path) -> None:
    path = tmp_path / "m.flashpack"
    pack_to_file({"w": torch.ones(3)}, path, None)
    with pytest.raises(RuntimeError, match=r"m\.flashpack: cannot load to mps: torch sees no MPS device"):
        read_flashpack_file(path, device="mps")
