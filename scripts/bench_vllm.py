"""vLLM model loading, side by side: vLLM's own load formats against ``--load-format flashpack``
and ``flashpack_restart``, hot and cold, on a random-weight Llama of --size-gib (float32).

Run it with the python of a venv holding vLLM and flashpack (`make vllm-venv`, then the wheel
installed as `make test-vllm` installs it):

    .venv-vllm/bin/python scripts/bench_vllm.py --work .bench/vllm-model [--size-gib 1] [--out .bench/vllm]

Rows: vLLM's default loader on the safetensors shards (``auto``), ``runai_streamer`` and
``fastsafetensors`` (where they run: a row that fails says why), ours on the same shards, ours on
a ``model.flashpack`` of them, and the fast restart (``flashpack_restart`` of a save made by a
``flashpack`` load). Each row is loaded cold (the files' pages dropped: fsync, then
posix_fadvise(DONTNEED)) and then hot. Two times per load: ``weights``, the "Loading weights took"
line vLLM's loaders log (runai_streamer logs none), and ``load_model``, the whole of vLLM's
``BaseModelLoader.load_model`` (model init, weights, process_weights_after_loading), timed here
for every row alike. The engines run in this process (the "uni" executor), one after another; on
CUDA vLLM the same rows run on the GPU (device as vLLM chooses it).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import tables

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

ROWS = [
    "auto",
    "runai_streamer",
    "fastsafetensors",
    "flashpack (safetensors)",
    "flashpack (model.flashpack)",
    "flashpack_restart",
]
OURS = ROWS[3:]
PEERS = ROWS[:3]
CONFIG_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")


def make_model(folder: Path, size_gib: float) -> None:
    """A float32 Llama of about ``size_gib`` with random weights and a word-level tokenizer,
    saved by transformers in 512 MB shards (skipped when ``folder`` holds one already)."""
    stamp = folder / ".bench-model"
    if stamp.is_file() and stamp.read_text() == str(size_gib):
        return
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{k}": k + 3 for k in range(32000 - 3)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    fast.save_pretrained(folder)
    hidden, inter = 1024, 2816
    per_layer = 4 * (2 * hidden * hidden + 2 * hidden * hidden // 4 + 3 * hidden * inter)
    layers = max(1, round((size_gib * 2**30 - 4 * 2 * 32000 * hidden) / per_layer))
    config = LlamaConfig(
        vocab_size=32000,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=16,
        num_key_value_heads=4,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        dtype="float32",
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder, max_shard_size="512MB")
    stamp.write_text(str(size_gib))


def drop_pages(folder: Path) -> None:
    """Push the folder's files out of the page cache: fsync, then posix_fadvise(DONTNEED)."""
    for f in folder.iterdir():
        if f.is_file():
            tables.drop_cache(f)


