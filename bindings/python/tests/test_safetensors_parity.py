"""Read-side parity with safetensors 0.8: every case loads the same file with both libraries
and compares what comes back (values, dtypes, shapes, key order, metadata, errors). The table in
docs/checkpoints.md ("Compared with safetensors") lists what these tests hold."""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import safetensors
import safetensors.torch
import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

import flashpack
from flashpack.commands import convert_to_flashpack, revert_from_flashpack

FP4 = getattr(torch, "float4_e2m1fn_x2", None)
needs_fp4 = pytest.mark.skipif(FP4 is None, reason="this torch has no float4_e2m1fn_x2")


def raw_bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


def assert_same_dicts(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> None:
    assert list(ours) == list(theirs)
    for k in theirs:
        assert ours[k].dtype == theirs[k].dtype, k
        assert ours[k].shape == theirs[k].shape, k
        assert raw_bytes(ours[k]) == raw_bytes(theirs[k]), k


def write_raw(path: Path, header: dict[str, Any], data: bytes) -> Path:
    """A safetensors file written by hand (for dtypes torch cannot save)."""
    j = json.dumps(header).encode()
    j += b" " * (-len(j) % 8)
    path.write_bytes(struct.pack("<Q", len(j)) + j + data)
    return path


def every_dtype() -> dict[str, torch.Tensor]:
    """One tensor of every dtype safetensors 0.8 stores and its torch side loads (with fp4)."""
    g = torch.Generator().manual_seed(0)
    raw = torch.randint(0, 256, (64,), dtype=torch.uint8, generator=g)
    sd: dict[str, torch.Tensor] = {
        "f64": torch.randn(3, 2, dtype=torch.float64, generator=g),
        "f32": torch.randn(4, 4, generator=g),
        "f16": torch.randn(5, dtype=torch.float16, generator=g),
        "bf16": torch.randn(2, 3, dtype=torch.bfloat16, generator=g),
        "i64": torch.arange(6, dtype=torch.int64).reshape(2, 3),
        "i32": torch.arange(-3, 3, dtype=torch.int32),
        "i16": torch.arange(4, dtype=torch.int16),
        "i8": torch.arange(-4, 4, dtype=torch.int8),
        "u8": raw[:7].clone(),
        "bool": raw[:5] > 128,
        "c64": torch.randn(3, dtype=torch.complex64, generator=g),
        "scalar": torch.tensor(3.5),
        "empty": torch.empty(0, 4),
        "u16": torch.arange(5).to(torch.uint16),
        "u32": torch.arange(5).to(torch.uint32),
        "u64": torch.arange(5).to(torch.uint64),
    }
    for name in ("float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz", "float8_e8m0fnu"):
        sd[name] = raw[:6].clone().view(getattr(torch, name)).reshape(2, 3)
    if FP4 is not None:
        sd["fp4"] = raw[:12].clone().view(FP4).reshape(2, 6)
        sd["fp4_1d"] = raw[12:15].clone().view(FP4)
        sd["fp4_empty"] = torch.empty(3, 0, dtype=FP4)
    return sd


@pytest.fixture
def every(tmp_path: Path) -> Path:
    path = tmp_path / "every.safetensors"
    save_file(every_dtype(), path, metadata={"format": "pt", "k": "v"})
    return path


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"backend": "mmap"}, {"backend": "pread"}, {"eager": True}],
    ids=["default", "mmap", "pread", "eager"],
)
def test_load_file_every_dtype_fp4_included(every: Path, kwargs: dict[str, Any]) -> None:
    # safetensors' own "pread" backend fails on F4 (see below): its "mmap" result is the reference.
    assert_same_dicts(flashpack.load_file(every, **kwargs), safetensors.torch.load_file(every))


@needs_fp4
def test_safetensors_pread_fails_on_fp4_ours_does_not(tmp_path: Path) -> None:
    p = tmp_path / "fp4.safetensors"
    save_file({"x": torch.arange(12, dtype=torch.uint8).view(FP4).reshape(2, 6)}, p)
    with pytest.raises(RuntimeError):
        safetensors.torch.load_file(p, backend="pread")
    assert_same_dicts(flashpack.load_file(p, backend="pread"), safetensors.torch.load_file(p))


