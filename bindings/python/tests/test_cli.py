"""The ``flashpack`` command: convert / revert / metadata / inspect / verify, exit codes and
one-line errors, one command with the Rust binary (same parser, same subcommands and flags, one
implementation per subcommand), bit-exact safetensors round trips keeping ``__metadata__``,
atomic writes (a failed write leaves the previous file), and that neither the CLI nor
``import flashpack`` needs diffusers or transformers."""

from __future__ import annotations

import json
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
import torch
from hf_testing import offline_hub, populate_hub_cache, run_cli, same_bits
from safetensors.torch import load_file, save_file

from flashpack import _core, get_flashpack_file_metadata, pack_to_file, revert_from_file
from flashpack.cli import main

ROOT = Path(__file__).resolve().parents[3]


def mixed_state_dict() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    weight = torch.randn(48, 40, generator=g)
    special = torch.tensor([float("nan"), -0.0, float("inf"), 1e-40])  # NaN, signed zero, subnormal
    return {
        "layer.weight": weight,
        "layer.bias": torch.randn(40, generator=g).to(torch.bfloat16),
        "half": torch.randn(7, 3, generator=g).to(torch.float16),
        "special": special,
        "position_ids": torch.arange(33),
        "mask": torch.rand(5, generator=g) > 0.5,
        "scale": torch.tensor(0.5),  # 0-dim
        "bytes": torch.randint(0, 255, (9,), generator=g, dtype=torch.uint8),
    }


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "weights.safetensors"
    save_file(mixed_state_dict(), path)
    return path


def test_convert_then_revert_is_bit_exact(source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["convert", str(source)]) == 0  # default destination: beside the source
    packed = source.with_suffix(".flashpack")
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"{source} (safetensors) -> {packed} (FlashPack flashpack_v4): 8 tensors"), out
    assert main(["revert", str(packed), str(tmp_path / "back.safetensors")]) == 0
    original, back = load_file(source), load_file(tmp_path / "back.safetensors")
    assert list(back) and set(back) == set(original)
    assert all(same_bits(back[name], tensor) for name, tensor in original.items())

    assert main(["revert", str(packed), str(tmp_path / "back.pt")]) == 0
    loaded = torch.load(tmp_path / "back.pt", weights_only=True)
    assert all(same_bits(loaded[name], tensor) for name, tensor in original.items())


def test_revert_defaults_to_safetensors_and_unties_shared_records(tmp_path: Path) -> None:
    shared = torch.randn(6, 4)
    pack_to_file({"embed.weight": shared, "head.weight": shared, "bias": torch.ones(4)}, tmp_path / "tied.flashpack")
    index = get_flashpack_file_metadata(tmp_path / "tied.flashpack")["index"]
    offsets = {r["name"]: r["offset"] for r in index}
    assert offsets["embed.weight"] == offsets["head.weight"]  # stored once
    assert main(["revert", str(tmp_path / "tied.flashpack")]) == 0
    back = load_file(tmp_path / "tied.safetensors")  # safetensors refuses tensors sharing memory
    assert same_bits(back["embed.weight"], shared) and same_bits(back["head.weight"], shared)


