"""Type stubs for ``flashpack._core``, the Rust engine's extension module.

Private API: use the ``flashpack`` package. Every call that touches the disk releases the GIL;
long ones (eager loads, packs, verify, CUDA loads, the command) stop on Ctrl-C between chunks.
Engine errors arrive as ``OSError`` subclasses (with errno and filename), ``ValueError`` (bad
files and arguments) or ``RuntimeError`` (the CUDA driver).
"""

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from typing_extensions import Buffer

__version__: str

_Path = str | os.PathLike[str]
_Io = Literal["auto", "direct", "buffered"]
# (dtype name, offset in bytes, length in bytes, length in elements), one per macroblock.
_Block = tuple[str, int, int, int]
# (name, dtype, safetensors dtype or None, shape, start, end, safetensors shape or None): one tensor,
# bytes start..end of its file; the safetensors shape counts 4-bit values for fp4 (shape counts bytes).
_Tensor = tuple[str, str, str | None, list[int], int, int, list[int] | None]
# (name, safetensors dtype, header shape, start, end, message): a tensor torch cannot hold.
_Unloadable = tuple[str, str, list[int], int, int, str]
# (phase name, seconds)
_Phases = list[tuple[str, float]]

class Record:
    """One tensor of a footer: where its elements sit in its block (read-only)."""

    def __new__(
        cls, name: str, shape: Sequence[int], block: int, offset: int, length: int, tied_to: int | None = None
    ) -> Record: ...
    @property
    def name(self) -> str: ...
    @property
    def shape(self) -> list[int]: ...
    @property
    def block(self) -> int:
        """Index into ``Footer.blocks``."""
    @property
    def offset(self) -> int:
        """Offset in elements from the start of the block."""
    @property
    def length(self) -> int:
        """Number of elements."""
    @property
    def tied_to(self) -> int | None:
        """Index of the first record holding exactly these bytes (tied weights stored once), or
        None (the first of such a group, a record sharing nothing, or an empty one)."""

class Footer:
    """A FlashPack file's validated footer, decoded once by the engine (read-only)."""

    @staticmethod
    def decode(json: bytes, payload_len: int) -> Footer:
        """Decode and validate footer JSON against a payload of ``payload_len`` bytes
        (ValueError when it breaks a rule of the format)."""
    @property
    def json(self) -> bytes:
        """The footer JSON exactly as stored in the file."""
    @property
    def format(self) -> Literal["flashpack_v3", "flashpack_v4"]: ...
    @property
    def align_bytes(self) -> int: ...
    @property
    def payload_len(self) -> int: ...
    @property
    def total_elems(self) -> int: ...
    @property
    def blocks(self) -> list[_Block]: ...
    @property
    def records(self) -> list[Record]: ...
    @property
    def has_checksums(self) -> bool: ...
    @property
    def checksum_chunk_bytes(self) -> int | None: ...
    def __len__(self) -> int: ...

class Payload:
    """A loaded payload (a private copy-on-write mapping, or owned memory): its bytes through the
    writable buffer protocol, alive as long as any view of them."""

    @property
    def footer(self) -> Footer: ...
    @property
    def payload_len(self) -> int: ...
    @property
    def eager(self) -> bool: ...
    @property
    def phases(self) -> _Phases: ...
    @property
    def io(self) -> dict[str, int]: ...
    def __len__(self) -> int: ...
    def __buffer__(self, flags: int, /) -> memoryview: ...

class File:
    """An open FlashPack file with its validated footer, for device loads and range reads."""

    @property
    def footer(self) -> Footer: ...
    @property
    def payload_len(self) -> int: ...
    def to_cuda(
        self,
        device: int,
        regions: Sequence[tuple[int, int, int]],
        io: _Io = "auto",
        threads: int = 0,
        chunk_bytes: int = ...,
        progress: bool = False,
        verify: bool = False,
    ) -> tuple[_Phases, dict[str, int]]: ...
    def read_into(
        self,
        offset: int,
        buffer: Buffer,
        io: _Io = "auto",
        threads: int = 0,
        chunk_bytes: int = ...,
        verify: bool = False,
    ) -> dict[str, int]: ...

