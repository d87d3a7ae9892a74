"""transformers integration: FlashPackTransformersModelMixin, AutoModel*.from_pretrained_flashpack,
the CLI on a real model (all-MiniLM-L6-v2), Hub ids from an offline cache, push_to_hub."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hf_testing import (
    SENTENCES,
    minilm_dir,
    offline_hub,
    populate_hub_cache,
    recording_hf_api,  # noqa: F401  (fixture)
    RecordingHfApi,
    same_bits,
)

transformers = pytest.importorskip("transformers")
sentence_transformers = pytest.importorskip("sentence_transformers")

from flashpack import get_flashpack_file_metadata, patch_integrations  # noqa: E402
from flashpack.cli import main as cli_main  # noqa: E402
from flashpack.integrations.transformers import FlashPackTransformersModelMixin  # noqa: E402


class FlashPackBertModel(transformers.BertModel, FlashPackTransformersModelMixin):
    pass


class FlashPackBertForMaskedLM(transformers.BertForMaskedLM, FlashPackTransformersModelMixin):
    pass


@pytest.fixture(scope="module")
def minilm() -> tuple[Path, torch.Tensor]:
    """The bundled model folder and its embeddings of SENTENCES (library loader, CPU)."""
    folder = minilm_dir()
    reference = sentence_transformers.SentenceTransformer(str(folder), device="cpu")
    return folder, reference.encode(SENTENCES, convert_to_tensor=True)


def embeddings_with(folder: Path, model: torch.nn.Module) -> torch.Tensor:
    """Sentence embeddings of SENTENCES from the sentence-transformers pipeline of ``folder`` with
    its transformer replaced by ``model``."""
    st = sentence_transformers.SentenceTransformer(str(folder), device="cpu")
    with torch.no_grad():
        for p in st.parameters():
            p.zero_()  # nothing of the original weights may leak into the result
    # sentence-transformers 6 keeps the transformer in `.model` (`auto_model` is a read-only alias)
    setattr(st[0], "model" if isinstance(getattr(type(st[0]), "auto_model", None), property) else "auto_model", model)
    assert st[0].auto_model is model
    return st.encode(SENTENCES, convert_to_tensor=True)


def assert_ready(model: torch.nn.Module) -> None:
    assert not model.training
    assert not any(t.is_meta for t in model.parameters()) and not any(t.is_meta for t in model.buffers())


def test_mixin_roundtrip_gives_identical_embeddings(minilm: tuple[Path, torch.Tensor], tmp_path: Path) -> None:
    folder, expected = minilm
    model = FlashPackBertModel.from_pretrained(str(folder))
    model.save_pretrained_flashpack(tmp_path / "fp")
    assert sorted(p.name for p in (tmp_path / "fp").iterdir()) == ["config.json", "model.flashpack"]
    config = json.loads((tmp_path / "fp" / "config.json").read_text())
    assert config["architectures"] == ["BertModel"]  # the library class, not the mixed one

    loaded = FlashPackBertModel.from_pretrained_flashpack(tmp_path / "fp")
    assert type(loaded) is FlashPackBertModel
    assert_ready(loaded)
    # non-persistent buffers (not in the file) are initialised as from_pretrained does
    assert "embeddings.position_ids" not in {r["name"] for r in get_flashpack_file_metadata(tmp_path / "fp" / "model.flashpack")["index"]}
    assert torch.equal(loaded.embeddings.position_ids, model.embeddings.position_ids)
    assert torch.equal(embeddings_with(folder, loaded), expected)


def test_cli_convert_then_auto_model_gives_identical_embeddings(
    minilm: tuple[Path, torch.Tensor], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, expected = minilm
    assert cli_main(["convert", str(folder), str(tmp_path / "fp"), "--use-transformers"]) == 0
    assert f"(folder, transformers BertModel) -> {tmp_path / 'fp'} (FlashPack folder)" in capsys.readouterr().out
    patch_integrations()
    loaded = transformers.AutoModel.from_pretrained_flashpack(tmp_path / "fp")
    assert isinstance(loaded, transformers.BertModel) and isinstance(loaded, FlashPackTransformersModelMixin)
    assert_ready(loaded)
    assert torch.equal(embeddings_with(folder, loaded), expected)
    # the converted weights are bit for bit the safetensors ones
    reference = transformers.BertModel.from_pretrained(str(folder)).state_dict()
    assert all(same_bits(t, reference[n]) for n, t in loaded.state_dict().items())


def test_hub_id_from_offline_cache(minilm: tuple[Path, torch.Tensor], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, expected = minilm
    FlashPackBertModel.from_pretrained(str(folder)).save_pretrained_flashpack(tmp_path / "fp")
    cache = offline_hub(monkeypatch, tmp_path / "cache")
    populate_hub_cache(cache, "someone/minilm-flashpack", tmp_path / "fp")
    loaded = FlashPackBertModel.from_pretrained_flashpack("someone/minilm-flashpack")
    assert torch.equal(embeddings_with(folder, loaded), expected)
    with pytest.raises(OSError, match="someone/not-there"):
        FlashPackBertModel.from_pretrained_flashpack("someone/not-there")


def test_target_dtype_and_dtype_on_load(minilm: tuple[Path, torch.Tensor], tmp_path: Path) -> None:
    folder, _ = minilm
    model = FlashPackBertModel.from_pretrained(str(folder))
    model.save_pretrained_flashpack(tmp_path / "bf16", target_dtype=torch.bfloat16)
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"
    loaded = FlashPackBertModel.from_pretrained_flashpack(tmp_path / "bf16")
    assert loaded.dtype == torch.bfloat16 and loaded.embeddings.position_ids.dtype == torch.int64
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor.to(torch.bfloat16)), name
    upcast = FlashPackBertModel.from_pretrained_flashpack(tmp_path / "bf16", dtype=torch.float32)
    assert upcast.dtype == torch.float32 and upcast.config.dtype == torch.float32


def tiny_bert_config() -> object:
    return transformers.BertConfig(
        vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=32, tie_word_embeddings=True,
    )  # fmt: skip


def test_tied_weights_missing_from_the_file_are_tied_on_load(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = transformers.BertForMaskedLM(tiny_bert_config()).eval()
    model.save_pretrained(tmp_path / "src")  # safetensors without the tied decoder weight
    # weights-only conversion of the library's file, next to its config
    assert cli_main(["convert", str(tmp_path / "src" / "model.safetensors"), str(tmp_path / "src" / "model.flashpack")]) == 0
    names = {r["name"] for r in get_flashpack_file_metadata(tmp_path / "src" / "model.flashpack")["index"]}
    assert "cls.predictions.decoder.weight" not in names

    loaded = FlashPackBertForMaskedLM.from_pretrained_flashpack(tmp_path / "src")
    assert_ready(loaded)
    assert loaded.cls.predictions.decoder.weight is loaded.bert.embeddings.word_embeddings.weight
    ids = torch.tensor([[1, 5, 9, 3, 2]])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_missing_weights_and_bad_folders_are_clear_errors(tmp_path: Path) -> None:
    tiny_bert_config().save_pretrained(tmp_path / "config-only")  # neither model.flashpack nor safetensors
    with pytest.raises(FileNotFoundError, match=r"config-only/model\.flashpack.*model\.safetensors"):
        FlashPackBertModel.from_pretrained_flashpack(tmp_path / "config-only")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="file"):
        FlashPackBertModel.from_pretrained_flashpack(tmp_path / "file")


def test_push_to_hub_uploads_the_saved_folder(tmp_path: Path, recording_hf_api: type[RecordingHfApi]) -> None:
    model = FlashPackBertModel(tiny_bert_config())
    model.save_pretrained_flashpack(tmp_path / "out", push_to_hub=True, repo_id="me/tiny-bert", private=True, token="t")
    calls = dict(recording_hf_api.calls)
    assert calls["init"] == {"token": "t"}
    assert calls["create_repo"] == {"repo_id": "me/tiny-bert", "exist_ok": True, "private": True}
    upload = calls["upload_folder"]
    assert upload["repo_id"] == "me/tiny-bert" and Path(str(upload["folder_path"])) == tmp_path / "out"
    assert upload["files"] == ["README.md", "config.json", "model.flashpack"]
    assert "flashpack" in (tmp_path / "out" / "README.md").read_text()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_load_puts_every_tensor_on_the_gpu(minilm: tuple[Path, torch.Tensor], tmp_path: Path) -> None:
    folder, _ = minilm
    model = FlashPackBertModel.from_pretrained(str(folder))
    model.save_pretrained_flashpack(tmp_path / "fp")
    loaded = FlashPackBertModel.from_pretrained_flashpack(tmp_path / "fp", device="cuda")
    assert all(t.is_cuda for t in loaded.parameters()) and all(t.is_cuda for t in loaded.buffers())
    assert all(same_bits(loaded.state_dict()[n].cpu(), t) for n, t in model.state_dict().items())
    ids = torch.tensor([[101, 7592, 2088, 102]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids.cuda()).last_hidden_state.cpu(), model.eval()(ids).last_hidden_state)
