"""The public API of PyPI flashpack 0.4.5, checked name by name against ours.

The oracle venv (scripts/oracle-venv.sh) runs api_surface_worker.py, which reads the original's
modules, functions, classes, methods, class attributes, constants and signatures from its source
(the original's diffusers integration cannot even be imported on diffusers 0.42). Every public
name must exist here with a compatible signature: the same positional parameters in the same
order, every keyword accepted by name (not only through ``**kwargs``), no new required
parameter, ``*args`` / ``**kwargs`` where the original has them, the same defaults and the same
constant values. What differs on purpose is listed in ``DIFFERENCES`` with the reason, and the
"Deliberate differences in the API" section of docs/differences.md must name each of them.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from test_interop import REPO, _oracle_env, oracle_python  # noqa: F401  (fixture)

HERE = Path(__file__).resolve().parent
WORKER = HERE / "api_surface_worker.py"

# qualified name (or "name(parameter)") -> why ours differs. Keep docs/differences.md in step.
DIFFERENCES: dict[str, str] = {
    "flashpack.parallel_read": "the original's pinned-memory CUDA reader; the engine does this (CUDA loads of read_flashpack_file)",
    "flashpack.utils.require_zstandard": "the original's optional compression helper; the format here has no compression",
    "flashpack.utils.effective_read_threads": "reader threads are the engine's (FLASHPACK_READ_THREADS)",
    "flashpack.utils.torch_dtype_to_numpy_dtype": "no numpy round trip: tensors are views of the engine's memory",
    "flashpack.utils.get_packing_dtype": "the engine packs every dtype as it is",
    "flashpack.serialization.MacroblockPlan": "the layout is planned by the engine",
    "flashpack.serialization.TensorIndexRecord": "the footer is written by the engine",
    "flashpack.deserialization.MacroblockSpec": "the footer is validated by the engine",
    "flashpack.integrations.diffusers.pipeline.load_sub_model_flashpack": "a copy of a private diffusers function; pipelines load through diffusers' public from_pretrained",
    "flashpack.integrations.diffusers.pipeline.LIBRARIES": "a copy of a private diffusers table",
    "flashpack.integrations.diffusers.pipeline.SUPPORTED_DEVICE_MAP": "a copy of a private diffusers table",
    "flashpack.deserialization.FlashTensorStorage.backing_arrays": "blocks are views of one engine buffer (FlashTensorStorage.backing)",
    "flashpack.serialization.pack_to_file(target_dtype)": "optional here (default None: keep each tensor's dtype), required in 0.4.5",
    "flashpack.deserialization.read_flashpack_file_distributed(chunk_bytes)": "accepted and ignored (default 0): the engine sizes its reads",
    "flashpack.deserialization.read_flashpack_file_distributed(num_streams)": "accepted and ignored (default 0): the engine sizes its reads",
    "flashpack.constants.SHARD_ALIGN_BYTES": "4 MiB here (4096 there): each rank's shard is whole checksum chunks, so it can be verified",
}


def load_oracle_api(python: str) -> dict[str, Any]:
    done = subprocess.run(
        [python, str(WORKER)], cwd=REPO, capture_output=True, text=True, timeout=300, env=_oracle_env()
    )
    assert done.returncode == 0, done.stderr
    api = json.loads(done.stdout)
    assert "flashpack.deserialization" in api["modules"], sorted(api["modules"])
    return api


@pytest.fixture(scope="module")
def original(oracle_python: str) -> dict[str, Any]:  # noqa: F811
    return load_oracle_api(oracle_python)


def our_value(default: str | None, constants: Any) -> Any:
    """The original's default (``repr`` of a literal, or ``<expr>``) as a value here: literals
    evaluated, a name of the original's constants module looked up in ours."""
    if default is None:
        return inspect.Parameter.empty
    if default.startswith("<") and default.endswith(">"):
        expression = default[1:-1]
        if expression.isidentifier():
            return getattr(constants, expression, ("unresolved", expression))
        try:
            return eval(expression, {}, vars(constants))  # noqa: S307 (the original's own constant expressions)
        except Exception:
            return ("unresolved", expression)
    return ast.literal_eval(default)


