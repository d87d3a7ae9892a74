"""The documentation's examples run as written: every ```python block of README.md and docs/*.md,
the seed README's Kaggle example; the documented commands parse; every relative link resolves.

A Python block that cannot run here (it needs a GPU, the network, ...) says so in its fence, with
the reason: ```python no-run: <why>. Any other text after ```python is an error, so a block is
either run or explicitly marked.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import runpy
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = Path(__file__).parent / "examples"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PYTHON_LANGS = {"python", "py", "python3", "py3"}
# A fence at the start of a line, its info string, the body, the closing fence.
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.S | re.M)
NO_RUN = re.compile(r"^no-run:\s*(\S.*)$")


@dataclass(frozen=True)
class Block:
    file: Path
    index: int  # among the file's code blocks of the same language family
    lang: str
    info: str  # the info string after the language
    code: str

    @property
    def id(self) -> str:
        return f"{self.file.relative_to(ROOT)}#{self.lang}{self.index}"


def code_blocks(path: Path) -> list[Block]:
    blocks: list[Block] = []
    counts: dict[str, int] = {}
    for m in FENCE.finditer(path.read_text(encoding="utf-8")):
        lang, _, info = m.group(1).strip().partition(" ")
        family = "python" if lang in PYTHON_LANGS else lang
        counts[family] = counts.get(family, 0) + 1
        blocks.append(Block(path, counts[family] - 1, family, info.strip(), m.group(2)))
    return blocks


ALL_BLOCKS = [b for path in DOCS for b in code_blocks(path)]
PYTHON_BLOCKS = [b for b in ALL_BLOCKS if b.lang == "python"]
RUNNABLE = [b for b in PYTHON_BLOCKS if not b.info]


def test_the_docs_are_found() -> None:
    names = {p.name for p in DOCS}
    assert {"README.md", "python-api.md", "environment.md"} <= names, names
    assert len(RUNNABLE) >= 10, [b.id for b in RUNNABLE]


@pytest.mark.parametrize("block", RUNNABLE, ids=[b.id for b in RUNNABLE])
def test_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: Block) -> None:
    monkeypatch.chdir(tmp_path)
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(block.code, block.id, "exec"), {"__name__": "__readme__"})


def test_every_python_block_is_run_or_says_why_not() -> None:
    bad = [
        f"{b.id}: fence '```python {b.info}' is neither plain nor 'no-run: <reason>'"
        for b in PYTHON_BLOCKS
        if b.info and not NO_RUN.match(b.info)
    ]
    assert not bad, "\n".join(bad)
    skipped = [b for b in PYTHON_BLOCKS if b.info]
    # Keep these few: an example that can run here should.
    assert len(skipped) <= 3, [b.id for b in skipped]


def test_readme_has_the_seed_examples() -> None:
    text = "\n".join(b.code for b in RUNNABLE if b.file.name == "README.md")
    assert "class MyModule(nn.Module, FlashPackMixin)" in text
    assert "pack_to_file(model, flashpack_path)" in text and "assign_from_file(" in text


def test_kaggle_example_runs_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        g = runpy.run_path(str(EXAMPLES / "kaggle.py"), run_name="__main__")
    original, loaded = g["I"].x, g["loaded_module"].x
    assert torch.equal(original, loaded) and loaded.dtype == torch.float32
    printed = out.getvalue()
    # silent=False by default on the mixin: pack and load phases are printed with timings.
    assert "build_index: " in printed and "atomic_rename: " in printed and "mmap_payload: " in printed
    assert os.path.exists(tmp_path / "model.flashpack")


def documented_commands() -> list[tuple[str, str]]:
    """(block id, command) for every `flashpack ...` line of a shell-like block."""
    return [
        (b.id, line.split("#")[0].strip())
        for b in ALL_BLOCKS
        if b.lang in ("bash", "console", "sh", "text")
        for line in b.code.splitlines()
        if line.startswith("flashpack ")
    ]


def test_documented_commands_parse() -> None:
    from flashpack import _core

    commands = documented_commands()
    assert len(commands) >= 10, commands
    failed = []
    for where, command in commands:  # clap stops at --help once everything before it has parsed
        outcome = _core.cli([*shlex.split(command)[1:], "--help"])
        if not (outcome["kind"] == "exit" and outcome["code"] == 0):
            failed.append(f"{where}: {command}: {outcome['stderr']}")
    assert not failed, "\n".join(failed)


def test_rust_examples_name_public_items() -> None:
    """The Rust examples are not compiled (they are fragments); their paths into the crate and
    the `Type::function` calls on its types must at least exist in its public API listing."""
    api = (ROOT / "crates" / "flashpack" / "public-api.txt").read_text(encoding="utf-8")
    missing = []
    for b in (b for b in ALL_BLOCKS if b.lang == "rust"):
        code = b.code
        used = [
            i for g in re.findall(r"use flashpack::\{([^;]*)\};", code) for i in re.split(r"[,{}\s]+", g) if "::" in i
        ]
        used += re.findall(r"\bflashpack::(\w+(?:::\w+)+)", code)
        missing += [f"{b.id}: flashpack::{path}" for path in used if f"flashpack::{path}" not in api]
        for ty, fn in re.findall(r"\b([A-Z]\w*)::([a-z_]\w*)\b", code):
            if not re.search(rf"flashpack::(\w+::)*{ty}\b", api) or re.search(rf"::{ty}::{fn}\b", api):
                continue
            if fn == "default" and re.search(rf"impl Default for flashpack::(\w+::)*{ty}\b", api):
                continue  # a trait's method: the listing names the impl
            missing.append(f"{b.id}: {ty}::{fn}")
    assert not missing, "not in crates/flashpack/public-api.txt:\n" + "\n".join(missing)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6}\s+(.*?)\s*#*\s*$", text, flags=re.M):
        s = slug(heading)
        n = seen.get(s, 0)
        seen[s] = n + 1
        out.add(s if n == 0 else f"{s}-{n}")
    return out


def test_relative_links_resolve() -> None:
    broken = []
    for path in DOCS:
        text = FENCE.sub("", path.read_text(encoding="utf-8"))
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
                continue
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            where = f"{path.relative_to(ROOT)}: ({target})"
            if not dest.exists():
                broken.append(f"{where}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{where}: no heading with anchor #{anchor}")
    assert not broken, "\n".join(broken)
