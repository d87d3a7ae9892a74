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
from remote_servers import Nginx, nginx  # noqa: F401 - fixture
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


# -- fp4 through the Hugging Face path and over HTTP ----------------------------------------------

try:
    import transformers
except ImportError:  # pragma: no cover - the venv has it
    transformers = None

needs_transformers = pytest.mark.skipif(FP4 is None or transformers is None, reason="needs transformers and fp4")


def _fp4_llama_class() -> type[Any]:
    """A Llama whose MLP down projections also hold an NVFP4-style copy of their weight: the
    packed fp4 values (``weight_packed``, two per byte) and one e8m0 scale per 32 values
    (``weight_scale``), as persistent buffers. (torch cannot matmul fp4; forward never reads
    them.) The FlashPack mixin is mixed in; ``save_pretrained`` names the class in config.json."""
    from flashpack.integrations.transformers import FlashPackTransformersModelMixin

    class Fp4Llama(transformers.LlamaForCausalLM, FlashPackTransformersModelMixin):  # type: ignore[misc,name-defined]
        def __init__(self, config: Any) -> None:
            super().__init__(config)
            out, cols = config.hidden_size, config.intermediate_size
            for layer in self.model.layers:
                proj = layer.mlp.down_proj
                proj.register_buffer("weight_packed", torch.zeros(out, cols // 2, dtype=torch.uint8).view(FP4))
                scale = torch.zeros(out, cols // 32, dtype=torch.uint8).view(torch.float8_e8m0fnu)
                proj.register_buffer("weight_scale", scale)

    return Fp4Llama


def _fp4_llama(intermediate: int = 64) -> Any:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=intermediate, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=32, tie_word_embeddings=True, bos_token_id=0, eos_token_id=1,
    )  # fmt: skip
    model = _fp4_llama_class()(config).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, b in model.named_buffers():
            if b.dtype in (FP4, torch.float8_e8m0fnu):  # random bits: every fp4 and e8m0 code
                b.view(torch.uint8).copy_(torch.randint(0, 256, b.shape, dtype=torch.uint8, generator=g))
    return model


def _fp4_llama_folders(root: Path, intermediate: int = 64) -> dict[str, Path]:
    """The fp4 Llama as ``save_pretrained`` writes it (one file; sharded, the fp4 tensors in
    shards of their own and beside others) and converted by ``flashpack convert`` (the
    sharded checkpoint's index to one model.flashpack; to a sharded FlashPack checkpoint) next
    to the library's config.json."""
    model = _fp4_llama(intermediate)
    model.save_pretrained(root / "single")
    model.save_pretrained(root / "sharded", max_shard_size="4KB")
    assert len(list((root / "sharded").glob("model-*-of-*.safetensors"))) >= 4
    index = str(root / "sharded" / "model.safetensors.index.json")
    from flashpack.cli import main as cli_main

    assert cli_main(["convert", "--quiet", index, str(root / "converted" / "model.flashpack")]) == 0
    assert cli_main(["convert", "--quiet", index, str(root / "converted-sharded"), "--sharded"]) == 0
    for name in ("converted", "converted-sharded"):
        for config in ("config.json", "generation_config.json"):
            (root / name / config).write_bytes((root / "single" / config).read_bytes())
    return {"single": root / "single", "sharded": root / "sharded", "converted": root / "converted",
            "converted-sharded": root / "converted-sharded"}  # fmt: skip


def _fp4_reference(folder: Path) -> dict[str, torch.Tensor]:
    """What the libraries load from a folder of the fp4 Llama's safetensors files: every tensor
    of the library's own ``LlamaForCausalLM.from_pretrained`` (parameters, the tied lm_head, the
    non-persistent rotary buffer; the fp4/e8m0 buffers are keys it does not expect), and the
    fp4 and e8m0 tensors as ``safetensors.torch.load_file`` reads them from the files.

    transformers' own load of the fp4 class cannot be the reference: it reads each tensor
    through safetensors' ``get_slice(name)[...]``, which safetensors 0.8 cannot do for F4 (it
    views the bytes with the header's 4-bit shape: "shape '[16, 64]' is invalid for input of
    size 512"; see test_fp4_slices_index_torchs_packed_shape)."""
    reference = transformers.LlamaForCausalLM.from_pretrained(folder).eval()
    tensors = dict(reference.named_parameters(remove_duplicate=False))
    tensors.update(reference.named_buffers(remove_duplicate=False))
    for f in sorted(folder.glob("*.safetensors")):
        for name, t in safetensors.torch.load_file(f).items():
            if t.dtype in (FP4, torch.float8_e8m0fnu):
                assert name not in tensors
                tensors[name] = t
    return dict(sorted(tensors.items()))


def _assert_fp4_llama(ours: Any, reference: dict[str, torch.Tensor]) -> None:
    """Every parameter and buffer of ``ours`` (tied, non-persistent and fp4 ones included) is the
    reference's, bit for bit: dtype, shape and bytes."""
    got = dict(ours.named_parameters(remove_duplicate=False))
    got.update(ours.named_buffers(remove_duplicate=False))
    assert sorted(got) == sorted(reference)
    fp4 = [n for n, t in got.items() if t.dtype == FP4]
    assert len(fp4) == 2 and all(got[n].shape == (16, 32) for n in fp4)
    assert_same_dicts({n: got[n] for n in reference}, reference)
    assert ours.lm_head.weight is ours.model.embed_tokens.weight
    assert not ours.training


@pytest.fixture(scope="module")
def fp4_llama(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if FP4 is None or transformers is None:
        pytest.skip("needs transformers and fp4")
    return _fp4_llama_folders(tmp_path_factory.mktemp("fp4-llama"))


@needs_transformers
@pytest.mark.parametrize("layout", ["single", "sharded", "converted", "converted-sharded"])
def test_fp4_llama_through_from_pretrained_flashpack_bit_for_bit(fp4_llama: dict[str, Path], layout: str) -> None:
    """A Llama checkpoint holding fp4 (and e8m0) tensors loads with ``from_pretrained_flashpack``
    from the library's files (one, sharded) and from their FlashPack conversions exactly as the
    libraries load those files (see _fp4_reference)."""
    with pytest.raises(RuntimeError, match="is invalid for input of size"):
        _fp4_llama_class().from_pretrained(fp4_llama["single"])  # what transformers + safetensors 0.8 do
    reference = _fp4_reference(fp4_llama["sharded"])
    ours = _fp4_llama_class().from_pretrained_flashpack(fp4_llama[layout])
    _assert_fp4_llama(ours, reference)
    assert_same_dicts(_fp4_reference(fp4_llama["single"]), reference)  # the two saves hold the same
    with torch.no_grad():
        ids = torch.tensor([[1, 5, 9, 3, 2, 7]])
        library = transformers.LlamaForCausalLM.from_pretrained(fp4_llama["single"])
        assert torch.equal(ours(ids).logits, library(ids).logits)


@needs_transformers
def test_fp4_llama_saved_with_save_pretrained_flashpack_loads_back(fp4_llama: dict[str, Path], tmp_path: Path) -> None:
    """The fp4 Llama as FlashPack's mixin writes it (from a model loaded from safetensors) loads
    back bit for bit, its fp4 tensors stored uncast."""
    loaded = _fp4_llama_class().from_pretrained_flashpack(fp4_llama["sharded"])
    loaded.save_pretrained_flashpack(tmp_path / "fp")
    stored = flashpack.load_file(tmp_path / "fp" / "model.flashpack")
    assert stored["model.layers.0.mlp.down_proj.weight_packed"].dtype == FP4
    again = _fp4_llama_class().from_pretrained_flashpack(tmp_path / "fp")
    _assert_fp4_llama(again, _fp4_reference(fp4_llama["single"]))


@pytest.fixture
def _small_remote_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    """16 KiB ranged GETs (each fp4 tensor below spans several), quick retries."""
    monkeypatch.setenv("FLASHPACK_REMOTE_PART_BYTES", str(16 << 10))
    monkeypatch.setenv("FLASHPACK_REMOTE_RETRIES", "2")
    monkeypatch.setenv("FLASHPACK_REMOTE_REQUEST_TIMEOUT_SECS", "20")


@needs_fp4
@pytest.mark.usefixtures("_small_remote_parts")
def test_fp4_over_http_loads_as_the_local_file(nginx: Nginx, tmp_path: Path) -> None:  # noqa: F811
    """A safetensors file with fp4 tensors (with every other dtype, an fp4 tensor larger than a
    ranged GET, at an odd offset) served by nginx loads bit for bit as safetensors loads the
    local file; so does its FlashPack conversion; a file with tensors torch cannot hold refuses
    them by name as the local file does."""
    sd = every_dtype()
    g = torch.Generator().manual_seed(3)
    sd["fp4_big"] = torch.randint(0, 256, (300, 171), dtype=torch.uint8, generator=g).view(FP4)
    sd["u8_odd"] = torch.arange(7, dtype=torch.uint8)
    local = tmp_path / "fp4.safetensors"
    save_file(sd, local, metadata={"format": "pt"})
    convert_to_flashpack(local, tmp_path / "fp4.flashpack")
    bad = unloadable_file(tmp_path)
    for f in (local, tmp_path / "fp4.flashpack", bad):
        (nginx.root / "fp4" / f.name).parent.mkdir(parents=True, exist_ok=True)
        (nginx.root / "fp4" / f.name).write_bytes(f.read_bytes())
    theirs = safetensors.torch.load_file(local)
    assert theirs["fp4_big"].dtype == FP4 and theirs["fp4_big"].shape == (300, 171)
    assert_same_dicts(flashpack.load_file(nginx.url("fp4/fp4.safetensors")), theirs)
    ours = flashpack.load_file(nginx.url("fp4/fp4.flashpack"))
    assert_same_dicts({k: ours[k] for k in theirs}, theirs)
    url = nginx.url(f"fp4/{bad.name}")
    with pytest.raises(flashpack.UnsupportedTensorError, match=r"'b'.*F6_E2M3"):
        flashpack.load_file(url)
    with safetensors.safe_open(bad, "pt") as g_:
        wanted = {k: g_.get_tensor(k) for k in ("e", "a")}
    assert_same_dicts(flashpack.load_checkpoint(url, keys=["e", "a"]), wanted)


@needs_transformers
@pytest.mark.usefixtures("_small_remote_parts")
def test_fp4_llama_at_a_url_loads_as_the_local_folder(nginx: Nginx, tmp_path: Path) -> None:  # noqa: F811
    """The fp4 Llama's folders served by nginx load with ``from_pretrained_flashpack(url)`` as
    the libraries load the folder on disk."""
    folders = _fp4_llama_folders(tmp_path / "src", intermediate=2048)  # fp4 tensors of 16 KiB
    reference = _fp4_reference(folders["sharded"])
    for name, folder in folders.items():
        for f in folder.iterdir():
            (nginx.root / "fp4-llama" / name).mkdir(parents=True, exist_ok=True)
            (nginx.root / "fp4-llama" / name / f.name).write_bytes(f.read_bytes())
        ours = _fp4_llama_class().from_pretrained_flashpack(nginx.url(f"fp4-llama/{name}"))
        got = dict(ours.named_parameters(remove_duplicate=False))
        got.update(ours.named_buffers(remove_duplicate=False))
        assert sorted(got) == sorted(reference), name
        assert_same_dicts({n: got[n] for n in reference}, reference)
        assert got["model.layers.1.mlp.down_proj.weight_packed"].shape == (16, 1024)
