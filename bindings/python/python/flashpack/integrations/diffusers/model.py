"""``FlashPackDiffusersModelMixin``: ``save_pretrained_flashpack`` / ``from_pretrained_flashpack``
for diffusers models, behaving like the library's ``save_pretrained`` / ``from_pretrained``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import ModelMixin

from ...mixin import FlashPackMixin
from ...options import LOAD_OPTIONS, with_options
from .._common import (
    HUB_OPTIONS,
    SavePretrainedFlashPack,
    build_dtype,
    build_on_meta,
    flashpack_path,
    library_class,
    load_into_model,
    pop_cast_dtype,
    requested_dtype,
    resolve_model_dir,
    rewrite_json,
    save_model_folder,
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
    ``model.flashpack``. ``options`` holds the hub and load options; of ``kwargs`` the dtype
    keywords cast after loading, the rest override config values."""
    dtype = pop_cast_dtype(kwargs)
    folder = resolve_model_dir(pretrained_model_name_or_path, **HUB_OPTIONS.pick(options))
    path = flashpack_path(folder, options.get("subfolder"))
    config = cls.load_config(path.parent)
    model = build_on_meta(lambda: cls.from_config(config, **kwargs), build_dtype(path))
    return load_into_model(model, path, device=device, dtype=requested_dtype(dtype), **LOAD_OPTIONS.pick(options))


class FlashPackDiffusersModelMixin(ModelMixin, SavePretrainedFlashPack, FlashPackMixin):
    """Mix into a diffusers model class: ``class FlashPackUNet2DModel(UNet2DModel,
    FlashPackDiffusersModelMixin)``."""

    flashpack_init_method: str | None = "from_config"

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
        """Load a model saved with ``save_pretrained_flashpack`` from a directory or a Hub id.

        Builds the model from its config with parameters on the meta device and assigns the
        file's tensors (on ``device``: CPU by default, CUDA when asked); returns it in eval mode.
        ``dtype`` / ``torch_dtype`` / ``target_dtype`` cast floating-point tensors after loading;
        hub arguments (``subfolder``, ``revision``, ``cache_dir``, ``token``, ...) and those of
        ``assign_from_file`` (``strict``, ``ignore_*``, ``eager``, ``verify``, ...) are accepted;
        the rest override config values.
        """
        return load_diffusers_model(cls, pretrained_model_name_or_path, device, flashpack_options, kwargs)
