"""What the diffusers and transformers integrations share: hub access, building a model on the
meta device and filling it from a FlashPack file, and library-neutral class handling.

Imports neither diffusers nor transformers.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import torch

from ..constants import DEFAULT_ALIGN_BYTES, DEFAULT_NUM_WRITE_WORKERS
from ..deserialization import assign_from_file, get_flashpack_file_metadata
from ..mixin import parameters_on_meta
from ..serialization import pack_to_file
from ..utils import filter_state_dict, get_module_and_attribute, string_to_dtype

FLASHPACK_WEIGHTS_NAME = "model.flashpack"

ModuleT = TypeVar("ModuleT", bound=torch.nn.Module)

# Keyword arguments of `assign_from_file` that the `from_pretrained_flashpack` methods pass through.
ASSIGN_KWARGS = (
    "silent",
    "strict",
    "strict_params",
    "strict_buffers",
    "keep_flash_ref_on_model",
    "num_streams",
    "chunk_bytes",
    "ignore_names",
    "ignore_prefixes",
    "ignore_suffixes",
    "use_distributed_loading",
    "distributed_sharded",
    "distributed_shard_strategy",
    "rank",
    "local_rank",
    "world_size",
    "coerce_dtype",
    "eager",
)
# Keyword arguments that only say where to find files on the Hub.
HUB_KWARGS = ("revision", "cache_dir", "token", "local_files_only", "force_download", "local_dir")
# Accepted for compatibility with the original signatures; huggingface_hub no longer uses them.
OBSOLETE_HUB_KWARGS = ("proxies", "local_dir_use_symlinks", "resume_download", "user_agent")


def split_kwargs(kwargs: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """Remove ``names`` from ``kwargs`` and return them (those present)."""
    return {name: kwargs.pop(name) for name in names if name in kwargs}


def to_dtype(value: torch.dtype | str | None) -> torch.dtype | None:
    """A torch dtype from a dtype, a name (``"bfloat16"``, ``"torch.float16"``) or None."""
    if value is None or isinstance(value, torch.dtype):
        return value
    return string_to_dtype(value.removeprefix("torch."))


def resolve_model_dir(
    name_or_path: str | os.PathLike[str],
    *,
    subfolder: str | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
    force_download: bool = False,
    local_dir: str | os.PathLike[str] | None = None,
    **obsolete: Any,
) -> Path:
    """A local directory for ``name_or_path``: itself when it is one, else the snapshot of that Hub
    repository (downloaded, or taken from the cache when offline / ``local_files_only``)."""
    unknown = set(obsolete) - set(OBSOLETE_HUB_KWARGS)
    if unknown:
        raise TypeError(f"unexpected keyword arguments: {sorted(unknown)}")
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if path.exists():
        raise NotADirectoryError(f"{path}: expected a model directory or a Hub repository id, got a file")
    repo_id = os.fspath(name_or_path)
    if repo_id.count("/") > 1 or repo_id.startswith((".", "/")):
        raise FileNotFoundError(f"{repo_id}: no such directory (and not a valid Hub repository id)")
    from huggingface_hub import snapshot_download

    allow = [f"{subfolder.strip('/')}/*", "*.json", "*.md"] if subfolder else None
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            local_files_only=local_files_only,
            force_download=force_download,
            local_dir=local_dir,
            allow_patterns=allow,
            library_name="flashpack",
        )
    except Exception as e:  # huggingface_hub raises many types (offline, auth, missing repo, ...)
        raise OSError(f"{repo_id}: not a local directory, and fetching it from the Hugging Face Hub failed: {e}") from e
    return Path(folder)


def flashpack_path(folder: Path, subfolder: str | None = None) -> Path:
    path = folder / subfolder / FLASHPACK_WEIGHTS_NAME if subfolder else folder / FLASHPACK_WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no {FLASHPACK_WEIGHTS_NAME} here (save one with save_pretrained_flashpack)")
    return path


def file_float_dtype(path: str | os.PathLike[str]) -> torch.dtype | None:
    """The floating-point dtype holding most of the file's elements (None if it stores no floats)."""
    meta = get_flashpack_file_metadata(path)
    if "macroblocks" in meta:
        counts = [(b["dtype"], int(b["length_elems"])) for b in meta["macroblocks"]]
    else:
        counts = [(meta["target_dtype"], int(meta["total_elems"]))]
    floats = [(n, string_to_dtype(d)) for d, n in counts if string_to_dtype(d).is_floating_point]
    return max(floats, key=lambda x: x[0])[1] if floats else None


