"""Ordinary Hugging Face model folders: which weight file or index a folder's model lives in,
and reading it through the engine.

A model folder holds a FlashPack file (``model.flashpack``, written by
``save_pretrained_flashpack``), a multi-file FlashPack checkpoint (``model.flashpack.index.json``
/ ``diffusion_pytorch_model.flashpack.index.json`` and its shards, written by
``flashpack convert --sharded`` from the library's checkpoint, so with the library's tensor
names), or the library's safetensors weights: one file (``model.safetensors`` /
``diffusion_pytorch_model.safetensors``) or shards listed by an index
(``model.safetensors.index.json``); all but ``model.flashpack`` optionally for a ``variant``
(``model.fp16.safetensors``, ``model.safetensors.index.fp16.json``,
``model.flashpack.index.fp16.json``). :func:`find_weights` says which: the FlashPack files first,
then the safetensors weights in the order the library itself picks them (transformers: the file
named by ``config.json``'s ``transformers_weights`` if any, else the single file before the
index; diffusers: the index before the single file), so a folder holding both loads the weights
``from_pretrained`` loads. A folder at a URL (``https://``, ``s3://``) has no listing: the same
names are probed there, one HEAD request each (:func:`exists`), and the weights found are read
from the URL.

>>> import tempfile
>>> from pathlib import Path
>>> folder = Path(tempfile.mkdtemp())
>>> _ = (folder / "model.safetensors.index.fp16.json").write_text("{}")
>>> find_weights(folder, TRANSFORMERS_NAMES, variant="fp16").name
'model.safetensors.index.fp16.json'
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from ..loading import load_checkpoint
from ..remote import join_url, url_exists
from ._common import FLASHPACK_WEIGHTS_NAME


@dataclass(frozen=True)
class WeightNames:
    """A library's safetensors file names (those its ``save_pretrained`` writes)."""

    library: str
    single: str  # e.g. "model.safetensors"
    index: str  # e.g. "model.safetensors.index.json"
    flashpack_index: str  # e.g. "model.flashpack.index.json" (what `flashpack convert --sharded` writes)
    legacy_variant_index: bool = False  # diffusers also reads "<name>.safetensors.<variant>.index.json"
    single_first: bool = False  # transformers takes "model.safetensors" before the index, diffusers after
    explicit_key: str | None = None  # the config.json key naming the weights file to load, if the library has one


TRANSFORMERS_NAMES = WeightNames(
    "transformers",
    "model.safetensors",
    "model.safetensors.index.json",
    "model.flashpack.index.json",
    single_first=True,
    explicit_key="transformers_weights",
)
DIFFUSERS_NAMES = WeightNames(
    "diffusers",
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.safetensors.index.json",
    "diffusion_pytorch_model.flashpack.index.json",
    legacy_variant_index=True,
)


def with_variant(name: str, variant: str | None) -> str:
    """``name`` with ``variant`` before its last suffix, as the libraries name variant files:
    ``model.safetensors`` -> ``model.fp16.safetensors``, ``model.safetensors.index.json`` ->
    ``model.safetensors.index.fp16.json``."""
    if not variant:
        return name
    stem, _, suffix = name.rpartition(".")
    return f"{stem}.{variant}.{suffix}"


def candidate_names(names: WeightNames, variant: str | None) -> list[str]:
    """The checkpoint names to look for, in order: the multi-file FlashPack index, then the
    library's own in its order (transformers: one file, then the index; diffusers: the index,
    the legacy variant index, then one file)."""
    index = [with_variant(names.index, variant)]
    if variant and names.legacy_variant_index:
        index.append(f"{names.index.removesuffix('.index.json')}.{variant}.index.json")
    single = [with_variant(names.single, variant)]
    return [with_variant(names.flashpack_index, variant), *(single + index if names.single_first else index + single)]


# Where a model's files are: a local folder, or the URL of one (``https://``, ``s3://``, ``hf://``).
Location = Path | str


def at(folder: Location, name: str) -> Location:
    """The file ``name`` (``/``-separated) of ``folder``."""
    return join_url(folder, name) if isinstance(folder, str) else folder / name


def exists(location: Location) -> bool:
    """A file at a path, or an object at a URL (one HEAD request)."""
    return url_exists(location) if isinstance(location, str) else location.is_file()


