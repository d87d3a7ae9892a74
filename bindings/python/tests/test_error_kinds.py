"""Each kind of engine error reaches Python as its own exception class: a missing file is
FileNotFoundError, a corrupt file ValueError, what this build cannot do NotImplementedError."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch

from flashpack import pack_to_file, read_flashpack_file
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
