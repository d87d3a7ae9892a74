"""Prints, as JSON, the public API of the ``flashpack`` package importable by this interpreter,
read from its source with ``ast`` (nothing is imported: the original 0.4.5 cannot even import its
diffusers integration on diffusers 0.42).

Run by test_api_surface.py with the oracle venv's python (scripts/oracle-venv.sh)::

    .venv-oracle/bin/python api_surface_worker.py   ->  {"version": "0.4.5", "modules": {...}}

For every module ``flashpack.X``: its public functions and classes (with their signatures and,
for classes, their public methods and class attributes), its public constants (with their
values when they are literals), and the names an ``__init__`` re-exports through ``__all__``.
A signature is a list of ``[name, kind, default]`` where kind is one of ``positional``,
``keyword``, ``*args``, ``**kwargs`` and default is the literal's ``repr`` (``"<expr>"`` for a
non-literal default, ``null`` when there is none).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

REQUIRED = None


def _default(node: ast.expr | None) -> str | None:
    if node is None:
        return None
    try:
        return repr(ast.literal_eval(node))
    except ValueError:
        return "<" + ast.unparse(node) + ">"


def signature(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> list[list[Any]]:
    a = fn.args
    params: list[list[Any]] = []
    positional = a.posonlyargs + a.args
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(a.defaults)) + list(a.defaults)
    for arg, default in zip(positional, defaults):
        params.append([arg.arg, "positional", _default(default)])
    if a.vararg is not None:
        params.append([a.vararg.arg, "*args", None])
    for arg, default in zip(a.kwonlyargs, a.kw_defaults):
        params.append([arg.arg, "keyword", _default(default)])
    if a.kwarg is not None:
        params.append([a.kwarg.arg, "**kwargs", None])
    return params


def _decorators(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    return [ast.unparse(d) for d in fn.decorator_list]


def _assigned_names(node: ast.stmt) -> list[tuple[str, ast.expr | None]]:
    if isinstance(node, ast.Assign):
        return [(t.id, node.value) for t in node.targets if isinstance(t, ast.Name)]
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return [(node.target.id, node.value)]
    return []


def describe_class(node: ast.ClassDef) -> dict[str, Any]:
    methods: dict[str, Any] = {}
    attributes: dict[str, str | None] = {}
    for item in node.body:
        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if item.name.startswith("_") and item.name != "__init__":
                continue
            decorators = _decorators(item)
            params = signature(item)
            if "staticmethod" not in decorators:
                params = params[1:]  # self / cls
            methods[item.name] = {
                "kind": "classmethod" if "classmethod" in decorators else "staticmethod"
                if "staticmethod" in decorators else "method",
                "params": params,
            }
        for name, value in _assigned_names(item):
            if not name.startswith("_"):
                attributes[name] = _default(value)
    return {"kind": "class", "bases": [ast.unparse(b) for b in node.bases], "methods": methods, "attributes": attributes}


def describe_module(path: Path, is_package: bool) -> dict[str, Any]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: dict[str, Any] = {}
    exported: list[str] = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
            names[node.name] = {"kind": "function", "params": signature(node)}
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            names[node.name] = describe_class(node)
        for name, value in _assigned_names(node):
            if name == "__all__" and value is not None:
                exported = [str(x) for x in ast.literal_eval(value)]
            elif not name.startswith("_"):
                names[name] = {"kind": "constant", "value": _default(value)}
    # A package's __init__ re-exports names from its submodules: those in __all__ are public.
    if is_package:
        for name in exported:
            names.setdefault(name, {"kind": "export"})
    return {"names": names, "all": exported}


def main() -> None:
    spec = importlib.util.find_spec("flashpack")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("flashpack is not installed for this interpreter")
    root = Path(next(iter(spec.submodule_search_locations)))
    modules: dict[str, Any] = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        if any(p.startswith("_") for p in parts):
            continue  # __main__, private modules
        modules[".".join(("flashpack", *parts))] = describe_module(path, is_package)
    version = modules.get("flashpack.version", {}).get("names", {}).get("__version__")
    print(json.dumps({"root": str(root), "version": version, "modules": modules}, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
