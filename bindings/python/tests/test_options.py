"""One definition of the options: every keyword of ``assign_from_file`` and of ``pack_to_file``
reaches them through every entry point (``from_flashpack``, ``save_flashpack``,
``from_pretrained_flashpack`` / ``save_pretrained_flashpack`` of both libraries, pipelines, the
patched AutoModels); ``verify=True`` catches a flipped byte through them; and the dtype rule for
buffers (floating buffers take the file's dtype, as parameters do; integer buffers must match;
``coerce_dtype=True`` converts to the model's dtype)."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hf_testing import same_bits, tiny_clip, tiny_vae

import flashpack
from flashpack import FlashPackMixin, deserialization, get_flashpack_file_metadata, pack_to_file, serialization
from flashpack.options import LOAD_OPTIONS, PACK_OPTIONS

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffusers import ConfigMixin, DDIMScheduler, LDMPipeline, ModelMixin, UNet2DModel, VQModel  # noqa: E402
from diffusers.configuration_utils import register_to_config  # noqa: E402

from flashpack.integrations import patch_integrations  # noqa: E402
from flashpack.integrations._common import add_mixin  # noqa: E402
from flashpack.integrations.diffusers import (  # noqa: E402
    AutoFlashPackModel,
    FlashPackDiffusersModelMixin,
    FlashPackDiffusionPipeline,
)
from flashpack.integrations.transformers import FlashPackTransformersModelMixin  # noqa: E402

# A value other than the default for every option (a new option must get one here).
LOAD_VALUES: dict[str, Any] = {
    "strict": True, "strict_params": False, "strict_buffers": True, "keep_flash_ref_on_model": True,
    "silent": False, "num_streams": 3, "chunk_bytes": 12345, "ignore_names": ["not.there"],
    "ignore_prefixes": ["nowhere."], "ignore_suffixes": [".never"], "use_distributed_loading": True,
    "distributed_sharded": True, "distributed_shard_strategy": "windows", "rank": 0, "local_rank": 0,
    "world_size": 1, "coerce_dtype": True, "eager": True, "verify": True,
}  # fmt: skip
PACK_VALUES: dict[str, Any] = {
    "target_dtype": torch.float16, "name_order": ["a.weight"], "align_bytes": 64, "silent": False, "num_workers": 3,
    "checksums": False,
}  # fmt: skip


def test_the_option_sets_are_the_functions_keywords_and_every_one_has_a_test_value() -> None:
    assign = list(inspect.signature(flashpack.assign_from_file).parameters)
    assert list(LOAD_OPTIONS.names) == assign[3:]  # after (model, path, device)
    pack = list(inspect.signature(pack_to_file).parameters)
    assert list(PACK_OPTIONS.names) == pack[2:]  # after (state_dict_or_model, destination_path)
    assert set(LOAD_VALUES) == set(LOAD_OPTIONS.names)
    assert set(PACK_VALUES) == set(PACK_OPTIONS.names)
    for name, value in {**LOAD_VALUES, **PACK_VALUES}.items():
        default = (LOAD_OPTIONS.parameters.get(name) or PACK_OPTIONS.parameters[name]).default
        assert value != default, name


class Reached(Exception):
    """Raised by the spies: the call got there, with these keyword arguments."""

    def __init__(self, kwargs: dict[str, Any]) -> None:
        super().__init__("reached")
        self.kwargs = kwargs


@pytest.fixture
def spies(monkeypatch: pytest.MonkeyPatch) -> None:
    """assign_from_file and pack_to_file stop the call and report what they were given."""

    def stop(*args: Any, **kwargs: Any) -> None:
        raise Reached(kwargs)

    monkeypatch.setattr(deserialization, "assign_from_file", stop)
    monkeypatch.setattr(serialization, "pack_to_file", stop)


def received(call: Callable[[], Any]) -> dict[str, Any]:
    with pytest.raises(Reached) as reached:
        call()
    return reached.value.kwargs


def assert_load_options_arrived(kwargs: dict[str, Any]) -> None:
    for name, value in LOAD_VALUES.items():
        if name.startswith("ignore_"):  # loaders may add names of their own (tied weights)
            assert set(value) <= set(kwargs[name] or ()), name
        else:
            assert kwargs[name] == value, name


def assert_pack_options_arrived(kwargs: dict[str, Any]) -> None:
    for name, value in PACK_VALUES.items():
        assert kwargs[name] == value, name


class Net(torch.nn.Module, FlashPackMixin):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(4, 4)
        self.bn = torch.nn.BatchNorm1d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.a(x))


class TinyBN(ModelMixin, ConfigMixin):
    """A diffusers model with BatchNorm (floating running statistics, an int64 counter)."""

    @register_to_config
    def __init__(self, channels: int = 4) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, channels, 3)
        self.bn = torch.nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class FlashPackTinyBN(TinyBN, FlashPackDiffusersModelMixin):
    pass


class FlashPackCLIPModel(transformers.CLIPModel, FlashPackTransformersModelMixin):
    pass


class FlashPackAutoencoderKL(diffusers.AutoencoderKL, FlashPackDiffusersModelMixin):
    pass


class FlashPackUNet2DModel(UNet2DModel, FlashPackDiffusersModelMixin):
    pass


class FlashPackLDMPipeline(LDMPipeline, FlashPackDiffusionPipeline):
    def __init__(self, vqvae: VQModel, unet: FlashPackUNet2DModel, scheduler: DDIMScheduler) -> None:
        super().__init__(vqvae=vqvae, unet=unet, scheduler=scheduler)


def trained_bn() -> TinyBN:
    torch.manual_seed(0)
    model = FlashPackTinyBN()
    model.train()
    model(torch.randn(8, 3, 6, 6))  # running statistics that are not the initial ones
    return model.eval()


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A FlashPack folder per kind of entry point."""
    root = tmp_path_factory.mktemp("options")
    vae = tiny_vae()
    diffusers_folder = root / "vae"
    add_mixin(vae, FlashPackDiffusersModelMixin).save_pretrained_flashpack(diffusers_folder)
    transformers_folder = root / "clip"
    add_mixin(tiny_clip(), FlashPackTransformersModelMixin).save_pretrained_flashpack(transformers_folder)
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                       down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2)  # fmt: skip
    vqvae = VQModel(block_out_channels=(8,), layers_per_block=1, norm_num_groups=4, num_vq_embeddings=16, vq_embed_dim=3)
    unet.__class__ = FlashPackUNet2DModel
    pipeline = FlashPackLDMPipeline(vqvae=vqvae, unet=unet, scheduler=DDIMScheduler())
    pipeline_folder = root / "ldm"
    pipeline.save_pretrained_flashpack(pipeline_folder)
    module_file = root / "net.flashpack"
    Net().save_flashpack(module_file, silent=True)
    return {"diffusers": diffusers_folder, "transformers": transformers_folder, "pipeline": pipeline_folder,
            "module": module_file}  # fmt: skip


