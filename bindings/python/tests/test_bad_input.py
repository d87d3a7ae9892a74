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


# ---------------------------------------------------------------------------------------------
# Odd paths and files


def test_bytes_paths_load_like_str_paths(tmp_path: Path) -> None:
    path = packed(tmp_path)
    raw = bytes(path)
    expected = revert_from_file(path)
    assert flashpack.is_flashpack_file(raw)
    assert flashpack.get_flashpack_file_metadata(raw) == flashpack.get_flashpack_file_metadata(path)
    for eager in (False, True):
        storage, meta = read_flashpack_file(raw, eager=eager)
        got = dict(flashpack.iterate_from_flash_tensor(storage, meta))
        assert all(torch.equal(got[n], t) for n, t in expected.items())
    assert all(torch.equal(revert_from_file(raw)[n], t) for n, t in expected.items())
    model = torch.nn.Linear(300, 300)
    pack_to_file(model, bytes(tmp_path / "linear.flashpack"))
    fresh = torch.nn.Linear(300, 300)
    assign_from_file(fresh, bytes(tmp_path / "linear.flashpack"))
    assert torch.equal(fresh.weight, model.weight)
    assert flashpack.deserialization.verify_flashpack_file(raw)["chunks_checked"] > 0


def test_a_non_utf8_bytes_path_works(tmp_path: Path) -> None:
    raw = bytes(tmp_path) + b"/caf\xe9.flashpack"  # Latin-1 bytes: not valid UTF-8
    pack_to_file({"w": torch.arange(6.0)}, raw)
    assert torch.equal(revert_from_file(raw)["w"], torch.arange(6.0))


@pytest.mark.parametrize(
    ("key", "error", "named"),
    [
        ("lone\ud800surrogate", ValueError, "lone\\ud800surrogate"),
        (5, TypeError, "5"),
        (("a", "b"), TypeError, "('a', 'b')"),
    ],
)
def test_a_bad_key_gets_an_error_naming_it(tmp_path: Path, key: Any, error: type, named: str) -> None:
    dest = tmp_path / "m.flashpack"
    with pytest.raises(error) as info:
        pack_to_file({"ok": torch.ones(2), key: torch.ones(3)}, dest)
    assert named in str(info.value)
    assert str(dest) in str(info.value)
    assert not dest.exists()


def _split(path: Path) -> tuple[bytes, bytes]:
    """(payload, everything after it) of a file we wrote."""
    data = path.read_bytes()
    (json_len,) = struct.unpack("<Q", data[-16:-8])
    cut = len(data) - 16 - json_len
    return data[:cut], data[cut:]


@pytest.mark.parametrize("version", ["v3", "v4"])
@pytest.mark.parametrize("how", ["prepended", "inserted", "appended"])
def test_a_payload_longer_than_the_footer_declares_is_refused(tmp_path: Path, version: str, how: str) -> None:
    sd: dict[str, torch.Tensor] = {"w": torch.randn(64, 64)}
    if version == "v4":
        sd["ids"] = torch.arange(10)
    path = tmp_path / "m.flashpack"
    pack_to_file(sd, path, None)
    payload, tail = _split(path)
    extra = b"\x01" * 256
    n = len(payload)
    damaged = {
        "prepended": extra + payload,
        "inserted": payload[: n // 2] + extra + payload[n // 2 :],
        "appended": payload + extra,
    }[how]
    path.write_bytes(damaged + tail)
    for load in (
        lambda: read_flashpack_file(path),
        lambda: read_flashpack_file(path, eager=True),
        lambda: flashpack.get_flashpack_file_metadata(path),
    ):
        with pytest.raises(ValueError) as info:
            load()
        text = str(info.value)
        assert str(path) in text and str(n) in text and str(n + len(extra)) in text, text
    assert not flashpack.is_flashpack_file(path)


FIFO_CALLS = {
    "is_flashpack_file": "flashpack.is_flashpack_file(path)",
    "get_flashpack_file_metadata": "flashpack.get_flashpack_file_metadata(path)",
    "read_flashpack_file": "flashpack.read_flashpack_file(path)",
    "read_flashpack_file(eager)": "flashpack.read_flashpack_file(path, eager=True)",
    "revert_from_file": "flashpack.revert_from_file(path)",
    "assign_from_file": "flashpack.assign_from_file(torch.nn.Linear(2, 2), path)",
    "verify_flashpack_file": "flashpack.deserialization.verify_flashpack_file(path)",
    "from_flashpack": "Net.from_flashpack(path)",
}

FIFO_SCRIPT = """
import json, sys, torch, flashpack
class Net(torch.nn.Module, flashpack.FlashPackMixin):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 2)
path = sys.argv[1]
out = {}
for name, call in json.loads(sys.argv[2]).items():
    try:
        out[name] = {"returned": repr(eval(call))[:80]}
    except Exception as e:
        out[name] = {"class": type(e).__name__, "message": str(e)}
    print(name, flush=True, file=sys.stderr)
print(json.dumps(out))
"""


def test_a_fifo_is_refused_at_once_by_every_load_api_and_the_cli(tmp_path: Path) -> None:
    """Each call runs in a child with a deadline: a FIFO that blocks open() would hang it."""
    import os
    import subprocess
    import sys

    fifo = tmp_path / "weights.flashpack"
    os.mkfifo(fifo)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", FIFO_SCRIPT, str(fifo), json.dumps(FIFO_CALLS)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except subprocess.TimeoutExpired as e:
        done = (e.stderr or b"").decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        pytest.fail(f"blocked on a FIFO; calls that returned first: {done.split()}")
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert results.pop("is_flashpack_file") == {"returned": "False"}
    for name, got in results.items():
        assert got.get("class") in ("OSError", "ValueError"), f"{name}: {got}"
        assert str(fifo) in got["message"] and "not a regular file" in got["message"], f"{name}: {got}"
    try:
        cli = subprocess.run(
            [sys.executable, "-m", "flashpack", "verify", str(fifo)], capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        pytest.fail("`flashpack verify` blocked on a FIFO")
    assert cli.returncode == 1 and "not a regular file" in cli.stderr, cli.stderr


WRITE_COUNT_SCRIPT = """
import sys, torch, flashpack
sd = {"w": torch.ones(64 << 20, dtype=torch.uint8)}
def written():
    with open("/proc/self/io") as f:
        return int(next(l for l in f if l.startswith("wchar:")).split()[1])
before = written()
try:
    flashpack.pack_to_file(sd, sys.argv[1])
    print("PACKED")
except OSError as e:
    print(type(e).__name__, e.errno, written() - before)
"""


@pytest.mark.parametrize("what", ["a directory", "a name too long"])
def test_a_bad_pack_destination_is_refused_before_the_payload_is_written(tmp_path: Path, what: str) -> None:
    """The child counts the bytes it passed to write calls (/proc/self/io) while packing 64 MiB."""
    import subprocess
    import sys

    dest = tmp_path / "a-directory" if what == "a directory" else tmp_path / ("x" * 300)
    if what == "a directory":
        dest.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", WRITE_COUNT_SCRIPT, str(dest)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    kind, _errno, written = proc.stdout.split()[-3:]
    assert kind in ("IsADirectoryError", "OSError"), proc.stdout
    assert int(written) < 16 << 20, f"{what}: {written} bytes written before the destination was refused"
