"""Two worker processes on one study (the journal file): the trials split between them, none runs twice, and
after one is killed mid-trial (SIGKILL) and started again, the study goes on and counts right."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from helpers import cli_here
from tunesmith.registry import read_manifest

TRAIN = {"max_steps": 4, "eval_every": 2}


SPACE = {"method.name": "lora", "train.batch_size": 4, "train.objective": "classify", "train.max_steps": 4}


def _trials(folder: Path) -> list[Any]:
    import optuna

    from tunesmith.tune.study import open_storage

    if not (folder / "journal.log").is_file():
        return []
    try:
        return optuna.load_study(study_name="toy", storage=open_storage(None, folder)).get_trials()
    except KeyError:  # not created yet
        return []


def _training(t: Any, pid: int) -> bool:
    """Trial `t` is worker `pid`'s, and its run has begun training (metrics.jsonl is open)."""
    run_dir = t.user_attrs.get("run_dir")
    return bool(
        t.state.name == "RUNNING"
        and t.user_attrs.get("worker", {}).get("pid") == pid
        and run_dir
        and (Path(run_dir) / "metrics.jsonl").is_file()
    )


def _wait(folder: Path, proc: subprocess.Popen[bytes], until: Any, timeout: float = 240) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        trials = _trials(folder)
        if hit := until(trials):
            return hit
        time.sleep(0.2)
    return None


def test_two_workers_split_the_trials_and_survive_a_kill(tune_config: Any, tmp_path: Path) -> None:
    """Worker B (a process) creates the study and trains trial 0; worker A (this process) joins. B is killed
    with SIGKILL in the middle of its second trial; then the study is resumed to five trials."""
    cfg = tune_config({"space": SPACE, "pruner": "none"}, train=TRAIN)
    folder = tmp_path / "runs" / "tune" / "toy"
    log = tmp_path / "b.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two workers on a shared machine: one core each
    out = log.open("wb")
    b = subprocess.Popen(
        [sys.executable, "-m", "tunesmith.cli", "tune", str(cfg), "--resume", "--trials", "4"],
        stdout=out,
        stderr=subprocess.STDOUT,
        env=env,
    )
    victim: list[Any] = []

    def kill_b_mid_second_trial() -> None:
        def second(trials: list[Any]) -> Any:
            mine = [t for t in trials if t.user_attrs.get("worker", {}).get("pid") == b.pid]
            done = [t for t in mine if t.state.name == "COMPLETE"]
            return next((t for t in mine if done and _training(t, b.pid)), None)

        if (t := _wait(folder, b, second)) is not None:
            victim.append(t)
            b.send_signal(signal.SIGKILL)

    try:
        assert _wait(folder, b, lambda ts: any(_training(t, b.pid) for t in ts)), log.read_text()[-3000:]
        killer = threading.Thread(target=kill_b_mid_second_trial)
        killer.start()
        a = cli_here("tune", str(cfg), "--resume", "--trials", "4")  # worker A, joining the study
        killer.join(timeout=240)
        b.wait(timeout=60)
    finally:
        if b.poll() is None:
            b.kill()
            b.wait()
        out.close()
    assert victim, log.read_text()[-3000:]
    assert b.returncode == -signal.SIGKILL and a.returncode == 0, a.stderr[-3000:]
    resumed = cli_here("tune", str(cfg), "--resume", "--trials", "5")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    logs = a.stderr + resumed.stderr
    assert "Traceback" not in logs + log.read_text(), logs[-3000:]
    assert f"trial {victim[0].number}: its worker" in logs and "marked killed" in logs

    s = json.loads((folder / "study.json").read_text(encoding="utf-8"))
    by_state: dict[str, list[dict[str, Any]]] = {}
    for t in s["trials"]:
        by_state.setdefault(t["state"], []).append(t)
    ran = by_state.get("complete", []) + by_state.get("pruned", []) + by_state.get("failed", [])
    assert len(ran) == 5, [(t["number"], t["state"]) for t in s["trials"]]
    assert [t["number"] for t in by_state["killed"]] == [victim[0].number]
    # Split between the workers: B and A both ran trials.
    assert {t["worker"]["pid"] for t in ran} == {b.pid, os.getpid()}
    # None ran twice: no two trials drew the same values (two workers asking at once draw apart), and there
    # is one run directory per trial, tagged with its own trial number.
    runs = [p for p in (tmp_path / "runs").iterdir() if (p / "manifest.json").is_file()]
    assert len({json.dumps(t["params"], sort_keys=True) for t in ran}) == len(ran)
    tags = sorted(read_manifest(p)["tune"]["trial"] for p in runs)
    assert tags == sorted(t["number"] for t in [*ran, *by_state["killed"]])
    killed = read_manifest(Path(by_state["killed"][0]["run_dir"]))
    assert killed["tune"]["state"] == "killed" and killed["stages"]["train"]["status"] == "killed"
    assert s["result"]["trial"] in {t["number"] for t in ran}


def test_a_killed_recipe_trial_is_trained_again_on_resume(tune_config: Any, tmp_path: Path) -> None:
    """The recipe trial (trial 0) is killed while it trains; `--resume` queues its values again (once),
    trains them before the sampler draws anything, and the retry is the recipe the result is weighed
    against."""
    cfg = tune_config({"space": SPACE, "pruner": "none"}, train=TRAIN)
    folder = tmp_path / "runs" / "tune" / "toy"
    log = tmp_path / "w.log"
    with log.open("wb") as out:
        w = subprocess.Popen(
            [sys.executable, "-m", "tunesmith.cli", "tune", str(cfg), "--trials", "2"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            hit = _wait(folder, w, lambda ts: next((t for t in ts if _training(t, w.pid)), None))
            assert hit is not None and hit.number == 0, log.read_text()[-3000:]
            w.send_signal(signal.SIGKILL)
            w.wait(timeout=60)
        finally:
            if w.poll() is None:
                w.kill()
                w.wait()
    res = cli_here("tune", str(cfg), "--resume", "--trials", "1")
    assert res.returncode in (0, 1), res.stderr[-3000:]
    err = " ".join(res.stderr.split())  # the console wraps long lines at its width
    assert "Traceback" not in err
    assert "trial 0: its worker" in err and "its values are queued again" in err, err[-3000:]
    trials = {t.number: t for t in _trials(folder)}
    assert trials[0].state.name == "FAIL" and trials[1].state.name == "COMPLETE"
    assert trials[1].params == trials[0].params
    assert trials[1].user_attrs["retry_of"] == 0 and trials[1].user_attrs["recipe"] is True
    assert len(trials) == 2  # the retry was the one trial; nothing else was drawn
    s = json.loads((folder / "study.json").read_text(encoding="utf-8"))
    assert s["result"]["trial"] == 1
