"""The package's modules form no import cycle, run one way through a table of layers, reach the
engine through one bridge, and read the environment in one place.

Every ``import`` of a ``flashpack`` module by another, at module level or inside a function,
is an edge. ``LAYERS`` orders the modules from the engine up to what users call: a module
imports only modules of lower layers (so the graph has no cycle either), and only
``flashpack._engine`` imports the extension ``flashpack._core``. An import inside a function is
kept only for modules that need an optional dependency (transformers, diffusers, vLLM), so
that the package imports without them; nothing imports late to break a cycle.
``flashpack.settings`` is a leaf and the only module that reads ``os.environ``. (A fresh
interpreter importing one submodule first runs ``flashpack/__init__``, which imports them all,
so the order of imports cannot be tested that way: the graph is.)
"""

from __future__ import annotations

import ast
from pathlib import Path

import flashpack

ROOT = Path(flashpack.__file__).parent

# The layers, lowest first: (what the layer is, its modules). A module imports only from layers
# below its own; every module of the package is in exactly one layer.
LAYERS: list[tuple[str, set[str]]] = [
    ("leaves: the extension and the environment", {"flashpack._core", "flashpack.settings"}),
    ("the bridge: the only caller of the engine", {"flashpack._engine"}),
    ("on the bridge: process group, constants, version",
     {"flashpack._process_group", "flashpack.constants", "flashpack.version", "flashpack.integrations._patches"}),
    ("torch-side helpers", {"flashpack.utils"}),
    ("loaded blocks as tensors", {"flashpack.storage"}),
    ("reads and writes: distributed, URLs, packing",
     {"flashpack.distributed", "flashpack.remote", "flashpack.serialization"}),
    ("safetensors-style loads", {"flashpack.loading"}),
    ("the public loaders", {"flashpack.deserialization", "flashpack.safe_open"}),
    ("options of every loader and saver", {"flashpack.options"}),
    ("the model mixin", {"flashpack.mixin"}),
    ("integrations: what the libraries share", {"flashpack.integrations._common"}),
    ("integrations: finding weights", {"flashpack.integrations._checkpoint"}),
    ("integrations: models",
     {"flashpack.integrations.transformers.model", "flashpack.integrations.diffusers.model",
      "flashpack.integrations._vllm_loader"}),
    ("integrations: transformers' patches", {"flashpack.integrations.transformers.patch"}),
    ("integrations: the transformers package", {"flashpack.integrations.transformers"}),
    ("integrations: diffusers' auto model and pipelines",
     {"flashpack.integrations.diffusers.auto_model", "flashpack.integrations.diffusers.pipeline"}),
    ("integrations: diffusers' patches", {"flashpack.integrations.diffusers.patch"}),
    ("integrations: the diffusers package", {"flashpack.integrations.diffusers"}),
    ("integrations: patching and the vLLM plugin", {"flashpack.integrations.patch", "flashpack.integrations.vllm"}),
    ("integrations: the package", {"flashpack.integrations"}),
    ("the command's Python side", {"flashpack.commands"}),
    ("the command line", {"flashpack.cli"}),
    ("the package and its entry point", {"flashpack", "flashpack.__main__"}),
]  # fmt: skip

BRIDGE = "flashpack._engine"
# Third-party packages the package does not require: modules needing them are imported late.
OPTIONAL_DEPENDENCIES = {"diffusers", "transformers", "vllm"}


def modules() -> dict[str, Path]:
    """Every module of the package by name: its source, or the stub of the extension."""
    out = {}
    for path in [*ROOT.rglob("*.py"), ROOT / "_core.pyi"]:
        parts = ("flashpack", *path.relative_to(ROOT).with_suffix("").parts)
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _late_nodes(tree: ast.AST) -> set[int]:
    """ids of the import nodes inside a function (run when it is called, not at import time)."""
    late: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            late |= {id(n) for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))}
    return late


def import_edges(name: str, path: Path, known: dict[str, Path]) -> list[tuple[str, bool]]:
    """``(imported, late)`` for every import in ``name``'s code: package modules by name
    (``from . import x`` is an edge to the submodule ``x``; the package itself is already being
    imported by then), other packages by their top-level name; ``late``: inside a function."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    late = _late_nodes(tree)
    found: list[tuple[str, bool]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name if a.name in known else a.name.partition(".")[0], id(node) in late) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            submodules = {f"{target}.{a.name}" for a in node.names} & known.keys()
            found += [(m, id(node) in late) for m in sorted(submodules)]
            if len(submodules) < len(node.names):
                found.append((target if target in known else target.partition(".")[0], id(node) in late))
    return [(m, is_late) for m, is_late in found if m != name]


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package modules that ``name`` imports anywhere in its code."""
    return {m for m, _ in import_edges(name, path, known) if m in known}


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


