"""``flashpack.load_checkpoint``: sharded safetensors folders (written with
``safetensors.torch.save_file`` and an index json as transformers writes it), single files,
multi-file FlashPack checkpoints, ``keys``, lazy/eager, and the errors for bad checkpoints."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

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
    with pytest.raises(KeyError, match=r"no tensor 'nope'") as e:
        flashpack.load_checkpoint(tmp_path, keys=["layer0.step", "nope"])
    assert isinstance(e.value, ValueError)
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


def test_an_index_and_its_files_may_be_spelled_relative_or_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The index's folder and its shards given one relative and one absolute (or with ``./``)
    are the same folder; the names in the index stay relative."""
    sd = {"a": torch.arange(4, dtype=torch.float32), "b": torch.ones(3, dtype=torch.int64)}
    (tmp_path / "ck").mkdir()
    pack_to_file({"a": sd["a"]}, tmp_path / "ck" / "m-00001-of-00002.flashpack", None)
    pack_to_file({"b": sd["b"]}, tmp_path / "ck" / "m-00002-of-00002.flashpack", None)
    names = ["m-00001-of-00002.flashpack", "m-00002-of-00002.flashpack"]
    monkeypatch.chdir(tmp_path)
    spellings = [
        ("ck/m.flashpack.index.json", [str(tmp_path / "ck" / n) for n in names]),
        (str(tmp_path / "ck" / "m.flashpack.index.json"), [f"ck/{n}" for n in names]),
        ("./ck/m.flashpack.index.json", [f"ck/{n}" for n in names]),
    ]
    for index, files in spellings:
        _core.write_checkpoint_index(index, "flashpack", files)
        weight_map = json.loads(Path(index).read_text())["weight_map"]
        assert weight_map == {"a": names[0], "b": names[1]}, index
        assert_same_dict(flashpack.load_checkpoint(tmp_path / "ck", eager=True), sd)


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
    with pytest.raises(FileNotFoundError, match="model-00002-of-00002.safetensors"):
        flashpack.load_checkpoint(tmp_path)


def _drop_shard(index: Path) -> None:
    (index.parent / "model-00002-of-00002.safetensors").unlink()


def _rewrite_index(text: str) -> Any:
    return lambda index: index.write_text(text)


def _edit_index(edit: Any) -> Any:
    def apply(index: Path) -> None:
        data = json.loads(index.read_text())
        edit(data)
        index.write_text(json.dumps(data))

    return apply


# name -> (damage done to a 2-shard folder's index / shards, the exception class, text in its message)
BAD_CHECKPOINTS: dict[str, tuple[Any, type[BaseException], str]] = {
    "missing shard": (_drop_shard, FileNotFoundError, "shard 'model-00002-of-00002.safetensors' .* does not exist"),
    "index not json": (_rewrite_index("{not json"), ValueError, "not a valid checkpoint index"),
    "index not an object": (_rewrite_index("[1, 2]"), ValueError, "not a valid checkpoint index"),
    "weight_map not an object": (_edit_index(lambda d: d.update(weight_map=["a"])), ValueError, "not a valid checkpoint index"),
    "empty weight_map": (_edit_index(lambda d: d.update(weight_map={})), ValueError, "lists no tensors"),
    "shard outside the folder": (
        _edit_index(lambda d: d["weight_map"].update({"layer0.step": "../model-00001-of-00002.safetensors"})),
        ValueError,
        "not a plain file name inside the index's folder",
    ),
    "unknown FlashPack index version": (
        _edit_index(lambda d: d.update(format="flashpack_index", version=99)),
        ValueError,
        "unsupported index format",
    ),
}


@pytest.mark.parametrize("case", list(BAD_CHECKPOINTS))
def test_bad_checkpoints_raise_the_python_exception_for_the_problem(tmp_path: Path, case: str) -> None:
    """A missing shard is FileNotFoundError (as for any missing file), a corrupt index ValueError;
    each names the index; the same through load_checkpoint and assign_from_file."""
    damage, kind, pattern = BAD_CHECKPOINTS[case]
    index = save_sharded(tmp_path, state_dict(), shards=2)
    damage(index)
    with pytest.raises(kind, match=pattern) as e:
        flashpack.load_checkpoint(tmp_path)
    assert str(index) in str(e.value)
    with pytest.raises(kind, match=pattern):
        flashpack.assign_from_file(torch.nn.Linear(2, 2), index)


