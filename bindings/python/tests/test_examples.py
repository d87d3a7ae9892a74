"""The README's examples and the seed README's Kaggle example run as written."""

from __future__ import annotations

import contextlib
import io
import os
import re
import runpy
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = Path(__file__).parent / "examples"


def readme_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


@pytest.mark.parametrize("index", range(len(readme_blocks())))
def test_readme_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, index: int) -> None:
    monkeypatch.chdir(tmp_path)
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(readme_blocks()[index], f"README.md block {index}", "exec"), {"__name__": "__readme__"})


def test_readme_has_the_seed_examples() -> None:
    text = "\n".join(readme_blocks())
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
