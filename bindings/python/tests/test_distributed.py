"""Distributed loading with gloo on CPU: 2 and 3 processes, broadcast and sharded (one round and
several), bit-identical to a single-process load; the sharded strategy reads each payload byte
once in total; a missing or different file, or a wrong world size, is an error on every rank."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
import traceback
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import flashpack
from flashpack import assign_from_file, pack_to_file, revert_from_file
from flashpack.deserialization import iterate_from_flash_tensor, read_flashpack_file_distributed

TIMEOUT_S = 60


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _state_dict() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    return {
        "emb": torch.randn(4000, 1000, generator=g),  # 16 MB: several 4 MiB shards per rank
        "half": torch.randn(777, 13, generator=g).to(torch.bfloat16),
        "ids": torch.arange(1001),
        "mask": torch.rand(33, generator=g) > 0.5,
        "scale": torch.tensor(2.5),
        "bytes": torch.randint(0, 255, (4099,), generator=g, dtype=torch.uint8),
    }


def _digests(tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    out = {}
    for name, t in tensors.items():
        raw = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        out[name] = f"{t.dtype}|{tuple(t.shape)}|{hashlib.sha256(raw).hexdigest()}"
    return out


def _try(fn: Any) -> dict[str, Any]:
    try:
        return {"ok": fn()}
    except Exception as e:  # noqa: BLE001 - the parent checks the message
        return {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-2000:]}


def _worker(rank: int, world: int, port: int, scenario: str, files: dict[str, str], out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), FLASHPACK_DIST_TIMEOUT=str(files.get("timeout", TIMEOUT_S)))
    results: dict[str, Any] = {}
    if scenario == "group_cannot_form":
        # Every rank believes the world is one larger than it is: the group never forms.
        started = time.monotonic()

        def init_wrong() -> None:
            model = torch.nn.Linear(2, 2)
            assign_from_file(model, files["good"], use_distributed_loading=True, rank=rank, world_size=world + 1)

        results["wrong_world"] = _try(init_wrong)
        results["seconds"] = time.monotonic() - started
    else:
        dist.init_process_group("gloo", rank=rank, world_size=world, init_method=f"tcp://127.0.0.1:{port}")
        if scenario == "load":
            for label, sharded, strategy, env in (
                ("broadcast", False, None, {}),
                ("contiguous", True, "contiguous", {}),
                ("windows", True, "windows", {"FLASHPACK_SHARD_BYTES": str(4 << 20)}),
                ("env", False, None, {"FLASHPACK_DISTRIBUTED_SHARDED": "1"} if rank == 0 else {}),
            ):
                saved = dict(os.environ)
                os.environ.update(env)

                def load() -> dict[str, Any]:
                    storage, meta = read_flashpack_file_distributed(
                        files["good"], device="cpu", sharded=sharded, shard_strategy=strategy, verify=label == "windows"
                    )
                    return {"digests": _digests(dict(iterate_from_flash_tensor(storage, meta))), "io": storage.io}

                results[label] = _try(load)
                os.environ.clear()
                os.environ.update(saved)

            def assign() -> dict[str, str]:
                model = torch.nn.Linear(1000, 3000)
                assign_from_file(model, files["linear"], use_distributed_loading=True, distributed_sharded=True)
                return _digests(dict(model.state_dict()))

            results["assign"] = _try(assign)
        elif scenario == "errors":
            def load(path: str, sharded: bool) -> Any:
                return lambda: read_flashpack_file_distributed(path, device="cpu", sharded=sharded)[0].io

            missing_here = files["missing"] if rank == 1 else files["good"]
            results["missing_sharded"] = _try(load(missing_here, True))
            results["missing_on_receiver_broadcast"] = _try(load(missing_here, False))
            results["missing_on_src_broadcast"] = _try(load(files["missing"] if rank == 0 else files["good"], False))
            results["different_file"] = _try(load(files["other"] if rank == 1 else files["good"], True))

            def wrong_world() -> None:
                model = torch.nn.Linear(1000, 3000)
                assign_from_file(
                    model, files["linear"], use_distributed_loading=True, world_size=world + 1 if rank == 1 else None
                )

            results["wrong_world"] = _try(wrong_world)

            def bad_setting_on_rank_1() -> Any:
                saved = dict(os.environ)
                if rank == 1:
                    os.environ["FLASHPACK_READ_THREADS"] = "many"
                try:
                    return load(files["good"], True)()
                finally:
                    os.environ.clear()
                    os.environ.update(saved)

            results["bad_setting"] = _try(bad_setting_on_rank_1)
            results["after_errors"] = _try(load(files["good"], True))
        dist.destroy_process_group()
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))


def _run(world: int, scenario: str, files: dict[str, Any], tmp_path: Path) -> list[dict[str, Any]]:
    out = tmp_path / f"out-{scenario}-{world}"
    out.mkdir()
    mp.start_processes(_worker, args=(world, _free_port(), scenario, files, str(out)), nprocs=world, start_method="spawn")
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("dist")
    pack_to_file(_state_dict(), d / "good.flashpack")
    other = _state_dict()
    other["ids"] = other["ids"] + 1
    pack_to_file(other, d / "other.flashpack")
    torch.manual_seed(5)
    pack_to_file(torch.nn.Linear(1000, 3000), d / "linear.flashpack")
    return {"good": str(d / "good.flashpack"), "other": str(d / "other.flashpack"),
            "linear": str(d / "linear.flashpack"), "missing": str(d / "nowhere.flashpack")}  # fmt: skip


@pytest.mark.parametrize("world", [2, 3])
def test_every_rank_gets_the_single_process_state_dict(world: int, files: dict[str, str], tmp_path: Path) -> None:
    want = _digests(revert_from_file(files["good"]))
    payload = flashpack._core.open(files["good"]).payload_len
    torch.manual_seed(5)
    want_linear = _digests(dict(torch.nn.Linear(1000, 3000).state_dict()))
    ranks = _run(world, "load", files, tmp_path)
    for label in ("broadcast", "contiguous", "windows", "env"):
        for r, res in enumerate(ranks):
            assert "ok" in res[label], f"{label} rank {r}: {res[label]}"
            assert res[label]["ok"]["digests"] == want, f"{label} rank {r}"
        io = [res[label]["ok"]["io"] for res in ranks]
        read = [i["bytes_read"] for i in io]
        # Every payload byte read once in total, whichever strategy.
        assert sum(read) == payload, f"{label}: {read} vs {payload}"
        if label == "broadcast":
            assert read[0] == payload and all(n == 0 for n in read[1:]), read
        else:
            # Shards are whole 4 MiB checksum chunks, so with this small file a third rank may get none.
            assert sum(1 for n in read if n) >= 2 and max(read) < payload, f"{label}: the reads are shared: {read}"
    assert ranks[0]["windows"]["ok"]["io"]["rounds"] > 1
    assert ranks[0]["contiguous"]["ok"]["io"]["rounds"] == 1
    # The strategy is rank 0's choice: only rank 0 set FLASHPACK_DISTRIBUTED_SHARDED.
    assert all(res["env"]["ok"]["io"]["strategy"] == "sharded" for res in ranks)
    assert all(res["assign"].get("ok") == want_linear for res in ranks), [res["assign"] for res in ranks]


def test_failures_on_one_rank_are_errors_on_every_rank(files: dict[str, str], tmp_path: Path) -> None:
    ranks = _run(2, "errors", files, tmp_path)
    for r, res in enumerate(ranks):
        err = res["missing_sharded"].get("error", "")
        assert "rank 1" in err and "nowhere.flashpack" in err, f"rank {r}: {res['missing_sharded']}"
        err = res["missing_on_src_broadcast"].get("error", "")
        assert "rank 0" in err and "nowhere.flashpack" in err, f"rank {r}: {res['missing_on_src_broadcast']}"
        err = res["different_file"].get("error", "")
        assert "differs from rank 0" in err, f"rank {r}: {res['different_file']}"
        err = res["wrong_world"].get("error", "")
        assert "rank 1" in err and "world_size=3" in err, f"rank {r}: {res['wrong_world']}"
        # A reader setting one rank cannot parse is an error on every rank (it used to raise on
        # that rank alone, leaving the others waiting for it until the timeout).
        err = res["bad_setting"].get("error", "")
        assert "rank 1" in err and "FLASHPACK_READ_THREADS" in err, f"rank {r}: {res['bad_setting']}"
        assert "ok" in res["after_errors"], f"rank {r}: the group stays usable: {res['after_errors']}"
    # Only the source rank needs the file for a broadcast.
    assert all("ok" in res["missing_on_receiver_broadcast"] for res in ranks), ranks


def test_a_group_that_cannot_form_fails_within_the_timeout(files: dict[str, str], tmp_path: Path) -> None:
    ranks = _run(2, "group_cannot_form", {**files, "timeout": 5}, tmp_path)
    for r, res in enumerate(ranks):
        err = res["wrong_world"].get("error", "")
        assert "could not form the process group of 3 ranks" in err, f"rank {r}: {res['wrong_world']}"
        assert res["seconds"] < 60, f"rank {r} took {res['seconds']:.0f} s"
