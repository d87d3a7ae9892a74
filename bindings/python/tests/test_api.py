"""Drop-in surface: the original's import paths, names, argument names and defaults."""

from __future__ import annotations

import inspect
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

import flashpack
from flashpack import FlashPackMixin, pack_to_file

# (callable path, [(argument, default)]) as in the original package; inspect.Parameter.empty = required.
REQ = inspect.Parameter.empty
SIGNATURES: dict[str, list[tuple[str, Any]]] = {
    "flashpack.serialization.pack_to_file": [
        ("state_dict_or_model", REQ), ("destination_path", REQ), ("target_dtype", None), ("name_order", None),
        ("align_bytes", 128), ("silent", True), ("num_workers", 32),
    ],
    "flashpack.deserialization.assign_from_file": [
        ("model", REQ), ("path", REQ), ("device", None), ("strict", None), ("strict_params", True),
        ("strict_buffers", False), ("keep_flash_ref_on_model", False), ("silent", True), ("num_streams", 4),
        ("chunk_bytes", 4 * 1024 * 1024), ("ignore_names", None), ("ignore_prefixes", None),
        ("ignore_suffixes", None), ("use_distributed_loading", False), ("distributed_sharded", False),
        ("distributed_shard_strategy", None), ("rank", None), ("local_rank", None), ("world_size", None),
        ("coerce_dtype", False),
    ],
    "flashpack.deserialization.read_flashpack_file": [
        ("path", REQ), ("device", "cpu"), ("chunk_bytes", 4 * 1024 * 1024), ("num_streams", 4), ("silent", True),
        ("metadata", None),
    ],
    "flashpack.deserialization.iterate_from_flash_tensor": [
        ("flash_tensor", REQ), ("metadata", REQ), ("ignore_names", None), ("ignore_prefixes", None), ("ignore_suffixes", None),
    ],
    "flashpack.deserialization.revert_from_file": [("path", REQ), ("silent", True)],
    "flashpack.deserialization.get_flashpack_file_metadata": [("path", REQ)],
    "flashpack.deserialization.is_flashpack_file": [("path", REQ)],
    "flashpack.mixin.FlashPackMixin.save_flashpack": [
        ("self", REQ), ("destination_path", REQ), ("target_dtype", None), ("name_order", None), ("align_bytes", 128),
        ("silent", False), ("num_workers", 32),
    ],
    "flashpack.mixin.FlashPackMixin.from_flashpack": [
        ("path", REQ), ("device", None), ("silent", False), ("strict", None), ("strict_params", True),
        ("strict_buffers", False), ("keep_flash_ref_on_model", False), ("ignore_names", None), ("num_streams", 4),
        ("chunk_bytes", 4 * 1024 * 1024), ("use_distributed_loading", False), ("distributed_sharded", False),
        ("distributed_shard_strategy", None), ("rank", None), ("local_rank", None), ("world_size", None),
        ("coerce_dtype", False), ("init_fn", None),
    ],
}


def resolve(path: str) -> Any:
    import importlib

    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(path)


@pytest.mark.parametrize("path", sorted(SIGNATURES))
def test_signature_matches_the_original(path: str) -> None:
    params = inspect.signature(resolve(path)).parameters
    for name, default in SIGNATURES[path]:
        assert name in params, f"{path} lacks argument {name}"
        assert params[name].default == default, f"{path}({name}=...) default differs"
    positional = [n for n, p in params.items() if p.kind is p.POSITIONAL_OR_KEYWORD]
    expected = [n for n, _ in SIGNATURES[path] if n in positional]
    assert positional[: len(expected)] == expected, "positional order differs"


def test_original_module_paths_and_constants() -> None:
    from flashpack import constants, deserialization, mixin, serialization

    assert constants.MAGIC == b"FLASHPK\0"
    assert (constants.FILE_FORMAT_V3, constants.FILE_FORMAT_V4) == ("flashpack_v3", "flashpack_v4")
    assert constants.DEFAULT_ALIGN_BYTES == 128 and constants.U64LE.size == 8
    assert serialization.pack_to_file is flashpack.pack_to_file
    assert mixin.FlashPackMixin is flashpack.FlashPackMixin
    for name in ("assign_from_file", "read_flashpack_file", "iterate_from_flash_tensor", "revert_from_file",
                 "get_flashpack_file_metadata", "is_flashpack_file"):
        assert getattr(deserialization, name) is getattr(flashpack, name)


class WithRotary(torch.nn.Module, FlashPackMixin):
    def __init__(self, dim: int = 8, scale: float = 1.0) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(dim, dim)
        self.drop = torch.nn.Dropout(0.5)
        self.register_buffer("inv_freq", torch.arange(dim, dtype=torch.float32) * scale, persistent=False)
        self.register_buffer("count", torch.tensor(0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(x)) + self.inv_freq


def test_from_flashpack_builds_on_meta_and_keeps_computed_buffers(tmp_path: Path) -> None:
    model = WithRotary(dim=8, scale=2.0)
    path = tmp_path / "m.flashpack"
    model.save_flashpack(str(path), silent=True)
    loaded = WithRotary.from_flashpack(str(path), dim=8, scale=2.0, unknown_kwarg="dropped", silent=True)
    assert not loaded.training
    assert torch.equal(loaded.inv_freq, torch.arange(8, dtype=torch.float32) * 2.0)
    assert all(not t.is_meta for t in loaded.state_dict().values())
    x = torch.randn(3, 8)
    assert torch.equal(loaded(x), model.eval()(x))


def test_parameters_are_not_materialised_while_building(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: list[bool] = []

    class Probe(torch.nn.Module, FlashPackMixin):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(4))
            seen.append(self.w.is_meta)

    path = tmp_path / "m.flashpack"
    pack_to_file({"w": torch.ones(4)}, path, None)
    loaded = Probe.from_flashpack(str(path), silent=True)
    assert seen == [True] and torch.equal(loaded.w, torch.ones(4))
    assert not Probe().w.is_meta  # the patch is gone afterwards


def test_missing_tensor_non_strict_warns_about_meta(tmp_path: Path) -> None:
    path = tmp_path / "m.flashpack"
    pack_to_file({"proj.weight": torch.randn(8, 8)}, path, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        WithRotary.from_flashpack(str(path), strict=False, silent=True)
    assert any("meta" in str(w.message) and "proj.bias" in str(w.message) for w in caught)


def test_distributed_loading_without_a_process_group_says_how_to_get_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "m.flashpack"
    pack_to_file({"w": torch.ones(1)}, path, None)
    for var in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(RuntimeError, match="needs a process group: run under torchrun"):
        flashpack.assign_from_file(torch.nn.Module(), path, use_distributed_loading=True)
