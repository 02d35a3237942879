"""`tunesmith tune` in this process on the tiny model: stopping at the targets, pruning, the budget, resuming
after a killed worker, and the study's page."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from helpers import cli_here
from tunesmith.registry import list_runs, read_manifest

# Short trials: 4 steps of 8 examples, val loss at steps 2 and 4.
TRAIN = {"max_steps": 4, "eval_every": 2}
FIXED = {
    "train.objective": "sft",
    "method.name": "lora",
    "method.r": 8,
    "method.alpha": 16.0,
    "method.dropout": 0.0,
    "train.batch_size": 4,
    "train.max_steps": 4,
}
# The toy task's answers are labels: as a classifier, a trial's scoring generates nothing (faster).
CLASSIFY = FIXED | {"train.objective": "classify"}


def _study(runs: Path, name: str = "toy") -> dict[str, Any]:
    return dict(json.loads((runs / "tune" / name / "study.json").read_text(encoding="utf-8")))


def _no_traceback(res: Any) -> None:
    assert "Traceback" not in res.stdout + res.stderr, res.stderr[-3000:]


def test_targets_met_on_val_stop_the_search(tune_config: Any, tmp_path: Path) -> None:
    cfg = tune_config(
        {"space": CLASSIFY | {"train.lr": {"low": 1e-3, "high": 1e-2}}},
        train=TRAIN,
        targets={"accuracy": ">= 0"},
    )
    res = cli_here("tune", str(cfg), "--trials", "4")
    assert res.returncode == 0, res.stderr[-3000:]
    _no_traceback(res)
    assert "search ended: targets met on val by trial 0" in res.stderr
    s = _study(tmp_path / "runs")
    assert [t["state"] for t in s["trials"]] == ["complete"]
    assert s["result"]["trial"] == 0 and s["result"]["test"]["targets_met"] is True
    run_dir = Path(s["trials"][0]["run_dir"])
    assert (run_dir / "eval" / "eval.json").is_file()  # the chosen trial, scored on test
    assert (run_dir / "eval_val" / "eval.json").is_file()  # its val scores, apart
    # A normal run in the registry, tagged with its study and trial; `runs ls` shows the tag.
    tag = read_manifest(run_dir)["tune"]
    assert (tag["study"], tag["trial"], tag["state"], tag["chosen"]) == ("toy", 0, "complete", True)
    ls = cli_here("runs", "ls", "--json", "--runs-dir", str(tmp_path / "runs"))
    rows = [json.loads(line) for line in ls.stdout.splitlines()]
    assert [(r["id"], r["tune"]["trial"], r["stage"]) for r in rows] == [(run_dir.name, 0, "eval")]


def test_weak_trial_is_pruned_cleanly(tune_config: Any, tmp_path: Path) -> None:
    tune = {
        "space": FIXED | {"train.lr": {"low": 1e-6, "high": 1e-2}},
        "first_trials": [{"train.lr": 5e-3}, {"train.lr": 1e-6}],  # a learning rate, then hardly any
        "prune_startup_trials": 1,
        "prune_warmup_evals": 0,
    }
    res = cli_here("tune", str(tune_config(tune, train=TRAIN)), "--trials", "2")
    _no_traceback(res)
    assert res.returncode == 0, res.stderr[-3000:]
    s = _study(tmp_path / "runs")
    assert [t["state"] for t in s["trials"]] == ["complete", "pruned"]
    # A trial is scored by its tuned answers alone: no base pass, no unconstrained pass (they decide nothing).
    val_dir = Path(s["trials"][0]["run_dir"]) / "eval_val"
    val = json.loads((val_dir / "eval.json").read_text(encoding="utf-8"))
    assert val["base_scored"] is False and val["metrics"][0]["base"] is None
    assert val["metrics"][0]["tuned"] == s["trials"][0]["value"]
    assert "unconstrained" not in (val_dir / "predictions.jsonl").read_text(encoding="utf-8")
    pruned = s["trials"][1]
    assert list(pruned["intermediate"]) == ["2"] and "pruned at step 2" in pruned["note"]
    run_dir = Path(pruned["run_dir"])
    manifest = read_manifest(run_dir)
    assert manifest["stages"]["train"]["status"] == "pruned" and manifest["tune"]["state"] == "pruned"
    assert not (run_dir / "adapter").exists() and not (run_dir / "eval_val").exists()
    stages = {r.id: r.stage for r in list_runs(tmp_path / "runs")}
    assert stages[run_dir.name] == "pruned"
    assert "trial 1 pruned" in res.stderr


def test_a_trial_that_would_not_fit_the_budget_does_not_start(tune_config: Any, tmp_path: Path) -> None:
    cfg = tune_config({"space": CLASSIFY | {"train.lr": {"low": 1e-3, "high": 1e-2}}}, train=TRAIN)
    first = cli_here("tune", str(cfg), "--trials", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    took = _study(tmp_path / "runs")["trials"][0]["time"]
    trial_s = took["setup_s"] + took["train_s"] + took["eval_s"]
    # Half of what one trial took: the next one would not finish in it.
    res = cli_here("tune", str(cfg), "--resume", "--budget", f"{trial_s / 2:.2f}s", "--trials", "5")
    assert res.returncode == 0, res.stderr[-3000:]
    _no_traceback(res)
    assert "search ended: budget" in res.stderr
    s = _study(tmp_path / "runs")
    assert [t["state"] for t in s["trials"]][0] == "complete"
    later = s["trials"][1:]
    assert all(t["state"] == "not run" and t["run_id"] is None for t in later)
    assert all("needs about" in t["note"] for t in later)
    assert len([p for p in (tmp_path / "runs").iterdir() if p.name.startswith("toy.t")]) == 1


def test_resume_after_a_kill_marks_the_trial_and_does_not_count_it(tune_config: Any, tmp_path: Path) -> None:
    """One trial; then a worker that died mid-trial (its trial RUNNING, its run half-way); then a resume to
    two trials."""
    import optuna

    from tunesmith.tune.study import open_storage

    space = {
        "method.name": "lora",
        "train.batch_size": 4,
        "train.objective": "classify",
        "train.max_steps": 4,
    }
    cfg = tune_config({"space": space, "pruner": "none"}, train=TRAIN)
    first = cli_here("tune", str(cfg), "--trials", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    runs = tmp_path / "runs"
    study = optuna.load_study(study_name="toy", storage=open_storage(None, runs / "tune" / "toy"))
    trial = study.ask()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": dead.pid, "started": "0"})
    done = Path(study.trials[0].user_attrs["run_dir"])
    half = runs / f"toy.t{trial.number}-half"
    shutil.copytree(done, half, ignore=shutil.ignore_patterns("eval", "eval_val", "adapter", "report.html"))
    manifest = json.loads((half / "manifest.json").read_text())
    manifest["id"], manifest["tune"] = (
        half.name,
        {**manifest["tune"], "trial": trial.number, "state": "running"},
    )
    manifest["stages"] = {"data": manifest["stages"]["data"], "train": {"status": "running", "at": "x"}}
    (half / "manifest.json").write_text(json.dumps(manifest))
    trial.set_user_attr("run_dir", str(half))

    res = cli_here("tune", str(cfg), "--resume", "--trials", "2")
    assert res.returncode == 0, res.stderr[-3000:]
    _no_traceback(res)
    assert "trial 1: its worker" in res.stderr and "marked killed" in res.stderr
    s = _study(runs)
    states = [t["state"] for t in s["trials"]]
    assert states[1] == "killed" and len(states) == 3
    assert sum(st in ("complete", "pruned", "failed") for st in states) == 2
    manifest = read_manifest(half)
    assert manifest["tune"]["state"] == "killed" and manifest["stages"]["train"]["status"] == "killed"
    # Every trial that ran is one run in the registry; only chosen trials were scored on test.
    by_trial = {r.manifest["tune"]["trial"]: r for r in list_runs(runs)}
    assert sorted(by_trial) == [0, 1, 2]
    scored = {n for n, r in by_trial.items() if (r.path / "eval" / "eval.json").is_file()}
    assert s["result"]["trial"] in scored and scored <= {0, s["result"]["trial"]}


def test_configuration_problems_exit_2_before_any_trial(tune_config: Any, tmp_path: Path) -> None:
    import optuna

    from tunesmith.tune.study import open_storage

    cfg = tune_config({"space": {"method.name": "ia3", "method.r": [4, 8]}})
    res = cli_here("tune", str(cfg), "--trials", "2")
    assert res.returncode == 2 and "method.r: applies to lora, dora, qlora" in " ".join(res.stderr.split())
    cfg = tune_config({"space": CLASSIFY})
    res = cli_here("tune", str(cfg))
    assert res.returncode == 2 and "give a budget or a number of trials" in res.stderr
    res = cli_here("tune", str(cfg), "--budget", "2x")
    assert res.returncode == 2 and "--budget" in res.stderr
    optuna.create_study(study_name="toy", storage=open_storage(None, tmp_path / "runs" / "tune" / "toy"))
    res = cli_here("tune", str(cfg), "--trials", "2")
    assert res.returncode == 2 and "already exists" in res.stderr and "--resume" in res.stderr
    assert not [p for p in (tmp_path / "runs").iterdir() if p.name.startswith("toy.t")]


def test_repeated_values_are_not_trained_again(tune_config: Any, tmp_path: Path) -> None:
    """A trial that draws the values an earlier trial trained is told that trial's value and trains nothing."""
    fixed = {k: v for k, v in CLASSIFY.items() if k != "train.batch_size"} | {
        "train.lr": 1e-3,
        "train.head_lr": 1e-2,
    }
    tune = {"space": fixed | {"train.batch_size": [2, 4]}, "first_trials": [{"train.batch_size": 4}] * 2}
    res = cli_here("tune", str(tune_config(tune, train=TRAIN)), "--trials", "2")
    assert res.returncode == 0, res.stderr[-3000:]
    _no_traceback(res)
    s = _study(tmp_path / "runs")
    first, again = s["trials"]
    assert first["state"] == again["state"] == "complete" and first["same_as"] is None
    assert again["same_as"] == 0 and again["run_id"] is None
    assert again["params"] == first["params"] and again["value"] == first["value"]
    assert "trial 1 repeats trial 0's values" in res.stderr and "not trained again" in res.stderr
    assert len([p for p in (tmp_path / "runs").iterdir() if p.name.startswith("toy.t")]) == 1


