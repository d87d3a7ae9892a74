"""``patch_integrations()``: add ``from_pretrained_flashpack`` to the libraries' AutoModel classes."""

from __future__ import annotations

import importlib.util


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a broken or deliberately blocked package
        return False


def diffusers_is_available() -> bool:
    return _installed("diffusers")


def transformers_is_available() -> bool:
    return _installed("transformers")


def patch_integrations() -> None:
    """Give ``diffusers.AutoModel`` and every ``transformers.AutoModel*`` class a
    ``from_pretrained_flashpack`` classmethod, for whichever of the two libraries is installed.

    Idempotent; nothing else in the libraries is changed.
    """
    if diffusers_is_available():
        from .diffusers.patch import patch_diffusers_auto_model

        patch_diffusers_auto_model()
    if transformers_is_available():
        from .transformers.patch import patch_transformers_auto_model

        patch_transformers_auto_model()
