# Sourced by scripts/{oracle,peers,vllm}-venv.sh: what each does to make its venv anew.
# Needs `log` from the caller.

# fresh_venv DIR PROJECT_VENV: removes DIR when it is a venv (refuses anything else that is not
# empty), then creates a venv there with the project venv's own interpreter (torch and the other
# compiled packages must match it).
fresh_venv() {
    local dir="$1" project="$2" base
    if [[ -e "$dir" ]]; then
        if [[ -f "$dir/pyvenv.cfg" ]]; then
            rm -rf "$dir"
        elif [[ -n "$(ls -A "$dir" 2>/dev/null)" ]]; then
            log "$dir exists and is not a venv; refusing to touch it"
            exit 1
        fi
    fi
    base="$("$project/bin/python" -c 'import sys; print(getattr(sys, "_base_executable", sys.executable))')"
    log "creating $dir with $base"
    "$base" -m venv "$dir"
}
