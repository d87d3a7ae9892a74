"""The package's modules form no import cycle, and the environment is read in one place.

Every ``import`` of a ``flashpack`` module by another, at module level or inside a function,
is an edge; the graph must be acyclic, but for the late imports listed in ``LATE_IMPORTS``
(each with its reason). ``flashpack.settings`` is a leaf and the only module that reads
``os.environ``. (A fresh interpreter importing one submodule first runs ``flashpack/__init__``,
which imports them all, so the order of imports cannot be tested that way: the graph is.)
"""

from __future__ import annotations

import ast
from pathlib import Path

import flashpack

ROOT = Path(flashpack.__file__).parent

# (importer, imported): late imports that close a cycle, allowed for the reason given.
LATE_IMPORTS = {
    # flashpack.utils.maybe_init_distributed is the original package's path of a function that
    # lives in flashpack.distributed, which builds on utils.
    ("flashpack.utils", "flashpack.distributed"),
}


def modules() -> dict[str, Path]:
    """Every module of the package by name: its source, or the stub of the extension."""
    out = {}
    for path in [*ROOT.rglob("*.py"), ROOT / "_core.pyi"]:
        parts = ("flashpack", *path.relative_to(ROOT).with_suffix("").parts)
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package modules that ``name`` imports anywhere in its code. ``from . import x`` is an
    edge to the submodule ``x`` (the package itself is already being imported by then)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            submodules = {f"{target}.{a.name}" for a in node.names} & known.keys()
            found |= submodules
            if target in known and len(submodules) < len(node.names):
                found.add(target)
    return found - {name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    done: set[str] = set()

    def visit(node: str, stack: list[str]) -> list[str] | None:
        if node in stack:
            return stack[stack.index(node) :] + [node]
        if node in done:
            return None
        for nxt in sorted(graph.get(node, ())):
            if cycle := visit(nxt, stack + [node]):
                return cycle
        done.add(node)
        return None

    for start in sorted(graph):
        if cycle := visit(start, []):
            return cycle
    return None


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def test_no_import_cycle() -> None:
    edges = graph()
    for importer, imported in LATE_IMPORTS:
        assert imported in edges[importer], f"{importer} no longer imports {imported}: drop it from LATE_IMPORTS"
        edges[importer].discard(imported)
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_check_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_former_cycle_is_gone() -> None:
    """deserialization and distributed imported each other (distributed from inside functions)."""
    edges = graph()
    assert "flashpack.distributed" in edges["flashpack.deserialization"]
    assert "flashpack.deserialization" not in edges["flashpack.distributed"]


def test_settings_is_a_leaf() -> None:
    assert graph()["flashpack.settings"] == set()
    tree = ast.parse((ROOT / "settings.py").read_text(encoding="utf-8"))
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported <= {"__future__", "os", "typing"}, imported


def test_only_settings_reads_the_environment() -> None:
    readers = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "environb"):
                readers.append(f"{name}:{node.lineno}")
            elif isinstance(node, ast.ImportFrom) and node.module == "os" and {"environ", "getenv"} & {
                a.name for a in node.names
            }:
                readers.append(f"{name}:{node.lineno}")
    assert readers and all(r.startswith("flashpack.settings:") for r in readers), readers
