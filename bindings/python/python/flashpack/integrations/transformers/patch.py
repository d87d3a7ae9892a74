"""``from_pretrained_flashpack`` on transformers' AutoModel classes."""

from __future__ import annotations

import os
from typing import Any

import torch
import transformers
from transformers import AutoConfig, PreTrainedConfig, PreTrainedModel

from .._common import flashpack_path, flashpack_subclass, resolve_model_dir
from .model import FlashPackTransformersModelMixin, load_transformers_model, pop_loading_kwargs


def _auto_from_pretrained_flashpack(
    auto_cls: type,
    pretrained_model_name_or_path: str | os.PathLike[str],
    device: str | torch.device | None = None,
    *,
    config: PreTrainedConfig | None = None,
    subfolder: str | None = None,
    trust_remote_code: bool = False,
    **kwargs: Any,
) -> PreTrainedModel:
    """Like ``AutoModel*.from_pretrained`` for a folder saved with ``save_pretrained_flashpack``:
    the class comes from the config (via the auto class's ``from_config``), and the returned model
    is that class with ``FlashPackTransformersModelMixin`` added."""
    hub, assign, dtype = pop_loading_kwargs(kwargs)
    folder = resolve_model_dir(pretrained_model_name_or_path, subfolder=subfolder, **hub)
    path = flashpack_path(folder, subfolder)
    if config is None:
        config, kwargs = AutoConfig.from_pretrained(
            path.parent, return_unused_kwargs=True, trust_remote_code=trust_remote_code, **kwargs
        )

    def build() -> PreTrainedModel:
        model = auto_cls.from_config(config, trust_remote_code=trust_remote_code, dtype=config.dtype, **kwargs)
        model.__class__ = flashpack_subclass(type(model), FlashPackTransformersModelMixin)
        return model

    return load_transformers_model(build, config, path, device=device, dtype=dtype, assign_kwargs=assign)


def auto_model_classes() -> list[type]:
    """transformers' public ``AutoModel*`` classes."""
    classes = []
    for name in dir(transformers):
        if not name.startswith("AutoModel"):
            continue
        try:
            cls = getattr(transformers, name)
        except (ImportError, AttributeError):  # a class whose backend is missing
            continue
        if isinstance(cls, type) and hasattr(cls, "from_config") and hasattr(cls, "from_pretrained"):
            classes.append(cls)
    return classes


def patch_transformers_auto_model() -> None:
    """Add ``from_pretrained_flashpack`` to every transformers ``AutoModel*`` class."""
    method = classmethod(_auto_from_pretrained_flashpack)
    for cls in auto_model_classes():
        cls.from_pretrained_flashpack = method
