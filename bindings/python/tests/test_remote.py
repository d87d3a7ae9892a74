"""URLs wherever a path is accepted, against real servers the tests start on 127.0.0.1 (see
remote_servers.py): nginx (HTTP with Range) and moto's S3 server. Every load is compared bit for
bit with safetensors' own reader (or, for FlashPack files, the local load of the same file);
every failure must name the URL and map to the exception a local file would give."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch as st
import torch
import torch.nn as nn

import flashpack
from flashpack import FlashPackMixin, _core, assign_from_file, get_flashpack_file_metadata, pack_to_file, read_flashpack_file, remote
from flashpack.deserialization import iterate_from_flash_tensor
from remote_servers import S3, Nginx, free_port, nginx, s3  # noqa: F401 - fixtures
from test_load_checkpoint import save_sharded
from test_load_file import assert_same_dict, every_dtype_state_dict


@pytest.fixture(autouse=True)
def _small_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    """64 KiB ranged GETs, so that each file of a few MiB is many parts fetched in parallel; quick
    retries, so that failures end fast."""
    monkeypatch.setenv("FLASHPACK_REMOTE_PART_BYTES", str(64 << 10))
    monkeypatch.setenv("FLASHPACK_REMOTE_RETRIES", "2")
    monkeypatch.setenv("FLASHPACK_REMOTE_REQUEST_TIMEOUT_SECS", "20")


class Model(nn.Module, FlashPackMixin):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(64, 32)
        self.b = nn.Linear(32, 8)
        self.register_buffer("steps", torch.tensor(5, dtype=torch.int64))


@pytest.fixture(scope="session")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The files every test reads, local: one safetensors file of every dtype, a checkpoint of
    three shards with its index, a FlashPack file (checksums on), a model's FlashPack file; and
    what each must load as."""
    d = tmp_path_factory.mktemp("remote-files")
    sd = every_dtype_state_dict()
    st.save_file(sd, d / "single.safetensors", metadata={"format": "pt", "source": "test"})
    save_sharded(d / "ckpt", every_dtype_state_dict(), shards=3)
    pack_to_file(sd, d / "m.flashpack", None)
    model = Model()
    model.save_flashpack(d / "model.flashpack")
    sharded: dict[str, torch.Tensor] = {}
    for f in sorted((d / "ckpt").glob("*.safetensors")):
        sharded.update(st.load_file(f))
    return {
        "dir": d,
        "single": st.load_file(d / "single.safetensors"),
        "sharded": sharded,
        "flashpack": flashpack.load_file(d / "m.flashpack", eager=True),
        "model": model.eval(),
    }


def _publish(files: dict[str, Any], put: Any) -> dict[str, str]:
    d: Path = files["dir"]
    names = ["single.safetensors", "m.flashpack", "model.flashpack"] + [f"ckpt/{p.name}" for p in sorted((d / "ckpt").iterdir())]
    return {name: put(name, (d / name).read_bytes()) for name in names}


@pytest.fixture(scope="session")
def http_urls(nginx: Nginx, files: dict[str, Any]) -> dict[str, str]:  # noqa: F811
    def put(name: str, data: bytes) -> str:
        (nginx.root / name).parent.mkdir(parents=True, exist_ok=True)
        (nginx.root / name).write_bytes(data)
        return nginx.url(name)

    return _publish(files, put)


@pytest.fixture(scope="session")
def s3_urls(s3: S3, files: dict[str, Any]) -> dict[str, str]:  # noqa: F811
    return _publish(files, s3.put)