def test_a_tensor_missing_by_name_is_a_key_error(tmp_path: Path) -> None:
    """Asking for a tensor the checkpoint or file lacks: KeyError (a dict lookup; safetensors 0.8
    raises its own SafetensorError), which is also the ValueError earlier releases raised."""
    index = save_sharded(tmp_path, state_dict(), shards=2)
    with pytest.raises(KeyError) as e:
        flashpack.load_checkpoint(index, keys=["nope"])
    assert isinstance(e.value, ValueError) and isinstance(e.value, flashpack.TensorNotFoundError)
    assert str(e.value) == f"{index}: the checkpoint has no tensor 'nope'"
    with flashpack.safe_open(tmp_path / "model-00001-of-00002.safetensors") as f, pytest.raises(KeyError, match="'nope'"):
        f.get_tensor("nope")


def _bytes_read_by_this_process() -> int:
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("rchar:")).split()[1])


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="needs Linux's per-process I/O counters")
def test_ctrl_c_stops_a_checkpoint_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A signal handler that raises during an eager job stops it between chunks with that
    exception (the job runs on a worker thread while this thread runs the handlers).

    No timer: a helper thread sends the signal once this process's read counter shows the job
    under way, and the test checks that the job stopped before reading everything (so it cannot
    pass on a load that finished first). Buffered reads of 4 KiB on one thread: 256 MiB takes
    far longer than the binding's 20 ms between signal checks."""
    total = 256 << 20
    sd = {f"w{k}": torch.full((total // 4,), k, dtype=torch.uint8) for k in range(4)}
    save_sharded(tmp_path, sd, shards=4)
    monkeypatch.setenv("FLASHPACK_READ_CHUNK_BYTES", "4096")
    monkeypatch.setenv("FLASHPACK_READ_THREADS", "1")
    monkeypatch.setenv("FLASHPACK_DIRECT_IO", "0")

    class Stop(Exception):
        pass

    def raise_stop(*_: object) -> None:
        raise Stop

    main = threading.get_ident()
    started = _bytes_read_by_this_process()
    done = threading.Event()

    def send_once_under_way() -> None:
        while not done.is_set():
            if _bytes_read_by_this_process() - started > (1 << 20):
                signal.pthread_kill(main, signal.SIGALRM)
                return
            time.sleep(0.001)

    old = signal.signal(signal.SIGALRM, raise_stop)
    sender = threading.Thread(target=send_once_under_way)
    try:
        sender.start()
        with pytest.raises(Stop):
            flashpack.load_checkpoint(tmp_path, eager=True)
        read = _bytes_read_by_this_process() - started
    finally:
        done.set()
        sender.join()
        signal.signal(signal.SIGALRM, old)
    assert 1 << 20 < read < total, f"the job was not stopped part way: it read {read} of {total} bytes"


# ---- use_distributed_loading (gloo on CPU, as test_distributed.py) ------------------------------


# Legal safetensors whose F32 tensor "b" starts 3 bytes into the data (not a multiple of 4).
MISALIGNED = {"a": torch.tensor([1, 2, 3], dtype=torch.uint8), "b": torch.tensor([1.5, -2.25])}
# A rank still waiting after this long was left behind by an error on rank 0.
DIST_TIMEOUT_S = 20


def write_misaligned(path: Path) -> None:
    header = {
        "a": {"dtype": "U8", "shape": [3], "data_offsets": [0, 3]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [3, 11]},
    }
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-aligned in the file, so "b" is at 3 mod 8
    data = MISALIGNED["a"].numpy().tobytes() + MISALIGNED["b"].numpy().tobytes()
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)


def _timed(fn: Any) -> dict[str, Any]:
    from test_distributed import _try

    started = time.monotonic()
    out = _try(fn)
    out["seconds"] = time.monotonic() - started
    return out


def _dist_worker(rank: int, world: int, port: int, folder: str, single: str, out_dir: str) -> None:
    import datetime

    import torch.distributed as dist

    from test_distributed import _digests, _try

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), FLASHPACK_DIST_TIMEOUT=str(DIST_TIMEOUT_S))
    timeout = datetime.timedelta(seconds=DIST_TIMEOUT_S)
    dist.init_process_group("gloo", rank=rank, world_size=world, init_method=f"tcp://127.0.0.1:{port}", timeout=timeout)
    misaligned = str(Path(single).with_name("misaligned.safetensors"))
    # Only rank 0 needs the files: the others are given paths that do not exist.
    here = (lambda p: p) if rank == 0 else (lambda p: p + ".elsewhere")
    results = {
        "checkpoint": _try(lambda: _digests(flashpack.load_checkpoint(here(folder), use_distributed_loading=True))),
        "keys": _try(lambda: sorted(flashpack.load_checkpoint(here(folder), keys=["layer0.step"], use_distributed_loading=True))),
        "file": _try(lambda: _digests(flashpack.load_file(here(single), use_distributed_loading=True))),
        "missing_key": _try(lambda: flashpack.load_checkpoint(here(folder), keys=["nope"], use_distributed_loading=True)),
        "after": _try(lambda: len(flashpack.load_file(here(single), use_distributed_loading=True))),
        "misaligned": _try(lambda: _digests(flashpack.load_file(here(misaligned), use_distributed_loading=True))),
        "misaligned_ckpt": _try(lambda: _digests(flashpack.load_checkpoint(here(misaligned), use_distributed_loading=True))),
        # Any exception on rank 0 (here a TypeError from keys=123) reaches every rank at once.
        # Last: a rank left waiting would otherwise pair its collectives with the next load's.
        "bad_keys": _timed(lambda: flashpack.load_checkpoint(here(folder), keys=123, use_distributed_loading=True)),  # type: ignore[arg-type]
    }
    dist.destroy_process_group()
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))


