"""The footer reaches Python once, decoded by the engine (``flashpack._core.Footer``): its blocks,
records and ties, checksum presence; loads never parse the footer JSON in Python."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import flashpack
from flashpack import _core


class Tied(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(6, 4)
        self.head = torch.nn.Linear(4, 6, bias=False)
        self.head.weight = self.embed.weight  # tied: stored once
        self.norm = torch.nn.LayerNorm(4)
        self.register_buffer("steps", torch.arange(3, dtype=torch.int64))


def packed(tmp_path: Path, checksums: bool = True) -> Path:
    path = tmp_path / "m.flashpack"
    flashpack.pack_to_file(Tied(), path, None, checksums=checksums)
    return path


def test_footer_matches_the_stored_json(tmp_path: Path) -> None:
    path = packed(tmp_path)
    footer = _core.read_footer(str(path))
    stored = json.loads(footer.json)
    assert footer.format == stored["format"] == "flashpack_v4"
    assert footer.align_bytes == stored["align_bytes"]
    assert footer.total_elems == stored["total_elems"]
    assert footer.blocks == [
        (b["dtype"], b["offset_bytes"], b["length_bytes"], b["length_elems"]) for b in stored["macroblocks"]
    ]
    assert [(r.name, r.shape, r.block, r.offset, r.length) for r in footer.records] == [
        (r["name"], r["shape"], r["macroblock"], r["offset"], r["length"]) for r in stored["index"]
    ]
    assert len(footer) == len(stored["index"])
    assert footer.has_checksums and footer.checksum_chunk_bytes == stored["checksums"]["chunk_bytes"]
    assert footer.payload_len == _core.open(str(path)).payload_len == footer.blocks[-1][1] + footer.blocks[-1][2]
    # the same footer through every handle
    assert _core.load(str(path)).footer.json == _core.open(str(path)).footer.json == footer.json
    assert flashpack.get_flashpack_file_metadata(path) == stored


def test_ties_name_the_first_record_with_the_same_bytes(tmp_path: Path) -> None:
    footer = _core.read_footer(str(packed(tmp_path)))
    index = {r.name: i for i, r in enumerate(footer.records)}
    by_name = {r.name: r for r in footer.records}
    first, second = sorted(("embed.weight", "head.weight"), key=index.__getitem__)
    assert by_name[first].tied_to is None
    assert by_name[second].tied_to == index[first]
    assert all(r.tied_to is None for r in footer.records if r.name not in (first, second))


def test_a_file_without_checksums_says_so(tmp_path: Path) -> None:
    footer = _core.read_footer(str(packed(tmp_path, checksums=False)))
    assert not footer.has_checksums and footer.checksum_chunk_bytes is None


def test_decode_validates_like_opening_a_file(tmp_path: Path) -> None:
    footer = _core.read_footer(str(packed(tmp_path)))
    again = _core.Footer.decode(footer.json, footer.payload_len)
    assert again.blocks == footer.blocks and again.json == footer.json
    assert [r.tied_to for r in again.records] == [r.tied_to for r in footer.records]
    with pytest.raises(ValueError, match="footer"):
        _core.Footer.decode(footer.json, footer.payload_len - 1)
    with pytest.raises(ValueError, match="footer"):
        _core.Footer.decode(b"{}", 0)


def test_footer_and_records_are_read_only(tmp_path: Path) -> None:
    footer = _core.read_footer(str(packed(tmp_path)))
    with pytest.raises(AttributeError):
        footer.blocks = []  # type: ignore[misc]
    with pytest.raises(AttributeError):
        footer.records[0].offset = 3  # type: ignore[misc]


def test_loads_never_parse_the_footer_json_in_python(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """assign_from_file and revert_from_file use the engine's decoded footer: json.loads never
    sees the footer (only read_flashpack_file's public dict is made from it)."""
    path = packed(tmp_path)
    footer_json = _core.read_footer(str(path)).json
    loads = json.loads

    def refuse_footer(s: Any, *args: Any, **kwargs: Any) -> Any:
        assert s != footer_json, "the footer JSON was parsed in Python"
        return loads(s, *args, **kwargs)

    monkeypatch.setattr(json, "loads", refuse_footer)
    model = Tied()
    flashpack.assign_from_file(model, path)
    assert model.head.weight is model.embed.weight
    assert set(flashpack.revert_from_file(path)) == set(Tied().state_dict())


def test_from_pretrained_flashpack_reads_the_footer_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One footer read for building the model (its dtype, its records), one engine load; the
    footer JSON is never parsed in Python (it used to be read twice and parsed three times)."""
    transformers = pytest.importorskip("transformers")
    from hf_testing import minilm_dir

    from flashpack.integrations.transformers import FlashPackTransformersModelMixin

    class Bert(transformers.BertModel, FlashPackTransformersModelMixin):
        pass

    Bert.from_pretrained(str(minilm_dir())).save_pretrained_flashpack(tmp_path / "fp")
    footer_json = _core.read_footer(str(tmp_path / "fp" / "model.flashpack")).json
    calls: dict[str, int] = {"read_footer": 0, "load": 0}

    def counted(name: str) -> Any:
        real = getattr(_core, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return real(*args, **kwargs)

        return call

    for name in calls:
        monkeypatch.setattr(_core, name, counted(name))
    loads = json.loads
    monkeypatch.setattr(json, "loads", lambda s, *a, **k: loads(s, *a, **k) if s != footer_json else pytest.fail("parsed"))
    model = Bert.from_pretrained_flashpack(tmp_path / "fp")
    assert calls == {"read_footer": 1, "load": 1}
    assert not any(p.is_meta for p in model.parameters())
