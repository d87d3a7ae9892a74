"""OS errors reach Python the way the original package and Python's own file API raise them: the
same class for the same bad input (FileNotFoundError, IsADirectoryError, ...), with ``errno``,
``strerror`` and ``filename`` set; for a pack, ``filename`` is the destination, never the unnamed
temporary file the engine writes first.

The classes are compared with PyPI flashpack 0.4.5 (the oracle venv, as in test_interop.py) on
identical inputs made by errors_worker.py.
"""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from test_interop import _oracle_env, oracle_python  # noqa: E402, F401  (the fixture)

WORKER = HERE / "errors_worker.py"


def run_worker(python: str, scratch: Path, env: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    scratch.mkdir()
    proc = subprocess.run(
        [python, str(WORKER), str(scratch)], capture_output=True, text=True, timeout=300, env=env
    )
    assert proc.returncode == 0, f"errors_worker failed:\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def ours(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    return run_worker(sys.executable, tmp_path_factory.mktemp("ours") / "scratch")


def test_each_bad_input_raises_the_class_the_original_raises(
    oracle_python: str, ours: dict[str, dict[str, Any]], tmp_path: Path  # noqa: F811
) -> None:
    theirs = run_worker(oracle_python, tmp_path / "scratch", env=_oracle_env())
    assert sorted(theirs) == sorted(ours)
    differ = {
        case: (theirs[case].get("class"), ours[case].get("class"), ours[case].get("message"))
        for case in ours
        if "skipped" not in ours[case] and theirs[case].get("class") != ours[case].get("class")
    }
    assert not differ, "case: (original's class, ours, our message)\n" + "\n".join(f"{k}: {v}" for k, v in differ.items())


def test_os_errors_carry_errno_strerror_and_the_file_name(ours: dict[str, dict[str, Any]]) -> None:
    expected_errno = {
        "missing": errno.ENOENT,
        "directory": errno.EISDIR,
        "under_a_file": errno.ENOTDIR,
        "name_too_long": errno.ENAMETOOLONG,
        "no_permission": errno.EACCES,
    }
    expected_name = {
        "missing": "missing.flashpack",
        "directory": "a-directory",
        "under_a_file": "m.flashpack",
        "name_too_long": "x" * 300,
        "no_permission": "locked.flashpack",
    }
    for case, got in ours.items():
        if "skipped" in got:
            continue
        api, what = case.split(":")
        assert got["class"] is not None, f"{case}: no error"
        assert got.get("errno") is not None, f"{case}: {got}"
        assert got.get("strerror"), f"{case}: {got}"
        assert got.get("filename"), f"{case}: {got}"
        if api != "pack_to_file":
            assert got["errno"] == expected_errno[what], f"{case}: {got}"
            assert Path(got["filename"]).name == expected_name[what], f"{case}: {got}"
    # Packs name the destination they were asked to write, whatever failed underneath.
    for what, name, code in [
        ("into_a_directory", "a-directory", errno.EISDIR),
        ("name_too_long", "x" * 300, errno.ENAMETOOLONG),
        ("file_too_large", "over-the-limit.flashpack", errno.EFBIG),
    ]:
        got = ours[f"pack_to_file:{what}"]
        assert got["errno"] == code, f"pack_to_file:{what}: {got}"
        assert Path(got["filename"]).name == name, f"pack_to_file:{what}: {got}"


def test_a_missing_file_reads_like_pythons_own_open(tmp_path: Path) -> None:
    from flashpack import read_flashpack_file

    missing = tmp_path / "missing.flashpack"
    with pytest.raises(FileNotFoundError) as info:
        read_flashpack_file(missing)
    assert info.value.errno == errno.ENOENT
    assert info.value.filename == str(missing)
    assert str(missing) in str(info.value)
