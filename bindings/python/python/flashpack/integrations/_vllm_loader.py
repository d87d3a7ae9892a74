"""The vLLM model loaders behind ``--load-format flashpack`` and ``--load-format flashpack_restart``.

Imported by :func:`flashpack.integrations.vllm.register` only, when vLLM calls it (this module
imports vLLM). See docs/serving.md for the user's view.

``flashpack``: the model folder's weights (``model.flashpack``, a multi-file FlashPack index, or
the safetensors file / shards, chosen as ``from_pretrained_flashpack`` chooses them) read by the
engine as one job (:func:`flashpack.load_checkpoint`) and handed to ``model.load_weights`` as
(name, tensor) pairs, so vLLM's own mapping (fused qkv / gate-up, tied weights, quantization,
tensor-parallel narrowing) applies. Where the tensors land first: CUDA memory through the pinned
staging pool when the model's parameters are on CUDA and there is no tensor parallelism (vLLM's
copy into the parameters is then device to device; at most ``cuda_batch_bytes`` of checkpoint at a
time), else copy-on-write CPU mappings (each rank's ``load_weights`` touches only the bytes of its
slices).

``save_restart`` (option of ``flashpack``): right after that loading pass, before vLLM's
``process_weights_after_loading`` (which on CPU repacks linear weights and empties the original
parameters), each rank writes its state dict (fused, quantized, narrowed to its slice) as one
FlashPack file with a JSON manifest. ``flashpack_restart`` checks those against the model it was
asked to build and streams them straight into the parameters; vLLM's ``process_weights_after_loading``
then runs as after any load, so the model ends in the same state as after the original load.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from vllm.config import ModelConfig
from vllm.config.load import LoadConfig
from vllm.distributed import get_pp_group, get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size
from vllm.logger import init_logger
from vllm.model_executor.model_loader import BaseModelLoader, DefaultModelLoader
from vllm.model_executor.model_loader.weight_utils import download_weights_from_hf

from .. import _engine, serialization
from .._engine import open_weights, set_pinned_pool_limit
from ..loading import entries_of, load_checkpoint, view_of
from ..settings import EnvironmentOverrides
from ..version import __version__ as flashpack_version
from ._checkpoint import TRANSFORMERS_NAMES, find_weights

# Under vLLM's logger namespace, so its handler prints these lines (in its format) as it prints its own.
logger = init_logger("vllm.model_executor.model_loader.flashpack")

# Options of --model-loader-extra-config, with their types.
_COMMON_OPTIONS: dict[str, type | tuple[type, ...]] = {
    "verify": bool,
    "io": str,
    "threads": int,
    "chunk_bytes": int,
    "pinned_pool_bytes": int,
}
_LOAD_OPTIONS: dict[str, type | tuple[type, ...]] = {
    **_COMMON_OPTIONS,
    "eager": bool,
    "device": str,
    "cuda_batch_bytes": int,
    "save_restart": str,
}
DEFAULT_CUDA_BATCH_BYTES = 2 << 30
# Files of a model folder that are weights (not copied beside a restart save).
_WEIGHT_SUFFIXES = (".safetensors", ".flashpack", ".bin", ".pt", ".pth", ".msgpack", ".h5", ".onnx", ".index.json")
RESTART_PREFIX = "flashpack-restart"
RESTART_KIND = "flashpack-vllm-restart"


def parse_options(load_config: LoadConfig, allowed: dict[str, type | tuple[type, ...]]) -> dict[str, Any]:
    """``--model-loader-extra-config`` checked: known keys, right types (a ValueError naming the
    key otherwise)."""
    extra = load_config.model_loader_extra_config or {}
    fmt = load_config.load_format
    if not isinstance(extra, dict):
        raise TypeError(f"--model-loader-extra-config for load format {fmt!r} must be a JSON object")
    unknown = sorted(set(extra) - set(allowed))
    if unknown:
        raise ValueError(
            f"--model-loader-extra-config: unknown option(s) {unknown} for load format {fmt!r} "
            f"(it takes {sorted(allowed)})"
        )
    for key, value in extra.items():
        want = allowed[key]
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            raise ValueError(
                f"--model-loader-extra-config: {key} must be a {getattr(want, '__name__', want)}, got {value!r}"
            )
    if extra.get("io", "auto") not in ("auto", "buffered", "direct"):
        raise ValueError(f"--model-loader-extra-config: io must be auto, direct or buffered, got {extra['io']!r}")
    if extra.get("device", "auto") not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--model-loader-extra-config: device must be auto, cpu or cuda, got {extra['device']!r}")
    return dict(extra)


@contextlib.contextmanager
def engine_settings(options: dict[str, Any]) -> Iterator[None]:
    """The engine's reader knobs for one load: the package reads them from the environment
    (flashpack.settings), so they are set there for the load's duration."""
    env = {
        "FLASHPACK_DIRECT_IO": None if "io" not in options else ("0" if options["io"] == "buffered" else "1"),
        "FLASHPACK_READ_THREADS": str(options["threads"]) if "threads" in options else None,
        "FLASHPACK_READ_CHUNK_BYTES": str(options["chunk_bytes"]) if "chunk_bytes" in options else None,
    }
    with EnvironmentOverrides(env):
        if "pinned_pool_bytes" in options:
            set_pinned_pool_limit(options["pinned_pool_bytes"])
        yield


