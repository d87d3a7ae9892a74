"""``from_pretrained_flashpack`` on ``diffusers.AutoModel``."""

from __future__ import annotations

import os
from typing import Any

import diffusers

from .auto_model import AutoFlashPackModel


def _auto_from_pretrained_flashpack(
    cls: type, pretrained_model_or_path: str | os.PathLike[str], **kwargs: Any
) -> Any:
    return AutoFlashPackModel.from_pretrained_flashpack(pretrained_model_or_path, **kwargs)


def patch_diffusers_auto_model() -> None:
    """Add ``from_pretrained_flashpack`` to ``diffusers.AutoModel`` (same as
    ``AutoFlashPackModel.from_pretrained_flashpack``)."""
    diffusers.AutoModel.from_pretrained_flashpack = classmethod(_auto_from_pretrained_flashpack)
