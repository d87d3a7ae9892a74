"""Signals during long engine calls: Ctrl-C (SIGINT) and any other signal whose Python handler
raises stop an eager load or a pack within moments, between chunks; the call raises the handler's
exception, a pack leaves the destination as it was and no temporary file, and a handler that does
not raise runs during the call (not after it) and lets it finish.

Each case runs in a child process that loads or packs a 256 MiB file slowly: the file is evicted
from the page cache and read in 4 KiB pieces (O_DIRECT for the load, page faults on a mapping
with read-ahead turned off for the pack's source), which takes seconds. The parent sends the
signal once the child's own I/O counters (/proc/<pid>/io) show that the call is under way. No
time is measured; the one assumption is that the rest of a call of several seconds outlasts the
20 ms between the binding's signal checks.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import flashpack

MIB = 1 << 20
SIZE = 256 * MIB

CHILD = r"""
import json, mmap, os, signal, sys, time
import torch, flashpack

mode, path = sys.argv[1], sys.argv[2]

def io_count(key):
    with open("/proc/self/io") as f:
        return int(next(l for l in f if l.startswith(key + ":")).split()[1])

def evict(p):
    fd = os.open(p, os.O_RDONLY)
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    return fd

class Alarm(Exception):
    pass

def raise_alarm(signum, frame):
    raise Alarm(f"signal {signum}")

seen = []
def note_signal(signum, frame):
    seen.append(os.stat(sys.argv[3]).st_ino)

signal.signal(signal.SIGALRM, raise_alarm)
signal.signal(signal.SIGUSR1, note_signal)
# Python leaves SIGINT alone when it starts ignored (a make run from a background shell job):
# the child must raise KeyboardInterrupt whatever it inherited.
signal.signal(signal.SIGINT, signal.default_int_handler)
result = {}
if mode == "load":
    os.close(evict(path))
    started = io_count("rchar")
    print("START", flush=True)
    try:
        storage, meta = flashpack.read_flashpack_file(path, eager=True)
        result["outcome"] = "completed"
    except BaseException as e:
        result["outcome"] = type(e).__name__
    result["read"] = io_count("rchar") - started
else:
    fd = evict(path)
    source = mmap.mmap(fd, 0, access=mmap.ACCESS_COPY)
    source.madvise(mmap.MADV_RANDOM)  # one page per fault: a slow source
    tensor = torch.frombuffer(source, dtype=torch.uint8)
    print("START", flush=True)
    try:
        flashpack.pack_to_file({"w": tensor}, sys.argv[3])
        result["outcome"] = "completed"
    except BaseException as e:
        result["outcome"] = type(e).__name__