class WeightFile:
    """An open, validated FlashPack or safetensors file (told apart by content): local, or at a
    URL (only its index fetched)."""

    @property
    def path(self) -> Path | str:
        """The local path, or the URL (a ``str``) of a remote file."""
    @property
    def is_remote(self) -> bool: ...
    @property
    def footer(self) -> Footer | None:
        """A FlashPack file's validated footer (None for safetensors)."""
    @property
    def data_range(self) -> tuple[int, int]: ...
    @property
    def format(self) -> Literal["flashpack", "safetensors"]: ...
    @property
    def tensors(self) -> list[_Tensor]: ...
    @property
    def unloadable(self) -> list[_Unloadable]: ...
    @property
    def metadata(self) -> dict[str, str] | None: ...
    def map(self) -> Memory: ...

class Memory:
    """Loaded bytes (a private copy-on-write mapping or owned memory) through the writable
    buffer protocol, alive as long as any view of them."""

    def __len__(self) -> int: ...
    def __buffer__(self, flags: int, /) -> memoryview: ...

def open(path: _Path) -> File: ...
def open_weights(path: _Path) -> WeightFile:
    """A local path, or a URL (``http(s)://``, ``s3://``, ``hf://``)."""

def open_checkpoint(path: _Path, variant: str | None = None) -> tuple[Path | str, list[WeightFile]]:
    """A local path, or the URL of a weight file or an index json (shards: the objects beside it)."""

def is_remote(location: _Path) -> bool: ...
def read_url(url: str, limit: int) -> bytes:
    """The whole object (at most ``limit`` bytes); Ctrl-C stops the wait."""

def url_size(url: str) -> int:
    """The object's size (one HEAD request); FileNotFoundError when it is missing."""

def verify_url(url: str, threads: int = 0, progress: bool = False) -> dict[str, Any]:
    """``verify`` of a FlashPack file at a URL (parts fetched in parallel, checked as they arrive)."""

def write_checkpoint_index(path: _Path, kind: Literal["safetensors", "flashpack"], files: Sequence[_Path]) -> None: ...
def read_job(
    files: Sequence[WeightFile],
    pieces: Sequence[tuple[int, int, int]],
    io: _Io = "auto",
    threads: int = 0,
    chunk_bytes: int = ...,
    progress: bool = False,
    huge_pages: bool = False,
    verify: bool = False,
) -> tuple[Memory, list[int], _Phases, dict[str, int]]: ...
def read_job_to_cuda(
    files: Sequence[WeightFile],
    pieces: Sequence[tuple[int, int, int, int]],
    device: int,
    io: _Io = "auto",
    threads: int = 0,
    chunk_bytes: int = ...,
    progress: bool = False,
    verify: bool = False,
) -> tuple[_Phases, dict[str, int]]:
    """UNSAFE, private: writes ``end - start`` bytes to each raw device address of ``pieces``.
    The addresses are not checked against any tensor (only that the driver maps them and that
    the pieces do not overlap): a wrong one overwrites other device memory. Call it through
    ``flashpack.load_file`` / ``load_checkpoint(device="cuda")``, which pass addresses of
    tensors they have just allocated, contiguous and exactly that long."""

def load(
    path: _Path,
    eager: bool = False,
    io: _Io = "auto",
    threads: int = 0,
    chunk_bytes: int = ...,
    progress: bool = False,
    huge_pages: bool = False,
    verify: bool = False,
) -> Payload: ...
def verify(path: _Path, io: _Io = "auto", threads: int = 0, progress: bool = False) -> dict[str, Any]: ...
def read_footer(path: _Path) -> Footer: ...
def dtype_names() -> list[str]: ...
def pack(
    path: _Path,
    entries: Sequence[tuple[str, str, Sequence[int], Buffer | None, int | None]],
    align_bytes: int = 128,
    largest_first: bool = True,
    threads: int = 0,
    progress: bool = False,
    checksums: bool = True,
) -> _Phases: ...
def prepare_pack_destination(path: _Path) -> None: ...
def cuda_available() -> bool: ...
def pinned_pool_stats() -> dict[str, int]: ...
def set_pinned_pool_limit(limit: int) -> None: ...
def release_pinned_pool() -> int: ...
def cli(argv: Sequence[str | os.PathLike[str]]) -> dict[str, Any]: ...
