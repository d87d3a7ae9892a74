"""Pack and load back: every dtype, both file versions, lazy and eager, and the fixes over the original."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import flashpack
from flashpack import _core, pack_to_file, read_flashpack_file, revert_from_file
from flashpack.deserialization import iterate_from_flash_tensor
from flashpack.utils import NAME_TO_DTYPE

ALL_DTYPES = sorted(NAME_TO_DTYPE.values(), key=str)


def random_tensor(dtype: torch.dtype, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Any bit pattern of the dtype (bool only 0/1), generated from bytes so every dtype works."""
    g = torch.Generator().manual_seed(seed)
    n = 1
    for d in shape:
        n *= d
    size = torch.empty(0, dtype=dtype).element_size()
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g, dtype=torch.uint8).view(torch.bool)
    raw = torch.randint(0, 256, (n * size,), generator=g, dtype=torch.uint8)
    return raw.view(dtype).reshape(shape)


def assert_bit_equal(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))


def test_all_22_dtypes_are_known_to_this_torch() -> None:
    assert len(_core.dtype_names()) == 22
    assert len(NAME_TO_DTYPE) == 22


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("eager", [False, True])
def test_single_dtype_v3_round_trip(tmp_path: Path, dtype: torch.dtype, eager: bool) -> None:
    sd = {"a": random_tensor(dtype, (33, 7), 1), "b": random_tensor(dtype, (5,), 2), "c": random_tensor(dtype, (), 3)}
    path = tmp_path / "m.flashpack"
    pack_to_file(sd, path, None)
    assert flashpack.get_flashpack_file_metadata(path)["format"] == "flashpack_v3"
    storage, meta = read_flashpack_file(path, eager=eager)
    loaded = dict(iterate_from_flash_tensor(storage, meta))
    assert set(loaded) == set(sd)
    for name, t in sd.items():
        assert_bit_equal(loaded[name], t)


@pytest.mark.parametrize("eager", [False, True])
def test_mixed_dtypes_v4_round_trip(tmp_path: Path, eager: bool) -> None:
    sd = {f"t{i}": random_tensor(d, (3 + i, 5), i) for i, d in enumerate(ALL_DTYPES)}
    path = tmp_path / "m.flashpack"
    pack_to_file(sd, path, None)
    meta = flashpack.get_flashpack_file_metadata(path)
    assert meta["format"] == "flashpack_v4" and len(meta["macroblocks"]) == len(ALL_DTYPES)
    storage, meta = read_flashpack_file(path, eager=eager)
    loaded = dict(iterate_from_flash_tensor(storage, meta))
    for name, t in sd.items():
        assert_bit_equal(loaded[name], t)


@pytest.mark.parametrize("io", ["direct", "buffered", "auto"])
@pytest.mark.parametrize("chunk", [4096, 12288 + 512, 1 << 20])
def test_eager_io_modes_give_identical_bytes(tmp_path: Path, io: str, chunk: int) -> None:
    sd = {"w": random_tensor(torch.float32, (1000, 37), 4), "i": random_tensor(torch.int8, (4097,), 5)}
    path = tmp_path / "m.flashpack"
    pack_to_file(sd, path, None)
    lazy = _core.load(str(path))
    eager = _core.load(str(path), eager=True, io=io, threads=3, chunk_bytes=chunk)
    assert eager.eager and not lazy.eager
    assert bytes(memoryview(eager)) == bytes(memoryview(lazy)) == path.read_bytes()[: lazy.payload_len]
    counts = eager.io
    assert counts["direct_bytes"] + counts["buffered_bytes"] == eager.payload_len
    if io == "buffered":
        assert counts["direct_bytes"] == 0


def test_direct_io_is_used_where_the_filesystem_allows_it(tmp_path: Path) -> None:
    path = tmp_path / "m.flashpack"
    pack_to_file({"w": torch.randn(64, 1024)}, path, None)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    except OSError:
        pytest.skip(f"{tmp_path} does not support O_DIRECT; the buffered fallback is covered elsewhere")
    os.close(fd)
    eager = _core.load(str(path), eager=True, io="direct")
    assert eager.io["direct_bytes"] >= eager.payload_len // 4096 * 4096 > 0


