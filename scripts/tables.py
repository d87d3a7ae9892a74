"""What the demo and the bench scripts share: the page-cache helpers (hot and cold files), the
machine's ceilings (a plain read and a plain write of the same bytes) and the comparison tables.

Every table follows the same rules (issue 23):

* one table per kind of load: lazy (memory-mapped) beside lazy, eager beside eager, GPU beside
  GPU; every row reads every byte it loads;
* hot (the file's pages in the page cache) and cold (the pages dropped: fsync, then
  ``posix_fadvise(DONTNEED)``; no root needed) are separate, labelled columns;
* the reference row (ours) is named in the header, and each row shows how many times faster the
  reference is than that row (row time / reference time: bigger is better for ours);
* the ceiling (the plainest program that moves the same bytes) is a row, and every row shows its
  throughput as a share of it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

MiB = 1 << 20
CHUNK = 16 * MiB
HOT, COLD = "hot", "cold"
MODE_TITLES = {HOT: "hot: page cache warm", COLD: "cold: file's pages dropped"}

# ---------------------------------------------------------------------------------------------
# The page cache


def drop_cache(path: Path | str) -> None:
    """Evicts the file's pages from the page cache (cold): fsync first, since dirty pages stay."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def warm(path: Path | str) -> None:
    """Reads the file once, so that its pages are in the page cache (hot)."""
    buf = bytearray(CHUNK)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass


def resident_fraction(path: Path | str) -> float | None:
    """Fraction of the file in the page cache (fincore from util-linux), None if unknown."""
    if not shutil.which("fincore"):
        return None
    try:
        out = subprocess.run(
            ["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
            capture_output=True, text=True, timeout=30,
        ).stdout.strip()  # fmt: skip
        return int(out) / max(1, Path(path).stat().st_size)
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


# ---------------------------------------------------------------------------------------------
# Ceilings: the plainest program that moves the same bytes


def plain_read_s(path: Path | str, buf: bytearray) -> float:
    """Seconds for a plain ``readinto`` loop of the whole file into ``buf`` (preallocated, at
    least the file's size; pass the same buffer each time so that its pages are already faulted
    in): no allocation, no parsing, no pass over the bytes."""
    view = memoryview(buf)
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        off = 0
        while n := f.readinto(view[off : off + CHUNK]):
            off += n
    elapsed = time.perf_counter() - start
    view.release()
    return elapsed


def plain_write_s(data: bytes | bytearray | memoryview, path: Path | str) -> float:
    """Seconds for a plain ``write`` loop of ``data`` to a new file, then fsync (durable)."""
    Path(path).unlink(missing_ok=True)
    os.sync()
    view = memoryview(data)
    start = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        off = 0
        while off < len(view):
            off += os.write(fd, view[off : off + CHUNK])
        os.fsync(fd)
    finally:
        os.close(fd)
    elapsed = time.perf_counter() - start
    view.release()
    return elapsed


# ---------------------------------------------------------------------------------------------
# Tables


@dataclass
class Row:
    """One line of a table: seconds per mode (absent or None: not measured, see ``note``)."""

    label: str
    s: dict[str, float | None] = field(default_factory=dict)
    nbytes: int | None = None  # bytes moved, when not the table's payload (a ceiling's file)
    extra: Sequence[str] = ()  # cells of the table's extra columns
    note: str = ""  # why a row has no time, shown in place of its cells


def ceiling_row(label: str, gbps: dict[str, float | None], nbytes: int) -> Row:
    """A ceiling known as a rate (GB/s per mode), as a row over ``nbytes``."""
    return Row(label, {m: nbytes / (g * 1e9) if g else None for m, g in gbps.items()}, nbytes)


def faster(row_s: float | None, ours_s: float | None) -> str:
    """'N.NNx': how many times faster ours is than the row (row time / ours)."""
    return f"{row_s / ours_s:.2f}x" if row_s and ours_s else "-"


def render(header: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    """Left-aligned first column, right-aligned others; a rule under the header."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(r: Sequence[str]) -> str:
        cells = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        return (indent + "  ".join(cells)).rstrip()

    return [line(header), indent + "  ".join("-" * w for w in widths), *(line(r) for r in rows)]


def table(
    title: str,
    nbytes: int,
    ours: str,
    rows: Sequence[Row],
    ceiling: Row | None = None,
    modes: Sequence[str] = (HOT, COLD),
    extra: Sequence[str] = (),
    footer: Sequence[str] = (),
    what: str = "loader",
    short: str | None = None,
) -> list[str]:
    """A comparison table: the ceiling row first, then ``rows``; per mode the time, GB/s (of
    ``nbytes``, GB = 1e9 bytes), the share of the ceiling's rate and how many times faster the
    row labelled ``ours`` (called ``short`` in the header, if given) is than each row. Rows with
    a note are listed below the others."""
    measured = [r for r in rows if not r.note]
    noted = [r for r in rows if r.note]
    if not measured:  # nothing measured: the reasons only
        return [title, *(f"  {r.label}: {r.note}" for r in noted)]
    ref = next((r for r in measured if r.label == ours), None)
    ceil_gbps = {m: (ceiling.nbytes or nbytes) / s / 1e9 for m, s in ceiling.s.items() if s} if ceiling else {}
    header = [what, *(c for _ in modes for c in ("s", "GB/s", "% ceiling", f"{short or ours} is")), *extra]
    cells: list[list[str]] = []
    for row in [*([ceiling] if ceiling else []), *measured]:
        line = [row.label]
        for m in modes:
            s = row.s.get(m)
            if not s:
                line += ["-", "-", "-", ""]
                continue
            gbps = (row.nbytes or nbytes) / s / 1e9
            vs = f"{faster(s, ref.s.get(m) if ref else None)} faster"
            if row is ceiling or row is ref:
                vs = "" if row is ceiling else "(reference)"
            share = f"{gbps / ceil_gbps[m] * 100:.0f}%" if m in ceil_gbps else "-"
            line += [f"{s:.3f}", f"{gbps:.2f}", share, vs]
        extras = list(row.extra)
        cells.append(line + extras + [""] * (len(extra) - len(extras)))
    out = render(header, cells)
    # The mode titles above their column groups.
    col_w = [max(len(r[i]) for r in [header, *cells]) for i in range(len(header))]
    spans = [f" {MODE_TITLES.get(m, m)} ".center(sum(col_w[1 + 4 * k : 5 + 4 * k]) + 6, "-")
             for k, m in enumerate(modes)]  # fmt: skip
    top = "  " + " " * col_w[0] + "  " + "  ".join(spans)
    return [
        title,
        top,
        *out,
        *(f"  {r.label}: {r.note}" for r in noted),
        *(f"  {x}" for x in footer),
        f"  (Nx faster = that row's time / the time of {ours}: above 1, {ours} is faster)",
    ]