def test_convert_options_dtype_and_ignore(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.flashpack"
    args = ["convert", str(source), str(out), "--dtype", "bf16", "--ignore-names", "mask",
            "--ignore-prefixes", "layer.", "--ignore-suffixes", "_ids"]  # fmt: skip
    assert main(args) == 0
    back = revert_from_file(out)
    assert set(back) == {"half", "special", "scale", "bytes"}
    original = load_file(source)
    assert back["half"].dtype == torch.bfloat16 and torch.equal(back["half"], original["half"].to(torch.bfloat16))
    assert same_bits(back["bytes"], original["bytes"])  # only floating-point tensors are cast
    assert back["scale"].shape == ()


def test_convert_a_sharded_folder_and_a_torch_file(tmp_path: Path) -> None:
    sd = mixed_state_dict()
    names = list(sd)
    folder = tmp_path / "sharded"
    folder.mkdir()
    shards = {"model-00001-of-00002.safetensors": names[:4], "model-00002-of-00002.safetensors": names[4:]}
    for file, keys in shards.items():
        save_file({k: sd[k] for k in keys}, folder / file)
    weight_map = {k: file for file, keys in shards.items() for k in keys}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    assert main(["convert", str(folder)]) == 0
    back = revert_from_file(folder / "model.flashpack")
    assert set(back) == set(sd) and all(same_bits(back[k], t) for k, t in sd.items())

    torch.save(sd, tmp_path / "weights.pt")
    assert main(["convert", str(tmp_path / "weights.pt"), str(tmp_path)]) == 0  # a folder as destination
    back = revert_from_file(tmp_path / "weights.flashpack")
    assert all(same_bits(back[k], t) for k, t in sd.items())

    torch.save(sd, tmp_path / "legacy.bin", _use_new_zipfile_serialization=False)  # cannot be memory-mapped
    assert main(["convert", str(tmp_path / "legacy.bin")]) == 0
    back = revert_from_file(tmp_path / "legacy.flashpack")
    assert all(same_bits(back[k], t) for k, t in sd.items())


def test_convert_a_hub_id_from_the_offline_cache(source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "model.fp16.safetensors").write_bytes(source.read_bytes())
    cache = offline_hub(monkeypatch, tmp_path / "cache")
    populate_hub_cache(cache, "someone/weights", repo)
    assert main(["convert", "someone/weights", str(tmp_path / "out"), "--variant", "fp16"]) == 0
    back = revert_from_file(tmp_path / "out" / "model.flashpack")
    assert all(same_bits(back[k], t) for k, t in load_file(source).items())


def test_metadata_text_and_json(source: Path, capsys: pytest.CaptureFixture[str]) -> None:
    packed = source.with_suffix(".flashpack")
    pack_to_file(load_file(source), packed)
    footer = get_flashpack_file_metadata(packed)

    assert main(["metadata", str(packed)]) == 0
    text = capsys.readouterr().out
    assert f"format: {footer['format']}" in text and f"tensors: {len(footer['index'])}" in text
    assert "layer.weight" not in text
    assert main(["metadata", str(packed), "-i"]) == 0
    text = capsys.readouterr().out
    assert all(rec["name"] in text for rec in footer["index"]) and "48x40" in text and "scalar" in text

    assert main(["metadata", str(packed), "-j"]) == 0
    assert json.loads(capsys.readouterr().out) == {k: v for k, v in footer.items() if k != "index"}
    assert main(["metadata", str(packed), "--json", "--show-index"]) == 0
    assert json.loads(capsys.readouterr().out) == footer


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["convert", "missing.safetensors"], "missing.safetensors: open failed"),
        (["convert", "{src}", "--dtype", "int8"], "not a floating-point dtype"),
        (["convert", "{src}", "--ignore-prefixes", ""], "every tensor was left out"),
        (["convert", "{src}", "--use-transformers"], "need a model folder or a Hub id, not a file"),
        (["revert", "{bad}"], "bad.flashpack"),
        (["revert", "{packed}", "out.txt"], "out.txt: write .safetensors or a torch file"),
        (["revert", "{src}"], "not a FlashPack file"),
        (["metadata", "{bad}"], "bad.flashpack"),
        (["convert", "{bad_st}"], "bad.safetensors"),
        (["convert", "{bad_st}", "--dtype", "bf16"], "bad.safetensors: cannot read safetensors file"),
    ],
)
def test_failures_exit_1_with_one_line(
    args: list[str], message: str, source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    packed = source.with_suffix(".flashpack")
    pack_to_file(load_file(source), packed)
    (tmp_path / "bad.flashpack").write_bytes(packed.read_bytes()[:-20])  # footer cut off
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    paths = {"src": str(source), "packed": str(packed), "bad": "bad.flashpack", "bad_st": "bad.safetensors"}
    assert main([a.format(**paths) for a in args]) == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("flashpack: error: ") and message in lines[0], lines
    assert captured.out == ""


def test_verbose_failure_adds_the_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["revert", str(tmp_path / "none.flashpack"), "-v"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("flashpack: error: ")


def test_console_script_and_module_entry_point(source: Path) -> None:
    scripts = tomllib.loads((ROOT / "bindings/python/pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["flashpack"] == "flashpack.cli:main"
    done = run_cli("convert", str(source), "-v")
    assert done.returncode == 0, done.stderr
    assert "-> " in done.stdout and "atomic_rename" in done.stdout  # -v prints the phases
    done = run_cli("--version")
    assert done.returncode == 0 and done.stdout == f"flashpack {_core.__version__}\n"
    done = run_cli("frobnicate")
    assert done.returncode == 2 and "unrecognized subcommand 'frobnicate'" in done.stderr and not done.stdout


BLOCK_HF = textwrap.dedent(
    """
    import sys

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("diffusers", "transformers"):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
            return None

    sys.meta_path.insert(0, Block())
    """
)


def test_flashpack_and_its_cli_work_without_diffusers_and_transformers(source: Path, tmp_path: Path) -> None:
    model_dir = tmp_path / "unet"
    model_dir.mkdir()
    (model_dir / "config.json").write_text('{"_class_name": "UNet2DModel", "_diffusers_version": "0.42.1"}')
    script = BLOCK_HF + textwrap.dedent(
        f"""
        import flashpack, flashpack.integrations
        from flashpack.cli import main
        flashpack.patch_integrations()  # nothing to patch: a no-op
        assert main(["convert", {str(source)!r}, {str(tmp_path / "x.flashpack")!r}]) == 0
        assert main(["metadata", {str(tmp_path / "x.flashpack")!r}, "-i"]) == 0
        assert main(["revert", {str(tmp_path / "x.flashpack")!r}, {str(tmp_path / "x.safetensors")!r}]) == 0
        # a diffusers model folder: the one command that needs diffusers fails cleanly
        assert main(["convert", {str(model_dir)!r}, {str(tmp_path / "o")!r}]) == 1
        try:
            import flashpack.integrations.diffusers
        except ImportError as e:
            assert "diffusers" in str(e)
        else:
            raise AssertionError("flashpack.integrations.diffusers imported without diffusers")
        loaded = [m for m in sys.modules if m.split(".")[0] in ("diffusers", "transformers")]
        assert not loaded, loaded
        print("ok")
        """
    )
    import subprocess

    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr
    assert "flashpack: error: this needs diffusers, which is not installed" in done.stderr


def test_verify_ok_corrupt_and_without_checksums(source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["convert", str(source), str(tmp_path / "ok.flashpack")]) == 0
    capsys.readouterr()
    assert main(["verify", str(tmp_path / "ok.flashpack")]) == 0
    out = capsys.readouterr().out
    assert "OK: 8 tensors" in out and "xxh3-64 checksums match" in out, out

    meta = get_flashpack_file_metadata(tmp_path / "ok.flashpack")
    rec = next(r for r in meta["index"] if r["name"] == "layer.weight")
    block = meta["macroblocks"][rec["macroblock"]]
    bad = tmp_path / "bad.flashpack"
    raw = bytearray((tmp_path / "ok.flashpack").read_bytes())
    raw[block["offset_bytes"] + rec["offset"] * 4 + 5] ^= 0x40
    bad.write_bytes(bytes(raw))
    assert main(["verify", str(bad)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("flashpack: error:") and "checksum mismatch" in err and "bad.flashpack" in err, err
    assert len(err.splitlines()) == 1

    plain = tmp_path / "plain.flashpack"
    pack_to_file(mixed_state_dict(), plain, checksums=False)
    assert main(["verify", str(plain)]) == 0
    assert "has no checksums" in capsys.readouterr().out


def test_safetensors_round_trip_is_byte_identical_and_keeps_metadata(tmp_path: Path) -> None:
    from safetensors import safe_open

    from flashpack.commands import convert_to_flashpack, revert_from_flashpack

    source = tmp_path / "m.safetensors"
    metadata = {"format": "pt", "note": "kept ✓", "step": "1200"}
    save_file(mixed_state_dict(), source, metadata=metadata)
    assert main(["convert", str(source), str(tmp_path / "m.flashpack")]) == 0
    assert get_flashpack_file_metadata(tmp_path / "m.flashpack")["safetensors_metadata"] == metadata
    assert main(["revert", str(tmp_path / "m.flashpack"), str(tmp_path / "back.safetensors")]) == 0
    # The same header (safetensors writes __metadata__ in hash order, so only up to key order)
    # and the same data bytes.
    assert same_safetensors(tmp_path / "back.safetensors", source)
    with safe_open(tmp_path / "back.safetensors", "pt") as f:
        assert f.metadata() == metadata

    # the original's Python API takes the same path
    packed = convert_to_flashpack(str(source), str(tmp_path / "api.flashpack"))
    assert packed == str(tmp_path / "api.flashpack")
    assert same_safetensors(Path(revert_from_flashpack(packed)), source)  # -> api.safetensors

    # without __metadata__ the file comes back byte for byte
    plain = tmp_path / "plain.safetensors"
    save_file(mixed_state_dict(), plain)
    assert main(["-q", "convert", str(plain)]) == main(["-q", "revert", str(plain.with_suffix(".flashpack"))]) == 0
    assert plain.read_bytes() == (tmp_path / "plain.safetensors").read_bytes()
    assert main(["-q", "revert", str(plain.with_suffix(".flashpack")), str(tmp_path / "again.safetensors")]) == 0
    assert (tmp_path / "again.safetensors").read_bytes() == plain.read_bytes()


def same_safetensors(a: Path, b: Path) -> bool:
    """Equal headers (as JSON) and byte-identical tensor data."""
    import struct

    def split(path: Path) -> tuple[object, bytes]:
        raw = path.read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        return json.loads(raw[8 : 8 + n]), raw[8 + n :]

    return split(a) == split(b)


BINARY = ROOT / "target" / "debug" / "flashpack"
SUBCOMMANDS = ("convert", "revert", "metadata", "inspect", "verify", "bench")


@pytest.mark.skipif(not BINARY.is_file(), reason=f"the Rust binary is not built ({BINARY}; `make test-rust` builds it)")
def test_the_python_and_rust_commands_are_one_command(source: Path, tmp_path: Path) -> None:
    import subprocess

    def binary(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BINARY), *args], capture_output=True, text=True, timeout=300)

    for args in (["--help"], ["--version"], *([name, "--help"] for name in SUBCOMMANDS)):
        python, rust = run_cli(*args), binary(*args)
        assert python.returncode == rust.returncode == 0, (args, python.stderr, rust.stderr)
        assert python.stdout == rust.stdout, args  # one parser: the same subcommands, flags and help
    assert all(f"  {name}" in run_cli("--help").stdout for name in SUBCOMMANDS)

    # one implementation: the engine-side commands write the same bytes and print the same lines
    for tool, run in (("py", run_cli), ("rs", binary)):
        assert run("-q", "convert", str(source), str(tmp_path / f"{tool}.flashpack"), "--align-bytes", "64").returncode == 0
        assert run("-q", "revert", str(tmp_path / f"{tool}.flashpack"), str(tmp_path / f"{tool}.safetensors")).returncode == 0
    assert (tmp_path / "py.flashpack").read_bytes() == (tmp_path / "rs.flashpack").read_bytes()
    assert (tmp_path / "py.safetensors").read_bytes() == (tmp_path / "rs.safetensors").read_bytes() == source.read_bytes()
    for args in (["metadata", "-i", "-j"], ["inspect", "--index"], ["verify"]):
        packed = str(tmp_path / "py.flashpack")
        assert run_cli(*args, packed).stdout == binary(*args, packed).stdout, args

    # what needs Python: the binary says so, the Python command does it
    torch.save(mixed_state_dict(), tmp_path / "w.pt")
    for args in (["convert", str(tmp_path / "w.pt")], ["convert", str(source), "--dtype", "bf16"],
                 ["revert", str(tmp_path / "py.flashpack"), str(tmp_path / "x.pt")], ["convert", "org/repo", "out"]):  # fmt: skip
        rust = binary("-q", *args)
        assert rust.returncode == 1 and "this needs Python; install the Python package" in rust.stderr, (args, rust.stderr)
    assert run_cli("-q", "convert", str(tmp_path / "w.pt")).returncode == 0


def _limit_file_size() -> None:
    """In the child: writes past 1 MiB fail with EFBIG (a full disk, without needing one)."""
    import resource
    import signal

    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


@pytest.mark.parametrize(
    ("args", "destination"),
    [
        pytest.param(["revert", "{fp}", "{dst}"], "out.pt", id="revert-to-torch"),
        pytest.param(["revert", "{fp}", "{dst}"], "out.safetensors", id="revert-to-safetensors"),
        pytest.param(["convert", "{st}", "{dst}"], "out.flashpack", id="convert-safetensors"),
        pytest.param(["convert", "{pt}", "{dst}"], "out.flashpack", id="convert-torch-file"),
        pytest.param(["convert", "{st}", "{dst}", "--dtype", "float64"], "out.flashpack", id="convert-with-dtype"),
    ],
)
def test_a_failed_write_leaves_the_previous_file_and_no_temporary(args: list[str], destination: str, tmp_path: Path) -> None:
    import subprocess

    big = {"w": torch.randn(1 << 19), "b": torch.arange(10)}  # 2 MiB: more than the child may write
    inputs = tmp_path / "in"
    inputs.mkdir()
    save_file(big, inputs / "w.safetensors")
    pack_to_file(big, inputs / "w.flashpack")
    torch.save(big, inputs / "w.pt")
    out = tmp_path / "out"
    out.mkdir()
    previous = b"the previous file, which must survive byte for byte\n" * 100
    (out / destination).write_bytes(previous)
    paths = {"fp": inputs / "w.flashpack", "st": inputs / "w.safetensors", "pt": inputs / "w.pt", "dst": out / destination}
    done = subprocess.run(
        [sys.executable, "-m", "flashpack", "-q", *(a.format(**paths) for a in args)],
        capture_output=True, text=True, timeout=300, preexec_fn=_limit_file_size,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert (out / destination).read_bytes() == previous
    assert sorted(p.name for p in out.iterdir()) == [destination]  # no temporary file left behind
    lines = done.stderr.strip().splitlines()
    # (a pack's error names its unnamed temporary file in that folder until issue 13 item 1 names the destination)
    assert len(lines) == 1 and lines[0].startswith("flashpack: error: ") and f"{out}/" in lines[0], lines
    assert "File too large" in lines[0] and "enforce fail" not in lines[0], lines


# Checkpoints of several files (issue 14): the same Rust code through `_core.cli`.


def save_sharded_with_transformers(folder: Path) -> dict[str, torch.Tensor]:
    """A real sharded transformers checkpoint (its own index and shard names); returns its state dict."""
    from hf_testing import tiny_qwen2

    model = tiny_qwen2()
    model.save_pretrained(folder, max_shard_size="4KB")
    assert (folder / "model.safetensors.index.json").is_file()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_a_transformers_sharded_folder_to_one_pack_and_back_byte_for_byte(tmp_path: Path) -> None:
    folder = tmp_path / "qwen"
    save_sharded_with_transformers(folder)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 4
    expected = {k: v for shard in shards for k, v in load_file(folder / shard).items()}

    # transformers' config.json names the library: a weight-file destination asks for the weights
    pack = tmp_path / "qwen.flashpack"
    assert main(["convert", str(folder), str(pack)]) == 0
    back = revert_from_file(pack)
    assert set(back) == set(expected) and all(same_bits(back[k], t) for k, t in expected.items())
    footer = get_flashpack_file_metadata(pack)
    assert footer["safetensors_metadata"] == {"format": "pt"}
    assert footer["checkpoint_index"]["metadata"] == index["metadata"]

    again = tmp_path / "again"
    assert main(["revert", str(pack), str(again), "--sharded"]) == 0
    for shard in shards:  # the files transformers wrote, byte for byte
        assert (again / shard).read_bytes() == (folder / shard).read_bytes(), shard
    assert json.loads((again / "model.safetensors.index.json").read_text()) == index

    # and straight to one safetensors file, read back by safetensors itself
    single = tmp_path / "qwen.safetensors"
    assert main(["convert", str(folder / "model.safetensors.index.json"), str(single)]) == 0
    loaded = load_file(single)
    assert set(loaded) == set(expected) and all(same_bits(loaded[k], t) for k, t in expected.items())


def test_multi_file_flashpack_inspect_verify_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "qwen"
    expected = save_sharded_with_transformers(folder)
    fp = tmp_path / "fp"
    assert main(["convert", str(folder), str(fp), "--sharded"]) == 0
    index = fp / "model.flashpack.index.json"
    assert json.loads(index.read_text())["format"] == "flashpack_index"
    capsys.readouterr()
    assert main(["verify", str(fp)]) == 0
    out = capsys.readouterr().out
    shards = sorted(p.name for p in fp.glob("*.flashpack"))
    assert f"index OK: {len(shards)} shards" in out and all(s in out for s in shards)
    assert main(["inspect", str(index), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["tensor_count"] == len(expected) and [s["name"] for s in summary["shards"]] == shards

    # a shard that went missing: one line naming the index, the shard and a tensor it holds
    missing = fp / shards[-1]
    missing.unlink()
    assert main(["verify", str(fp)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(index) in err and shards[-1] in err and "does not exist" in err, err

    # a folder output is never partial: a non-empty destination is refused and left alone
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep").write_text("x")
    assert main(["convert", str(folder), str(taken), "--max-shard-size", "2KB"]) == 1
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in taken.iterdir()] == ["keep"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".packtmp")]