def test_the_builtin_encoder_as_another_base(tune_config: Any, tmp_path: Path) -> None:
    """A label task on a decoder: a trial on the built-in encoder (all-MiniLM-L6-v2, shipped in a wheel)
    trains classify with full fine-tuning, here for the fixed 4 steps."""
    space = {"model": ["TINY", "builtin:all-minilm-l6-v2"], "train.max_steps": 4, "train.batch_size": 4}
    cfg = tune_config({"space": space, "first_trials": [{"model": "builtin:all-minilm-l6-v2"}]}, train=TRAIN)
    text = cfg.read_text(encoding="utf-8")
    model = next(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model:"))
    cfg.write_text(text.replace("TINY", model), encoding="utf-8")
    res = cli_here("tune", str(cfg), "--trials", "1")
    assert res.returncode in (0, 1), res.stderr[-3000:]
    _no_traceback(res)
    s = _study(tmp_path / "runs")
    assert s["trials"][0]["state"] == "complete" and s["trials"][0]["params"] == {
        "model": "builtin:all-minilm-l6-v2"
    }
    config = read_manifest(Path(s["trials"][0]["run_dir"]))["config"]
    assert config["model"] == "builtin:all-minilm-l6-v2" and config["method"]["name"] == "full"
    assert config["train"]["objective"] == "classify" and config["train"]["max_steps"] == 4
