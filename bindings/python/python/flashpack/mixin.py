"""``FlashPackMixin``: ``save_flashpack`` / ``from_flashpack`` for any ``nn.Module``."""

from __future__ import annotations

import inspect
import itertools
import os
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import torch

from . import deserialization, serialization
from .deserialization import assign_from_file as assign_from_file  # re-export: diffusers calls it from here
from .options import LOAD_OPTIONS, OPTION, PACK_OPTIONS, with_options

# parameters_on_meta: the threads inside it (a depth per thread), and the patch of
# `torch.nn.Module.register_parameter` installed while any thread is.
_on_meta = threading.local()
_patch_lock = threading.Lock()
_patch_users = 0
_unpatched: Callable[..., None] = torch.nn.Module.register_parameter  # what the patch calls


def _register_parameter(module: torch.nn.Module, name: str, param: torch.nn.Parameter | None) -> None:
    """``register_parameter`` while :func:`parameters_on_meta` is active in some thread: on the
    meta device in the threads inside it, unchanged in the others."""
    if getattr(_on_meta, "depth", 0) and param is not None and not param.is_meta:
        param = type(param)(param.detach().to("meta"), requires_grad=param.requires_grad)
    _unpatched(module, name, param)


@contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Construct modules with their parameters on the meta device (no memory, no init cost).

    Buffers stay real, so values computed in ``__init__`` (e.g. non-persistent rotary tables that
    are never saved) survive; only parameters, which the file replaces, are skipped.

    Thread-safe: only modules constructed by the thread inside the block get meta parameters.
    The block patches ``torch.nn.Module.register_parameter`` (one process-wide patch, installed
    when the first thread enters and removed when the last one leaves, restoring what was there
    when it was installed); in threads outside any block the patch calls that original unchanged.
    Blocks nest.
    """
    global _patch_users, _unpatched
    with _patch_lock:
        if _patch_users == 0:
            _unpatched = torch.nn.Module.register_parameter
            # The patch: a plain function in place of the method (mypy sees an unbound method's type there).
            torch.nn.Module.register_parameter = _register_parameter  # type: ignore[method-assign, assignment]  # the patch
        _patch_users += 1
    _on_meta.depth = getattr(_on_meta, "depth", 0) + 1
    try:
        yield
    finally:
        _on_meta.depth -= 1
        with _patch_lock:
            _patch_users -= 1
            if _patch_users == 0:
                # _unpatched stays set: a thread outside any block may be inside the patch still.
                torch.nn.Module.register_parameter = _unpatched  # type: ignore[method-assign]  # undoing the patch


class FlashPackMixin:
    """Adds ``save_flashpack`` and the classmethod ``from_flashpack`` to an ``nn.Module``.

    Both take the options of :func:`~flashpack.assign_from_file` / :func:`~flashpack.pack_to_file`
    (see :mod:`flashpack.options`); the class attributes below give defaults for some of them.
    """

    flashpack_coerce_dtype: ClassVar[bool] = False
    flashpack_init_method: ClassVar[str | None] = None
    flashpack_ignore_names: ClassVar[list[str] | None] = None
    flashpack_ignore_prefixes: ClassVar[list[str] | None] = None
    flashpack_ignore_suffixes: ClassVar[list[str] | None] = None

    @classmethod
    @with_options(LOAD_OPTIONS, defaults={"silent": False})
    def from_flashpack(
        cls,
        path: str | os.PathLike[str],
        *args: Any,
        device: str | torch.device | None = None,
        init_fn: Callable[..., Any] | None = None,
        flashpack_options: dict[str, Any],
        **kwargs: Any,
    ) -> Any:
        """Build the module (parameters on the meta device) and load its weights from ``path``.

        ``args`` and the ``kwargs`` the constructor (or ``init_fn``) accepts are passed to it
        (``rank``, ``local_rank`` and ``world_size`` too, when it takes them); the options of
        ``assign_from_file`` go to the load. The model is returned in eval mode.
        """
        options = dict(flashpack_options)
        if init_fn is None:
            method = cls.flashpack_init_method
            init_fn = getattr(cls, method) if method is not None and hasattr(cls, method) else cls
        accepted = inspect.signature(init_fn).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
        init_kwargs = {k: v for k, v in kwargs.items() if takes_any or k in accepted}
        for key in ("rank", "local_rank", "world_size"):
            if key in accepted:
                init_kwargs[key] = options[key]
        with parameters_on_meta():
            model: Any = init_fn(*args, **init_kwargs)  # the class's, or init_fn's, result

        for key in ("ignore_names", "ignore_prefixes", "ignore_suffixes"):
            options[key] = options[key] or getattr(cls, f"flashpack_{key}")
        options["coerce_dtype"] = options["coerce_dtype"] or cls.flashpack_coerce_dtype
        deserialization.assign_from_file(
            model, path, device=torch.device("cpu") if device is None else device, **options
        )
        if isinstance(model, torch.nn.Module):
            model.eval()
            still_meta = [n for n, t in itertools.chain(model.named_parameters(), model.named_buffers()) if t.is_meta]
            if still_meta:
                warnings.warn(
                    f"flashpack: {len(still_meta)} tensors were not in {os.fspath(path)!r} and remain on the meta "
                    f"device (using the model will fail): {still_meta}",
                    stacklevel=2,
                )
        return model

    @with_options(PACK_OPTIONS, defaults={"silent": False})
    def save_flashpack(
        self,
        destination_path: str | os.PathLike[str],
        target_dtype: torch.dtype | None = OPTION,
        name_order: list[str] | None = OPTION,
        align_bytes: int = OPTION,
        silent: bool = OPTION,
        num_workers: int = OPTION,
        *,
        flashpack_options: dict[str, Any],
    ) -> None:
        """Write this module's state dict to ``destination_path`` (options: those of ``pack_to_file``)."""
        if not isinstance(self, torch.nn.Module):
            raise TypeError(f"{type(self).__name__} must also be a torch.nn.Module to be saved")
        serialization.pack_to_file(self, destination_path, **flashpack_options)
