"""diffusers integration: a small latent-diffusion pipeline (UNet + VQ-VAE + scheduler, random
weights, built from configs) through save_pretrained_flashpack / from_pretrained_flashpack,
the model mixin, AutoFlashPackModel / patch_integrations, the CLI, Hub ids from an offline cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hf_testing import (
    RecordingHfApi,
    offline_hub,
    populate_hub_cache,
    recording_hf_api,  # noqa: F401  (fixture)
    same_bits,
)

diffusers = pytest.importorskip("diffusers")

from diffusers import DDIMScheduler, LDMPipeline, UNet2DModel, VQModel  # noqa: E402

from flashpack import get_flashpack_file_metadata, patch_integrations  # noqa: E402
from flashpack.cli import main as cli_main  # noqa: E402
from flashpack.integrations.diffusers import (  # noqa: E402
    AutoFlashPackModel,
    FlashPackDiffusersModelMixin,
    FlashPackDiffusionPipeline,
)


class FlashPackUNet2DModel(UNet2DModel, FlashPackDiffusersModelMixin):
    pass


class FlashPackVQModel(VQModel, FlashPackDiffusersModelMixin):
    pass


class FlashPackLDMPipeline(LDMPipeline, FlashPackDiffusionPipeline):
    def __init__(self, vqvae: FlashPackVQModel, unet: FlashPackUNet2DModel, scheduler: DDIMScheduler) -> None:
        super().__init__(vqvae=vqvae, unet=unet, scheduler=scheduler)


class MixedLDMPipeline(LDMPipeline, FlashPackDiffusionPipeline):
    """Only the UNet is a FlashPack model; the VQ-VAE stays a plain diffusers model."""

    def __init__(self, vqvae: VQModel, unet: FlashPackUNet2DModel, scheduler: DDIMScheduler) -> None:
        super().__init__(vqvae=vqvae, unet=unet, scheduler=scheduler)


def tiny_pipeline() -> LDMPipeline:
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
    )  # fmt: skip
    vqvae = VQModel(
        in_channels=3, out_channels=3, latent_channels=3, block_out_channels=(8,), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",), norm_num_groups=4,
        num_vq_embeddings=16, vq_embed_dim=3,
    )  # fmt: skip
    return LDMPipeline(vqvae=vqvae, unet=unet, scheduler=DDIMScheduler(num_train_timesteps=100))


def images(pipeline: LDMPipeline) -> np.ndarray:
    """Images for a fixed seed. FlashPack loads are compared exactly with the pipeline as it was
    built in memory (both keep weights in aligned memory, so the same kernels run)."""
    out = pipeline(batch_size=2, generator=torch.Generator().manual_seed(7), num_inference_steps=3, output_type="np")
    return out.images


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A pipeline saved the library's way (safetensors), and the images it makes."""
    folder = tmp_path_factory.mktemp("ldm") / "src"
    pipeline = tiny_pipeline()
    pipeline.save_pretrained(folder)
    return folder, images(pipeline)


