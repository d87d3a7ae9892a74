#!/usr/bin/env python3
"""Checkpoint benchmark: a sharded safetensors checkpoint loaded by ours and by the peers.

    .venv/bin/python scripts/bench_checkpoint.py                  # >= 2 GiB in 4 shards, best of 2
    .venv/bin/python scripts/bench_checkpoint.py --quick          # ~256 MiB smoke run, 1 repeat
    .venv/bin/python scripts/bench_checkpoint.py --size-gib 4 --shards 8 --repeats 3

The checkpoint is a transformers model folder (Llama-shaped config, random bf16 weights): shards
``model-0000i-of-0000N.safetensors`` written with safetensors' ``save_file``, a
``model.safetensors.index.json`` and a ``config.json``, kept under --work between runs (so
scripts/bench_hf.py can load the same folder with ``from_pretrained``).

Rows (each where it runs here; a skipped row says why):

* ours: ``flashpack.load_checkpoint(folder)`` lazy and ``eager=True``; with CUDA, ``device="cuda"``;
  and eager with ``io="buffered"`` (page cache + readahead instead of ``O_DIRECT`` for cold data:
  the alternative weighed in BENCHMARKS.md's cold-path section);
* ``safetensors.torch.load_file`` on each shard (and ``device="cuda"``);
* Run:ai model streamer (PyPI ``runai-model-streamer``): ``SafetensorsStreamer.stream_files`` over
  the shards, every tensor kept (``owned=True``);
* fastsafetensors: ``fastsafe_open(shards, device=..., nogds=True)``;
* InstantTensor: ``safe_open(shards, device=0)`` (CUDA only).

The peers run in their own venv (scripts/peers-venv.sh, from PyPI; torch shared with the project
venv). Each measurement runs in a FRESH subprocess that loads, then sums every byte (int64 views,
the same pass for every loader), then sums again (resident: the summing cost alone). **total** =
load call + first pass. Cold = every shard evicted first (fsync + posix_fadvise(DONTNEED),
checked with fincore), hot = every shard read once first. The best of --repeats by total is
reported. One table per kind of load, like with like (CPU lazy, CPU eager, GPU;
scripts/tables.py): hot and cold side by side, the ceiling (dd of the hot shards / O_DIRECT dd;
for the GPU, also the pinned host -> device peak) as a row and each row's share of it, and how
many times faster ours is than each row (row total / ours). Every loader's byte sum must agree,
else the run fails.

Results: RESULTS/bench_checkpoint.json and table.txt (RESULTS = $OUT/checkpoint if $OUT is set,
else --out).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE.parent))
import bench  # noqa: E402  (shared helpers: touch pass, dd, machine info)
import tables  # noqa: E402  (page cache, the comparison tables)

MiB, GiB = 1 << 20, 1 << 30

# name, python ("project" / "peers"), device, label
LOADERS = [
    ("ours-lazy", "project", "cpu", "ours load_checkpoint (lazy)"),
    ("ours-eager", "project", "cpu", "ours load_checkpoint(eager=True)"),
    ("ours-eager-buffered", "project", "cpu", "ours eager, io='buffered' (+ readahead)"),
    ("safetensors", "project", "cpu", "safetensors load_file per shard"),
    ("runai", "peers", "cpu", "Run:ai SafetensorsStreamer"),
    ("fastsafetensors", "peers", "cpu", "fastsafetensors fastsafe_open"),
    ("instanttensor", "peers", "cpu", "InstantTensor safe_open"),
    ("ours-cuda", "project", "cuda", "ours load_checkpoint(device='cuda')"),
    ("safetensors-cuda", "project", "cuda", "safetensors load_file(device='cuda')"),
    ("runai-cuda", "peers", "cuda", "Run:ai SafetensorsStreamer (cuda)"),
    ("fastsafetensors-cuda", "peers", "cuda", "fastsafetensors (cuda)"),
    ("instanttensor-cuda", "peers", "cuda", "InstantTensor safe_open (cuda)"),
]
OURS = {"ours-lazy", "ours-eager", "ours-eager-buffered", "ours-cuda"}

# ---------------------------------------------------------------------------------------------
# The checkpoint


def llama_config(size_bytes: int):
    """A Llama-shaped bf16 config with at least ``size_bytes`` of weights."""
    import transformers

    # Smaller matrices for small runs, so that every shard gets tensors.
    hidden, inter, vocab = (2048, 5632, 32000) if size_bytes >= GiB else (1024, 2816, 8000)
    per_layer = 2 * (4 * hidden * hidden + 3 * hidden * inter + 2 * hidden)
    embeddings = 2 * 2 * vocab * hidden + 2 * hidden
    layers = max(1, math.ceil((size_bytes - embeddings) / per_layer))
    return transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
        num_attention_heads=hidden // 128, num_key_value_heads=hidden // 128, max_position_embeddings=2048,
        tie_word_embeddings=False, dtype="bfloat16",
    )  # fmt: skip


def make_checkpoint(folder: Path, size_bytes: int, shards: int) -> list[Path]:
    """Writes the folder (reused when its stamp matches); returns the shard paths."""
    stamp = folder / ".bench-stamp"
    want = f"size={size_bytes} shards={shards} v2"
    names = [folder / f"model-{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)]
    if stamp.is_file() and stamp.read_text() == want and all(p.is_file() for p in names):
        return names
    import torch
    import transformers
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.safetensors"):
        old.unlink()
    config = llama_config(size_bytes)
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config)
    specs = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    total = sum(math.prod(s) * 2 for _, s in specs)
    per_shard = total / shards
    g = torch.Generator().manual_seed(1234)
    weight_map: dict[str, str] = {}
    shard: dict[str, torch.Tensor] = {}
    shard_bytes, index = 0, 0

    def flush() -> None:
        nonlocal shard, shard_bytes, index
        save_file(shard, str(names[index]), metadata={"format": "pt"})
        weight_map.update({k: names[index].name for k in shard})
        shard, shard_bytes, index = {}, 0, index + 1

    for name, shape in specs:
        # Norm weights near 1 like a trained model's; everything else small and centred.
        t = torch.rand(shape, generator=g, dtype=torch.float32)
        t = (t * 0.1 + 0.95) if name.endswith("norm.weight") else t.sub_(0.5).mul_(0.04)
        shard[name] = t.to(torch.bfloat16)
        shard_bytes += shard[name].numel() * 2
        if shard_bytes >= per_shard and index < shards - 1:
            flush()
    flush()
    if index != shards:
        raise SystemExit(f"wrote {index} shards, wanted {shards}: too few tensors to split")
    index_json = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index_json, indent=2))
    config.save_pretrained(folder)
    stamp.write_text(want)
    return names


# ---------------------------------------------------------------------------------------------
# One load, in a fresh process


def child_load(loader: str, folder: str) -> dict:
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    cuda = loader.endswith("cuda")
    device = "cuda" if cuda else "cpu"
    if cuda:
        torch.cuda.init()
        torch.empty(1, device="cuda")  # context creation is not part of the load
    index = json.loads((Path(folder) / "model.safetensors.index.json").read_text())
    shards = sorted({str(Path(folder) / f) for f in index["weight_map"].values()})
    base = loader.removesuffix("-cuda")
    # Import the loader's module before the clock starts (import cost is not load cost).
    if base.startswith("ours"):
        import flashpack

        if loader == "ours-eager-buffered":  # the page cache with readahead instead of O_DIRECT
            os.environ["FLASHPACK_DIRECT_IO"] = "0"  # read by flashpack.settings at each load
    elif base == "safetensors":
        from safetensors.torch import load_file
    elif base == "runai":
        from runai_model_streamer import SafetensorsStreamer
    elif base == "fastsafetensors":
        from fastsafetensors import fastsafe_open
    elif base == "instanttensor":
        import instanttensor
    base_rss = bench._maxrss_bytes()

    t0 = time.perf_counter()
    sd: dict[str, torch.Tensor] = {}
    if loader == "ours-lazy":
        sd = flashpack.load_checkpoint(folder)
    elif loader in ("ours-eager", "ours-eager-buffered"):
        sd = flashpack.load_checkpoint(folder, eager=True)
    elif loader == "ours-cuda":
        sd = flashpack.load_checkpoint(folder, device="cuda")
    elif base == "safetensors":
        for s in shards:
            sd.update(load_file(s, device=device))
    elif base == "runai":
        with SafetensorsStreamer() as streamer:
            streamer.stream_files(shards, device=device)
            for name, t in streamer.get_tensors():
                sd[name] = t
    elif base == "fastsafetensors":
        with fastsafe_open(shards, device="cuda:0" if cuda else "cpu", nogds=True) as f:
            sd = {k: f.get_tensor(k) for k in f.keys()}
    elif base == "instanttensor":
        with instanttensor.safe_open(shards, framework="pt", device=0) as f:
            sd = dict(f.tensors())
    else:
        raise SystemExit(f"unknown loader {loader}")
    if cuda:
        torch.cuda.synchronize()
    t1 = time.perf_counter()
    tensors = list(sd.values())
    s1 = bench._touch(tensors, cuda)
    t2 = time.perf_counter()
    s2 = bench._touch(tensors, cuda)
    t3 = time.perf_counter()
    if s1 != s2:
        raise SystemExit(f"{loader}: the two passes over the loaded bytes disagree")
    return {
        "load_s": t1 - t0, "touch1_s": t2 - t1, "touch2_s": t3 - t2,
        "bytes": sum(t.numel() * t.element_size() for t in tensors), "tensors": len(tensors),
        "checksum": s1, "base_rss": base_rss, "peak_rss": bench._maxrss_bytes(),
    }  # fmt: skip


def skip_reason(loader: str, peers_py: str | None, missing: dict[str, str], has_cuda: bool) -> str | None:
    """Why `loader` cannot run here, or None."""
    import importlib.util

    base = loader.removesuffix("-cuda")
    if loader.endswith("cuda") and not has_cuda:
        return "no CUDA device"
    if base == "instanttensor" and not loader.endswith("cuda"):
        return "InstantTensor loads to CUDA devices only ('only supports CUDA devices for now')"
    if base.startswith("ours"):
        import flashpack

        if not hasattr(flashpack, "load_checkpoint"):
            return "flashpack.load_checkpoint is not in this build (the loading API of issue 14)"
        return None
    if base in ("runai", "fastsafetensors", "instanttensor"):
        if peers_py is None:
            return "the peers venv could not be created (scripts/peers-venv.sh)"
        module = {"runai": "runai_model_streamer"}.get(base, base)
        if module in missing:
            return missing[module]
        return None
    return None if importlib.util.find_spec(base) else f"{base} is not installed"


def run_child(python: str, args: list[str], env_extra: dict | None = None, timeout: int = 1800) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHPACK_")}
    env.setdefault("RUNAI_STREAMER_LOG_LEVEL", "WARNING")
    env.update(env_extra or {})
    p = subprocess.run([python, str(HERE), *args], capture_output=True, text=True, env=env, timeout=timeout)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("BENCHJSON ")]
    if p.returncode != 0 or not lines:
        return {"error": (p.stderr.strip() or p.stdout.strip())[-800:]}
    return json.loads(lines[-1][len("BENCHJSON ") :])


def peer_modules(peers_py: str, env_extra: dict) -> dict[str, str]:
    """Peer modules that do not import in the peers' environment, with the error."""
    missing = {}
    for module in ("runai_model_streamer", "fastsafetensors", "instanttensor"):
        env = {**os.environ, **env_extra}
        p = subprocess.run([peers_py, "-c", f"import {module}"], capture_output=True, text=True, env=env)
        if p.returncode != 0:
            missing[module] = f"{module} does not import: {p.stderr.strip().splitlines()[-1][-200:]}"
    return missing