def layer_of(layers: list[tuple[str, set[str]]]) -> dict[str, int]:
    return {m: k for k, (_, members) in enumerate(layers) for m in members}


def against_the_order(edges: dict[str, set[str]], layers: list[tuple[str, set[str]]]) -> list[str]:
    """Every edge from a module to one of its own layer or a higher one."""
    rank = layer_of(layers)
    return [
        f"{a} ({layers[rank[a]][0]}) imports {b} ({layers[rank[b]][0]})"
        for a in sorted(edges)
        for b in sorted(edges[a])
        if rank[b] >= rank[a]
    ]


def engine_callers(edges: dict[str, set[str]]) -> list[str]:
    """The modules other than the bridge that import the extension."""
    return sorted(a for a, imported in edges.items() if "flashpack._core" in imported and a != BRIDGE)


def needing_optional(known: dict[str, Path]) -> set[str]:
    """The modules that import an optional dependency at module level, themselves or through
    modules they import."""
    direct = {name: {m for m, late in import_edges(name, path, known) if not late} for name, path in known.items()}
    needs = {name for name, imported in direct.items() if imported & OPTIONAL_DEPENDENCIES}
    while True:
        more = {name for name, imported in direct.items() if imported & needs} - needs
        if not more:
            return needs
        needs |= more


def late_imports(known: dict[str, Path]) -> list[tuple[str, str]]:
    """``(importer, imported)`` for every package module imported inside a function."""
    return sorted(
        (name, m) for name, path in known.items() for m, late in import_edges(name, path, known) if late and m in known
    )


def test_every_module_is_in_one_layer() -> None:
    placed = [m for _, members in LAYERS for m in members]
    assert len(placed) == len(set(placed)), "a module in two layers"
    assert set(placed) == set(modules()), (
        f"not in LAYERS: {sorted(set(modules()) - set(placed))}; gone: {sorted(set(placed) - set(modules()))}"
    )


def test_imports_run_down_the_layers() -> None:
    """(Late imports included.) This also rules out any import cycle."""
    assert against_the_order(graph(), LAYERS) == []


def test_no_import_cycle() -> None:
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_only_the_bridge_imports_the_engine() -> None:
    assert engine_callers(graph()) == []
    assert "flashpack._core" in graph()[BRIDGE]


def test_late_imports_only_for_optional_dependencies() -> None:
    """An import inside a function only defers a module that needs transformers, diffusers or
    vLLM (so that ``import flashpack`` works without them); none breaks a cycle."""
    known = modules()
    optional = needing_optional(known)
    assert {"flashpack.integrations.transformers.model", "flashpack.integrations._vllm_loader"} <= optional
    assert [(a, b) for a, b in late_imports(known) if b not in optional] == []


def test_the_original_path_of_maybe_init_distributed_needs_no_late_import() -> None:
    """``flashpack.utils.maybe_init_distributed`` (the original package's path) once imported
    ``flashpack.distributed`` late, which builds on utils: now both use ``_process_group``."""
    from flashpack import distributed, utils

    edges = graph()
    assert "flashpack._process_group" in edges["flashpack.utils"]
    assert "flashpack.distributed" not in edges["flashpack.utils"]
    assert callable(utils.maybe_init_distributed) and callable(distributed.maybe_init_distributed)


def test_the_checks_find_what_they_look_for() -> None:
    """Each check fails on a graph that breaks its rule."""
    layers = [("low", {"a", "flashpack._core"}), ("bridge", {BRIDGE}), ("high", {"b", "c"})]
    assert against_the_order({"a": set(), BRIDGE: {"a"}, "b": {"a"}, "c": set()}, layers) == []
    assert against_the_order({"a": {"b"}, "b": set()}, layers) == ["a (low) imports b (high)"]
    assert against_the_order({"b": {"c"}, "c": set()}, layers) == ["b (high) imports c (high)"]
    assert engine_callers({BRIDGE: {"flashpack._core"}, "b": {"flashpack._core"}}) == ["b"]


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
            elif (
                isinstance(node, ast.ImportFrom)
                and node.module == "os"
                and {"environ", "getenv"} & {a.name for a in node.names}
            ):
                readers.append(f"{name}:{node.lineno}")
    assert readers and all(r.startswith("flashpack.settings:") for r in readers), readers
