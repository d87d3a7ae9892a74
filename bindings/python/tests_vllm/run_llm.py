"""Runs vLLM (CPU) on a list of jobs, one LLM engine after another, in this process.

    python run_llm.py JOBS.json OUT.json

Each job: {"model", "load_format", "extra" (model_loader_extra_config), "prompts", "max_tokens",
"dtype", "processes"}. "processes": true runs vLLM as it runs by default (engine core and worker in
processes of their own, the plugin found there through its entry point); otherwise the engine runs
in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0, the "uni" executor), which starts in seconds
instead of a minute on a loaded 2-core machine.
OUT.json gets, per job, {"ids": [[token ids] per prompt]} or {"error": "<type>: <message>"}.
Before each job a line "=== job <k> ===" goes to stderr (and stdout), so a test can tell which
job logged what (vLLM logs a worker's exception in its own process; the exception that reaches
this one says only that the engine failed to start).
"""

from __future__ import annotations

import gc
import json
import os
import sys
from typing import Any


def run(job: dict[str, Any]) -> dict[str, Any]:
    processes = bool(job.get("processes"))
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if processes else "0"
    from vllm import LLM, SamplingParams
    from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

    llm = LLM(
        distributed_executor_backend="mp" if processes else "uni",
        model=job["model"],
        load_format=job["load_format"],
        model_loader_extra_config=job.get("extra") or {},
        dtype=job.get("dtype", "float32"),
        enforce_eager=True,
        max_model_len=64,
        max_num_seqs=4,
        kv_cache_memory_bytes=32 << 20,
        seed=0,
    )
    try:
        params = SamplingParams(temperature=0.0, max_tokens=job.get("max_tokens", 12), ignore_eos=True)
        outputs = llm.generate(job["prompts"], params, use_tqdm=False)
        return {"ids": [list(o.outputs[0].token_ids) for o in outputs]}
    finally:
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()
        cleanup_dist_env_and_memory()


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as f:
        jobs = json.load(f)
    results = []
    for k, job in enumerate(jobs):
        for stream in (sys.stdout, sys.stderr):
            print(f"=== job {k} ===", file=stream, flush=True)
        try:
            results.append(run(job))
        except Exception as e:  # noqa: BLE001 -- reported to the test, which decides
            results.append({"error": f"{type(e).__name__}: {e}"})
        with open(sys.argv[2], "w", encoding="utf-8") as f:
            json.dump(results, f)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # vLLM's background threads must not keep a finished run alive


if __name__ == "__main__":
    main()
