"""``flashpack.safe_open`` against ``safetensors.safe_open``: keys, metadata, every tensor, and
slices (rows, columns, steps, ints, Ellipsis, negative and out-of-range indices) give the same
tensors or the same kind of error; a row range reads only its bytes."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
import safetensors
import safetensors.torch as st
import torch

import flashpack
from flashpack import _core, pack_to_file
from test_load_file import assert_same_dict, every_dtype_state_dict
from test_roundtrip import assert_bit_equal, random_tensor


@pytest.fixture()
def st_file(tmp_path: Path) -> Path:
    sd = every_dtype_state_dict()
    sd["cube"] = random_tensor(torch.int16, (6, 5, 4), 3)
    path = tmp_path / "model.safetensors"
    st.save_file(sd, path, metadata={"format": "pt", "note": "x"})
    return path


def test_keys_metadata_and_every_tensor_match_safetensors(st_file: Path) -> None:
    with safetensors.safe_open(st_file, framework="pt") as ref, flashpack.safe_open(st_file, framework="pt") as f:
        assert sorted(f.keys()) == sorted(ref.keys())
        assert f.metadata() == ref.metadata()
        for name in ref.keys():
            assert_bit_equal(f.get_tensor(name), ref.get_tensor(name))
            assert f.get_slice(name).get_shape() == ref.get_slice(name).get_shape()
            assert f.get_slice(name).get_dtype() == ref.get_slice(name).get_dtype()


def test_keys_sorted_and_offset_keys_in_byte_order_like_safetensors(tmp_path: Path) -> None:
    # Header order, byte order and name order all differ: keys() is sorted (safetensors 0.8),
    # offset_keys() follows the bytes, as load_file's dict does.
    header = {
        "zeta": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
        "alpha": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]},
        "mid": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]},
    }
    body = json.dumps(header).encode()
    body += b" " * (-len(body) % 8)
    path = tmp_path / "order.safetensors"
    path.write_bytes(struct.pack("<Q", len(body)) + body + bytes(12))
    with safetensors.safe_open(path, framework="pt") as ref, flashpack.safe_open(path) as f:
        assert f.keys() == ref.keys() == ["alpha", "mid", "zeta"]
        assert f.offset_keys() == ref.offset_keys() == ["zeta", "mid", "alpha"]
    assert list(flashpack.load_file(path)) == list(st.load_file(path)) == ["zeta", "mid", "alpha"]


SLICES: list[Any] = [
    slice(1, 3),
    slice(None),
    (slice(None), slice(1, 4)),
    2,
    -1,
    (slice(0, 6, 2),),
    slice(1, None, 3),
    slice(2, 100),
    slice(-3, None),
    slice(5, 8),
    slice(3, 1),
    (Ellipsis, 1),
    (1, Ellipsis),
    (slice(1, 5), Ellipsis, slice(0, 2)),
    (slice(1, 4), 2, slice(None, None, 2)),
    Ellipsis,
    (),
]
BAD: list[Any] = [10, -7, (slice(None), 10), slice(None, None, -1), (0, 0, 0, 0)]


@pytest.mark.parametrize("index", SLICES, ids=repr)
def test_slices_match_safetensors(st_file: Path, index: Any) -> None:
    with safetensors.safe_open(st_file, framework="pt") as ref, flashpack.safe_open(st_file) as f:
        for name in ("cube", "big", "w.bfloat16", "w.float8_e4m3fn", "w.bool"):
            try:
                want = ref.get_slice(name)[index]
            except IndexError:  # e.g. three indices for a 2-D tensor: ours fails the same way
                with pytest.raises(IndexError):
                    f.get_slice(name)[index]
                continue
            assert_bit_equal(f.get_slice(name)[index], want)


@pytest.mark.parametrize("index", BAD, ids=repr)
def test_bad_slices_fail_like_safetensors(st_file: Path, index: Any) -> None:
    with safetensors.safe_open(st_file, framework="pt") as ref, flashpack.safe_open(st_file) as f:
        with pytest.raises(Exception) as want:
            ref.get_slice("cube")[index]
        with pytest.raises(type(want.value)):
            f.get_slice("cube")[index]


def test_scalars_and_empty_tensors(st_file: Path) -> None:
    with safetensors.safe_open(st_file, framework="pt") as ref, flashpack.safe_open(st_file) as f:
        for name in ("scalar", "half_scalar", "empty"):
            for index in ((), Ellipsis):
                assert_bit_equal(f.get_slice(name)[index], ref.get_slice(name)[index])
        assert_bit_equal(f.get_slice("empty")[0:0], ref.get_slice("empty")[0:0])


def test_a_row_range_reads_one_contiguous_range_of_its_bytes(st_file: Path) -> None:
    """What `_read_rows` asks the engine for: rows r0..r1 are one piece of (r1 - r0) rows."""
    with flashpack.safe_open(st_file) as f:
        e = f._entries["big"]
        calls: list[Any] = []
        real = _core.read_job

        def spy(files: Any, pieces: Any, **kw: Any) -> Any:
            calls.append(pieces)
            return real(files, pieces, **kw)

        _core.read_job = spy
        try:
            rows = f.get_slice("big")[10:20]
            cols = f.get_slice("big")[10:20, 3:9]
        finally:
            _core.read_job = real
        row = e.nbytes // e.shape[0]
        assert calls == [[(0, e.start + 10 * row, e.start + 20 * row)]] * 2
    assert_bit_equal(rows, st.load_file(st_file)["big"][10:20])
    assert_bit_equal(cols, st.load_file(st_file)["big"][10:20, 3:9])


def test_flashpack_files_open_the_same_way(tmp_path: Path) -> None:
    sd = every_dtype_state_dict()
    path = tmp_path / "m.flashpack"
    pack_to_file(sd, path, None)
    with flashpack.safe_open(path) as f:
        assert sorted(f.keys()) == sorted(sd)
        assert f.metadata() is None
        assert_same_dict({k: f.get_tensor(k) for k in f.keys()}, sd)
        assert_bit_equal(f.get_slice("big")[5:9, 2], sd["big"][5:9, 2])
        assert f.get_slice("w.float32").get_dtype() == "F32"


def test_missing_tensor_and_framework_are_clear_errors(st_file: Path) -> None:
    with flashpack.safe_open(st_file) as f:
        # A lookup by name: KeyError (safetensors raises its SafetensorError), still a ValueError.
        with pytest.raises(KeyError, match="no tensor 'nope'") as e:
            f.get_tensor("nope")
        assert isinstance(e.value, ValueError)
        assert str(e.value) == f"{st_file}: the file has no tensor 'nope'"
        with pytest.raises(KeyError, match="nope"):
            f.get_slice("nope")
    with pytest.raises(ValueError, match="framework"):
        flashpack.safe_open(st_file, framework="np")