def explicit_weights(folder: Location, names: WeightNames, config: Path | None = None) -> Location | None:
    """The weights file the model's config names under the library's key (transformers'
    ``transformers_weights``), checked as the library checks it: a safetensors file or index
    inside ``folder``. ``config``: the config.json to read (default ``folder/config.json``; for
    a folder at a URL, its local copy). None when there is no such key."""
    if config is None:
        config = folder / "config.json" if isinstance(folder, Path) else None
    if names.explicit_key is None or config is None or not config.is_file():
        return None
    shown = at(folder, "config.json")
    try:
        value = json.loads(config.read_text(encoding="utf-8")).get(names.explicit_key)
    except (OSError, ValueError, AttributeError) as e:
        raise OSError(f"{shown}: cannot read it: {e}") from e
    if value is None:
        return None
    if not isinstance(value, str) or not value.endswith((".safetensors", ".safetensors.index.json")):
        raise ValueError(
            f"{shown}: {names.explicit_key} must name a safetensors file (*.safetensors) or index "
            f"(*.safetensors.index.json), got {value!r}"
        )
    if isinstance(folder, str):
        inside = not PurePosixPath(value).is_absolute() and ".." not in PurePosixPath(value).parts
    else:
        base = os.path.abspath(folder)
        inside = os.path.commonpath([base, os.path.abspath(folder / value)]) == base
    if not inside:
        raise ValueError(f"{shown}: {names.explicit_key} must name a file inside the model folder, got {value!r}")
    path = at(folder, value)
    if not exists(path):
        raise FileNotFoundError(f"{path}: no such file (named by {names.explicit_key} in {shown})")
    return path


def find_weights(
    folder: Location, names: WeightNames, variant: str | None = None, config: Path | None = None
) -> Location:
    """The weights of the model in ``folder`` (a path, or the URL of a folder, whose files are
    probed by name: ``config`` is then the local copy of its config.json): ``model.flashpack``
    when there is one (it wins,
    whatever ``variant`` says: a warning says so when a ``variant`` is asked for), else for
    ``variant`` the multi-file FlashPack index, else the library's safetensors weights in the
    library's order (:func:`candidate_names`; for transformers, the file that ``config.json``'s
    ``transformers_weights`` names comes first). Raises ``FileNotFoundError`` naming everything
    looked for."""
    flashpack = at(folder, FLASHPACK_WEIGHTS_NAME)
    if exists(flashpack):
        if variant:
            warnings.warn(
                f"{flashpack}: loading it, not the weights of variant {variant!r} (a model.flashpack file "
                "is always loaded first, whatever the variant)",
                stacklevel=3,
            )
        return flashpack
    candidates = candidate_names(names, variant)
    if exists(at(folder, candidates[0])):
        return at(folder, candidates[0])
    explicit = explicit_weights(folder, names, config)
    if explicit is not None:
        return explicit
    for name in candidates[1:]:
        if exists(at(folder, name)):
            return at(folder, name)
    wanted = ", ".join([FLASHPACK_WEIGHTS_NAME, *candidates])
    hint = ""
    if isinstance(folder, Path):
        files = folder.iterdir() if folder.is_dir() else iter(())
        present = sorted(p.name for p in files if p.name.endswith((".safetensors", ".json", ".bin", ".pt", ".pth")))
        hint = f" (it holds {', '.join(present)})" if present else ""
    raise FileNotFoundError(
        f"{flashpack}: no {FLASHPACK_WEIGHTS_NAME} here, and no {names.library} safetensors "
        f"weights{f' for variant {variant!r}' if variant else ''} either: looked for {wanted}{hint}"
    )


def is_flashpack(path: Location) -> bool:
    return (path.name if isinstance(path, Path) else path.rsplit("/", 1)[-1]) == FLASHPACK_WEIGHTS_NAME


def load_weights(
    path: Location,
    device: str | torch.device | None,
    options: dict[str, Any],
) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file or index (or a multi-file FlashPack index), on ``device``
    (CPU by default), read by the engine as one job (:func:`flashpack.load_checkpoint`: lazy
    copy-on-write on the CPU unless ``eager``, streamed through pinned memory to CUDA), for a
    model folder loaded with ``from_pretrained_flashpack``. Of the load ``options`` (those of
    ``assign_from_file``), ``eager`` and ``silent`` apply, ``ignore_names`` / ``ignore_prefixes`` /
    ``ignore_suffixes`` leave tensors out; ``verify`` and distributed loading need a FlashPack
    file and are refused; the CUDA tuning knobs are the engine's own here."""
    if options.get("verify"):
        raise ValueError(
            f"{path}: verify=True checks a FlashPack file's checksums while loading model.flashpack; this "
            "checkpoint is loaded without (check it with `flashpack verify`, or convert it to model.flashpack "
            "with `flashpack convert`)"
        )
    if options.get("use_distributed_loading"):
        raise ValueError(
            f"{path}: use_distributed_loading is supported for model.flashpack only; load this "
            "checkpoint without it, or convert it with `flashpack convert`"
        )
    tensors = load_checkpoint(
        path,
        torch.device("cpu") if device is None else device,
        eager=bool(options.get("eager")),
        progress=not options.get("silent", True),
    )
    ignored_names = set(options.get("ignore_names") or ())
    prefixes = tuple(options.get("ignore_prefixes") or ())
    suffixes = tuple(options.get("ignore_suffixes") or ())
    if ignored_names or prefixes or suffixes:
        tensors = {
            name: t
            for name, t in tensors.items()
            if name not in ignored_names
            and not (prefixes and name.startswith(prefixes))
            and not (suffixes and name.endswith(suffixes))
        }
    return tensors
