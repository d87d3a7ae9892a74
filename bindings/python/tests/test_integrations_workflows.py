"""The original package's own workflows, offline: its ``tests/test_integrations.py`` (patch the
libraries, ``AutoModel.from_pretrained`` gives a FlashPack model, ``save_pretrained_flashpack``,
``AutoModel.from_pretrained_flashpack``) and its ``scripts/run_benchmark.py`` flow (copy a model
folder, ``from_pretrained(torch_dtype=bf16, device_map=...)``, ``save_pretrained_flashpack(target_dtype=)``,
``from_pretrained_flashpack(device=, target_dtype=)``), for both libraries, with small local
models built from configs in place of the Hub ids. Also: pipelines loaded through diffusers,
``from_config``, ``use_flashpack=True``, the patch's bookkeeping and its error when a library moved.

The benchmark flow runs on the CPU and, where torch sees one, on CUDA (``make gpu-check``).
"""

from __future__ import annotations

import gc
import os
import shutil
from pathlib import Path

import pytest
import torch
from hf_testing import (
    same_bits,
    save_tiny_repo,
    state_dicts_equal,
    tiny_clip,
    tiny_qwen2,
    tiny_vae,
    tiny_wan_transformer,
)

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from flashpack.integrations import patch_integrations, unpatch_integrations  # noqa: E402
from flashpack.integrations._patches import PatchError, is_patched  # noqa: E402

DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
]


@pytest.fixture(scope="module")
def sd_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """stable-diffusion-v1-5 in miniature: a repository folder whose "vae" is an AutoencoderKL."""
    return save_tiny_repo(tmp_path_factory.mktemp("sd") / "repo", "vae", tiny_vae())


@pytest.fixture(scope="module")
def clip_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """openai/clip-vit-base-patch32 in miniature."""
    return save_tiny_repo(tmp_path_factory.mktemp("clip") / "repo", None, tiny_clip())


# ---------------------------------------------------------------------------------------------
# The original's tests/test_integrations.py, with local folders for the Hub ids.


def test_diffusers(sd_repo: Path, tmp_path: Path) -> None:
    from flashpack.integrations.diffusers import patch_diffusers_auto_model

    patch_diffusers_auto_model()

    from diffusers.models import AutoModel

    from flashpack.integrations.diffusers.model import FlashPackDiffusersModelMixin

    model = AutoModel.from_pretrained(str(sd_repo), subfolder="vae")
    assert model is not None
    assert isinstance(model, FlashPackDiffusersModelMixin)

    model.save_pretrained_flashpack(str(tmp_path))
    assert os.path.exists(os.path.join(tmp_path, "model.flashpack"))
    loaded = AutoModel.from_pretrained_flashpack(str(tmp_path))
    assert loaded is not None

    # beyond the original: the same model, bit for bit, and the same output
    assert isinstance(loaded, diffusers.AutoencoderKL) and isinstance(loaded, FlashPackDiffusersModelMixin)
    assert state_dicts_equal(loaded, model)
    sample = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(loaded(sample).sample, model.eval()(sample).sample, rtol=1e-5, atol=1e-6)


