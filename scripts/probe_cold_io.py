#!/usr/bin/env python3
"""Cold-read probe: how fast can this machine read a file that is not in the page cache, by
strategy (O_DIRECT or buffered, threads = requests in flight, read size, readahead hints).

    .venv/bin/python scripts/probe_cold_io.py FILE [--repeats 3] [--strategies ...]

Each strategy runs in a fresh subprocess after fsync + posix_fadvise(DONTNEED) (checked with
fincore when present). Reads go into per-thread reused buffers (like dd), so the number is the
disk path alone, not the cost of filling fresh memory. The load average is printed with each
measurement: other work on the machine moves these numbers.
"""
from __future__ import annotations

import argparse
import json
import mmap
import os
import subprocess
import sys
import threading
import time

from tables import drop_cache, resident_fraction

MiB = 1 << 20


def evict(path: str) -> float | None:
    """Drops the file's pages; the fraction still resident (None without fincore)."""
    drop_cache(path)
    return resident_fraction(path)


def run(path: str, mode: str, threads: int, piece: int, hint: str) -> float:
    size = os.path.getsize(path)
    flags = os.O_RDONLY | (os.O_DIRECT if mode in ("direct", "directhuge") else 0)
    fd = os.open(path, flags)
    if mode == "mmap":
        m = mmap.mmap(fd, size, prot=mmap.PROT_READ)
        if hint == "seq":
            m.madvise(mmap.MADV_SEQUENTIAL)
        elif hint == "willneed":
            m.madvise(mmap.MADV_WILLNEED)
        t = time.perf_counter()
        # One byte per page, in order, like a single-threaded lazy loader's first pass.
        mv = memoryview(m)
        import numpy as np
        a = np.frombuffer(mv, dtype=np.uint8)
        s = int(a[::4096].sum())
        dt = time.perf_counter() - t
        del a, mv
        m.close()
        os.close(fd)
        return dt
    if hint in ("seq", "seqahead"):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
    t = time.perf_counter()
    if hint == "willneed":
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
    nxt = [0]
    lock = threading.Lock()
    chunk = 16 * MiB

    def worker():
        if mode == "directhuge":
            # A 2 MiB-aligned buffer backed by transparent huge pages: physically contiguous
            # destination, so one request can carry more than max_segments x 4 KiB.
            h = 2 * MiB
            buf = mmap.mmap(-1, piece + h)
            base = memoryview(buf)
            import ctypes
            addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
            skip = (-addr) % h
            buf.madvise(mmap.MADV_HUGEPAGE)
            mv = base[skip:skip + piece]
            mv[:] = b"\0" * piece
        else:
            buf = mmap.mmap(-1, piece)
            mv = memoryview(buf)
        while True:
            with lock:
                off = nxt[0]
                nxt[0] += chunk
            if off >= size:
                return
            end = min(off + chunk, size)
            if hint == "seqahead":
                # Ask for the chunk this thread's peers will want after this round.
                os.posix_fadvise(fd, off + threads * chunk, chunk, os.POSIX_FADV_WILLNEED)
            while off < end:
                n = min(piece, end - off)
                if mode != "buffered" and n % 4096:
                    n = n // 4096 * 4096 or 4096
                got = os.preadv(fd, [mv[:n]], off)
                if got <= 0:
                    return
                off += got

    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for x in ts:
        x.start()
    for x in ts:
        x.join()
    dt = time.perf_counter() - t
    os.close(fd)
    return dt


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("file")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--strategies", nargs="*", default=[
        "direct:4:4", "direct:8:4", "direct:16:4", "direct:32:4", "direct:16:1", "direct:4:16",
        "direct:32:1", "buffered:2:4:none", "buffered:4:4:none", "buffered:16:4:none",
        "buffered:2:4:seq", "buffered:16:1:seq", "buffered:4:4:willneed", "mmap:1:0:seq",
        "mmap:1:0:none"])
    ap.add_argument("--child", nargs=4)
    a = ap.parse_args()
    if a.child:
        mode, threads, piece, hint = a.child
        print(run(a.file, mode, int(threads), int(piece), hint))
        return 0
    size = os.path.getsize(a.file)
    results = {}
    for r in range(a.repeats):
        for s in a.strategies:
            parts = s.split(":")
            mode, threads, piece_mib = parts[0], int(parts[1]), int(parts[2])
            hint = parts[3] if len(parts) > 3 else "none"
            res = evict(a.file)
            load = os.getloadavg()[0]
            out = subprocess.run([sys.executable, __file__, a.file, "--child", mode, str(threads),
                                  str(piece_mib * MiB), hint], capture_output=True, text=True)
            if out.returncode:
                print(s, "failed:", out.stderr[-500:])
                continue
            dt = float(out.stdout.strip())
            gbps = size / dt / 1e9
            results.setdefault(s, []).append(gbps)
            print(f"run {r} {s:24s} {gbps:6.2f} GB/s  load {load:.2f}  resident-before {res}",
                  flush=True)
    print("\nstrategy (mode:threads:piece MiB:hint)   median GB/s   all")
    for s, v in results.items():
        v2 = sorted(v)
        print(f"{s:28s} {v2[len(v2)//2]:6.2f}   {' '.join(f'{x:.2f}' for x in v)}")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
