"""FlashPack for diffusers models and pipelines (needs the ``diffusers`` extra)."""

from .auto_model import AutoFlashPackModel
from .model import FlashPackDiffusersModelMixin, save_diffusers_model
from .patch import patch_diffusers_auto_model, patch_diffusers_pipeline_loading_utils
from .pipeline import FlashPackDiffusionPipeline

__all__ = [
    "AutoFlashPackModel",
    "FlashPackDiffusersModelMixin",
    "FlashPackDiffusionPipeline",
    "patch_diffusers_auto_model",
    "patch_diffusers_pipeline_loading_utils",
    "save_diffusers_model",
]
