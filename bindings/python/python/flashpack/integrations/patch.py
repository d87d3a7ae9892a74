"""``patch_integrations()``: make the libraries' AutoModel classes and pipelines FlashPack-aware."""

from __future__ import annotations

from ..utils import diffusers_is_available, transformers_is_available
from ._patches import undo_patches


def patch_integrations() -> None:
    """Patch whichever of diffusers and transformers is installed so that their AutoModel classes
    (and diffusers' pipelines) hand out FlashPack models and load FlashPack folders:
    ``patch_diffusers_auto_model()`` and ``patch_transformers_auto_model()``.

    Idempotent; :func:`unpatch_integrations` undoes it.
    """
    if diffusers_is_available():
        from .diffusers.patch import patch_diffusers_auto_model

        patch_diffusers_auto_model()
    if transformers_is_available():
        from .transformers.patch import patch_transformers_auto_model

        patch_transformers_auto_model()


def unpatch_integrations() -> None:
    """Restore every library attribute the patches changed (models already loaded keep their
    FlashPack mixin)."""
    undo_patches()