LOADERS: dict[str, Callable[[dict[str, Path], dict[str, Any]], Any]] = {
    "FlashPackMixin.from_flashpack": lambda f, o: Net.from_flashpack(f["module"], **o),
    "diffusers mixin": lambda f, o: FlashPackAutoencoderKL.from_pretrained_flashpack(f["diffusers"], **o),
    "transformers mixin": lambda f, o: FlashPackCLIPModel.from_pretrained_flashpack(f["transformers"], **o),
    "AutoFlashPackModel": lambda f, o: AutoFlashPackModel.from_pretrained_flashpack(f["diffusers"], **o),
    "pipeline": lambda f, o: FlashPackLDMPipeline.from_pretrained_flashpack(f["pipeline"], **o),
    "generic pipeline": lambda f, o: FlashPackDiffusionPipeline.from_pretrained_flashpack(f["pipeline"], **o),
    "patched diffusers.AutoModel": lambda f, o: diffusers.AutoModel.from_pretrained_flashpack(f["diffusers"], **o),
    "patched diffusers.AutoModel use_flashpack": lambda f, o: diffusers.AutoModel.from_pretrained(
        str(f["diffusers"]), use_flashpack=True, **o
    ),
    "patched transformers.AutoModel": lambda f, o: transformers.AutoModel.from_pretrained_flashpack(
        f["transformers"], **o
    ),
    "patched transformers.AutoModel use_flashpack": lambda f, o: transformers.AutoModel.from_pretrained(
        f["transformers"], use_flashpack=True, **o
    ),
    "patched DiffusionPipeline": lambda f, o: diffusers.DiffusionPipeline.from_pretrained_flashpack(f["pipeline"], **o),
}