def test_env_switch_makes_cpu_loads_eager(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "m.flashpack"
    pack_to_file({"w": torch.randn(10)}, path, None)
    assert not read_flashpack_file(path)[0].backing.eager
    monkeypatch.setenv("FLASHPACK_CPU_PARALLEL_READ", "1")
    assert read_flashpack_file(path)[0].backing.eager
    assert not read_flashpack_file(path, eager=False)[0].backing.eager


# --- the original's known weaknesses (FORMAT.md 1-5) --------------------------------------------


def test_target_dtype_casts_floats_only(tmp_path: Path) -> None:
    sd = {
        "w": torch.randn(8, 8),
        "position_ids": torch.arange(512).unsqueeze(0),
        "mask": torch.tensor([True, False, True]),
        "z": torch.randn(4, dtype=torch.complex64),
    }
    path = tmp_path / "m.flashpack"
    pack_to_file(sd, path, torch.bfloat16)
    out = revert_from_file(path)
    assert out["w"].dtype == torch.bfloat16 and torch.equal(out["w"], sd["w"].to(torch.bfloat16))
    for name in ("position_ids", "mask", "z"):
        assert_bit_equal(out[name], sd[name])
    assert flashpack.get_flashpack_file_metadata(path)["format"] == "flashpack_v4"


def test_target_dtype_must_be_floating(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="floating-point"):
        pack_to_file({"w": torch.randn(2)}, tmp_path / "m.flashpack", torch.int8)


def test_zero_dim_tensors_stay_zero_dim(tmp_path: Path) -> None:
    path = tmp_path / "m.flashpack"
    pack_to_file({"scale": torch.tensor(0.5), "step": torch.tensor(7)}, path, None)
    out = revert_from_file(path)
    assert out["scale"].shape == () and out["scale"].item() == 0.5
    assert out["step"].shape == () and out["step"].item() == 7


@pytest.mark.parametrize("eager", [False, True])
def test_writes_to_cpu_loaded_weights_work_and_never_reach_the_file(tmp_path: Path, eager: bool) -> None:
    path = tmp_path / "m.flashpack"
    w = torch.randn(256, 256)
    pack_to_file({"w": w}, path, None)
    before = path.read_bytes()
    storage, meta = read_flashpack_file(path, eager=eager)
    loaded = dict(iterate_from_flash_tensor(storage, meta))["w"]
    loaded.add_(1.0)
    loaded[0, 0] = 42.0
    assert loaded[0, 0].item() == 42.0
    del storage, loaded
    assert path.read_bytes() == before
    assert torch.equal(revert_from_file(path)["w"], w)


def test_non_contiguous_tensors_pack(tmp_path: Path) -> None:
    base = torch.randn(16, 24)
    sd = {"t": base.t(), "s": base[:, ::3], "e": torch.randn(2, 3, 4).permute(2, 0, 1)}
    path = tmp_path / "m.flashpack"
    pack_to_file(sd, path, None)
    out = revert_from_file(path)
    for name, t in sd.items():
        assert torch.equal(out[name], t) and out[name].is_contiguous()


class Tied(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(100, 16)
        self.head = torch.nn.Linear(16, 100, bias=False)
        self.head.weight = self.embed.weight


def test_tied_weights_stored_once_and_retied(tmp_path: Path) -> None:
    model = Tied()
    path = tmp_path / "m.flashpack"
    pack_to_file(model, path, None)
    meta = flashpack.get_flashpack_file_metadata(path)
    recs = {r["name"]: r for r in meta["index"]}
    assert recs["embed.weight"]["offset"] == recs["head.weight"]["offset"]
    assert meta["total_elems"] == 100 * 16
    assert path.stat().st_size < 100 * 16 * 4 + 1024

    fresh = Tied()
    fresh.head.weight = torch.nn.Parameter(torch.zeros(100, 16))  # untie: the load must re-tie
    flashpack.assign_from_file(fresh, path)
    assert fresh.head.weight is fresh.embed.weight
    assert torch.equal(fresh.embed.weight, model.embed.weight)


def test_name_order_and_alignment_options(tmp_path: Path) -> None:
    sd = {"a": torch.randn(3), "b": torch.randn(100), "c": torch.randn(7)}
    path = tmp_path / "m.flashpack"
    pack_to_file(sd, path, None, name_order=["c", "a"], align_bytes=0)
    meta = flashpack.get_flashpack_file_metadata(path)
    assert [r["name"] for r in meta["index"]] == ["c", "a"]
    assert [r["offset"] for r in meta["index"]] == [0, 7]
    pack_to_file(sd, path, None)
    meta = flashpack.get_flashpack_file_metadata(path)
    assert [r["name"] for r in meta["index"]] == ["b", "c", "a"]
    assert [r["offset"] for r in meta["index"]] == [0, 128, 160]


def test_pack_is_atomic_on_error(tmp_path: Path) -> None:
    path = tmp_path / "m.flashpack"
    pack_to_file({"w": torch.randn(4)}, path, None)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="meta"):
        pack_to_file({"w": torch.randn(4), "m": torch.empty(3, device="meta")}, path, None)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.flashpack"]


def test_silent_false_prints_phases(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "m.flashpack"
    pack_to_file({"w": torch.randn(4)}, path, None, silent=False)
    read_flashpack_file(path, silent=False)
    out = capsys.readouterr().out
    for phase in ("build_index", "write_payload", "append_footer", "atomic_rename", "read_metadata", "mmap_payload"):
        assert f"{phase}: " in out


def test_loaded_tensors_outlive_everything_else(tmp_path: Path) -> None:
    import gc

    path = tmp_path / "m.flashpack"
    w = torch.randn(1000)
    pack_to_file({"w": w}, path, None)
    view = revert_from_file(path)["w"]
    path.unlink()
    gc.collect()
    assert torch.equal(view, w)


def test_failed_rename_leaves_no_temp_file(tmp_path: Path) -> None:
    dest = tmp_path / "taken"
    dest.mkdir()
    (dest / "keep").write_text("x")
    with pytest.raises(OSError, match="taken"):
        pack_to_file({"w": torch.randn(4)}, dest, None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
    assert (dest / "keep").read_text() == "x"
