"""docs/environment.md lists exactly the environment variables the code reads.

The source is searched with regular expressions (no build needed):

- Rust: ``env::var("NAME")`` / ``env::var_os("NAME")``; a ``const X: &str = "NAME"`` passed to
  them; helper functions and closures taking the name as a ``&str`` and passing it on (e.g.
  ``number("FLASHPACK_REMOTE_RETRIES")``); an array of names iterated into ``env::var``. The
  ``#[cfg(test)]`` modules of ``src/`` files are left out (their variables are private to a
  unit test).
- Python: ``os.environ.get("NAME")``, ``os.environ["NAME"]`` (not an assignment),
  ``os.getenv("NAME")``, ``os.environ.setdefault("NAME", ...)``, ``"NAME" in os.environ``, and
  helpers taking the name as a parameter (``env_flag``, ``env_int``, ...).
- Shell: ``${NAME:-default}`` and its kin.

A variable the engine, the CLI or the Python package reads must have a row (whose "where" names
that part); so must one that the tests and the bench scripts read. A row naming a variable that
nothing reads fails too. Failures name the variable and the files that read it.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
TABLE = ROOT / "docs" / "environment.md"

# Where each part of the code lives, and the word its rows must carry in the "where" column.
AREAS: dict[str, tuple[list[str], tuple[str, ...]]] = {
    "engine": (["crates/flashpack/src"], ("engine",)),
    "CLI": (["crates/flashpack-cli/src"], ("engine", "CLI")),
    "package": (["bindings/python/python", "bindings/python/src"], ("package",)),
    "tests": (
        ["crates/flashpack/tests", "crates/flashpack-cli/tests", "crates/cuda-standin/src", "bindings/python/tests"],
        (),
    ),
    "bench": (["scripts"], ()),
}
# Rows for variables a library reads on the engine's behalf: the row is live while the call that
# hands the environment to that library is in the engine.
WILDCARDS = {"AWS_*": re.compile(r"AmazonS3Builder::from_env\(")}
# Not settings: the system's (extended or used as is), set by cargo for build scripts, or a
# marker a test sets for a child process it starts itself.
IGNORED = re.compile(r"^(PYTHONPATH|TMPDIR|PATH|HOME|CARGO_CFG_\w+|\w+_CHILD)$")

NAME = r"[A-Z][A-Z0-9_]{2,}"
ENV_CALL = r"(?:std::)?env::var(?:_os)?"


def _sources(area: str) -> list[Path]:
    files: list[Path] = []
    for d in AREAS[area][0]:
        for ext in ("*.rs", "*.py", "*.sh"):
            files += [p for p in (ROOT / d).rglob(ext) if "target" not in p.parts and p.name != Path(__file__).name]
    return sorted(files)


def _rust_reads(text: str, in_src: bool) -> set[str]:
    if in_src:  # unit-test modules: from `#[cfg(test)] mod` to the end of the file
        text = re.split(r"^#\[cfg\(test\)\]\s*\n\s*mod \w+", text, maxsplit=1, flags=re.M)[0]
    text = re.sub(r"^\s*//.*$", "", text, flags=re.M)
    names = set(re.findall(rf'{ENV_CALL}\(\s*"({NAME})"', text))
    consts = dict(re.findall(rf'const (\w+): &str = "({NAME})";', text))
    for ident in re.findall(rf"{ENV_CALL}\(\s*(\w+)\s*\)", text):
        if ident in consts:
            names.add(consts[ident])
    # Helpers: `fn f(name: &str ...` or `let f = |name ...|` whose body passes `name` to
    # env::var or to another helper. Iterated until no new helper appears.
    defs = [(m.group(1), m.group(2), m.end()) for m in re.finditer(r"\bfn (\w+)\s*\(\s*(\w+)\s*:\s*&str", text)]
    defs += [(m.group(1), m.group(2), m.end()) for m in re.finditer(r"\blet (\w+)\s*=\s*\|\s*(\w+)\b", text)]
    helpers: set[str] = set()
    while True:
        callers = "|".join([ENV_CALL, *map(re.escape, helpers)])
        found = {
            name
            for name, param, start in defs
            if re.search(rf"\b(?:{callers})\(\s*{param}\b", text[start : start + 1500].split("\nfn ")[0])
        }
        if found <= helpers:
            break
        helpers |= found
    if helpers:
        names |= set(re.findall(rf'\b(?:{"|".join(map(re.escape, helpers))})\(\s*"({NAME})"', text))
    # An array of names iterated into env::var (`["A", "B"].iter().filter_map(|v| env::var(v))`).
    for m in re.finditer(rf'\[\s*"{NAME}"(?:\s*,\s*"{NAME}")*\s*,?\s*\]', text):
        if re.search(rf"{ENV_CALL}\(\s*[a-z_]\w*\s*\)", text[m.end() : m.end() + 300]):
            names |= set(re.findall(rf'"({NAME})"', m.group(0)))
    return names


PY_READERS = r"os\.environ\.get|os\.getenv|os\.environ\.setdefault"
QUOTE = r"""["']"""


def _python_helpers(text: str) -> set[str]:
    """Functions taking a variable's name as their first parameter and reading it."""
    return {
        m.group(1)
        for m in re.finditer(r"^\s*def (\w+)\(\s*(\w+)\b[^)]*\)[^:]*:\n((?:[ \t]+.*\n|\s*\n)*)", text, flags=re.M)
        if re.search(rf"(?:{PY_READERS})\(\s*{m.group(2)}\b|os\.environ\[\s*{m.group(2)}\s*\]", m.group(3))
    }


def _python_reads(text: str, helpers: set[str]) -> set[str]:
    text = re.sub(r"^\s*#.*$", "", text, flags=re.M)
    q = QUOTE
    names: set[str] = set()
    for pattern in (
        rf"os\.environ\.get\(\s*{q}({NAME}){q}",
        rf"os\.getenv\(\s*{q}({NAME}){q}",
        rf"os\.environ\.setdefault\(\s*{q}({NAME}){q}",
        rf"os\.environ\[\s*{q}({NAME}){q}\s*\](?!\s*=[^=])",
        rf"{q}({NAME}){q}\s+in\s+os\.environ\b",
    ):
        names |= set(re.findall(pattern, text))
    if helpers:  # also called as settings.env_int("...") from another module
        names |= set(re.findall(rf"\b(?:{'|'.join(map(re.escape, helpers))})\(\s*{q}({NAME}){q}", text))
    return names


def _shell_reads(text: str) -> set[str]:
    return set(re.findall(rf"\$\{{({NAME}):?[-=+?]", text))


def code_reads() -> dict[str, dict[str, set[str]]]:
    """variable -> area -> files (relative paths) that read it."""
    reads: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    helpers = set()
    for area in AREAS:
        for path in _sources(area):
            if path.suffix == ".py":
                helpers |= _python_helpers(path.read_text(encoding="utf-8", errors="replace"))
    for area in AREAS:
        for path in _sources(area):
            text = path.read_text(encoding="utf-8", errors="replace")
            rel = str(path.relative_to(ROOT))
            if path.suffix == ".rs":
                names = _rust_reads(text, in_src="/src/" in f"/{rel}")
            elif path.suffix == ".py":
                names = _python_reads(text, helpers)
            else:
                names = _shell_reads(text)
            for name in names:
                if not IGNORED.match(name):
                    reads[name][area].add(rel)
    return reads


def documented() -> dict[str, str]:
    """variable (or wildcard) -> the row's "where" cell."""
    rows: dict[str, str] = {}
    lines = TABLE.read_text(encoding="utf-8").splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| variable |"))
    for line in lines[header + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        names = re.findall(r"`([A-Z][A-Z0-9_]*\*?)`", cells[0])
        assert names, f"docs/environment.md: a row without a variable: {line}"
        for name in names:
            assert name not in rows, f"docs/environment.md: {name} has two rows"
            rows[name] = cells[-1]
    return rows


def test_the_search_finds_known_reads() -> None:
    """The regular expressions still see each way of reading the environment used today."""
    reads = code_reads()
    for name, area in [
        ("FLASHPACK_PINNED_POOL_BYTES", "engine"),  # a helper, byte_count("...")
        ("FLASHPACK_REMOTE_TIMEOUT_SECS", "engine"),  # a closure passing it to a helper
        ("HUGGING_FACE_HUB_TOKEN", "engine"),  # an array iterated into env::var
        ("AWS_ENDPOINT_URL_S3", "engine"),  # env::var("...")
        ("FLASHPACK_READ_THREADS", "package"),  # env_int("...")
        ("RANK", "package"),
        ("FLASHPACK_NGINX", "tests"),  # a Python helper taking the name
        ("CUDA_STANDIN_DEVICES", "tests"),
        ("GPU_CHECK_GIB", "bench"),  # ${...:-default}
    ]:
        assert area in reads.get(name, {}), f"{name} not found in the {area}'s sources"
    assert "FLASHPACK_TEST_SETTINGS_BYTES" not in reads  # a unit test's own variable


def test_every_variable_the_code_reads_is_documented() -> None:
    rows = documented()
    problems = []
    for name, areas in sorted(code_reads().items()):
        files = ", ".join(sorted(f for fs in areas.values() for f in fs))
        if name not in rows:
            problems.append(f"{name} (read by {files}) has no row in docs/environment.md")
            continue
        for area, fs in areas.items():
            words = AREAS[area][1]
            if words and not any(w in rows[name] for w in words):
                problems.append(
                    f"{name} is read by the {area} ({', '.join(sorted(fs))}) but its row's "
                    f"'where' says {rows[name]!r} (expected {' or '.join(words)})"
                )
    assert not problems, "\n".join(problems)


def test_every_documented_variable_is_read() -> None:
    reads = code_reads()
    engine = "\n".join(p.read_text(encoding="utf-8") for p in _sources("engine"))
    stale = []
    for name in documented():
        if name in WILDCARDS:
            if not WILDCARDS[name].search(engine):
                stale.append(f"{name}: the engine no longer hands the environment to its reader")
        elif "*" in name:
            stale.append(f"{name}: an unknown wildcard (add it to WILDCARDS with the call that reads it)")
        elif name not in reads:
            stale.append(f"{name}: in docs/environment.md, but no code reads it")
    assert not stale, "\n".join(stale)
