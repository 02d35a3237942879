"""Exports of a tiny trained run: each format passes verification against base + adapter, and a tampered
adapter or a wrong merge is caught."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file, save_file

from tunesmith.export import ExportVerificationError, export_run
from tunesmith.export.run import merge
from tunesmith.registry import read_manifest


@pytest.fixture
def run_copy(trained_runs: tuple[Path, list[str]], tmp_path: Path) -> Path:
    runs, ids = trained_runs
    dst = tmp_path / "runs" / ids[0]
    shutil.copytree(runs / ids[0], dst)
    return dst


def test_merged_and_gguf_exports_are_verified(run_copy: Path) -> None:
    report = export_run(run_copy, "merged", n_prompts=3)
    v = report["verification"]
    assert report["passed"] and v["prompts"] == 3
    assert v["max_abs_diff"] < 1e-4 and v["top1_agreement"] == 1.0 and v["greedy_agreement"] == 1.0
    assert report["integrity"] == {"checked": True, "changed": [], "passed": True}
    assert report["eval_predictions"]["agreement"] == 1.0
    merged = run_copy / "export" / "merged"
    assert (merged / "model.safetensors").is_file() and (merged / "tokenizer.json").is_file()
    assert json.loads((merged / "export.json").read_text())["passed"]

    # q8_0 here, as the Ollama export (the GGUF plus a Modelfile); f16 goes through the same writer and reader
    # in the wrong-merge test below as a plain GGUF (reading a GGUF back through transformers parses its
    # 49k-token vocabulary three times: ~10 s each on a busy machine).
    report = export_run(run_copy, "ollama", quant="q8_0", n_prompts=3)
    v = report["verification"]
    assert report["passed"], report["problems"]
    assert 0 < v["max_rel_diff"] <= v["tolerance"]["max_rel_diff"]
    assert report["tokenizer"] == {
        "prompts_tokenized_identically": 1.0,
        "chat_template_identical": True,
        "stop_tokens_recorded": True,
    }
    # The same conversations as chat requests to llama.cpp's server on the file: same prompt text, same
    # tokens, no answer running past its end (tests/export/test_llama_chat_parity.py plants those faults).
    parity = report["chat_parity"]
    if not parity["checked"]:
        assert not os.environ.get("CI"), (
            "CI builds llama-server (.ci/run): the chat path must be checked there"
        )
    else:
        assert parity["template_identical"] == parity["tokens_identical"] == parity["conversations"] == 3
        assert parity["ran_on"] == 0 and parity["passed"]
    out = run_copy / "export" / "ollama"
    assert (out / report["file"]).is_file()
    # The Modelfile's TEMPLATE, run through Go's text/template as Ollama runs it, renders every test
    # conversation exactly as training rendered it; the stop token is the one training ended answers with.
    template = report["template"]
    n = template["conversations"]
    assert n > 10 and template["python_identical"] == n
    if template["go_identical"] is None:
        assert not os.environ.get("CI"), "CI installs golang-go (.ci/run): Go must render the TEMPLATE there"
        pytest.skip(template["go_skipped"])
    assert template["go_identical"] == n
    text = (out / "Modelfile").read_text()
    assert text.startswith(f'FROM ./{report["file"]}\nTEMPLATE """{{{{if and .Messages')
    assert 'PARAMETER stop "<|im_end|>"' in text and template["stops"] == ["<|im_end|>"]
    manifest = read_manifest(run_copy)
    assert set(manifest["exports"]) == {"merged", "ollama"}
    assert manifest["stages"]["export"]["status"] == "done"
    assert "export/ollama" in manifest["artifacts"]


def test_adapter_and_vllm_exports(run_copy: Path) -> None:
    report = export_run(run_copy, "adapter", n_prompts=2)
    assert report["passed"] and report["verification"]["max_abs_diff"] == 0.0
    assert (run_copy / "export" / "adapter" / "adapter_model.safetensors").is_file()
    report = export_run(run_copy, "vllm", n_prompts=2)
    assert report["passed"]
    out = run_copy / "export" / "vllm"
    cmd = report["command"]
    assert cmd.startswith("vllm serve ") and "--enable-lora" in cmd
    assert f"--lora-modules {run_copy.name}={out / 'adapter'}" in cmd and "--max-lora-rank 8" in cmd
    assert (out / "adapter" / "adapter_config.json").is_file() and (out / "chat_template.jinja").is_file()
    assert cmd in (out / "serve.sh").read_text()


def test_adapter_tampered_after_training_is_caught(run_copy: Path) -> None:
    weights = run_copy / "adapter" / "adapter_model.safetensors"
    tensors = load_file(weights)
    key = next(k for k in tensors if "lora_B" in k)
    tensors[key] = tensors[key] + 0.5
    save_file(tensors, weights)
    with pytest.raises(
        ExportVerificationError, match="adapter/ changed since training: adapter_model.safetensors"
    ) as e:
        export_run(run_copy, "merged", n_prompts=2)
    assert not e.value.report["passed"]
    assert not (run_copy / "export" / "merged").exists()
    failed = json.loads((run_copy / "export" / "merged.failed.json").read_text())
    assert failed["integrity"]["changed"] == ["adapter_model.safetensors"]


def test_wrong_merge_is_caught_by_the_logits_check(run_copy: Path) -> None:
    def bad_merge(cfg: Any, manifest: dict[str, Any], run_dir: Path) -> Any:
        import torch

        model = merge(cfg, manifest, run_dir)
        with torch.no_grad():  # one projection of one layer merged twice, as a scaling bug would
            model.model.layers[0].self_attn.v_proj.weight.mul_(1.5)
        return model

    with pytest.raises(ExportVerificationError, match=r"max \|logit diff\|") as e:
        export_run(run_copy, "merged", n_prompts=3, merge_fn=bad_merge)
    v = e.value.report["verification"]
    assert v["max_rel_diff"] > v["tolerance"]["max_rel_diff"]
    assert not (run_copy / "export" / "merged").exists()
    # The f16 GGUF of the wrong merge is faithful to it, and so fails the same check (and only that one).
    with pytest.raises(ExportVerificationError) as e:
        export_run(run_copy, "gguf", quant="f16", n_prompts=3, merge_fn=bad_merge)
    report = e.value.report
    assert report["tokenizer"]["chat_template_identical"] and report["tokenizer"]["stop_tokens_recorded"]
    assert report["integrity"]["passed"] and report["verification"]["max_rel_diff"] > 0.01
