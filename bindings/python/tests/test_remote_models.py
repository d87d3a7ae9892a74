"""``from_pretrained_flashpack`` of a model folder at a URL, against the real servers of
remote_servers.py (nginx and moto's S3): the folder's config fetched by name, its weights found
by probing the objects beside it in the order a local folder's are, read by the engine from the
URL. Every load is compared bit for bit with the library's own ``from_pretrained`` of the same
folder on disk."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hf_testing import same_bits
from remote_servers import S3, Nginx, nginx, s3  # noqa: F401 - fixtures

transformers = pytest.importorskip("transformers")
diffusers = pytest.importorskip("diffusers")

from diffusers import UNet2DModel  # noqa: E402

from flashpack import patch_integrations  # noqa: E402
from flashpack.cli import main as cli_main  # noqa: E402
from flashpack.integrations.diffusers import (  # noqa: E402
    AutoFlashPackModel,
    FlashPackDiffusersModelMixin,
    FlashPackDiffusionPipeline,
)
from flashpack.integrations.transformers import FlashPackTransformersModelMixin  # noqa: E402


class FlashPackLlamaForCausalLM(transformers.LlamaForCausalLM, FlashPackTransformersModelMixin):
    pass


class FlashPackUNet2DModel(UNet2DModel, FlashPackDiffusersModelMixin):
    pass


@pytest.fixture(autouse=True)
def _small_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Small ranged GETs (many parts per file), quick retries."""
    monkeypatch.setenv("FLASHPACK_REMOTE_PART_BYTES", str(16 << 10))
    monkeypatch.setenv("FLASHPACK_REMOTE_RETRIES", "2")
    monkeypatch.setenv("FLASHPACK_REMOTE_REQUEST_TIMEOUT_SECS", "20")


def tiny_llama(seed: int = 0) -> Any:
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=32,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(config).eval()
    model.generation_config.max_new_tokens = 7  # a value the load must carry over from generation_config.json
    return model