def test_distributed_loading_reads_on_rank_0_and_every_rank_gets_the_same(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    from test_distributed import _digests, _free_port

    sd = state_dict()
    save_sharded(tmp_path / "ckpt", sd, shards=3)
    st.save_file(sd, tmp_path / "one.safetensors")
    write_misaligned(tmp_path / "misaligned.safetensors")
    out = tmp_path / "out"
    out.mkdir()
    world = 2
    mp.start_processes(
        _dist_worker,
        args=(world, _free_port(), str(tmp_path / "ckpt"), str(tmp_path / "one.safetensors"), str(out)),
        nprocs=world,
        start_method="spawn",
    )
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]
    want = _digests(sd)
    for r, res in enumerate(ranks):
        assert res["checkpoint"].get("ok") == want, f"rank {r}: {res['checkpoint']}"
        assert res["file"].get("ok") == want, f"rank {r}: {res['file']}"
        assert res["keys"].get("ok") == ["layer0.step"], f"rank {r}: {res['keys']}"
        err = res["missing_key"].get("error", "")
        assert "rank 0" in err and "nope" in err, f"rank {r}: {res['missing_key']}"
        assert res["after"].get("ok") == len(sd), f"rank {r}: the group stays usable: {res['after']}"
        # A tensor at an offset that is not a multiple of its element size loads on every rank.
        assert res["misaligned"].get("ok") == _digests(MISALIGNED), f"rank {r}: {res['misaligned']}"
        assert res["misaligned_ckpt"].get("ok") == _digests(MISALIGNED), f"rank {r}: {res['misaligned_ckpt']}"
    for r, res in enumerate(ranks):
        err = res["bad_keys"].get("error", "")
        assert "TypeError" in err and "rank 0" in err, f"rank {r}: {res['bad_keys']}"
        assert res["bad_keys"]["seconds"] < DIST_TIMEOUT_S / 2, f"rank {r} waited for the timeout: {res['bad_keys']}"


def test_the_misaligned_file_is_legal_and_loads_in_one_process(tmp_path: Path) -> None:
    """The file of the distributed test above: safetensors and the single-process paths load it."""
    path = tmp_path / "misaligned.safetensors"
    write_misaligned(path)
    assert_same_dict(st.load_file(path), MISALIGNED)
    for eager in (False, True):
        assert_same_dict(flashpack.load_file(path, eager=eager), MISALIGNED)
