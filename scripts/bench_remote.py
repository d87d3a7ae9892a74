#!/usr/bin/env python3
"""Remote benchmark: one >= 2 GiB safetensors file served by a local S3 server, loaded to CPU by
ours and by the peers, each in a fresh process.

    .venv/bin/python scripts/bench_remote.py                # 2 GiB, best of 3
    .venv/bin/python scripts/bench_remote.py --quick        # 256 MiB smoke run, 1 repeat
    .venv/bin/python scripts/bench_remote.py --device cuda  # the CUDA rows (scripts/gpu-check.sh)

The server is s3s-fs (crates.io; `make bench` installs it into target/s3s): an S3 API in Rust
over a local folder, on 127.0.0.1. It serves the file straight from the folder (no upload, the
page cache keeps it hot) and is fast enough that the loaders, not the server, are measured;
moto's server (Python, objects held in memory) tops out far below what these loaders take in.

Rows:

* ours: ``flashpack.load_file("s3://bench/model.safetensors")`` (parallel ranged GETs into owned
  memory; ``device="cuda"``: through the pinned staging pool);
* Run:ai model streamer (PyPI ``runai-model-streamer`` + ``runai-model-streamer-s3``):
  ``SafetensorsStreamer.stream_file`` of the same URL, every tensor kept;
* download-then-load: boto3's ``download_file`` (its multi-threaded transfer) to a local file,
  then ``safetensors.torch.load_file`` (the local file is deleted after each run).

Every loader is pointed at the same endpoint through the standard variables
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``; Run:ai also
``RUNAI_STREAMER_S3_ENDPOINT`` and ``RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING=0``, path-style
addressing). Each measurement: a fresh process imports its loader, then the clock runs over the
load and one pass summing every byte (int64 views, as scripts/bench.py); the best of --repeats
by that total is kept, hot (the served file in the server's page cache) and cold (its pages
dropped before each run; --modes picks). The table (scripts/tables.py) shows how many times faster
ours is than each row (row total / ours), and each row's share of the ceiling: a plain read() of
the served file, the server's part alone. The byte sums must agree, else the run fails.

Results: RESULTS/bench_remote.json and table.txt (RESULTS = $OUT/remote if $OUT is set, else --out).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE.parent))
import bench  # noqa: E402  (shared helpers: the byte-summing pass, machine info)
import tables  # noqa: E402  (page cache, ceilings, the comparison table)

MiB, GiB = 1 << 20, 1 << 30
BUCKET, KEY = "bench", "model.safetensors"
URL = f"s3://{BUCKET}/{KEY}"

# name, python ("project" / "peers"), label
LOADERS = [
    ("ours", "project", "ours flashpack.load_file(s3 URL)"),
    ("runai", "peers", "Run:ai SafetensorsStreamer (s3 URL)"),
    ("download", "peers", "boto3 download_file, then safetensors load_file"),
]


def make_file(path: Path, size_bytes: int) -> None:
    """A safetensors file of random bf16 matrices (and a few small tensors of other dtypes),
    ``size_bytes`` or a little more; reused when its stamp matches."""
    stamp = path.with_suffix(".stamp")
    want = f"size={size_bytes} v1"
    if path.is_file() and stamp.is_file() and stamp.read_text() == want:
        return
    import torch
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(1234)
    rows = 4096
    per = rows * 4096 * 2  # 32 MiB bf16 matrices
    sd = {f"layers.{i}.weight": torch.randint(0, 256, (per,), generator=g, dtype=torch.uint8).view(torch.bfloat16).view(rows, 4096)
          for i in range(max(1, -(-size_bytes // per)))}  # fmt: skip
    sd["norm.weight"] = torch.rand(4096, generator=g, dtype=torch.float32)
    sd["step"] = torch.tensor(7, dtype=torch.int64)
    save_file(sd, str(path), metadata={"format": "pt"})
    stamp.write_text(want)


def record_etag(root: Path, bucket: str, key: str) -> None:
    """What s3s-fs keeps beside an object it received by PUT: its ETag (the MD5), so that it is
    not recomputed over the whole file for every request (s3s-fs does that for files put into
    its folder directly: 0.5 s per ranged GET of a 256 MiB file on this machine)."""
    import base64
    import hashlib

    def enc(s: str) -> str:
        return base64.urlsafe_b64encode(s.encode()).decode().rstrip("=")

    info = root / f".bucket-{enc(bucket)}.object-{enc(key)}.internal.json"
    obj = root / bucket / key
    if info.is_file() and info.stat().st_mtime >= obj.stat().st_mtime:
        return
    md5 = hashlib.md5(usedforsecurity=False)
    with obj.open("rb") as f:
        while chunk := f.read(16 << 20):
            md5.update(chunk)
    info.write_text(json.dumps({"e_tag": md5.hexdigest()}))


class S3sFs:
    """s3s-fs serving ``root`` (its folders are buckets) on a free port of 127.0.0.1."""

    def __init__(self, program: Path, root: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.log = root.parent / "s3s-fs.log"
        args = [str(program), "--host", "127.0.0.1", "--port", str(self.port),
                "--access-key", "bench", "--secret-key", "bench-secret", str(root)]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=self.log.open("wb"))
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"s3s-fs exited at start (see {self.log})")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"s3s-fs did not start (see {self.log})") from None
                time.sleep(0.05)

    def env(self) -> dict[str, str]:
        endpoint = f"http://127.0.0.1:{self.port}"
        return {
            "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret",
            "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
            "RUNAI_STREAMER_S3_ENDPOINT": endpoint, "RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING": "0",
        }  # fmt: skip

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ---------------------------------------------------------------------------------------------
# One load, in a fresh process


def child_load(loader: str, device: str, scratch: str) -> dict:
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    cuda = device == "cuda"
    if cuda:
        torch.cuda.init()
        torch.empty(1, device="cuda")  # context creation is not part of the load
    # Import the loader's modules before the clock starts (import cost is not load cost).
    if loader == "ours":
        import flashpack
    elif loader == "runai":
        from runai_model_streamer import SafetensorsStreamer
    elif loader == "download":
        import boto3
        from boto3.s3.transfer import TransferConfig
        from safetensors.torch import load_file

        client = boto3.client("s3")
    base_rss = bench._maxrss_bytes()

    t0 = time.perf_counter()
    sd: dict[str, torch.Tensor] = {}
    if loader == "ours":
        sd = flashpack.load_file(URL, device=device)
    elif loader == "runai":
        with SafetensorsStreamer() as streamer:
            streamer.stream_file(URL, device=device)  # owned=True (its default): tensors are ours to keep
            for name, t in streamer.get_tensors():
                sd[name] = t
    elif loader == "download":
        local = Path(scratch) / KEY
        config = TransferConfig(max_concurrency=os.cpu_count() or 4)
        client.download_file(BUCKET, KEY, str(local), Config=config)
        sd = load_file(str(local), device=device)
    else:
        raise SystemExit(f"unknown loader {loader}")
    if cuda:
        torch.cuda.synchronize()
    t1 = time.perf_counter()
    tensors = list(sd.values())
    checksum = bench._touch(tensors, cuda)
    t2 = time.perf_counter()
    if loader == "download":
        (Path(scratch) / KEY).unlink()
    return {
        "load_s": t1 - t0, "touch_s": t2 - t1, "total_s": t2 - t0,
        "bytes": sum(t.numel() * t.element_size() for t in tensors), "tensors": len(tensors),
        "checksum": checksum, "base_rss": base_rss, "peak_rss": bench._maxrss_bytes(),
    }  # fmt: skip


def run_child(python: str, args: list[str], env_extra: dict[str, str], timeout: int = 1800) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLASHPACK_", "AWS_", "RUNAI_"))}
    env.setdefault("RUNAI_STREAMER_LOG_LEVEL", "WARNING")
    env.update(env_extra)
    p = subprocess.run([python, str(HERE), *args], capture_output=True, text=True, env=env, timeout=timeout)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("BENCHJSON ")]
    if p.returncode != 0 or not lines:
        return {"error": (p.stderr.strip() or p.stdout.strip())[-800:]}
    return dict(json.loads(lines[-1][len("BENCHJSON ") :]))


def peers_python(log: object) -> tuple[str | None, dict[str, str]]:
    """The peers' interpreter (scripts/peers-venv.sh, or BENCH_PEERS_PYTHONPATH on a machine
    without a registry, as in bench_checkpoint.py) and the environment it needs."""
    if os.environ.get("BENCH_PEERS_PYTHONPATH"):
        path = os.pathsep.join(filter(None, [os.environ["BENCH_PEERS_PYTHONPATH"], os.environ.get("PYTHONPATH")]))
        return sys.executable, {"PYTHONPATH": path}
    p = subprocess.run(["bash", str(REPO / "scripts/peers-venv.sh")], capture_output=True, text=True)
    if p.returncode != 0:
        print(f"peers venv: scripts/peers-venv.sh failed (rc={p.returncode}): {p.stderr.strip()[-300:]}")
        return None, {}
    return str(Path(p.stdout.strip().splitlines()[-1]) / "bin/python"), {}


def skip_reason(loader: str, python: str | None, env: dict[str, str]) -> str | None:
    if python is None:
        return "the peers venv could not be created (scripts/peers-venv.sh)"
    module = {"ours": "flashpack", "runai": "runai_model_streamer.s3_utils", "download": "boto3"}[loader]
    p = subprocess.run([python, "-c", f"import {module}"], capture_output=True, text=True, env={**os.environ, **env})
    if p.returncode != 0:
        return f"{module} does not import: {(p.stderr.strip().splitlines() or ['?'])[-1][-200:]}"
    return None


# ---------------------------------------------------------------------------------------------
# The run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-gib", type=float, default=2.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="256 MiB smoke run, 1 repeat")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--s3s-fs", default=os.environ.get("S3S_FS", str(REPO / "target/s3s/bin/s3s-fs")))
    ap.add_argument("--work", default=str(REPO / ".bench/remote"), help="where the served file lives")
    ap.add_argument("--out", default=str(REPO / ".bench/remote-results"), help="results folder (or $OUT/remote)")
    ap.add_argument("--only", nargs="*", help="run only these loaders")
    ap.add_argument("--modes", nargs="+", choices=["hot", "cold"], default=["hot", "cold"],
                    help="the served file's pages: hot (in the page cache) and/or cold (dropped before each run)")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print("BENCHJSON " + json.dumps(child_load(*a.child)), flush=True)
        return 0

    size = 256 * MiB if a.quick else int(a.size_gib * GiB)
    repeats = 1 if a.quick else max(1, a.repeats)
    work = Path(a.work).resolve()
    res_dir = Path(os.environ["OUT"]).resolve() / "remote" if os.environ.get("OUT") else Path(a.out).resolve()
    res_dir.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []

    def log(msg: str) -> None:
        print(msg, flush=True)
        lines.append(msg)

    program = Path(a.s3s_fs)
    if not program.is_file():
        raise SystemExit(f"{program}: s3s-fs not found (`make bench` installs it: cargo install s3s-fs --features binary)")
    import torch

    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    served = work / "root" / BUCKET / KEY
    t = time.perf_counter()
    make_file(served, size)
    record_etag(work / "root", BUCKET, KEY)
    payload = served.stat().st_size
    scratch = work / "download"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    info = bench.machine_info(work)
    log(f"remote bench  {info.get('date')}  {URL} from s3s-fs on 127.0.0.1: {payload / MiB:.1f} MiB "
        f"({payload / 1e9:.2f} GB) of safetensors, to {a.device}, best of {repeats}"
        f"  (file ready in {time.perf_counter() - t:.1f} s)")  # fmt: skip
    log(f"machine: {info.get('cpu', '?')}, {info.get('nproc')} cpus, {info.get('ram_gib')} GiB RAM, "
        f"gpu: {info.get('gpu', 'none')}, torch {info.get('torch')}, load avg {os.getloadavg()[0]:.2f}")  # fmt: skip
    # The ceiling: the server's own part alone, a plain read() of the file it serves (no network).
    buf = bytearray(payload)
    tables.warm(served)
    ceiling = {"hot": min(tables.plain_read_s(served, buf) for _ in range(2))}
    if "cold" in a.modes:
        tables.drop_cache(served)
        ceiling["cold"] = tables.plain_read_s(served, buf)
    del buf

    peers_py, peers_env = peers_python(log)
    pythons = {"project": sys.executable, "peers": peers_py}
    server = S3sFs(program, work / "root")
    # "load": the hot runs (the served file in the page cache), "load_cold": its pages dropped first.
    results: dict = {"machine": info, "server": "s3s-fs 0.14.1", "url": URL, "device": a.device, "payload_bytes": payload,
                     "repeats": repeats, "load": {}, "load_cold": {}, "skipped": {},
                     "ceilings": {f"plain_read_{m}": {"s": s, "gbps": payload / s / 1e9} for m, s in ceiling.items()}}  # fmt: skip
    try:
        runnable = []
        for name, which, label in LOADERS:
            if a.only and name not in a.only:
                continue
            why = skip_reason(name, pythons[which], {**server.env(), **(peers_env if which == "peers" else {})})
            if why:
                results["skipped"][name] = why
                log(f"skip {label}: {why}")
            else:
                runnable.append((name, which))
        for r in range(repeats):
            for name, which in runnable:
                for mode in a.modes:
                    done = results["load" if mode == "hot" else "load_cold"]
                    if "error" in done.get(name, {}):
                        continue
                    (tables.warm if mode == "hot" else tables.drop_cache)(served)
                    env = {**server.env(), **(peers_env if which == "peers" else {})}
                    load_avg = os.getloadavg()[0]
                    out = run_child(str(pythons[which]), ["--child", name, a.device, str(scratch)], env)
                    out.update(loadavg=load_avg, repeat=r)
                    if "error" in out:
                        log(f"{name} [{mode}]: FAILED: {out['error']}")
                        done[name] = out
                        continue
                    log(f"  run {r} {name:10s} {mode:4s} total {out['total_s']:7.3f} s  load {out['load_s']:7.3f} s"
                        f"  ({payload / out['total_s'] / 1e9:.2f} GB/s)  load avg {load_avg:.2f}")  # fmt: skip
                    runs = done.get(name, {}).get("runs", []) + [out["total_s"]]
                    best = done.get(name)
                    if best is None or out["total_s"] < best["total_s"]:
                        done[name] = {**out, "runs": runs}
                    else:
                        best["runs"] = runs
    finally:
        server.stop()
        shutil.rmtree(scratch, ignore_errors=True)

    sums = {f"{k}:{m}": v["checksum"] for m in ("load", "load_cold") for k, v in results[m].items() if "checksum" in v}
    if len(set(sums.values())) > 1:
        log(f"LOADERS DISAGREE on the bytes: {sums}")
        results["checksums_disagree"] = sums
    log(format_table(results, payload))
    (res_dir / "bench_remote.json").write_text(json.dumps(results, indent=2))
    (res_dir / "table.txt").write_text("\n".join(lines) + "\n")
    print(f"wrote {res_dir / 'bench_remote.json'} and {res_dir / 'table.txt'}")
    failed = any("error" in v for m in ("load", "load_cold") for v in results[m].values())
    return 1 if "checksums_disagree" in results or failed else 0


def format_table(results: dict, payload: int) -> str:
    """One table (every loader takes the file into memory it owns, on the same device): ours
    first, the reference of the ratios; the ceiling a plain read() of the served file."""
    labels = {n: label for n, _, label in LOADERS}
    modes = [m for m in ("hot", "cold") if f"plain_read_{m}" in results["ceilings"]]
    ceiling = tables.Row("ceiling: plain read() of the served file",
                         {m: results["ceilings"][f"plain_read_{m}"]["s"] for m in modes})  # fmt: skip
    rows = []
    for name, _, label in LOADERS:
        got = {"hot": results["load"].get(name, {}), "cold": results.get("load_cold", {}).get(name, {})}
        if name in results["skipped"]:
            rows.append(tables.Row(label, note=f"skipped: {results['skipped'][name]}"))
        elif not any(got.values()):
            continue
        else:
            extra = ["/".join(f"{got[m]['peak_rss'] / GiB:.2f}" if "total_s" in got[m] else "-" for m in modes),
                     " ".join(f"{s:.2f}" for m in modes for s in got[m].get("runs", []))]  # fmt: skip
            rows.append(tables.Row(label, {m: got[m].get("total_s") for m in modes}, extra=extra))
    device = "GPU" if results.get("device") == "cuda" else "CPU"
    title = (f"Remote loads to the {device}: {URL} from s3s-fs on 127.0.0.1 (hot / cold: the served file's pages "
             "kept / dropped), s = load + a pass summing every byte")  # fmt: skip
    footer = ["ceiling: the server's part alone (the file read into a preallocated buffer, no network)"]
    return "\n".join(tables.table(title, payload, labels["ours"], rows, ceiling, modes=modes, footer=footer,
                                   extra=[f"peak RSS GiB {'/'.join(modes)}", "runs s"], short="ours"))  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
