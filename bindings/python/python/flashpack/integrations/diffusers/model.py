"""``FlashPackDiffusersModelMixin``: ``save_pretrained_flashpack`` / ``from_pretrained_flashpack``
for diffusers models, behaving like the library's ``save_pretrained`` / ``from_pretrained``."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any, ClassVar

import diffusers
import torch
from diffusers import ModelMixin

from ...mixin import FlashPackMixin
from ...options import LOAD_OPTIONS, with_options
from .._checkpoint import DIFFUSERS_NAMES, Location, find_weights, is_flashpack, load_weights
from .._common import (
    HUB_OPTIONS,
    SavePretrainedFlashPack,
    build_dtype,
    build_on_meta,
    library_class,
    load_into_model,
    model_folder,
    pop_cast_dtype,
    read_footer,
    requested_dtype,
    rewrite_json,
    save_model_folder,
    to_dtype,
)


def save_diffusers_model(model: ModelMixin, save_directory: str | os.PathLike[str], **options: Any) -> None:
    """Write ``config.json`` plus ``model.flashpack`` into ``save_directory``, for any diffusers
    model (options: those of :func:`save_model_folder`). The config names the diffusers class
    (``UNet2DModel``, not a ``FlashPack`` subclass), so diffusers itself can read the folder
    (``from_pretrained(..., use_flashpack=True)``)."""

    def write_config(folder: Path) -> None:
        model.save_config(folder)
        base = library_class(type(model), diffusers, ModelMixin)
        if base is not None and base is not type(model):
            rewrite_json(folder / model.config_name, lambda cfg: cfg.update(_class_name=base.__name__))

    save_model_folder(model, save_directory, write_config, "diffusers", **options)


def load_diffusers_model(
    cls: type[ModelMixin],
    pretrained_model_name_or_path: str | os.PathLike[str],
    device: str | torch.device | None,
    options: dict[str, Any],
    kwargs: dict[str, Any],
) -> Any:
    """Build ``cls`` from the folder's config (parameters on meta) and fill it from
    ``model.flashpack`` when the folder has one, else from its diffusers safetensors weights
    (``variant`` picks ``diffusion_pytorch_model.<variant>.safetensors`` and its index).
    ``options`` holds the hub and load options; of ``kwargs`` the dtype keywords cast, the rest
    override config values."""
    dtype = pop_cast_dtype(kwargs)
    variant = kwargs.pop("variant", None)
    hub = HUB_OPTIONS.pick(options)
    with model_folder(pretrained_model_name_or_path, ("config.json",), variant=variant, **hub) as (folder, where):
        path = find_weights(where, DIFFUSERS_NAMES, variant)
        if not is_flashpack(path):
            dtype = to_dtype(dtype)
            return load_diffusers_checkpoint(
                cls, path, device=device, dtype=dtype, options=options, kwargs=kwargs, folder=folder, where=where
            )
        config = cls.load_config(folder)
        footer = read_footer(path)
        model = build_on_meta(lambda: cls.from_config(config, **kwargs), build_dtype(footer))
        cast = requested_dtype(dtype)
        model = load_into_model(model, path, footer, device=device, dtype=cast, **LOAD_OPTIONS.pick(options))
        if isinstance(where, str):
            model.register_to_config(_name_or_path=where)
        return model


def legacy_renames(model: ModelMixin, names: list[str]) -> dict[str, str]:
    """The checkpoint names diffusers renames while loading into ``model`` (old -> new): those of
    attention blocks saved before diffusers renamed ``query``/``key``/``value``/``proj_attn``,
    found by running the library's own ``_fix_state_dict_keys_on_load`` on the names."""
    fix = getattr(model, "_fix_state_dict_keys_on_load", None)
    if fix is None:
        return {}
    probe: dict[str, str] = {name: name for name in names}
    fix(probe)
    return {old: new for new, old in probe.items() if new != old}


