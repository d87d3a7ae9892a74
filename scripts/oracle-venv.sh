#!/usr/bin/env bash
# Create (idempotently) the "oracle" virtualenv that holds the ORIGINAL
# flashpack package from PyPI, used by bindings/python/tests/test_interop.py
# to check that our files are bit-exactly exchangeable with it.
#
#   scripts/oracle-venv.sh            # creates ./.venv-oracle (fast no-op when done)
#
# Environment:
#   ORACLE_VENV   where to put the oracle venv   (default: <repo>/.venv-oracle)
#   PROJECT_VENV  the project venv whose torch is reused (default: <repo>/.venv)
#   ORACLE_FLASHPACK_VERSION  original version (default: 0.4.5)
#
# torch is NOT installed into the oracle venv: a .pth file in its
# site-packages appends the project venv's site-packages to sys.path, so the
# oracle's own packages (flashpack 0.4.5 above all) win over anything of the
# same name in the project venv (including our own flashpack), while torch
# and its dependencies come from the project venv.
#
# Exit codes: 0 ok; 3 the original package cannot be installed (registry
# refused / unreachable) -- callers may skip on 3; anything else is a failure.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ORACLE_VENV="${ORACLE_VENV:-$REPO/.venv-oracle}"
PROJECT_VENV="${PROJECT_VENV:-$REPO/.venv}"
FP_VERSION="${ORACLE_FLASHPACK_VERSION:-0.4.5}"
ACCELERATE_VERSION="1.15.0"

log() { echo "oracle-venv: $*" >&2; }
source "$(dirname "${BASH_SOURCE[0]}")/venv-lib.sh"

if [[ ! -x "$PROJECT_VENV/bin/python" ]]; then
    log "project venv not found at $PROJECT_VENV (set PROJECT_VENV)"
    exit 1
fi

# The project venv's site-packages, e.g. .../.venv/lib/python3.11/site-packages.
PROJECT_SITE="$("$PROJECT_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
PY_TAG="$(basename "$(dirname "$PROJECT_SITE")")"   # python3.11
SCRIPT_SUM="$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-16)"
STAMP_WANT="flashpack=$FP_VERSION accelerate=$ACCELERATE_VERSION project_site=$PROJECT_SITE script=$SCRIPT_SUM"
STAMP="$ORACLE_VENV/.oracle-stamp"
PTH="$ORACLE_VENV/lib/$PY_TAG/site-packages/zz_flashpack_oracle_project_venv.pth"

fast_path_ok() {
    [[ -f "$STAMP" && -x "$ORACLE_VENV/bin/python" && -f "$PTH" ]] &&
        [[ "$(cat "$STAMP")" == "$STAMP_WANT" ]] &&
        [[ "$(cat "$PTH")" == "$PROJECT_SITE" ]] &&
        [[ -d "$PROJECT_SITE/torch" ]]
}

if fast_path_ok; then
    echo "$ORACLE_VENV"
    exit 0
fi

mkdir -p "$(dirname "$ORACLE_VENV")"
# Serialize concurrent creators (e.g. parallel test sessions).
LOCK="${TMPDIR:-/tmp}/flashpack-oracle-$(printf '%s' "$ORACLE_VENV" | sha256sum | cut -c1-16).lock"
exec 9>"$LOCK"
if command -v flock >/dev/null 2>&1; then
    flock 9
fi
if fast_path_ok; then   # someone else finished while we waited
    echo "$ORACLE_VENV"
    exit 0
fi

T0=$(date +%s)
if [[ ! -d "$PROJECT_SITE/torch" ]]; then
    log "torch is not installed in the project venv ($PROJECT_SITE); install it there first"
    exit 1
fi

# Start from scratch whenever the stamp is missing or stale (half-built venv,
# other project venv, other version). Only ever remove something that is a venv.
fresh_venv "$ORACLE_VENV" "$PROJECT_VENV"
OPY="$ORACLE_VENV/bin/python"
PIP=("$OPY" -m pip --disable-pip-version-check --no-input -q)

# 1. The original package itself, without its dependencies (it would pull torch).
PIP_LOG="$(mktemp)"
trap 'rm -f "$PIP_LOG"' EXIT
if ! "${PIP[@]}" install --no-deps "flashpack==$FP_VERSION" >"$PIP_LOG" 2>&1; then
    cat "$PIP_LOG" >&2
    rm -rf "$ORACLE_VENV"
    echo "ORACLE UNAVAILABLE: could not install flashpack==$FP_VERSION from the package registry (see pip output above); interop tests against the original package cannot run." >&2
    exit 3
fi

# 2. accelerate (imported by flashpack.mixin at import time), also without
#    deps: its requirements include torch.
# pip complains that torch "is not installed" (true: it comes in via the .pth
# below); its output is shown only on failure.
pip_quiet() {
    if ! "${PIP[@]}" "$@" >"$PIP_LOG" 2>&1; then
        cat "$PIP_LOG" >&2
        log "pip $* failed"
        exit 1
    fi
}
pip_quiet install --no-deps "accelerate==$ACCELERATE_VERSION"

# 3. The light dependencies of flashpack + accelerate, with their own deps.
#    Pinned to the project venv's versions where it has them, so both sides
#    run the same numpy etc.
LIGHT_DEPS=(click safetensors tqdm numpy packaging psutil pyyaml huggingface_hub)
mapfile -t PINNED < <("$PROJECT_VENV/bin/python" - "${LIGHT_DEPS[@]}" <<'EOF'
import sys
from importlib import metadata
for name in sys.argv[1:]:
    try:
        print(f"{name}=={metadata.version(name)}")
    except metadata.PackageNotFoundError:
        print(name)
EOF
)
pip_quiet install "${PINNED[@]}"

# 4. Reuse the project venv's torch: append its site-packages to sys.path.
#    A plain path line (not site.addsitedir) so the project venv's own .pth
#    files -- e.g. an editable install of *our* flashpack -- are not run.
printf '%s' "$PROJECT_SITE" >"$PTH"

# 5. Verify: the oracle's flashpack is the original, from the oracle venv,
#    and its imports (torch, accelerate, ...) resolve.
if ! "$OPY" - "$FP_VERSION" "$ORACLE_VENV" <<'EOF'
import os, sys
want, venv = sys.argv[1], os.path.realpath(sys.argv[2])
import torch, numpy, accelerate, safetensors, tqdm, click  # noqa: F401
import flashpack
import flashpack.deserialization, flashpack.serialization  # noqa: F401
where = os.path.realpath(flashpack.__file__)
assert flashpack.__version__ == want, f"oracle flashpack is {flashpack.__version__}, want {want}"
assert where.startswith(venv + os.sep), f"oracle flashpack imported from {where}, not {venv}"
assert hasattr(flashpack, "pack_to_file")
print(f"oracle-venv: flashpack {flashpack.__version__} from {where}; torch {torch.__version__} from {torch.__file__}", file=sys.stderr)
EOF
then
    log "verification of $ORACLE_VENV failed"
    exit 1
fi

printf '%s' "$STAMP_WANT" >"$STAMP"
log "ready in $(( $(date +%s) - T0 ))s"
echo "$ORACLE_VENV"
