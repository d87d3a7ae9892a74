"""Crash safety at the Python API: packs killed with SIGKILL or racing each other, truncated
files, files truncated under a lazy load, and crafted footers with huge sizes.

Children run crash_worker.py with this interpreter. What the tests observe (temp files left
behind, which writer won) is printed; run with ``-s`` to see it.
"""

from __future__ import annotations

import faulthandler
import hashlib
import json
import os
import random
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import flashpack
from flashpack import _core

HERE = Path(__file__).resolve().parent
WORKER = str(HERE / "crash_worker.py")
sys.path.insert(0, str(HERE))

from crash_worker import payload_bytes, state_dict  # noqa: E402

MAGIC = b"FLASHPK\0"
BIG_MIB = 300


@pytest.fixture(autouse=True)
def _no_hang() -> Iterator[None]:
    """A test that hangs dumps every thread's stack and exits instead of blocking the run."""
    faulthandler.dump_traceback_later(240, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def assert_loads_as(path: Path, expected: dict[str, torch.Tensor], what: str) -> None:
    loaded = flashpack.revert_from_file(path)
    assert sorted(loaded) == sorted(expected), f"{what}: names differ"
    for name, t in expected.items():
        assert loaded[name].dtype == t.dtype and torch.equal(loaded[name], t), f"{what}: tensor {name!r} differs"


def equals(path: Path, expected: dict[str, torch.Tensor]) -> bool:
    loaded = flashpack.revert_from_file(path)
    return sorted(loaded) == sorted(expected) and all(torch.equal(loaded[n], t) for n, t in expected.items())


def start_packer(seed: int, mib: int, dest: Path) -> subprocess.Popen[str]:
    """A child that builds state_dict(seed, mib), says READY, and packs it to dest on a stdin line."""
    proc = subprocess.Popen(
        [sys.executable, WORKER, "pack", str(seed), str(mib), str(dest)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "READY", f"packer {seed} did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}"
    return proc


def temp_files(directory: Path) -> list[Path]:
    return sorted(directory.glob(".packtmp_*"))


def packing_file(pid: int, directory: Path) -> Path | None:
    """The file a packer is writing: its unnamed O_TMPFILE in `directory` (seen through the
    packer's /proc/<pid>/fd link), or a named .packtmp_* file where O_TMPFILE is not used."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        fds = []
    for fd in fds:
        link = Path(f"/proc/{pid}/fd/{fd}")
        try:
            target = os.readlink(link)
        except OSError:
            continue
        if target.startswith(f"{directory}/#") or target.startswith(f"{directory}/.packtmp_"):
            return link
    tmps = temp_files(directory)
    return tmps[0] if tmps else None


def unnamed_temp_files_supported(directory: Path) -> bool:
    try:
        fd = os.open(directory, os.O_TMPFILE | os.O_RDWR, 0o600)
    except (OSError, AttributeError):
        return False
    os.close(fd)
    return os.path.isdir("/proc/self/fd")


def allocated(path: Path) -> int:
    try:
        return os.stat(path).st_blocks * 512
    except FileNotFoundError:
        return 0


# ---------------------------------------------------------------------------------------------
# kill -9 while packing over an existing file
# ---------------------------------------------------------------------------------------------

# When to kill: right after the pack call starts, as soon as its temp file exists, and once a
# given share of the payload has been written to the temp file.
KILL_POINTS = ["right after start", "temp file created", "40% written", "95% written"]


@pytest.mark.parametrize("when", KILL_POINTS)
def test_kill_9_while_packing_over_a_file_leaves_the_old_file_intact(tmp_path: Path, when: str) -> None:
    dest = tmp_path / "model.flashpack"
    old = state_dict(1, 1)
    flashpack.pack_to_file(old, dest)
    old_hash = sha256(dest)
    new_payload = payload_bytes(state_dict(2, 0)) + (BIG_MIB << 20)

    proc = start_packer(2, BIG_MIB, dest)
    assert proc.stdin is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()
    deadline = time.monotonic() + 60
    if when != "right after start":
        share = {"temp file created": 0.0, "40% written": 0.40, "95% written": 0.95}[when]
        while True:
            staged = packing_file(proc.pid, tmp_path)
            if staged is not None and allocated(staged) >= share * new_payload:
                break
            if proc.poll() is not None:
                # Only the last kill point may lose the race with the end of the pack.
                assert when == "95% written", f"{when}: the packer ended before the kill point ({proc.returncode})"
                break
            assert time.monotonic() < deadline, f"{when}: the kill point never came"
            time.sleep(0.0005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()
    killed = proc.returncode == -signal.SIGKILL

    leftovers = temp_files(tmp_path)
    report = [f"{p.name}: {p.stat().st_size} bytes, valid={flashpack.is_flashpack_file(p)}" for p in leftovers]
    if killed and sha256(dest) == old_hash:
        outcome = "old file intact"
    else:
        outcome = f"killed={killed}, destination replaced"
    print(f"\nkill -9 {when}: {outcome}; temp files left: {report or 'none'}")

    # The destination is always one complete file: the old one, unless the rename had already
    # happened (only possible at the last kill point), and then exactly the new one.
    if when == "95% written" and not (killed and sha256(dest) == old_hash):
        assert_loads_as(dest, state_dict(2, BIG_MIB), f"{when}: replaced destination")
    else:
        assert killed, f"{when}: the packer was not killed (exit {proc.returncode})"
        assert sha256(dest) == old_hash, f"{when}: the old file's bytes changed"
        assert_loads_as(dest, old, f"{when}: old file")
    # Nothing is left behind: the packer writes an unnamed O_TMPFILE that gets a name only when
    # complete (a named temp file only where the filesystem lacks O_TMPFILE; that one never
    # shadows the destination either: a hidden name no '*.flashpack' lookup finds).
    if unnamed_temp_files_supported(tmp_path):
        assert not leftovers, f"{when}: a killed pack left {report}"
    assert sorted(tmp_path.glob("*.flashpack")) == [dest]
    for p in leftovers:
        assert p.name.startswith(".packtmp_") and not p.name.endswith(".flashpack"), p.name
    assert flashpack.get_flashpack_file_metadata(dest)["index"], "the destination lost its footer"


# ---------------------------------------------------------------------------------------------
# Two packers, one destination
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("round_", [0, 1])
def test_two_processes_packing_to_one_destination_leave_exactly_one_of_them(tmp_path: Path, round_: int) -> None:
    dest = tmp_path / "model.flashpack"
    flashpack.pack_to_file(state_dict(9, 1), dest)  # an existing file to replace
    mib = 150
    seeds = (11 + 2 * round_, 12 + 2 * round_)
    procs = [start_packer(seed, mib, dest) for seed in seeds]
    for proc in procs if round_ == 0 else reversed(procs):
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"a packer failed: {err}"

    matches = [seed for seed in seeds if equals(dest, state_dict(seed, mib))]
    print(f"\nconcurrent packs {seeds}: the file holds seed {matches}; temp files left: {temp_files(tmp_path)}")
    assert len(matches) == 1, f"the destination equals {len(matches)} of the two inputs (a mix, or neither)"
    assert temp_files(tmp_path) == [], "a finished pack left its temp file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.flashpack"]


# ---------------------------------------------------------------------------------------------
# Truncated files
# ---------------------------------------------------------------------------------------------


def test_a_file_truncated_at_50_random_points_is_rejected_with_a_clear_error(tmp_path: Path) -> None:
    good = tmp_path / "good.flashpack"
    g = torch.Generator().manual_seed(5)
    flashpack.pack_to_file(
        {
            "w": torch.randn(300, 300, generator=g),
            "h": torch.randn(5000, generator=g).half(),
            "ids": torch.arange(999),
            "mask": torch.rand(4097, generator=g) > 0.5,
        },
        good,
    )
    data = good.read_bytes()
    rng = random.Random(20240501)
    points = sorted({rng.randrange(len(data)) for _ in range(50)} | {0, 15, 16, len(data) - 8, len(data) - 1})
    bad = tmp_path / "truncated.flashpack"
    readers = {
        "get_flashpack_file_metadata": lambda: flashpack.get_flashpack_file_metadata(bad),
        "lazy": lambda: flashpack.read_flashpack_file(bad),
        "eager": lambda: flashpack.read_flashpack_file(bad, eager=True),
        "eager buffered": lambda: _core.load(str(bad), eager=True, io="buffered", chunk_bytes=1 << 16),
        "eager direct": lambda: _core.load(str(bad), eager=True, io="direct", chunk_bytes=1 << 16),
        "open": lambda: _core.open(str(bad)),
    }
    for cut in points:
        bad.write_bytes(data[:cut])
        for what, read in readers.items():
            with pytest.raises(ValueError) as info:
                read()
            text = str(info.value)
            assert text.startswith(f"{bad}: "), f"cut at {cut}, {what}: the error does not name the file: {text}"
            assert "bad magic" in text or "too small" in text, f"cut at {cut}, {what}: {text}"
        assert not flashpack.is_flashpack_file(bad)


# ---------------------------------------------------------------------------------------------
# A lazy load of a file truncated in place
# ---------------------------------------------------------------------------------------------


def test_a_lazy_load_of_a_file_truncated_in_place_dies_with_sigbus_by_design(tmp_path: Path) -> None:
    """CPU loads are lazy by default: tensors are views of a private mapping of the file. If another
    process truncates the file in place, touching the lost pages raises SIGBUS and the process dies;
    Python cannot catch it. That is the contract of lazy loading (``eager=True`` reads everything
    into owned memory for files that may change). Writers that replace files by rename, as
    ``pack_to_file`` does, never cause it."""
    path = tmp_path / "model.flashpack"
    flashpack.pack_to_file(state_dict(3, 4), path)
    proc = subprocess.run(
        [sys.executable, WORKER, "lazy-truncate", str(path)], capture_output=True, text=True, timeout=120
    )
    print(f"\nlazy load, file truncated in place: exit {proc.returncode}, stdout {proc.stdout.split()}")
    assert "TRUNCATED" in proc.stdout, f"the child did not get to the truncation: {proc.stdout} {proc.stderr}"
    assert "SURVIVED" not in proc.stdout, "a lazy load survived reading a truncated file: update the docs"
    assert proc.returncode == -signal.SIGBUS, f"expected death by SIGBUS, got exit {proc.returncode}: {proc.stderr}"


# ---------------------------------------------------------------------------------------------
# Huge sizes in crafted footers
# ---------------------------------------------------------------------------------------------


def write_crafted(path: Path, payload: bytes, footer: dict | bytes, json_len: int | None = None) -> None:
    body = footer if isinstance(footer, bytes) else json.dumps(footer, separators=(",", ":")).encode()
    n = len(body) if json_len is None else json_len
    path.write_bytes(payload + body + struct.pack("<Q", n) + MAGIC)


def test_huge_sizes_in_a_footer_fail_fast_with_bounded_memory(tmp_path: Path) -> None:
    payload = b"\x07" * 4096
    big = 1 << 60
    block = {"dtype": "float32", "offset_bytes": 0, "length_bytes": 4096, "length_elems": 1024}
    rec = {"name": "w", "shape": [1024], "offset": 0, "length": 1024, "macroblock": 0}

    def v4(blocks: list[dict], index: list[dict], **extra: int) -> dict:
        return {"format": "flashpack_v4", "align_bytes": 128, **extra, "macroblocks": blocks, "index": index}

    cases: dict[str, tuple[dict | bytes, int | None]] = {
        "json_len_max": (v4([block], [rec]), 2**64 - 1),
        "json_len_2_63": (v4([block], [rec]), 2**63),
        "json_len_2_40": (v4([block], [rec]), 2**40),
        "v3_total_elems_2_60": (
            {"format": "flashpack_v3", "target_dtype": "float32", "align_bytes": 128, "total_elems": big, "index": [rec]},
            None,
        ),
        "block_2_60": (
            v4(
                [{"dtype": "uint8", "offset_bytes": 0, "length_bytes": big, "length_elems": big}],
                [{**rec, "shape": [big], "length": big}],
            ),
            None,
        ),
        "shape_overflow": (v4([block], [{**rec, "shape": [2**32, 2**32, 2**32]}]), None),
        "record_2_60": (v4([block], [{**rec, "shape": [big], "length": big}]), None),
        "totals_max": (v4([block], [rec], total_payload_bytes=2**64 - 1, total_elems=2**64 - 1), None),
        "many_huge_records": (
            v4(
                [{"dtype": "float64", "offset_bytes": 0, "length_bytes": 8 << 40, "length_elems": 1 << 40}],
                [{**rec, "name": f"t{i}", "shape": [1 << 40], "length": 1 << 40} for i in range(2000)],
            ),
            None,
        ),
    }
    for name, (footer, json_len) in cases.items():
        write_crafted(tmp_path / f"{name}.flashpack", payload, footer, json_len)
    flashpack.pack_to_file(state_dict(4, 1), tmp_path / "valid.fp")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, WORKER, "huge", str(tmp_path)], capture_output=True, text=True, timeout=120)
    took = time.perf_counter() - start
    print(f"\nhuge sizes: {proc.stdout.strip()} ({took:.1f} s with the interpreter start)")
    assert proc.returncode == 0, f"the child failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    assert f"OK {len(cases)} files" in proc.stdout, proc.stdout
    grown_kib = int(proc.stdout.split("grew by ")[1].split()[0])
    assert grown_kib < 64 << 10, f"peak RSS grew by {grown_kib} KiB while rejecting tiny files"
