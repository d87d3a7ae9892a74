"""The type stubs shipped for the extension (``flashpack/_core.pyi``) describe what ``_core``
really exports: the same functions, classes and members, with the same parameter names."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import flashpack
from flashpack import _core

STUB = Path(flashpack.__file__).parent / "_core.pyi"


def _public(names: list[str]) -> set[str]:
    return {n for n in names if not n.startswith("_") or n in ("__version__", "__len__")}


def _stub() -> tuple[dict[str, list[str]], dict[str, dict[str, list[str]]], set[str]]:
    """(functions -> parameter names, classes -> {member -> parameter names}, variables)."""
    tree = ast.parse(STUB.read_text())
    functions: dict[str, list[str]] = {}
    classes: dict[str, dict[str, list[str]]] = {}
    variables: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            functions[node.name] = [a.arg for a in node.args.args]
        elif isinstance(node, ast.ClassDef):
            classes[node.name] = {
                m.name: [a.arg for a in m.args.args if a.arg != "self"]
                for m in node.body
                if isinstance(m, ast.FunctionDef) and m.name != "__buffer__"
            }
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            variables.add(node.target.id)
    return functions, classes, variables


def test_the_stub_names_every_export_and_nothing_else() -> None:
    functions, classes, variables = _stub()
    exported = _public(dir(_core))
    assert set(functions) | set(classes) | {v for v in variables if not v.startswith("_") or v == "__version__"} == exported


def test_function_parameters_match() -> None:
    functions, _, _ = _stub()
    for name, params in functions.items():
        real = list(inspect.signature(getattr(_core, name)).parameters)
        assert params == real, name


def test_class_members_match() -> None:
    _, classes, _ = _stub()
    for cls_name, members in classes.items():
        cls = getattr(_core, cls_name)
        constructor = members.pop("__new__", None)
        assert set(members) == _public(list(vars(cls))), cls_name
        if constructor is not None:  # a class Python code may construct: the same parameters
            assert constructor[1:] == list(inspect.signature(cls).parameters), f"{cls_name}()"
        for member, params in members.items():
            attr = getattr(cls, member)
            if callable(attr) and member != "__len__":
                real = [p for p in inspect.signature(attr).parameters if p != "self"]
                assert params == real, f"{cls_name}.{member}"


def _returns(tree: ast.Module, name: str, cls: str | None = None) -> str:
    body = tree.body
    if cls is not None:
        body = next(n for n in body if isinstance(n, ast.ClassDef) and n.name == cls).body
    node = next(n for n in body if isinstance(n, ast.FunctionDef) and n.name == name)
    assert node.returns is not None, name
    return ast.unparse(node.returns)


def test_paths_are_typed_as_the_path_objects_the_extension_returns(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    file = tmp_path / "m.safetensors"
    save_file({"a": torch.zeros(2)}, file)
    where, handles = _core.open_checkpoint(str(file), None)
    assert isinstance(where, Path) and isinstance(handles[0].path, Path)
    tree = ast.parse(STUB.read_text())
    # A URL comes back as the str it is (test_remote.py): a Path would fold its "//".
    assert _returns(tree, "path", "WeightFile") == "Path | str"
    assert _returns(tree, "open_checkpoint") == "tuple[Path | str, list[WeightFile]]"
