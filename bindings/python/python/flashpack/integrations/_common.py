"""What the diffusers and transformers integrations share: hub access, building a model on the
meta device and filling it from a FlashPack file, and library-neutral class handling.

Imports neither diffusers nor transformers.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import torch

from .. import _engine, deserialization, serialization
from ..mixin import parameters_on_meta
from ..options import PACK_OPTIONS, Options, with_options
from ..remote import (
    SMALL_OBJECT_LIMIT,
    flashpack_url_footer,
    hub_model_id,
    is_url,
    join_url,
    model_folder_url,
    read_url,
)
from ..utils import atomic_path, filter_state_dict, get_module_and_attribute, staged_files, string_to_dtype

FLASHPACK_WEIGHTS_NAME = "model.flashpack"

ModuleT = TypeVar("ModuleT", bound=torch.nn.Module)
ObjT = TypeVar("ObjT")

# Keyword arguments that ask for a dtype to cast the loaded floating-point tensors to: the
# libraries' ``dtype`` / ``torch_dtype``, and the original's ``target_dtype`` (as in its
# run_benchmark.py: ``from_pretrained_flashpack(folder, device=..., target_dtype=...)``).
CAST_KWARGS = ("dtype", "torch_dtype", "target_dtype")


def split_kwargs(kwargs: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """Remove ``names`` from ``kwargs`` and return them (those present)."""
    return {name: kwargs.pop(name) for name in names if name in kwargs}


def pop_cast_dtype(kwargs: dict[str, Any]) -> Any:
    """Remove the dtype keywords (:data:`CAST_KWARGS`) from ``kwargs``; the first one given."""
    given = [value for value in split_kwargs(kwargs, CAST_KWARGS).values() if value is not None]
    return given[0] if given else None


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
    local_dir_use_symlinks: bool | str = False,
    proxies: dict[str, str] | None = None,
    resume_download: bool | None = None,
    user_agent: dict[str, str] | str | None = None,
    variant: str | None = None,
    plain_fallback: bool = False,
    whole: bool = False,
) -> Path:
    """A local directory for ``name_or_path``: itself when it is one, else the snapshot of that Hub
    repository (downloaded, or taken from the cache when offline / ``local_files_only``);
    ``hf://org/repo[@revision]`` names a Hub repository too (other URLs: ValueError).

    Only what a load reads is fetched (:func:`hub_patterns`): configs, indexes and tokenizer
    files, FlashPack files, and the libraries' safetensors weights of ``variant`` (with
    ``plain_fallback``, as a pipeline needs for components without that variant, the plain ones
    too), plus the file a ``config.json``'s ``transformers_weights`` names; never ``.bin``,
    ONNX / Flax / other variants' weights. ``whole`` fetches the whole repository (``subfolder``
    and the metadata files when given), for a load by the library's own ``from_pretrained``.

    ``local_dir_use_symlinks``, ``proxies``, ``resume_download`` and ``user_agent`` are accepted
    for compatibility with the original signatures; huggingface_hub no longer uses them.
    """
    del local_dir_use_symlinks, proxies, resume_download, user_agent
    if model_folder_url(name_or_path) is not None:
        raise ValueError(
            f"{name_or_path}: this load needs a local folder or a Hub repository; the URL of a model folder is read "
            "by the models' from_pretrained_flashpack (its config and weights, fetched by name), not here"
        )
    name_or_path, revision = hub_model_id(name_or_path, revision)  # hf://org/repo[@revision]
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if path.exists():
        raise NotADirectoryError(f"{path}: expected a model directory or a Hub repository id, got a file")
    repo_id = os.fspath(name_or_path)
    if repo_id.count("/") > 1 or repo_id.startswith((".", "/")):
        raise FileNotFoundError(f"{repo_id}: no such directory (and not a valid Hub repository id)")
    from huggingface_hub import snapshot_download

    def fetch(patterns: list[str] | None) -> Path:
        try:
            return Path(
                snapshot_download(
                    repo_id,
                    revision=revision,
                    cache_dir=None if cache_dir is None else os.fspath(cache_dir),
                    token=token,
                    local_files_only=local_files_only,
                    force_download=force_download,
                    local_dir=None if local_dir is None else os.fspath(local_dir),
                    allow_patterns=patterns,
                    library_name="flashpack",
                )
            )
        except Exception as e:  # huggingface_hub raises many types (offline, auth, missing repo, ...)
            raise OSError(
                f"{repo_id}: not a local directory, and fetching it from the Hugging Face Hub failed: {e}"
            ) from e

    if whole:
        return fetch([f"{subfolder.strip('/')}/*", *HUB_METADATA] if subfolder else None)
    folder = fetch(hub_patterns(subfolder, variant))
    plain = plain_fallback_dirs(folder, variant) if plain_fallback else []
    more = [f"{d}/{p}" if d != "." else p for d in plain for p in weight_patterns(None)]
    if more:
        folder = fetch(more)
    missing = missing_weight_files(folder, variant, plain)
    return fetch(missing) if missing else folder


# Files every load may read: configs, indexes (safetensors and FlashPack), tokenizer files.
HUB_METADATA = ("*.json", "*.txt", "*.model", "*.tiktoken", "*.md")
HUB_WEIGHT_STEMS = ("model", "diffusion_pytorch_model")


def weight_patterns(variant: str | None) -> list[str]:
    """The safetensors weights the libraries write for ``variant``, one file or shards
    (``model.safetensors``, ``model-00001-of-00002.safetensors``, ``model.fp16.safetensors``,
    ``model.fp16-00001-of-00002.safetensors``, and the diffusers names), as patterns.

    >>> weight_patterns("fp16")[-2:]
    ['*diffusion_pytorch_model.fp16.safetensors', '*diffusion_pytorch_model.fp16-*-of-*.safetensors']
    """
    tag = f".{variant}" if variant else ""
    return [p for stem in HUB_WEIGHT_STEMS for p in (f"*{stem}{tag}.safetensors", f"*{stem}{tag}-*-of-*.safetensors")]


def plain_fallback_dirs(folder: Path, variant: str | None) -> list[str]:
    """The component folders of a pipeline snapshot (those with a ``config.json``) that hold no
    weights of ``variant``: diffusers loads their plain weights instead."""
    if not variant:
        return []
    tag = f".{variant}"
    dirs = []
    for config in folder.rglob("config.json"):
        d = config.parent
        if not any(tag in p.name and p.suffix in (".safetensors", ".json", ".flashpack") for p in d.iterdir()):
            dirs.append(d.relative_to(folder).as_posix())
    return sorted(dirs)


def hub_patterns(subfolder: str | None, variant: str | None) -> list[str]:
    """The ``allow_patterns`` of a Hub snapshot for a load of ``variant`` (under ``subfolder``
    when given): the metadata files, FlashPack files, and the safetensors weights of that
    variant (:func:`weight_patterns`)."""
    patterns = [*HUB_METADATA, "*.flashpack", *weight_patterns(variant)]
    if subfolder:
        sub = subfolder.strip("/")
        return [*HUB_METADATA, *(f"{sub}/{p}" for p in patterns)]
    return patterns


def index_names(variant: str | None) -> set[str]:
    """The names of the libraries' (and FlashPack's) indexes for ``variant``."""
    tag = f".{variant}" if variant else ""
    names = {f"{stem}.{ext}.index{tag}.json" for stem in HUB_WEIGHT_STEMS for ext in ("safetensors", "flashpack")}
    return names | ({f"{stem}.safetensors{tag}.index.json" for stem in HUB_WEIGHT_STEMS} if tag else set())


def missing_weight_files(folder: Path, variant: str | None, plain_dirs: list[str]) -> list[str]:
    """Weight files a load may read that the snapshot does not hold yet: the file each
    ``config.json`` names with ``transformers_weights``, and the shards of the indexes of
    ``variant`` (of no variant in ``plain_dirs``), whatever their names, as paths relative to
    ``folder``. Names that leave their folder are left for the load to refuse."""
    ours, plain = index_names(variant), index_names(None)
    names: list[str] = []
    indexes = [
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*.json")
        if p.name in ours or (p.name in plain and p.parent.relative_to(folder).as_posix() in plain_dirs)
    ]
    for config in folder.rglob("config.json"):
        try:
            explicit = json.loads(config.read_text(encoding="utf-8")).get("transformers_weights")
        except (OSError, ValueError, AttributeError):
            continue  # the load reads it again and says what is wrong
        if isinstance(explicit, str) and ".." not in Path(explicit).parts:
            name = (config.parent / explicit).relative_to(folder).as_posix()
            names.append(name)
            if name.endswith(".json"):
                indexes.append(name)
    for index in indexes:
        try:
            shards = json.loads((folder / index).read_text(encoding="utf-8")).get("weight_map", {}).values()
        except (OSError, ValueError, AttributeError):
            continue
        parent = (folder / index).parent
        names.extend(
            (parent / shard).relative_to(folder).as_posix()
            for shard in set(shards)
            if isinstance(shard, str) and ".." not in Path(shard).parts
        )
    return sorted({n for n in names if not (folder / n).is_file()})


# Where to find a model: a folder or a Hub repository (the keyword arguments of resolve_model_dir).
HUB_OPTIONS = Options(resolve_model_dir, skip=("name_or_path", "variant", "plain_fallback", "whole"))


@contextmanager
def model_folder(
    name_or_path: str | os.PathLike[str],
    files: tuple[str, ...],
    *,
    variant: str | None = None,
    **hub: Any,
) -> Iterator[tuple[Path, Path | str]]:
    """The folder of a model (``subfolder`` of it when ``hub`` has one) as ``(local folder with
    its configs, where its weights are)``: for a folder or a Hub repository both are the local
    folder (:func:`resolve_model_dir`); for the URL of a folder (:func:`~flashpack.remote.model_folder_url`)
    its ``files`` (``config.json`` first, required; the others when present) are fetched whole
    (bounded) into a temporary folder, removed when the block ends, and the weights stay at
    the URL, to be found by name and read by the engine."""
    subfolder = hub.get("subfolder")
    url = model_folder_url(name_or_path)
    if url is None:
        folder = resolve_model_dir(name_or_path, variant=variant, **hub)
        folder = folder / subfolder if subfolder else folder
        yield folder, folder
        return
    where = join_url(url, subfolder) if subfolder else url
    with tempfile.TemporaryDirectory(prefix="flashpack-remote-") as tmp:
        for k, name in enumerate(files):
            try:
                data = read_url(join_url(where, name), SMALL_OBJECT_LIMIT)
            except FileNotFoundError:
                if k == 0:
                    raise
                continue
            (Path(tmp) / name).write_bytes(data)
        yield Path(tmp), where


def read_footer(path: str | os.PathLike[str]) -> _engine.Footer:
    """The validated footer of the FlashPack file ``path`` (or URL): read once per model load,
    then passed to :func:`build_dtype` and :func:`load_into_model`."""
    path = os.fsdecode(path)
    return flashpack_url_footer(path) if is_url(path) else _engine.read_footer(path)


def file_float_dtype(footer: _engine.Footer) -> torch.dtype | None:
    """The floating-point dtype holding most of the file's elements (None if it stores no floats)."""
    counts = [(dtype, elems) for dtype, _, _, elems in footer.blocks]
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


