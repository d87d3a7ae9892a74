"""The original's file API over checkpoints: ``assign_from_file``, ``FlashPackMixin.from_flashpack``
and ``read_flashpack_file`` take a ``.safetensors`` file, a safetensors index json, a sharded
folder or a multi-file FlashPack checkpoint (read by ``flashpack.load_checkpoint``), with the
rules they have for FlashPack files."""

from __future__ import annotations

from pathlib import Path

import pytest
import safetensors.torch as st
import torch

import flashpack
from flashpack import FlashPackMixin, _core, assign_from_file, iterate_from_flash_tensor, pack_to_file, read_flashpack_file
from test_load_checkpoint import save_sharded
from test_load_file import assert_same_dict


class Net(torch.nn.Module, FlashPackMixin):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(width, 16)
        self.norm = torch.nn.BatchNorm1d(16)  # float buffers and the int64 num_batches_tracked
        self.fc2 = torch.nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.norm(self.fc1(x))))


def trained_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    net = Net()
    net.train()
    net(torch.randn(32, 8))  # running stats and num_batches_tracked move off their defaults
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def multi_file_flashpack(folder: Path, sd: dict[str, torch.Tensor]) -> Path:
    folder.mkdir()
    names = list(sd)
    files = []
    for k in range(2):
        files.append(folder / f"model-{k + 1:05d}-of-00002.flashpack")
        pack_to_file({n: sd[n] for n in names[k::2]}, files[-1], None)
    index = folder / "model.flashpack.index.json"
    _core.write_checkpoint_index(str(index), "flashpack", [str(f) for f in files])
    return index


def checkpoints(tmp_path: Path, sd: dict[str, torch.Tensor]) -> dict[str, Path]:
    st.save_file(sd, tmp_path / "model.safetensors")
    index = save_sharded(tmp_path / "sharded", sd, shards=3)
    return {
        "file": tmp_path / "model.safetensors",
        "index": index,
        "folder": tmp_path / "sharded",
        "flashpack index": multi_file_flashpack(tmp_path / "fp", sd),
    }


@pytest.mark.parametrize("eager", [None, True])
def test_every_kind_of_checkpoint_assigns_and_builds_the_same_model(tmp_path: Path, eager: bool | None) -> None:
    sd = trained_state()
    x = torch.randn(4, 8)
    want = Net()
    want.load_state_dict(sd)
    want.eval()
    for kind, path in checkpoints(tmp_path, sd).items():
        net = Net()
        assign_from_file(net, path, eager=eager)
        assert_same_dict(dict(net.state_dict()), sd)
        assert isinstance(net.fc1.weight, torch.nn.Parameter), kind
        built = Net.from_flashpack(path, silent=True, eager=eager)
        assert_same_dict(dict(built.state_dict()), sd)
        assert not any(t.is_meta for t in built.state_dict().values()), kind
        torch.testing.assert_close(built(x), want(x), rtol=0, atol=0)
        storage, meta = read_flashpack_file(path, eager=eager)
        assert meta["format"] == "checkpoint"
        assert_same_dict(dict(iterate_from_flash_tensor(storage, meta)), sd)


def test_strict_and_ignore_options_as_for_flashpack_files(tmp_path: Path) -> None:
    sd = trained_state()
    extra = dict(sd, **{"head.weight": torch.ones(2)})
    index = save_sharded(tmp_path / "extra", extra, shards=2)
    with pytest.raises(ValueError, match=r"match nothing in the model: \['head.weight'\]") as e:
        assign_from_file(Net(), index, strict=True)
    assert str(index) in str(e.value)
    with pytest.raises(ValueError, match="match nothing in the model"):
        assign_from_file(Net(), index)  # the default: strict parameters
    assign_from_file(Net(), index, strict=False)  # extra names discarded
    assign_from_file(Net(), index, strict=True, ignore_prefixes=["head."])
    partial = {k: v for k, v in sd.items() if not k.startswith("fc2.")}
    save_sharded(tmp_path / "partial", partial, shards=2)
    with pytest.raises(ValueError, match=r"missing 2 parameters: \['fc2.weight', 'fc2.bias'\]"):
        assign_from_file(Net(), tmp_path / "partial")
    net = Net()
    assign_from_file(net, tmp_path / "partial", strict=False)
    assert_same_dict({k: v for k, v in net.state_dict().items() if not k.startswith("fc2.")}, partial)