def tiny_unet() -> Any:
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
    ).eval()  # fmt: skip


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Model folders on disk, as the libraries and flashpack write them: a Llama as one
    safetensors file, sharded (index), as model.flashpack (with a stale safetensors file beside
    it, which must lose), as a multi-file FlashPack checkpoint (`flashpack convert --sharded`),
    in a subfolder; a UNet as diffusers safetensors and as model.flashpack."""
    root = tmp_path_factory.mktemp("remote-models")
    llama = tiny_llama()
    llama.save_pretrained(root / "llama")
    llama.save_pretrained(root / "llama-sharded", max_shard_size="20KB")
    assert cli_main(["convert", str(root / "llama-sharded"), str(root / "llama-fpidx"), "--sharded"]) == 0
    for config in ("config.json", "generation_config.json"):
        (root / "llama-fpidx" / config).write_bytes((root / "llama" / config).read_bytes())
    FlashPackLlamaForCausalLM.from_pretrained(root / "llama").save_pretrained_flashpack(root / "llama-fp")
    tiny_llama(seed=1).save_pretrained(root / "llama-fp" / "stale")  # other weights, which must not be read
    (root / "llama-fp" / "model.safetensors").write_bytes((root / "llama-fp/stale/model.safetensors").read_bytes())
    llama.save_pretrained(root / "repo" / "sub")
    unet = tiny_unet()
    unet.save_pretrained(root / "unet")
    FlashPackUNet2DModel.from_pretrained(root / "unet").save_pretrained_flashpack(root / "unet-fp")
    (root / "no-weights").mkdir()
    (root / "no-weights" / "config.json").write_bytes((root / "llama" / "config.json").read_bytes())
    (root / "no-config").mkdir()
    (root / "no-config" / "model.safetensors").write_bytes((root / "llama" / "model.safetensors").read_bytes())
    assert (root / "llama-sharded" / "model.safetensors.index.json").is_file()
    assert (root / "llama-fpidx" / "model.flashpack.index.json").is_file()
    return root


def _publish(folders: Path, put: Callable[[str, bytes], None]) -> None:
    for f in sorted(p for p in folders.rglob("*") if p.is_file()):
        put(f.relative_to(folders).as_posix(), f.read_bytes())


@pytest.fixture(scope="module")
def http_base(nginx: Nginx, folders: Path) -> str:  # noqa: F811
    def put(name: str, data: bytes) -> None:
        dst = nginx.root / "models" / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(data)

    _publish(folders, put)
    return nginx.url("models")


@pytest.fixture(scope="module")
def s3_base(s3: S3, folders: Path) -> str:  # noqa: F811
    _publish(folders, lambda name, data: s3.put(f"models/{name}", data))
    return s3.url("models")


@pytest.fixture(params=["http", "s3"])
def base(request: pytest.FixtureRequest) -> Iterator[str]:
    yield request.getfixturevalue(f"{request.param}_base")


def assert_same_weights(got: torch.nn.Module, want: torch.nn.Module) -> None:
    got_sd, want_sd = got.state_dict(), want.state_dict()
    assert sorted(got_sd) == sorted(want_sd)
    bad = [n for n, t in want_sd.items() if not same_bits(got_sd[n], t)]
    assert not bad, bad


@pytest.mark.parametrize("name", ["llama", "llama-sharded", "llama-fp", "llama-fpidx"])
def test_transformers_folder_at_a_url_is_bit_exact(base: str, folders: Path, name: str) -> None:
    want = transformers.LlamaForCausalLM.from_pretrained(folders / "llama")  # the source of every folder
    url = f"{base}/{name}"
    got = FlashPackLlamaForCausalLM.from_pretrained_flashpack(url)
    assert type(got) is FlashPackLlamaForCausalLM and not got.training
    assert_same_weights(got, want)
    assert got.generation_config.max_new_tokens == 7
    assert got.config.name_or_path == url


def test_subfolder_and_auto_classes_at_a_url(base: str, folders: Path) -> None:
    want = transformers.LlamaForCausalLM.from_pretrained(folders / "repo", subfolder="sub")
    got = FlashPackLlamaForCausalLM.from_pretrained_flashpack(f"{base}/repo", subfolder="sub")
    assert_same_weights(got, want)
    auto = AutoFlashPackModel.from_pretrained_flashpack(f"{base}/llama-fp")
    assert isinstance(auto, transformers.LlamaForCausalLM) and isinstance(auto, FlashPackTransformersModelMixin)
    assert_same_weights(auto, want)
    patch_integrations()
    patched = transformers.AutoModelForCausalLM.from_pretrained_flashpack(f"{base}/llama-sharded")
    assert isinstance(patched, FlashPackTransformersModelMixin)
    assert_same_weights(patched, want)


@pytest.mark.parametrize("name", ["unet", "unet-fp"])
def test_diffusers_folder_at_a_url_is_bit_exact(base: str, folders: Path, name: str) -> None:
    want = UNet2DModel.from_pretrained(folders / "unet")  # the source of unet-fp too
    got = FlashPackUNet2DModel.from_pretrained_flashpack(f"{base}/{name}")
    assert type(got) is FlashPackUNet2DModel and not got.training
    assert_same_weights(got, want)
    auto = AutoFlashPackModel.from_pretrained_flashpack(f"{base}/{name}")
    assert isinstance(auto, UNet2DModel) and isinstance(auto, FlashPackDiffusersModelMixin)
    assert_same_weights(auto, want)


def test_a_folder_url_without_config_or_weights_is_file_not_found_naming_the_url(http_base: str, s3_base: str) -> None:
    for base in (http_base, s3_base):
        with pytest.raises(FileNotFoundError, match=f"{base}/no-config/config.json".replace(".", r"\.")):
            FlashPackLlamaForCausalLM.from_pretrained_flashpack(f"{base}/no-config")
        with pytest.raises(FileNotFoundError, match=f"{base}/absent/config.json".replace(".", r"\.")):
            FlashPackUNet2DModel.from_pretrained_flashpack(f"{base}/absent")
        with pytest.raises(FileNotFoundError, match=rf"{base}/no-weights/model\.flashpack.*looked for"):
            FlashPackLlamaForCausalLM.from_pretrained_flashpack(f"{base}/no-weights")


def test_what_a_folder_url_cannot_give_is_a_clear_error(http_base: str) -> None:
    with pytest.raises(ValueError, match="a pipeline cannot be loaded from a URL"):
        FlashPackDiffusionPipeline.from_pretrained_flashpack(f"{http_base}/pipeline")
    with pytest.raises(ValueError, match="use_flashpack"):
        AutoFlashPackModel.from_pretrained(f"{http_base}/unet")
    with pytest.raises(ValueError, match="not the URL of a file"):
        FlashPackLlamaForCausalLM.from_pretrained_flashpack(f"{http_base}/llama/model.safetensors")


def test_a_folder_in_a_hub_repository_by_its_hf_url(
    nginx: Nginx,  # noqa: F811
    folders: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``hf://org/repo[@revision]/folder`` is a folder at a URL (nginx stands in for the Hub:
    ``$HF_ENDPOINT/org/repo/resolve/<revision>/folder/<file>``); ``hf://org/repo`` stays a Hub
    repository, fetched by huggingface_hub (test_remote.py)."""
    for rev in ("main", "v1"):
        dst = nginx.root / "org/llm/resolve" / rev / "sub"
        dst.mkdir(parents=True, exist_ok=True)
        for f in (folders / "llama-sharded").iterdir():
            (dst / f.name).write_bytes(f.read_bytes())
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{nginx.port}")
    want = transformers.LlamaForCausalLM.from_pretrained(folders / "llama")
    for url in ("hf://org/llm/sub", "hf://org/llm@v1/sub"):
        assert_same_weights(FlashPackLlamaForCausalLM.from_pretrained_flashpack(url), want)