def model_folder(model_config: ModelConfig, load_config: LoadConfig, patterns: list[str]) -> Path:
    """The local folder of the model: ``model_config.model`` (or ``model_weights``) when it is a
    folder, else a Hub repository downloaded by vLLM's own path (only files matching the first
    of ``patterns`` the repository has, and the index jsons)."""
    name = getattr(model_config, "model_weights", None) or model_config.model
    if os.path.isdir(name):
        return Path(name)
    if os.path.exists(name):
        raise ValueError(f"{name}: the model must be a folder (holding config.json and the weights), not a file")
    folder = download_weights_from_hf(
        name, load_config.download_dir, patterns, model_config.revision, ignore_patterns=load_config.ignore_patterns
    )
    with contextlib.suppress(Exception):  # a repository without index jsons
        download_weights_from_hf(name, load_config.download_dir, ["*.index.json"], model_config.revision)
    return Path(folder)


def verify_checkpoint(where: os.PathLike[str] | str) -> None:
    """Check every FlashPack checksum of the checkpoint's files (the engine's ``verify``; a
    ValueError naming the file and tensors on a mismatch). Safetensors files have none: refused."""
    _, handles = _engine.open_checkpoint(where)
    for h in handles:
        if h.format != "flashpack":
            raise ValueError(
                f"{h.path}: verify needs FlashPack checksums, and a safetensors file has none (convert the "
                "folder with `flashpack convert`, or load without verify)"
            )
        _engine.verify(h.path)


def parallel_layout() -> dict[str, int]:
    """This rank's place in the tensor- and pipeline-parallel layout."""
    pp = get_pp_group()
    return {
        "tensor_parallel_size": get_tensor_model_parallel_world_size(),
        "tensor_parallel_rank": get_tensor_model_parallel_rank(),
        "pipeline_parallel_size": pp.world_size,
        "pipeline_parallel_rank": pp.rank_in_group,
    }


def restart_name(layout: dict[str, int]) -> str:
    """``flashpack-restart-tp<r>of<n>-pp<r>of<n>`` (the .flashpack file and its .json manifest)."""
    return (
        f"{RESTART_PREFIX}-tp{layout['tensor_parallel_rank']}of{layout['tensor_parallel_size']}"
        f"-pp{layout['pipeline_parallel_rank']}of{layout['pipeline_parallel_size']}"
    )


def config_digest(folder: Path) -> str | None:
    config = folder / "config.json"
    return hashlib.sha256(config.read_bytes()).hexdigest() if config.is_file() else None


def identity(model_config: ModelConfig, folder: Path) -> dict[str, Any]:
    """What a restart file must match: the model (architecture, config.json), dtype,
    quantization and parallel layout."""
    return {
        "architectures": list(getattr(model_config.hf_config, "architectures", None) or []),
        "config_sha256": config_digest(folder),
        "dtype": str(model_config.dtype).removeprefix("torch."),
        "quantization": model_config.quantization,
        **parallel_layout(),
    }


def load_timing(start: float) -> None:
    logger.info("Loading weights took %.2f seconds", time.perf_counter() - start)