# ---------------------------------------------------------------------------------------------
# The run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-gib", type=float, default=2.0)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="~256 MiB smoke run, 1 repeat")
    ap.add_argument("--work", default=str(REPO / ".bench/checkpoint-model"), help="the checkpoint folder")
    ap.add_argument("--out", default=str(REPO / ".bench/checkpoint"), help="results folder (or $OUT/checkpoint)")
    ap.add_argument("--only", nargs="*", help="run only these loaders")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print("BENCHJSON " + json.dumps(child_load(*a.child)), flush=True)
        return 0

    size = 256 * MiB if a.quick else int(a.size_gib * GiB)
    repeats = 1 if a.quick else max(1, a.repeats)
    if a.shards < 1:
        raise SystemExit("--shards must be at least 1")
    folder = Path(a.work).resolve()
    res_dir = Path(os.environ["OUT"]).resolve() / "checkpoint" if os.environ.get("OUT") else Path(a.out).resolve()
    res_dir.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []

    def log(msg: str) -> None:
        print(msg, flush=True)
        lines.append(msg)

    import torch

    has_cuda = torch.cuda.is_available()
    t = time.perf_counter()
    shards = make_checkpoint(folder, size, a.shards)
    payload = sum(p.stat().st_size for p in shards)
    info = bench.machine_info(folder)
    log(f"checkpoint bench  {info.get('date')}  {folder}: {len(shards)} shards, "
        f"{payload / MiB:.1f} MiB ({payload / 1e9:.2f} GB) of safetensors, best of {repeats}"
        f"  (folder ready in {time.perf_counter() - t:.1f} s)")  # fmt: skip
    log(f"machine: {info.get('cpu', '?')}, {info.get('nproc')} cpus, {info.get('ram_gib')} GiB RAM, "
        f"{info.get('filesystem', '?')}, gpu: {info.get('gpu', 'none')}, torch {info.get('torch')}")  # fmt: skip

    # The peers: their own venv from PyPI, or (on a machine without a registry, set by
    # scripts/gpu-check.sh) wheels installed into a folder put on this interpreter's path.
    peers_env: dict[str, str] = {}
    if os.environ.get("BENCH_PEERS_PYTHONPATH"):
        peers_py: str | None = sys.executable
        peers_env = {"PYTHONPATH": os.pathsep.join(filter(None, [os.environ["BENCH_PEERS_PYTHONPATH"], os.environ.get("PYTHONPATH")]))}
    else:
        p = subprocess.run(["bash", str(REPO / "scripts/peers-venv.sh")], capture_output=True, text=True)
        peers_py = str(Path(p.stdout.strip().splitlines()[-1]) / "bin/python") if p.returncode == 0 else None
        if peers_py is None:
            log(f"peers venv: scripts/peers-venv.sh failed (rc={p.returncode}): {p.stderr.strip()[-300:]}")
    missing = peer_modules(peers_py, peers_env) if peers_py else {}
    if peers_py:
        code = (
            "import importlib.metadata as m, json\nv = {}\n"
            "for n in ('runai-model-streamer', 'fastsafetensors', 'instanttensor'):\n"
            "    try:\n        v[n] = m.version(n)\n    except m.PackageNotFoundError:\n        pass\n"
            "print(json.dumps(v))"
        )
        out = subprocess.run([peers_py, "-c", code], capture_output=True, text=True, env={**os.environ, **peers_env})
        info["peers"] = json.loads(out.stdout or "{}") if out.returncode == 0 else {}
        log(f"peers: {info['peers']}")
    pythons = {"project": sys.executable, "peers": peers_py}

    # Ceilings: the disk (O_DIRECT) and the page cache, over every shard.
    def dd_all(direct: bool) -> dict:
        done = [bench.dd_rate(s, direct) for s in shards]
        if any("error" in d for d in done):
            return next(d for d in done if "error" in d)
        secs = sum(d["s"] for d in done)
        return {"s": secs, "gbps": payload / secs / 1e9}

    for s in shards:
        tables.drop_cache(s)
    ceilings = {"direct_disk": dd_all(True)}
    for s in shards:
        tables.warm(s)
    ceilings["dd_hot"] = dd_all(False)
    if has_cuda:
        ceilings["h2d_pinned_peak"] = bench.h2d_peak(payload)
    for k, v in ceilings.items():
        log(f"ceiling {k}: {v.get('gbps', 0):.2f} GB/s" if "error" not in v else f"ceiling {k}: {v['error']}")

    results: dict = {"machine": info, "payload_bytes": payload, "shards": len(shards), "repeats": repeats,
                     "ceilings": ceilings, "load": {}, "skipped": {}}  # fmt: skip
    runnable = []
    for name, which, _dev, label in LOADERS:
        if a.only and name not in a.only:
            continue
        why = skip_reason(name, peers_py, missing, has_cuda)
        if why:
            results["skipped"][name] = why
            log(f"skip {label}: {why}")
        else:
            runnable.append((name, which))

    # Loaders take turns within each repeat; cold then hot for each.
    for r in range(repeats):
        for name, which in runnable:
            for mode in ("cold", "hot"):
                key = f"{name}:{mode}"
                if "error" in results["load"].get(key, {}):
                    continue
                for s in shards:
                    (tables.drop_cache if mode == "cold" else tables.warm)(s)
                res = [tables.resident_fraction(s) for s in shards]
                resident = None if None in res else round(
                    sum(min(1.0, f) * s.stat().st_size for f, s in zip(res, shards)) / payload, 3)
                load_avg = os.getloadavg()[0]
                out = run_child(pythons[which], ["--child", name, str(folder)], peers_env if which == "peers" else None)
                out.update(resident_before=resident, loadavg=load_avg, repeat=r)
                if "error" in out:
                    log(f"{key}: FAILED: {out['error']}")
                    results["load"][key] = out
                    continue
                out["total_s"] = out["load_s"] + out["touch1_s"]
                log(f"  run {r} {key:28s} total {out['total_s']:7.3f} s  call {out['load_s']:7.3f} s"
                    f"  resident before {resident}  load avg {load_avg:.2f}")  # fmt: skip
                out["runs"] = results["load"].get(key, {}).get("runs", []) + [out["total_s"]]
                best = results["load"].get(key)
                if best is None or out["total_s"] < best["total_s"]:
                    results["load"][key] = out
                else:
                    best["runs"] = out["runs"]

    sums = {k: v["checksum"] for k, v in results["load"].items() if "checksum" in v}
    if len(set(sums.values())) > 1:
        log(f"LOADERS DISAGREE on the bytes: {sums}")
        results["checksums_disagree"] = sums

    table = format_table(results, payload)
    log(table)
    (res_dir / "bench_checkpoint.json").write_text(json.dumps(results, indent=2))
    (res_dir / "table.txt").write_text("\n".join(lines) + "\n")
    print(f"wrote {res_dir / 'bench_checkpoint.json'} and {res_dir / 'table.txt'}")
    return 1 if "checksums_disagree" in results else 0


