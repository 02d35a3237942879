"""Storages (the journal file, an RDB URL) and the liveness of trials' workers, without training."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tunesmith.tune.states import counted, state_of
from tunesmith.tune.study import TuneError, open_storage, redact
from tunesmith.tune.workers import STALE_AFTER_S, Worker, is_alive, stale_trials


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_dead_workers_trials_are_failed_and_do_not_count(tmp_path: Path, kind: str) -> None:
    import optuna

    url = None if kind == "journal" else f"sqlite:///{tmp_path / 'study.db'}"
    storage = open_storage(url, tmp_path / "tune" / "s")
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    me, gone, away = study.ask(), study.ask(), study.ask()
    me.set_user_attr("worker", Worker.this().as_dict())
    gone.set_user_attr("worker", {"host": socket.gethostname(), "pid": dead.pid, "started": "0"})
    # Another machine's worker: alive while its heartbeat is fresh.
    away.set_user_attr("worker", {"host": "elsewhere", "pid": 1, "started": "0"})
    away.set_user_attr("heartbeat", time.time())
    failed = stale_trials(study)
    assert [t.number for t in failed] == [gone.number]
    trials = {t.number: t for t in study.get_trials()}
    assert state_of(trials[gone.number]) == "killed" and not counted(trials[gone.number])
    assert state_of(trials[me.number]) == "running" and state_of(trials[away.number]) == "running"
    assert not is_alive(trials[away.number], now=time.time() + STALE_AFTER_S + 1)
    study.tell(me, 0.5)
    assert counted(study.get_trials()[me.number])
    if kind == "journal":
        assert (tmp_path / "tune" / "s" / "journal.log").is_file()


def test_storage_errors_and_redaction(tmp_path: Path) -> None:
    with pytest.raises(TuneError, match="psycopg2"):
        open_storage("postgresql://tuner:secret@localhost:1/db", tmp_path)
    assert redact("postgresql://tuner:secret@db:5432/t") == "postgresql://tuner:***@db:5432/t"
    journal = open_storage(str(tmp_path / "shared" / "study.log"), tmp_path)
    assert type(journal).__name__ == "JournalStorage" and (tmp_path / "shared" / "study.log").is_file()
