"""``patch_transformers_auto_model()``: after it, transformers' AutoModel classes hand out
FlashPack models.

Every public ``AutoModel*`` class's ``from_pretrained`` and ``from_config`` return the model
with ``FlashPackTransformersModelMixin`` added (so ``save_pretrained_flashpack`` works), and
each class gains ``from_pretrained_flashpack`` for folders written by it
(``from_pretrained(..., use_flashpack=True)`` does the same, as in the original).

transformers defines these classmethods on most auto classes separately (the others inherit
them), so each class that defines one is wrapped, all through :mod:`flashpack.integrations._patches` (idempotent, undone by
``flashpack.integrations.unpatch_integrations()``). A model keeps its class's name, so
``save_pretrained`` still writes ``architectures`` that plain transformers reads.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
import transformers
from transformers import AutoConfig, PreTrainedConfig, PreTrainedModel

from ...options import LOAD_OPTIONS, with_options
from .._common import HUB_OPTIONS, add_mixin, pop_cast_dtype
from .._patches import PatchError, add_classmethod, wrap_classmethod
from .model import FlashPackTransformersModelMixin, find_flashpack_file, load_transformers_model


@with_options(HUB_OPTIONS, LOAD_OPTIONS)
def _auto_from_pretrained_flashpack(
    auto_cls: type,
    pretrained_model_name_or_path: str | os.PathLike[str],
    device: str | torch.device | None = None,
    *,
    config: PreTrainedConfig | None = None,
    trust_remote_code: bool = False,
    flashpack_options: dict[str, Any],
    **kwargs: Any,
) -> PreTrainedModel:
    """Like ``AutoModel*.from_pretrained`` for a folder saved with ``save_pretrained_flashpack``:
    the class comes from the config (via the auto class's ``from_config``), and the returned model
    is that class with ``FlashPackTransformersModelMixin`` added. ``dtype`` / ``torch_dtype`` /
    ``target_dtype`` cast floating-point tensors after loading."""
    dtype = pop_cast_dtype(kwargs)
    path = find_flashpack_file(pretrained_model_name_or_path, flashpack_options)
    if config is None:
        config, kwargs = AutoConfig.from_pretrained(
            path.parent, return_unused_kwargs=True, trust_remote_code=trust_remote_code, **kwargs
        )

    def build() -> PreTrainedModel:
        model = auto_cls.from_config(config, trust_remote_code=trust_remote_code, dtype=config.dtype, **kwargs)
        return add_mixin(model, FlashPackTransformersModelMixin)

    return load_transformers_model(
        build, config, path, device=device, dtype=dtype, assign_kwargs=LOAD_OPTIONS.pick(flashpack_options)
    )


def _with_mixin(result: Any) -> Any:
    """A model (or the ``(model, loading_info)`` tuple) with the FlashPack mixin added."""
    if isinstance(result, tuple) and result and isinstance(result[0], PreTrainedModel):
        return (add_mixin(result[0], FlashPackTransformersModelMixin), *result[1:])
    if isinstance(result, PreTrainedModel):
        return add_mixin(result, FlashPackTransformersModelMixin)
    return result


def _from_config(original: Callable[..., Any]) -> Callable[..., Any]:
    def patched(cls: type, *args: Any, **kwargs: Any) -> Any:
        return _with_mixin(original(cls, *args, **kwargs))

    return patched


def _from_pretrained(original: Callable[..., Any]) -> Callable[..., Any]:
    def patched(cls: type, *args: Any, use_flashpack: bool = False, **kwargs: Any) -> Any:
        if use_flashpack:
            return cls.from_pretrained_flashpack(*args, **kwargs)
        return _with_mixin(original(cls, *args, **kwargs))

    return patched


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
    if transformers.AutoModel not in classes:
        raise PatchError(f"flashpack cannot patch transformers {transformers.__version__}: it has no AutoModel class")
    return classes


def defining_class(cls: type, name: str) -> type:
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