GROUPS = [
    ("CPU lazy loads: the shards memory-mapped, their pages read when first touched", ["ours-lazy", "safetensors"]),
    ("CPU eager loads: every byte copied into memory the tensors own",
     ["ours-eager", "ours-eager-buffered", "runai", "fastsafetensors", "instanttensor"]),
    ("GPU loads: every byte in device memory",
     ["ours-cuda", "safetensors-cuda", "runai-cuda", "fastsafetensors-cuda", "instanttensor-cuda"]),
]  # fmt: skip


def format_table(results: dict, payload: int) -> str:
    """The results, one table per kind of load (ours first: the reference of the ratios)."""
    loads, ceil = results["load"], results["ceilings"]
    labels = {n: label for n, _, _, label in LOADERS}
    hot, cold = ceil.get("dd_hot", {}).get("gbps"), ceil.get("direct_disk", {}).get("gbps")
    h2d = ceil.get("h2d_pinned_peak", {}).get("gbps")
    cpu_ceiling = tables.ceiling_row("ceiling: dd of the shards, hot / O_DIRECT", {"hot": hot, "cold": cold}, payload)
    gpu_ceiling = tables.ceiling_row(
        "ceiling: min(that, pinned H2D)",
        {"hot": min(hot, h2d) if hot and h2d else None, "cold": min(cold, h2d) if cold and h2d else None}, payload)  # fmt: skip
    lines: list[str] = []
    for title, names in GROUPS:
        rows = []
        for name in names:
            got = {m: loads.get(f"{name}:{m}", {}) for m in ("hot", "cold")}
            if name in results["skipped"]:
                rows.append(tables.Row(labels[name], note=f"skipped: {results['skipped'][name]}"))
            elif not any(got.values()):
                continue  # not asked for (--only)
            elif not any("total_s" in v for v in got.values()):
                err = next((v.get("error") for v in got.values() if v.get("error")), "") or "?"
                rows.append(tables.Row(labels[name], note=f"failed: {err.splitlines()[-1][:80]}"))
            else:
                rss = "/".join(f"{(v['peak_rss'] - v['base_rss']) / MiB:.0f}" if "total_s" in v else "-" for v in got.values())
                rows.append(tables.Row(labels[name], {m: v.get("total_s") for m, v in got.items()}, extra=[rss]))
        if rows:
            ours = labels[names[0]]
            lines += ["", *tables.table(title, payload, ours, rows, gpu_ceiling if "GPU" in title else cpu_ceiling,
                                        extra=["RSS-base MiB hot/cold"], short="ours")]  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