@pytest.fixture(params=["http", "s3"])
def urls(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    yield request.getfixturevalue(f"{request.param}_urls")


# ---- loads, bit-exact ------------------------------------------------------------------------


@pytest.mark.parametrize("eager", [False, True])
def test_load_file_of_both_formats_is_bit_exact(urls: dict[str, str], files: dict[str, Any], eager: bool) -> None:
    got = flashpack.load_file(urls["single.safetensors"], eager=eager)
    assert_same_dict(got, files["single"])
    assert got["scalar"].shape == () and got["empty"].shape == (0, 4)
    got["big"].add_(1)  # owned memory (a URL is never mapped): writable
    assert_same_dict(flashpack.load_file(urls["m.flashpack"], eager=eager), files["flashpack"])


def test_safe_open_reads_only_what_is_asked(urls: dict[str, str], files: dict[str, Any]) -> None:
    want = files["single"]
    with flashpack.safe_open(urls["single.safetensors"], framework="pt") as f:
        assert f.keys() == sorted(want)
        assert f.metadata() == {"format": "pt", "source": "test"}
        for name in ("big", "scalar", "w.bfloat16"):
            assert_same_dict({name: f.get_tensor(name)}, {name: want[name]})
        assert_same_dict({"rows": f.get_slice("big")[10:20]}, {"rows": want["big"][10:20]})
        with pytest.raises(KeyError, match=urls["single.safetensors"].replace(".", r"\.")):
            f.get_tensor("absent")
    with flashpack.safe_open(urls["m.flashpack"], framework="pt") as f:
        assert_same_dict({"big": f.get_tensor("big")}, {"big": files["flashpack"]["big"]})


def test_load_checkpoint_of_a_sharded_index_url(urls: dict[str, str], files: dict[str, Any]) -> None:
    index = urls["ckpt/model.safetensors.index.json"]
    where, handles = _core.open_checkpoint(index)
    assert where == index and [h.path for h in handles] == [urls[f"ckpt/model-0000{k}-of-00003.safetensors"] for k in (1, 2, 3)]
    assert_same_dict(flashpack.load_checkpoint(index), files["sharded"])
    got = flashpack.load_checkpoint(index, keys=["big", "scalar"])
    assert_same_dict(got, {k: files["sharded"][k] for k in ("big", "scalar")})
    # One weight file by its URL is a checkpoint too.
    assert_same_dict(flashpack.load_checkpoint(urls["single.safetensors"]), files["single"])


def test_read_flashpack_file_and_assign_from_file(urls: dict[str, str], files: dict[str, Any]) -> None:
    storage, meta = read_flashpack_file(urls["m.flashpack"])
    assert_same_dict(dict(iterate_from_flash_tensor(storage, meta)), files["flashpack"])
    assert get_flashpack_file_metadata(urls["m.flashpack"]) == meta == get_flashpack_file_metadata(files["dir"] / "m.flashpack")
    storage, meta = read_flashpack_file(urls["single.safetensors"])
    assert meta["format"] == "checkpoint"
    assert_same_dict(dict(iterate_from_flash_tensor(storage, meta)), files["single"])
    want = files["model"].state_dict()
    fresh = Model()
    assign_from_file(fresh, urls["model.flashpack"])
    assert_same_dict(dict(fresh.state_dict()), dict(want))
    loaded = Model.from_flashpack(urls["model.flashpack"])
    assert_same_dict(dict(loaded.state_dict()), dict(want))
    x = torch.randn(3, 64)
    assert torch.equal(loaded.b(loaded.a(x)), files["model"].b(files["model"].a(x)))


def test_distributed_assign_of_a_url_points_to_load_checkpoint(http_urls: dict[str, str]) -> None:
    with pytest.raises(ValueError, match=r"load_checkpoint\(\.\.\., use_distributed_loading=True\)"):
        assign_from_file(Model(), http_urls["model.flashpack"], use_distributed_loading=True)


def test_read_url_fetches_a_small_object_whole(nginx: Nginx, s3: S3) -> None:  # noqa: F811
    config = json.dumps({"hidden_size": 64}).encode()
    (nginx.root / "config.json").write_bytes(config)
    assert remote.read_url(nginx.url("config.json")) == config
    assert remote.read_url(s3.put("config.json", config)) == config
    with pytest.raises(ValueError, match=r"config\.json.*over the limit"):
        remote.read_url(nginx.url("config.json"), limit=4)


def test_hf_urls_resolve_to_the_hub_endpoint(nginx: Nginx, files: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """``hf://org/repo[@revision]/file`` is ``$HF_ENDPOINT/org/repo/resolve/<revision>/file``
    (here nginx stands in for the Hub)."""
    for rev in ("main", "v1"):
        dst = nginx.root / "org/repo/resolve" / rev / "model.safetensors"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(files["dir"] / "single.safetensors", dst)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{nginx.port}")
    assert remote.is_url("hf://org/repo/model.safetensors")
    assert_same_dict(flashpack.load_file("hf://org/repo/model.safetensors"), files["single"])
    assert_same_dict(flashpack.load_file("hf://org/repo@v1/model.safetensors"), files["single"])
    with pytest.raises(FileNotFoundError, match="hf://org/repo/absent.safetensors"):
        flashpack.load_file("hf://org/repo/absent.safetensors")


# ---- errors ----------------------------------------------------------------------------------


def test_a_missing_object_is_file_not_found_naming_the_url(nginx: Nginx, s3: S3) -> None:  # noqa: F811
    for url in (nginx.url("absent.safetensors"), s3.url("absent.safetensors")):
        for load in (flashpack.load_file, flashpack.load_checkpoint, lambda u: flashpack.safe_open(u, "pt")):
            with pytest.raises(FileNotFoundError, match=url.replace(".", r"\.")):
                load(url)
        flashpack_url = url.replace(".safetensors", ".flashpack")
        with pytest.raises(FileNotFoundError, match=flashpack_url.replace(".", r"\.")):
            assign_from_file(Model(), flashpack_url)


def test_refused_access_is_permission_error_naming_the_url(nginx: Nginx, files: dict[str, Any]) -> None:  # noqa: F811
    shutil.copy(files["dir"] / "single.safetensors", nginx.root / "private" / "m.safetensors")
    url = nginx.url("private/m.safetensors")
    with pytest.raises(PermissionError, match=url.replace(".", r"\.")):
        flashpack.load_file(url)


def test_an_unreachable_host_is_an_os_error_naming_the_url_in_bounded_time() -> None:
    url = f"http://127.0.0.1:{free_port()}/m.safetensors"  # nothing listens there
    t = time.monotonic()
    with pytest.raises(OSError, match=url.replace(".", r"\.")) as e:
        flashpack.load_file(url)
    assert not isinstance(e.value, (FileNotFoundError, PermissionError)), e.value
    assert time.monotonic() - t < 30


def test_a_corrupt_file_is_a_value_error_naming_the_url(nginx: Nginx, files: dict[str, Any]) -> None:  # noqa: F811
    raw = bytearray((files["dir"] / "single.safetensors").read_bytes())
    raw[0:8] = (len(raw) * 2).to_bytes(8, "little")  # a header longer than the file
    (nginx.root / "corrupt.safetensors").write_bytes(bytes(raw))
    (nginx.root / "garbage.flashpack").write_bytes(b"not a weight file at all" * 100)
    for name in ("corrupt.safetensors", "garbage.flashpack"):
        url = nginx.url(name)
        with pytest.raises(ValueError, match=url.replace(".", r"\.")):
            flashpack.load_file(url)


def test_a_missing_shard_names_the_index_and_the_shard(nginx: Nginx, files: dict[str, Any]) -> None:  # noqa: F811
    src = files["dir"] / "ckpt"
    dst = nginx.root / "ckpt-missing"
    shutil.copytree(src, dst, dirs_exist_ok=True)
    gone = sorted(dst.glob("*.safetensors"))[1]
    gone.unlink()
    url = nginx.url("ckpt-missing/model.safetensors.index.json")
    with pytest.raises(FileNotFoundError, match=gone.name) as e:
        flashpack.load_checkpoint(url)
    assert "ckpt-missing" in str(e.value)


def test_urls_are_recognised_by_the_engine() -> None:
    for url in ("http://h/x", "https://h/x", "s3://b/k", "hf://o/r/f", "HTTPS://h/x"):
        assert remote.is_url(url) and _core.is_remote(url)
    for path in ("model.safetensors", "/tmp/s3://x", "file:///x", b"s3://b/k", Path("s3://b/k")):
        assert not remote.is_url(path)


def test_verify_checks_the_checksums_of_a_url_as_parts_arrive(http_urls: dict[str, str], nginx: Nginx, files: dict[str, Any]) -> None:  # noqa: F811
    storage, meta = read_flashpack_file(http_urls["m.flashpack"], verify=True)
    assert_same_dict(dict(iterate_from_flash_tensor(storage, meta)), files["flashpack"])
    raw = bytearray((files["dir"] / "m.flashpack").read_bytes())
    raw[100] ^= 0xFF  # in the payload (which starts the file)
    (nginx.root / "flipped.flashpack").write_bytes(bytes(raw))
    url = nginx.url("flipped.flashpack")
    with pytest.raises(ValueError, match=url.replace(".", r"\.") + ".*checksum"):
        read_flashpack_file(url, verify=True)


def test_verify_flashpack_file_of_a_url_checks_every_checksum(urls: dict[str, str], files: dict[str, Any]) -> None:
    """``verify_flashpack_file(url)`` checks the file at the URL as ``verify_flashpack_file(path)``
    checks the same file on disk (parts fetched in parallel, checked as they arrive)."""
    from flashpack.deserialization import verify_flashpack_file

    local = verify_flashpack_file(files["dir"] / "m.flashpack")
    assert local["chunks_checked"] >= 1 and local["algorithm"]
    assert verify_flashpack_file(urls["m.flashpack"]) == local
    single = urls["single.safetensors"]
    with pytest.raises(ValueError, match=single.replace(".", r"\.") + ".*not a FlashPack file"):
        verify_flashpack_file(single)
    absent = urls["m.flashpack"].replace("m.flashpack", "absent.flashpack")
    with pytest.raises(FileNotFoundError, match=absent.replace(".", r"\.")):
        verify_flashpack_file(absent)


def test_verify_flashpack_file_of_a_url_names_the_url_of_a_corrupt_byte(nginx: Nginx, files: dict[str, Any]) -> None:  # noqa: F811
    from flashpack.deserialization import verify_flashpack_file

    raw = bytearray((files["dir"] / "m.flashpack").read_bytes())
    raw[len(raw) // 3] ^= 0x01  # one bit, in the payload (which starts the file)
    (nginx.root / "one-bit.flashpack").write_bytes(bytes(raw))
    url = nginx.url("one-bit.flashpack")
    with pytest.raises(ValueError, match=url.replace(".", r"\.") + ".*checksum"):
        verify_flashpack_file(url)


def test_the_command_inspects_and_verifies_urls(urls: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    """``flashpack inspect / verify URL`` (the console script, through the Rust command)."""
    from flashpack.cli import main

    assert main(["inspect", urls["single.safetensors"]]) == 0
    out = capsys.readouterr().out
    assert urls["single.safetensors"] in out and "format: safetensors" in out and "tensors: 22" in out, out
    assert main(["verify", urls["m.flashpack"]]) == 0
    assert "checksums match" in capsys.readouterr().out
    assert main(["inspect", urls["ckpt/model.safetensors.index.json"]]) == 0
    assert "model-00003-of-00003.safetensors" in capsys.readouterr().out
    absent = urls["m.flashpack"].replace("m.flashpack", "absent.flashpack")
    assert main(["verify", absent]) != 0
    err = capsys.readouterr().err
    assert absent in err and "no such object" in err, err


def test_a_path_that_is_not_utf8_is_no_url() -> None:
    name = b"/tmp/caf\xe9://x.safetensors"
    assert not remote.is_url(name) and not remote.is_url(os.fsdecode(name))


def test_from_pretrained_flashpack_takes_hf_repository_ids_and_refuses_file_urls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``hf://org/repo[@revision]`` is the Hub repository (here an offline cache); the URL of one
    file is refused, naming what reads one (folders at a URL: test_remote_models.py)."""
    from hf_testing import minilm_dir, offline_hub, populate_hub_cache, same_bits
    from test_integrations_transformers import FlashPackBertModel

    model = FlashPackBertModel.from_pretrained(str(minilm_dir()))
    model.save_pretrained_flashpack(tmp_path / "fp")
    populate_hub_cache(offline_hub(monkeypatch, tmp_path / "cache"), "someone/minilm", tmp_path / "fp")
    want = model.state_dict()
    for name in ("hf://someone/minilm", "hf://someone/minilm@main"):
        loaded = FlashPackBertModel.from_pretrained_flashpack(name)
        assert all(same_bits(t, want[n]) for n, t in loaded.state_dict().items()), name
    for url in ("s3://bucket/models/minilm/model.safetensors", "https://example.com/m/config.json", "hf://someone/minilm/model.flashpack"):
        with pytest.raises(ValueError, match="assign_from_file"):
            FlashPackBertModel.from_pretrained_flashpack(url)