@pytest.mark.parametrize("entry", LOADERS)
def test_every_load_option_reaches_assign_from_file(entry: str, folders: dict[str, Path], spies: None) -> None:
    patch_integrations()
    kwargs = received(lambda: LOADERS[entry](folders, dict(LOAD_VALUES)))
    assert_load_options_arrived(kwargs)
    # and each is a parameter of the entry point's signature, not swallowed by **kwargs
    if entry in ("FlashPackMixin.from_flashpack", "diffusers mixin", "transformers mixin", "pipeline"):
        owner = {"FlashPackMixin.from_flashpack": Net, "diffusers mixin": FlashPackAutoencoderKL,
                 "transformers mixin": FlashPackCLIPModel, "pipeline": FlashPackLDMPipeline}[entry]  # fmt: skip
        method = owner.from_flashpack if entry.startswith("FlashPackMixin") else owner.from_pretrained_flashpack
        assert set(LOAD_VALUES) <= set(inspect.signature(method).parameters)


def _saved_model(kind: str) -> Any:
    if kind == "diffusers":
        return add_mixin(tiny_vae(), FlashPackDiffusersModelMixin)
    return FlashPackCLIPModel(tiny_clip().config)


SAVERS: dict[str, Callable[[Path], Any]] = {
    "FlashPackMixin.save_flashpack": lambda d: Net().save_flashpack(d / "m.flashpack", **PACK_VALUES),
    "diffusers mixin": lambda d: _saved_model("diffusers").save_pretrained_flashpack(d, **PACK_VALUES),
    "transformers mixin": lambda d: _saved_model("transformers").save_pretrained_flashpack(d, **PACK_VALUES),
    "patched diffusers.AutoModel model": lambda d: diffusers.AutoModel.from_config(
        {**tiny_vae().config, "_class_name": "AutoencoderKL"}
    ).save_pretrained_flashpack(d, **PACK_VALUES),
    "patched transformers.AutoModel model": lambda d: transformers.AutoModel.from_config(
        tiny_clip().config
    ).save_pretrained_flashpack(d, **PACK_VALUES),
}


@pytest.mark.parametrize("entry", SAVERS)
def test_every_pack_option_reaches_pack_to_file(entry: str, tmp_path: Path, spies: None) -> None:
    patch_integrations()
    assert_pack_options_arrived(received(lambda: SAVERS[entry](tmp_path)))


def test_pack_options_reach_every_pipeline_component_or_each_its_own(folders: dict[str, Path], tmp_path: Path) -> None:
    pipeline = FlashPackLDMPipeline.from_pretrained_flashpack(folders["pipeline"])
    add_mixin(pipeline.vqvae, FlashPackDiffusersModelMixin)
    options = {**PACK_VALUES, "name_order": {"unet": ["conv_in.weight"], "vqvae": ["encoder.conv_in.weight"]}}
    pipeline.save_pretrained_flashpack(tmp_path, **options)
    for component, kept in (("unet", "conv_in.weight"), ("vqvae", "encoder.conv_in.weight")):
        footer = get_flashpack_file_metadata(tmp_path / component / "model.flashpack")
        assert [r["name"] for r in footer["index"]] == [kept]  # name_order: only these, per component
        assert footer["align_bytes"] == 64 and "checksums" not in footer
        assert {b["dtype"] for b in footer.get("macroblocks", [{"dtype": footer["target_dtype"]}])} == {"float16"}


# ---------------------------------------------------------------------------------------------
# verify=True through the loaders: a flipped payload byte is caught.


def flip_a_byte(path: Path) -> None:
    footer = get_flashpack_file_metadata(path)
    raw = bytearray(path.read_bytes())
    block = footer["macroblocks"][0] if "macroblocks" in footer else {"offset_bytes": 0}
    raw[block["offset_bytes"] + 40] ^= 0x10
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("entry", [e for e in LOADERS if e != "FlashPackMixin.from_flashpack"])
def test_verify_through_from_pretrained_flashpack_catches_a_flipped_byte(
    entry: str, folders: dict[str, Path], tmp_path: Path
) -> None:
    patch_integrations()
    corrupt = {k: tmp_path / v.name for k, v in folders.items()}
    for kind, folder in folders.items():
        if folder.is_dir():
            import shutil

            shutil.copytree(folder, corrupt[kind])
    for weights in [*corrupt["diffusers"].rglob("model.flashpack"), *corrupt["transformers"].rglob("model.flashpack"),
                    corrupt["pipeline"] / "unet" / "model.flashpack"]:  # fmt: skip
        flip_a_byte(weights)
    LOADERS[entry](corrupt, {})  # a default load does not read the checksums
    with pytest.raises(ValueError, match="checksum mismatch"):
        LOADERS[entry](corrupt, {"verify": True})


# ---------------------------------------------------------------------------------------------
# The dtype rule for buffers.


