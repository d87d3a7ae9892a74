"""FlashPack for transformers models (needs the ``transformers`` extra)."""

from .model import FlashPackTransformersModelMixin, save_transformers_model
from .patch import patch_auto_factory, patch_transformers_auto_model

__all__ = [
    "FlashPackTransformersModelMixin",
    "patch_auto_factory",
    "patch_transformers_auto_model",
    "save_transformers_model",
]