def build_dtype(footer: _engine.Footer) -> torch.dtype:
    """The dtype to construct a model in before filling it from the file of ``footer``: the
    file's own floating dtype, so that float buffers created in ``__init__`` match the stored
    ones."""
    return file_float_dtype(footer) or torch.get_default_dtype()


# Held while a block of default_dtype runs: one at a time in the process (nesting in one thread).
_DEFAULT_DTYPE_LOCK = threading.RLock()


@contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Tensors created without an explicit dtype (parameters, float buffers) get ``dtype``.

    torch has one default dtype per process (``torch.set_default_dtype``, which the libraries'
    own ``from_pretrained`` sets the same way): while the block runs, every thread that creates a
    floating tensor without a dtype gets ``dtype``. Blocks in different threads run one at a
    time (a lock; a thread waits for the block of another to end), so each sees its own dtype
    throughout and restores the default it found: concurrent model builds cannot leave the
    process with another build's dtype. Blocks nest within a thread.
    """
    with _DEFAULT_DTYPE_LOCK:
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
    footer: _engine.Footer,
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
    records = {rec.name for rec in footer.records}
    tied = _shared_parameter_groups(model)
    aliases = [n for g in tied if any(m in records for m in g) for n in g if n not in records]
    ignore_names = list(assign_kwargs.pop("ignore_names", None) or []) + aliases
    deserialization.assign_from_file(model, path, device=device, ignore_names=ignore_names or None, **assign_kwargs)
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


_SUBCLASSES: dict[tuple[type[Any], type[Any]], type[Any]] = {}


def flashpack_subclass(base: type[Any], mixin: type[Any]) -> type[Any]:
    """``base`` with ``mixin`` added; ``base`` itself if it already has it. The same pair always
    gives the same class. It keeps ``base``'s name, module and qualified name, so that what the
    libraries write from ``type(model).__name__`` (diffusers' ``_class_name``, transformers'
    ``architectures``) still names their own class and plain installs can read it."""
    if issubclass(base, mixin):
        return base
    key = (base, mixin)
    if key not in _SUBCLASSES:
        namespace = {"__module__": base.__module__, "__qualname__": base.__qualname__, "__doc__": base.__doc__}
        _SUBCLASSES[key] = type(base.__name__, (base, mixin), namespace)
    return _SUBCLASSES[key]


def add_mixin(obj: ObjT, mixin: type[Any]) -> ObjT:
    """Give an existing object (a model the library has just built) ``mixin``, in place, by
    moving it to :func:`flashpack_subclass` of its class (the mixins add methods, no state)."""
    if not isinstance(obj, mixin):
        obj.__class__ = flashpack_subclass(type(obj), mixin)
    return obj


def library_class(cls: type[Any], library: Any, root: type[Any]) -> type[Any] | None:
    """The first class in ``cls``'s MRO that ``library`` exports by its name and that derives from
    ``root`` (e.g. ``UNet2DModel`` for a user's ``FlashPackUNet2DModel``)."""
    for klass in cls.__mro__:
        if klass is root or not issubclass(klass, root):
            continue
        exported: object = getattr(library, klass.__name__, None)
        if exported is klass:
            return klass
    return None


def rewrite_json(path: Path, update: Callable[[dict[str, Any]], None]) -> None:
    """Apply ``update`` to a JSON file written by a library, keeping its layout (indent 2, sorted);
    the file is replaced atomically."""
    data = json.loads(path.read_text(encoding="utf-8"))
    update(data)
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


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
    pack_options: dict[str, Any] | None = None,
    is_main_process: bool = True,
    push_to_hub: bool = False,
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
    ``write_config`` write the library's config files (main process only), pack the (filtered)
    state dict as ``model.flashpack`` with ``pack_options`` (those of ``pack_to_file``) and
    optionally push the folder to the Hub.

    Every file is replaced atomically: the configs are written into a staging folder first and
    moved in only after the weights are packed (itself atomic), so a failure leaves the
    folder's previous files as they were.
    """
    folder = Path(save_directory)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder}: cannot save a model there, it is a file")
    if not is_main_process:
        return
    folder.mkdir(parents=True, exist_ok=True)
    state_dict = filter_state_dict(model.state_dict(), ignore_names, ignore_prefixes, ignore_suffixes)
    with staged_files(folder) as staging:
        write_config(staging)
        serialization.pack_to_file(state_dict, folder / FLASHPACK_WEIGHTS_NAME, **(pack_options or {}))
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
    """``save_pretrained_flashpack`` for the library mixins: one signature (the original's, plus
    every option of ``pack_to_file``), forwarded to the library's own save function named by
    ``_flashpack_save`` (which takes the keyword arguments of :func:`save_model_folder`)."""

    _flashpack_save: Callable[..., None]

    @with_options(PACK_OPTIONS, defaults={"silent": True})
    def save_pretrained_flashpack(
        self,
        save_directory: str | os.PathLike[str],
        *,
        is_main_process: bool = True,
        push_to_hub: bool = False,
        commit_message: str | None = None,
        create_pr: bool = False,
        token: str | bool | None = None,
        repo_id: str | None = None,
        private: bool | None = None,
        ignore_names: list[str] | None = None,
        ignore_prefixes: list[str] | None = None,
        ignore_suffixes: list[str] | None = None,
        flashpack_options: dict[str, Any],
        **kwargs: Any,
    ) -> None:
        """Save the config and the weights (``model.flashpack``) to ``save_directory``;
        ``target_dtype`` casts floating-point weights (and the other options of ``pack_to_file``
        apply); ``ignore_*`` leave tensors out; ``push_to_hub`` uploads the folder."""
        del kwargs  # accepted for signature compatibility with save_pretrained
        type(self)._flashpack_save(
            self,
            save_directory,
            pack_options=flashpack_options,
            is_main_process=is_main_process,
            push_to_hub=push_to_hub,
            commit_message=commit_message,
            create_pr=create_pr,
            token=token,
            repo_id=repo_id,
            private=private,
            ignore_names=ignore_names,
            ignore_prefixes=ignore_prefixes,
            ignore_suffixes=ignore_suffixes,
        )
