"""`train.kernels: liger`: stops before any model loads without CUDA; on a CUDA GPU the fused head + loss
equals the plain one and training runs."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from tunesmith.config import MethodConfig
from tunesmith.train import kernels
from tunesmith.train.methods import MethodUnavailableError, check_method_available

LORA = MethodConfig(name="lora")


def test_liger_without_cuda_fails_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    check_method_available(LORA, "none")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(MethodUnavailableError) as e:
        check_method_available(LORA, "liger")
    msg = str(e.value)
    assert msg.startswith("train.kernels: liger cannot run here (no CUDA GPU is visible")
    assert msg.endswith("set train.kernels: none, or run on a CUDA GPU with `pip install liger-kernel`")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(kernels.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MethodUnavailableError, match=r"\(liger-kernel is not installed\)"):
        check_method_available(LORA, "liger")


def test_attention_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers.utils

    from tunesmith.train.precision import PrecisionError

    monkeypatch.setattr(transformers.utils, "is_flash_attn_2_available", lambda: True)
    # auto: flash-attention only on CUDA in bf16, never for prefix/prompt tuning; otherwise the model's own.
    assert kernels.choose_attention("auto", "cuda", "bf16", "lora") == "flash_attention_2"
    assert kernels.choose_attention("auto", "cpu", "bf16", "lora") is None
    assert kernels.choose_attention("auto", "cuda", "fp32", "lora") is None
    assert kernels.choose_attention("auto", "cuda", "bf16", "prefix") is None
    monkeypatch.setattr(transformers.utils, "is_flash_attn_2_available", lambda: False)
    assert kernels.choose_attention("auto", "cuda", "bf16", "lora") is None
    assert kernels.choose_attention("eager", "cpu", "fp32", "lora") == "eager"
    with pytest.raises(PrecisionError, match="train.precision: auto or bf16, or train.attention: sdpa"):
        kernels.choose_attention("flash_attention_2", "cuda", "fp32", "lora")


def test_flash_attention_without_cuda_fails_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    check_method_available(LORA, "none", "sdpa")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(MethodUnavailableError) as e:
        check_method_available(LORA, "none", "flash_attention_2")
    msg = str(e.value)
    assert msg.startswith("train.attention: flash_attention_2 cannot run here (no CUDA GPU is visible")
    assert msg.endswith(
        "set train.attention: auto or sdpa, or run on a CUDA GPU with `pip install flash-attn`"
    )


def test_training_with_eager_attention_matches_sdpa(toy_config: Path, tokenizer: Any, tmp_path: Path) -> None:
    """train.attention is set on the model before training: eager and SDPA train the same loss curve."""
    import io
    import json

    from rich.console import Console

    from tunesmith.config import load_config
    from tunesmith.data.pipeline import prepare
    from tunesmith.models import load_model
    from tunesmith.train.loop import train

    curves = {}
    for attention in ("sdpa", "eager"):
        # fp32: the two attention kernels round bf16 differently (auto is bf16 on AVX512-BF16/AMX CPUs).
        overrides = [f"train.attention={attention}", "train.max_steps=3", "train.precision=fp32"]
        cfg = load_config(toy_config, overrides)
        model = load_model(cfg.model)
        out = io.StringIO()
        tuned, _ = train(
            cfg, prepare(cfg, tokenizer), model, tokenizer, tmp_path / attention, Console(file=out)
        )
        assert tuned.get_base_model().config._attn_implementation == attention
        assert ("attention: eager (train.attention: eager)" in out.getvalue()) == (attention == "eager")
        lines = (tmp_path / attention / "metrics.jsonl").read_text().splitlines()
        curves[attention] = [json.loads(x)["loss"] for x in lines]
    assert len(curves["sdpa"]) == 3
    assert curves["eager"] == pytest.approx(curves["sdpa"], abs=1e-5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_run_with_liger_on_cpu_exits_2_before_any_work(toy_config: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "tunesmith.cli", "run", str(toy_config), "train.kernels=liger"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2, r.stderr
    assert "train.kernels: none" in " ".join(r.stderr.split())
    assert not (toy_config.parent / "runs").exists()


@pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("liger_kernel") is None,
    reason="Liger's kernels need a CUDA GPU and liger-kernel",
)
def test_liger_fused_loss_equals_the_plain_loss_and_trains(tiny_model_dir: Path, tokenizer: Any) -> None:
    from tunesmith.data.tokenize import encode_chat
    from tunesmith.models import load_model
    from tunesmith.train.batching import collate, token_loss_sum
    from tunesmith.train.methods import apply_method

    rows = [
        [{"role": "user", "content": f"ticket {i}: refund"}, {"role": "assistant", "content": "billing"}]
        for i in range(4)
    ]
    batch = collate([encode_chat(tokenizer, r, 128) for r in rows], tokenizer.pad_token_id)
    plain = load_model(str(tiny_model_dir)).cuda()
    fused = load_model(str(tiny_model_dir)).cuda()
    kernels.apply_liger_kernels(fused)
    with torch.no_grad():
        ref = float(token_loss_sum(plain, batch))
        got = float(token_loss_sum(fused, batch, fused=True))
    assert got == pytest.approx(ref, rel=1e-4)
    model = apply_method(fused, LORA, tokenizer)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(6):
        loss = token_loss_sum(model, batch, fused=True)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0], losses
