"""``patch_transformers_auto_model()``: after it, transformers' AutoModel classes hand out
FlashPack models.

Every public ``AutoModel*`` class's ``from_pretrained`` and ``from_config`` return the model
with ``FlashPackTransformersModelMixin`` added (so ``save_pretrained_flashpack`` works), and
each class gains ``from_pretrained_flashpack`` for folders written by it
(``from_pretrained(..., use_flashpack=True)`` does the same, as in the original).

transformers defines these classmethods on most auto classes separately (the others inherit
them), so each class that defines one is wrapped, all through
:mod:`flashpack.integrations._patches` (idempotent, undone by
``flashpack.integrations.unpatch_integrations()``). A model keeps its class's name, so
``save_pretrained`` still writes ``architectures`` that plain transformers reads.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoConfig, PreTrainedConfig, PreTrainedModel

from ...options import LOAD_OPTIONS, with_options
from .._checkpoint import is_flashpack
from .._common import HUB_OPTIONS, add_mixin, pop_cast_dtype
from .._patches import PatchError, add_classmethod, wrap_classmethod
from .model import (
    FlashPackTransformersModelMixin,
    load_transformers_checkpoint,
    load_transformers_model,
    model_weights,
)


@with_options(HUB_OPTIONS, LOAD_OPTIONS)
def _auto_from_pretrained_flashpack(
    auto_cls: type[Any],
    pretrained_model_name_or_path: str | os.PathLike[str],
    device: str | torch.device | None = None,
    *,
    config: PreTrainedConfig | None = None,
    trust_remote_code: bool = False,
    flashpack_options: dict[str, Any],
    **kwargs: Any,
) -> Any:
    """Like ``AutoModel*.from_pretrained``, the class coming from the config, and the returned
    model (or ``(model, loading_info)``, with ``output_loading_info=True``) that class with
    ``FlashPackTransformersModelMixin`` added. For a folder saved with ``save_pretrained_flashpack``
    (``model.flashpack`` wins when there is one) the model is built with the auto class's
    ``from_config`` and filled from the file (``dtype`` / ``torch_dtype`` / ``target_dtype`` cast
    floating-point tensors after loading); an ordinary safetensors folder (sharded, ``variant``)
    is read through the engine and loaded by the auto class's own ``from_pretrained`` (see
    ``load_transformers_checkpoint``)."""
    dtype = pop_cast_dtype(kwargs)
    variant = kwargs.pop("variant", None)
    with model_weights(pretrained_model_name_or_path, flashpack_options, variant) as (folder, path, where):
        if not is_flashpack(path):
            if config is None:
                config, kwargs = AutoConfig.from_pretrained(
                    folder, return_unused_kwargs=True, trust_remote_code=trust_remote_code, **kwargs
                )
            model_class, config = auto_model_class(auto_cls, config, folder)
            loaded = load_transformers_checkpoint(
                model_class.from_pretrained, AutoConfig.from_pretrained, folder, path, device=device, dtype=dtype,
                config=config, options=flashpack_options, where=where, **kwargs,
            )  # fmt: skip
            return _with_mixin(loaded)
        if config is None:
            config, kwargs = AutoConfig.from_pretrained(
                folder, return_unused_kwargs=True, trust_remote_code=trust_remote_code, **kwargs
            )

        def build() -> PreTrainedModel:
            model: PreTrainedModel = auto_cls.from_config(
                config, trust_remote_code=trust_remote_code, dtype=config.dtype, **kwargs
            )
            return add_mixin(model, FlashPackTransformersModelMixin)

        return load_transformers_model(
            build, config, path, device=device, dtype=dtype, assign_kwargs=LOAD_OPTIONS.pick(flashpack_options),
            folder=folder, where=where,
        )  # fmt: skip


def auto_model_class(auto_cls: type[Any], config: PreTrainedConfig, folder: Path) -> tuple[type[Any], PreTrainedConfig]:
    """The model class ``auto_cls`` picks for ``config`` and the config it builds it with, as its
    ``from_config`` / ``from_pretrained`` do (a composite config gives its text config to a
    text-only class). Models with remote code are refused: only ``from_pretrained`` runs them."""
    from transformers.models.auto.auto_factory import _get_model_class

    if auto_cls.__name__ in (getattr(config, "auto_map", None) or {}):
        raise ValueError(
            f"{folder}: the model's code comes from its repository (auto_map); from_pretrained_flashpack loads "
            f"only transformers' own classes: use {auto_cls.__name__}.from_pretrained(..., trust_remote_code=True)"
        )
    if type(config) not in auto_cls._model_mapping:
        raise ValueError(f"{folder}: {auto_cls.__name__} has no model class for {type(config).__name__}")
    model_class = _get_model_class(config, auto_cls._model_mapping)
    text_config_class = config.sub_configs.get("text_config", None)
    if text_config_class is not None and getattr(model_class, "config_class", None) == text_config_class:
        config = config.get_text_config()
    return model_class, config


def _with_mixin(result: Any) -> Any:
    """A model (or the ``(model, loading_info)`` tuple) with the FlashPack mixin added."""
    if isinstance(result, tuple) and result and isinstance(result[0], PreTrainedModel):
        return (add_mixin(result[0], FlashPackTransformersModelMixin), *result[1:])
    if isinstance(result, PreTrainedModel):
        return add_mixin(result, FlashPackTransformersModelMixin)
    return result


def _from_config(original: Callable[..., Any]) -> Callable[..., Any]:
    def patched(cls: type[Any], *args: Any, **kwargs: Any) -> Any:
        return _with_mixin(original(cls, *args, **kwargs))

    return patched


def _from_pretrained(original: Callable[..., Any]) -> Callable[..., Any]:
    def patched(cls: type[Any], *args: Any, use_flashpack: bool = False, **kwargs: Any) -> Any:
        if use_flashpack:
            return cls.from_pretrained_flashpack(*args, **kwargs)
        return _with_mixin(original(cls, *args, **kwargs))

    return patched


def auto_model_classes() -> list[type[Any]]:
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
    if transformers.AutoModel not in classes:
        raise PatchError(f"flashpack cannot patch transformers {transformers.__version__}: it has no AutoModel class")
    return classes


def defining_class(cls: type[Any], name: str) -> type[Any]:
    """The class in ``cls``'s MRO whose own namespace defines ``name`` (``cls`` when none does,
    so that wrapping it reports what is missing)."""
    return next((klass for klass in cls.__mro__ if name in klass.__dict__), cls)


def patch_auto_factory() -> None:
    """Wrap ``from_pretrained`` / ``from_config`` and add ``from_pretrained_flashpack`` on every
    public ``AutoModel*`` class (the original's name for this step). Idempotent."""
    for cls in auto_model_classes():
        wrap_classmethod(defining_class(cls, "from_pretrained"), "from_pretrained", _from_pretrained)
        wrap_classmethod(defining_class(cls, "from_config"), "from_config", _from_config)
        add_classmethod(cls, "from_pretrained_flashpack", _auto_from_pretrained_flashpack)


def patch_transformers_auto_model() -> None:
    """Patch transformers' AutoModel classes (see the module docstring). Idempotent."""
    patch_auto_factory()
