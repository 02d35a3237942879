from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from tunesmith.config import load_config
from tunesmith.data.pipeline import prepare
from tunesmith.models import load_model
from tunesmith.train.batching import collate, get_lr, loss_tokens, token_loss_sum
from tunesmith.train.loop import train


def test_lr_schedule_warmup_then_cosine_to_floor() -> None:
    lrs = [get_lr(s, total=100, warmup=10, lr=1.0, min_ratio=0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert lrs[-1] == pytest.approx(0.1, abs=1e-3)


def test_fast_loss_equals_full_logits_loss(toy_config: Path, tokenizer: Any) -> None:
    cfg = load_config(toy_config)
    data = prepare(cfg, tokenizer)
    model = load_model(cfg.model)
    batch = collate(data.train.encoded[:5], tokenizer.pad_token_id)
    with torch.no_grad():
        fast = token_loss_sum(model, batch, fast=True)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    ref = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1), reduction="sum"
    )
    assert float(fast) == pytest.approx(float(ref), rel=1e-5)
    assert loss_tokens(data.train.encoded[:5]) == int((batch["labels"][:, 1:] != -100).sum())


def test_lora_changes_adapter_not_base_and_loss_falls(
    toy_config: Path, tokenizer: Any, tmp_path: Path
) -> None:
    cfg = load_config(toy_config, ["train.max_steps=12", "train.eval_every=4", "train.lr=3e-2"])
    data = prepare(cfg, tokenizer)
    model = load_model(cfg.model)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    tuned, result = train(cfg, data, model, tokenizer, tmp_path)

    base_after = tuned.get_base_model().state_dict()
    lora = {k: v for k, v in base_after.items() if "lora_" in k}
    assert lora, "no LoRA weights were injected"
    for k, v in base_after.items():
        if "lora_" in k:
            continue
        name = k.replace(".base_layer", "")
        assert torch.equal(v, before[name]), f"base weight {name} changed"
    # lora_B starts at zero in peft; after training it must not be.
    assert any(float(v.abs().sum()) > 0 for k, v in lora.items() if "lora_B" in k)

    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, 13))
    assert lines[-1]["loss"] < lines[0]["loss"]
    vals = [r["val_loss"] for r in lines if "val_loss" in r]
    assert len(vals) == 3 and vals[-1] < vals[0]
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert result.trainable_params < result.total_params


def test_training_into_a_log_prints_complete_progress_lines(
    toy_config: Path, tokenizer: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Off a terminal (`> run.log`, CI) each progress line is whole and parseable: no bar, nothing cut."""
    import io
    import re

    import tunesmith.progress
    from tunesmith.progress import WIDE_COLUMNS, make_console

    monkeypatch.setattr(tunesmith.progress, "PLAIN_INTERVAL_S", 0.0)  # a line every step
    monkeypatch.delenv("COLUMNS", raising=False)
    cfg = load_config(toy_config)  # 6 steps, val every 3
    out = io.StringIO()
    console = make_console(file=out)
    assert console.width == WIDE_COLUMNS
    train(cfg, prepare(cfg, tokenizer), load_model(cfg.model), tokenizer, tmp_path, console)

    text = out.getvalue()
    assert "━" not in text and "…" not in text
    line = re.compile(
        r"train step (\d+)/6 \((\d+)%\)  loss (\d+\.\d{4})  lr (\d\.\d\de[-+]\d\d)  (\d+) tok/s"
        r"(?:  val (\d+\.\d{4}))?  elapsed (\d+:\d\d:\d\d)  eta (\d+:\d\d:\d\d)"
    )
    rows = [line.fullmatch(ln) for ln in text.splitlines() if ln.startswith("train")]
    assert rows and all(rows), text
    matches = [m for m in rows if m is not None]
    assert [int(m[1]) for m in matches] == [1, 2, 3, 4, 5, 6]
    assert [int(m[2]) for m in matches] == [100 * s // 6 for s in range(1, 7)]
    metrics = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [float(m[3]) for m in matches] == pytest.approx([r["loss"] for r in metrics], abs=1e-4)
    assert [m[6] is not None for m in matches] == [False, False, True, True, True, True]  # val from step 3
    assert matches[-1][8] == "0:00:00"  # nothing left


def test_micro_batches_cover_each_epoch_once_and_group_lengths() -> None:
    import itertools

    from tunesmith.train.batching import micro_batches

    lengths = [(i * 37) % 200 + 10 for i in range(100)]
    first = list(itertools.islice(micro_batches(lengths, 8, seed=3), 13))
    assert all(ep == 0 for ep, _ in first)
    assert sorted(i for _, b in first for i in b) == list(range(100))
    assert next(iter(micro_batches(lengths, 8, seed=3)))[1] == first[0][1]  # deterministic
    pad = sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for _, b in first)
    ungrouped = list(itertools.islice(micro_batches(lengths, 8, seed=3, group_by_length=False), 13))
    pad_random = sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for _, b in ungrouped)
    assert pad < pad_random / 4