def test_transformers(clip_repo: Path, tmp_path: Path) -> None:
    from flashpack.integrations.transformers import patch_transformers_auto_model

    patch_transformers_auto_model()

    from transformers.models.auto.modeling_auto import AutoModel

    from flashpack.integrations.transformers.model import FlashPackTransformersModelMixin

    model = AutoModel.from_pretrained(str(clip_repo))
    assert model is not None
    assert isinstance(model, FlashPackTransformersModelMixin)

    model.save_pretrained_flashpack(str(tmp_path))
    assert os.path.exists(os.path.join(tmp_path, "model.flashpack"))
    loaded = AutoModel.from_pretrained_flashpack(str(tmp_path))
    assert loaded is not None

    assert isinstance(loaded, transformers.CLIPModel) and isinstance(loaded, FlashPackTransformersModelMixin)
    assert state_dicts_equal(loaded, model)
    ids = torch.tensor([[0, 5, 9, 1]])
    pixels = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = loaded(input_ids=ids, pixel_values=pixels), model(input_ids=ids, pixel_values=pixels)
    # (weights identical; outputs up to float rounding: BLAS may round differently on other alignments)
    assert torch.allclose(a.logits_per_image, b.logits_per_image, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# The original's scripts/run_benchmark.py flow (test_model), one small model per library.


def run_benchmark_model(
    model_dir: Path, work: Path, device: str, dtype: torch.dtype, use_transformers: bool
) -> tuple[torch.nn.Module, torch.nn.Module, int]:
    """The steps of run_benchmark.py's ``test_model`` on ``model_dir`` (timings left out):
    returns the library-loaded model, the FlashPack-loaded one and the loaded bytes."""
    from diffusers.models import AutoModel as DiffusersAutoModel
    from transformers import AutoModel as TransformersAutoModel

    saved_flashpack_path = model_dir / "model.flashpack"
    saved_flashpack_config_path = model_dir / "flashpack_config.json"
    temp_model_dir, flashpack_dir = work / "model", work / "flashpack"
    os.makedirs(flashpack_dir, exist_ok=True)
    shutil.copytree(model_dir, temp_model_dir)

    auto = TransformersAutoModel if use_transformers else DiffusersAutoModel
    model = auto.from_pretrained(str(temp_model_dir), torch_dtype=dtype, device_map={"": device})
    if saved_flashpack_path.exists() and saved_flashpack_config_path.exists():
        shutil.copy(saved_flashpack_path, flashpack_dir / "model.flashpack")
        shutil.copy(saved_flashpack_config_path, flashpack_dir / "config.json")
    else:
        model.save_pretrained_flashpack(str(flashpack_dir), target_dtype=dtype, silent=True)
        shutil.copy(flashpack_dir / "model.flashpack", saved_flashpack_path)
        shutil.copy(flashpack_dir / "config.json", saved_flashpack_config_path)
    gc.collect()

    flashpack_model = auto.from_pretrained_flashpack(str(flashpack_dir), device=device, target_dtype=dtype)
    total_numel = sum(param.numel() for param in flashpack_model.parameters())
    return model, flashpack_model, total_numel * dtype.itemsize


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    ("builder", "subfolder", "use_transformers"),
    [
        pytest.param(tiny_wan_transformer, "transformer", False, id="wan-transformer"),
        pytest.param(tiny_qwen2, "text_encoder", True, id="qwen-text-encoder"),
    ],
)
def test_run_benchmark_flow(builder, subfolder: str, use_transformers: bool, device: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    if not use_transformers:
        pytest.importorskip("accelerate", reason="diffusers loads with device_map only when accelerate is installed")
    patch_integrations()  # run_benchmark.py patches both libraries at import
    repo = save_tiny_repo(tmp_path / "repo", subfolder, builder())
    model_dir = repo / subfolder
    dtype = torch.bfloat16

    for round_ in range(2):  # the second round takes the cached model.flashpack / flashpack_config.json
        work = tmp_path / f"round{round_}"
        work.mkdir()
        model, loaded, total_bytes = run_benchmark_model(model_dir, work, device, dtype, use_transformers)
        assert (model_dir / "model.flashpack").is_file() and (model_dir / "flashpack_config.json").is_file()
        assert total_bytes == sum(p.numel() for p in model.parameters()) * 2
        assert {p.device.type for p in loaded.parameters()} == {device}
        assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
        assert not loaded.training
        expected = model.state_dict()
        got = loaded.state_dict()
        assert list(got) == [k for k in expected if k in got] and set(expected) - set(got) <= tied_names(model)
        for name, tensor in got.items():  # (the library keeps some modules in float32; the file casts all)
            assert same_bits(tensor.cpu(), expected[name].cpu().to(tensor.dtype)), name


def tied_names(model: torch.nn.Module) -> set[str]:
    """State-dict names that alias an earlier tensor (libraries save those once)."""
    seen: dict[int, str] = {}
    tied = set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in seen:
            tied.add(name)
        seen.setdefault(id(tensor), name)
    return tied


# ---------------------------------------------------------------------------------------------
# What the patch changes, beyond the original's tests.


def test_from_config_and_use_flashpack(sd_repo: Path, clip_repo: Path, tmp_path: Path) -> None:
    from flashpack.integrations.diffusers import FlashPackDiffusersModelMixin
    from flashpack.integrations.transformers import FlashPackTransformersModelMixin

    patch_integrations()
    vae = diffusers.AutoModel.from_config(diffusers.AutoencoderKL.load_config(sd_repo / "vae"))
    assert isinstance(vae, FlashPackDiffusersModelMixin)
    clip = transformers.AutoModel.from_config(transformers.AutoConfig.from_pretrained(clip_repo))
    assert isinstance(clip, FlashPackTransformersModelMixin)
    # the library's own save still writes its own class names
    vae.save_pretrained(tmp_path / "vae")
    clip.save_pretrained(tmp_path / "clip")
    assert '"_class_name": "AutoencoderKL"' in (tmp_path / "vae" / "config.json").read_text()
    assert '"CLIPModel"' in (tmp_path / "clip" / "config.json").read_text()

    vae.save_pretrained_flashpack(tmp_path / "vae-fp")
    clip.save_pretrained_flashpack(tmp_path / "clip-fp")
    for auto, folder, model in ((diffusers.AutoModel, "vae-fp", vae), (transformers.AutoModel, "clip-fp", clip)):
        loaded = auto.from_pretrained(tmp_path / folder, use_flashpack=True)  # the original's spelling
        assert state_dicts_equal(loaded, model)
    # other auto classes are patched too, including those that inherit their from_pretrained
    inheriting = transformers.AutoModelForImageToImage  # defines no from_pretrained of its own
    assert "from_pretrained" not in inheriting.__dict__
    assert is_patched(next(k for k in inheriting.__mro__ if "from_pretrained" in k.__dict__), "from_pretrained")
    unpatch_integrations()
    plain = diffusers.AutoModel.from_pretrained(str(tmp_path / "vae"))  # (diffusers 0.42 wants a str here)
    assert not isinstance(plain, FlashPackDiffusersModelMixin) and not hasattr(diffusers.AutoModel, "from_pretrained_flashpack")
    assert state_dicts_equal(plain, vae)


def test_pipeline_components_gain_the_mixin(tmp_path: Path) -> None:
    from diffusers import DDIMScheduler, DiffusionPipeline, LDMPipeline, UNet2DModel, VQModel

    from flashpack.integrations.diffusers import FlashPackDiffusersModelMixin, FlashPackDiffusionPipeline

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                       down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2)  # fmt: skip
    vqvae = VQModel(block_out_channels=(8,), layers_per_block=1, norm_num_groups=4, num_vq_embeddings=16, vq_embed_dim=3)
    LDMPipeline(vqvae=vqvae, unet=unet, scheduler=DDIMScheduler(num_train_timesteps=100)).save_pretrained(tmp_path / "ldm")

    patch_integrations()
    for loader in (DiffusionPipeline, LDMPipeline):
        pipeline = loader.from_pretrained(tmp_path / "ldm")
        assert isinstance(pipeline, LDMPipeline) and isinstance(pipeline, FlashPackDiffusionPipeline)
        assert isinstance(pipeline.unet, FlashPackDiffusersModelMixin) and isinstance(pipeline.vqvae, FlashPackDiffusersModelMixin)
        assert type(pipeline.scheduler) is DDIMScheduler
    pipeline.save_pretrained_flashpack(tmp_path / "ldm-fp", target_dtype=torch.bfloat16)
    assert (tmp_path / "ldm-fp" / "unet" / "model.flashpack").is_file()
    assert (tmp_path / "ldm-fp" / "vqvae" / "model.flashpack").is_file()
    back = DiffusionPipeline.from_pretrained_flashpack(tmp_path / "ldm-fp")
    assert isinstance(back, LDMPipeline) and back.unet.dtype == torch.bfloat16
    for name, tensor in unet.state_dict().items():
        assert torch.equal(back.unet.state_dict()[name], tensor.to(torch.bfloat16)), name