def load_diffusers_checkpoint(
    cls: type[ModelMixin],
    path: Location,
    *,
    device: str | torch.device | None,
    dtype: torch.dtype | None,
    options: dict[str, Any],
    kwargs: dict[str, Any],
    folder: Path | None = None,
    where: Location | None = None,
) -> Any:
    """Load an ordinary diffusers folder's safetensors weights (``path``: one file or an index)
    into ``cls`` built from the folder's config, with diffusers' rules: built in ``dtype`` (or
    torch's default), floating-point tensors cast to ``dtype`` except in the class's
    ``_keep_in_fp32_modules`` (float32), every other tensor (all of them without ``dtype``, integer
    ones included) to the built tensor's dtype; legacy
    attention-block names renamed by the library's own conversion; unexpected tensors warned
    about (an error with ``strict=True``); a parameter missing from the checkpoint is an error, and
    so is a quantized checkpoint (diffusers' quantizers are not applied here). ``folder`` holds
    the config (default: the folder of ``path``), ``where`` is the model's ``_name_or_path``
    (default ``folder``; the URL of a folder at a URL)."""
    folder = Path(path).parent if folder is None else folder
    config = cls.load_config(folder)
    if config.get("quantization_config"):
        raise ValueError(
            f"{path}: a quantized checkpoint (quantization_config in its config) needs diffusers' quantizers: "
            f"load it with {cls.__name__}.from_pretrained"
        )
    model = build_on_meta(lambda: cls.from_config(config, **kwargs), dtype or torch.get_default_dtype())
    state_dict = load_weights(path, device, options)
    renames = legacy_renames(model, list(state_dict))
    state_dict = {renames.get(name, name): t for name, t in state_dict.items()}
    expected = model.state_dict()
    unexpected = [n for n in state_dict if n not in expected]
    for pattern in cls._keys_to_ignore_on_load_unexpected or []:
        unexpected = [n for n in unexpected if re.search(pattern, n) is None]
    if unexpected:
        message = f"{path}: tensors that {cls.__name__} has no place for: {sorted(unexpected)}"
        if options.get("strict"):
            raise ValueError(message)
        warnings.warn(f"flashpack: {message} (not used, as diffusers does)", stacklevel=3)
    missing = [n for n, t in expected.items() if t.is_meta and n not in state_dict]
    if missing:
        raise ValueError(f"{path}: {cls.__name__}'s parameters {sorted(missing)} are not in the checkpoint")
    keep_fp32 = cls._keep_in_fp32_modules or []
    keep_fp32 = [keep_fp32] if isinstance(keep_fp32, str) else keep_fp32
    cast = {}
    for name, tensor in state_dict.items():
        if name not in expected:
            continue
        if dtype is None or not tensor.is_floating_point():  # as diffusers' load_model_dict_into_meta (and
            cast[name] = tensor.to(expected[name].dtype)  # accelerate's set_module_tensor_to_device) cast
        elif any(module in name.split(".") for module in keep_fp32):
            cast[name] = tensor.to(torch.float32)
        else:
            cast[name] = tensor.to(dtype)
    state_dict.update(cast)
    try:
        model.load_state_dict({n: t for n, t in state_dict.items() if n in expected}, strict=False, assign=True)
    except RuntimeError as e:  # torch's message names each tensor whose shape differs
        raise ValueError(f"{path}: cannot load into {cls.__name__}: {e}") from e
    if device is not None and torch.device(device).type != "cpu":
        model.to(device)  # buffers computed in __init__ live on the CPU until now
    model.register_to_config(_name_or_path=os.fspath(folder if where is None else where))
    return model.eval()


class FlashPackDiffusersModelMixin(ModelMixin, SavePretrainedFlashPack, FlashPackMixin):
    """Mix into a diffusers model class: ``class FlashPackUNet2DModel(UNet2DModel,
    FlashPackDiffusersModelMixin)``."""

    flashpack_init_method: ClassVar[str | None] = "from_config"

    _flashpack_save = staticmethod(save_diffusers_model)

    @classmethod
    @with_options(HUB_OPTIONS, LOAD_OPTIONS)
    def from_pretrained_flashpack(
        cls,
        pretrained_model_name_or_path: str | os.PathLike[str],
        device: str | torch.device | None = None,
        *,
        flashpack_options: dict[str, Any],
        **kwargs: Any,
    ) -> Any:
        """Load a model from a directory, a Hub id or the URL of a folder (``https://``,
        ``s3://``: its config fetched by name, its weights read from the URL by the engine):
        one saved with ``save_pretrained_flashpack``
        (``model.flashpack``, which wins when the folder has one), or an ordinary diffusers folder
        (``diffusion_pytorch_model.safetensors``, sharded, or those of ``variant``) read through
        the engine with diffusers' loading rules (see :func:`load_diffusers_checkpoint`).

        Builds the model from its config with parameters on the meta device and assigns the
        file's tensors (on ``device``: CPU by default, CUDA when asked); returns it in eval mode.
        ``dtype`` / ``torch_dtype`` / ``target_dtype`` cast floating-point tensors after loading;
        hub arguments (``subfolder``, ``revision``, ``cache_dir``, ``token``, ...) and those of
        ``assign_from_file`` (``strict``, ``ignore_*``, ``eager``, ``verify``, ...) are accepted;
        the rest override config values.
        """
        return load_diffusers_model(cls, pretrained_model_name_or_path, device, flashpack_options, kwargs)