result["handled"] = seen
print(json.dumps(result), flush=True)
"""


def io_count(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/io") as f:
        return int(next(line for line in f if line.startswith(key + ":")).split()[1])


def run_and_signal(args: list[str], signum: int, counter: str, env: dict[str, str] | None = None) -> dict:
    """Starts the child, waits until its `counter` (rchar/wchar) has grown by 4 MiB since it said
    START, sends `signum`, and returns the child's JSON report."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "START", f"child did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}"
        base = io_count(proc.pid, counter)
        deadline = time.monotonic() + 120  # a hang detector only
        while io_count(proc.pid, counter) - base < 4 * MIB:
            assert proc.poll() is None, f"child ended before it got going: {proc.stderr.read() if proc.stderr else ''}"
            assert time.monotonic() < deadline, "the child's call never got under way"
            time.sleep(0.002)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("signals") / "big.flashpack"
    flashpack.pack_to_file({"w": torch.arange(SIZE // 4, dtype=torch.int32)}, path)
    return path


@pytest.mark.parametrize(("signum", "raised"), [(signal.SIGINT, "KeyboardInterrupt"), (signal.SIGALRM, "Alarm")])
def test_a_signal_stops_an_eager_load_between_chunks(big_file: Path, signum: int, raised: str) -> None:
    env = {"FLASHPACK_READ_CHUNK_BYTES": "4096", "FLASHPACK_READ_THREADS": "1"}
    report = run_and_signal(["load", str(big_file)], signum, "rchar", env)
    assert report["outcome"] == raised, report
    assert report["read"] < SIZE, f"the load read the whole file before stopping: {report}"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_scene(tmp_path: Path, size: int) -> tuple[Path, Path, Path]:
    """(source of `size` raw bytes, destination holding an older pack, its folder)."""
    source = tmp_path / "source.bin"
    with open(source, "wb") as f:
        block = os.urandom(MIB)
        for _ in range(size // MIB):
            f.write(block)
    out = tmp_path / "out"
    out.mkdir()
    dest = out / "model.flashpack"
    flashpack.pack_to_file({"old": torch.arange(10)}, dest)
    return source, dest, out


@pytest.fixture()
def pack_scene(tmp_path: Path) -> tuple[Path, Path, Path]:
    return make_scene(tmp_path, SIZE)


@pytest.mark.parametrize(("signum", "raised"), [(signal.SIGINT, "KeyboardInterrupt"), (signal.SIGALRM, "Alarm")])
def test_a_signal_stops_a_pack_and_leaves_the_destination_as_it_was(
    pack_scene: tuple[Path, Path, Path], signum: int, raised: str
) -> None:
    source, dest, out = pack_scene
    before = sha256(dest)
    report = run_and_signal(["pack", str(source), str(dest)], signum, "wchar")
    assert report["outcome"] == raised, report
    assert sha256(dest) == before, "an interrupted pack changed the destination"
    assert sorted(p.name for p in out.iterdir()) == ["model.flashpack"], "temporary files left behind"


def test_a_handler_that_does_not_raise_runs_during_the_pack_which_completes(tmp_path: Path) -> None:
    size = 64 * MIB  # packed to the end, so smaller
    source, dest, out = make_scene(tmp_path, size)
    old_inode = dest.stat().st_ino
    report = run_and_signal(["pack", str(source), str(dest)], signal.SIGUSR1, "wchar")
    assert report["outcome"] == "completed", report
    # The handler ran while the pack was writing: the old file was still in place.
    assert report["handled"] == [old_inode], report
    assert dest.stat().st_ino != old_inode
    assert sorted(p.name for p in out.iterdir()) == ["model.flashpack"]
    loaded = flashpack.revert_from_file(dest)["w"]
    with open(source, "rb") as f:
        head = torch.frombuffer(bytearray(f.read(MIB)), dtype=torch.uint8)
    assert loaded.numel() == size and torch.equal(loaded[:MIB], head)


URL_CHILD = r"""
import json, signal, sys
from flashpack import _core

signal.signal(signal.SIGINT, signal.default_int_handler)
print("START", flush=True)
try:
    _core.read_url(sys.argv[1], 1 << 20)
    outcome = "completed"
except BaseException as e:
    outcome = type(e).__name__
print(json.dumps({"outcome": outcome}), flush=True)
"""


def test_ctrl_c_stops_a_whole_object_read_of_a_url_that_never_answers() -> None:
    """``_core.read_url`` (configs and indexes at a URL) waits on a server that accepts the
    connection and never answers; the request's own timeout is 10 minutes. Ctrl-C must end the
    call with KeyboardInterrupt at once (the child is given 60 s: a hang detector only)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(60)
        url = f"http://127.0.0.1:{server.getsockname()[1]}/config.json"
        env = {**os.environ, "FLASHPACK_REMOTE_REQUEST_TIMEOUT_SECS": "600", "FLASHPACK_REMOTE_TIMEOUT_SECS": "600"}
        proc = subprocess.Popen(
            [sys.executable, "-c", URL_CHILD, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "START", proc.stderr.read() if proc.stderr else ""
            conn, _ = server.accept()  # the child's request is under way
            with conn:
                proc.send_signal(signal.SIGINT)
                out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1]) == {"outcome": "KeyboardInterrupt"}, (out, err)
