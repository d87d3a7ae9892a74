#!/usr/bin/env bash
# `make gpu-check`: the one prepared run for a machine with a GPU. Builds (or installs the carried
# wheel), runs the CUDA correctness tests, then the bench on a large file; logs, results and the
# chart go to $OUT (default .bench/gpu-check). On a machine without a GPU it runs to the end with
# the CUDA parts skipped and says so.
#
# On the lent GPU machine there is no Rust toolchain and no registry: build the wheel here first
# (`make wheel`, which also downloads flashpack 0.4.5 into dist/oracle and the checkpoint peers --
# Run:ai model streamer, fastsafetensors, InstantTensor -- into dist/peers) and carry `dist`.
#
# Then the checkpoint bench (scripts/bench_checkpoint.py, 4 safetensors shards of the same size):
# ours load_checkpoint(device="cuda") against the pinned host-to-device peak (target >= 0.9x) and
# against InstantTensor, fastsafetensors, Run:ai and safetensors on the same files (target: faster
# than InstantTensor), cold and hot; results in $OUT/checkpoint. Then the remote bench's CUDA rows
# (scripts/bench_remote.py --device cuda; results in $OUT/remote), and the vLLM rows when a CUDA
# vLLM is there (VLLM_CUDA_PY; results in $OUT/vllm).
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT=${OUT:-.bench/gpu-check}
mkdir -p "$OUT"

if command -v nvidia-smi >/dev/null && nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1; then
    size=${GPU_CHECK_GIB:-8}
else
    echo "no GPU here: CUDA tests and GPU bench rows will be skipped" | tee "$OUT/nvidia-smi.txt"
    size=${GPU_CHECK_GIB:-1}
fi

if command -v cargo >/dev/null; then
    make build 2>&1 | tail -3
    PY=.venv/bin/python
else
    export PIP_NO_INDEX=1 PIP_FIND_LINKS="$PWD/dist"
    python3 -m pip install -q --no-deps --no-compile --target /tmp/flashpack-site dist/flashpack-*-manylinux*_"$(uname -m)".whl || exit 1
    export PYTHONPATH=/tmp/flashpack-site
    # flashpack 0.4.5 and its pure-Python needs, when carried (`make wheel` downloads them into
    # dist/oracle), become the bench's peer through their own PYTHONPATH.
    if ls dist/oracle/*.whl >/dev/null 2>&1 &&
        python3 -m pip install -q --no-deps --no-compile --target /tmp/oracle-site dist/oracle/*.whl; then
        export BENCH_ORACLE_PYTHONPATH=/tmp/oracle-site
    fi
    if ls dist/peers/*.whl >/dev/null 2>&1 &&
        python3 -m pip install -q --no-deps --no-compile --target /tmp/peers-site dist/peers/*.whl; then
        export BENCH_PEERS_PYTHONPATH=/tmp/peers-site
    fi
    PY=python3
fi
export PYTHONUNBUFFERED=1
"$PY" -c 'import torch, flashpack; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "flashpack", flashpack.__version__)' | tee "$OUT/versions.txt"

status=0
"$PY" -m pytest bindings/python/tests/test_cuda.py bindings/python/tests/test_roundtrip.py \
    bindings/python/tests/test_integrations_workflows.py -q -rs -p no:cacheprovider 2>&1 | tee "$OUT/tests.log" || status=1
"$PY" scripts/bench.py --size-gib "$size" --out "${BENCH_DIR:-.bench/gpu-bench}" 2>&1 | tee "$OUT/bench-run.log" || status=1
"$PY" scripts/bench_checkpoint.py --size-gib "$size" --shards 4 --work "${BENCH_DIR:-.bench/gpu-bench}/checkpoint-model" \
    2>&1 | tee "$OUT/bench-checkpoint.log" || status=1
# The remote bench's CUDA rows: the same file from s3s-fs on this machine (dist/s3s-fs, which
# `make wheel` copies there), ours vs Run:ai vs download-then-load, to the GPU.
if ! "$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
    echo "no CUDA device: the remote bench's CUDA rows are skipped" | tee "$OUT/bench-remote.log"
elif [[ ! -x dist/s3s-fs ]]; then
    echo "dist/s3s-fs missing (make wheel copies it): the remote bench's CUDA rows are skipped" | tee "$OUT/bench-remote.log"
else
    "$PY" scripts/bench_remote.py --device cuda --size-gib "$size" --s3s-fs dist/s3s-fs \
        --work "${BENCH_DIR:-.bench/gpu-bench}/remote" 2>&1 | tee "$OUT/bench-remote.log" || status=1
fi
# The vLLM rows (scripts/bench_vllm.py) on the GPU: a CUDA build of vLLM with flashpack installed
# (the GPU machine has no registry: provision it and name its python in VLLM_CUDA_PY).
if [[ -x "${VLLM_CUDA_PY:-}" ]]; then
    "$VLLM_CUDA_PY" scripts/bench_vllm.py --work "${BENCH_DIR:-.bench/gpu-bench}/vllm-model" --size-gib "$size" \
        --out "$OUT/vllm" 2>&1 | tee "$OUT/bench-vllm.log" || status=1
else
    echo "vLLM bench skipped: no CUDA vLLM here (set VLLM_CUDA_PY to its python)" | tee "$OUT/bench-vllm.log"
fi
exit $status
