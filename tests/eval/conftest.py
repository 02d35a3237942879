"""One small real run (the tiny model, a few LoRA steps) evaluated with every new metric, shared by the
review, report and CLI tests of this folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from helpers import make_label_rows, toy_task_config, write_jsonl


@pytest.fixture(scope="session")
def evaluated_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    import yaml
    from rich.console import Console

    from tunesmith.config import load_config
    from tunesmith.runner import run_all

    root = tmp_path_factory.mktemp("evaluated-run")
    rows = make_label_rows(80)
    for i, r in enumerate(rows):
        if i % 3 == 0:
            r["facts"] = [r["output"]]  # type: ignore[assignment]
    write_jsonl(root / "data.jsonl", rows)
    cfg = toy_task_config(
        root,
        tiny_model_dir,
        train={"lr": 5e-3, "max_steps": 4, "batch_size": 4, "max_length": 128, "eval_every": 2},
        eval={
            "metrics": [
                "accuracy",
                "classification",
                "token_f1",
                "bleu",
                "chrf",
                "perplexity",
                "facts",
                "readability",
                "hallucination",
            ],
            "max_new_tokens": 6,
            "batch_size": 8,
            "latency_probe": 2,
        },
    )
    cfg["targets"] = {"accuracy": ">= 0.99"}  # a random tiny model misses it: exit code 1, a FAIL verdict
    path = root / "tunesmith.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    outcome = run_all(load_config(path), Console(stderr=True, quiet=True))
    return outcome.run_dir


@pytest.fixture
def run_copy(evaluated_run: Path, tmp_path: Path) -> Path:
    """A private copy of the evaluated run, for tests that change it."""
    dst = tmp_path / evaluated_run.name
    shutil.copytree(evaluated_run, dst)
    return dst
