"""FlashPack: load model weights from disk at the speed of the hardware.

A drop-in for the original ``flashpack`` package (same functions, arguments and file format),
backed by a Rust engine that runs without the GIL.
"""

from .deserialization import (
    assign_from_file,
    get_flashpack_file_metadata,
    is_flashpack_file,
    iterate_from_flash_tensor,
    pinned_pool_stats,
    read_flashpack_file,
    read_flashpack_file_distributed,
    release_pinned_pool,
    revert_from_file,
    set_pinned_pool_limit,
)
from .integrations import patch_integrations
from .loading import TensorNotFoundError, UnsupportedTensorError, load_checkpoint, load_file
from .mixin import FlashPackMixin
from .safe_open import safe_open
from .serialization import pack_to_file
from .version import __commit_id__, __version__, __version_tuple__, commit_id, version, version_tuple

__all__ = [
    "FlashPackMixin",
    "TensorNotFoundError",
    "UnsupportedTensorError",
    "__commit_id__",
    "__version__",
    "__version_tuple__",
    "assign_from_file",
    "commit_id",
    "get_flashpack_file_metadata",
    "is_flashpack_file",
    "iterate_from_flash_tensor",
    "load_checkpoint",
    "load_file",
    "pack_to_file",
    "patch_integrations",
    "pinned_pool_stats",
    "read_flashpack_file",
    "read_flashpack_file_distributed",
    "release_pinned_pool",
    "revert_from_file",
    "safe_open",
    "set_pinned_pool_limit",
    "version",
    "version_tuple",
]