@needs_fp4
def test_fp4_opens_with_its_shape_as_safetensors_gives_it(tmp_path: Path) -> None:
    # The file: fp4 beside its e8m0 scales.
    p = tmp_path / "nvfp4.safetensors"
    save_file({"e": torch.tensor([0.5], dtype=torch.float8_e8m0fnu), "x": torch.empty(2, 2, dtype=FP4)}, p)
    ours, theirs = flashpack.load_file(p), safetensors.torch.load_file(p)
    assert ours["x"].dtype == FP4 and ours["x"].shape == (2, 2)
    assert_same_dicts(ours, theirs)
    with flashpack.safe_open(p, "pt") as f, safetensors.safe_open(p, "pt") as g:
        # The header counts 4-bit values: [2, 4] for torch's (2, 2) pairs.
        assert f.get_slice("x").get_shape() == g.get_slice("x").get_shape() == [2, 4]
        assert f.get_slice("x").get_dtype() == g.get_slice("x").get_dtype() == "F4"
        assert f.get_slice("e").get_dtype() == g.get_slice("e").get_dtype() == "F8_E8M0"


def test_safe_open_same_answers(every: Path) -> None:
    with flashpack.safe_open(every, "pt") as f, safetensors.safe_open(every, "pt") as g:
        assert f.keys() == g.keys()
        assert f.offset_keys() == g.offset_keys()
        assert f.metadata() == g.metadata() == {"format": "pt", "k": "v"}
        for k in g.keys():
            assert f.get_slice(k).get_shape() == g.get_slice(k).get_shape(), k
            assert f.get_slice(k).get_dtype() == g.get_slice(k).get_dtype(), k
            assert_same_dicts({k: f.get_tensor(k)}, {k: g.get_tensor(k)})
        assert_same_dicts(f.get_tensors(), g.get_tensors())


def test_safe_open_offers_what_safetensors_offers(every: Path) -> None:
    with flashpack.safe_open(every, "pt") as f, safetensors.safe_open(every, "pt") as g:
        public = {n for n in dir(g) if not n.startswith("_")}
        assert public <= set(dir(f)), public - set(dir(f))
        assert {n for n in dir(g.get_slice("f32")) if not n.startswith("_")} <= set(dir(f.get_slice("f32")))


@pytest.mark.parametrize("backend", ["mmap", "pread"])
def test_get_tensors_with_either_backend(every: Path, backend: str) -> None:
    with flashpack.safe_open(every, "pt", backend=backend) as f, safetensors.safe_open(every, "pt") as g:
        assert_same_dicts(f.get_tensors(), g.get_tensors())


@needs_fp4
def test_fp4_slices_index_torchs_packed_shape(tmp_path: Path) -> None:
    """An F4 slice indexes torch's tensor (last dimension in bytes, two values each) and reads
    only the rows it needs; safetensors 0.8 cannot slice F4 at all."""
    p = tmp_path / "fp4.safetensors"
    x = torch.arange(48, dtype=torch.uint8).view(FP4).reshape(4, 12)
    save_file({"x": x, "v": torch.arange(5, dtype=torch.uint8).view(FP4)}, p)
    with flashpack.safe_open(p, "pt") as f, safetensors.safe_open(p, "pt") as g:
        whole = g.get_tensor("x")
        for index in [slice(1, 3), 2, -1, (slice(None), slice(2, 5)), (slice(0, 4, 2), 3), (Ellipsis, 0)]:
            got = f.get_slice("x")[index]
            assert got.dtype == FP4 and got.shape == whole[index].shape, index
            assert raw_bytes(got) == raw_bytes(whole[index].contiguous()), index
        assert raw_bytes(f.get_slice("v")[1:4]) == raw_bytes(g.get_tensor("v")[1:4].contiguous())
        with pytest.raises(RuntimeError):
            g.get_slice("x")[1:3]  # what safetensors 0.8 does (see docs/checkpoints.md)


