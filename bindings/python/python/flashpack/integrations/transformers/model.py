"""``FlashPackTransformersModelMixin``: ``save_pretrained_flashpack`` / ``from_pretrained_flashpack``
for transformers models, behaving like the library's ``save_pretrained`` / ``from_pretrained``."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
import transformers
from transformers import AutoConfig, GenerationConfig, PreTrainedConfig, PreTrainedModel

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
    save_model_folder,
)

ModelT = TypeVar("ModelT", bound=PreTrainedModel)


def save_transformers_model(
    model: PreTrainedModel, save_directory: str | os.PathLike[str], **options: Any
) -> None:
    """Write ``config.json`` (and ``generation_config.json`` for generative models) plus
    ``model.flashpack`` into ``save_directory``, for any transformers model (options: those of
    :func:`save_model_folder`)."""
    target_dtype = (options.get("pack_options") or {}).get("target_dtype")

    def write_config(folder: Path) -> None:
        config = copy.deepcopy(model.config)
        base = library_class(type(model), transformers, PreTrainedModel) or type(model)
        config.architectures = [base.__name__]
        config.dtype = target_dtype if target_dtype is not None else model.dtype
        config.save_pretrained(folder)
        generation_config = getattr(model, "generation_config", None)
        if model.can_generate() and generation_config is not None:
            generation_config.save_pretrained(folder)

    save_model_folder(model, save_directory, write_config, "transformers", **options)


def load_transformers_model(
    build: Callable[[], ModelT],
    config: PreTrainedConfig,
    path: Path,
    *,
    device: str | torch.device | None,
    dtype: torch.dtype | str | None,
    assign_kwargs: dict[str, Any],
) -> ModelT:
    """Construct with ``build`` (parameters on meta, floats in the file's dtype), fill from
    ``path``, load the generation config beside it, cast to ``dtype`` if one was asked for."""
    cast_to = requested_dtype(dtype)
    config.dtype = build_dtype(path)
    model = build_on_meta(build, config.dtype)
    load_into_model(model, path, device=device, dtype=cast_to, **assign_kwargs)
    if cast_to is not None:
        model.config.dtype = cast_to
    if model.can_generate() and (path.parent / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(path.parent)
    return model


def find_flashpack_file(
    pretrained_model_name_or_path: str | os.PathLike[str], options: dict[str, Any]
) -> Path:
    """``model.flashpack`` of a folder or Hub repository (``options``: the hub options)."""
    folder = resolve_model_dir(pretrained_model_name_or_path, **HUB_OPTIONS.pick(options))
    return flashpack_path(folder, options.get("subfolder"))


class FlashPackTransformersModelMixin(PreTrainedModel, SavePretrainedFlashPack, FlashPackMixin):
    """Mix into a transformers model class: ``class FlashPackBertModel(BertModel,
    FlashPackTransformersModelMixin)``."""

    flashpack_init_method: str | None = "from_config"

    _flashpack_save = staticmethod(save_transformers_model)

    @classmethod
    @with_options(HUB_OPTIONS, LOAD_OPTIONS)
    def from_pretrained_flashpack(
        cls,
        pretrained_model_name_or_path: str | os.PathLike[str],
        device: str | torch.device | None = None,
        *model_args: Any,
        config: PreTrainedConfig | None = None,
        flashpack_options: dict[str, Any],
        **kwargs: Any,
    ) -> Any:
        """Load a model saved with ``save_pretrained_flashpack`` from a directory or a Hub id.

        Builds the model from its config with parameters on the meta device, assigns the file's
        tensors (on ``device``: CPU by default, CUDA when asked), keeps tied weights tied,
        initialises non-persistent buffers as the model's ``__init__`` does, returns it in eval mode.
        ``dtype`` / ``torch_dtype`` / ``target_dtype`` cast floating-point tensors after loading;
        hub arguments (``subfolder``, ``revision``, ...) and those of ``assign_from_file``
        (``strict``, ``ignore_*``, ``eager``, ``verify``, ...) are accepted, the rest go to the
        config (as with ``from_pretrained``).
        """
        dtype = pop_cast_dtype(kwargs)
        path = find_flashpack_file(pretrained_model_name_or_path, flashpack_options)
        if config is None:
            config_class = cls.config_class if cls.config_class is not PreTrainedConfig else None
            loader = config_class or AutoConfig
            config, kwargs = loader.from_pretrained(path.parent, return_unused_kwargs=True, **kwargs)
        return load_transformers_model(
            lambda: cls(config, *model_args, **kwargs),
            config,
            path,
            device=device,
            dtype=dtype,
            assign_kwargs=LOAD_OPTIONS.pick(flashpack_options),
        )
