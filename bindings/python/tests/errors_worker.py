"""Runs the same bad inputs through whichever ``flashpack`` this interpreter imports (ours, or the
original 0.4.5 in the oracle venv) and prints what each raised, as JSON on stdout:

    python errors_worker.py DIR      # DIR: an empty scratch folder

``{case: {"class": "FileNotFoundError", "errno": 2, "strerror": "...", "filename": "..."}}``, or
``{"skipped": why}`` for a case this process cannot set up (e.g. permissions as root), or
``{"class": None}`` when the call succeeded. Used by test_os_errors.py; only the public API that
both packages share is called.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
from collections.abc import Callable
from typing import Any

import torch
from flashpack import assign_from_file, get_flashpack_file_metadata, pack_to_file
from flashpack.deserialization import read_flashpack_file, revert_from_file


def describe(call: Callable[[], object]) -> dict[str, Any]:
    try:
        call()
    except Exception as e:  # noqa: BLE001 - the class is what is compared
        out: dict[str, Any] = {"class": type(e).__name__, "message": str(e)}
        if isinstance(e, OSError):
            out.update(errno=e.errno, strerror=e.strerror, filename=e.filename)
        return out
    return {"class": None}


def small_state_dict() -> dict[str, torch.Tensor]:
    return {"w": torch.arange(1 << 20, dtype=torch.float32)}  # 4 MiB


def pack_over_the_file_size_limit(dest: str) -> None:
    """A 4 MiB pack under a 1 MiB RLIMIT_FSIZE (SIGXFSZ ignored): the write fails with EFBIG."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))
    try:
        pack_to_file(small_state_dict(), dest, None)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)


def main(root: str) -> int:
    adir = os.path.join(root, "a-directory")
    os.mkdir(adir)
    afile = os.path.join(root, "a-file")
    with open(afile, "wb") as f:
        f.write(b"not a flashpack file, but a file")
    locked = os.path.join(root, "locked.flashpack")
    pack_to_file(small_state_dict(), locked, None)
    os.chmod(locked, 0)
    missing = os.path.join(root, "missing.flashpack")
    too_long = os.path.join(root, "x" * 300)
    under_file = os.path.join(afile, "m.flashpack")
    under_file_deeper = os.path.join(afile, "sub", "m.flashpack")

    loads: dict[str, Callable[[str], object]] = {
        "read_flashpack_file": lambda p: read_flashpack_file(p),
        "get_flashpack_file_metadata": get_flashpack_file_metadata,
        "revert_from_file": revert_from_file,
        "assign_from_file": lambda p: assign_from_file(torch.nn.Linear(2, 2), p),
    }
    where = {
        "missing": missing,
        "directory": adir,
        "under_a_file": under_file,
        "name_too_long": too_long,
        "no_permission": locked,
    }
    results: dict[str, dict[str, Any]] = {}
    for api, load in loads.items():
        for what, path in where.items():
            case = f"{api}:{what}"
            if what == "no_permission" and os.geteuid() == 0:
                results[case] = {"skipped": "runs as root, which may read any file"}
                continue
            results[case] = describe(lambda: load(path))
    packs = {
        "into_a_directory": adir,
        "parent_is_a_file": under_file,
        "grandparent_is_a_file": under_file_deeper,
        "name_too_long": too_long,
    }
    for what, dest in packs.items():
        results[f"pack_to_file:{what}"] = describe(lambda: pack_to_file(small_state_dict(), dest, None))
    dest = os.path.join(root, "over-the-limit.flashpack")
    results["pack_to_file:file_too_large"] = describe(lambda: pack_over_the_file_size_limit(dest))
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
