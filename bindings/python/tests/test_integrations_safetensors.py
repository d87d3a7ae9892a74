"""from_pretrained_flashpack on ordinary Hugging Face folders (no conversion): safetensors single
files and sharded checkpoints, ``variant="fp16"``, Hub ids from an offline cache, through every
entry point (mixins, patched AutoModels, AutoFlashPackModel, FlashPackDiffusionPipeline). Every
load is compared with the library's own ``from_pretrained`` of the same folder: every parameter
and buffer (non-persistent ones included) bit for bit, tied weights, outputs."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hf_testing import fake_hub, offline_hub, populate_hub_cache, same_bits, tiny_qwen2, tiny_vae, tiny_wan_transformer

transformers = pytest.importorskip("transformers")
diffusers = pytest.importorskip("diffusers")

from diffusers import DDIMScheduler, DiffusionPipeline, LDMPipeline, UNet2DModel, VQModel  # noqa: E402
from huggingface_hub import save_torch_state_dict  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    BertConfig,
    BertModel,
    LlamaConfig,
    LlamaForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
)

from flashpack import patch_integrations  # noqa: E402
from flashpack.integrations.diffusers import (  # noqa: E402
    AutoFlashPackModel,
    FlashPackDiffusersModelMixin,
    FlashPackDiffusionPipeline,
)
from flashpack.integrations.transformers import FlashPackTransformersModelMixin  # noqa: E402


class FlashPackLlamaForCausalLM(LlamaForCausalLM, FlashPackTransformersModelMixin):
    pass


class FlashPackBertModel(BertModel, FlashPackTransformersModelMixin):
    pass


class FlashPackMixtralForCausalLM(MixtralForCausalLM, FlashPackTransformersModelMixin):
    pass


class FlashPackT5(T5ForConditionalGeneration, FlashPackTransformersModelMixin):
    pass


class FlashPackUNet2DModel(UNet2DModel, FlashPackDiffusersModelMixin):
    pass


IDS = torch.tensor([[1, 5, 9, 3, 2, 7]])
# Small enough shards that every model below is split into several files.
SHARD = "6KB"


def everything(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer by name, tied and non-persistent ones included."""
    tensors = dict(model.named_parameters(remove_duplicate=False))
    tensors.update(model.named_buffers(remove_duplicate=False))
    return tensors


def assert_same(ours: torch.nn.Module, reference: torch.nn.Module) -> None:
    """Same tensors (names, dtypes, shapes, bits) as the library's load, in eval mode."""
    a, b = everything(ours), everything(reference)
    assert sorted(a) == sorted(b)
    differ = [name for name in a if not same_bits(a[name].cpu(), b[name].cpu())]
    assert not differ, f"differ from the library's load: {differ}"
    assert not ours.training


def save_both(model: torch.nn.Module, folder: Path, sharded: bool) -> Path:
    """The library's save of ``model`` (float32) and of a float16 copy as ``variant="fp16"`` in
    one folder (as on the Hub), several shards each when ``sharded``. (Saved apart, then moved
    in: ``save_pretrained`` deletes the shards of other saves it finds in its folder.)"""
    options = {"max_shard_size": SHARD} if sharded else {}
    model.save_pretrained(folder, **options)
    copy.deepcopy(model).to(torch.float16).save_pretrained(folder / "fp16", variant="fp16", **options)
    for file in (folder / "fp16").iterdir():
        if ".fp16" in file.name:
            file.rename(folder / file.name)
    shutil.rmtree(folder / "fp16")
    return folder


def shard_count(folder: Path, pattern: str) -> int:
    return len(list(folder.glob(pattern)))


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=32, tie_word_embeddings=True, bos_token_id=0, eos_token_id=1,
    )  # fmt: skip
    return LlamaForCausalLM(config)


def tiny_bert() -> BertModel:
    torch.manual_seed(1)
    config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32)  # fmt: skip
    return BertModel(config)


