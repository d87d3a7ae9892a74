"""Crafted and damaged files: each gets a ValueError/OSError naming the file and the problem."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
import torch

import flashpack
from flashpack import assign_from_file, pack_to_file, read_flashpack_file, revert_from_file

MAGIC = b"FLASHPK\0"


def write_raw(path: Path, payload: bytes, footer: dict[str, Any] | bytes, magic: bytes = MAGIC) -> Path:
    body = footer if isinstance(footer, bytes) else json.dumps(footer, separators=(",", ":")).encode()
    path.write_bytes(payload + body + struct.pack("<Q", len(body)) + magic)
    return path


def v4(blocks: list[dict[str, Any]], index: list[dict[str, Any]]) -> dict[str, Any]:
    return {"format": "flashpack_v4", "align_bytes": 0, "macroblocks": blocks, "index": index}


def block(dtype: str, offset: int, elems: int, size: int = 4) -> dict[str, Any]:
    return {"dtype": dtype, "offset_bytes": offset, "length_bytes": elems * size, "length_elems": elems}


def rec(name: str, shape: list[int], offset: int, length: int, mb: int = 0) -> dict[str, Any]:
    return {"name": name, "shape": shape, "offset": offset, "length": length, "macroblock": mb}


CASES: dict[str, tuple[bytes, Any, bytes, str]] = {
    "bad magic": (b"\0" * 16, v4([block("float32", 0, 4)], [rec("w", [4], 0, 4)]), b"NOTAPACK", "bad magic"),
    "json length past file": (b"", b"", MAGIC, ""),  # replaced below with a huge length
    "invalid json": (b"\0" * 16, b"{not json", MAGIC, "not valid UTF-8 JSON"),
    "invalid utf8": (b"\0" * 16, b'{"format":"\xff"}', MAGIC, "not valid UTF-8 JSON"),
    "unknown format": (b"\0" * 16, {"format": "flashpack_v9", "index": []}, MAGIC, "unknown format"),
    "unknown dtype": (b"\0" * 16, v4([block("float33", 0, 4)], [rec("w", [4], 0, 4)]), MAGIC, "unknown dtype \"float33\""),
    "block past payload": (b"\0" * 16, v4([block("float32", 0, 8)], [rec("w", [8], 0, 8)]), MAGIC, "past the end"),
    "offset past payload": (b"\0" * 16, v4([block("float32", 64, 1)], [rec("w", [1], 0, 1)]), MAGIC, "past the end"),
    "overlapping blocks": (
        b"\0" * 32,
        v4([block("float32", 0, 4), block("int32", 8, 4)], [rec("w", [4], 0, 4), rec("i", [4], 0, 4, 1)]),
        MAGIC,
        "overlap",
    ),
    "record past block": (b"\0" * 16, v4([block("float32", 0, 4)], [rec("w", [4], 2, 4)]), MAGIC, "tensor 'w'"),
    "shape/length mismatch": (b"\0" * 16, v4([block("float32", 0, 4)], [rec("w", [3], 0, 4)]), MAGIC, "tensor 'w': shape [3]"),
    "duplicate names": (
        b"\0" * 16,
        v4([block("float32", 0, 4)], [rec("w", [2], 0, 2), rec("w", [2], 2, 2)]),
        MAGIC,
        "'w' appears more than once",
    ),
    "bad macroblock index": (b"\0" * 16, v4([block("float32", 0, 4)], [rec("w", [4], 0, 4, 3)]), MAGIC, "macroblock 3"),
    "misaligned record": (
        b"\0" * 256,
        {**v4([block("float32", 0, 64)], [rec("w", [4], 3, 4)]), "align_bytes": 128},
        MAGIC,
        "not aligned",
    ),
    "negative number": (b"\0" * 16, v4([block("float32", 0, 4)], [rec("w", [4], -1, 4)]), MAGIC, "non-negative"),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("loader", ["metadata", "lazy", "eager", "assign"])
def test_crafted_file_is_rejected_with_a_clear_error(tmp_path: Path, case: str, loader: str) -> None:
    payload, footer, magic, message = CASES[case]
    path = tmp_path / "bad.flashpack"
    if case == "json length past file":
        path.write_bytes(b"\0" * 32 + struct.pack("<Q", 2**64 - 1) + MAGIC)
        message = "larger than"
    else:
        write_raw(path, payload, footer, magic)
    assert not flashpack.is_flashpack_file(path)
    with pytest.raises(ValueError) as info:
        if loader == "metadata":
            flashpack.get_flashpack_file_metadata(path)
        elif loader == "lazy":
            read_flashpack_file(path)
        elif loader == "eager":
            read_flashpack_file(path, eager=True)
        else:
            assign_from_file(torch.nn.Linear(2, 2), path)
    text = str(info.value)
    assert str(path) in text
    assert message in text


def packed(tmp_path: Path) -> Path:
    path = tmp_path / "good.flashpack"
    pack_to_file({"w": torch.randn(300, 300), "b": torch.arange(10)}, path, None)
    return path


@pytest.mark.parametrize("cut", [1, 16, 100, 5000, 200_000])
def test_truncated_file(tmp_path: Path, cut: int) -> None:
    path = packed(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:-cut])
    with pytest.raises(ValueError, match=str(path)):
        revert_from_file(path)


def test_tiny_and_missing_files(tmp_path: Path) -> None:
    tiny = tmp_path / "tiny"
    tiny.write_bytes(b"FLASHPK")
    with pytest.raises(ValueError, match="too small"):
        revert_from_file(tiny)
    with pytest.raises(OSError, match="nope"):
        revert_from_file(tmp_path / "nope")
    assert not flashpack.is_flashpack_file(tmp_path / "nope")


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 3)
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))


def test_missing_tensor_with_strict(tmp_path: Path) -> None:
    path = tmp_path / "m.flashpack"
    pack_to_file({"lin.weight": torch.randn(3, 4), "steps": torch.tensor(3)}, path, None)
    with pytest.raises(ValueError, match=r"missing 1 parameters: \['lin.bias'\]"):
        assign_from_file(Net(), path, strict=True)
    net = Net()
    assign_from_file(net, path, strict=False)  # non-strict: what is there is loaded
    assert net.steps.item() == 3


def test_extra_tensor_with_strict(tmp_path: Path) -> None:
    path = tmp_path / "m.flashpack"
    net = Net()
    sd = dict(net.state_dict(), extra=torch.ones(2))
    pack_to_file(sd, path, None)
    with pytest.raises(ValueError, match="match nothing in the model: \\['extra'\\]"):
        assign_from_file(Net(), path)
    assign_from_file(Net(), path, ignore_names=["extra"])


def test_wrong_dtype_and_shape(tmp_path: Path) -> None:
    path = tmp_path / "m.flashpack"
    sd = dict(Net().state_dict())
    sd["steps"] = torch.tensor(2.5)
    pack_to_file(sd, path, None)
    with pytest.raises(ValueError, match="dtype mismatch for buffer 'steps'"):
        assign_from_file(Net(), path)
    net = Net()
    assign_from_file(net, path, coerce_dtype=True)
    assert net.steps.dtype == torch.int64 and net.steps.item() == 2

    sd = dict(Net().state_dict())
    sd["lin.weight"] = torch.randn(4, 4)
    pack_to_file(sd, path, None)
    with pytest.raises(ValueError, match=r"shape mismatch for parameter 'lin.weight'"):
        assign_from_file(Net(), path)
