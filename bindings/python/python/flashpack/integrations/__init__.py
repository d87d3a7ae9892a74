"""Hugging Face integrations: diffusers and transformers models and pipelines saved as FlashPack.

Importing this package imports neither diffusers nor transformers; the subpackages
``flashpack.integrations.diffusers`` and ``flashpack.integrations.transformers`` do, and need
the matching extra (``pip install flashpack[diffusers]`` / ``[transformers]``).
"""

from .patch import patch_integrations, unpatch_integrations

__all__ = ["patch_integrations", "unpatch_integrations"]
