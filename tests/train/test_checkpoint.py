"""Checkpoints, exact resume, kill safety, accumulation equivalence, overfitting and divergence."""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from rich.console import Console

from helpers import random_words, write_jsonl
from tunesmith.config import load_config
from tunesmith.data.pipeline import prepare
from tunesmith.models import load_model
from tunesmith.train import loop
from tunesmith.train.batching import BatchStream, accumulate_step, micro_batches
from tunesmith.train.checkpoint import (
    MARKER,
    TrainingDiverged,
    TrainState,
    best_checkpoint,
    clean_partial,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    read_checkpoint,
    save_checkpoint,
)
from tunesmith.train.monitor import ValMonitor

QUIET = Console(stderr=True, quiet=True)


def metrics(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


# --------------------------------------------------------------------------------------------------
# Pure pieces


def test_batch_stream_resumed_at_its_position_yields_the_same_next_batches() -> None:
    lengths = [(i * 37) % 200 + 10 for i in range(23)]  # 6 batches of 4 per epoch, the last one short
    reference = list(itertools.islice(micro_batches(lengths, 4, seed=5), 40))
    for k in (0, 1, 5, 6, 7, 17, 18):
        stream = BatchStream(lengths, 4, seed=5)
        head = [next(stream) for _ in range(k)]
        resumed = BatchStream(lengths, 4, seed=5, epoch=stream.epoch, index=stream.index)
        assert head + list(itertools.islice(resumed, 40 - k)) == reference, k


def test_val_monitor_warns_once_on_overfitting_and_stops_after_patience() -> None:
    m = ValMonitor(patience=2, min_delta=0.01)
    evals = [(2.0, 3.0), (1.5, 2.5), (1.45, 2.0), (1.6, 1.8), (1.7, 1.5), (1.8, 1.2)]  # (val, train)
    verdicts = []
    for i, (val, train) in enumerate(evals):
        m.add_train(train)
        m.add_train(train)
        verdicts.append(m.update(2 * (i + 1), val))
    assert [v.improved for v in verdicts] == [True, True, True, False, False, False]
    assert [v.stop for v in verdicts] == [False, False, False, False, True, True]
    # Val rose at evaluations 4 and 5 while train loss fell: one warning, when patience ran out.
    assert [v.warning is not None for v in verdicts] == [False, False, False, False, True, False]
    assert "step 6" in (verdicts[4].warning or "")
    assert ValMonitor.from_state(m.state()) == m

    # Val flat (within min_delta) while train falls: early stopping's plateau, not overfitting.
    flat = ValMonitor(patience=2, min_delta=0.01)
    out = [flat.update(s, v) for s, v in [(1, 1.0), (2, 1.005), (3, 0.999)]]
    assert out[-1].stop and all(v.warning is None for v in out)


def test_accumulation_8x1_equals_1x8_on_variable_lengths(toy_config: Path, tokenizer: Any) -> None:
    cfg = load_config(toy_config)
    data = prepare(cfg, tokenizer)
    by_length = {len(e.input_ids): e for e in data.train.encoded}  # one example per distinct length
    lengths = sorted(by_length)
    picks = [lengths[round(i * (len(lengths) - 1) / 7)] for i in range(8)]  # shortest, longest, between
    chunk = [by_length[n] for n in picks]
    assert len({len(e.input_ids) for e in chunk}) >= 5
    model = load_model(cfg.model).float()
    for p in model.parameters():  # full gradients: the strictest comparison
        p.requires_grad_(True)

    def run(micro_size: int) -> tuple[float, dict[str, torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        chunks = [chunk[i : i + micro_size] for i in range(0, len(chunk), micro_size)]
        stats = accumulate_step(model, chunks, tokenizer.pad_token_id, lambda loss: loss.backward())
        return stats.loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    loss_8x1, grads_8x1 = run(8)
    loss_1x8, grads_1x8 = run(1)
    assert loss_8x1 == pytest.approx(loss_1x8, abs=1e-5)
    assert grads_8x1.keys() == grads_1x8.keys() and len(grads_8x1) > 10
    for name, g in grads_8x1.items():
        assert torch.allclose(g, grads_1x8[name], atol=1e-5, rtol=1e-4), name
    # Per-micro-batch normalisation (the bug this guards against) would differ by far more.
    assert max(float(g.abs().max()) for g in grads_8x1.values()) > 1e-3


# --------------------------------------------------------------------------------------------------
# Checkpoint files


def _tiny_module() -> torch.nn.Module:
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    m[0].weight.requires_grad_(False)  # frozen: not part of the checkpoint
    return m


def _save(root: Path, model: torch.nn.Module, step: int, val: float | None = None) -> Path:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(torch.ones(1, 4)).sum().backward()
    opt.step()
    return save_checkpoint(root, model, opt, TrainState(step=step, val_loss=val, epoch=1, batch=3)).path


def test_checkpoint_round_trip_and_only_complete_ones_count(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    model = _tiny_module()
    for step, val in [(2, 1.5), (4, None), (6, 1.2), (8, 1.4)]:
        _save(root, model, step, val)
    at_8 = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert [c.step for c in list_checkpoints(root)] == [2, 4, 6, 8]
    # A folder without its marker, one with a truncated file, and a temp folder are never checkpoints.
    (root / "step-10").mkdir()
    broken = root / "step-12"
    _save(root, model, 12)
    weights = broken / "trainable.safetensors"
    weights.write_bytes(weights.read_bytes()[:-5])
    (root / ".step-14.abc.tmp").mkdir()
    assert read_checkpoint(broken) is None
    assert latest_checkpoint(root).step == 8  # type: ignore[union-attr]
    assert best_checkpoint(root).step == 6  # type: ignore[union-attr]
    assert clean_partial(root) == [root / ".step-14.abc.tmp"]

    # Pruning keeps the last N plus the best by val loss.
    prune_checkpoints(root, keep=1)
    assert [c.step for c in list_checkpoints(root)] == [6, 8]

    fresh = _tiny_module()
    fresh[1].weight.data.zero_()
    opt = torch.optim.AdamW([p for p in fresh.parameters() if p.requires_grad], lr=0.1)
    state = load_checkpoint(latest_checkpoint(root), fresh, opt)  # type: ignore[arg-type]
    assert (state.step, state.epoch, state.batch) == (8, 1, 3)
    assert all(torch.equal(p, at_8[n]) for n, p in fresh.named_parameters())
    assert opt.state_dict()["state"][0]["step"] == 1


def test_rng_states_restored_exactly(tmp_path: Path) -> None:
    import numpy as np

    model = _tiny_module()
    path = _save(tmp_path, model, 1)
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    random.random(), np.random.rand(), torch.rand(3)  # move every generator on
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    load_checkpoint(read_checkpoint(path), model, opt)  # type: ignore[arg-type]
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected


def test_non_finite_weights_are_never_saved(tmp_path: Path) -> None:
    model = _tiny_module()
    _save(tmp_path, model, 2)
    with torch.no_grad():
        model[1].weight[0, 0] = float("nan")
    with pytest.raises(TrainingDiverged, match=r"step 4: non-finite weights \(.*1\.weight\).*step-2"):
        _save(tmp_path, model, 4)
    assert [c.step for c in list_checkpoints(tmp_path)] == [2]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# --------------------------------------------------------------------------------------------------
# The loop: exact resume, divergence


class _Interrupt(Exception):
    pass


def test_resume_mid_epoch_matches_uninterrupted_run(
    toy_config: Path, tokenizer: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # LoRA dropout draws from torch's RNG every step, so only a restored RNG state reproduces the losses.
    cfg = load_config(
        toy_config,
        ["train.max_steps=10", "train.batch_size=2", "train.grad_accum=4", "train.save_every=2"]
        + ["train.eval_every=3", "method.dropout=0.1", "train.lr=1e-2", "train.threads=1"],
    )
    data = prepare(cfg, tokenizer)
    steps_per_epoch = len(data.train.encoded) / 8
    assert 4 < steps_per_epoch < 10  # the interruption is mid-epoch and the run crosses an epoch boundary

    full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
    full_model, full = loop.train(cfg, data, load_model(cfg.model), tokenizer, full_dir, QUIET)

    real_get_lr = loop.get_lr

    def interrupt_after_5_steps(step: int, *args: Any) -> float:
        if step == 5:  # 5 steps done, the last checkpoint is step 4: step 5 is logged and then redone
            raise _Interrupt
        return real_get_lr(step, *args)

    monkeypatch.setattr(loop, "get_lr", interrupt_after_5_steps)
    with pytest.raises(_Interrupt):
        loop.train(cfg, data, load_model(cfg.model), tokenizer, cut_dir, QUIET)
    monkeypatch.undo()
    assert [r["step"] for r in metrics(cut_dir)] == [1, 2, 3, 4, 5]
    assert latest_checkpoint(cut_dir / "checkpoints").step == 4  # type: ignore[union-attr]
    with pytest.raises(FileExistsError, match="resume"):
        loop.train(cfg, data, load_model(cfg.model), tokenizer, cut_dir, QUIET)

    resumed_model, resumed = loop.train(
        cfg, data, load_model(cfg.model), tokenizer, cut_dir, QUIET, resume=True
    )
    assert resumed.resumed_from == 4
    a, b = metrics(full_dir), metrics(cut_dir)
    assert [r["step"] for r in b] == list(range(1, 11))
    for ra, rb in zip(a, b, strict=True):
        assert (ra["epoch"], ra["lr"], ra["tokens"]) == (rb["epoch"], rb["lr"], rb["tokens"])
        assert rb["loss"] == pytest.approx(ra["loss"], abs=1e-5), ra["step"]
        assert rb["grad_norm"] == pytest.approx(ra["grad_norm"], abs=1e-5), ra["step"]
        assert rb.get("val_loss", 0) == pytest.approx(ra.get("val_loss", 0), abs=1e-5), ra["step"]
    assert a[-1]["epoch"] == 1
    assert [s for s, _ in resumed.val_losses] == [s for s, _ in full.val_losses] == [3, 6, 9, 10]
    assert [v for _, v in resumed.val_losses] == pytest.approx([v for _, v in full.val_losses], abs=1e-5)
    for (name, p), (_, q) in zip(
        full_model.named_parameters(), resumed_model.named_parameters(), strict=True
    ):
        assert torch.allclose(p, q, atol=1e-6), name
    # keep_checkpoints=2: the last two, plus the best by val loss.
    kept = [c.step for c in list_checkpoints(cut_dir / "checkpoints")]
    assert kept[-2:] == [8, 10] and len(kept) <= 3


def test_nan_loss_stops_naming_the_step_and_keeps_last_checkpoint(
    toy_config: Path, tokenizer: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = load_config(
        toy_config, ["train.max_steps=8", "train.save_every=2", "train.grad_accum=1", "train.threads=1"]
    )
    data = prepare(cfg, tokenizer)
    calls = 0
    real = loop.accumulate_step

    def nan_at_step_5(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        stats = real(*args, **kwargs)
        return type(stats)(float("nan"), stats.loss_tokens, stats.tokens) if calls == 5 else stats

    monkeypatch.setattr(loop, "accumulate_step", nan_at_step_5)
    with pytest.raises(TrainingDiverged, match=r"step 5: loss=nan .*step-4"):
        loop.train(cfg, data, load_model(cfg.model), tokenizer, tmp_path, QUIET)
    ckpt = latest_checkpoint(tmp_path / "checkpoints")
    assert ckpt is not None and ckpt.step == 4
    assert [r["step"] for r in metrics(tmp_path)] == [1, 2, 3, 4]
    assert not (tmp_path / "adapter").exists()

    # An absurd learning rate: the first update blows the weights up, the next step's loss is not finite.
    cfg = load_config(toy_config, ["train.lr=1e30", "train.warmup_ratio=0", "train.threads=1"])
    with pytest.raises(TrainingDiverged, match=r"^step 2: loss=(nan|inf)"):
        loop.train(cfg, data, load_model(cfg.model), tokenizer, tmp_path / "absurd", QUIET)


# --------------------------------------------------------------------------------------------------
# Overfitting and early stopping


@pytest.fixture(scope="module")
def overfit_model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer: Any) -> Path:
    """Wider than the shared tiny model, with larger initial weights: enough logit range to memorise."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        initializer_range=0.3,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    out = tmp_path_factory.mktemp("overfit-llama")
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_overfitting_is_reported_and_early_stopping_keeps_best_weights(
    overfit_model_dir: Path, tokenizer: Any, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    # 12 training tickets with random labels: nothing to generalise, everything to memorise.
    rng = random.Random(1)

    def rows(n: int) -> list[dict[str, str]]:
        labels = ["billing", "access", "payroll", "mobile"]
        return [{"instruction": random_words(rng, 6), "output": rng.choice(labels)} for _ in range(n)]

    for name, n in (("train", 12), ("val", 16), ("test", 4)):
        write_jsonl(tmp_path / f"{name}.jsonl", rows(n))
    raw = {
        "name": "overfit",
        "model": str(overfit_model_dir),
        "data": {
            "train": "train.jsonl",
            "val": "val.jsonl",
            "test": "test.jsonl",
            "clean": {"near_dedup": False},  # random filler words look alike
        },
        "method": {"r": 16, "alpha": 32},
        "train": {
            "lr": 1e-2,
            "max_steps": 40,
            "batch_size": 12,
            "max_length": 128,
            "eval_every": 2,
            "warmup_ratio": 0.0,
            "min_lr_ratio": 1.0,
            "early_stopping": True,
            "patience": 3,
            "keep_checkpoints": 1,
            "threads": 1,
        },
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    cfg = load_config(tmp_path / "c.yaml")
    data = prepare(cfg, tokenizer)
    run_dir = tmp_path / "run"
    tuned, result = loop.train(cfg, data, load_model(cfg.model), tokenizer, run_dir, QUIET)

    records = metrics(run_dir)
    stop = records[-1]
    assert result.stopped_early and stop.get("early_stop") and stop["step"] < 40
    assert "overfitting" in stop["warning"]  # the val loss rose while the train loss fell
    vals = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    best_step, best_val = min(vals, key=lambda sv: sv[1])
    after = [v for s, v in vals if s > best_step]
    assert len(after) == 3 and all(v > best_val for v in after)
    train_at = {r["step"]: r["loss"] for r in records}
    assert train_at[stop["step"]] < train_at[best_step] < train_at[1]

    # The final adapter holds the best step's weights, read back from its checkpoint.
    assert result.weights_from_step == best_step
    best = best_checkpoint(run_dir / "checkpoints")
    assert best is not None and best.step == best_step
    saved = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    at_best = load_file(best.path / "adapter_model.safetensors")
    assert saved.keys() == at_best.keys()
    assert all(torch.equal(saved[k], at_best[k]) for k in saved)
    # keep_checkpoints=1: the stop step's checkpoint plus the best one.
    assert [c.step for c in list_checkpoints(run_dir / "checkpoints")] == [best_step, stop["step"]]
    # Resuming a run that early stopping ended trains no further.
    _, again = loop.train(cfg, data, load_model(cfg.model), tokenizer, run_dir, QUIET, resume=True)
    assert again.steps == stop["step"] and again.weights_from_step == best_step
    assert len(metrics(run_dir)) == len(records)


# --------------------------------------------------------------------------------------------------
# SIGKILL during a save, then `tunesmith train RUN_DIR --resume`

_KILLED_TRAINER = r"""
import sys, time
from pathlib import Path

import torch
from rich.console import Console

from tunesmith.runner import train_run

run_dir, ready = Path(sys.argv[1]), Path(sys.argv[2])
real_save = torch.save


def save_then_hang(obj, f, *args, **kwargs):
    # The second checkpoint (step 4) hangs after its weights and optimizer state are on disk.
    real_save(obj, f, *args, **kwargs)
    if Path(f).name == "optimizer.pt" and Path(f).parent.name.startswith(".step-4."):
        ready.write_text(str(Path(f).parent))
        time.sleep(600)


torch.save = save_then_hang
train_run(run_dir, Console(stderr=True, quiet=True))
"""


def test_sigkill_mid_save_keeps_previous_checkpoint_and_resume_finishes(toy_config: Path) -> None:
    from tunesmith.runner import prepare_run

    cfg = load_config(toy_config, ["train.save_every=2", "train.eval_every=2", "train.threads=1"])
    run_dir = prepare_run(cfg, QUIET)
    ready, log = run_dir.parent / "ready", run_dir.parent / "trainer.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", _KILLED_TRAINER, str(run_dir), str(ready)], stdout=err, stderr=err
        )
    try:
        deadline = time.monotonic() + 240
        while not ready.exists():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the trainer never reached the second save"
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    root = run_dir / "checkpoints"
    partial = Path(ready.read_text())
    assert partial.is_dir() and (partial / "optimizer.pt").is_file() and not (partial / MARKER).exists()
    latest = latest_checkpoint(root)
    assert latest is not None and latest.step == 2  # the partial step 4 is never considered
    assert [r["step"] for r in metrics(run_dir)] == [1, 2, 3, 4]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["stages"]["train"]["status"] == "running"

    proc2 = subprocess.run(
        [sys.executable, "-m", "tunesmith.cli", "train", str(run_dir), "--resume"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc2.returncode == 0, proc2.stderr
    assert "resuming from" in proc2.stderr
    assert proc2.stdout.strip() == str(run_dir)
    assert not partial.exists()  # the leftover temp folder is cleaned
    assert [r["step"] for r in metrics(run_dir)] == list(range(1, 7))
    assert [c.step for c in list_checkpoints(root)][-2:] == [4, 6]
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["stages"]["train"]["status"] == "done" and manifest["train"]["resumed_from"] == 2