def requested_dtype(requested: torch.dtype | str | None) -> torch.dtype | None:
    """A floating-point dtype the caller asked for, or None for ``None`` / ``"auto"`` (keep the file's)."""
    if requested is None or requested == "auto":
        return None
    dtype = to_dtype(requested)
    if dtype is None or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point torch.dtype or 'auto', got {requested!r}")
    return dtype


def build_dtype(path: str | os.PathLike[str]) -> torch.dtype:
    """The dtype to construct a model in before filling it from ``path``: the file's own floating
    dtype, so that float buffers created in ``__init__`` match the stored ones."""
    return file_float_dtype(path) or torch.get_default_dtype()


@contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Tensors created without an explicit dtype (parameters, float buffers) get ``dtype``."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_on_meta(build: Callable[[], ModuleT], dtype: torch.dtype) -> ModuleT:
    """Construct a model with its parameters on the meta device (buffers real, as ``__init__``
    computes them) and floating-point tensors in ``dtype``."""
    with default_dtype(dtype), parameters_on_meta():
        return build()


def _shared_parameter_groups(model: torch.nn.Module) -> list[list[str]]:
    """Names that refer to one Parameter object (tied weights), as the model was constructed."""
    groups: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def load_into_model(
    model: ModuleT,
    path: str | os.PathLike[str],
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    **assign_kwargs: Any,
) -> ModuleT:
    """Fill a model built by ``build_on_meta`` from ``path`` and make it ready to use.

    Weights tied at construction stay tied: a tied name missing from the file (libraries save
    one copy) and a tied pair stored twice (files from the original package) both come back as
    one shared Parameter. Buffers computed in ``__init__`` and not stored in the file (for
    example non-persistent position ids) keep those values and move to ``device``. The model is
    returned in eval mode; with ``dtype`` its floating-point tensors are cast when they differ.
    """
    device = torch.device("cpu") if device is None else torch.device(device)
    records = {rec["name"] for rec in get_flashpack_file_metadata(path)["index"]}
    tied = _shared_parameter_groups(model)
    aliases = [n for g in tied if any(m in records for m in g) for n in g if n not in records]
    ignore_names = list(assign_kwargs.pop("ignore_names", None) or []) + aliases
    assign_from_file(model, path, device=device, ignore_names=ignore_names or None, **assign_kwargs)
    for group in tied:
        present = [n for n in group if n in records]
        if not present:
            continue
        source = model.get_parameter(present[0])
        for name in group:
            module, attr = get_module_and_attribute(model, name)
            setattr(module, attr, source)
    if device.type != "cpu":
        model.to(device)  # buffers computed in __init__ live on the CPU until now
    if dtype is not None and any(p.is_floating_point() and p.dtype != dtype for p in model.parameters()):
        model.to(dtype)
    model.eval()
    still_meta = [n for n, p in model.named_parameters() if p.is_meta]
    if still_meta:
        warnings.warn(
            f"flashpack: {len(still_meta)} parameters of {type(model).__name__} were not in {os.fspath(path)!r} and "
            f"remain on the meta device (using the model will fail): {still_meta}",
            stacklevel=3,
        )
    return model


_SUBCLASSES: dict[tuple[type, type], type] = {}


def flashpack_subclass(base: type, mixin: type) -> type:
    """``base`` with ``mixin`` added (``FlashPack<Base>``); ``base`` itself if it already has it.
    The same pair always gives the same class."""
    if issubclass(base, mixin):
        return base
    key = (base, mixin)
    if key not in _SUBCLASSES:
        _SUBCLASSES[key] = type(f"FlashPack{base.__name__}", (base, mixin), {"__module__": base.__module__})
    return _SUBCLASSES[key]


def library_class(cls: type, library: Any, root: type) -> type | None:
    """The first class in ``cls``'s MRO that ``library`` exports by its name and that derives from
    ``root`` (e.g. ``UNet2DModel`` for a user's ``FlashPackUNet2DModel``)."""
    for klass in cls.__mro__:
        if klass is root or not issubclass(klass, root):
            continue
        if getattr(library, klass.__name__, None) is klass:
            return klass
    return None


