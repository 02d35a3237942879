"""`tunesmith compare` says after how many runs the targets passed and which change moved the score."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from tunesmith.cli import app


def _run(root: Path, name: str, train: dict, acc: float, met: bool) -> Path:
    d = root / name
    (d / "eval").mkdir(parents=True)
    row = {
        "metric": "accuracy",
        "base": 0.1,
        "tuned": acc,
        "delta": acc - 0.1,
        "delta_rel": None,
        "delta_ci": [0.0, 0.1],
        "tuned_ci": [acc - 0.02, acc + 0.02],
        "p_value": None,
        "target": ">= 0.8",
        "status": "PASS" if met else "FAIL",
    }
    ev = {
        "n_examples": 10,
        "primary_metric": "accuracy",
        "metrics": [row],
        "targets_met": met,
        "failed_targets": [] if met else ["accuracy"],
        "warnings": [],
    }
    (d / "eval" / "eval.json").write_text(json.dumps(ev))
    config = {"name": name, "runs_dir": "runs", "train": {"seed": 0, **train}, "method": {"name": "lora"}}
    (d / "manifest.json").write_text(
        json.dumps({"id": name, "model": "m", "method": "lora", "config": config})
    )
    return d


def test_compare_names_the_run_that_passed_and_the_change_that_mattered(tmp_path: Path) -> None:
    runs = [
        _run(tmp_path, "r1", {"lr": 2e-4, "epochs": 1.0}, 0.20, False),
        _run(tmp_path, "r2", {"lr": 1e-3, "epochs": 1.0}, 0.70, False),
        _run(tmp_path, "r3", {"lr": 1e-3, "epochs": 2.0}, 0.86, True),
    ]
    out = tmp_path / "cmp.html"
    res = CliRunner().invoke(app, ["compare", *map(str, runs), "--out", str(out)])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "targets passed at run 3 of 3 (r3)" in text
    assert "largest gain in accuracy: +0.500 at r2 (train.lr 0.0002 -> 0.001)" in text
    page = out.read_text()
    assert "id=iterations" in page and "<code>train.epochs</code>: 1.0 → 2.0" in page
    # The run name differs every time: not a setting that changed.
    assert "<code>name</code>" not in page
    res = CliRunner().invoke(app, ["compare", *map(str, runs[:2]), "--out", str(out)])
    assert "targets not passed in 2 run(s)" in " ".join(res.output.split())