def signature_problems(where: str, theirs: list[list[Any]], ours: inspect.Signature, constants: Any) -> list[str]:
    problems: list[str] = []
    params = list(ours.parameters.values())
    by_name = {p.name: p for p in params}
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    their_positional = [name for name, kind, _ in theirs if kind == "positional"]
    if positional[: len(their_positional)] != their_positional:
        problems.append(f"{where}: positional parameters {their_positional}, ours {positional}")
    for name, kind, default in theirs:
        key = f"{where}({name})"
        if key in DIFFERENCES:
            continue
        if kind == "*args":
            if not any(p.kind is p.VAR_POSITIONAL for p in params):
                problems.append(f"{where}: takes *{name}, ours does not")
            continue
        if kind == "**kwargs":
            if not any(p.kind is p.VAR_KEYWORD for p in params):
                problems.append(f"{where}: takes **{name}, ours does not")
            continue
        mine = by_name.get(name)
        if mine is None or mine.kind in (mine.VAR_POSITIONAL, mine.VAR_KEYWORD, mine.POSITIONAL_ONLY):
            problems.append(f"{where}: no parameter {name!r}")
            continue
        expected = our_value(default, constants)
        if isinstance(expected, tuple) and expected[:1] == ("unresolved",):
            continue  # a default computed at import time (e.g. a device list): nothing to compare
        if expected is inspect.Parameter.empty:
            if mine.default is not mine.empty:
                continue  # required there, optional here: still compatible
        elif mine.default is mine.empty:
            problems.append(f"{key}: optional there (default {default}), required here")
        elif mine.default != expected:
            problems.append(f"{key}: default {default} there, {mine.default!r} here")
    known = {name for name, _, _ in theirs}
    for p in params:
        if p.name not in known and p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            problems.append(f"{where}: requires {p.name!r}, which the original does not have")
    return problems


def same_value(ours: Any, theirs: Any) -> bool:
    """Equal values; struct.Struct objects (which do not compare) by their format."""
    import struct

    if isinstance(ours, struct.Struct) and isinstance(theirs, struct.Struct):
        return ours.format == theirs.format
    return bool(ours == theirs)


def test_the_public_api_of_flashpack_0_4_5_is_here(original: dict[str, Any]) -> None:
    constants = importlib.import_module("flashpack.constants")
    problems: list[str] = []
    checked = 0
    for module_name, module in sorted(original["modules"].items()):
        if module_name in DIFFERENCES or module_name == "flashpack.version":
            continue
        try:
            ours = importlib.import_module(module_name)
        except ImportError as e:
            problems.append(f"{module_name}: cannot be imported ({e})")
            continue
        for name, info in sorted(module["names"].items()):
            qualified = f"{module_name}.{name}"
            if qualified in DIFFERENCES:
                continue
            checked += 1
            if not hasattr(ours, name):
                problems.append(f"{qualified}: missing")
                continue
            obj = getattr(ours, name)
            kind = info["kind"]
            if kind == "function":
                problems += signature_problems(qualified, info["params"], inspect.signature(obj), constants)
            elif kind == "class":
                if not isinstance(obj, type):
                    problems.append(f"{qualified}: not a class")
                    continue
                for attr, value in info["attributes"].items():
                    if f"{qualified}.{attr}" in DIFFERENCES:
                        continue
                    if not hasattr(obj, attr) and attr not in getattr(obj, "__dataclass_fields__", {}):
                        problems.append(f"{qualified}.{attr}: missing")
                    elif value is not None and not value.startswith("<") and hasattr(obj, attr):
                        if getattr(obj, attr) != ast.literal_eval(value):
                            problems.append(f"{qualified}.{attr}: {value} there, {getattr(obj, attr)!r} here")
                for method, spec in info["methods"].items():
                    where = f"{qualified}.{method}"
                    if where in DIFFERENCES:
                        continue
                    if not hasattr(obj, method):
                        problems.append(f"{where}: missing")
                        continue
                    member = getattr(obj, method)
                    if isinstance(member, property):
                        continue
                    sig = inspect.signature(member)
                    if spec["kind"] == "method" or method == "__init__":
                        sig = sig.replace(parameters=list(sig.parameters.values())[1:])  # self
                    problems += signature_problems(where, spec["params"], sig, constants)
            elif kind == "constant" and info["value"] is not None and not info["value"].startswith("<"):
                if getattr(ours, name) != ast.literal_eval(info["value"]):
                    problems.append(f"{qualified}: {info['value']} there, {getattr(ours, name)!r} here")
            elif kind == "constant" and info["value"] is not None:
                expected = our_value(info["value"], ours)
                if not (isinstance(expected, tuple) and expected[:1] == ("unresolved",)) and not same_value(obj, expected):
                    problems.append(f"{qualified}: {info['value']} there, {obj!r} here")
    assert checked > 60, checked
    assert not problems, "\n".join(problems)


def test_the_version_names_exist() -> None:
    import flashpack

    assert flashpack.__version__ == flashpack.version == importlib.import_module("flashpack.version").version
    assert flashpack.version_tuple == flashpack.__version_tuple__ == tuple(int(p) for p in flashpack.version.split("."))
    assert flashpack.commit_id is None and flashpack.__commit_id__ is None


def test_every_difference_is_documented() -> None:
    text = (REPO / "docs" / "differences.md").read_text(encoding="utf-8")
    match = re.search(r"^## Deliberate differences in the API\n(.*)", text, flags=re.S | re.M)
    assert match, "docs/differences.md lacks a '## Deliberate differences in the API' section"
    section = match.group(1)
    missing = [name for name in DIFFERENCES if f"`{name.split('(')[0].removeprefix('flashpack.')}" not in section]
    assert not missing, f"not in docs/differences.md: {missing}"
