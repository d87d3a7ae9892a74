"""``flashpack.load_checkpoint``: sharded safetensors folders (written with
``safetensors.torch.save_file`` and an index json as transformers writes it), single files,
multi-file FlashPack checkpoints, ``keys``, lazy/eager, and the errors for bad checkpoints."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import safetensors.torch as st
import torch

import flashpack
from flashpack import _core, pack_to_file
from test_load_file import SHARED_DTYPES, assert_same_dict
from test_roundtrip import random_tensor


def state_dict() -> dict[str, torch.Tensor]:
    sd = {f"layer{i}.{str(d).removeprefix('torch.')}": random_tensor(d, (5, 11 + i), i) for i, d in enumerate(SHARED_DTYPES)}
    sd["layer0.step"] = torch.tensor(3, dtype=torch.int64)
    sd["layer1.empty"] = torch.empty(0, dtype=torch.float16)
    sd["layer2.big"] = random_tensor(torch.float32, (256, 1000), 7)
    return sd


def save_sharded(folder: Path, sd: dict[str, torch.Tensor], shards: int = 4, name: str = "model", suffix: str = "") -> Path:
    """Shards as transformers names them, and ``<name>.safetensors.index<suffix>.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    names = list(sd)
    weight_map = {}
    total = 0
    for k in range(shards):
        part = {n: sd[n] for n in names[k::shards]}
        file = f"{name}-{k + 1:05d}-of-{shards:05d}{suffix}.safetensors"
        st.save_file(part, folder / file, metadata={"format": "pt"})
        weight_map.update({n: file for n in part})
        total += sum(t.numel() * t.element_size() for t in part.values())
    index = folder / f"{name}.safetensors.index{suffix}.json"
    index.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    return index


@pytest.mark.parametrize("eager", [False, True])
def test_sharded_folder_loads_bit_exact(tmp_path: Path, eager: bool) -> None:
    sd = state_dict()
    index = save_sharded(tmp_path / "ckpt", sd)
    want: dict[str, torch.Tensor] = {}
    for f in sorted((tmp_path / "ckpt").glob("*.safetensors")):
        want.update(st.load_file(f))
    for path in (tmp_path / "ckpt", index):
        got = flashpack.load_checkpoint(path, eager=eager)
        assert_same_dict(got, want)
        assert got["layer0.step"].shape == ()


def test_one_job_reads_with_small_chunks_and_many_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sd = state_dict()
    save_sharded(tmp_path, sd, shards=3)
    monkeypatch.setenv("FLASHPACK_READ_CHUNK_BYTES", str(8 << 10))
    monkeypatch.setenv("FLASHPACK_READ_THREADS", "5")
    assert_same_dict(flashpack.load_checkpoint(tmp_path, eager=True), sd)


def test_diffusers_and_variant_names(tmp_path: Path) -> None:
    sd = state_dict()
    save_sharded(tmp_path / "unet", sd, name="diffusion_pytorch_model")
    assert_same_dict(flashpack.load_checkpoint(tmp_path / "unet"), sd)
    half = {k: v for k, v in sd.items() if k.startswith("layer1")}
    save_sharded(tmp_path / "v", sd, shards=2)
    save_sharded(tmp_path / "v", half, shards=1, suffix=".fp16")
    assert_same_dict(flashpack.load_checkpoint(tmp_path / "v" / "model.safetensors.index.fp16.json"), half)
    assert_same_dict(flashpack.load_checkpoint(tmp_path / "v", variant="fp16"), half)


def test_a_single_file_and_a_folder_holding_one(tmp_path: Path) -> None:
    sd = state_dict()
    st.save_file(sd, tmp_path / "model.safetensors")
    assert_same_dict(flashpack.load_checkpoint(tmp_path / "model.safetensors"), sd)
    assert_same_dict(flashpack.load_checkpoint(tmp_path, eager=True), sd)


def test_keys_load_only_those_and_name_missing_ones(tmp_path: Path) -> None:
    sd = state_dict()
    save_sharded(tmp_path, sd)
    keys = ["layer2.big", "layer0.step"]
    for eager in (False, True):
        got = flashpack.load_checkpoint(tmp_path, eager=eager, keys=iter(keys))
        assert list(got) == keys
        assert_same_dict(got, {k: sd[k] for k in keys})
    with pytest.raises(ValueError, match=r"no tensor 'nope'") as e:
        flashpack.load_checkpoint(tmp_path, keys=["layer0.step", "nope"])
    assert "model.safetensors.index.json" in str(e.value)