class FlashPackModelLoader(BaseModelLoader):  # type: ignore[misc]
    """``--load-format flashpack``: a model folder's weights through the engine, into
    ``model.load_weights``."""

    def __init__(self, load_config: LoadConfig) -> None:
        super().__init__(load_config)
        self.options = parse_options(load_config, _LOAD_OPTIONS)

    def _folder(self, model_config: ModelConfig) -> Path:
        return model_folder(model_config, self.load_config, ["*.flashpack", "*.safetensors"])

    def download_model(self, model_config: ModelConfig) -> None:
        self._folder(model_config)

    def _staging_device(self, model: nn.Module) -> torch.device:
        """Where the checkpoint's tensors land before ``load_weights`` copies them."""
        param = next(model.parameters(), None)
        on_cuda = param is not None and param.device.type == "cuda"
        choice = self.options.get("device", "auto")
        if choice == "cuda" or (choice == "auto" and on_cuda and get_tensor_model_parallel_world_size() == 1):
            assert param is not None
            return param.device if on_cuda else torch.device("cuda")
        return torch.device("cpu")

    def _weights(self, where: Path, device: torch.device) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, tensor) pairs of the checkpoint: CPU, one job (lazy unless ``eager``); CUDA, one
        job per ``cuda_batch_bytes`` of tensors (so the device holds at most that much beyond
        the parameters)."""
        eager = bool(self.options.get("eager", False))
        if device.type != "cuda":
            yield from load_checkpoint(where, device, eager=eager, progress=False).items()
            return
        sizes = {n: t.nbytes for n, t in load_checkpoint(where, "cpu", progress=False).items()}
        limit = max(1, self.options.get("cuda_batch_bytes", DEFAULT_CUDA_BATCH_BYTES))
        batch: list[str] = []
        total = 0
        for name, size in [*sizes.items(), ("", -1)]:
            if batch and (size < 0 or total + size > limit):
                yield from load_checkpoint(where, device, keys=batch, progress=False).items()
                batch, total = [], 0
            if size >= 0:
                batch.append(name)
                total += size

    def load_weights(self, model: nn.Module, model_config: ModelConfig) -> None:
        start = time.perf_counter()
        folder = self._folder(model_config)
        where = Path(find_weights(folder, TRANSFORMERS_NAMES, config=folder / "config.json"))
        device = self._staging_device(model)
        logger.info("flashpack: loading %s (tensors staged on %s)", where, device)
        with engine_settings(self.options):
            if self.options.get("verify"):
                verify_checkpoint(where)
            loaded = cast(Any, model).load_weights(self._weights(where, device))
        if model_config.quantization is None and loaded is not None:
            # vLLM's own check that every parameter was loaded (the default loader runs it too).
            DefaultModelLoader.track_weights_loading(self, model, loaded, quantized=False)
        load_timing(start)
        if "save_restart" in self.options:
            save_restart(model, model_config, folder, Path(self.options["save_restart"]))


def save_restart(model: nn.Module, model_config: ModelConfig, source: Path, out: Path) -> Path:
    """Write this rank's state (after the loading pass, before post-processing) to
    ``out/<restart_name>.flashpack`` with its manifest; the first rank also copies the model
    folder's other files (config, tokenizer) so ``out`` can be served."""
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    ident = identity(model_config, source)
    name = restart_name(ident)
    state = model.state_dict()
    meta = [k for k, t in state.items() if t.is_meta]
    if meta:
        raise ValueError(
            f"{out / name}.flashpack: parameters {meta[:5]} are still on the meta device after loading "
            "(online quantization); a restart save of this model is not supported"
        )
    path = out / f"{name}.flashpack"
    serialization.pack_to_file(state, path)
    manifest = {
        "kind": RESTART_KIND,
        "file": path.name,
        "model": str(model_config.model),
        "vllm_version": _vllm_version(),
        "flashpack_version": flashpack_version,
        **ident,
    }
    tmp = out / f".{name}.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    os.replace(tmp, out / f"{name}.json")
    if (
        ident["tensor_parallel_rank"] == 0
        and ident["pipeline_parallel_rank"] == 0
        and source.resolve() != out.resolve()
    ):
        for f in source.iterdir():
            if f.is_file() and not f.name.endswith(_WEIGHT_SUFFIXES) and not f.name.startswith(RESTART_PREFIX):
                shutil.copy2(f, out / f.name)
    logger.info("flashpack: wrote the restart file %s in %.2f seconds", path, time.perf_counter() - start)
    return path


def _vllm_version() -> str:
    import vllm

    return str(getattr(vllm, "__version__", "unknown"))