def unloadable_file(tmp_path: Path) -> Path:
    header = {
        "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
        "b": {"dtype": "F6_E2M3", "shape": [4], "data_offsets": [4, 7]},
        "c": {"dtype": "F6_E3M2", "shape": [2, 4], "data_offsets": [7, 13]},
        "d": {"dtype": "F4", "shape": [2, 3], "data_offsets": [13, 16]},
        "e": {"dtype": "I8", "shape": [2], "data_offsets": [16, 18]},
        "__metadata__": {"m": "1"},
    }
    return write_raw(tmp_path / "f6.safetensors", header, bytes(range(18)))


def test_tensors_torch_cannot_hold_leave_the_rest_usable(tmp_path: Path) -> None:
    p = unloadable_file(tmp_path)
    with pytest.raises(SafetensorError):
        safetensors.torch.load_file(p)
    with pytest.raises(flashpack.UnsupportedTensorError) as err:
        flashpack.load_file(p)
    assert isinstance(err.value, SafetensorError) and isinstance(err.value, NotImplementedError)
    assert str(p) in str(err.value) and "'b'" in str(err.value) and "F6_E2M3" in str(err.value)
    with flashpack.safe_open(p, "pt") as f, safetensors.safe_open(p, "pt") as g:
        assert f.keys() == g.keys() == ["a", "b", "c", "d", "e"]
        assert f.offset_keys() == g.offset_keys()
        assert f.metadata() == g.metadata()
        for k in g.keys():
            assert f.get_slice(k).get_shape() == g.get_slice(k).get_shape(), k
            assert f.get_slice(k).get_dtype() == g.get_slice(k).get_dtype(), k
        for k in ("a", "e"):
            assert_same_dicts({k: f.get_tensor(k)}, {k: g.get_tensor(k)})
        for k, dtype in (("b", "F6_E2M3"), ("c", "F6_E3M2"), ("d", "F4")):
            with pytest.raises(SafetensorError):
                g.get_tensor(k)
            for call in (lambda k=k: f.get_tensor(k), lambda k=k: f.get_slice(k)[0]):
                with pytest.raises(flashpack.UnsupportedTensorError, match=f"{p}: tensor '{k}': dtype {dtype}"):
                    call()
        with pytest.raises(SafetensorError):
            g.get_tensors()
        with pytest.raises(flashpack.UnsupportedTensorError):
            f.get_tensors()
    # A checkpoint loads the tensors asked for; all of them fails as load_file does.
    with safetensors.safe_open(p, "pt") as g:
        wanted = {k: g.get_tensor(k) for k in ("e", "a")}
    assert_same_dicts(flashpack.load_checkpoint(p, keys=["e", "a"]), wanted)
    with pytest.raises(flashpack.UnsupportedTensorError, match="'c'"):
        flashpack.load_checkpoint(p, keys=["c"])
    with pytest.raises(flashpack.UnsupportedTensorError):
        flashpack.load_checkpoint(p)


def test_unknown_backend_refused_as_safetensors_refuses(every: Path) -> None:
    calls: list[tuple[Callable[..., Any], Callable[..., Any]]] = [
        (lambda: flashpack.load_file(every, backend="foo"), lambda: safetensors.torch.load_file(every, backend="foo")),
        (
            lambda: flashpack.safe_open(every, "pt", backend="foo"),
            lambda: safetensors.safe_open(every, "pt", backend="foo"),
        ),
    ]
    for ours, theirs in calls:
        with pytest.raises(SafetensorError) as mine:
            ours()
        with pytest.raises(SafetensorError) as ref:
            theirs()
        assert str(mine.value) == str(ref.value)


def open_fds_of(path: Path) -> list[str]:
    fd_dir = Path("/proc/self/fd")
    found = []
    for fd in fd_dir.iterdir():
        try:
            if os.readlink(fd) == str(path.resolve()):
                found.append(fd.name)
        except OSError:
            continue
    return found


