"""``FlashPackTransformersModelMixin``: ``save_pretrained_flashpack`` / ``from_pretrained_flashpack``
for transformers models, behaving like the library's ``save_pretrained`` / ``from_pretrained``."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
import transformers
from transformers import AutoConfig, GenerationConfig, PreTrainedConfig, PreTrainedModel

from ...mixin import FlashPackMixin
from ...options import LOAD_OPTIONS, with_options
from .._checkpoint import TRANSFORMERS_NAMES, Location, find_weights, is_flashpack, load_weights
from .._common import (
    HUB_OPTIONS,
    SavePretrainedFlashPack,
    build_dtype,
    build_on_meta,
    library_class,
    load_into_model,
    model_folder,
    pop_cast_dtype,
    read_footer,
    requested_dtype,
    save_model_folder,
)

ModelT = TypeVar("ModelT", bound=PreTrainedModel)


def save_transformers_model(model: PreTrainedModel, save_directory: str | os.PathLike[str], **options: Any) -> None:
    """Write ``config.json`` (and ``generation_config.json`` for generative models) plus
    ``model.flashpack`` into ``save_directory``, for any transformers model (options: those of
    :func:`save_model_folder`)."""
    target_dtype = (options.get("pack_options") or {}).get("target_dtype")

    def write_config(folder: Path) -> None:
        config = copy.deepcopy(model.config)
        base = library_class(type(model), transformers, PreTrainedModel) or type(model)
        config.architectures = [base.__name__]
        config.dtype = target_dtype if target_dtype is not None else model.dtype
        config.save_pretrained(folder)
        generation_config = getattr(model, "generation_config", None)
        if model.can_generate() and generation_config is not None:
            generation_config.save_pretrained(folder)

    save_model_folder(model, save_directory, write_config, "transformers", **options)


def load_transformers_model(
    build: Callable[[], ModelT],
    config: PreTrainedConfig,
    path: Location,
    *,
    device: str | torch.device | None,
    dtype: torch.dtype | str | None,
    assign_kwargs: dict[str, Any],
    folder: Path | None = None,
    where: Location | None = None,
) -> ModelT:
    """Construct with ``build`` (parameters on meta, floats in the file's dtype), fill from
    ``path`` (a file or a URL), load the generation config of ``folder`` (default: the one
    beside ``path``), cast to ``dtype`` if one was asked for; a folder at a URL (``where``) is
    the model's ``name_or_path``."""
    if folder is None:
        folder = Path(path).parent
    cast_to = requested_dtype(dtype)
    footer = read_footer(path)
    config.dtype = build_dtype(footer)
    model = build_on_meta(build, config.dtype)
    load_into_model(model, path, footer, device=device, dtype=cast_to, **assign_kwargs)
    if cast_to is not None:
        model.config.dtype = cast_to
    if model.can_generate() and (folder / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(folder)
    if isinstance(where, str):
        model.config.name_or_path = where
    return model


# What a model folder at a URL must have (config.json) and may have that a load reads.
TRANSFORMERS_FILES = ("config.json", "generation_config.json")


@contextmanager
def model_weights(
    pretrained_model_name_or_path: str | os.PathLike[str], options: dict[str, Any], variant: str | None
) -> Iterator[tuple[Path, Location, Location]]:
    """The model's folder (a local one, in the Hub repository's snapshot, or the temporary copy
    of the configs of a folder at a URL; ``subfolder`` of it when given) and its weights (a
    path, or a URL): ``model.flashpack`` when it has one, else its safetensors index or file
    for ``variant`` (``options``: the hub options), and where the folder is (the folder, or its
    URL: the model's ``name_or_path``). The temporary copy lasts for the block."""
    hub = HUB_OPTIONS.pick(options)
    with model_folder(pretrained_model_name_or_path, TRANSFORMERS_FILES, variant=variant, **hub) as (folder, where):
        yield folder, find_weights(where, TRANSFORMERS_NAMES, variant, config=folder / "config.json"), where


# Keyword arguments that transformers' ``from_pretrained`` takes for itself before it reads the
# config (the others it passes to the config, then the model's ``__init__``).
FROM_PRETRAINED_KWARGS = (
    "ignore_mismatched_sizes", "weights_only", "use_safetensors", "device_map", "max_memory", "offload_folder",
    "offload_buffers", "quantization_config", "key_mapping", "generation_config", "adapter_kwargs", "adapter_name",
    "use_kernels", "kernel_config", "allow_all_kernels", "distributed_config", "device_mesh", "tp_plan", "tp_size",
    "tqdm_class", "trust_remote_code", "disable_mmap", "fusion_config",
)  # fmt: skip


def load_transformers_checkpoint(
    from_pretrained: Callable[..., Any],
    load_config: Callable[..., Any],
    folder: Path,
    weights: Location,
    *model_args: Any,
    device: str | torch.device | None,
    dtype: torch.dtype | str | None,
    config: PreTrainedConfig | None,
    options: dict[str, Any],
    where: Location | None = None,
    **kwargs: Any,
) -> Any:
    """Load an ordinary transformers model folder (``weights``: its safetensors file or index):
    the engine reads the tensors (on ``device``), and transformers' own
    ``from_pretrained(None, config=..., state_dict=...)`` builds the model on the meta device and
    fills it from them. So everything the library does while loading applies as it would:
    ``dtype`` ("auto" by default) and ``_keep_in_fp32_modules``, its weight conversions (renamed
    keys, per-expert MoE weights fused at load), tied weights, buffers and missing weights
    initialised, missing / unexpected keys logged.

    ``load_config`` reads the folder's config (the rest of ``kwargs`` overriding its values, then
    going to the model's ``__init__``, as with ``from_pretrained``); ``generation_config.json``
    is read when there is one; ``where`` (default ``folder``) is the model's ``name_or_path``.
    ``options`` are the load options (see :func:`load_weights`):
    ``strict=True`` turns missing, unexpected or mismatched keys into an error; a weight
    conversion that the library reports as failed always is one."""
    library_kwargs = {name: kwargs.pop(name) for name in FROM_PRETRAINED_KWARGS if name in kwargs}
    want_info = kwargs.pop("output_loading_info", False)
    if config is None:
        config, kwargs = load_config(folder, return_unused_kwargs=True, **kwargs)
    if "generation_config" not in library_kwargs and (folder / "generation_config.json").is_file():
        library_kwargs["generation_config"] = GenerationConfig.from_pretrained(folder)
    if device is not None and torch.device(device).type != "cpu":
        if not transformers.utils.is_accelerate_available():
            raise ValueError(
                f"{weights}: loading onto {device} goes through transformers' device_map, which needs accelerate "
                "(pip install accelerate), as from_pretrained(device_map=...) does"
            )
        library_kwargs.setdefault("device_map", {"": torch.device(device)})
    if dtype is not None:
        library_kwargs["dtype"] = dtype
    state_dict = load_weights(weights, device, options)
    try:
        model, info = from_pretrained(
            None,
            *model_args,
            config=config,
            state_dict=state_dict,
            output_loading_info=True,
            **library_kwargs,
            **kwargs,
        )
    except RuntimeError as e:  # e.g. a weight conversion that failed (its report, logged above, names the keys)
        raise RuntimeError(f"{weights}: transformers could not load this checkpoint: {e}") from e
    model.config.name_or_path = os.fspath(where if where is not None else folder)
    problems = {what: info.get(what) for what in ("conversion_errors", "error_msgs") if info.get(what)}
    if options.get("strict"):
        for what in ("missing_keys", "unexpected_keys", "mismatched_keys"):
            if info.get(what):
                problems[what] = info[what]
    if problems:
        details = "; ".join(f"{what}: {sorted(map(str, found))}" for what, found in problems.items())
        raise ValueError(f"{weights}: transformers could not load every weight into {type(model).__name__}: {details}")
    return (model, info) if want_info else model


class FlashPackTransformersModelMixin(PreTrainedModel, SavePretrainedFlashPack, FlashPackMixin):
    """Mix into a transformers model class: ``class FlashPackBertModel(BertModel,
    FlashPackTransformersModelMixin)``."""

    flashpack_init_method: ClassVar[str | None] = "from_config"

    _flashpack_save = staticmethod(save_transformers_model)

    @classmethod
    @with_options(HUB_OPTIONS, LOAD_OPTIONS)
    def from_pretrained_flashpack(
        cls,
        pretrained_model_name_or_path: str | os.PathLike[str],
        device: str | torch.device | None = None,
        *model_args: Any,
        config: PreTrainedConfig | None = None,
        flashpack_options: dict[str, Any],
        **kwargs: Any,
    ) -> Any:
        """Load a model from a directory, a Hub id or the URL of a folder (``https://``,
        ``s3://``: its configs fetched by name, its weights read from the URL by the engine):
        one saved with ``save_pretrained_flashpack``
        (``model.flashpack``, which wins when the folder has one), or an ordinary transformers
        folder (``model.safetensors``, sharded with ``model.safetensors.index.json``, or those of
        ``variant``), read through the engine (see :func:`load_transformers_checkpoint`).

        From ``model.flashpack``: builds the model from its config with parameters on the meta
        device, assigns the file's tensors (on ``device``: CPU by default, CUDA when asked), keeps
        tied weights tied, initialises non-persistent buffers as the model's ``__init__`` does,
        returns it in eval mode; ``dtype`` / ``torch_dtype`` / ``target_dtype`` cast
        floating-point tensors after loading.
        Hub arguments (``subfolder``, ``revision``, ...) and those of ``assign_from_file``
        (``strict``, ``ignore_*``, ``eager``, ``verify``, ...) are accepted, the rest go to the
        config (as with ``from_pretrained``).
        """
        dtype = pop_cast_dtype(kwargs)
        config_class = cls.config_class if cls.config_class is not PreTrainedConfig else None
        loader = config_class or AutoConfig
        variant = kwargs.pop("variant", None)
        with model_weights(pretrained_model_name_or_path, flashpack_options, variant) as (folder, path, where):
            if not is_flashpack(path):
                return load_transformers_checkpoint(
                    cls.from_pretrained, loader.from_pretrained, folder, path, *model_args, device=device, dtype=dtype,
                    config=config, options=flashpack_options, where=where, **kwargs,
                )  # fmt: skip
            if config is None:
                config, kwargs = loader.from_pretrained(folder, return_unused_kwargs=True, **kwargs)
            return load_transformers_model(
                lambda: cls(config, *model_args, **kwargs),
                config,
                path,
                device=device,
                dtype=dtype,
                assign_kwargs=LOAD_OPTIONS.pick(flashpack_options),
                folder=folder,
                where=where,
            )
