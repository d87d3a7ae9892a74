"""URLs wherever flashpack takes a path: ``http://``, ``https://``, ``s3://bucket/key`` and
``hf://org/repo[@revision]/path/in/repo`` (the Hub's file URL).

The engine recognises them (``_engine.is_remote``) and reads them: an open fetches only the index
(a FlashPack footer, a safetensors header) with ranged GETs; a load fetches the tensors' bytes
with parallel ranged GETs into owned host memory (a URL is never mapped: CPU loads from a URL are
eager), or through the pinned staging pool straight into CUDA memory (never the whole file in
host memory). The object's size and version (ETag, else Last-Modified) are pinned at open: a
replaced object is an error, and a server with neither gets a RuntimeWarning naming the URL;
Ctrl-C stops any phase within about a second. Settings: the
``FLASHPACK_REMOTE_*`` variables; S3 takes the AWS configuration (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ...), the Hub ``HF_ENDPOINT`` and ``HF_TOKEN``.

``from_pretrained_flashpack`` takes the URL of a model folder too (:func:`model_folder_url`):
its configs are fetched whole by name, its weights found by probing names (:func:`url_exists`)
and read from the URL.

Errors name the URL: a missing object is a ``FileNotFoundError``, refused access a
``PermissionError``, any other failure of the transfer an ``OSError`` saying what went wrong,
and a corrupt file a ``ValueError``, as for local files.

>>> is_url("s3://bucket/model.safetensors"), is_url("model.safetensors")
(True, False)
"""

from __future__ import annotations

import os
from typing import Any

import torch

from . import _engine
from ._engine import string_to_dtype
from .storage import FlashTensorStorage, block_views

__all__ = ["is_url", "read_url", "url_exists"]

# Bound on a whole-object read (configs, indexes): nothing larger is fetched into a bytes object.
SMALL_OBJECT_LIMIT = 64 << 20


def is_url(path: object) -> bool:
    """True when ``path`` is a URL the engine reads (a ``str``; paths and bytes are local)."""
    return isinstance(path, str) and _engine.is_remote(path)


def read_url(url: str, limit: int = SMALL_OBJECT_LIMIT) -> bytes:
    """The whole object at ``url`` (a config, an index json): at most ``limit`` bytes, else a
    ValueError naming the URL and its size."""
    return _engine.read_url(url, limit)


def url_exists(url: str) -> bool:
    """True when there is an object at ``url`` (one HEAD request), False when there is none;
    any other failure (refused access, an unreachable host) raises, naming the URL."""
    try:
        _engine.url_size(url)
    except FileNotFoundError:
        return False
    return True


def join_url(base: str, *names: str) -> str:
    """The URL of ``names`` (``/``-separated paths) in the folder at ``base``."""
    return "/".join([base.rstrip("/"), *(n.strip("/") for n in names if n.strip("/"))])


# What a URL of one file ends with: from_pretrained_flashpack takes folders.
FILE_SUFFIXES = (".flashpack", ".safetensors", ".json", ".bin", ".pt", ".pth")


def hub_model_id(name: str | os.PathLike[str], revision: str | None) -> tuple[str | os.PathLike[str], str | None]:
    """What ``from_pretrained_flashpack`` takes as a model: ``hf://org/repo[@revision]`` is the Hub
    repository ``org/repo`` (at ``revision``); a path, a plain Hub id or the URL of a folder
    (:func:`model_folder_url`) is returned as it is."""
    if isinstance(name, str) and name.lower().startswith("hf://"):
        repo, _, rev = name[len("hf://") :].strip("/").partition("@")
        if repo.count("/") == 1 and "/" not in rev:
            return repo, rev or revision
    return name, revision


def model_folder_url(name: str | os.PathLike[str]) -> str | None:
    """The URL of a model folder (``https://host/models/llama``, ``s3://bucket/models/llama``,
    ``hf://org/repo/subfolder``) whose files ``from_pretrained_flashpack`` fetches by their
    names (a URL has no listing); None for a path, a Hub id or ``hf://org/repo[@revision]``
    (a Hub repository). The URL of a file is a ValueError saying what reads one."""
    if not isinstance(name, str) or not is_url(name) or hub_model_id(name, None)[0] != name:
        return None
    if name.rstrip("/").lower().endswith(FILE_SUFFIXES):
        raise ValueError(
            f"{name}: from_pretrained_flashpack takes a model folder (a local one, a Hub repository or the URL "
            "of a folder), not the URL of a file; load weights at a URL with flashpack.assign_from_file(model, url) "
            "or flashpack.load_checkpoint(url)"
        )
    return name.rstrip("/")


def flashpack_url_footer(url: str) -> _engine.Footer:
    """The validated footer of the FlashPack file at ``url`` (ValueError naming it when the
    object is another format)."""
    handle = _engine.open_weights(url)
    if handle.footer is None:  # a safetensors object
        raise ValueError(f"{url}: not a FlashPack file (it is a {handle.format} file)")
    return handle.footer


def read_flashpack_url(
    handle: _engine.WeightFile, device: torch.device, silent: bool, verify: bool
) -> FlashTensorStorage:
    """``read_storage`` of a FlashPack file at a URL (``handle``: its ``_engine.open_weights``):
    one block tensor per macroblock, with the engine's footer, on ``device`` (resolved). CPU: the payload fetched into
    owned memory (a URL is never mapped); CUDA: each block streamed into its own device tensor;
    MPS: the CPU load, then one copy per block."""
    url = handle.path
    footer = handle.footer
    if footer is None:
        raise ValueError(f"{url}: not a FlashPack file (it is a {handle.format} file)")
    blocks = footer.blocks
    if device.type == "cuda":
        raw = [torch.empty(length, dtype=torch.uint8, device=device) for _, _, length, _ in blocks]
        pieces = [(0, off, off + length, t) for (_, off, length, _), t in zip(blocks, raw, strict=True)]
        _engine.read_to_cuda([handle], pieces, device, progress=not silent, verify=verify)
        views = [t.view(string_to_dtype(d)) for (d, _, _, _), t in zip(blocks, raw, strict=True)]
        return FlashTensorStorage(blocks=views, footer=footer, records=footer.records)
    memory: Any = None
    if footer.payload_len:
        memory, _offsets = _engine.read_host([handle], [(0, 0, footer.payload_len)], not silent, verify)
    host = block_views(memory, blocks)
    if device.type == "mps":
        return FlashTensorStorage(blocks=[b.to(device) for b in host], footer=footer, records=footer.records)
    return FlashTensorStorage(blocks=host, backing=memory, footer=footer, records=footer.records)
