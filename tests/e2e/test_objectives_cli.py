"""`classify` and `pretrain` runs end to end through the CLI on the tiny model: train, evaluate, report."""

from __future__ import annotations

import csv
import json
import random
import subprocess
import sys
from pathlib import Path

import yaml

from helpers import make_label_rows, random_words, run_dirs, write_jsonl


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tunesmith.cli", *args], capture_output=True, text=True, timeout=600
    )


def _config(
    tmp_path: Path, model: Path, data: dict, train: dict, metrics: list[str], method: str = "lora"
) -> Path:
    cfg = {
        "name": "obj",
        "model": str(model),
        "runs_dir": str(tmp_path / "runs"),
        "data": data,
        "method": {"name": method, **({"r": 8, "alpha": 16} if method == "lora" else {})},
        "train": {"threads": 1, "max_length": 96, "eval_every": 100, **train},
        "eval": {"metrics": metrics},
    }
    path = tmp_path / "tunesmith.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_classify_run_reports_accuracy_with_label_probabilities(tmp_path: Path, tiny_model_dir: Path) -> None:
    with (tmp_path / "tickets.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for r in make_label_rows(120):
            w.writerow([r["instruction"], r["output"]])
    cfg = _config(
        tmp_path,
        tiny_model_dir,
        {"train": "tickets.csv"},
        # lr 5e-3 is far above a real full fine-tune's: the head at the same rate, not 10x it.
        {"objective": "classify", "max_steps": 120, "lr": 5e-3, "head_lr": 5e-3, "batch_size": 8},
        ["accuracy"],
        method="full",  # the random 2-layer test model must learn to attend to the keyword: LoRA is too slow
    )
    proc = _cli("run", str(cfg))
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "runs")
    ev = json.loads((run / "eval" / "eval.json").read_text())
    acc = next(r for r in ev["metrics"] if r["metric"] == "accuracy")
    # The keyword decides the label: a trained head learns it; an untrained one is at chance (1/4).
    assert acc["tuned"] >= 0.75 and acc["base"] <= 0.6 and acc["delta_ci"][0] > 0
    assert ev["macro_f1"]["tuned"] >= 0.7
    pred = json.loads((run / "eval" / "predictions.jsonl").read_text().splitlines()[0])
    probs = pred["tuned_probabilities"]
    assert sorted(probs) == ["access", "billing", "mobile", "payroll"] and abs(sum(probs.values()) - 1) < 1e-3
    assert (run / "report.html").is_file()
    again = _cli("eval", str(run))
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((run / "eval" / "eval.json").read_text())["metrics"] == ev["metrics"]


def test_pretrain_run_lowers_held_out_loss(tmp_path: Path, tiny_model_dir: Path) -> None:
    rng = random.Random(7)
    write_jsonl(
        tmp_path / "notes.jsonl", [{"text": random_words(rng, rng.randint(40, 90))} for _ in range(120)]
    )
    cfg = _config(
        tmp_path,
        tiny_model_dir,
        {
            "train": "notes.jsonl",
            "clean": {"near_dedup": False},  # texts from a 45-word vocabulary all look alike
            "contamination": {"action": "warn"},
        },
        {"objective": "pretrain", "max_steps": 20, "lr": 1e-2, "batch_size": 4},
        ["exact_match"],
    )
    proc = _cli("run", str(cfg))
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "runs")
    ev = json.loads((run / "eval" / "eval.json").read_text())
    loss = next(r for r in ev["metrics"] if r["metric"] == "held_out_loss")
    assert loss["tuned"] < loss["base"] and loss["delta_ci"][1] < 0
    # A falling loss is an improvement: the report and the regressions read it the right way round.
    assert loss["higher_is_better"] is False
    assert "held_out_loss" in (run / "report.html").read_text()
    assert ev["perplexity"]["tuned"] < ev["perplexity"]["base"]