def tiny_mixtral() -> MixtralForCausalLM:
    torch.manual_seed(2)
    config = MixtralConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=32,
    )  # fmt: skip
    return MixtralForCausalLM(config)


def tiny_t5() -> T5ForConditionalGeneration:
    torch.manual_seed(3)
    config = T5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2, decoder_start_token_id=0)
    return T5ForConditionalGeneration(config)


def tiny_unet() -> UNet2DModel:
    torch.manual_seed(4)
    return UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4, attention_head_dim=4,
    )  # fmt: skip


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("llama")
    model = tiny_llama()
    return {"single": save_both(model, root / "single", False), "sharded": save_both(model, root / "sharded", True)}


# -- transformers --------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["single", "sharded"])
@pytest.mark.parametrize("variant", [None, "fp16"])
def test_causal_lm_with_tied_embeddings(llama: dict[str, Path], layout: str, variant: str | None) -> None:
    folder = llama[layout]
    if layout == "sharded":
        assert shard_count(folder, "model-*-of-*.safetensors") >= 3
        assert shard_count(folder, "model.fp16-*-of-*.safetensors") >= 2
    reference = LlamaForCausalLM.from_pretrained(folder, variant=variant)
    ours = FlashPackLlamaForCausalLM.from_pretrained_flashpack(folder, variant=variant)
    assert type(ours) is FlashPackLlamaForCausalLM
    assert_same(ours, reference)
    assert ours.dtype == torch.float32  # "auto": the config's dtype (the fp16 variant's weights upcast)
    if variant:  # the variant's files were read: float16 values
        assert torch.equal(ours.lm_head.weight, ours.lm_head.weight.half().float())
    assert ours.lm_head.weight is ours.model.embed_tokens.weight
    assert "model.rotary_emb.inv_freq" in everything(ours)  # a buffer no checkpoint holds
    assert ours.generation_config.to_dict() == reference.generation_config.to_dict()
    if variant is None:
        with torch.no_grad():
            assert torch.equal(ours(IDS).logits, reference(IDS).logits)


def test_every_entry_point_loads_the_folder(llama: dict[str, Path]) -> None:
    folder = llama["sharded"]
    reference = LlamaForCausalLM.from_pretrained(folder)
    patch_integrations()
    loaded = [
        AutoModelForCausalLM.from_pretrained_flashpack(folder),
        AutoModelForCausalLM.from_pretrained(folder, use_flashpack=True),
        AutoFlashPackModel.from_pretrained_flashpack(folder),
    ]
    for ours in loaded:
        assert isinstance(ours, LlamaForCausalLM) and isinstance(ours, FlashPackTransformersModelMixin)
        assert_same(ours, reference)
        assert ours.lm_head.weight is ours.model.embed_tokens.weight


def test_dtype_arguments_cast_like_the_library(tmp_path: Path) -> None:
    folder = save_both(tiny_bert(), tmp_path / "bert", sharded=True)
    for kwargs in ({"dtype": torch.bfloat16}, {"torch_dtype": "float16"}, {"dtype": "auto", "variant": "fp16"}):
        reference = BertModel.from_pretrained(folder, **kwargs)
        ours = FlashPackBertModel.from_pretrained_flashpack(folder, **kwargs)
        assert_same(ours, reference)
        assert "embeddings.position_ids" in everything(ours)  # non-persistent buffer
    ours = FlashPackBertModel.from_pretrained_flashpack(folder, target_dtype=torch.bfloat16)
    assert_same(ours, BertModel.from_pretrained(folder, dtype=torch.bfloat16))


def test_keep_in_fp32_modules_stay_float32(tmp_path: Path) -> None:
    folder = save_both(tiny_t5(), tmp_path / "t5", sharded=True)
    reference = T5ForConditionalGeneration.from_pretrained(folder, dtype=torch.float16)
    ours = FlashPackT5.from_pretrained_flashpack(folder, dtype=torch.float16)
    assert_same(ours, reference)
    wo = ours.encoder.block[0].layer[1].DenseReluDense.wo.weight
    assert wo.dtype == torch.float32 and ours.shared.weight.dtype == torch.float16


