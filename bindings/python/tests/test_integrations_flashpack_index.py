"""from_pretrained_flashpack over a multi-file FlashPack checkpoint: the library's sharded
safetensors save, converted by ``flashpack convert --sharded`` (shards + ``model.flashpack.index.json``
/ ``diffusion_pytorch_model.flashpack.index.json``), loads equal to the library's own
``from_pretrained`` of the original folder, for transformers and diffusers; the index is found
after ``model.flashpack`` and before the safetensors weights."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
diffusers = pytest.importorskip("diffusers")

from diffusers import DiffusionPipeline, LDMPipeline, UNet2DModel  # noqa: E402
from test_integrations_safetensors import (  # noqa: E402
    IDS,
    SHARD,
    FlashPackLlamaForCausalLM,
    FlashPackUNet2DModel,
    assert_same,
    images,
    tiny_ldm,
    tiny_llama,
    tiny_unet,
)
from transformers import AutoModelForCausalLM, LlamaForCausalLM  # noqa: E402

from flashpack import patch_integrations  # noqa: E402
from flashpack.cli import main as cli_main  # noqa: E402
from flashpack.integrations._checkpoint import DIFFUSERS_NAMES, TRANSFORMERS_NAMES, find_weights  # noqa: E402
from flashpack.integrations.diffusers import AutoFlashPackModel, FlashPackDiffusionPipeline  # noqa: E402


def convert_sharded(source: Path, destination: Path, index_name: str) -> Path:
    """``flashpack convert source destination --sharded``, then the configs beside the shards
    (convert writes only weights); returns the destination, which holds no safetensors file."""
    assert cli_main(["convert", str(source), str(destination), "--sharded"]) == 0
    assert (destination / index_name).is_file()
    assert len(list(destination.glob("*.flashpack"))) >= 3
    assert not list(destination.glob("*.safetensors*"))
    for config in source.glob("*config.json"):
        shutil.copy(config, destination / config.name)
    return destination


def test_transformers_sharded_save_converted_to_multi_file_flashpack(tmp_path: Path) -> None:
    tiny_llama().save_pretrained(tmp_path / "st", max_shard_size=SHARD)
    assert len(list((tmp_path / "st").glob("model-*-of-*.safetensors"))) >= 3
    folder = convert_sharded(tmp_path / "st", tmp_path / "fp", "model.flashpack.index.json")
    assert find_weights(folder, TRANSFORMERS_NAMES).name == "model.flashpack.index.json"
    reference = LlamaForCausalLM.from_pretrained(tmp_path / "st")
    patch_integrations()
    for ours in (
        FlashPackLlamaForCausalLM.from_pretrained_flashpack(folder),
        FlashPackLlamaForCausalLM.from_pretrained_flashpack(folder, eager=True),
        AutoModelForCausalLM.from_pretrained_flashpack(folder),
        AutoFlashPackModel.from_pretrained_flashpack(folder),
    ):
        assert isinstance(ours, LlamaForCausalLM)
        assert_same(ours, reference)
        assert ours.lm_head.weight is ours.model.embed_tokens.weight
        with torch.no_grad():
            assert torch.equal(ours(IDS).logits, reference(IDS).logits)


def test_diffusers_sharded_save_converted_to_multi_file_flashpack(tmp_path: Path) -> None:
    tiny_unet().save_pretrained(tmp_path / "st", max_shard_size=SHARD)
    folder = convert_sharded(tmp_path / "st", tmp_path / "fp", "diffusion_pytorch_model.flashpack.index.json")
    assert find_weights(folder, DIFFUSERS_NAMES).name == "diffusion_pytorch_model.flashpack.index.json"
    reference = UNet2DModel.from_pretrained(tmp_path / "st")
    sample, step = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([3])
    for ours in (FlashPackUNet2DModel.from_pretrained_flashpack(folder), AutoFlashPackModel.from_pretrained_flashpack(folder)):
        assert isinstance(ours, UNet2DModel)
        assert_same(ours, reference)
        # The weights are the same bits (above); the conv kernels' rounding depends on where the
        # weights lie (FlashPack shards align tensors to 64 bytes, the library's load views the
        # safetensors file's offsets), so the outputs agree to rounding, not bit for bit.
        with torch.no_grad():
            torch.testing.assert_close(ours(sample, step).sample, reference(sample, step).sample, rtol=1e-5, atol=1e-6)
    ours = FlashPackUNet2DModel.from_pretrained_flashpack(folder, torch_dtype=torch.float16)
    assert_same(ours, UNet2DModel.from_pretrained(tmp_path / "st", torch_dtype=torch.float16))


def test_precedence_model_flashpack_then_flashpack_index_then_safetensors(tmp_path: Path) -> None:
    """In one folder: the multi-file FlashPack index wins over the library's safetensors weights,
    and model.flashpack over both."""
    tiny_llama().save_pretrained(tmp_path / "st", max_shard_size=SHARD)
    folder = convert_sharded(tmp_path / "st", tmp_path / "fp", "model.flashpack.index.json")
    torch.manual_seed(7)
    other = LlamaForCausalLM(tiny_llama().config)  # other weights, as safetensors in the same folder
    other.save_pretrained(tmp_path / "other")
    shutil.copy(tmp_path / "other" / "model.safetensors", folder / "model.safetensors")
    assert find_weights(folder, TRANSFORMERS_NAMES).name == "model.flashpack.index.json"
    assert_same(FlashPackLlamaForCausalLM.from_pretrained_flashpack(folder), LlamaForCausalLM.from_pretrained(tmp_path / "st"))
    (folder / "model.flashpack").write_bytes(b"")
    assert find_weights(folder, TRANSFORMERS_NAMES).name == "model.flashpack"
    # the names for diffusers follow the same order
    (folder / "diffusion_pytorch_model.flashpack.index.json").write_text("{}")
    (folder / "diffusion_pytorch_model.safetensors").write_text("")
    (folder / "model.flashpack").unlink()
    assert find_weights(folder, DIFFUSERS_NAMES).name == "diffusion_pytorch_model.flashpack.index.json"


def test_a_variant_multi_file_flashpack_checkpoint(tmp_path: Path) -> None:
    """``convert --sharded --variant fp16`` writes ``model.flashpack.index.fp16.json``, which
    ``variant="fp16"`` finds (and nothing else does)."""
    tiny_llama().to(torch.float16).save_pretrained(tmp_path / "st", max_shard_size=SHARD, variant="fp16")
    assert cli_main(["convert", str(tmp_path / "st"), str(tmp_path / "fp"), "--sharded", "--variant", "fp16"]) == 0
    folder = tmp_path / "fp"
    for config in (tmp_path / "st").glob("*config.json"):
        shutil.copy(config, folder / config.name)
    assert find_weights(folder, TRANSFORMERS_NAMES, "fp16").name == "model.flashpack.index.fp16.json"
    with pytest.raises(FileNotFoundError, match=r"model\.flashpack\.index\.json"):
        find_weights(folder, TRANSFORMERS_NAMES)
    ours = FlashPackLlamaForCausalLM.from_pretrained_flashpack(folder, variant="fp16")
    assert_same(ours, LlamaForCausalLM.from_pretrained(tmp_path / "st", variant="fp16"))


def test_a_pipeline_whose_components_are_multi_file_flashpack(tmp_path: Path) -> None:
    """A pipeline folder whose unet and vqvae hold converted multi-file FlashPack checkpoints
    instead of their safetensors shards loads like the library's load of the original."""
    tiny_ldm().save_pretrained(tmp_path / "st", max_shard_size=SHARD)
    shutil.copytree(tmp_path / "st", tmp_path / "fp")
    for component in ("unet", "vqvae"):
        converted = convert_sharded(tmp_path / "st" / component, tmp_path / f"{component}-fp",
                                    "diffusion_pytorch_model.flashpack.index.json")  # fmt: skip
        target = tmp_path / "fp" / component
        shutil.rmtree(target)
        converted.rename(target)
    reference = DiffusionPipeline.from_pretrained(tmp_path / "st")
    ours = FlashPackDiffusionPipeline.from_pretrained_flashpack(tmp_path / "fp")
    assert isinstance(ours, LDMPipeline)
    for name in ("unet", "vqvae"):
        assert_same(getattr(ours, name), getattr(reference, name))
    # Same weights bit for bit; the conv kernels round by the weights' placement (see above).
    assert abs(images(ours) - images(reference)).max() < 1e-5
