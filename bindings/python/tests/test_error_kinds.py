"""Each kind of engine error reaches Python as its own exception class: a missing file is
FileNotFoundError, a corrupt file ValueError, what this build cannot do NotImplementedError."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch

from flashpack import pack_to_file, read_flashpack_file, safe_open
from flashpack.deserialization import verify_flashpack_file


def _packed(tmp_path: Path) -> Path:
    path = tmp_path / "m.flashpack"
    pack_to_file(torch.nn.Linear(8, 4), path)
    return path


def _rewrite_footer(path: Path, edit) -> None:
    data = path.read_bytes()
    (json_len,) = struct.unpack("<Q", data[-16:-8])
    payload = data[: len(data) - 16 - json_len]
    footer = json.loads(data[len(payload) : len(data) - 16])
    edit(footer)
    text = json.dumps(footer, separators=(",", ":")).encode()
    path.write_bytes(payload + text + struct.pack("<Q", len(text)) + data[-8:])


def test_a_missing_file_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_flashpack_file(tmp_path / "nothing.flashpack")


def test_a_corrupt_file_is_a_value_error(tmp_path: Path) -> None:
    path = _packed(tmp_path)
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(ValueError, match="m.flashpack"):
        read_flashpack_file(path)


def test_a_checksum_algorithm_this_build_does_not_know_is_not_implemented(tmp_path: Path) -> None:
    path = _packed(tmp_path)
    _rewrite_footer(path, lambda f: f["checksums"].update(algorithm="sha-512"))
    with pytest.raises(NotImplementedError, match="sha-512"):
        verify_flashpack_file(path)


def _safetensors(path: Path, header: dict, data: bytes) -> Path:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


def test_a_corrupt_safetensors_header_is_a_value_error_naming_file_and_tensor(tmp_path: Path) -> None:
    # 'w' says float32 [4] (16 bytes) over an 8-byte range.
    path = _safetensors(tmp_path / "bad.safetensors", {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}, bytes(8))
    with pytest.raises(ValueError, match=r"bad\.safetensors.*tensor 'w'"):
        safe_open(path, framework="pt")


def test_a_safetensors_dtype_torch_lacks_is_not_implemented_when_asked_for(tmp_path: Path) -> None:
    # F6_E2M3 (6-bit MXFP6) is valid safetensors that torch has no dtype for: the file opens, the
    # tensor is refused by name (F4, 4-bit MXFP4, loads as float4_e2m1fn_x2).
    header = {"q": {"dtype": "F6_E2M3", "shape": [4], "data_offsets": [0, 3]}}
    path = _safetensors(tmp_path / "f6.safetensors", header, bytes(3))
    with safe_open(path, framework="pt") as f:
        assert f.keys() == ["q"]
        with pytest.raises(NotImplementedError, match=r"f6\.safetensors.*tensor 'q'.*F6_E2M3"):
            f.get_tensor("q")