def test_handle_closes_on_exit(every: Path) -> None:
    with flashpack.safe_open(every, "pt") as f:
        kept = f.get_tensor("f32")
        lazy = f.get_tensors()
        s = f.get_slice("f32")
    with safetensors.safe_open(every, "pt") as g:
        ref = g.get_tensor("f32")
    calls: list[Callable[[Any], Any]] = [
        lambda h: h.keys(),
        lambda h: h.offset_keys(),
        lambda h: h.metadata(),
        lambda h: h.get_tensor("f32"),
        lambda h: h.get_slice("f32"),
        lambda h: h.get_tensors(),
    ]
    for call in calls:
        with pytest.raises(SafetensorError, match="File is closed"):
            call(g)
        with pytest.raises(SafetensorError, match="File is closed"):
            call(f)
    with pytest.raises(SafetensorError, match="File is closed"):
        s[0:1]
    # What was handed out stays valid, as safetensors' tensors do.
    assert torch.equal(kept, ref) and torch.equal(lazy["f32"], ref)
    if Path("/proc/self/fd").is_dir():
        assert open_fds_of(every) == []  # the engine's file is really closed
    # and the file can be replaced (what an open handle prevents on Windows)
    os.replace(every, every.with_suffix(".moved"))


def test_close_without_with(every: Path) -> None:
    f = flashpack.safe_open(every, "pt")
    assert f.keys()
    f.close()
    f.close()  # twice is fine
    with pytest.raises(SafetensorError, match="File is closed"):
        f.keys()


def test_missing_file_named_as_python_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as ref:
        safetensors.torch.load_file("notafile")
    assert "No such file or directory" in str(ref.value)
    for call in (
        lambda: flashpack.load_file("notafile"),
        lambda: flashpack.load_file("notafile", eager=True),
        lambda: flashpack.safe_open("notafile", "pt"),
        lambda: flashpack.read_flashpack_file("notafile"),
    ):
        with pytest.raises(FileNotFoundError) as err:
            call()
        assert str(err.value) == "[Errno 2] No such file or directory: 'notafile'"
        assert err.value.filename == "notafile"


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(4, 3)
        self.b = torch.nn.Linear(3, 2, bias=False)
        self.register_buffer("steps", torch.tensor(7))


def test_safetensors_load_model_with_our_load_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    src = Net()
    p = tmp_path / "net.safetensors"
    safetensors.torch.save_model(src, p)
    theirs, ours = Net(), Net()
    ref_result = safetensors.torch.load_model(theirs, p)
    monkeypatch.setattr(safetensors.torch, "load_file", flashpack.load_file)
    result = safetensors.torch.load_model(ours, p)
    assert result == ref_result
    assert_same_dicts(ours.state_dict(), theirs.state_dict())
    assert_same_dicts(ours.state_dict(), src.state_dict())
    x = torch.randn(2, 4)
    assert torch.equal(ours.b(ours.a(x)), theirs.b(theirs.a(x)))


@needs_fp4
def test_fp4_converts_both_ways_bit_for_bit(tmp_path: Path) -> None:
    st = tmp_path / "m.safetensors"
    save_file(every_dtype(), st, metadata={"k": "v"})
    fp = tmp_path / "m.flashpack"
    convert_to_flashpack(st, fp)
    assert flashpack.load_file(fp)["fp4"].dtype == FP4
    # A FlashPack file orders its tensors by size, not by their safetensors offsets.
    theirs = safetensors.torch.load_file(st)
    ours = flashpack.load_file(fp, eager=True)
    assert_same_dicts({k: ours[k] for k in theirs}, theirs)
    back = tmp_path / "back.safetensors"
    revert_from_flashpack(fp, back)
    assert back.read_bytes() == st.read_bytes()


@needs_fp4
def test_fp4_packs_from_torch_and_loads_back(tmp_path: Path) -> None:
    sd = {"w": torch.arange(32, dtype=torch.uint8).view(FP4).reshape(4, 8), "s": torch.ones(4, 1)}
    fp = tmp_path / "p.flashpack"
    flashpack.pack_to_file(sd, fp, target_dtype=torch.bfloat16)
    loaded = flashpack.load_file(fp)
    assert loaded["w"].dtype == FP4 and loaded["w"].shape == (4, 8)  # not cast: torch cannot cast fp4
    assert raw_bytes(loaded["w"]) == raw_bytes(sd["w"])
    assert loaded["s"].dtype == torch.bfloat16
