"""File-format constants and default tunables (same names and values as the original package)."""

import struct

# The defaults of settings read from the environment live with those settings (flashpack.settings);
# re-exported here, under the original package's module.
from .settings import DEFAULT_READ_CHUNK_BYTES as DEFAULT_READ_CHUNK_BYTES
from .settings import DEFAULT_SHARD_BYTES as DEFAULT_SHARD_BYTES

MAGIC = b"FLASHPK\0"
U64LE = struct.Struct("<Q")

FILE_FORMAT_V3 = "flashpack_v3"
FILE_FORMAT_V4 = "flashpack_v4"

DEFAULT_ALIGN_BYTES = 128
DEFAULT_NUM_WRITE_WORKERS = 32
DEFAULT_NUM_STREAMS = 4
DEFAULT_CHUNK_BYTES = 4 * 1024 * 1024

# Distributed loading (use_distributed_loading=True, distributed_sharded=True): the strategies
# for splitting the payload among ranks, and the window per rank of "windows"
# (FLASHPACK_SHARD_STRATEGY and FLASHPACK_SHARD_BYTES override them).
SHARD_STRATEGY_CONTIGUOUS = "contiguous"
SHARD_STRATEGY_WINDOWS = "windows"
SHARD_STRATEGIES = (SHARD_STRATEGY_CONTIGUOUS, SHARD_STRATEGY_WINDOWS)
DEFAULT_SHARD_STRATEGY = SHARD_STRATEGY_CONTIGUOUS
# Shard boundaries fall on whole checksum chunks (so each rank can verify its slice).
SHARD_ALIGN_BYTES = 4 * 1024 * 1024