def test_moe_experts_are_fused_by_the_library_conversion(tmp_path: Path) -> None:
    source = tiny_mixtral().eval()
    folder = tmp_path / "mixtral"
    source.save_pretrained(folder, max_shard_size=SHARD)
    stored = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    # The checkpoint holds one tensor per expert; the model one fused tensor per layer.
    assert any(".experts.0.w1.weight" in name for name in stored)
    reference = MixtralForCausalLM.from_pretrained(folder)
    ours = FlashPackMixtralForCausalLM.from_pretrained_flashpack(folder)
    assert "model.layers.0.mlp.experts.gate_up_proj" in everything(ours)
    assert_same(ours, reference)
    with torch.no_grad():
        assert torch.equal(ours(IDS).logits, source(IDS).logits)


def test_a_conversion_the_checkpoint_does_not_fit_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "mixtral"
    tiny_mixtral().save_pretrained(folder)
    tensors = load_file(folder / "model.safetensors")
    dropped = [name for name in tensors if ".experts.3.w1." in name]
    assert dropped  # one expert short: the library cannot fuse the experts' weights
    save_file({n: t for n, t in tensors.items() if n not in dropped}, folder / "model.safetensors")
    with pytest.raises(RuntimeError, match="conversion") as library:
        MixtralForCausalLM.from_pretrained(folder)
    with pytest.raises(RuntimeError, match=r"mixtral/model\.safetensors: transformers could not load") as ours:
        FlashPackMixtralForCausalLM.from_pretrained_flashpack(folder)
    assert str(library.value) in str(ours.value)


def test_missing_and_unexpected_keys(tmp_path: Path) -> None:
    folder = tmp_path / "bert"
    tiny_bert().save_pretrained(folder)
    tensors = load_file(folder / "model.safetensors")
    del tensors["pooler.dense.bias"]
    tensors["extra.weight"] = torch.ones(2)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})

    torch.manual_seed(5)
    reference = BertModel.from_pretrained(folder)
    torch.manual_seed(5)
    ours, info = FlashPackBertModel.from_pretrained_flashpack(folder, output_loading_info=True)
    assert_same(ours, reference)  # the missing bias initialised as the library does
    assert info["missing_keys"] == {"pooler.dense.bias"} and info["unexpected_keys"] == {"extra.weight"}
    expected = r"missing_keys: \['pooler\.dense\.bias'\].*unexpected_keys: \['extra\.weight'\]"
    with pytest.raises(ValueError, match=expected):
        FlashPackBertModel.from_pretrained_flashpack(folder, strict=True)


