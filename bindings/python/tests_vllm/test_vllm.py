"""The vLLM plugin for real, on vLLM's CPU build: run with the vLLM venv's python
(``make test-vllm``; scripts/vllm-venv.sh builds it), with ``flashpack`` installed from a wheel.

A tiny random-weight Llama (and a word-level tokenizer) is made here; nothing is downloaded. The
engines run in a child process (run_llm.py), one after another: greedy token ids of
``--load-format flashpack`` (unconverted sharded safetensors, a multi-file FlashPack folder, one
``model.flashpack``) and of ``flashpack_restart`` must equal those of vLLM's default loader, and
perturbed weights must change them (the comparison can fail). Bad input must fail to start the
engine with an error naming the file.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

HERE = Path(__file__).parent
WORDS = [f"w{k}" for k in range(125)]
PROMPTS = ["w1 w2 w3 w4", "w10 w20 w30", "w7 w7 w7 w7 w7 w99"]
CONFIG_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)


def make_model(folder: Path, seed: int, intermediate_size: int = 256) -> None:
    """A 2-layer Llama (head size 64, one of vLLM's CPU sizes) with random float32 weights (vLLM
    0.32's CPU bf16 kernels die of SIGILL on this machine kind), saved as transformers saves it, in
    several safetensors shards, with a word-level tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{w: k + 3 for k, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    fast.save_pretrained(folder)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=128,
        intermediate_size=intermediate_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2:
                p.normal_(0.0, 0.3)
    model.save_pretrained(folder, max_shard_size="400KB")
    assert len(list(folder.glob("model-*.safetensors"))) > 1, "the checkpoint should be sharded"


def copy_configs(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in CONFIG_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)


def convert(*args: str | Path) -> None:
    subprocess.run([sys.executable, "-m", "flashpack", "convert", *map(str, args)], check=True, capture_output=True)


def run_jobs(jobs: list[dict[str, Any]], work: Path, timeout: float) -> tuple[list[dict[str, Any]], list[str]]:
    """Runs the jobs in one child process; returns each job's result and its share of the log."""
    jobs_file, out_file = work / "jobs.json", work / "results.json"
    jobs_file.write_text(json.dumps([{"prompts": PROMPTS, **j} for j in jobs]))
    out_file.unlink(missing_ok=True)
    proc = subprocess.run(
        [sys.executable, str(HERE / "run_llm.py"), str(jobs_file), str(out_file)],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=work,
    )
    log = proc.stdout + proc.stderr
    assert out_file.is_file(), f"run_llm.py died (rc {proc.returncode}):\n{log[-6000:]}"
    results = json.loads(out_file.read_text())
    assert len(results) == len(jobs), f"only {len(results)} of {len(jobs)} jobs ran:\n{log[-6000:]}"
    # Each job's log: stdout and stderr each hold one marker per job.
    parts = ["" for _ in jobs]
    for stream in (proc.stdout, proc.stderr):
        chunks = stream.split("=== job ")
        for chunk in chunks[1:]:
            k, _, text = chunk.partition(" ===")
            parts[int(k)] += text
    return results, parts


@pytest.fixture(scope="session")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("vllm")
    f = {name: base / name for name in ("st", "fp_multi", "fp_single", "restart", "perturbed", "other")}
    f["st"].mkdir()
    make_model(f["st"], seed=0)
    convert(f["st"], f["fp_multi"], "--sharded")
    copy_configs(f["st"], f["fp_multi"])
    copy_configs(f["st"], f["fp_single"])
    convert(f["st"], f["fp_single"] / "model.flashpack")
    # The control: the same model with its output projection perturbed.
    shutil.copytree(f["st"], f["perturbed"])
    from safetensors.torch import load_file, save_file

    index = json.loads((f["st"] / "model.safetensors.index.json").read_text())
    shard = f["perturbed"] / index["weight_map"]["lm_head.weight"]
    tensors = load_file(shard)
    tensors["lm_head.weight"] = tensors["lm_head.weight"] + torch.randn_like(tensors["lm_head.weight"])
    save_file(tensors, shard, metadata={"format": "pt"})
    # Another model (other sizes), for a restart file that is not its own.
    f["other"].mkdir()
    make_model(f["other"], seed=1, intermediate_size=384)
    return f


@pytest.fixture(scope="session")
def good(folders: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Greedy ids of: 0 vLLM's default loader; 1 flashpack on the safetensors shards (saving a
    restart); 2 the multi-file FlashPack folder; 3 model.flashpack (verified); 4 the restart
    save (verified); 5 the perturbed model."""
    jobs: list[dict[str, Any]] = [
        {"model": str(folders["st"]), "load_format": "auto"},
        {
            "model": str(folders["st"]),
            "load_format": "flashpack",
            "extra": {"save_restart": str(folders["restart"])},
            "processes": True,  # vLLM's default processes: the plugin registers itself in the worker
        },
        {"model": str(folders["fp_multi"]), "load_format": "flashpack"},
        {"model": str(folders["fp_single"]), "load_format": "flashpack", "extra": {"verify": True}},
        {"model": str(folders["restart"]), "load_format": "flashpack_restart", "extra": {"verify": True}},
        {"model": str(folders["perturbed"]), "load_format": "flashpack"},
    ]
    results, logs = run_jobs(jobs, tmp_path_factory.mktemp("good"), timeout=400)
    for k, r in enumerate(results):
        assert "ids" in r, f"job {k} ({jobs[k]['load_format']} {jobs[k]['model']}) failed: {r}\n{logs[k][-5000:]}"
    assert all(len(ids) == 12 for r in results for ids in r["ids"])
    return results


def test_flashpack_equals_default_loader_on_safetensors_shards(good: list[dict[str, Any]]) -> None:
    assert good[1]["ids"] == good[0]["ids"]


def test_flashpack_multi_file_folder(good: list[dict[str, Any]]) -> None:
    assert good[2]["ids"] == good[0]["ids"]


def test_flashpack_single_file_verified(good: list[dict[str, Any]]) -> None:
    assert good[3]["ids"] == good[0]["ids"]


def test_restart_save_and_load(good: list[dict[str, Any]], folders: dict[str, Path]) -> None:
    restart = folders["restart"]
    assert (restart / "flashpack-restart-tp0of1-pp0of1.flashpack").is_file()
    manifest = json.loads((restart / "flashpack-restart-tp0of1-pp0of1.json").read_text())
    assert manifest["architectures"] == ["LlamaForCausalLM"] and manifest["dtype"] == "float32"
    assert (restart / "config.json").is_file() and (restart / "tokenizer.json").is_file()
    assert not list(restart.glob("*.safetensors"))
    assert good[4]["ids"] == good[0]["ids"]


def test_control_perturbed_weights_change_the_ids(good: list[dict[str, Any]]) -> None:
    assert good[5]["ids"] != good[0]["ids"]


@pytest.fixture(scope="session")
def bad(
    folders: dict[str, Path], good: list[dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """Bad input, each an engine that must fail to start: a truncated model.flashpack, a
    corrupted one loaded with verify, a folder without weights, another model's restart file.
    The engines run in-process, so the loader's exception reaches the caller as it was raised."""
    base = tmp_path_factory.mktemp("bad")
    cases: dict[str, tuple[Path, str, dict[str, Any]]] = {}
    truncated = base / "truncated"
    copy_configs(folders["st"], truncated)
    data = (folders["fp_single"] / "model.flashpack").read_bytes()
    (truncated / "model.flashpack").write_bytes(data[: len(data) // 2])
    cases["truncated"] = (truncated / "model.flashpack", "flashpack", {})
    corrupted = base / "corrupted"
    copy_configs(folders["st"], corrupted)
    flipped = bytearray(data)
    for k in range(1000, 1100):
        flipped[k] ^= 0xFF
    (corrupted / "model.flashpack").write_bytes(bytes(flipped))
    cases["corrupted"] = (corrupted / "model.flashpack", "flashpack", {"verify": True})
    empty = base / "noweights"
    copy_configs(folders["st"], empty)
    cases["noweights"] = (empty / "model.flashpack", "flashpack", {})
    other = base / "other_restart"
    copy_configs(folders["other"], other)
    for f in folders["restart"].glob("flashpack-restart-*"):
        shutil.copy2(f, other / f.name)
    cases["other_restart"] = (other / "flashpack-restart-tp0of1-pp0of1.flashpack", "flashpack_restart", {})
    jobs = [{"model": str(path.parent), "load_format": fmt, "extra": extra} for path, fmt, extra in cases.values()]
    results, logs = run_jobs(jobs, base, timeout=400)
    return {name: (path, r, log) for (name, (path, _, _)), r, log in zip(cases.items(), results, logs)}


@pytest.mark.parametrize(
    "case, message",
    [
        ("truncated", "not a FlashPack file"),
        ("corrupted", "checksum"),
        ("noweights", "no model.flashpack here"),
        ("other_restart", "made for another model"),
    ],
)
def test_bad_input_is_a_clear_error(bad: dict[str, Any], case: str, message: str) -> None:
    path, result, _log = bad[case]
    assert "error" in result, f"{case}: the engine started and generated {result}"
    assert str(path) in result["error"], f"{case}: the error does not name {path}: {result['error']}"
    assert re.search(message, result["error"], re.IGNORECASE), f"{case}: {result['error']}"


def test_import_flashpack_does_not_import_vllm() -> None:
    code = "import sys, flashpack, flashpack.integrations.vllm; assert 'vllm' not in sys.modules, 'vllm imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_entry_point_registers_both_formats_idempotently() -> None:
    from importlib.metadata import entry_points

    from flashpack.integrations import _vllm_loader
    from flashpack.integrations import vllm as plugin
    from vllm.config.load import LoadConfig
    from vllm.model_executor.model_loader import get_model_loader

    (ep,) = [e for e in entry_points(group="vllm.general_plugins") if e.name == "flashpack"]
    register = ep.load()
    assert register is plugin.register
    register()
    register()
    assert type(get_model_loader(LoadConfig(load_format="flashpack"))) is _vllm_loader.FlashPackModelLoader
    assert type(get_model_loader(LoadConfig(load_format="flashpack_restart"))) is _vllm_loader.FlashPackRestartLoader
    with pytest.raises(ValueError, match="unknown option.*'verfy'"):
        get_model_loader(LoadConfig(load_format="flashpack", model_loader_extra_config={"verfy": True}))


def test_other_loader_api_gets_one_warning(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import vllm
    import vllm.model_executor.model_loader as ml
    from flashpack.integrations import vllm as plugin

    class MovedLoader:
        def download_model(self, model_config: Any, revision: str) -> None: ...

        def load_weights(self, model: Any, model_config: Any) -> None: ...

    monkeypatch.setattr(ml, "BaseModelLoader", MovedLoader)
    monkeypatch.setitem(plugin._state, "done", False)
    with caplog.at_level(logging.WARNING, logger="flashpack.vllm"):
        plugin.register()
        plugin.register()
    warnings = [r for r in caplog.records if r.name == "flashpack.vllm"]
    assert len(warnings) == 1, warnings
    assert vllm.__version__ in warnings[0].getMessage() and "download_model" in warnings[0].getMessage()