@pytest.fixture(scope="module")
def packed(source: tuple[Path, np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ldm") / "fp"
    FlashPackLDMPipeline.from_pretrained(source[0]).save_pretrained_flashpack(folder)
    return folder


def test_pipeline_roundtrip_makes_the_same_images(source: tuple[Path, np.ndarray], packed: Path) -> None:
    src, expected = source
    pipeline = FlashPackLDMPipeline.from_pretrained(src)  # annotated components come back as FlashPack classes
    assert type(pipeline.unet) is FlashPackUNet2DModel and type(pipeline.vqvae) is FlashPackVQModel
    # (the library's own load: compared loosely, its BLAS calls may round differently on unaligned memory)
    assert np.allclose(images(pipeline), expected, atol=1e-5)

    for name in ("unet", "vqvae"):
        assert sorted(p.name for p in (packed / name).iterdir()) == ["config.json", "model.flashpack"]
        assert json.loads((packed / name / "config.json").read_text())["_class_name"] in ("UNet2DModel", "VQModel")
    assert (packed / "scheduler" / "scheduler_config.json").is_file()
    index = json.loads((packed / "model_index.json").read_text())
    assert index["_class_name"] == "LDMPipeline"
    assert index["unet"] == ["diffusers", "UNet2DModel"] and index["vqvae"] == ["diffusers", "VQModel"]

    loaded = FlashPackLDMPipeline.from_pretrained_flashpack(packed)
    assert type(loaded.unet) is FlashPackUNet2DModel and type(loaded.vqvae) is FlashPackVQModel
    assert not loaded.unet.training and isinstance(loaded.scheduler, DDIMScheduler)
    assert np.array_equal(images(loaded), expected)


def test_generic_loader_takes_the_pipeline_class_from_model_index(source: tuple[Path, np.ndarray], packed: Path) -> None:
    loaded = FlashPackDiffusionPipeline.from_pretrained_flashpack(packed)
    assert isinstance(loaded, LDMPipeline) and isinstance(loaded, FlashPackDiffusionPipeline)
    assert isinstance(loaded.unet, UNet2DModel) and isinstance(loaded.unet, FlashPackDiffusersModelMixin)
    assert np.array_equal(images(loaded), source[1])


def test_mixed_components_and_per_component_target_dtype(source: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    src, expected = source
    pipeline = MixedLDMPipeline.from_pretrained(src)
    assert type(pipeline.vqvae) is VQModel
    pipeline.save_pretrained_flashpack(tmp_path, target_dtype={"unet": torch.bfloat16, "vqvae": torch.float16})
    # the plain model is saved by its own save_pretrained, target_dtype does not touch it
    assert (tmp_path / "vqvae" / "diffusion_pytorch_model.safetensors").is_file()
    assert not (tmp_path / "vqvae" / "model.flashpack").exists()
    footer = get_flashpack_file_metadata(tmp_path / "unet" / "model.flashpack")
    assert footer.get("target_dtype", "") == "bfloat16" or {b["dtype"] for b in footer["macroblocks"]} == {"bfloat16"}

    loaded = MixedLDMPipeline.from_pretrained_flashpack(tmp_path)
    assert type(loaded.vqvae) is VQModel and loaded.vqvae.dtype == torch.float32
    assert loaded.unet.dtype == torch.bfloat16
    for name, tensor in pipeline.unet.state_dict().items():
        assert torch.equal(loaded.unet.state_dict()[name], tensor.to(torch.bfloat16)), name
    for name, tensor in pipeline.vqvae.state_dict().items():
        assert same_bits(loaded.vqvae.state_dict()[name], tensor), name
    # and cast back on load, the pipeline runs (bf16 weights: close to, not equal to, the fp32 images)
    upcast = MixedLDMPipeline.from_pretrained_flashpack(tmp_path, torch_dtype={"unet": torch.float32})
    assert upcast.unet.dtype == torch.float32
    assert np.abs(images(upcast) - expected).max() < 0.1


def test_model_mixin_subfolder_and_hub_id(source: tuple[Path, np.ndarray], packed: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    reference = UNet2DModel.from_pretrained(source[0], subfolder="unet")
    cache = offline_hub(monkeypatch, tmp_path / "cache")
    populate_hub_cache(cache, "someone/tiny-ldm-flashpack", packed)
    for where in (packed, "someone/tiny-ldm-flashpack"):
        unet = FlashPackUNet2DModel.from_pretrained_flashpack(where, subfolder="unet", device="cpu")
        assert type(unet) is FlashPackUNet2DModel and not unet.training
        assert all(same_bits(unet.state_dict()[n], t) for n, t in reference.state_dict().items())
    loaded = FlashPackLDMPipeline.from_pretrained_flashpack("someone/tiny-ldm-flashpack")
    assert np.array_equal(images(loaded), source[1])
    with pytest.raises(FileNotFoundError, match=r"scheduler/model\.flashpack.*diffusion_pytorch_model\.safetensors"):
        FlashPackUNet2DModel.from_pretrained_flashpack(source[0], subfolder="scheduler")


def test_auto_model_and_patch_integrations(source: tuple[Path, np.ndarray], packed: Path) -> None:
    reference = UNet2DModel.from_pretrained(source[0], subfolder="unet").state_dict()
    patch_integrations()
    for unet in (
        diffusers.AutoModel.from_pretrained_flashpack(packed, subfolder="unet"),
        AutoFlashPackModel.from_pretrained_flashpack(packed, subfolder="unet"),
        AutoFlashPackModel.from_pretrained(source[0], subfolder="unet"),  # ordinary weights, library loader
    ):
        assert isinstance(unet, UNet2DModel) and isinstance(unet, FlashPackDiffusersModelMixin)
        assert all(same_bits(unet.state_dict()[n], t) for n, t in reference.items())
    with pytest.raises(OSError, match="AutoFlashPackModel"):
        AutoFlashPackModel()


def test_cli_converts_a_pipeline_component(source: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    # config.json names a diffusers class, so no --use-diffusers is needed
    assert cli_main(["convert", str(source[0]), str(tmp_path / "unet"), "--subfolder", "unet", "--dtype", "float16"]) == 0
    reference = UNet2DModel.from_pretrained(source[0], subfolder="unet").state_dict()
    unet = FlashPackUNet2DModel.from_pretrained_flashpack(tmp_path / "unet")
    assert all(torch.equal(unet.state_dict()[n], t.to(torch.float16)) for n, t in reference.items())


def test_pipeline_push_to_hub(packed: Path, tmp_path: Path, recording_hf_api: type[RecordingHfApi]) -> None:
    pipeline = FlashPackLDMPipeline.from_pretrained_flashpack(packed)
    pipeline.save_pretrained_flashpack(tmp_path / "tiny-ldm", push_to_hub=True)
    calls = dict(recording_hf_api.calls)
    assert calls["create_repo"]["repo_id"] == "tiny-ldm"  # defaults to the folder's name
    upload = calls["upload_folder"]
    assert upload["repo_id"] == "me/tiny-ldm" and Path(str(upload["folder_path"])) == tmp_path / "tiny-ldm"
    assert {"README.md", "model_index.json", "unet/model.flashpack", "vqvae/model.flashpack"} <= set(upload["files"])


def test_diffusers_native_use_flashpack_runs_on_this_package(tmp_path: Path) -> None:
    """diffusers' own ``save_pretrained(use_flashpack=True)`` / ``from_pretrained(use_flashpack=True)``
    find this package (its distribution is named ``flashpack``) and round-trip a model exactly."""
    from diffusers.utils.import_utils import is_flashpack_available

    assert is_flashpack_available()
    unet = tiny_pipeline().unet
    unet.save_pretrained(tmp_path / "unet", use_flashpack=True)
    assert any(p.suffix == ".flashpack" for p in (tmp_path / "unet").iterdir())
    back = UNet2DModel.from_pretrained(tmp_path / "unet", use_flashpack=True)
    for (name, a), b in zip(back.state_dict().items(), unet.state_dict().values()):
        assert torch.equal(a, b), name