def test_hub_id_from_the_offline_cache(llama: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = offline_hub(monkeypatch, tmp_path / "cache")
    populate_hub_cache(cache, "someone/tiny-llama", llama["sharded"])
    for variant in (None, "fp16"):
        ours = FlashPackLlamaForCausalLM.from_pretrained_flashpack("someone/tiny-llama", variant=variant)
        assert_same(ours, LlamaForCausalLM.from_pretrained(llama["sharded"], variant=variant))


def test_a_flashpack_file_wins_over_safetensors(tmp_path: Path) -> None:
    folder = tmp_path / "both"
    tiny_bert().save_pretrained(folder)
    torch.manual_seed(9)
    other = FlashPackBertModel(tiny_bert().config)
    other.save_pretrained_flashpack(folder)  # config.json + model.flashpack, other weights
    with pytest.warns(UserWarning, match=r"model\.flashpack: loading it, not the weights of variant 'fp16'"):
        ours = FlashPackBertModel.from_pretrained_flashpack(folder, variant="fp16")
    assert all(same_bits(ours.state_dict()[n], t) for n, t in other.state_dict().items())


def test_folders_without_weights_and_refused_options(llama: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "config-only"
    tiny_bert().config.save_pretrained(folder)
    torch.save(tiny_bert().state_dict(), folder / "pytorch_model.bin")  # pickles are not read
    looked_for = r"model\.flashpack.*model\.safetensors, model\.safetensors\.index\.json.*holds.*pytorch_model\.bin"
    with pytest.raises(FileNotFoundError, match=looked_for):
        FlashPackBertModel.from_pretrained_flashpack(folder)
    with pytest.raises(FileNotFoundError, match=r"variant 'bf16'.*model\.bf16\.safetensors"):
        FlashPackLlamaForCausalLM.from_pretrained_flashpack(llama["single"], variant="bf16")
    with pytest.raises(ValueError, match=r"model\.safetensors: verify=True"):
        FlashPackLlamaForCausalLM.from_pretrained_flashpack(llama["single"], verify=True)
    with pytest.raises(ValueError, match=r"use_distributed_loading"):
        FlashPackLlamaForCausalLM.from_pretrained_flashpack(llama["single"], use_distributed_loading=True)


def test_transformers_component_of_a_pipeline_repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "repo"
    save_both(tiny_qwen2(), folder / "text_encoder", sharded=True)
    (folder / "model_index.json").write_text(
        json.dumps({"_class_name": "QwenImagePipeline", "text_encoder": ["transformers", "Qwen2Model"]})
    )
    cache = offline_hub(monkeypatch, tmp_path / "cache")
    populate_hub_cache(cache, "someone/tiny-pipeline", folder)
    for variant in (None, "fp16"):
        reference = transformers.Qwen2Model.from_pretrained(folder, subfolder="text_encoder", variant=variant)
        for where in (folder, "someone/tiny-pipeline"):
            ours = AutoFlashPackModel.from_pretrained_flashpack(where, subfolder="text_encoder", variant=variant)
            assert isinstance(ours, transformers.Qwen2Model) and isinstance(ours, FlashPackTransformersModelMixin)
            assert_same(ours, reference)


# -- diffusers -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def unet(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("unet")
    model = tiny_unet()
    return {"single": save_both(model, root / "single", False), "sharded": save_both(model, root / "sharded", True)}


@pytest.mark.parametrize("layout", ["single", "sharded"])
@pytest.mark.parametrize("variant", [None, "fp16"])
@pytest.mark.parametrize("dtype", [None, torch.float16])
def test_diffusers_model(unet: dict[str, Path], layout: str, variant: str | None, dtype: torch.dtype | None) -> None:
    folder = unet[layout]
    if layout == "sharded":
        assert shard_count(folder, "diffusion_pytorch_model-*-of-*.safetensors") >= 3
        assert shard_count(folder, "diffusion_pytorch_model.fp16-*-of-*.safetensors") >= 2
    reference = UNet2DModel.from_pretrained(folder, variant=variant, torch_dtype=dtype)
    ours = FlashPackUNet2DModel.from_pretrained_flashpack(folder, variant=variant, torch_dtype=dtype)
    assert type(ours) is FlashPackUNet2DModel
    assert_same(ours, reference)
    assert ours.dtype == reference.dtype
    if dtype is None:
        sample, step = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([3])
        with torch.no_grad():
            assert torch.equal(ours(sample, step).sample, reference(sample, step).sample)


def test_diffusers_keep_in_fp32_modules(tmp_path: Path) -> None:
    model = tiny_wan_transformer()
    assert model._keep_in_fp32_modules
    folder = save_both(model, tmp_path / "wan", sharded=True)
    cases = ({"torch_dtype": torch.float16}, {"variant": "fp16"}, {"variant": "fp16", "torch_dtype": torch.bfloat16})
    for kwargs in cases:
        reference = diffusers.WanTransformer3DModel.from_pretrained(folder, **kwargs)
        ours = AutoFlashPackModel.from_pretrained_flashpack(folder, **kwargs)
        assert isinstance(ours, FlashPackDiffusersModelMixin)
        assert_same(ours, reference)


def test_diffusers_legacy_attention_names_are_renamed_by_the_library(tmp_path: Path) -> None:
    vae = tiny_vae()
    folder = tmp_path / "vae"
    vae.save_pretrained(folder)
    tensors = load_file(folder / "diffusion_pytorch_model.safetensors")
    legacy = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    renamed = {}
    for name, tensor in tensors.items():
        for new, old in legacy.items():
            if ".attentions." in name and f".{new}." in name:
                name = name.replace(f".{new}.", f".{old}.")
        renamed[name] = tensor
    assert any(".query." in name for name in renamed)
    save_file(renamed, folder / "diffusion_pytorch_model.safetensors", metadata={"format": "pt"})
    reference = diffusers.AutoencoderKL.from_pretrained(folder)
    assert_same(reference, vae.eval())  # the library's own conversion applies to this folder
    assert_same(AutoFlashPackModel.from_pretrained_flashpack(folder), reference)
    # The same names in shards: diffusers itself renames them only in single files; we do here too.
    sharded = tmp_path / "vae-sharded"
    sharded.mkdir()
    shutil.copy(folder / "config.json", sharded / "config.json")
    pattern = "diffusion_pytorch_model{suffix}.safetensors"
    save_torch_state_dict(renamed, sharded, filename_pattern=pattern, max_shard_size=SHARD)
    assert (sharded / "diffusion_pytorch_model.safetensors.index.json").is_file()
    assert_same(AutoFlashPackModel.from_pretrained_flashpack(sharded), reference)


def test_diffusers_unexpected_and_missing_tensors(unet: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "unet"
    tiny_unet().save_pretrained(folder)
    tensors = load_file(folder / "diffusion_pytorch_model.safetensors")
    save_file({**tensors, "extra.weight": torch.ones(2)}, folder / "diffusion_pytorch_model.safetensors")
    with pytest.warns(UserWarning, match=r"extra\.weight"):
        ours = FlashPackUNet2DModel.from_pretrained_flashpack(folder)
    assert_same(ours, UNet2DModel.from_pretrained(unet["single"]))
    with pytest.raises(ValueError, match=r"extra\.weight"):
        FlashPackUNet2DModel.from_pretrained_flashpack(folder, strict=True)
    del tensors["conv_in.bias"]
    save_file(tensors, folder / "diffusion_pytorch_model.safetensors")
    with pytest.raises(ValueError, match=r"\['conv_in\.bias'\] are not in the checkpoint"):
        FlashPackUNet2DModel.from_pretrained_flashpack(folder)


def test_diffusers_quantized_checkpoint_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "unet"
    tiny_unet().save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_8bit": True}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"unet/diffusion_pytorch_model\.safetensors: a quantized checkpoint"):
        FlashPackUNet2DModel.from_pretrained_flashpack(folder)


def tiny_ldm() -> LDMPipeline:
    vqvae = VQModel(
        in_channels=3, out_channels=3, latent_channels=3, block_out_channels=(8,), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",), norm_num_groups=4,
        num_vq_embeddings=16, vq_embed_dim=3,
    )  # fmt: skip
    return LDMPipeline(vqvae=vqvae, unet=tiny_unet(), scheduler=DDIMScheduler(num_train_timesteps=100))


def images(pipeline: LDMPipeline) -> np.ndarray:
    out = pipeline(batch_size=1, generator=torch.Generator().manual_seed(7), num_inference_steps=2, output_type="np")
    return out.images


def test_pipeline_folder_and_hub_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "ldm"
    pipeline = tiny_ldm()
    pipeline.save_pretrained(folder, max_shard_size=SHARD)
    pipeline.save_pretrained(folder, variant="fp16", max_shard_size=SHARD)
    assert shard_count(folder / "unet", "diffusion_pytorch_model-*-of-*.safetensors") >= 3
    cache = offline_hub(monkeypatch, tmp_path / "cache")
    populate_hub_cache(cache, "someone/tiny-ldm", folder)
    for where in (folder, "someone/tiny-ldm"):
        reference = DiffusionPipeline.from_pretrained(folder)
        ours = FlashPackDiffusionPipeline.from_pretrained_flashpack(where)
        assert isinstance(ours, LDMPipeline) and isinstance(ours.unet, FlashPackDiffusersModelMixin)
        for name in ("unet", "vqvae"):
            assert_same(getattr(ours, name), getattr(reference, name))
        assert np.array_equal(images(ours), images(reference))
    reference = DiffusionPipeline.from_pretrained(folder, variant="fp16", dtype=torch.float16)
    ours = FlashPackDiffusionPipeline.from_pretrained_flashpack(folder, variant="fp16", torch_dtype=torch.float16)
    for name in ("unet", "vqvae"):
        assert_same(getattr(ours, name), getattr(reference, name))
    patch_integrations()
    unet = diffusers.AutoModel.from_pretrained_flashpack(folder, subfolder="unet", variant="fp16")
    assert_same(unet, UNet2DModel.from_pretrained(folder, subfolder="unet", variant="fp16"))


def test_weights_come_through_the_engine_as_one_job(llama: dict[str, Path], unet: dict[str, Path],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    import flashpack.integrations._checkpoint as checkpoint

    calls: list[tuple[Path, dict[str, object]]] = []
    real = checkpoint.load_checkpoint

    def recording(path: Path, device: object, **kwargs: object) -> dict[str, torch.Tensor]:
        calls.append((Path(path), kwargs))
        return real(path, device, **kwargs)

    monkeypatch.setattr(checkpoint, "load_checkpoint", recording)
    FlashPackLlamaForCausalLM.from_pretrained_flashpack(llama["sharded"], variant="fp16", eager=True)
    FlashPackUNet2DModel.from_pretrained_flashpack(unet["sharded"])
    assert [(path.name, kwargs["eager"]) for path, kwargs in calls] == [
        ("model.safetensors.index.fp16.json", True),
        ("diffusion_pytorch_model.safetensors.index.json", False),
    ]


def test_a_device_without_accelerate_is_refused_before_reading(llama: dict[str, Path],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    import flashpack.integrations._checkpoint as checkpoint

    monkeypatch.setattr(transformers.utils, "is_accelerate_available", lambda: False)
    monkeypatch.setattr(checkpoint, "load_checkpoint", lambda *a, **k: pytest.fail("read before refusing"))
    with pytest.raises(ValueError, match=r"model\.safetensors: loading onto cuda.*needs accelerate"):
        FlashPackLlamaForCausalLM.from_pretrained_flashpack(llama["single"], device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_device(llama: dict[str, Path], unet: dict[str, Path]) -> None:
    ours = FlashPackLlamaForCausalLM.from_pretrained_flashpack(llama["sharded"], device="cuda")
    reference = LlamaForCausalLM.from_pretrained(llama["sharded"], device_map="cuda")
    assert all(t.is_cuda for t in everything(ours).values())
    assert_same(ours, reference)
    assert ours.lm_head.weight is ours.model.embed_tokens.weight
    ours_unet = FlashPackUNet2DModel.from_pretrained_flashpack(unet["sharded"], device="cuda", dtype=torch.float16)
    assert all(t.is_cuda for t in everything(ours_unet).values())
    assert_same(ours_unet, UNet2DModel.from_pretrained(unet["sharded"], torch_dtype=torch.float16))


def test_a_single_file_and_an_index_in_one_folder_load_what_the_library_loads(tmp_path: Path) -> None:
    folder = tmp_path / "both"
    tiny_llama().save_pretrained(folder)  # model.safetensors
    torch.manual_seed(1)
    other = LlamaForCausalLM(tiny_llama().config)
    other.save_pretrained(tmp_path / "other", max_shard_size=SHARD)
    for file in (tmp_path / "other").glob("model*.safetensors*"):
        file.rename(folder / file.name)
    assert (folder / "model.safetensors").is_file() and (folder / "model.safetensors.index.json").is_file()
    reference = LlamaForCausalLM.from_pretrained(folder)  # transformers takes the single file first
    assert_same(FlashPackLlamaForCausalLM.from_pretrained_flashpack(folder), reference)


def test_config_transformers_weights_names_the_file_to_load(tmp_path: Path) -> None:
    folder = tmp_path / "explicit"
    tiny_llama().save_pretrained(folder)
    torch.manual_seed(1)
    other = LlamaForCausalLM(tiny_llama().config)
    save_file({n: t.contiguous() for n, t in other.state_dict().items() if n != "lm_head.weight"},
              folder / "chosen.safetensors", metadata={"format": "pt"})  # fmt: skip
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "transformers_weights": "chosen.safetensors"}))
    reference = LlamaForCausalLM.from_pretrained(folder)
    assert same_bits(reference.model.embed_tokens.weight, other.model.embed_tokens.weight)
    assert_same(FlashPackLlamaForCausalLM.from_pretrained_flashpack(folder), reference)
    config["transformers_weights"] = "../outside.safetensors"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"transformers_weights.*outside\.safetensors"):
        FlashPackLlamaForCausalLM.from_pretrained_flashpack(folder)


def test_diffusers_folder_with_a_single_file_and_an_index_loads_what_the_library_loads(tmp_path: Path) -> None:
    folder = tmp_path / "both"
    tiny_unet().save_pretrained(folder)
    torch.manual_seed(1)
    UNet2DModel(**tiny_unet().config).save_pretrained(tmp_path / "other", max_shard_size=SHARD)
    for file in (tmp_path / "other").glob("diffusion_pytorch_model*.safetensors*"):
        file.rename(folder / file.name)
    reference = UNet2DModel.from_pretrained(folder)  # diffusers takes the index first
    assert_same(FlashPackUNet2DModel.from_pretrained_flashpack(folder), reference)


def test_a_folder_with_only_variant_files_needs_the_variant_as_in_the_library(tmp_path: Path) -> None:
    llama = tmp_path / "llama"
    tiny_llama().to(torch.float16).save_pretrained(llama, variant="fp16")
    with pytest.raises(OSError):
        LlamaForCausalLM.from_pretrained(llama)
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors"):
        FlashPackLlamaForCausalLM.from_pretrained_flashpack(llama)
    unet = tmp_path / "unet"
    tiny_unet().to(torch.float16).save_pretrained(unet, variant="fp16")
    with pytest.raises(OSError):
        UNet2DModel.from_pretrained(unet)
    with pytest.raises(FileNotFoundError, match=r"diffusion_pytorch_model\.safetensors"):
        FlashPackUNet2DModel.from_pretrained_flashpack(unet)


def test_a_hub_id_fetches_only_what_the_load_reads(llama: dict[str, Path], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    repo = tmp_path / "repo"
    shutil.copytree(llama["sharded"], repo)
    (repo / "onnx").mkdir()
    for junk in ("pytorch_model.bin", "flax_model.msgpack", "onnx/model.onnx", "model.bf16.safetensors"):
        (repo / junk).write_bytes(b"not needed")
    fetched = fake_hub(monkeypatch, tmp_path / "hub", {"someone/llama": repo, "someone/llama-fp16": repo})
    ours = FlashPackLlamaForCausalLM.from_pretrained_flashpack("someone/llama")
    assert_same(ours, LlamaForCausalLM.from_pretrained(llama["sharded"]))
    weights = sorted(f.split(":")[1] for f in fetched if not f.endswith((".json", ".md")))
    assert weights == sorted(p.name for p in repo.glob("model-*-of-*.safetensors")), weights
    fetched.clear()
    ours = FlashPackLlamaForCausalLM.from_pretrained_flashpack("someone/llama-fp16", variant="fp16")
    assert_same(ours, LlamaForCausalLM.from_pretrained(llama["sharded"], variant="fp16"))
    weights = sorted(f.split(":")[1] for f in fetched if not f.endswith((".json", ".md")))
    assert weights == sorted(p.name for p in repo.glob("model.fp16-*-of-*.safetensors")), weights


def test_a_hub_id_fetches_the_file_transformers_weights_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "repo"
    tiny_llama().save_pretrained(repo)
    torch.manual_seed(1)
    other = LlamaForCausalLM(tiny_llama().config)
    other.save_pretrained(tmp_path / "other", max_shard_size=SHARD)
    for file in (tmp_path / "other").glob("model*.safetensors*"):
        file.rename(repo / file.name.replace("model", "weights"))
    index = json.loads((repo / "weights.safetensors.index.json").read_text())
    index["weight_map"] = {k: v.replace("model", "weights") for k, v in index["weight_map"].items()}
    (repo / "weights.safetensors.index.json").write_text(json.dumps(index))
    config = json.loads((repo / "config.json").read_text())
    config["transformers_weights"] = "weights.safetensors.index.json"
    (repo / "config.json").write_text(json.dumps(config))
    fetched = fake_hub(monkeypatch, tmp_path / "hub", {"someone/llama": repo})
    ours = FlashPackLlamaForCausalLM.from_pretrained_flashpack("someone/llama")
    assert_same(ours, LlamaForCausalLM.from_pretrained(repo))
    assert same_bits(ours.model.embed_tokens.weight, other.model.embed_tokens.weight)
    assert "someone/llama:model.safetensors" in fetched  # the library's name is fetched too (one pattern for all)
    assert sum(f.startswith("someone/llama:weights-") for f in fetched) >= 2


def test_a_pipeline_hub_id_fetches_its_components_of_the_variant(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "ldm"
    pipeline = tiny_ldm()
    pipeline.save_pretrained(folder, max_shard_size=SHARD)
    pipeline.save_pretrained(tmp_path / "fp16", variant="fp16", max_shard_size=SHARD)
    shutil.copytree(tmp_path / "fp16" / "unet", folder / "unet", dirs_exist_ok=True)  # vqvae: no fp16 files
    (folder / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"not needed")
    fetched = fake_hub(monkeypatch, tmp_path / "hub", {"someone/tiny-ldm": folder})
    reference = DiffusionPipeline.from_pretrained(folder, variant="fp16")
    ours = FlashPackDiffusionPipeline.from_pretrained_flashpack("someone/tiny-ldm", variant="fp16")
    for name in ("unet", "vqvae"):
        assert_same(getattr(ours, name), getattr(reference, name))
    unet = {f.split(":")[1] for f in fetched if f.startswith("someone/tiny-ldm:unet/") and f.endswith(".safetensors")}
    assert unet and all(".fp16" in name for name in unet), unet  # the plain unet weights are not fetched...
    assert any(f.startswith("someone/tiny-ldm:vqvae/diffusion_pytorch_model") and f.endswith(".safetensors")
               for f in fetched)  # ...the plain vqvae ones are (it has no fp16 weights)  # fmt: skip
    assert not any(f.endswith(".bin") for f in fetched)


class Counted(diffusers.ModelMixin, diffusers.ConfigMixin):
    @diffusers.configuration_utils.register_to_config
    def __init__(self, n: int = 4) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(n, n)
        self.register_buffer("steps", torch.arange(n, dtype=torch.int32))


class FlashPackCounted(Counted, FlashPackDiffusersModelMixin):
    pass


@pytest.mark.parametrize("dtype", [None, torch.float16])
def test_diffusers_casts_integer_tensors_to_the_models_dtype_as_the_library(tmp_path: Path,
                                                                             dtype: torch.dtype | None) -> None:  # fmt: skip
    torch.manual_seed(0)
    Counted().save_pretrained(tmp_path)
    weights = load_file(tmp_path / "diffusion_pytorch_model.safetensors")
    weights["steps"] = weights["steps"].to(torch.int64) + 7  # the checkpoint's buffer is int64, the model's int32
    save_file(weights, tmp_path / "diffusion_pytorch_model.safetensors")
    reference = Counted.from_pretrained(tmp_path, torch_dtype=dtype)
    ours = FlashPackCounted.from_pretrained_flashpack(tmp_path, torch_dtype=dtype)
    assert reference.steps.dtype == torch.int32 and reference.steps.tolist() == [7, 8, 9, 10]
    assert_same(ours, reference)
