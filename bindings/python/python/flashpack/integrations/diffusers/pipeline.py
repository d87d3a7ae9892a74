"""``FlashPackDiffusionPipeline``: save and load whole diffusers pipelines whose model components
are FlashPack models, the other components (schedulers, tokenizers, plain models) going through
their own ``save_pretrained`` / ``from_pretrained``.

Built on diffusers' public pipeline API only: ``components``, ``save_config``,
``from_pretrained(folder, **already_loaded_components)``.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import os
import types
import typing
import warnings
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import DiffusionPipeline, ModelMixin

from ...options import LOAD_OPTIONS, OPTION, PACK_OPTIONS, with_options
from ...remote import model_folder_url
from .._checkpoint import DIFFUSERS_NAMES, TRANSFORMERS_NAMES, find_weights, is_flashpack
from .._common import (
    HUB_OPTIONS,
    add_mixin,
    flashpack_subclass,
    library_class,
    pop_cast_dtype,
    push_folder,
    resolve_model_dir,
    rewrite_json,
)
from .model import FlashPackDiffusersModelMixin

try:
    import transformers

    from ..transformers import FlashPackTransformersModelMixin

    _FLASHPACK_MODEL_TYPES: tuple[type[Any], ...] = (FlashPackDiffusersModelMixin, FlashPackTransformersModelMixin)
except ImportError:  # transformers is optional
    transformers = None  # type: ignore[assignment]  # None: the optional module is not installed
    _FLASHPACK_MODEL_TYPES = (FlashPackDiffusersModelMixin,)

DTypeArg = torch.dtype | dict[str, torch.dtype] | None
# Keyword arguments of a pipeline's from_pretrained that its components' from_pretrained take too.
_SHARED_LOADING_KWARGS = (
    "revision", "cache_dir", "token", "local_files_only", "force_download", "proxies", "variant", "use_safetensors",
)  # fmt: skip


def with_flashpack_mixin(obj: Any) -> Any:
    """``obj`` (changed in place) with the FlashPack mixin of its kind: diffusers models get
    ``FlashPackDiffusersModelMixin``, transformers models ``FlashPackTransformersModelMixin``,
    pipelines ``FlashPackDiffusionPipeline``; anything else (schedulers, tokenizers, the
    ``(model, info)`` tuples of ``output_loading_info``) is returned as it is."""
    if isinstance(obj, ModelMixin):
        return add_mixin(obj, FlashPackDiffusersModelMixin)
    if transformers is not None and isinstance(obj, transformers.PreTrainedModel):
        return add_mixin(obj, FlashPackTransformersModelMixin)
    if isinstance(obj, DiffusionPipeline):
        return add_mixin(obj, FlashPackDiffusionPipeline)
    if isinstance(obj, tuple) and obj:
        return (with_flashpack_mixin(obj[0]), *obj[1:])
    return obj


def _for_component(value: Any, name: str, default: Any = None) -> Any:
    """A per-component setting: the dict's entry for ``name`` (else its "default", else
    ``default``), or the value itself."""
    if isinstance(value, dict):
        return value.get(name, value.get("default", default))
    return value


def _component_options(options: dict[str, Any], names: Any, component: str) -> dict[str, Any]:
    """The options (of the set ``names``) for one component: dict values are per component."""
    return {
        key: _for_component(value, component, names.parameters[key].default)
        for key, value in options.items()
        if key in names
    }


def _library_tuple(component: Any) -> list[str] | None:
    """``[library, class]`` naming the library class of a FlashPack model component, so that the
    saved ``model_index.json`` does not depend on the module that defined the mixed class."""
    if isinstance(component, FlashPackDiffusersModelMixin):
        base = library_class(type(component), diffusers, ModelMixin)
        return ["diffusers", base.__name__] if base is not None else None
    if transformers is not None and isinstance(component, transformers.PreTrainedModel):
        base = library_class(type(component), transformers, transformers.PreTrainedModel)
        return ["transformers", base.__name__] if base is not None else None
    return None


def _save_component(component: Any, folder: Path, name: str, options: dict[str, Any]) -> bool:
    """Save a non-FlashPack component with its own ``save_pretrained``; False if it has none."""
    save = getattr(component, "save_pretrained", None)
    if save is None:
        return False
    accepted = inspect.signature(save).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    kwargs = {k: v for k, v in options.items() if v is not None and (k in accepted or takes_any)}
    save(os.fspath(folder / name), **kwargs)
    return True


def _flashpack_hint(annotation: Any) -> type[Any] | None:
    """The FlashPack model class named by a pipeline ``__init__`` annotation (``X`` or ``X | None``)."""
    candidates = (
        typing.get_args(annotation)
        if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union
        else (annotation,)
    )
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, _FLASHPACK_MODEL_TYPES):
            return candidate
    return None


def _flashpack_components(pipeline_class: type[Any]) -> dict[str, type[Any]]:
    """Components whose ``__init__`` annotation names a FlashPack model class."""
    try:
        hints = typing.get_type_hints(pipeline_class.__init__)
    except Exception:  # noqa: BLE001 - an unresolvable string annotation raises anything: nothing to learn from it
        return {}
    found = {name: _flashpack_hint(annotation) for name, annotation in hints.items()}
    return {name: cls for name, cls in found.items() if cls is not None}


def _declared_plain_components(pipeline_class: type[Any]) -> dict[str, type[Any]]:
    """Components that a pipeline class's own ``__init__`` (a user's, not a library pipeline's)
    annotates with a plain diffusers or transformers model class: loaded through the engine from
    safetensors all the same, but as that class."""
    if "__init__" not in vars(pipeline_class):
        return {}
    try:
        hints = typing.get_type_hints(pipeline_class.__init__)
    except Exception:  # noqa: BLE001 - an unresolvable string annotation raises anything: nothing to learn from it
        return {}
    model_types = (ModelMixin, transformers.PreTrainedModel) if transformers is not None else (ModelMixin,)
    return {
        name: hint
        for name, hint in hints.items()
        if isinstance(hint, type) and issubclass(hint, model_types) and not issubclass(hint, _FLASHPACK_MODEL_TYPES)
    }


def _mixin_loader(model_class: type[Any]) -> Any:
    """The function behind the matching mixin's ``from_pretrained_flashpack``, to call with a
    plain ``model_class`` as its ``cls`` (the loaders need only the library's class methods)."""
    mixin = FlashPackDiffusersModelMixin if issubclass(model_class, ModelMixin) else FlashPackTransformersModelMixin
    return mixin.__dict__["from_pretrained_flashpack"].__func__


def _component_class(library: str, class_name: str, where: Path) -> type[Any]:
    """The class ``model_index.json`` names for a component, with the FlashPack mixin added."""
    if library == "transformers":
        if transformers is None:
            raise ImportError(f"{where}: the component is a transformers model; install transformers")
        cls = getattr(transformers, class_name, None)
    elif library == "diffusers":
        cls = getattr(diffusers, class_name, None)
    elif hasattr(diffusers.pipelines, library):
        cls = getattr(getattr(diffusers.pipelines, library), class_name, None)
    else:
        cls = getattr(importlib.import_module(library), class_name, None)
    if isinstance(cls, type) and issubclass(cls, _FLASHPACK_MODEL_TYPES):
        return cls
    if isinstance(cls, type) and issubclass(cls, ModelMixin):
        return flashpack_subclass(cls, FlashPackDiffusersModelMixin)
    if transformers is not None and isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
        return flashpack_subclass(cls, FlashPackTransformersModelMixin)
    raise ValueError(
        f"{where}: has model weights but {library}.{class_name} is not a diffusers or transformers model class"
    )


class FlashPackDiffusionPipeline(DiffusionPipeline):
    """Mix into a pipeline class (``class FlashPackMyPipeline(MyPipeline, FlashPackDiffusionPipeline)``),
    or call ``FlashPackDiffusionPipeline.from_pretrained_flashpack`` directly: the pipeline class
    then comes from the folder's ``model_index.json``."""

    @with_options(PACK_OPTIONS, defaults={"silent": True})
    def save_pretrained_flashpack(
        self,
        save_directory: str | os.PathLike[str],
        safe_serialization: bool = True,
        variant: str | None = None,
        max_shard_size: int | str | None = None,
        push_to_hub: bool = False,
        commit_message: str | None = None,
        create_pr: bool = False,
        token: str | bool | None = None,
        repo_id: str | None = None,
        private: bool | None = None,
        is_main_process: bool = True,
        align_bytes: int = OPTION,
        silent: bool = OPTION,
        num_workers: int = OPTION,
        target_dtype: DTypeArg = OPTION,
        *,
        flashpack_options: dict[str, Any],
        **kwargs: Any,
    ) -> None:
        """Save every component in its own subfolder plus ``model_index.json``.

        FlashPack model components are written with ``save_pretrained_flashpack`` (config +
        ``model.flashpack``, with the options of ``pack_to_file``; each may be a dict per
        component name, with an optional "default", e.g. ``target_dtype={"unet": torch.bfloat16}``);
        the others with their own ``save_pretrained`` (``safe_serialization``, ``variant``,
        ``max_shard_size`` apply to them).
        """
        del kwargs  # accepted for signature compatibility with save_pretrained
        folder = Path(save_directory)
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(f"{folder}: cannot save a pipeline there, it is a file")
        folder.mkdir(parents=True, exist_ok=True)
        index_entries: dict[str, list[str | None]] = {}
        options = {"safe_serialization": safe_serialization, "variant": variant, "max_shard_size": max_shard_size}
        for name, component in self.components.items():
            if component is None:
                continue
            if isinstance(component, _FLASHPACK_MODEL_TYPES):
                component.save_pretrained_flashpack(
                    folder / name,
                    is_main_process=is_main_process,
                    **_component_options(flashpack_options, PACK_OPTIONS, name),
                )
                entry = _library_tuple(component)
                if entry is not None:
                    index_entries[name] = list(entry)
            elif not is_main_process:
                continue
            elif not _save_component(component, folder, name, options):
                warnings.warn(
                    f"pipeline component {name!r} ({type(component).__name__}) has no save_pretrained; not saved",
                    stacklevel=2,
                )
                index_entries[name] = [None, None]
        if not is_main_process:
            return
        self.save_config(folder)
        base = library_class(type(self), diffusers, DiffusionPipeline)

        def update(index: dict[str, Any]) -> None:
            index.update(index_entries)
            if base is not None:
                index["_class_name"] = base.__name__

        rewrite_json(folder / self.config_name, update)
        if push_to_hub:
            push_folder(
                folder,
                repo_id,
                token=token,
                private=private,
                commit_message=commit_message,
                create_pr=create_pr,
                library_name="diffusers",
            )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike[str], **kwargs: Any) -> Any:
        """diffusers' ``from_pretrained`` (ordinary weights), except that components annotated
        with a FlashPack model class in the pipeline's ``__init__`` are loaded as that class,
        ready for ``save_pretrained_flashpack``."""
        torch_dtype = kwargs.get("torch_dtype", kwargs.get("dtype"))
        shared = {k: kwargs[k] for k in _SHARED_LOADING_KWARGS if k in kwargs}
        local = Path(pretrained_model_name_or_path)
        for name, component_cls in _flashpack_components(cls).items():
            if name in kwargs or (local.is_dir() and not (local / name).is_dir()):
                continue
            dtype = _for_component(torch_dtype, name)
            options = shared if dtype is None else {**shared, "dtype": dtype}
            kwargs[name] = component_cls.from_pretrained(pretrained_model_name_or_path, subfolder=name, **options)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @classmethod
    @with_options(HUB_OPTIONS, LOAD_OPTIONS)
    def from_pretrained_flashpack(
        cls,
        pretrained_model_name_or_path: str | os.PathLike[str],
        device: str | torch.device | None = None,
        *,
        flashpack_options: dict[str, Any],
        **kwargs: Any,
    ) -> Any:
        """Load a pipeline from a directory or Hub id: one saved with ``save_pretrained_flashpack``,
        or an ordinary diffusers pipeline folder.

        Each model component (a folder holding ``model.flashpack``, or its library's safetensors
        weights, single, sharded or of ``variant``) is loaded with its class's
        ``from_pretrained_flashpack`` (through the engine, straight onto ``device``); the other
        components and the pipeline itself come from diffusers' ``from_pretrained``, which
        receives those models already loaded. The options of ``assign_from_file`` and ``dtype`` /
        ``torch_dtype`` / ``target_dtype`` apply to the FlashPack components (each a value, or a dict per
        component with an optional "default"); the rest go to ``from_pretrained``. With
        ``device`` the whole pipeline is moved there.
        """
        if model_folder_url(pretrained_model_name_or_path) is not None:
            raise ValueError(
                f"{pretrained_model_name_or_path}: a pipeline cannot be loaded from a URL: diffusers reads its other "
                "components (scheduler, tokenizer, ...) from a local folder, and a URL has no listing to fetch them "
                "by; download the pipeline folder, or load each model component from its folder URL with "
                "from_pretrained_flashpack(url, subfolder=...) and pass it to the pipeline's from_pretrained"
            )
        torch_dtype = pop_cast_dtype(kwargs)
        variant = kwargs.get("variant")
        hub = HUB_OPTIONS.pick(flashpack_options)
        folder = resolve_model_dir(pretrained_model_name_or_path, variant=variant, plain_fallback=True, **hub)
        index_path = folder / "model_index.json"
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise OSError(f"{index_path}: cannot read the pipeline index: {e}") from e

        pipeline_class = _pipeline_class(cls, index, index_path)
        hints = _flashpack_components(pipeline_class)
        plain = _declared_plain_components(pipeline_class)
        loaded: dict[str, Any] = {}
        for name, entry in index.items():
            if name.startswith("_") or name in kwargs or not isinstance(entry, list) or entry[0] is None:
                continue
            component_dir = folder / name
            names = TRANSFORMERS_NAMES if entry[0] == "transformers" else DIFFUSERS_NAMES
            try:
                weights = find_weights(component_dir, names, variant)
            except FileNotFoundError:  # no weights of its own (a scheduler, a tokenizer, ...)
                continue
            component_cls = hints.get(name) or _component_class(entry[0], entry[1], component_dir)
            load = component_cls.from_pretrained_flashpack
            if name in plain and not is_flashpack(weights):
                load = functools.partial(_mixin_loader(plain[name]), plain[name])
            loaded[name] = load(
                component_dir,
                device=device,
                dtype=_for_component(torch_dtype, name),
                variant=variant,
                **_component_options(flashpack_options, LOAD_OPTIONS, name),
            )
        if torch_dtype is not None:
            kwargs["dtype"] = torch_dtype
        pipeline = pipeline_class.from_pretrained(os.fspath(folder), **loaded, **kwargs)
        if device is not None:
            pipeline.to(device)
        return pipeline


def _pipeline_class(cls: type[Any], index: dict[str, Any], index_path: Path) -> type[Any]:
    """``cls`` when it declares its components; for ``FlashPackDiffusionPipeline`` or
    ``DiffusionPipeline`` itself, the diffusers pipeline named by ``_class_name`` with the
    FlashPack mixin added."""
    if cls.__init__ is not DiffusionPipeline.__init__:
        return cls
    name = index.get("_class_name")
    base = getattr(diffusers, name, None) if isinstance(name, str) else None
    if not (isinstance(base, type) and issubclass(base, DiffusionPipeline)):
        raise ValueError(
            f"{index_path}: _class_name {name!r} is not a diffusers pipeline; "
            "call from_pretrained_flashpack on your pipeline class instead"
        )
    return flashpack_subclass(base, FlashPackDiffusionPipeline)
