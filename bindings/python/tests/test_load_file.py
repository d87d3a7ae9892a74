"""``flashpack.load_file`` against ``safetensors.torch.load_file``: the same dict, bit for bit,
for every dtype both formats have, 0-dim and empty tensors, lazy and eager, safetensors and
FlashPack files; bad files are clear errors naming the file and the tensor."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import safetensors.torch as st
import torch

import flashpack
from flashpack import pack_to_file
from test_roundtrip import assert_bit_equal, random_tensor

# Every torch dtype that safetensors stores (its own table), which the engine stores too.
SHARED_DTYPES = sorted({d for d in st._TYPES.values() if d in flashpack.utils.DTYPE_TO_NAME}, key=str)


def every_dtype_state_dict() -> dict[str, torch.Tensor]:
    sd = {f"w.{str(d).removeprefix('torch.')}": random_tensor(d, (3, 7 + i), i) for i, d in enumerate(SHARED_DTYPES)}
    sd["scalar"] = torch.tensor(7, dtype=torch.int64)
    sd["half_scalar"] = torch.tensor(1.5, dtype=torch.float16)
    sd["empty"] = torch.empty(0, 4, dtype=torch.float32)
    sd["big"] = random_tensor(torch.float32, (300, 1001), 99)  # several 16 KiB chunks below
    return sd


def assert_same_dict(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert list(sorted(got)) == list(sorted(want))
    for name, w in want.items():
        assert got[name].device.type == w.device.type, f"{name}: on {got[name].device}, expected {w.device}"
        assert_bit_equal(got[name].cpu(), w.cpu())


@pytest.fixture()
def st_file(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    sd = every_dtype_state_dict()
    path = tmp_path / "model.safetensors"
    st.save_file(sd, path, metadata={"format": "pt"})
    return path, sd


def test_the_dtypes_cover_fp8_bool_ints_and_floats() -> None:
    for d in (torch.float8_e4m3fn, torch.float8_e5m2, torch.bool, torch.int8, torch.uint8, torch.int64, torch.bfloat16, torch.float16, torch.float64):
        assert d in SHARED_DTYPES, d


@pytest.mark.parametrize("eager", [False, True])
def test_safetensors_file_loads_bit_exact_like_safetensors(st_file: tuple[Path, dict[str, torch.Tensor]], eager: bool) -> None:
    path, sd = st_file
    got = flashpack.load_file(path, eager=eager)
    want = st.load_file(path)
    assert_same_dict(got, want)
    assert_same_dict(got, sd)
    assert got["scalar"].shape == () and got["half_scalar"].shape == ()
    assert got["empty"].shape == (0, 4)
    for name, t in got.items():
        assert t.dtype == want[name].dtype and t.shape == want[name].shape, name


def test_eager_reads_with_many_small_chunks(st_file: tuple[Path, dict[str, torch.Tensor]], monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = st_file
    monkeypatch.setenv("FLASHPACK_READ_CHUNK_BYTES", str(16 << 10))
    monkeypatch.setenv("FLASHPACK_READ_THREADS", "3")
    assert_same_dict(flashpack.load_file(path, eager=True), st.load_file(path))


def test_lazy_tensors_are_copy_on_write(st_file: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, _ = st_file
    before = path.read_bytes()
    got = flashpack.load_file(path)
    got["big"].mul_(2)
    got["w.int8"].fill_(1)
    assert path.read_bytes() == before
    assert_bit_equal(flashpack.load_file(path)["big"], st.load_file(path)["big"])


def test_tensors_outlive_everything_else(st_file: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, _ = st_file
    big = flashpack.load_file(path, eager=True)["big"]
    import gc

    gc.collect()
    assert_bit_equal(big, st.load_file(path)["big"])


def test_flashpack_file_loads_like_its_state_dict(tmp_path: Path) -> None:
    sd = every_dtype_state_dict()
    sd["tied"] = sd["big"]  # stored once, loaded as views of the same bytes
    path = tmp_path / "model.bin"  # detected by content, not by suffix
    pack_to_file(sd, path, None)
    for eager in (False, True):
        got = flashpack.load_file(path, eager=eager)
        assert_same_dict(got, sd)
        assert got["scalar"].shape == ()


def test_shared_tensors_saved_by_safetensors_save_model(tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 10, bias=False))
    model[1].weight = model[0].weight  # tied: save_model keeps one name
    path = tmp_path / "tied.safetensors"
    st.save_model(model, str(path))
    assert_same_dict(flashpack.load_file(path), st.load_file(path))


def test_a_file_with_no_tensors(tmp_path: Path) -> None:
    path = tmp_path / "none.safetensors"
    st.save_file({}, path)
    assert flashpack.load_file(path) == {} == flashpack.load_file(path, eager=True)


def test_devices_are_checked() -> None:
    with pytest.raises(ValueError, match="Unsupported device"):
        flashpack.load_file("x", device="xla")


# ---- bad input -------------------------------------------------------------------------------


def write_raw(path: Path, header: dict, data: bytes) -> Path:
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


def test_truncated_file_names_the_file(st_file: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, _ = st_file
    raw = path.read_bytes()
    path.write_bytes(raw[:-10])
    for eager in (False, True):
        with pytest.raises(ValueError) as e:
            flashpack.load_file(path, eager=eager)
        assert str(path) in str(e.value) and "past the end" in str(e.value) and "tensor '" in str(e.value)


def test_header_lying_about_offsets_names_the_tensor(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "lie.safetensors", {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 64]}}, bytes(16))
    with pytest.raises(ValueError) as e:
        flashpack.load_file(path)
    assert str(path) in str(e.value) and "tensor 'w'" in str(e.value)


def test_overlapping_tensors_are_refused(tmp_path: Path) -> None:
    header = {
        "a": {"dtype": "U8", "shape": [8], "data_offsets": [0, 8]},
        "b": {"dtype": "U8", "shape": [8], "data_offsets": [4, 12]},
    }
    path = write_raw(tmp_path / "overlap.safetensors", header, bytes(12))
    with pytest.raises(ValueError) as e:
        flashpack.load_file(path, eager=True)
    assert str(path) in str(e.value)


def test_unknown_dtype_names_the_file_and_the_problem(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "dtype.safetensors", {"w": {"dtype": "F7", "shape": [1], "data_offsets": [0, 1]}}, bytes(8))
    with pytest.raises(ValueError) as e:
        flashpack.load_file(path)
    assert str(path) in str(e.value) and "F7" in str(e.value)


def test_shape_disagreeing_with_its_bytes_names_the_tensor(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "shape.safetensors", {"wrong": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8))
    with pytest.raises(ValueError) as e:
        flashpack.load_file(path)
    assert str(path) in str(e.value) and "wrong" in str(e.value)


def test_missing_and_odd_files_are_os_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        flashpack.load_file(tmp_path / "nope.safetensors")
    with pytest.raises(IsADirectoryError):
        flashpack.load_file(tmp_path)
    (tmp_path / "tiny").write_bytes(b"abc")
    with pytest.raises(ValueError, match="tiny"):
        flashpack.load_file(tmp_path / "tiny")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch's CUDA); the engine side runs against the stand-in in test_cuda_standin.py")
def test_cuda_loads_match_safetensors(st_file: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path) -> None:
    path, _ = st_file
    want = st.load_file(path, device="cuda:0")
    for device in ("cuda", "cuda:0", 0, torch.device("cuda", 0)):
        got = flashpack.load_file(path, device=device)
        assert all(t.device == torch.device("cuda", 0) for t in got.values())
        assert_same_dict(got, want)
    with flashpack.safe_open(path, device="cuda:0") as f:
        assert_bit_equal(f.get_slice("big")[3:250, 7].cpu(), want["big"][3:250, 7].cpu())
    sd = every_dtype_state_dict()
    sd["tied"] = sd["big"]
    fp = tmp_path / "m.flashpack"
    pack_to_file(sd, fp, None)
    got = flashpack.load_checkpoint(fp, device="cuda")
    assert_same_dict(got, sd)
    assert got["tied"].data_ptr() == got["big"].data_ptr()


def test_loads_through_host_memory_keep_tied_tensors_tied(tmp_path: Path) -> None:
    """MPS loads read into host memory, then copy each distinct byte range to the device once, so
    tied tensors stay one device tensor as on CUDA. Checked here with torch's "meta" device (a
    device reached through the same host-memory path, which exists on every machine)."""
    from flashpack.loading import entries_of, load_entries, open_weights

    sd = {"big": random_tensor(torch.float32, (64, 33), 1), "small": torch.arange(5)}
    sd["tied"] = sd["big"]
    path = tmp_path / "tied.flashpack"
    pack_to_file(sd, path, None)
    handle = open_weights(path)
    entries = entries_of(handle)
    got = dict(zip([e.name for e in entries], load_entries([handle], entries, torch.device("meta"), eager=True, progress=False)))
    assert all(t.device.type == "meta" for t in got.values())
    assert got["tied"] is got["big"]
    assert got["small"] is not got["big"] and got["small"].dtype == torch.int64 and got["small"].shape == (5,)


def test_eager_loads_honour_flashpack_huge_pages(
    st_file: tuple[Path, dict[str, torch.Tensor]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """FLASHPACK_HUGE_PAGES=1 asks the engine for huge pages for the eager host buffer, as for
    FlashPack loads (whether the kernel grants them is its business: checked at the call)."""
    path, sd = st_file
    asked: list[bool] = []
    read_job = flashpack._core.read_job

    def recording(*args: object, **kw: object) -> object:
        asked.append(bool(kw.get("huge_pages")))
        return read_job(*args, **kw)

    monkeypatch.setattr(flashpack._engine._core, "read_job", recording)
    for flag in ("1", "0"):
        monkeypatch.setenv("FLASHPACK_HUGE_PAGES", flag)
        assert_same_dict(flashpack.load_file(path, eager=True), sd)
        assert_same_dict(flashpack.load_checkpoint(path, eager=True), sd)
    assert asked == [True, True, False, False]