def rewrite_json(path: Path, update: Callable[[dict[str, Any]], None]) -> None:
    """Apply ``update`` to a JSON file written by a library, keeping its layout (indent 2, sorted)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    update(data)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def push_folder(
    folder: str | os.PathLike[str],
    repo_id: str | None,
    *,
    token: str | bool | None = None,
    private: bool | None = None,
    commit_message: str | None = None,
    create_pr: bool = False,
    library_name: str,
) -> str:
    """Create (if needed) the Hub repository and upload ``folder`` to it; returns the repo id.

    Writes a minimal model card (README.md) when the folder has none.
    """
    from huggingface_hub import HfApi

    folder = Path(folder)
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id or folder.resolve().name, exist_ok=True, private=private).repo_id
    card = folder / "README.md"
    if not card.exists():
        card.write_text(
            f"---\nlibrary_name: {library_name}\ntags:\n- flashpack\n---\n\n"
            f"# {repo_id}\n\nWeights stored as `{FLASHPACK_WEIGHTS_NAME}`; load them with "
            "`from_pretrained_flashpack` from the `flashpack` package.\n",
            encoding="utf-8",
        )
    api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        commit_message=commit_message or "Upload FlashPack model",
        create_pr=create_pr,
    )
    return repo_id


def save_model_folder(
    model: torch.nn.Module,
    save_directory: str | os.PathLike[str],
    write_config: Callable[[Path], None],
    library_name: str,
    *,
    is_main_process: bool = True,
    push_to_hub: bool = False,
    target_dtype: torch.dtype | None = None,
    align_bytes: int = DEFAULT_ALIGN_BYTES,
    silent: bool = True,
    num_workers: int = DEFAULT_NUM_WRITE_WORKERS,
    commit_message: str | None = None,
    create_pr: bool = False,
    token: str | bool | None = None,
    repo_id: str | None = None,
    private: bool | None = None,
    ignore_names: list[str] | None = None,
    ignore_prefixes: list[str] | None = None,
    ignore_suffixes: list[str] | None = None,
) -> None:
    """The steps every library's ``save_pretrained_flashpack`` shares: check the folder, let
    ``write_config`` write the library's config files into it (main process only), pack the
    (filtered) state dict as ``model.flashpack`` and optionally push the folder to the Hub."""
    folder = Path(save_directory)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder}: cannot save a model there, it is a file")
    if not is_main_process:
        return
    folder.mkdir(parents=True, exist_ok=True)
    write_config(folder)
    state_dict = filter_state_dict(model.state_dict(), ignore_names, ignore_prefixes, ignore_suffixes)
    pack_to_file(
        state_dict,
        folder / FLASHPACK_WEIGHTS_NAME,
        target_dtype,
        align_bytes=align_bytes,
        silent=silent,
        num_workers=num_workers,
    )
    if push_to_hub:
        push_folder(
            folder,
            repo_id,
            token=token,
            private=private,
            commit_message=commit_message,
            create_pr=create_pr,
            library_name=library_name,
        )


class SavePretrainedFlashPack:
    """``save_pretrained_flashpack`` for the library mixins: one signature (the original's),
    forwarded to the library's own save function named by ``_flashpack_save``
    (which takes the same keyword arguments, see :func:`save_model_folder`)."""

    _flashpack_save: Callable[..., None]

    def save_pretrained_flashpack(
        self,
        save_directory: str | os.PathLike[str],
        *,
        is_main_process: bool = True,
        push_to_hub: bool = False,
        target_dtype: torch.dtype | None = None,
        align_bytes: int = DEFAULT_ALIGN_BYTES,
        silent: bool = True,
        num_workers: int = DEFAULT_NUM_WRITE_WORKERS,
        commit_message: str | None = None,
        create_pr: bool = False,
        token: str | bool | None = None,
        repo_id: str | None = None,
        private: bool | None = None,
        ignore_names: list[str] | None = None,
        ignore_prefixes: list[str] | None = None,
        ignore_suffixes: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        """Save the config and the weights (``model.flashpack``) to ``save_directory``;
        ``target_dtype`` casts floating-point weights; ``push_to_hub`` uploads the folder."""
        del kwargs  # accepted for signature compatibility with save_pretrained
        type(self)._flashpack_save(
            self,
            save_directory,
            is_main_process=is_main_process,
            push_to_hub=push_to_hub,
            target_dtype=target_dtype,
            align_bytes=align_bytes,
            silent=silent,
            num_workers=num_workers,
            commit_message=commit_message,
            create_pr=create_pr,
            token=token,
            repo_id=repo_id,
            private=private,
            ignore_names=ignore_names,
            ignore_prefixes=ignore_prefixes,
            ignore_suffixes=ignore_suffixes,
        )
