"""Remote loads under faults, from Python, against a fault-injecting HTTP server the tests start on
127.0.0.1 (every wait in it ends by itself after two minutes at most).

Ctrl-C: a child process (``load_file``, ``read_flashpack_file`` or ``from_pretrained_flashpack``
of a URL) gets SIGINT while its load is held up in one phase: a HEAD or an index GET that is never
answered (opening, the size probes of a model folder), parts trickling in, a server that stops
mid-body, or 503 answers retried after a 30 s back-off. KeyboardInterrupt must come within about a
second (asserted: 3 s, for a busy machine), the connections in flight must be closed (the server
sees them go) with no request started after, and a second load of the same URL in the same process
must then return the right bytes. Every request of the child has a 10-minute timeout, so a
request that is waited for rather than dropped fails the bound.

Versions: an object replaced during a load is an error naming the URL, never a mix of versions,
also where the server sends no ETag (a Last-Modified pins the version; a FlashPack file is checked
against its checksums when no strong ETag pins it), and a server with no validator at all gives
exactly one RuntimeWarning naming the URL. The mix a safetensors file at such a server does
give (the documented limit) is checked too: it shows that the server really replaces the object
mid-load, so the other tests' errors are the pinning's doing.
"""

from __future__ import annotations

import email.utils
import hashlib
import io
import json
import os
import queue
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import torch

import flashpack

transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

KIB = 1 << 10
MIB = 1 << 20
PART = 64 * KIB
# A GET of at least this many bytes is a part of the tensors; the index GETs are smaller.
DATA_MIN = 32 * KIB
# From Ctrl-C to KeyboardInterrupt: about a second is promised; generous for a busy 2-core machine.
BOUND = 3.0
# The longest any wait of the server lasts: it stops by itself.
SERVER_WAIT = 120.0


@dataclass
class Fault:
    """What the server does to the requests of ``path`` of one kind (``on``): ``head``, ``index``
    (a GET of under DATA_MIN bytes) or ``data`` (a part of the tensors)."""

    path: str
    kind: str  # hang (never answers) | slow (trickles the body) | stall (16 bytes, then nothing) | unavailable (503)
    on: str


@dataclass
class Replace:
    """After ``after`` GETs of ``path``, the server has ``data`` there instead (same size), with a
    Last-Modified ten seconds later, or the same one (``same_second``)."""

    path: str
    after: int
    data: bytes
    same_second: bool = False


