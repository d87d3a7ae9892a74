"""Loading FlashPack files into torch tensors and modules.

The engine opens and validates the file, then either maps it copy-on-write (lazy, the CPU
default) or fills owned memory with parallel reads (eager), with the GIL released. Here the
blocks become typed tensors (zero-copy views of that memory) and records become views of blocks.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from . import _engine, settings
from ._engine import pinned_pool_stats as pinned_pool_stats  # public here (and in flashpack)
from ._engine import release_pinned_pool as release_pinned_pool
from ._engine import resolve_device, string_to_dtype
from ._engine import set_pinned_pool_limit as set_pinned_pool_limit
from ._process_group import maybe_init_distributed
from .constants import DEFAULT_CHUNK_BYTES, DEFAULT_NUM_STREAMS
from .distributed import (
    read_flashpack_file_distributed as read_flashpack_file_distributed,  # re-exported: the original's module path
)
from .distributed import read_storage_distributed, resolve_strategy
from .loading import load_checkpoint
from .remote import flashpack_url_footer, is_url, read_flashpack_url
from .storage import (
    FlashTensorStorage,
    block_views,
    footer_metadata,
    metadata_of,
    placements,
    revert_storage,
    views,
)
from .utils import (
    get_module_and_attribute,
    human_num_elements,
    is_ignored_tensor_name,
    print_phases,
    timer,
)

PathArg = str | bytes | os.PathLike[str] | os.PathLike[bytes]


def get_flashpack_file_metadata(path: PathArg) -> dict[str, Any]:
    """The footer of a FlashPack file (or URL), validated, as a dict."""
    path = os.fsdecode(path)
    if is_url(path):
        return footer_metadata(flashpack_url_footer(path))
    return footer_metadata(_engine.read_footer(path))


def is_flashpack_file(path: PathArg) -> bool:
    """True when ``path`` is a readable, valid FlashPack file (a regular file: a FIFO or device is
    never opened for reading)."""
    try:
        _engine.read_footer(path)
    except (OSError, ValueError):
        return False
    return True


def resolve_shard_strategy(strategy: str | None = None) -> str:
    """A sharded distributed load's strategy: ``strategy``, else ``FLASHPACK_SHARD_STRATEGY``,
    else "contiguous"; ValueError for an unknown name."""
    return resolve_strategy(False, strategy)[1]


CHECKPOINT_SUFFIXES = (".json", ".safetensors", ".flashpack")


def is_checkpoint_path(path: PathArg) -> bool:
    """True when ``path`` names a checkpoint rather than one FlashPack file: an index json
    (safetensors or multi-file FlashPack), a ``.safetensors`` file, or a folder holding a
    ``.json``, ``.safetensors`` or ``.flashpack`` file. Those are read by
    :func:`flashpack.load_checkpoint`; everything else is read as a FlashPack file (so a folder
    holding none of those is an ``IsADirectoryError``, as in the original)."""
    path = os.fsdecode(path)
    if os.path.isdir(path):
        with os.scandir(path) as entries:
            return any(e.name.endswith(CHECKPOINT_SUFFIXES) for e in entries)
    return path.endswith((".json", ".safetensors"))


def _read_checkpoint(
    path: str, device: torch.device, silent: bool, eager: bool | None, verify: bool
) -> FlashTensorStorage:
    """A checkpoint (see :func:`is_checkpoint_path`) read by :func:`flashpack.load_checkpoint`,
    as one block per tensor and a footer-shaped index of them, so that everything built on
    FlashPack files (``iterate_from_flash_tensor``, ``assign_from_file``) takes it unchanged."""
    if verify:
        raise ValueError(
            f"{path}: verify=True checks a FlashPack file's checksums, and this checkpoint (a safetensors file, "
            "an index json or a folder) has none to check here; check it with `flashpack verify`, or convert "
            "it with `flashpack convert` to get checksums"
        )
    if eager is None:
        eager = settings.cpu_parallel_read()
    tensors = load_checkpoint(path, device, eager=eager, progress=not silent)
    blocks = [t.reshape(-1) for t in tensors.values()]
    records = [_engine.Record(name, list(t.shape), k, 0, t.numel()) for k, (name, t) in enumerate(tensors.items())]
    return FlashTensorStorage(blocks=blocks, records=records)


def read_flashpack_file(
    path: PathArg,
    device: str | torch.device = "cpu",
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    num_streams: int = DEFAULT_NUM_STREAMS,
    silent: bool = True,
    metadata: dict[str, Any] | None = None,
    eager: bool | None = None,
    verify: bool = False,
) -> tuple[FlashTensorStorage, dict[str, Any]]:
    """Load a file's blocks and footer.

    On CPU the default is lazy: a private copy-on-write mapping (instant; in-place writes to the
    tensors work and never reach the file). ``eager=True`` (or ``FLASHPACK_CPU_PARALLEL_READ=1``)
    reads every byte into owned memory with parallel reads before returning. On CUDA each block
    becomes one device tensor, streamed through a bounded pool of pinned buffers by several
    reader threads, each with its own stream (``eager`` does not apply). On MPS (Apple silicon)
    the file is read eagerly into host memory, then each block is copied to the device. ``verify=True`` checks
    every chunk against the file's checksums as it is read (ValueError naming the tensor on a
    mismatch, or when the file has no checksums). ``metadata`` is
    accepted for compatibility; the footer is always re-read and validated from the file.
    Ctrl-C stops an eager load between chunks (``KeyboardInterrupt``). ``path`` may be bytes.

    ``path`` may also be a checkpoint: a ``.safetensors`` file, an index json (safetensors or
    multi-file FlashPack) or a folder holding one, read by :func:`flashpack.load_checkpoint` as
    one job. The storage then has one block per tensor and the returned dict is
    ``{"format": "checkpoint", "source": path, "index": [records]}`` (records as in a footer,
    each at offset 0 of its own block); ``verify=True`` is refused (safetensors files have no
    checksums).

    ``path`` may be a URL (``https://``, ``s3://``, ...: :mod:`flashpack.remote`), of a file or
    a checkpoint: fetched with parallel ranged GETs, always eagerly on CPU.
    """
    del metadata, chunk_bytes, num_streams  # the engine validates the file's own footer and sizes its reads
    path = os.fsdecode(path)
    storage = read_storage(path, resolve_device(device, path, meta_to_cpu=True), silent, eager, verify)
    return storage, metadata_of(storage, path)


def read_storage(
    path: str, device: torch.device, silent: bool = True, eager: bool | None = None, verify: bool = False
) -> FlashTensorStorage:
    """:func:`read_flashpack_file` without the metadata dict: the storage carries the engine's
    footer and records. ``device`` is resolved (:func:`flashpack._engine.resolve_device`)."""
    if is_checkpoint_path(path):
        return _read_checkpoint(path, device, silent, eager, verify)
    if is_url(path):
        handle = _engine.open_weights(path)
        if handle.footer is None:  # a safetensors object: read as a checkpoint, as a .safetensors path is
            return _read_checkpoint(path, device, silent, eager=True, verify=verify)
        return read_flashpack_url(handle, device, silent, verify)
    if device.type == "cuda":
        return _read_to_cuda(path, device, silent, verify)
    if device.type == "mps":
        return _read_to_mps(path, device, silent, verify)
    if eager is None:
        eager = settings.cpu_parallel_read()
    payload = _engine.load_payload(path, eager=eager, progress=not silent, verify=verify)
    print_phases(payload.phases, silent)
    with timer("make_blocks", silent):
        blocks = block_views(payload, payload.footer.blocks)
    footer = payload.footer
    return FlashTensorStorage(blocks=blocks, backing=payload, footer=footer, records=footer.records)


def _read_to_cuda(path: str, device: torch.device, silent: bool, verify: bool) -> FlashTensorStorage:
    """Stream the file's blocks into one new CUDA tensor per block, through the engine's pinned
    staging buffers (host memory never holds the whole payload)."""
    with timer("read_metadata", silent):
        handle = _engine.open_file(path)
        footer = handle.footer
    with timer("alloc_device", silent):
        raw = [torch.empty(length, dtype=torch.uint8, device=device) for _, _, length, _ in footer.blocks]
    regions = [(offset, t) for (_, offset, _, _), t in zip(footer.blocks, raw, strict=True)]
    phases, _io = _engine.file_to_cuda(handle, regions, device, progress=not silent, verify=verify)
    print_phases(phases, silent)
    blocks = [t.view(string_to_dtype(dtype)) for (dtype, _, _, _), t in zip(footer.blocks, raw, strict=True)]
    return FlashTensorStorage(blocks=blocks, footer=footer, records=footer.records)


def _read_to_mps(path: str, device: torch.device, silent: bool, verify: bool) -> FlashTensorStorage:
    """Apple silicon: an eager read into host memory (the engine has no Metal sink), then one
    copy per block onto the MPS device."""
    host = read_storage(path, torch.device("cpu"), silent=silent, eager=True, verify=verify)
    with timer("copy_to_mps", silent):
        blocks = [block.to(device) for block in host.blocks]
    return FlashTensorStorage(blocks=blocks, footer=host.footer, records=host.records)


def verify_flashpack_file(path: PathArg, silent: bool = True) -> dict[str, Any]:
    """Check a file without loading it: footer, layout and every payload checksum.

    Returns ``{"tensors", "payload_len", "chunks_checked", "algorithm"}`` (``chunks_checked`` is 0
    for a file written without checksums). A corrupt file raises ValueError naming the first
    tensor in the bad chunk; an unreadable one raises OSError.

    ``path`` may be a URL (``https://``, ``s3://``, ...: :mod:`flashpack.remote`): the payload is
    fetched with parallel ranged GETs and checked as the parts arrive, never kept whole in memory
    (errors name the URL, as for :func:`read_flashpack_file`).
    """
    return _engine.verify(path, progress=not silent)


def iterate_from_flash_tensor(
    flash_tensor: FlashTensorStorage | torch.Tensor,
    metadata: dict[str, Any],
    ignore_names: list[str] | None = None,
    ignore_prefixes: list[str] | None = None,
    ignore_suffixes: list[str] | None = None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` for every record of ``metadata`` (a footer dict, as
    :func:`read_flashpack_file` returns), each a view of its block (0-dim stays 0-dim)."""
    storage = flash_tensor if isinstance(flash_tensor, FlashTensorStorage) else FlashTensorStorage([flash_tensor])
    placed = (
        (rec["name"], int(rec.get("macroblock", 0)), int(rec["offset"]), int(rec["length"]), tuple(rec["shape"]), rec)
        for rec in metadata["index"]
        if not is_ignored_tensor_name(rec["name"], ignore_names, ignore_prefixes, ignore_suffixes)
    )
    for _, name, view, _ in views(storage, placed):
        yield name, view


def revert_from_file(path: PathArg, silent: bool = True) -> dict[str, torch.Tensor]:
    """Load a FlashPack file as a CPU state dict (views of a private copy-on-write mapping)."""
    return revert_storage(read_storage(os.fsdecode(path), torch.device("cpu"), silent=silent))


def _default_device(model: torch.nn.Module) -> torch.device:
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def _buffer_value(name: str, view: torch.Tensor, model_dtype: torch.dtype, coerce_dtype: bool) -> torch.Tensor:
    """The value a buffer of ``model_dtype`` gets from a file tensor of another dtype."""
    if coerce_dtype:
        return view.to(model_dtype)
    if view.is_floating_point() and model_dtype.is_floating_point:
        return view  # like parameters: the file's floating dtype
    raise TypeError(
        f"dtype mismatch for buffer '{name}': model {model_dtype} vs file {view.dtype} "
        "(only floating-point buffers take the file's dtype; pass coerce_dtype=True to convert)"
    )


def assign_from_file(
    model: torch.nn.Module,
    path: PathArg,
    device: str | torch.device | None = None,
    strict: bool | None = None,
    strict_params: bool = True,
    strict_buffers: bool = False,
    keep_flash_ref_on_model: bool = False,
    silent: bool = True,
    num_streams: int = DEFAULT_NUM_STREAMS,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ignore_names: list[str] | None = None,
    ignore_prefixes: list[str] | None = None,
    ignore_suffixes: list[str] | None = None,
    use_distributed_loading: bool = False,
    distributed_sharded: bool = False,
    distributed_shard_strategy: str | None = None,
    rank: int | None = None,
    local_rank: int | None = None,
    world_size: int | None = None,
    coerce_dtype: bool = False,
    eager: bool | None = None,
    verify: bool = False,
) -> None:
    """Replace a module's parameters and buffers with tensors loaded from ``path``.

    Parameters become ``nn.Parameter`` views of the loaded blocks (tied weights come back as one
    shared Parameter); shapes must match. Parameters and floating-point buffers take the file's
    dtype (a file packed with ``target_dtype`` gives the module ``module.to(target_dtype)`` would);
    integer, bool and complex buffers must match the model's dtype. ``coerce_dtype=True``
    converts every buffer to the model's dtype instead.
    ``strict`` overrides both ``strict_params`` and ``strict_buffers``: with strictness on, a
    record naming nothing in the model, or a model tensor missing from the file, is an error.

    ``path`` may also be a checkpoint (a ``.safetensors`` file, a safetensors or multi-file
    FlashPack index json, or a folder holding one), read by :func:`flashpack.load_checkpoint`
    with the same rules; each tensor is its own Parameter (safetensors files hold no tied
    storage), ``verify`` and ``use_distributed_loading`` are refused for them.
    """
    path_str = os.fsdecode(path)
    device = resolve_device(device if device is not None else _default_device(model), path_str, meta_to_cpu=True)
    if use_distributed_loading:
        storage = _read_distributed(
            path_str,
            device,
            silent,
            verify,
            distributed_sharded,
            distributed_shard_strategy,
            rank,
            local_rank,
            world_size,
        )
    else:
        del num_streams, chunk_bytes  # the engine sizes its reads
        storage = read_storage(path_str, device, silent=silent, eager=eager, verify=verify)
    if keep_flash_ref_on_model:
        # torch types Module.__setattr__'s value as Tensor | Module; a Module takes any attribute.
        model._flash_shared_storage = storage  # type: ignore[assignment]  # plain attribute (see above)
        model._flash_shared_storage_meta = metadata_of(storage, path_str)  # type: ignore[assignment]  # same

    filters = (ignore_names, ignore_prefixes, ignore_suffixes)
    with timer("build_lookups", silent):
        params = dict(model.named_parameters(remove_duplicate=False))
        buffers = dict(model.named_buffers(remove_duplicate=False))
    with timer("assign", silent):
        try:
            done = _assign_tensors(model, storage, params, buffers, filters, coerce_dtype)
        except (TypeError, ValueError, RuntimeError, AttributeError) as e:
            raise ValueError(f"{path_str}: error while assigning to {type(model).__name__}: {e}") from e
    missing_params = [n for n in params if n not in done.params and not is_ignored_tensor_name(n, *filters)]
    missing_buffers = [n for n in buffers if n not in done.buffers and not is_ignored_tensor_name(n, *filters)]
    problems = _incompleteness(
        done,
        missing_params if (strict_params if strict is None else strict) else [],
        missing_buffers if (strict_buffers if strict is None else strict) else [],
        strict=(strict_params or strict_buffers) if strict is None else strict,
    )
    if problems:
        raise ValueError(f"{path_str}: cannot load into {type(model).__name__}: " + "; ".join(problems))
    if not silent:
        _print_summary(done, missing_params, missing_buffers)


def _read_distributed(
    path: str,
    device: torch.device,
    silent: bool,
    verify: bool,
    sharded: bool,
    shard_strategy: str | None,
    rank: int | None,
    local_rank: int | None,
    world_size: int | None,
) -> FlashTensorStorage:
    """``assign_from_file(use_distributed_loading=True)``'s read: join (or form) the process
    group, then read the FlashPack file once for every rank."""
    if is_checkpoint_path(path) or is_url(path):
        raise ValueError(
            f"{path}: use_distributed_loading is supported for FlashPack files only here (local ones); use "
            "flashpack.load_checkpoint(..., use_distributed_loading=True) for this checkpoint or URL, or convert it "
            "with `flashpack convert`"
        )
    maybe_init_distributed(rank=rank, local_rank=local_rank, world_size=world_size, device=device)
    return read_storage_distributed(
        path, device=device, silent=silent, sharded=sharded, shard_strategy=shard_strategy, verify=verify
    )


@dataclass
class _Assigned:
    """What :func:`_assign_tensors` did."""

    params: set[str] = field(default_factory=set)
    buffers: set[str] = field(default_factory=set)
    # File tensors that name nothing in the model.
    discarded: list[str] = field(default_factory=list)
    elements: int = 0


def _assign_tensors(
    model: torch.nn.Module,
    storage: FlashTensorStorage,
    params: dict[str, torch.nn.Parameter],
    buffers: Mapping[str, torch.Tensor | None],
    filters: tuple[list[str] | None, list[str] | None, list[str] | None],
    coerce_dtype: bool,
) -> _Assigned:
    """Point the model's parameters and buffers at the views of ``storage`` (tied records share
    one Parameter)."""
    done = _Assigned()
    # Parameters by the record that first holds their bytes.
    shared: dict[int, torch.nn.Parameter] = {}
    for index, name, view, rec in views(storage, placements(storage.records or []), *filters):
        done.elements += view.numel()
        if name in params:
            holder = index if rec.tied_to is None else rec.tied_to
            _assign_parameter(model, name, view, params[name], holder, shared)
            done.params.add(name)
        elif name in buffers:
            _assign_buffer(model, name, view, buffers[name], coerce_dtype)
            done.buffers.add(name)
        else:
            done.discarded.append(name)
    return done


def _assign_parameter(
    model: torch.nn.Module,
    name: str,
    view: torch.Tensor,
    old: torch.nn.Parameter,
    holder: int,
    shared: dict[int, torch.nn.Parameter],
) -> None:
    """Set parameter ``name`` to a Parameter viewing ``view``: the one already made for the
    record ``holder`` when it has the same shape (tied weights), else a new one."""
    if tuple(old.shape) != tuple(view.shape):
        raise ValueError(f"shape mismatch for parameter '{name}': model {tuple(old.shape)} vs file {tuple(view.shape)}")
    new = shared.get(holder) if view.numel() else None
    if new is None or new.shape != view.shape:
        new = torch.nn.Parameter(view, requires_grad=old.requires_grad)
        shared[holder] = new
    module, attr = get_module_and_attribute(model, name)
    setattr(module, attr, new)


def _assign_buffer(
    model: torch.nn.Module, name: str, view: torch.Tensor, old: torch.Tensor | None, coerce_dtype: bool
) -> None:
    """Set buffer ``name`` to ``view`` (converted as :func:`_buffer_value` says when the dtypes differ)."""
    if old is not None and tuple(old.shape) != tuple(view.shape):
        raise ValueError(f"shape mismatch for buffer '{name}': model {tuple(old.shape)} vs file {tuple(view.shape)}")
    if old is not None and old.dtype != view.dtype:
        view = _buffer_value(name, view, old.dtype, coerce_dtype)
    module, attr = get_module_and_attribute(model, name)
    module._buffers[attr] = view


def _incompleteness(done: _Assigned, missing_params: list[str], missing_buffers: list[str], strict: bool) -> list[str]:
    """What a strict load refuses: file tensors matching nothing (when any strictness is on),
    and the missing names it is given (those of the kinds checked)."""
    if not strict:
        return []
    problems = []
    if done.discarded:
        problems.append(f"{len(done.discarded)} tensors in the file match nothing in the model: {done.discarded}")
    if missing_params:
        problems.append(f"missing {len(missing_params)} parameters: {missing_params}")
    if missing_buffers:
        problems.append(f"missing {len(missing_buffers)} buffers: {missing_buffers}")
    return problems


def _print_summary(done: _Assigned, missing_params: list[str], missing_buffers: list[str]) -> None:
    if missing_params:
        print(f"Ignoring {len(missing_params)} parameters: {missing_params}")
    if missing_buffers:
        print(f"Ignoring {len(missing_buffers)} buffers: {missing_buffers}")
    if done.discarded:
        print(f"Discarded {len(done.discarded)} names: {done.discarded}")
    print(
        f"Assigned {human_num_elements(done.elements)} total parameters to "
        f"{len(done.params)} parameters and {len(done.buffers)} buffers"
    )
