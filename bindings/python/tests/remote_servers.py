"""Real servers for the URL tests, started by the tests on 127.0.0.1 (free ports) and stopped after
the session: nginx serving a temporary folder (Range, ETag; ``/private/`` answers 403) and moto's
S3 server (PyPI ``moto[server]``, in its own venv) with one bucket.

``make test-python`` provides both (``FLASHPACK_NGINX``, ``FLASHPACK_MOTO_SERVER``; it installs
them when missing, as ``make test-remote`` does). Run elsewhere, a test that needs a server that
is not there is skipped with the reason. The engine finds the S3 store the way AWS tools do:
``AWS_ENDPOINT_URL`` and the ``AWS_*`` credentials, which the ``s3`` fixture sets.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(port: int, proc: subprocess.Popen[bytes], what: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited at start with status {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{what} did not accept connections on port {port} within {seconds} s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _program(env: str, *candidates: Path) -> Path | None:
    given = os.environ.get(env)
    for p in ([Path(given)] if given else []) + list(candidates):
        if p.is_file() and os.access(p, os.X_OK):
            return p
    return None


@dataclass
class Nginx:
    root: Path
    port: int

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"


@dataclass
class S3:
    port: int
    bucket: str

    def put(self, key: str, data: bytes) -> str:
        """Stores ``data`` at ``key`` (moto takes unsigned requests); returns its ``s3://`` URL."""
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/{self.bucket}/{key}",
            data=data,
            method="PUT",
            headers={"Content-Type": "application/octet-stream"},
        )
        with urllib.request.urlopen(req, timeout=60) as r:
            assert r.status == 200, r.status
        return self.url(key)

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"


@pytest.fixture(scope="session")
def nginx() -> Iterator[Nginx]:
    program = _program("FLASHPACK_NGINX", Path("/usr/sbin/nginx"), Path("/usr/bin/nginx"), REPO / "target/nginx/usr/sbin/nginx")
    if program is None:
        pytest.skip("nginx not found (FLASHPACK_NGINX; `make test-python` installs Debian's package)")
    run = Path(tempfile.mkdtemp(prefix="flashpack-nginx-"))
    root = run / "www"
    (root / "private").mkdir(parents=True)
    port = free_port()
    conf = run / "nginx.conf"
    conf.write_text(
        f"daemon off; master_process off; pid {run}/nginx.pid; error_log {run}/error.log;\n"
        "events {}\n"
        f"http {{ access_log off; client_body_temp_path {run}; proxy_temp_path {run};\n"
        f"  fastcgi_temp_path {run}; uwsgi_temp_path {run}; scgi_temp_path {run};\n"
        f"  server {{ listen 127.0.0.1:{port}; root {root}; location /private/ {{ deny all; }} }} }}\n"
    )
    proc = subprocess.Popen([str(program), "-p", str(run), "-c", str(conf)], stderr=subprocess.DEVNULL)
    try:
        _wait_for(port, proc, f"nginx (see {run}/error.log)", 10)
        yield Nginx(root, port)
    finally:
        _stop(proc)
        shutil.rmtree(run, ignore_errors=True)


@pytest.fixture(scope="session")
def s3() -> Iterator[S3]:
    program = _program("FLASHPACK_MOTO_SERVER", REPO / "target/moto-venv/bin/moto_server")
    if program is None:
        pytest.skip("moto_server not found (FLASHPACK_MOTO_SERVER; `make test-python` builds target/moto-venv)")
    port = free_port()
    proc = subprocess.Popen(
        [str(program), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
    }
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        try:
            _wait_for(port, proc, "moto_server", 60)
            bucket = "weights"
            req = urllib.request.Request(f"http://127.0.0.1:{port}/{bucket}", method="PUT")
            with urllib.request.urlopen(req, timeout=30) as r:
                assert r.status == 200, r.status
            yield S3(port, bucket)
        finally:
            _stop(proc)
