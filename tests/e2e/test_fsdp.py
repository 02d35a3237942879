"""Sharded data parallel (train.sharding: fsdp) on CPU: two torchrun processes (gloo), each holding half of
the model, follow the one-process loss curve, save what one process saves, and resume either way."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import TORCHRUN, cli_here, run_dirs, write_toy_config
from tunesmith.train.precision import cpu_has_bf16

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _losses(run_dir: Path) -> list[tuple[float, float | None, float]]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["loss"], r.get("val_loss"), r["grad_norm"]) for r in rows]


def _sharded_copy(one: Path) -> Path:
    """A copy of the prepared run directory `one` that trains with train.sharding: fsdp."""
    two = one.with_name(one.name + "-fsdp")
    shutil.copytree(one, two)
    cfg = yaml.safe_load((two / "resolved.yaml").read_text())
    cfg["train"]["sharding"] = "fsdp"
    (two / "resolved.yaml").write_text(yaml.safe_dump(cfg))
    return two


def _prepare(toy_config: Path, method: dict[str, Any] | None = None, **train: Any) -> Path:
    cfg = yaml.safe_load(toy_config.read_text())
    # fp32 unless a test asks otherwise: the comparisons are at 1e-4, and `auto` means bf16 on CPUs with
    # AVX512-BF16/AMX, whose rounding differs between a whole micro-batch and half of it.
    train = {"max_steps": 4, "threads": 1, "eval_every": 2, "precision": "fp32", **train}
    cfg["train"] = {**cfg.get("train", {}), **train}
    if method:
        cfg["method"] = method
    toy_config.write_text(yaml.safe_dump(cfg))
    prep = cli_here("data", "prepare", str(toy_config))
    assert prep.returncode == 0, prep.stderr
    (run_dir,) = run_dirs(toy_config.parent / "runs")
    return run_dir


def _train(run_dir: Path, processes: int, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [*(TORCHRUN if processes == 2 else [sys.executable]), "-m", "tunesmith.cli", "train", str(run_dir)]
    done = subprocess.run([*cmd, *extra], capture_output=True, text=True, env=ENV, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def _assert_same_curve(a: list[Any], b: list[Any], steps: int = 4, tol: float = 1e-4) -> float:
    assert len(a) == len(b) == steps
    for (la, va, ga), (lb, vb, gb) in zip(a, b, strict=True):
        assert lb == pytest.approx(la, abs=tol)
        assert gb == pytest.approx(ga, abs=tol)
        assert (va is None) == (vb is None)
        if va is not None:
            assert vb == pytest.approx(va, abs=tol)
    assert a[-1][0] != a[0][0]  # it trained
    return max(abs(x[0] - y[0]) for x, y in zip(a, b, strict=True))


def _assert_sharded(stderr: str) -> None:
    """Each process holds about half of the parameter elements, and the halves make the whole."""
    shares = re.findall(r"fsdp: rank (\d)/2 holds ([\d,]+) of ([\d,]+) parameter elements", stderr)
    assert sorted(r for r, _, _ in shares) == ["0", "1"], stderr[-2000:]
    local = [int(x.replace(",", "")) for _, x, _ in shares]
    total = int(shares[0][2].replace(",", ""))
    assert sum(local) == total
    assert all(abs(n / total - 0.5) < 0.02 for n in local), (local, total)


def _logits(model: Any, tok: Any) -> Any:
    import torch

    ids = tok("Route the ticket: my invoice is wrong", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.timeout(600)
def test_fsdp_lora_matches_one_process_with_a_one_example_tail(toy_config: Path) -> None:
    # No length grouping: each epoch's last micro-batch is its tail. The batch size leaves a tail of one
    # example, which only one of the two processes can compute: the other runs a zero-weighted forward
    # and backward (FSDP needs every process in every forward).
    one = _prepare(toy_config, group_by_length=False)
    n_train = len((one / "data" / "train.jsonl").read_text().splitlines())
    batch, accum = next(
        (b, a)
        for b in (5, 7, 9, 11, 13, 15, 6, 10, 18, 3)
        for a in (3, 2, 4, 5, 6, 1)
        if n_train % b == 1 and -(-n_train // b) % a == 0 and 3 <= -(-n_train // b) // a <= 5
    )
    steps = -(-n_train // batch) // accum  # the last step ends with the one-example tail
    cfg = yaml.safe_load((one / "resolved.yaml").read_text())
    cfg["train"].update(batch_size=batch, grad_accum=accum, max_steps=steps)
    (one / "resolved.yaml").write_text(yaml.safe_dump(cfg))
    two = _sharded_copy(one)

    single = _train(one, 1)
    assert "train.sharding" not in single.stderr
    dist = _train(two, 2)
    _assert_sharded(dist.stderr)
    a, b = _losses(one), _losses(two)
    print(f"lora: batch {batch} x {accum}, {steps} steps; max |loss diff| {_assert_same_curve(a, b, steps)}")

    # The saved adapters are the same adapter.
    from peft import PeftModel

    from tunesmith.models import load_model, load_tokenizer

    tok = load_tokenizer(str(one / "adapter"))
    base = cfg["model"]
    ref = _logits(PeftModel.from_pretrained(load_model(base), str(one / "adapter")), tok)
    got = _logits(PeftModel.from_pretrained(load_model(base), str(two / "adapter")), tok)
    print("lora: max |logit diff|", float((ref - got).abs().max()))
    assert float((ref - got).abs().max()) < 1e-4


@pytest.fixture(scope="module")
def full_runs(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> tuple[Path, Path]:
    """One full fine-tune (two optimizer parameter groups: weights with decay, norms without; every weight
    trained) on one process and on two (FSDP), checkpointing every 2 steps. Shared by the tests below,
    which only read these runs or copy them."""
    toy_config = write_toy_config(tmp_path_factory.mktemp("fsdp-full"), tiny_model_dir)
    one = _prepare(toy_config, method={"name": "full"}, batch_size=5, grad_accum=2, lr=1e-3, save_every=2)
    two = _sharded_copy(one)
    _train(one, 1)
    dist = _train(two, 2)
    _assert_sharded(dist.stderr)
    return one, two


@pytest.mark.timeout(600)
def test_fsdp_full_matches_one_process_and_saves_the_same_model(full_runs: tuple[Path, Path]) -> None:
    one, two = full_runs
    a, b = _losses(one), _losses(two)
    print("full: max |loss diff|", _assert_same_curve(a, b))

    from safetensors import safe_open

    from tunesmith.models import load_model, load_tokenizer

    with (
        safe_open(str(one / "model" / "model.safetensors"), "pt") as a,
        safe_open(str(two / "model" / "model.safetensors"), "pt") as b,
    ):
        assert sorted(a.keys()) == sorted(b.keys())  # the tied head is saved once, as by one process
    tok = load_tokenizer(str(one / "model"))
    ref, got = _logits(load_model(str(one / "model")), tok), _logits(load_model(str(two / "model")), tok)
    print("full: max |logit diff|", float((ref - got).abs().max()))
    assert float((ref - got).abs().max()) < 1e-4


def _resume_from_step_2(src: Path, name: str, processes: int) -> list[Any]:
    """A copy of a finished run cut back to its step-2 checkpoint, resumed on `processes` processes."""
    run = src.with_name(name)
    shutil.copytree(src, run)
    shutil.rmtree(run / "checkpoints" / "step-4")
    _train(run, processes, "--resume")
    return _losses(run)


@pytest.mark.timeout(600)
@pytest.mark.skipif(not cpu_has_bf16(), reason="bf16 autocast on CPU needs AVX512-BF16 or AMX")
def test_fsdp_bf16_autocast_follows_the_one_process_curve(toy_config: Path) -> None:
    """bf16 autocast under FSDP: its cast-weight cache must be off (the loop's comment); with it on, the
    first step's grad norm came out 0.10 (2.7%) off the one-process run's. bf16 rounding alone moves the
    two by under 1e-3."""
    one = _prepare(toy_config, method={"name": "full"}, batch_size=5, grad_accum=2, lr=1e-3, precision="bf16")
    two = _sharded_copy(one)
    _train(one, 1)
    _train(two, 2)
    print("full bf16: max |loss diff|", _assert_same_curve(_losses(one), _losses(two), tol=2e-3))


@pytest.mark.timeout(600)
def test_fsdp_checkpoints_resume_sharded_and_in_one_process(full_runs: tuple[Path, Path]) -> None:
    one, two = full_runs  # resumed below as copies (_resume_from_step_2): the shared runs stay as trained
    ref = _losses(one)
    _assert_same_curve(ref, _losses(two))
    # The checkpoints are the one-process format: the same files, names and shapes.
    from safetensors import safe_open

    for step in ("step-2", "step-4"):
        files = [sorted(p.name for p in (run / "checkpoints" / step).iterdir()) for run in (one, two)]
        assert files[0] == files[1]
        with (
            safe_open(str(one / "checkpoints" / step / "trainable.safetensors"), "pt") as a,
            safe_open(str(two / "checkpoints" / step / "trainable.safetensors"), "pt") as b,
        ):
            names = sorted(a.keys())
            assert names == sorted(b.keys())
            assert all(a.get_slice(k).get_shape() == b.get_slice(k).get_shape() for k in names)

    diffs = {
        "fsdp -> fsdp": _assert_same_curve(ref, _resume_from_step_2(two, "fsdp-fsdp", 2)),
        "fsdp -> one process": _assert_same_curve(ref, _resume_from_step_2(two, "fsdp-one", 1)),
        "one process -> fsdp": _assert_same_curve(ref, _resume_from_step_2(one, "one-fsdp", 2)),
    }
    print("resume: max |loss diff|", diffs)


_LOAD_SHARDED = r"""
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from tunesmith.config import MethodConfig
from tunesmith.models import load_model
from tunesmith.train.checkpoint import TrainState, latest_checkpoint, save_checkpoint
from tunesmith.train.methods import apply_method
from tunesmith.train.sharding import full_model_state, load_checkpoint_weights, shard_model

dist.init_process_group("gloo")
rank = dist.get_rank()
for method in ("lora", "full"):
    torch.manual_seed(0)
    model = apply_method(load_model(sys.argv[1]), MethodConfig(name=method))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_()
    root = Path(sys.argv[2]) / method
    if rank == 0:
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
        save_checkpoint(root, model, opt, TrainState(step=1))
    dist.barrier()
    saved = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.zero_()
    shard_model(model, 2, torch.device("cpu"))
    load_checkpoint_weights(latest_checkpoint(root), model)  # every process, its shard
    got = full_model_state(model, trainable_only=True)
    if rank == 0:
        assert got.keys() == saved.keys(), (sorted(got)[:3], sorted(saved)[:3])
        assert all(torch.equal(got[n], saved[n]) for n in saved), method
        print(method, "ok", len(saved))
dist.destroy_process_group()
"""


@pytest.mark.timeout(300)
def test_checkpoint_weights_load_into_a_sharded_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Early stopping's final weights: the best checkpoint read into the sharded model by every process."""
    script = tmp_path / "load_sharded.py"
    script.write_text(_LOAD_SHARDED)
    done = subprocess.run(
        [*TORCHRUN, str(script), str(tiny_model_dir), str(tmp_path)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=240,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "lora ok" in done.stdout and "full ok" in done.stdout