def test_dtype_rules_as_for_flashpack_files(tmp_path: Path) -> None:
    """Parameters and float buffers take the file's dtype; an integer buffer of another dtype is
    refused unless coerce_dtype converts it."""
    sd = trained_state()
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in sd.items()}
    st.save_file(half, tmp_path / "half.safetensors")
    net = Net()
    assign_from_file(net, tmp_path / "half.safetensors")
    assert net.fc1.weight.dtype == torch.float16 and net.norm.running_mean.dtype == torch.float16
    assert_same_dict(dict(net.state_dict()), half)
    bad = dict(sd, **{"norm.num_batches_tracked": sd["norm.num_batches_tracked"].int()})
    st.save_file(bad, tmp_path / "int32.safetensors")
    with pytest.raises(ValueError, match="dtype mismatch for buffer 'norm.num_batches_tracked'"):
        assign_from_file(Net(), tmp_path / "int32.safetensors")
    net = Net()
    assign_from_file(net, tmp_path / "int32.safetensors", coerce_dtype=True)
    assert net.norm.num_batches_tracked.dtype == torch.int64
    assert int(net.norm.num_batches_tracked) == int(sd["norm.num_batches_tracked"])


def test_shape_mismatch_names_the_checkpoint_and_tensor(tmp_path: Path) -> None:
    st.save_file(Net(width=3).state_dict(), tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"shape mismatch for parameter 'fc1.weight'") as e:
        assign_from_file(Net(), tmp_path / "model.safetensors")
    assert "model.safetensors" in str(e.value)


def test_what_differs_from_flashpack_files_is_refused_clearly(tmp_path: Path) -> None:
    sd = trained_state()
    for path in checkpoints(tmp_path, sd).values():
        with pytest.raises(ValueError, match="verify=True checks a FlashPack file's checksums") as e:
            assign_from_file(Net(), path, verify=True)
        assert str(path) in str(e.value)
        with pytest.raises(ValueError, match="use_distributed_loading is supported for FlashPack files only"):
            assign_from_file(Net(), path, use_distributed_loading=True)


def test_flashpack_files_still_take_the_flashpack_path(tmp_path: Path) -> None:
    sd = trained_state()
    pack_to_file(sd, tmp_path / "m.flashpack", None)
    storage, meta = read_flashpack_file(tmp_path / "m.flashpack")
    assert meta["format"] != "checkpoint"
    assert_same_dict(dict(iterate_from_flash_tensor(storage, meta)), sd)
    assert flashpack.is_flashpack_file(tmp_path / "m.flashpack")


def test_a_folder_without_weights_is_still_a_directory_error(tmp_path: Path) -> None:
    """The original's error for a folder stays; a folder with a json or weight file is a
    checkpoint (here: one that holds no weights, a ValueError naming the folder)."""
    with pytest.raises(IsADirectoryError):
        assign_from_file(Net(), tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="no checkpoint here") as e:
        assign_from_file(Net(), tmp_path)
    assert str(tmp_path) in str(e.value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_device_streams_the_checkpoint(tmp_path: Path) -> None:
    sd = trained_state()
    for path in checkpoints(tmp_path, sd).values():
        net = Net.from_flashpack(path, device="cuda", silent=True)
        assert all(t.is_cuda for t in net.state_dict().values())
        assert_same_dict({k: v.cpu() for k, v in net.state_dict().items()}, sd)