def test_patching_is_idempotent_and_reversible(clip_repo: Path) -> None:
    originals = {name: transformers.AutoModel.__dict__[name] for name in ("from_pretrained", "from_config")}
    dp = diffusers.DiffusionPipeline.__dict__["from_pretrained"]
    patch_integrations()
    patched = transformers.AutoModel.__dict__["from_pretrained"]
    patch_integrations()  # twice: not wrapped twice
    assert transformers.AutoModel.__dict__["from_pretrained"] is patched
    assert patched is not originals["from_pretrained"]
    unpatch_integrations()
    assert {name: transformers.AutoModel.__dict__[name] for name in originals} == originals
    assert diffusers.DiffusionPipeline.__dict__["from_pretrained"] is dp
    assert "from_pretrained_flashpack" not in transformers.AutoModel.__dict__
    from flashpack.integrations.transformers import FlashPackTransformersModelMixin

    assert not isinstance(transformers.AutoModel.from_pretrained(clip_repo), FlashPackTransformersModelMixin)


def test_a_library_that_moved_what_we_wrap_gets_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from flashpack.integrations.diffusers import patch_diffusers_auto_model

    class AutoModel:  # a future diffusers whose AutoModel lost its from_config classmethod
        @classmethod
        def from_pretrained(cls, *args: object) -> None:
            return None

        from_config = staticmethod(lambda config: None)

    AutoModel.__module__, AutoModel.__qualname__ = "diffusers.models.auto_model", "AutoModel"
    monkeypatch.setattr(diffusers, "AutoModel", AutoModel)
    with pytest.raises(PatchError, match=r"diffusers\.models\.auto_model\.AutoModel\.from_config: it is a staticmethod, "
                                         r"not a classmethod in diffusers 0\.42\.\d+; this flashpack supports diffusers"):  # fmt: skip
        patch_diffusers_auto_model()
