"""FlashPack: load model weights from disk at the speed of the hardware.

A drop-in for the original ``flashpack`` package (same functions, arguments and file format),
backed by a Rust engine that runs without the GIL.
"""

from ._core import __version__
from .deserialization import (
    assign_from_file,
    get_flashpack_file_metadata,
    is_flashpack_file,
    iterate_from_flash_tensor,
    read_flashpack_file,
    revert_from_file,
)
from .mixin import FlashPackMixin
from .serialization import pack_to_file

version = __version__

__all__ = [
    "FlashPackMixin",
    "assign_from_file",
    "get_flashpack_file_metadata",
    "is_flashpack_file",
    "iterate_from_flash_tensor",
    "pack_to_file",
    "read_flashpack_file",
    "revert_from_file",
    "__version__",
    "version",
]
