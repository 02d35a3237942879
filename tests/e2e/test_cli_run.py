"""The whole CLI, as a user runs it, on the tiny model (seconds) and on the real SmolLM2 (a few steps)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import make_label_rows, run_dirs, write_jsonl

ROOT = Path(__file__).resolve().parents[2]


def tunesmith(*args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tunesmith.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def _set(cfg_path: Path, **sections: dict) -> None:
    cfg = yaml.safe_load(cfg_path.read_text())
    for k, v in sections.items():
        cfg[k] = {**cfg.get(k, {}), **v} if isinstance(v, dict) else v
    cfg_path.write_text(yaml.safe_dump(cfg))


def test_run_writes_every_artifact_and_exits_1_on_missed_target(toy_config: Path) -> None:
    # A randomly initialised model cannot reach 99% accuracy: the run completes and exits 1.
    _set(toy_config, targets={"accuracy": ">= 0.99"})
    proc = tunesmith("run", str(toy_config))
    assert proc.returncode == 1, proc.stderr
    assert "targets missed: accuracy" in proc.stderr
    runs = run_dirs(toy_config.parent / "runs")
    assert len(runs) == 1
    run = runs[0]
    for rel in (
        "resolved.yaml",
        "manifest.json",
        "data/train.jsonl",
        "data/test.jsonl",
        "data/preflight.json",
        "metrics.jsonl",
        "adapter/adapter_model.safetensors",
        "adapter/tokenizer.json",
        "eval/predictions.jsonl",
        "eval/eval.json",
        "report.html",
        "loss.png",
    ):
        assert (run / rel).is_file(), rel
    ev = json.loads((run / "eval" / "eval.json").read_text())
    n_test = len((run / "data" / "test.jsonl").read_text().splitlines())
    assert 14 <= n_test <= 16  # 20% of 80 rows, less any near-duplicates the cleaning removed
    assert ev["n_examples"] == n_test and ev["failed_targets"] == ["accuracy"]
    assert {m["metric"] for m in ev["metrics"]} == {"accuracy", "exact_match", "token_f1", "rouge_l"}
    manifest = json.loads((run / "manifest.json").read_text())
    assert {k for k, v in manifest["stages"].items() if v["status"] == "done"} == {"data", "train", "eval"}
    html = (run / "report.html").read_text()
    assert "data:image/png;base64," in html and "Targets missed: accuracy" in html

    # The eval stage alone, from the run directory, gives the same predictions (greedy is deterministic).
    before = (run / "eval" / "predictions.jsonl").read_text()
    proc = tunesmith("eval", str(run))
    assert proc.returncode == 1, proc.stderr
    assert (run / "eval" / "predictions.jsonl").read_text() == before


def test_run_into_log_files_reads_line_by_line(toy_config: Path, tmp_path: Path) -> None:
    """`tunesmith run cfg.yaml > run.out 2> run.log` (nohup, CI, a cluster job): plain progress lines for
    training and both eval passes, and tables at full width: nothing cut off with `…`."""
    # As a batch job sees it: no terminal anywhere, and no variable that makes rich act as if there were one.
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "FORCE_COLOR", "TTY_COMPATIBLE")}
    out_path, log_path = tmp_path / "run.out", tmp_path / "run.log"
    with out_path.open("w") as out, log_path.open("w") as log:
        proc = subprocess.run(
            [sys.executable, "-m", "tunesmith.cli", "run", str(toy_config), "train.max_steps=3"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=log,
            timeout=600,
            cwd=ROOT,
            env=env,
        )
    text = log_path.read_text()
    assert proc.returncode == 0, text
    assert "…" not in text + out_path.read_text()
    progress = [ln for ln in text.splitlines() if ln.startswith(("train step ", "eval base ", "eval tuned "))]
    assert progress and not any("━" in ln for ln in progress), text
    # Each under 30 s here: the first and the last step, the last with the val loss of step 3.
    step = r"loss \d+\.\d{4}  lr \S+  \d+ tok/s"
    assert re.fullmatch(rf"train step 1/3 \(33%\)  {step}  elapsed \S+  eta \S+", progress[0])
    assert re.fullmatch(
        rf"train step 3/3 \(100%\)  {step}  val \d+\.\d{{4}}  elapsed \S+  eta 0:00:00", progress[1]
    )
    for which in ("base", "tuned"):
        end = [ln for ln in progress if ln.startswith(f"eval {which} ")][-1]
        assert re.fullmatch(rf"eval {which} (\d+)/\1 \(100%\)  elapsed \d+:\d\d:\d\d  eta 0:00:00", end)
    assert "delta (rel) [95% CI]" in text  # the eval table's header, on one line


def test_bad_data_line_exits_1_without_run_dir(toy_config: Path) -> None:
    rows = make_label_rows(40)
    path = write_jsonl(toy_config.parent / "data.jsonl", rows)
    lines = path.read_text().splitlines()
    lines[6] = lines[6][:-1]  # line 7 loses its closing brace
    path.write_text("\n".join(lines) + "\n")
    proc = tunesmith("data", "check", str(toy_config))
    assert proc.returncode == 1
    assert "data.jsonl:7: is not valid JSON" in proc.stderr
    proc = tunesmith("run", str(toy_config))
    assert proc.returncode == 1
    assert not (toy_config.parent / "runs").exists()


def test_over_length_examples_are_reported_by_line(toy_config: Path) -> None:
    rows = make_label_rows(40)
    rows[11]["instruction"] = "long " * 400
    write_jsonl(toy_config.parent / "data.jsonl", rows)
    proc = tunesmith("data", "check", str(toy_config))
    assert proc.returncode == 1
    assert "data.jsonl:12:" in proc.stderr and "over train.max_length=128" in proc.stderr


@pytest.mark.slow
def test_real_smollm2_few_steps_end_to_end(tmp_path: Path) -> None:
    """The shipped example on the real pretrained model, shrunk to a few steps and a few test prompts."""
    cfg = yaml.safe_load((ROOT / "examples/support-tickets/tunesmith.yaml").read_text())
    cfg["data"]["train"] = str(ROOT / "examples/support-tickets" / cfg["data"]["train"])
    cfg["runs_dir"] = str(tmp_path / "runs")
    cfg["train"].update(max_steps=2, batch_size=2, eval_every=2)
    cfg["data"]["split"] = {"val": 0.01, "test": 0.2, "seed": 0}
    # The forgetting probe (52 questions, base and tuned) was most of this test's time; its pipeline is tested
    # on the tiny model (tests/eval), so here the real model's test prompts alone are scored.
    cfg["eval"].update(limit=4, max_new_tokens=8, batch_size=16, forgetting_probe=False)
    cfg["targets"] = {}
    path = tmp_path / "tunesmith.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = tunesmith("run", str(path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "runs")
    losses = [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and all(0 < x < 10 for x in losses)
    ev = json.loads((run / "eval" / "eval.json").read_text())
    assert ev["n_examples"] == 4 and ev["primary_metric"] == "field_accuracy.queue"


def _method_config(toy_config: Path, method: dict, **train: object) -> Path:
    cfg = yaml.safe_load(toy_config.read_text())
    cfg["method"] = method
    cfg["train"].update(train)
    path = toy_config.with_name(f"{method['name']}.yaml")
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_full_and_prompt_tuning_runs_compare_against_the_same_base(toy_config: Path) -> None:
    runs = toy_config.parent / "runs"
    full = _method_config(toy_config, {"name": "full"}, lr=1e-3)
    proc = tunesmith("run", str(full))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "full: 1,591,456 trainable of 1,591,456 parameters (100%)" in proc.stderr
    (full_run,) = run_dirs(runs)
    for rel in ("model/model.safetensors", "model/config.json", "model/tokenizer.json", "eval/eval.json"):
        assert (full_run / rel).is_file(), rel
    assert not (full_run / "adapter").exists()
    train = json.loads((full_run / "manifest.json").read_text())["train"]
    assert train["output_dir"] == str(full_run / "model")

    prompt = _method_config(toy_config, {"name": "prompt", "num_virtual_tokens": 4}, lr=1e-2)
    proc = tunesmith("run", str(prompt))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "prompt: 128 trainable of 1,591,584 parameters" in proc.stderr
    (prompt_run,) = [r for r in run_dirs(runs) if r != full_run]
    assert (prompt_run / "adapter" / "adapter_model.safetensors").is_file()

    # The base pass of a full fine-tune reloads the original weights; a peft run disables its adapter:
    # the same base model, so the same base predictions.
    def predictions(run: Path) -> list[dict]:
        return [json.loads(x) for x in (run / "eval" / "predictions.jsonl").read_text().splitlines()]

    full_preds, prompt_preds = predictions(full_run), predictions(prompt_run)
    assert [p["base"] for p in full_preds] == [p["base"] for p in prompt_preds]
    assert [p["tuned"] for p in full_preds] != [p["base"] for p in full_preds]

    # Evaluating the full run again from its run directory (model/ + base from source) agrees.
    before = (full_run / "eval" / "predictions.jsonl").read_text()
    proc = tunesmith("eval", str(full_run))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (full_run / "eval" / "predictions.jsonl").read_text() == before


def test_qlora_without_gpu_stops_before_any_model_loads(toy_config: Path) -> None:
    qlora = _method_config(toy_config, {"name": "qlora", "r": 8})
    proc = tunesmith("run", str(qlora))
    assert proc.returncode == 2, proc.stderr
    err = " ".join(proc.stderr.split())
    assert "qlora needs a CUDA GPU and `pip install bitsandbytes`; use method.name: lora on CPU" in err
    assert "pre-flight" not in err.lower() and not (toy_config.parent / "runs").exists()