def test_keys_read_only_their_bytes(tmp_path: Path) -> None:
    """The one-job reader reads the spans of the asked tensors (plus alignment heads), not the
    shards: checked through the engine's own byte counts."""
    sd = state_dict()
    save_sharded(tmp_path, sd)
    _, handles = _core.open_checkpoint(str(tmp_path))
    from flashpack.loading import select_entries

    entries = select_entries("x", handles, ["layer0.step"])
    _, _, _, io = _core.read_job(handles, [(e.file, e.start, e.end) for e in entries])
    assert io["direct_bytes"] + io["buffered_bytes"] < 8192
    every = select_entries("x", handles, None)
    _, _, _, io = _core.read_job(handles, [(e.file, e.start, e.end) for e in every])
    assert io["direct_bytes"] + io["buffered_bytes"] >= sum(e.nbytes for e in every)


def test_multi_file_flashpack_checkpoint(tmp_path: Path) -> None:
    """FlashPack shards with the multi-file FlashPack index the engine writes, and the same
    shards under a safetensors-style index."""
    sd = state_dict()
    names = list(sd)
    files = []
    for k in range(3):
        files.append(tmp_path / f"model-{k + 1:05d}-of-00003.flashpack")
        pack_to_file({n: sd[n] for n in names[k::3]}, files[-1], None)
    _core.write_checkpoint_index(str(tmp_path / "model.flashpack.index.json"), "flashpack", [str(f) for f in files])
    for eager in (False, True):
        assert_same_dict(flashpack.load_checkpoint(tmp_path, eager=eager), sd)
    other = tmp_path / "other"
    other.mkdir()
    for f in files:
        (other / f.name).write_bytes(f.read_bytes())
    _core.write_checkpoint_index(str(other / "model.safetensors.index.json"), "safetensors", [str(other / f.name) for f in files])
    assert_same_dict(flashpack.load_checkpoint(other / "model.safetensors.index.json", eager=True), sd)


def test_flashpack_files_as_one_checkpoint_file(tmp_path: Path) -> None:
    sd = state_dict()
    pack_to_file(sd, tmp_path / "m.flashpack", None)
    assert_same_dict(flashpack.load_checkpoint(tmp_path / "m.flashpack"), sd)


def test_a_folder_with_no_weights_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("no weights")
    with pytest.raises(ValueError, match="no checkpoint here") as e:
        flashpack.load_checkpoint(tmp_path)
    assert str(tmp_path) in str(e.value)


def test_an_index_naming_a_tensor_its_shard_lacks_names_all_three(tmp_path: Path) -> None:
    index = save_sharded(tmp_path, state_dict(), shards=2)
    data = json.loads(index.read_text())
    data["weight_map"]["ghost"] = "model-00001-of-00002.safetensors"
    index.write_text(json.dumps(data))
    with pytest.raises(ValueError) as e:
        flashpack.load_checkpoint(tmp_path)
    msg = str(e.value)
    assert "ghost" in msg and "model-00001-of-00002.safetensors" in msg and str(index) in msg


def test_a_missing_or_truncated_shard_names_the_shard(tmp_path: Path) -> None:
    save_sharded(tmp_path, state_dict(), shards=2)
    shard = tmp_path / "model-00002-of-00002.safetensors"
    raw = shard.read_bytes()
    shard.write_bytes(raw[:-5])
    with pytest.raises(ValueError, match="model-00002-of-00002.safetensors"):
        flashpack.load_checkpoint(tmp_path)
    shard.unlink()
    with pytest.raises((ValueError, OSError), match="model-00002-of-00002.safetensors"):
        flashpack.load_checkpoint(tmp_path)


def test_ctrl_c_stops_a_checkpoint_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A signal handler that raises during an eager job stops it between chunks with that
    exception (the job runs on a worker thread while this thread runs the handlers)."""
    sd = {f"w{k}": random_tensor(torch.uint8, (24 << 20,), k) for k in range(4)}
    save_sharded(tmp_path, sd, shards=4)
    # Direct reads of 4 KiB with one thread: long enough for the alarm to land mid-job.
    monkeypatch.setenv("FLASHPACK_READ_CHUNK_BYTES", "4096")
    monkeypatch.setenv("FLASHPACK_READ_THREADS", "1")
    monkeypatch.setenv("FLASHPACK_DIRECT_IO", "0")

    class Stop(Exception):
        pass

    def raise_stop(*_: object) -> None:
        raise Stop

    old = signal.signal(signal.SIGALRM, raise_stop)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        with pytest.raises(Stop):
            flashpack.load_checkpoint(tmp_path, eager=True)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
