"""`tunesmith init` on real data as a user has it (CLINC150's CSV files, a slice), then `tunesmith run` on
the written config with no edit of the data or the config (a short training override only)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from helpers import run_dirs

CLINC = Path(__file__).resolve().parents[1] / "data" / "real" / "clinc150"


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tunesmith.cli", *args], capture_output=True, text=True, timeout=600, cwd=cwd
    )


def test_init_then_run_on_clinc_csv_files_as_they_are(tmp_path: Path, tiny_model_dir: Path) -> None:
    data = tmp_path / "clinc150"
    shutil.copytree(CLINC, data)
    init = _cli("init", str(data / "train.csv"), "--model", str(tiny_model_dir), cwd=tmp_path)
    assert init.returncode == 0, init.stderr[-3000:]
    out = " ".join(init.stderr.split())
    assert "208 classification rows; answers: label (8 labels)" in out
    assert "columns: {'text': 'query', 'label': 'intent'}" in out and "wrote tunesmith.yaml" in out
    assert "pre-flight" in out and "conflicting answers" in out  # the plan ran on the written config
    assert (tmp_path / "tunesmith.yaml").is_file() and not (tmp_path / "runs").exists()

    run = _cli("run", "tunesmith.yaml", "train.max_steps=3", "eval.forgetting_probe=false", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    (run_dir,) = run_dirs(tmp_path / "runs")
    ev = json.loads((run_dir / "eval" / "eval.json").read_text())
    assert ev["n_examples"] == 80 and ev["primary_metric"] == "accuracy"  # the given test file, whole
    test_sources = [
        json.loads(x)["source"] for x in (run_dir / "data" / "test.jsonl").read_text().splitlines()
    ]
    assert test_sources == [f"test.csv:{i}" for i in range(2, 82)]