class FaultServer:
    """Serves ``files`` (path -> bytes) with HEAD and ranged GETs, as nginx does, with the
    validators asked for: ``etag`` (a strong ETag and a Last-Modified), ``last-modified`` (only
    that), ``none``. ``honour``: a GET whose If-Unmodified-Since is older than the object is
    answered 412 (else the condition is ignored, as some servers do). Counts what it sees."""

    def __init__(self, files: dict[str, bytes], validators: str = "etag", honour: bool = True) -> None:
        self.versions = {p: [d] for p, d in files.items()}
        self.current = dict.fromkeys(files, 0)
        self.validators = validators
        self.honour = honour
        self.base_time = int(time.time()) - 3600
        self.fault: Fault | None = None
        self.replace: Replace | None = None
        self.cond = threading.Condition()
        self.stop = threading.Event()
        self.reset()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                owner._serve(self, head=True)

            def do_GET(self) -> None:
                owner._serve(self, head=False)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def reset(self, fault: Fault | None = None) -> None:
        with self.cond:
            self.fault = fault
            self.gets: dict[str, int] = dict.fromkeys(self.versions, 0)
            self.hits = 0  # faulted requests
            self.in_fault = 0  # faulted requests being answered (held up)
            self.sent = 0  # body bytes sent by faulted requests
            self.closed: list[float] = []  # when the client closed a held-up request's connection

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(predicate, max(timeout, 0.0))

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def _headers(self, path: str, version: int) -> list[tuple[str, str]]:
        data = self.versions[path][version]
        out = []
        if self.validators == "etag":
            out.append(("ETag", f'"{hashlib.sha1(data).hexdigest()[:16]}"'))
        if self.validators in ("etag", "last-modified"):
            out.append(("Last-Modified", email.utils.formatdate(self._mtime(path, version), usegmt=True)))
        return out

    def _mtime(self, path: str, version: int) -> int:
        same = self.replace is not None and self.replace.path == path and self.replace.same_second
        return self.base_time + (0 if same else 10 * version)

    def _serve(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        path = h.path
        if path not in self.versions:
            return self._reply(h, 404, [], b"")
        rng = None
        if not head and (r := h.headers.get("Range")):
            first, _, last = r.removeprefix("bytes=").partition("-")
            rng = (int(first), int(last) + 1)
        with self.cond:
            if not head:
                self.gets[path] += 1
                rep = self.replace
                if rep is not None and rep.path == path and self.gets[path] > rep.after and self.current[path] == 0:
                    self.versions[path].append(rep.data)
                    self.current[path] = 1
            version = self.current[path]
            data = self.versions[path][version]
            on = "head" if head else ("data" if rng and rng[1] - rng[0] >= DATA_MIN else "index")
            f = self.fault
            fault = f.kind if f is not None and f.path == path and f.on == on else None
            if fault:
                self.hits += 1
                self.in_fault += fault != "unavailable"
                self.cond.notify_all()
        headers = self._headers(path, version)
        if fault == "unavailable":
            return self._reply(h, 503, [], b"")
        since = h.headers.get("If-Unmodified-Since")
        unmodified = since is None or self._mtime(path, version) <= email.utils.parsedate_to_datetime(since).timestamp()
        if self.honour and self.validators != "none" and not unmodified:
            return self._reply(h, 412, [], b"")
        start, end = rng if rng else (0, len(data))
        if start >= len(data):
            return self._reply(h, 416, [("Content-Range", f"bytes */{len(data)}")], b"")
        end = min(end, len(data))
        if rng:
            headers.append(("Content-Range", f"bytes {start}-{end - 1}/{len(data)}"))
        headers.append(("Accept-Ranges", "bytes"))
        status = 206 if rng else 200
        if fault is None:
            return self._reply(h, status, headers, b"" if head else data[start:end], length=end - start)
        h.close_connection = True
        try:
            if fault == "hang":
                return self._held_until_closed(h)
            self._send_head(h, status, headers, end - start)
            body = data[start:end]
            if fault == "stall":
                h.wfile.write(body[:16])
                h.wfile.flush()
                self._count_sent(16)
                return self._held_until_closed(h)
            deadline = time.monotonic() + SERVER_WAIT
            for at in range(0, len(body), 256):  # slow: 256 bytes every 50 ms
                if self.stop.is_set() or time.monotonic() > deadline:
                    return self._done(closed=False)
                h.wfile.write(body[at : at + 256])
                h.wfile.flush()
                self._count_sent(256)
                time.sleep(0.05)
            return self._done(closed=False)
        except OSError:  # the client closed the connection
            return self._done(closed=True)

    def _count_sent(self, n: int) -> None:
        with self.cond:
            self.sent += n
            self.cond.notify_all()

    def _done(self, closed: bool) -> None:
        with self.cond:
            self.in_fault -= 1
            if closed:
                self.closed.append(time.monotonic())
            self.cond.notify_all()

    def _held_until_closed(self, h: BaseHTTPRequestHandler) -> None:
        """Answers nothing more until the client closes the connection (or the server stops)."""
        sock: socket.socket = h.connection
        deadline = time.monotonic() + SERVER_WAIT
        while not self.stop.is_set() and time.monotonic() < deadline:
            readable, _, _ = select.select([sock], [], [], 0.01)
            if readable:
                try:
                    if sock.recv(1, socket.MSG_PEEK) == b"":
                        return self._done(closed=True)
                except OSError:
                    return self._done(closed=True)
                time.sleep(0.01)
        return self._done(closed=False)

    @staticmethod
    def _send_head(h: BaseHTTPRequestHandler, status: int, headers: list[tuple[str, str]], length: int) -> None:
        h.send_response(status)
        for k, v in headers:
            h.send_header(k, v)
        h.send_header("Content-Length", str(length))
        h.end_headers()

    def _reply(
        self, h: BaseHTTPRequestHandler, status: int, headers: list[tuple[str, str]], body: bytes, length: int = -1
    ) -> None:
        self._send_head(h, status, headers, len(body) if length < 0 else length)
        if body:
            h.wfile.write(body)


def digest(named: dict[str, torch.Tensor]) -> str:
    """One hash of named tensors' names and bytes (the child computes the same)."""
    h = hashlib.sha256()
    for name in sorted(named):
        h.update(name.encode())
        h.update(named[name].detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


CHILD = r"""
import hashlib, json, signal, sys
# Python leaves SIGINT alone when it starts ignored (a make run from a background shell job).
signal.signal(signal.SIGINT, signal.default_int_handler)
import torch
import flashpack

def digest(named):
    h = hashlib.sha256()
    for name in sorted(named):
        h.update(name.encode())
        h.update(named[name].detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()

what = sys.argv[1]
if what == "from_pretrained_flashpack":
    import transformers
    from flashpack.integrations.transformers import FlashPackTransformersModelMixin

    class FlashPackLlamaForCausalLM(transformers.LlamaForCausalLM, FlashPackTransformersModelMixin):
        pass

def load(url):
    if what == "load_file":
        return digest(flashpack.load_file(url))
    if what == "read_flashpack_file":
        storage, _ = flashpack.read_flashpack_file(url)
        return digest({str(i): b for i, b in enumerate(storage.blocks)})
    return digest(dict(FlashPackLlamaForCausalLM.from_pretrained_flashpack(url).state_dict()))

print("@@READY", flush=True)
while line := sys.stdin.readline():
    try:
        result = {"outcome": "ok", "digest": load(line.strip())}
    except KeyboardInterrupt:
        result = {"outcome": "KeyboardInterrupt"}
    except BaseException as e:
        result = {"outcome": type(e).__name__, "error": str(e)}
    print("@@" + json.dumps(result), flush=True)
"""

# The child's settings: small parts, two in flight, a 30 s back-off before each retry, and
# 10 minutes for a request or a load (so nothing ends by a timeout within a test).
CHILD_ENV = {
    "FLASHPACK_REMOTE_PART_BYTES": str(PART),
    "FLASHPACK_REMOTE_CONCURRENCY": "2",
    "FLASHPACK_REMOTE_RETRIES": "3",
    "FLASHPACK_REMOTE_INITIAL_BACKOFF_MS": "30000",
    "FLASHPACK_REMOTE_MAX_BACKOFF_MS": "30000",
    "FLASHPACK_REMOTE_REQUEST_TIMEOUT_SECS": "600",
    "FLASHPACK_REMOTE_TIMEOUT_SECS": "600",
    "HF_HUB_OFFLINE": "1",
}


class Child:
    """A Python process that loads the URLs it is sent, one a line, and answers each with one
    JSON line (outcome, digest or error)."""

    def __init__(self, what: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, what],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **CHILD_ENV},
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.stderr = io.StringIO()
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.lines.put, True), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr.write), daemon=True).start()
        first = self._line(180)
        assert first == "READY", f"child did not start: {first!r}\n{self.stderr.getvalue()}"

    @staticmethod
    def _pump(stream: Any, put: Callable[[str], Any], protocol: bool = False) -> None:
        for line in stream:
            if not protocol or line.startswith("@@"):  # not what a library prints
                put(line.removeprefix("@@") if protocol else line)

    def _line(self, timeout: float) -> str | None:
        try:
            return self.lines.get(timeout=timeout).strip()
        except queue.Empty:
            return None

    def send(self, url: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(url + "\n")
        self.proc.stdin.flush()

    def result(self, timeout: float) -> dict[str, Any]:
        line = self._line(timeout)
        assert line is not None, f"no answer from the child within {timeout} s\n{self.stderr.getvalue()}"
        return dict(json.loads(line))

    def pending(self) -> str:
        """What the child said so far, for a failure message."""
        return f"{list(self.lines.queue)} {self.stderr.getvalue()}"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@dataclass
class Site:
    server: FaultServer
    folder: Path
    expected: dict[str, str]  # what each function's load of its URL digests to


# What each function loads, and the object its faults hit.
TARGETS = {
    "load_file": ("/weights.safetensors", "/weights.safetensors"),
    "read_flashpack_file": ("/weights.flashpack", "/weights.flashpack"),
    "from_pretrained_flashpack": ("/llama", "/llama/model.safetensors"),
}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """A tiny Llama (about 600 KiB of weights: parts of 64 KiB) as a model folder, its
    safetensors file and a FlashPack file of the same weights, served with ETags (as nginx)."""
    root = tmp_path_factory.mktemp("remote-faults")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=32,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(config).eval()
    model.save_pretrained(root / "llama")
    flashpack.pack_to_file(model.state_dict(), root / "weights.flashpack")
    files = {f"/llama/{p.name}": p.read_bytes() for p in (root / "llama").iterdir() if p.is_file()}
    files["/weights.safetensors"] = files["/llama/model.safetensors"]
    files["/weights.flashpack"] = (root / "weights.flashpack").read_bytes()
    storage, _ = flashpack.read_flashpack_file(root / "weights.flashpack")
    expected = {
        "load_file": digest(flashpack.load_file(root / "llama" / "model.safetensors")),
        "read_flashpack_file": digest({str(i): b for i, b in enumerate(storage.blocks)}),
        "from_pretrained_flashpack": digest(dict(model.state_dict())),
    }
    server = FaultServer(files)
    try:
        yield Site(server, root, expected)
    finally:
        server.close()


@pytest.fixture(scope="module", params=list(TARGETS))
def child(request: pytest.FixtureRequest) -> Iterator[tuple[str, Child]]:
    c = Child(request.param)
    try:
        yield request.param, c
    finally:
        c.close()


# The phase a load is held up in: the fault, on which requests of the object.
PHASES = {
    "open": Fault("", "hang", "head"),  # the HEAD that opens it (a model folder: the probe for it)
    "index": Fault("", "hang", "index"),  # the GET of its index (a FlashPack footer, a safetensors header)
    "slow-parts": Fault("", "slow", "data"),  # parts trickling in, 5 KiB/s each
    "stalled": Fault("", "stall", "data"),  # a part's first 16 bytes, then nothing
    "back-off": Fault("", "unavailable", "data"),  # 503, retried after 30 s
}


@pytest.mark.parametrize("phase", list(PHASES))
def test_ctrl_c_stops_a_url_load_within_a_second_and_the_next_load_works(
    site: Site, child: tuple[str, Child], phase: str
) -> None:
    what, proc = child
    name, target = TARGETS[what]
    url = site.server.url(name)
    server = site.server
    fault = Fault(target, PHASES[phase].kind, PHASES[phase].on)
    server.reset(fault)
    proc.send(url)
    # Opening is one request at a time; a load has two parts in flight (both held up: no other
    # request may start before Ctrl-C, none after).
    held_up = {
        "hang": lambda: server.in_fault >= 1,
        "stall": lambda: server.in_fault >= 2 and server.sent >= 32,
        "slow": lambda: server.in_fault >= 2 and server.sent >= 2 * KIB,
        "unavailable": lambda: server.hits >= 2,
    }[fault.kind]
    assert server.wait_for(held_up, 120), f"the load never reached the fault: {proc.pending()}"
    if fault.kind == "unavailable":
        time.sleep(0.3)  # the 503 was read: the request now waits out its 30 s back-off
    with server.cond:
        started = server.hits
    signalled = time.monotonic()
    proc.proc.send_signal(signal.SIGINT)
    result = proc.result(60)
    took = time.monotonic() - signalled
    print(f"{what} {phase}: KeyboardInterrupt {took * 1000:.0f} ms after SIGINT")
    assert result == {"outcome": "KeyboardInterrupt"}, result
    assert took < BOUND, f"{what} took {took:.2f} s to stop in phase {phase}"
    # The requests in flight were dropped (their connections closed), not waited for.
    assert server.wait_for(lambda: server.in_fault == 0, signalled + BOUND - time.monotonic()), (
        f"{server.in_fault} held-up requests still open {BOUND} s after Ctrl-C"
    )
    time.sleep(0.3)
    with server.cond:
        assert server.hits == started, "a request started after Ctrl-C"
    # The same process loads the same URL, now served without a fault, to the right bytes.
    server.reset()
    proc.send(url)
    again = proc.result(120)
    assert again == {"outcome": "ok", "digest": site.expected[what]}, again


# --- versions --------------------------------------------------------------------------------


def two_versions(fmt: str, size: int) -> tuple[bytes, bytes, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Two same-size files of format ``fmt`` with the same tensors, whose values differ."""
    old = {"a": torch.arange(size // 8, dtype=torch.float32), "b": torch.ones(size // 8, dtype=torch.float32)}
    new = {k: v + 1 for k, v in old.items()}

    def encode(sd: dict[str, torch.Tensor]) -> bytes:
        if fmt == "safetensors":
            return bytes(safetensors_torch.save(sd))
        with tempfile.TemporaryDirectory() as d:
            flashpack.pack_to_file(sd, Path(d) / "w.flashpack")
            return (Path(d) / "w.flashpack").read_bytes()

    a, b = encode(old), encode(new)
    assert len(a) == len(b)
    return a, b, old, new


def load(fmt: str, url: str) -> dict[str, torch.Tensor]:
    """``load_file`` for a safetensors file, ``read_flashpack_file`` (its blocks) for a FlashPack one."""
    if fmt == "safetensors":
        return flashpack.load_file(url)
    storage, _ = flashpack.read_flashpack_file(url)
    return {r.name: storage.blocks[r.block][r.offset : r.offset + r.length] for r in storage.records or []}


@pytest.fixture()
def one_part_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLASHPACK_REMOTE_PART_BYTES", str(PART))
    monkeypatch.setenv("FLASHPACK_REMOTE_CONCURRENCY", "1")
    monkeypatch.setenv("FLASHPACK_REMOTE_RETRIES", "1")


# A safetensors file of 512 KiB is 8 parts of 64 KiB; a FlashPack file not pinned by a strong ETag
# is read in whole checksum chunks (4 MiB), so it is 12 MiB: 3 parts. The object is replaced after
# its 2 index GETs and the first part(s).
SIZES = {"safetensors": (512 * KIB, 4), "flashpack": (12 * MIB, 3)}


@pytest.mark.parametrize("honour", [True, False], ids=["server-honours-if-unmodified-since", "server-ignores-it"])
@pytest.mark.parametrize("fmt", list(SIZES))
@pytest.mark.usefixtures("one_part_at_a_time")
def test_an_object_replaced_mid_load_at_a_server_with_only_last_modified_is_an_error_naming_the_url(
    fmt: str, honour: bool
) -> None:
    size, after = SIZES[fmt]
    old, new, _, _ = two_versions(fmt, size)
    server = FaultServer({"/w": old}, validators="last-modified", honour=honour)
    try:
        server.replace = Replace("/w", after, new)
        url = server.url("/w")
        with pytest.raises(OSError, match="the object changed while it was being read") as e:
            load(fmt, url)
        assert url in str(e.value)
        assert server.current["/w"] == 1, "the object was not replaced during the load"
    finally:
        server.close()


@pytest.mark.parametrize("validators", ["last-modified", "none"])
@pytest.mark.usefixtures("one_part_at_a_time")
def test_a_flashpack_file_replaced_where_validators_cannot_see_it_is_a_checksum_error_naming_the_url(
    validators: str,
) -> None:
    """A replacement within the second of the pinned Last-Modified, or at a server with no
    validators: the FlashPack checksums, checked on every such load, catch it."""
    size, after = SIZES["flashpack"]
    old, new, _, _ = two_versions("flashpack", size)
    server = FaultServer({"/w": old}, validators=validators)
    try:
        server.replace = Replace("/w", after, new, same_second=True)
        url = server.url("/w")
        with warnings.catch_warnings(), pytest.raises(ValueError, match="checksum") as e:
            warnings.simplefilter("ignore", RuntimeWarning)
            load("flashpack", url)
        assert url in str(e.value)
        assert server.current["/w"] == 1, "the object was not replaced during the load"
    finally:
        server.close()


@pytest.mark.usefixtures("one_part_at_a_time")
def test_the_documented_limit_a_safetensors_file_at_a_server_with_no_validators_can_mix() -> None:
    """The control for the tests above: the same replacement of a safetensors file at a server
    that sends neither ETag nor Last-Modified goes unseen (there is nothing to see it by), and the
    load returns parts of both versions. Before Last-Modified was pinned, a server sending only
    that gave this mix too. The warning says so."""
    size, after = SIZES["safetensors"]
    old_bytes, new_bytes, old, new = two_versions("safetensors", size)
    server = FaultServer({"/w": old_bytes}, validators="none")
    try:
        server.replace = Replace("/w", after, new_bytes)
        url = server.url("/w")
        with pytest.warns(RuntimeWarning, match="a replacement of the same size would go unnoticed"):
            got = load("safetensors", url)
        assert not all(torch.equal(got[k], old[k]) for k in old) and not all(torch.equal(got[k], new[k]) for k in new)
    finally:
        server.close()


@pytest.mark.parametrize("fmt", list(SIZES))
def test_a_server_with_no_validators_gives_one_runtime_warning_naming_the_url(fmt: str) -> None:
    data, _, want, _ = two_versions(fmt, 512 * KIB)
    silent = FaultServer({"/w": data}, validators="none")
    pinned = FaultServer({"/w": data}, validators="last-modified")
    try:
        url = silent.url("/w")
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            got = load(fmt, url)
            quiet = load(fmt, pinned.url("/w"))
        assert all(torch.equal(got[k], want[k]) and torch.equal(quiet[k], want[k]) for k in want)
        runtime = [w for w in seen if issubclass(w.category, RuntimeWarning)]
        assert len(runtime) == 1, [str(w.message) for w in seen]
        message = str(runtime[0].message)
        assert url in message and "no ETag or Last-Modified" in message, message
        checked = "checksums are checked" if fmt == "flashpack" else "safetensors file has no checksums"
        assert checked in message, message
    finally:
        silent.close()
        pinned.close()


def test_a_warning_turned_into_an_error_is_reported_and_the_load_completes(monkeypatch: pytest.MonkeyPatch) -> None:
    """``warnings.simplefilter("error")``: the engine's warning cannot be raised from inside the
    load; it reaches ``sys.unraisablehook`` (naming the URL) and the load returns."""
    data, _, want, _ = two_versions("safetensors", 64 * KIB)
    server = FaultServer({"/w": data}, validators="none")
    reported: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", reported.append)
    try:
        url = server.url("/w")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            got = load("safetensors", url)
        assert all(torch.equal(got[k], want[k]) for k in want)
        assert len(reported) == 1 and isinstance(reported[0].exc_value, RuntimeWarning), reported
        assert url in str(reported[0].exc_value)
    finally:
        server.close()
