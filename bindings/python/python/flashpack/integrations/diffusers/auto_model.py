"""``AutoFlashPackModel``: load any diffusers or transformers model folder, picking the class from
its config, and give back that class with the matching FlashPack mixin added."""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any, cast

import diffusers
from diffusers import ModelMixin

from ...remote import model_folder_url
from .._common import HUB_OPTIONS, flashpack_subclass, model_folder, resolve_model_dir
from .model import FlashPackDiffusersModelMixin


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise OSError(f"{path}: cannot read the model config: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def _transformers_class(config: dict[str, Any], where: Path) -> type[Any]:
    import transformers

    from ..transformers import FlashPackTransformersModelMixin

    for name in config.get("architectures") or []:
        cls = getattr(transformers, name.removeprefix("FlashPack"), None)
        if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
            return flashpack_subclass(cls, FlashPackTransformersModelMixin)
    auto_config = transformers.AutoConfig.for_model(**config)
    try:
        # transformers annotates its lazy mappings' values as (slow, fast) pairs, the shape of its
        # tokenizer mapping; a model mapping gives the class.
        cls = cast(type[Any], transformers.MODEL_MAPPING[type(auto_config)])
    except KeyError:
        raise ValueError(f"{where}: transformers has no model class for model_type {config['model_type']!r}") from None
    return flashpack_subclass(cls, FlashPackTransformersModelMixin)


def _library_class(library: str, class_name: str, where: Path) -> type[Any]:
    if library == "transformers":
        import transformers

        from ..transformers import FlashPackTransformersModelMixin

        cls = getattr(transformers, class_name.removeprefix("FlashPack"), None)
        if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
            return flashpack_subclass(cls, FlashPackTransformersModelMixin)
    else:
        module = diffusers if library == "diffusers" else importlib.import_module(library)
        cls = getattr(module, class_name, None) or getattr(module, class_name.removeprefix("FlashPack"), None)
        if isinstance(cls, type) and issubclass(cls, ModelMixin):
            return flashpack_subclass(cls, FlashPackDiffusersModelMixin)
    raise ValueError(f"{where}: {library}.{class_name} is not a diffusers or transformers model class")


def model_class_for(folder: Path, subfolder: str | None) -> type[Any]:
    """The FlashPack model class for a model folder: from ``model_index.json`` (for a pipeline
    component) or from the component's ``config.json`` (``_class_name`` or ``model_type``)."""
    index = folder / "model_index.json"
    if subfolder and index.is_file():
        entry = _read_json(index).get(subfolder)
        if isinstance(entry, list) and len(entry) == 2 and entry[0] is not None:
            return _library_class(entry[0], entry[1], index)
    config_path = folder / subfolder / "config.json" if subfolder else folder / "config.json"
    config = _read_json(config_path)
    if "_class_name" in config:
        return _library_class("diffusers", config["_class_name"], config_path)
    if "model_type" in config:
        return _transformers_class(config, config_path)
    raise ValueError(f"{config_path}: names neither a diffusers class (_class_name) nor a transformers model_type")


class AutoFlashPackModel:
    """``AutoFlashPackModel.from_pretrained_flashpack(folder_or_repo_id, subfolder=...)`` loads a
    folder written by ``save_pretrained_flashpack``, or an ordinary folder's safetensors weights
    through the engine (see the mixins' ``from_pretrained_flashpack``); ``from_pretrained`` loads
    ordinary weights with the library's own loader. Either way the model's class has the
    FlashPack mixin, so it can be saved with ``save_pretrained_flashpack``."""

    config_name = "config.json"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise OSError(
            "AutoFlashPackModel is not instantiated: use AutoFlashPackModel.from_pretrained(...) "
            "or AutoFlashPackModel.from_pretrained_flashpack(...)"
        )

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_or_path: str | os.PathLike[str] | None = None,
        *,
        subfolder: str | None = None,
        use_flashpack: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Load a model folder (or Hub id) with the class its config names, the FlashPack
        mixin added: with ``use_flashpack`` from ``model.flashpack`` (``from_pretrained_flashpack``),
        else with the library's own ``from_pretrained``. The URL of a model folder
        (``https://``, ``s3://``) is read with ``use_flashpack`` only (its config fetched to pick
        the class, its weights read by the engine from the URL)."""
        if pretrained_model_or_path is None:
            raise TypeError("from_pretrained needs a model folder or a Hub repository id")
        hub = HUB_OPTIONS.pop(kwargs)
        url = model_folder_url(pretrained_model_or_path)
        if url is not None:
            if not use_flashpack:
                raise ValueError(
                    f"{url}: the library's own from_pretrained reads a local folder or a Hub repository; load a model "
                    "folder at a URL with from_pretrained_flashpack (or from_pretrained(..., use_flashpack=True))"
                )
            with model_folder(url, ("config.json",), subfolder=subfolder) as (config_folder, _):
                model_cls = model_class_for(config_folder, None)
            return model_cls.from_pretrained_flashpack(url, subfolder=subfolder, **kwargs)
        # The library's own from_pretrained reads the folder as it likes (.bin, other names): the whole
        # snapshot (or subfolder) for it; only what the engine reads for use_flashpack.
        folder = resolve_model_dir(
            pretrained_model_or_path, subfolder=subfolder, variant=kwargs.get("variant"), whole=not use_flashpack, **hub
        )
        model_cls = model_class_for(folder, subfolder)
        if use_flashpack:
            return model_cls.from_pretrained_flashpack(folder, subfolder=subfolder, **kwargs)
        if subfolder:
            kwargs["subfolder"] = subfolder
        return model_cls.from_pretrained(os.fspath(folder), **kwargs)

    @classmethod
    def from_pretrained_flashpack(
        cls, pretrained_model_or_path: str | os.PathLike[str] | None = None, **kwargs: Any
    ) -> Any:
        """``from_pretrained(..., use_flashpack=True)``: ``model.flashpack`` when the folder has one,
        else its safetensors weights (single, sharded, ``variant``), read through the engine."""
        return cls.from_pretrained(pretrained_model_or_path, use_flashpack=True, **kwargs)