def check_restart(manifest_path: Path, want: dict[str, Any], state: dict[str, torch.Tensor], handle: Any) -> None:
    """Refuse a restart file made for another model, dtype, quantization or parallel layout, or
    whose tensors are not this model's parameters (a ValueError naming the file and what differs)."""
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{manifest_path}: cannot read the restart manifest: {e}") from e
    if not isinstance(manifest, dict) or manifest.get("kind") != RESTART_KIND:
        raise ValueError(f"{manifest_path}: not a flashpack vLLM restart manifest")
    file = handle.path
    diffs = [f"{k}: file {manifest.get(k)!r}, model {v!r}" for k, v in want.items() if manifest.get(k) != v]
    if diffs:
        raise ValueError(
            f"{file}: this restart file was made for another model or layout ({'; '.join(diffs)}); "
            f"save a new one with --model-loader-extra-config '{{\"save_restart\": ...}}'"
        )
    if manifest.get("vllm_version") != _vllm_version():
        logger.warning(
            "flashpack: %s was saved by vLLM %s, this is vLLM %s", file, manifest.get("vllm_version"), _vllm_version()
        )
    have = {e.name: e for e in entries_of(handle)}
    problems = [f"{n}: missing from the file" for n in state if n not in have]
    problems += [f"{n}: not a parameter of the model" for n in have if n not in state]
    for n, t in state.items():
        entry = have.get(n)
        if entry is not None and (entry.dtype != t.dtype or entry.shape != tuple(t.shape)):
            problems.append(f"{n}: file {entry.dtype} {list(entry.shape)}, model {t.dtype} {list(t.shape)}")
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ValueError(f"{file}: does not match the model's parameters: {'; '.join(problems[:5])}{more}")


class FlashPackRestartLoader(BaseModelLoader):  # type: ignore[misc]
    """``--load-format flashpack_restart``: each rank's saved state straight into its parameters."""

    def __init__(self, load_config: LoadConfig) -> None:
        super().__init__(load_config)
        self.options = parse_options(load_config, _COMMON_OPTIONS)

    def _folder(self, model_config: ModelConfig) -> Path:
        return model_folder(model_config, self.load_config, [f"{RESTART_PREFIX}-*"])

    def download_model(self, model_config: ModelConfig) -> None:
        self._folder(model_config)

    def load_weights(self, model: nn.Module, model_config: ModelConfig) -> None:
        start = time.perf_counter()
        folder = self._folder(model_config)
        want = identity(model_config, folder)
        name = restart_name(want)
        path, manifest = folder / f"{name}.flashpack", folder / f"{name}.json"
        if not path.is_file() or not manifest.is_file():
            raise FileNotFoundError(
                f"{path}: no restart file for this rank (with its {manifest.name}) in {folder}; write them with "
                f'--load-format flashpack --model-loader-extra-config \'{{"save_restart": "{folder}"}}\''
            )
        state = model.state_dict()
        with engine_settings(self.options):
            handle = open_weights(path)
            check_restart(manifest, want, state, handle)
            if self.options.get("verify"):
                _engine.verify(path)
            self._stream(handle, state)
        load_timing(start)

    @staticmethod
    def _stream(handle: Any, state: dict[str, torch.Tensor]) -> None:
        """The file's bytes into the parameters: CUDA, one engine job writing through the pinned
        pool into each parameter's memory; CPU, copied from a copy-on-write mapping."""
        entries = entries_of(handle)
        targets = [state[e.name] for e in entries]
        cuda = [t for t in targets if t.device.type == "cuda"]
        if cuda:
            if len(cuda) != len(targets) or len({t.device for t in cuda}) != 1:
                raise ValueError(f"{handle.path}: the model's parameters are on several devices")
            pieces, seen = [], set()
            for e, t in zip(entries, targets, strict=True):
                if not t.is_contiguous() or t.nbytes != e.nbytes:
                    raise ValueError(f"{handle.path}: parameter {e.name} is not one contiguous tensor of its size")
                if t.data_ptr() in seen or e.nbytes == 0:
                    continue  # tied: the same memory, written once
                seen.add(t.data_ptr())
                pieces.append((0, e.start, e.end, t))
            _engine.read_to_cuda([handle], pieces, cuda[0].device, progress=False)
            return
        memory = handle.map()
        with torch.no_grad():
            for e, t in zip(entries, targets, strict=True):
                t.copy_(view_of(memory, e.start, e))
