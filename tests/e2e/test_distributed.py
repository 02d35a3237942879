"""Data parallel on CPU: two processes (torchrun, gloo) follow the same loss curve as one process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import TORCHRUN, cli_here, run_dirs

ROOT = Path(__file__).resolve().parents[2]


def _losses(run_dir: Path) -> list[tuple[float, float | None]]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["loss"], r.get("val_loss")) for r in rows]


@pytest.mark.timeout(600)
def test_two_processes_match_one_process(toy_config: Path) -> None:
    cfg = yaml.safe_load(toy_config.read_text())
    # Global batch 6 x 2 micro-batches: with 2 processes each computes 3 examples of every micro-batch.
    cfg["train"] = {**cfg.get("train", {}), "max_steps": 4, "batch_size": 6, "grad_accum": 2, "threads": 1}
    cfg["train"]["eval_every"] = 2
    toy_config.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cli = [sys.executable, "-m", "tunesmith.cli"]
    prep = cli_here("data", "prepare", str(toy_config))
    assert prep.returncode == 0, prep.stderr
    (one,) = run_dirs(toy_config.parent / "runs")
    two = one.with_name(one.name + "-ddp")
    shutil.copytree(one, two)

    single = subprocess.run([*cli, "train", str(one)], capture_output=True, text=True, env=env, timeout=300)
    assert single.returncode == 0, single.stderr
    dist = subprocess.run(
        [*TORCHRUN, "-m", "tunesmith.cli", "train", str(two)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=ROOT,
    )
    assert dist.returncode == 0, dist.stderr[-3000:]
    a, b = _losses(one), _losses(two)
    print("max |loss diff|", max(abs(x[0] - y[0]) for x, y in zip(a, b, strict=True)), a, b)
    assert len(a) == len(b) == 4
    for (la, va), (lb, vb) in zip(a, b, strict=True):
        assert lb == pytest.approx(la, abs=1e-4)
        assert (va is None) == (vb is None)
        if va is not None:
            assert vb == pytest.approx(va, abs=1e-4)
    assert len(a) == 4 and a[-1][0] != a[0][0]
    assert (two / "adapter" / "adapter_model.safetensors").is_file()


def test_run_refuses_a_multi_process_launch(toy_config: Path) -> None:
    """`run` trains and evaluates in one process: under a launcher it says what to run instead, at once."""
    env = {**os.environ, "WORLD_SIZE": "2"}
    r = subprocess.run(
        [sys.executable, "-m", "tunesmith.cli", "run", str(toy_config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 1
    assert "tunesmith eval RUN_DIR" in " ".join((r.stderr + r.stdout).split())
    assert not (toy_config.parent / "runs").exists() or not run_dirs(toy_config.parent / "runs")