class Timings(logging.Handler):
    """Collects the "Loading weights took X seconds" lines of vLLM's loaders (and ours)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.weights: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        m = re.search(r"Loading weights took ([0-9.]+) seconds", record.getMessage())
        if m:
            self.weights.append(float(m.group(1)))


def load(model: Path, load_format: str, extra: dict[str, Any], timings: Timings, spans: list[float]) -> list[int]:
    """One engine: loads the model, generates 4 greedy tokens (all rows must agree), shuts down."""
    from vllm import LLM, SamplingParams
    from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

    # vLLM configures its "vllm" logger again while it starts (dropping handlers added there), so
    # the collector sits on the loaders' parent logger (vLLM's loaders and ours log under it).
    loaders = logging.getLogger("vllm.model_executor.model_loader")
    if timings not in loaders.handlers:
        loaders.addHandler(timings)
    llm = LLM(
        model=str(model),
        load_format=load_format,
        model_loader_extra_config=extra,
        dtype="float32",
        enforce_eager=True,
        max_model_len=64,
        max_num_seqs=1,
        kv_cache_memory_bytes=64 << 20,
        distributed_executor_backend="uni",
        seed=0,
    )
    try:
        out = llm.generate(["w1 w2 w3"], SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True), use_tqdm=False)
        return list(out[0].outputs[0].token_ids)
    finally:
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()
        cleanup_dist_env_and_memory()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path(".bench/vllm-model"))
    ap.add_argument("--size-gib", type=float, default=1.0)
    ap.add_argument("--out", type=Path, default=Path(".bench/vllm"))
    ap.add_argument("--rows", default=",".join(ROWS), help="comma-separated subset of: " + ", ".join(ROWS))
    args = ap.parse_args()
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    st, fp, restart = args.work / "st", args.work / "fp", args.work / "restart"

    t0 = time.perf_counter()
    make_model(st, args.size_gib)
    if not (fp / "model.flashpack").is_file():
        fp.mkdir(parents=True, exist_ok=True)
        for name in CONFIG_FILES:
            shutil.copy2(st / name, fp / name)
        subprocess.run([sys.executable, "-m", "flashpack", "convert", str(st), str(fp / "model.flashpack")], check=True)
    size = sum(f.stat().st_size for f in st.glob("*.safetensors"))
    print(f"model: {size / 2**30:.2f} GiB of float32 safetensors in {st} (set-up {time.perf_counter() - t0:.0f} s)")

    import torch
    import vllm
    from vllm.model_executor.model_loader.base_loader import BaseModelLoader

    timings = Timings()
    spans: list[float] = []
    original = BaseModelLoader.load_model

    def timed(self: Any, *a: Any, **k: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(self, *a, **k)
        finally:
            spans.append(time.perf_counter() - start)

    BaseModelLoader.load_model = timed

    if "flashpack_restart" in rows and not (restart / "flashpack-restart-tp0of1-pp0of1.flashpack").is_file():
        load(st, "flashpack", {"save_restart": str(restart)}, timings, spans)
    specs: dict[str, tuple[Path, str, dict[str, Any]]] = {
        "auto": (st, "auto", {}),
        "runai_streamer": (st, "runai_streamer", {}),
        "fastsafetensors": (st, "fastsafetensors", {}),
        "flashpack (safetensors)": (st, "flashpack", {}),
        "flashpack (model.flashpack)": (fp, "flashpack", {}),
        "flashpack_restart": (restart, "flashpack_restart", {}),
    }
    results: dict[str, dict[str, Any]] = {}
    reference: list[int] | None = None
    for row in rows:
        folder, fmt, extra = specs[row]
        results[row] = {}
        for temp in ("cold", "hot"):
            if temp == "cold":
                drop_pages(folder)
            timings.weights.clear()
            spans.clear()
            try:
                ids = load(folder, fmt, extra, timings, spans)
            except Exception as e:  # noqa: BLE001 -- a peer that does not run here: its row says why
                results[row] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
                break
            reference = reference or ids
            results[row][temp] = {
                "weights_s": timings.weights[-1] if timings.weights else None,
                "load_model_s": spans[-1] if spans else None,
                "same_output": ids == reference,
            }
            print(f"{row:30s} {temp}: {results[row][temp]}", flush=True)

    header = (
        f"vLLM {vllm.__version__} ({torch.__version__}), {size / 2**30:.2f} GiB float32 Llama, "
        f"{os.cpu_count()} CPUs; seconds (weights: vLLM's 'Loading weights took'; load_model: the whole load)"
    )
    lines = [
        header,
        "",
        "| row | cold weights | cold load_model | hot weights | hot load_model |",
        "|---|---|---|---|---|",
    ]

    def cell(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    for row, r in results.items():
        if "error" in r:
            lines.append(f"| {row} | does not run: {r['error']} | | | |")
            continue
        c, h = r.get("cold", {}), r.get("hot", {})
        lines.append(
            f"| {row} | {cell(c.get('weights_s'))} | {cell(c.get('load_model_s'))} | {cell(h.get('weights_s'))} "
            f"| {cell(h.get('load_model_s'))} |"
        )
    lines.append("")
    for ours in [r for r in OURS if "error" not in results.get(r, {"error": 1})]:
        for peer in [p for p in PEERS if "error" not in results.get(p, {"error": 1})]:
            for temp in ("cold", "hot"):
                a, b = results[ours][temp]["load_model_s"], results[peer][temp]["load_model_s"]
                lines.append(f"- {temp}: {ours} is {b / a:.2f}x faster than {peer} (load_model)")
    mismatched = [
        f"{row} {t}" for row, r in results.items() for t, v in r.items() if t != "error" and not v["same_output"]
    ]
    if mismatched:
        lines.append(f"\nOUTPUTS DIFFER from the first row's: {', '.join(mismatched)}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    sys.stdout.flush()
    os._exit(1 if mismatched else 0)


if __name__ == "__main__":
    main()
