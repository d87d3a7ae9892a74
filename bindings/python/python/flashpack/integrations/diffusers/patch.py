"""``patch_diffusers_auto_model()``: after it, diffusers hands out FlashPack models.

* ``diffusers.AutoModel.from_pretrained`` / ``from_config`` return the model with the FlashPack
  mixin added (``isinstance(model, FlashPackDiffusersModelMixin)``, ``save_pretrained_flashpack``);
  ``from_pretrained(..., use_flashpack=True)`` and the new ``AutoModel.from_pretrained_flashpack``
  load a folder written by ``save_pretrained_flashpack``.
* ``DiffusionPipeline.from_pretrained`` (and so every pipeline class and AutoPipeline) returns a
  pipeline whose model components have the mixin (diffusers models the diffusers one,
  transformers models the transformers one) and which itself has ``FlashPackDiffusionPipeline``'s
  ``save_pretrained_flashpack``; ``DiffusionPipeline.from_pretrained_flashpack`` loads it back.

Only public classes are changed, through :mod:`flashpack.integrations._patches` (idempotent,
undone by ``flashpack.integrations.unpatch_integrations()``). A model keeps its class's name,
so ``save_pretrained`` still writes a config that plain diffusers reads.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import diffusers
import torch
from diffusers import DiffusionPipeline

from ...options import LOAD_OPTIONS, with_options
from .._common import HUB_OPTIONS
from .._patches import add_classmethod, wrap_classmethod
from .auto_model import AutoFlashPackModel
from .pipeline import FlashPackDiffusionPipeline, with_flashpack_mixin


@with_options(HUB_OPTIONS, LOAD_OPTIONS)
def _auto_from_pretrained_flashpack(
    cls: type[Any],
    pretrained_model_or_path: str | os.PathLike[str],
    device: str | torch.device | None = None,
    *,
    flashpack_options: dict[str, Any],
    **kwargs: Any,
) -> Any:
    """Load a folder written by ``save_pretrained_flashpack`` (or a Hub id), the class coming
    from its config, as ``AutoFlashPackModel.from_pretrained_flashpack`` does."""
    return AutoFlashPackModel.from_pretrained_flashpack(
        pretrained_model_or_path, device=device, **flashpack_options, **kwargs
    )


def _returns_flashpack_models(original: Callable[..., Any]) -> Callable[..., Any]:
    def patched(cls: type[Any], *args: Any, **kwargs: Any) -> Any:
        return with_flashpack_mixin(original(cls, *args, **kwargs))

    return patched


def _from_pretrained(original: Callable[..., Any]) -> Callable[..., Any]:
    def patched(cls: type[Any], *args: Any, use_flashpack: bool = False, **kwargs: Any) -> Any:
        if use_flashpack:
            return cls.from_pretrained_flashpack(*args, **kwargs)
        return with_flashpack_mixin(original(cls, *args, **kwargs))

    return patched


def _pipeline_from_pretrained(original: Callable[..., Any]) -> Callable[..., Any]:
    def patched(cls: type[Any], *args: Any, **kwargs: Any) -> Any:
        pipeline = original(cls, *args, **kwargs)
        for component in pipeline.components.values():
            with_flashpack_mixin(component)
        return with_flashpack_mixin(pipeline)

    return patched


def patch_diffusers_pipeline_loading_utils() -> None:
    """Make ``DiffusionPipeline.from_pretrained`` return FlashPack pipelines and components
    (the original's name for this step; see the module docstring)."""
    wrap_classmethod(DiffusionPipeline, "from_pretrained", _pipeline_from_pretrained)
    load = FlashPackDiffusionPipeline.__dict__["from_pretrained_flashpack"].__func__
    add_classmethod(DiffusionPipeline, "from_pretrained_flashpack", load)


def patch_diffusers_auto_model() -> None:
    """Patch ``diffusers.AutoModel`` and pipeline loading (see the module docstring). Idempotent."""
    wrap_classmethod(diffusers.AutoModel, "from_pretrained", _from_pretrained)
    wrap_classmethod(diffusers.AutoModel, "from_config", _returns_flashpack_models)
    add_classmethod(diffusers.AutoModel, "from_pretrained_flashpack", _auto_from_pretrained_flashpack)
    patch_diffusers_pipeline_loading_utils()
