"""The bridge over the engine (``flashpack._engine``): one device resolution for every load, and
the CUDA glue (device index, torch's current stream finished before the engine writes, the
addresses and reader settings handed over) checked on any machine: torch's stream and the
engine's CUDA entry points are replaced by recorders. (With a GPU, test_cuda.py loads for real.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from flashpack import _engine, pack_to_file


def test_resolve_device_takes_what_loads_take() -> None:
    assert _engine.resolve_device(None) == torch.device("cpu")
    assert _engine.resolve_device("cpu") == torch.device("cpu")
    assert _engine.resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert _engine.resolve_device("meta", meta_to_cpu=True) == torch.device("cpu")


def test_resolve_device_refuses_naming_the_file() -> None:
    with pytest.raises(ValueError, match=r"^m\.flashpack: Unsupported device: meta \(cpu, cuda\[:N\] and mps are\)"):
        _engine.resolve_device("meta", "m.flashpack")
    with pytest.raises(ValueError, match=r"^Unsupported device: meta"):
        _engine.resolve_device("meta")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_resolve_device_without_cuda() -> None:
    for device in ("cuda", "cuda:1", 0):
        with pytest.raises(RuntimeError, match=r"^m\.flashpack: cannot load to cuda.*: torch sees no CUDA device"):
            _engine.resolve_device(device, "m.flashpack")


class _Recorder:
    """Stands in for torch's current CUDA stream and the engine's CUDA entry points."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.events: list[tuple[Any, ...]] = []
        recorder = self

        class Stream:
            def __init__(self, index: int) -> None:
                self.index = index

            def synchronize(self) -> None:
                recorder.events.append(("synchronize", self.index))

        monkeypatch.setattr(torch.cuda, "current_stream", Stream)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)

        def read_job_to_cuda(files: Any, pieces: Any, device: int, **kw: Any) -> Any:
            recorder.events.append(("read_job_to_cuda", len(files), pieces, device, kw))
            return [], {}

        monkeypatch.setattr(_engine._core, "read_job_to_cuda", read_job_to_cuda)


def test_read_to_cuda_finishes_the_stream_then_hands_over_each_range(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    rec = _Recorder(monkeypatch)
    monkeypatch.setenv("FLASHPACK_READ_THREADS", "5")
    a, b, empty = torch.empty(8, dtype=torch.uint8), torch.empty(4, dtype=torch.uint8), torch.empty(0)
    handle = _weights(tmp_path)
    pieces = [(0, 0, 8, a), (0, 8, 8, empty), (0, 16, 20, b)]
    _engine.read_to_cuda([handle], pieces, torch.device("cuda", 2), progress=True, verify=True)
    (sync, (name, files, raw, index, kw)) = rec.events
    assert sync == ("synchronize", 2) and name == "read_job_to_cuda" and files == 1 and index == 2
    assert raw == [(0, 0, 8, a.data_ptr()), (0, 16, 20, b.data_ptr())]
    assert kw["progress"] is True and kw["verify"] is True and kw["threads"] == 5


def test_read_to_cuda_without_bytes_calls_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    rec = _Recorder(monkeypatch)
    _engine.read_to_cuda([_weights(tmp_path)], [(0, 4, 4, torch.empty(0))], torch.device("cuda", 0), progress=False)
    assert rec.events == []


def test_file_to_cuda_uses_the_current_device_when_none_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    rec = _Recorder(monkeypatch)
    calls: list[Any] = []

    class File:
        def to_cuda(self, device: int, regions: Any, **kw: Any) -> Any:
            calls.append((device, regions, kw))
            return [("copy", 0.0)], {"direct_bytes": 0, "buffered_bytes": 16}

    block = torch.empty(16, dtype=torch.uint8)
    handle: Any = File()
    phases, _ = _engine.file_to_cuda(handle, [(0, block)], torch.device("cuda"), progress=False, verify=False)
    assert rec.events == [("synchronize", 3)] and phases == [("copy", 0.0)]
    ((device, regions, kw),) = calls
    assert device == 3 and regions == [(0, 16, block.data_ptr())] and kw["verify"] is False
    assert kw["io"] == "auto" and kw["progress"] is False


def test_read_range_into_host_memory(tmp_path: Path) -> None:
    path = tmp_path / "m.flashpack"
    pack_to_file({"w": torch.ones(4)}, path)
    host = torch.zeros(16, dtype=torch.uint8)
    assert _engine.read_range(_engine.open_file(path), 0, host, verify=True) == 16
    assert host.view(torch.float32).tolist() == [1.0] * 4


def _weights(tmp_path: Path) -> _engine.WeightFile:
    path = tmp_path / "w.flashpack"
    if not path.exists():
        pack_to_file({"w": torch.ones(8)}, path)
    return _engine.open_weights(path)
