"""``FlashPackMixin``: ``save_flashpack`` / ``from_flashpack`` for any ``nn.Module``."""

from __future__ import annotations

import inspect
import itertools
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import torch

from .constants import DEFAULT_ALIGN_BYTES, DEFAULT_CHUNK_BYTES, DEFAULT_NUM_STREAMS, DEFAULT_NUM_WRITE_WORKERS
from .deserialization import assign_from_file
from .serialization import pack_to_file


@contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Construct modules with their parameters on the meta device (no memory, no init cost).

    Buffers stay real, so values computed in ``__init__`` (e.g. non-persistent rotary tables that
    are never saved) survive; only parameters, which the file replaces, are skipped.
    """
    register = torch.nn.Module.register_parameter

    def register_on_meta(module: torch.nn.Module, name: str, param: torch.nn.Parameter | None) -> None:
        if param is not None and not param.is_meta:
            param = type(param)(param.detach().to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    torch.nn.Module.register_parameter = register_on_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register  # type: ignore[method-assign]


class FlashPackMixin:
    """Adds ``save_flashpack`` and the classmethod ``from_flashpack`` to an ``nn.Module``."""

    flashpack_coerce_dtype: ClassVar[bool] = False
    flashpack_init_method: ClassVar[str | None] = None
    flashpack_ignore_names: ClassVar[list[str] | None] = None
    flashpack_ignore_prefixes: ClassVar[list[str] | None] = None
    flashpack_ignore_suffixes: ClassVar[list[str] | None] = None

    @classmethod
    def from_flashpack(
        cls,
        path: str,
        *args: Any,
        device: str | torch.device | None = None,
        silent: bool = False,
        strict: bool | None = None,
        strict_params: bool = True,
        strict_buffers: bool = False,
        keep_flash_ref_on_model: bool = False,
        ignore_names: list[str] | None = None,
        ignore_prefixes: list[str] | None = None,
        ignore_suffixes: list[str] | None = None,
        num_streams: int = DEFAULT_NUM_STREAMS,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        use_distributed_loading: bool = False,
        distributed_sharded: bool = False,
        distributed_shard_strategy: str | None = None,
        rank: int | None = None,
        local_rank: int | None = None,
        world_size: int | None = None,
        coerce_dtype: bool = False,
        init_fn: Callable[..., Any] | None = None,
        eager: bool | None = None,
        verify: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Build the module (parameters on the meta device) and load its weights from ``path``.

        ``args`` and the ``kwargs`` the constructor (or ``init_fn``) accepts are passed to it.
        The model is returned in eval mode.
        """
        if init_fn is None:
            method = cls.flashpack_init_method
            init_fn = getattr(cls, method) if method is not None and hasattr(cls, method) else cls
        accepted = inspect.signature(init_fn).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
        init_kwargs = {k: v for k, v in kwargs.items() if takes_any or k in accepted}
        for key, value in (("rank", rank), ("local_rank", local_rank), ("world_size", world_size)):
            if key in accepted:
                init_kwargs[key] = value
        with parameters_on_meta():
            model = init_fn(*args, **init_kwargs)

        assign_from_file(
            model,
            path,
            device=torch.device("cpu") if device is None else device,
            strict=strict,
            strict_params=strict_params,
            strict_buffers=strict_buffers,
            keep_flash_ref_on_model=keep_flash_ref_on_model,
            silent=silent,
            num_streams=num_streams,
            chunk_bytes=chunk_bytes,
            ignore_names=ignore_names or cls.flashpack_ignore_names,
            ignore_prefixes=ignore_prefixes or cls.flashpack_ignore_prefixes,
            ignore_suffixes=ignore_suffixes or cls.flashpack_ignore_suffixes,
            use_distributed_loading=use_distributed_loading,
            distributed_sharded=distributed_sharded,
            distributed_shard_strategy=distributed_shard_strategy,
            rank=rank,
            local_rank=local_rank,
            world_size=world_size,
            coerce_dtype=coerce_dtype or cls.flashpack_coerce_dtype,
            eager=eager,
            verify=verify,
        )
        if isinstance(model, torch.nn.Module):
            model.eval()
            still_meta = [n for n, t in itertools.chain(model.named_parameters(), model.named_buffers()) if t.is_meta]
            if still_meta:
                warnings.warn(
                    f"flashpack: {len(still_meta)} tensors were not in {path!r} and remain on the meta "
                    f"device (using the model will fail): {still_meta}",
                    stacklevel=2,
                )
        return model

    def save_flashpack(
        self,
        destination_path: str,
        target_dtype: torch.dtype | None = None,
        name_order: list[str] | None = None,
        align_bytes: int = DEFAULT_ALIGN_BYTES,
        silent: bool = False,
        num_workers: int = DEFAULT_NUM_WRITE_WORKERS,
        checksums: bool = True,
    ) -> None:
        """Write this module's state dict to ``destination_path``."""
        if not isinstance(self, torch.nn.Module):
            raise TypeError(f"{type(self).__name__} must also be a torch.nn.Module to be saved")
        pack_to_file(
            self,
            destination_path,
            target_dtype=target_dtype,
            name_order=name_order,
            align_bytes=align_bytes,
            silent=silent,
            num_workers=num_workers,
            checksums=checksums,
        )