def test_batchnorm_saved_in_bfloat16_comes_back_as_module_to_bfloat16(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Net().train()
    model(torch.randn(16, 4))
    model.eval()
    model.save_flashpack(tmp_path / "bn.flashpack", target_dtype=torch.bfloat16, silent=True)
    loaded = Net.from_flashpack(tmp_path / "bn.flashpack", silent=True)
    reference = Net()
    reference.load_state_dict(model.state_dict())
    reference = reference.to(torch.bfloat16).eval()  # what module.to(target_dtype) gives
    expected, got = reference.state_dict(), loaded.state_dict()
    assert list(got) == list(expected)
    for name, tensor in expected.items():
        assert same_bits(got[name], tensor), name
    assert got["bn.num_batches_tracked"].dtype == torch.int64 and got["bn.running_var"].dtype == torch.bfloat16
    x = torch.randn(3, 4).to(torch.bfloat16)
    with torch.no_grad():
        assert torch.allclose(loaded(x), reference(x))

    # coerce_dtype=True keeps its meaning: buffers in the model's dtype (parameters follow the file)
    coerced = Net.from_flashpack(tmp_path / "bn.flashpack", silent=True, coerce_dtype=True)
    assert coerced.bn.running_mean.dtype == torch.float32 and coerced.a.weight.dtype == torch.bfloat16
    assert torch.equal(coerced.bn.running_mean, expected["bn.running_mean"].float())


def test_integer_and_zero_dim_buffers(tmp_path: Path) -> None:
    class Counter(torch.nn.Module, FlashPackMixin):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("scale", torch.tensor(0.5))  # 0-dim float
            self.register_buffer("steps", torch.tensor(7))  # int64

    pack_to_file({"scale": torch.tensor(0.25, dtype=torch.float16), "steps": torch.tensor(3)}, tmp_path / "ok.flashpack")
    loaded = Counter.from_flashpack(tmp_path / "ok.flashpack", silent=True)
    assert loaded.scale.dtype == torch.float16 and loaded.scale.shape == () and loaded.scale.item() == 0.25
    assert loaded.steps.dtype == torch.int64 and loaded.steps.item() == 3

    pack_to_file({"scale": torch.tensor(0.25), "steps": torch.tensor(3, dtype=torch.int32)}, tmp_path / "int32.flashpack")
    with pytest.raises(ValueError, match=r"dtype mismatch for buffer 'steps': model torch.int64 vs file torch.int32"):
        Counter.from_flashpack(tmp_path / "int32.flashpack", silent=True)
    coerced = Counter.from_flashpack(tmp_path / "int32.flashpack", silent=True, coerce_dtype=True)
    assert coerced.steps.dtype == torch.int64 and coerced.steps.item() == 3
    pack_to_file({"scale": torch.tensor(1), "steps": torch.tensor(3)}, tmp_path / "intscale.flashpack")
    with pytest.raises(ValueError, match="dtype mismatch for buffer 'scale'"):  # a float buffer does not take ints
        Counter.from_flashpack(tmp_path / "intscale.flashpack", silent=True)


def test_buffers_follow_the_file_through_the_integrations(tmp_path: Path) -> None:
    model = trained_bn().to(torch.bfloat16)
    model.bn.float()  # BatchNorm kept in float32 (as mixed-precision recipes do): the file holds both dtypes
    model.save_pretrained_flashpack(tmp_path / "bn")
    footer = get_flashpack_file_metadata(tmp_path / "bn" / "model.flashpack")
    assert {b["dtype"] for b in footer["macroblocks"]} == {"bfloat16", "float32", "int64"}
    for loaded in (
        FlashPackTinyBN.from_pretrained_flashpack(tmp_path / "bn"),
        FlashPackTinyBN.from_flashpack(tmp_path / "bn" / "model.flashpack", json.loads((tmp_path / "bn" / "config.json").read_text())),
    ):
        for name, tensor in model.state_dict().items():
            assert same_bits(loaded.state_dict()[name], tensor), name
    bf16 = FlashPackTinyBN.from_pretrained_flashpack(tmp_path / "bn", torch_dtype=torch.bfloat16)
    assert bf16.bn.running_mean.dtype == torch.bfloat16 and bf16.bn.num_batches_tracked.dtype == torch.int64


@pytest.mark.parametrize("module", ["flashpack.options", "flashpack.integrations._patches", "flashpack.commands", "flashpack.settings"])
def test_module_examples_run(module: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import doctest
    import importlib

    monkeypatch.chdir(tmp_path)
    result = doctest.testmod(importlib.import_module(module), raise_on_error=False, verbose=False)
    assert result.attempted > 0 and result.failed == 0, result
