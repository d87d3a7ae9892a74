#!/usr/bin/env bash
# Create (idempotently) the "peers" virtualenv for scripts/bench_checkpoint.py: the checkpoint
# loaders we compare against, from PyPI, at pinned versions.
#
#   scripts/peers-venv.sh            # creates ./.venv-peers (fast no-op when done); prints its path
#   scripts/peers-venv.sh --download DIR   # only downloads the peers' wheels (and their light
#                                          # dependencies) into DIR, for a machine without a registry
#                                          # (scripts/gpu-check.sh installs them from dist/peers)
#
# Environment:
#   PEERS_VENV    where to put it                  (default: <repo>/.venv-peers)
#   PROJECT_VENV  the project venv whose torch is reused (default: <repo>/.venv)
#
# As in scripts/oracle-venv.sh, torch is NOT installed here: a .pth file appends the project venv's
# site-packages to sys.path (torch, numpy, safetensors come from there; the peers' own packages
# from here). Each peer is installed without its dependencies (they would pull torch) and then
# its light ones. A peer that fails to install is left out (the bench prints why its row is
# skipped); the venv is still usable for the others.
#
# Exit codes: 0 ok (some peers may be missing: see PEERS_VENV/.peers-missing); 1 failure.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PEERS_VENV="${PEERS_VENV:-$REPO/.venv-peers}"
PROJECT_VENV="${PROJECT_VENV:-$REPO/.venv}"
# package==version and the light dependencies each imports (torch and numpy come from the project
# venv; fastsafetensors declares typer, which only its command line uses). runai-model-streamer-s3:
# Run:ai's S3 backend for scripts/bench_remote.py; boto3 (its dependency, listed with its own for
# --download) is also that bench's download-then-load row.
PEERS=("runai-model-streamer==0.17.1:humanize" "fastsafetensors==0.5.0:" "instanttensor==0.2.2:"
    "runai-model-streamer-s3==0.17.1:boto3,botocore,s3transfer,jmespath,python-dateutil,six,urllib3")

log() { echo "peers-venv: $*" >&2; }
source "$(dirname "${BASH_SOURCE[0]}")/venv-lib.sh"
[[ -x "$PROJECT_VENV/bin/python" ]] || { log "project venv not found at $PROJECT_VENV"; exit 1; }

if [[ "${1:-}" == "--download" ]]; then
    [[ -n "${2:-}" ]] || { log "--download needs a folder"; exit 1; }
    mkdir -p "$2"
    for spec in "${PEERS[@]}"; do
        deps="${spec#*:}"
        # shellcheck disable=SC2086
        "$PROJECT_VENV/bin/python" -m pip download --disable-pip-version-check --quiet --no-deps \
            --only-binary=:all: -d "$2" "${spec%%:*}" ${deps//,/ } || exit 1
    done
    exit 0
fi

PROJECT_SITE="$("$PROJECT_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
PY_TAG="$(basename "$(dirname "$PROJECT_SITE")")"
STAMP_WANT="${PEERS[*]} project_site=$PROJECT_SITE script=$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-16)"
STAMP="$PEERS_VENV/.peers-stamp"
PTH="$PEERS_VENV/lib/$PY_TAG/site-packages/zz_flashpack_peers_project_venv.pth"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$STAMP_WANT" && -f "$PTH" && -x "$PEERS_VENV/bin/python" ]]; then
    echo "$PEERS_VENV"
    exit 0
fi
fresh_venv "$PEERS_VENV" "$PROJECT_VENV"
PIP=("$PEERS_VENV/bin/python" -m pip --disable-pip-version-check --no-input -q)
printf '%s' "$PROJECT_SITE" >"$PTH"
: >"$PEERS_VENV/.peers-missing"
for spec in "${PEERS[@]}"; do
    pkg="${spec%%:*}"
    deps="${spec#*:}"
    # shellcheck disable=SC2086
    if ! out="$("${PIP[@]}" install --no-deps "$pkg" 2>&1)" ||
        { [[ -n "$deps" ]] && ! out="$("${PIP[@]}" install ${deps//,/ } 2>&1)"; }; then
        log "could not install $pkg: ${out: -300}"
        echo "$pkg: pip install failed" >>"$PEERS_VENV/.peers-missing"
    fi
done
printf '%s' "$STAMP_WANT" >"$STAMP"
echo "$PEERS_VENV"
