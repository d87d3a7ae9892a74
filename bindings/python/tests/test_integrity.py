"""Checksums from Python: written by default, checked by verify_flashpack_file and by loads with
verify=True (lazy, eager, assign_from_file); a flipped byte names the tensor it hits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from flashpack import assign_from_file, get_flashpack_file_metadata, pack_to_file, read_flashpack_file
from flashpack.deserialization import iterate_from_flash_tensor, verify_flashpack_file


def _model() -> torch.nn.Module:
    # 2.weight is 12 MiB: checksum chunks (4 MiB) in its middle hold nothing else.
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 3072))


def _flip(path: Path, at: int) -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        b = f.read(1)
        f.seek(at)
        f.write(bytes([b[0] ^ 0x01]))


def _byte_range(path: Path, name: str) -> tuple[int, int]:
    meta = get_flashpack_file_metadata(path)
    rec = next(r for r in meta["index"] if r["name"] == name)
    start = rec["offset"] * 4  # one float32 block at offset 0
    return start, start + rec["length"] * 4


def test_checksums_are_written_and_verify(tmp_path: Path) -> None:
    path = tmp_path / "m.flashpack"
    pack_to_file(_model(), path)
    meta = get_flashpack_file_metadata(path)
    assert meta["checksums"]["algorithm"] == "xxh3-64"
    report = verify_flashpack_file(path)
    assert report["chunks_checked"] == len(meta["checksums"]["digests"]) >= 1
    assert report["tensors"] == 4 and report["algorithm"] == "xxh3-64"
    for eager in (False, True):
        storage, meta = read_flashpack_file(path, eager=eager, verify=True)
        got = dict(iterate_from_flash_tensor(storage, meta))
        for name, t in _model().state_dict().items():
            assert torch.equal(got[name], t), name


def test_a_flipped_byte_is_reported_with_its_tensor(tmp_path: Path) -> None:
    path = tmp_path / "m.flashpack"
    pack_to_file(_model(), path)
    start, end = _byte_range(path, "2.weight")
    _flip(path, (start + end) // 2)
    with pytest.raises(ValueError, match=r"checksum mismatch.*'2\.weight'"):
        verify_flashpack_file(path)
    for eager in (False, True):
        with pytest.raises(ValueError, match=r"m\.flashpack.*checksum mismatch"):
            read_flashpack_file(path, eager=eager, verify=True)
    fresh = _model()
    with pytest.raises(ValueError, match="checksum mismatch"):
        assign_from_file(fresh, path, verify=True)
    # Checking is opt-in: a plain load still goes through (and shows the flipped weight).
    assign_from_file(fresh, path)
    assert not torch.equal(fresh[2].weight, _model()[2].weight)


def test_files_without_checksums(tmp_path: Path) -> None:
    path = tmp_path / "m.flashpack"
    pack_to_file(_model(), path, checksums=False)
    assert "checksums" not in json.dumps(get_flashpack_file_metadata(path))
    assert verify_flashpack_file(path)["chunks_checked"] == 0
    with pytest.raises(ValueError, match="no checksums to verify"):
        assign_from_file(_model(), path, verify=True)
    assign_from_file(_model(), path)


def test_verify_rejects_a_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "m.flashpack"
    pack_to_file(_model(), path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="m.flashpack"):
        verify_flashpack_file(path)
