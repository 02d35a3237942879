"""The memory/time plan on the tiny model: structure, monotonicity, checkpointing, precision, refusal."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from helpers import cli_here
from tunesmith.config import load_config
from tunesmith.data.pipeline import prepare
from tunesmith.models import load_model
from tunesmith.train.batching import collate, token_loss_sum
from tunesmith.train.methods import apply_method, count_parameters
from tunesmith.train.plan import (
    METHODS,
    DataStats,
    Device,
    PlanError,
    make_plan,
    named_gpu,
    parse_bytes,
    resolve_precision,
    target_device,
)
from tunesmith.train.precision import PrecisionError, cpu_has_bf16

ROOT = Path(__file__).resolve().parents[2]
CPU = Device("test CPU", "cpu", 64 * 1024**3, {"fp32": 1e11}, 0.5, False, "test", "test")


@pytest.fixture
def planned(toy_config: Path, tokenizer: Any) -> tuple[Any, str, DataStats]:
    cfg = load_config(toy_config)
    return cfg, cfg.model, DataStats.from_prepared(prepare(cfg, tokenizer))


def test_plan_counts_match_the_real_model_and_components_add_up(planned: tuple[Any, str, DataStats]) -> None:
    cfg, model_path, stats = planned
    plans = {m: make_plan(cfg, model_path, stats, CPU, m, framework_bytes=100 << 20) for m in METHODS}
    real = load_model(model_path)
    n_total = sum(p.numel() for p in real.parameters())
    assert plans["full"].params == plans["full"].trainable == n_total
    lora_trainable, lora_total = count_parameters(apply_method(real, cfg.method))
    assert (plans["lora"].trainable, plans["lora"].params) == (lora_trainable, lora_total)

    for name, p in plans.items():
        m = p.memory
        assert min(m.components().values()) >= 0, name
        assert m.overhead == 100 << 20
        step_temp = m.detail["optimizer_step_temporaries"]
        assert m.gradients == 4 * p.trainable and m.optimizer == 8 * p.trainable + step_temp, name
        # Peak: everything but the part of gradients/activations that never coexist.
        assert (
            m.weights + 8 * p.trainable + m.overhead + m.activations <= m.peak <= sum(m.components().values())
        )
        assert p.seq_len == max(stats.lengths) and p.padded_tokens_per_epoch >= sum(stats.lengths)
        assert p.seconds_per_epoch and p.seconds_per_epoch > 0 and p.fits
        json.dumps(p.as_dict())
    assert plans["full"].memory.optimizer > 20 * plans["lora"].memory.optimizer
    assert plans["qlora"].memory.weights < plans["lora"].memory.weights
    assert plans["dora"].trainable > plans["lora"].trainable
    assert plans["full"].flops_per_epoch > plans["lora"].flops_per_epoch


def test_plan_grows_with_batch_and_length(toy_config: Path, planned: tuple[Any, str, DataStats]) -> None:
    _, model_path, stats = planned
    peaks = []
    for batch in (1, 2, 4, 8):
        cfg = load_config(toy_config, [f"train.batch_size={batch}"])
        peaks.append(make_plan(cfg, model_path, stats, CPU, "lora", framework_bytes=0).memory.activations)
    assert peaks == sorted(peaks) and peaks[0] < peaks[-1]
    # Without data, the plan assumes every sequence is max_length long.
    cfg = load_config(toy_config)
    short = make_plan(cfg, model_path, DataStats((), ()), CPU, "full", framework_bytes=0)
    long = make_plan(
        load_config(toy_config, ["train.max_length=512"]),
        model_path,
        DataStats((), ()),
        CPU,
        "full",
        framework_bytes=0,
    )
    assert short.seq_len == 128 and long.seq_len == 512
    assert long.memory.activations > 3 * short.memory.activations


def test_gradient_checkpointing_lowers_activations_and_auto_turns_it_on(
    toy_config: Path, planned: tuple[Any, str, DataStats]
) -> None:
    _, model_path, stats = planned
    cfg = load_config(toy_config, ["train.max_length=512", "train.batch_size=8"])
    stats = DataStats((512,) * 16, (100,) * 16)  # long sequences: the layers dominate, not the head
    off = make_plan(cfg, model_path, stats, CPU, "lora", gradient_checkpointing=False, framework_bytes=0)
    on = make_plan(cfg, model_path, stats, CPU, "lora", gradient_checkpointing=True, framework_bytes=0)
    assert on.gradient_checkpointing and not off.gradient_checkpointing
    assert on.memory.activations < off.memory.activations
    assert on.flops_per_epoch > off.flops_per_epoch  # the recomputed forward
    between = dataclasses.replace(CPU, memory_bytes=(on.memory.peak + off.memory.peak) // 2)
    auto = make_plan(cfg, model_path, stats, between, "lora", framework_bytes=0)
    assert auto.gradient_checkpointing and auto.fits
    roomy = make_plan(cfg, model_path, stats, CPU, "lora", framework_bytes=0)
    assert not roomy.gradient_checkpointing
    tight = dataclasses.replace(CPU, memory_bytes=on.memory.peak // 2)
    refused = make_plan(cfg, model_path, stats, tight, "lora", framework_bytes=0)
    assert not refused.fits and refused.gradient_checkpointing  # auto tried it; still too big
    assert (
        "(gradient checkpointing on)" in refused.refusal()
        and "Biggest part: activations" in refused.refusal()
    )
    assert "set train.gradient_checkpointing" not in refused.refusal()


def test_checkpointed_lora_has_the_same_gradients(toy_config: Path, tokenizer: Any) -> None:
    cfg = load_config(toy_config)
    data = prepare(cfg, tokenizer)
    batch = collate(data.train.encoded[:4], tokenizer.pad_token_id)
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = apply_method(load_model(cfg.model), cfg.method)
        for n, p in model.named_parameters():
            if "lora_B" in n:  # zero at init: give the A matrices a gradient too
                torch.nn.init.normal_(p, std=0.1)
        if ckpt:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        token_loss_sum(model, batch).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-6), n


def test_precision_resolution() -> None:
    assert cpu_has_bf16("flags\t\t: fpu sse avx512f avx512_bf16\n")
    assert cpu_has_bf16("flags : fpu amx_bf16 amx_tile\n")
    assert not cpu_has_bf16("flags : fpu sse avx2 avx512f avx512_vnni\n")
    assert resolve_precision("auto", CPU) == "fp32"
    assert resolve_precision("fp32", named_gpu("h100")) == "fp32"
    assert resolve_precision("auto", named_gpu("l4")) == "bf16"
    with pytest.raises(PrecisionError, match="bf16 is not supported on test CPU"):
        resolve_precision("bf16", CPU)


def test_named_gpus_and_memory_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    assert named_gpu("a100-40").memory_bytes < named_gpu("a100-80").memory_bytes
    assert parse_bytes("512MiB") == 512 << 20 and parse_bytes("2G") == 2 << 30 and parse_bytes("1000") == 1000
    with pytest.raises(PlanError):
        target_device("v100")
    monkeypatch.setenv("TUNESMITH_MEMORY_LIMIT", "1GiB")
    dev = target_device("cpu")
    assert dev.memory_bytes == 1 << 30 and "TUNESMITH_MEMORY_LIMIT" in dev.memory_source


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tunesmith.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def test_run_refuses_an_impossible_plan_before_loading_weights(toy_config: Path, tmp_path: Path) -> None:
    import yaml

    # A model folder without weights: any attempt to load them would fail with another error.
    model_dir = tmp_path / "no-weights"
    src = Path(yaml.safe_load(toy_config.read_text())["model"])
    shutil.copytree(src, model_dir, ignore=shutil.ignore_patterns("*.safetensors"))
    proc = _cli("run", str(toy_config), f"model={model_dir}", env={"TUNESMITH_MEMORY_LIMIT": "64MiB"})
    assert proc.returncode == 3, proc.stderr
    err = " ".join(proc.stderr.split())
    assert (
        "lora plan (gradient checkpointing on) does not fit" in err
        and "Biggest part:" in err
        and "Fix:" in err
    )
    assert "TUNESMITH_MEMORY_LIMIT=64MiB" in err
    assert not (toy_config.parent / "runs").exists()

    # The plan commands: in this process, as they load no weights and the refusal above ran as a real one.
    proc = cli_here("plan", str(toy_config), "--json", "--method", "full", "--method", "lora")
    assert proc.returncode == 0, proc.stderr
    plans = json.loads(proc.stdout)
    assert [p["method"] for p in plans] == ["full", "lora"] and all(p["fits"] for p in plans)
    assert plans[0]["memory"]["optimizer"] > plans[1]["memory"]["optimizer"]
    proc = cli_here("plan", str(toy_config), "--gpu", "h100", "train.precision=bf16")
    assert proc.returncode == 0, proc.stderr
    assert "bf16" in proc.stderr and "fits" in proc.stderr
    proc = cli_here("plan", str(toy_config), "train.precision=bf16")
    if not cpu_has_bf16():
        assert proc.returncode == 3 and "bf16 is not supported" in proc.stderr


def test_prepared_run_records_the_plan(toy_config: Path) -> None:
    proc = cli_here("data", "prepare", str(toy_config))
    assert proc.returncode == 0, proc.stderr
    run = Path(proc.stdout.strip().splitlines()[-1])
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["plan"]["method"] == "lora" and manifest["plan"]["memory"]["peak"] > 0
    assert json.loads((run / "data" / "preflight.json").read_text())["plan"]["fits"] is True


def test_plan_times_real_steps_when_cheap_and_says_why_not_otherwise(
    toy_config: Path, planned: tuple[Any, str, DataStats]
) -> None:
    from tunesmith.train.plan import MEASURE_MAX_S, MEASURE_STEPS, why_not_measured

    # On this machine, by default: the tiny model's steps are timed, for each planned method.
    proc = cli_here("plan", str(toy_config), "--json", "--method", "lora", "--method", "full")
    assert proc.returncode == 0, proc.stderr
    plans = json.loads(proc.stdout)
    for p in plans:
        m = p["measured"]
        assert m["steps_timed"] == MEASURE_STEPS and m["tokens_per_s"] > 0 and m["seconds_per_epoch"] > 0
    proc = cli_here("plan", str(toy_config), "--json", "--no-measure")
    assert proc.returncode == 0 and json.loads(proc.stdout)[0]["measured"] is None
    proc = cli_here("plan", str(toy_config), "--gpu", "h100", "--measure")
    assert proc.returncode == 3 and "--measure times this machine" in proc.stderr
    proc = cli_here("plan", str(toy_config), "--method", "ia3")
    assert proc.returncode == 0 and "time from FLOPs only" in proc.stderr and "measured" not in proc.stderr

    # The rule: a plan whose steps would take over MEASURE_MAX_S, or that does not fit, is not timed.
    cfg, model, stats = planned
    plan = make_plan(cfg, model, stats, CPU)
    assert why_not_measured(cfg, plan) is None
    batches = plan.steps_per_epoch * cfg.train.grad_accum
    slow = dataclasses.replace(plan, seconds_per_epoch=2 * MEASURE_MAX_S * batches)
    assert "--measure" in (why_not_measured(cfg, slow) or "")
    assert "does not fit" in (why_not_measured(cfg, dataclasses.replace(plan, fits=False)) or "")
    classify = cfg.model_copy(update={"train": cfg.train.model_copy(update={"objective": "classify"})})
    assert "from its shapes alone" in (why_not_measured(classify, plan) or "")
