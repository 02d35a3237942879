"""Which worker runs a trial, and whether it is still alive.

Every trial records its worker (host, process id, the process's start time) and, while it runs, a heartbeat
(a trial user attribute written every HEARTBEAT_S seconds). A RUNNING trial is stale, and marked FAIL by the
next worker that looks, when its worker is on this host and that process is gone (a SIGKILL, a power cut:
seen at once), or, on another host, when its heartbeat is older than STALE_AFTER_S. A stale trial never
counts towards `--trials`; its run directory says `killed`.

Optuna's own heartbeat (RDBStorage only) is experimental; this works the same on every storage: the journal
file, SQLite and a shared PostgreSQL/MySQL server.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0

__all__ = ["HEARTBEAT_S", "STALE_AFTER_S", "Heartbeat", "Worker", "is_alive", "stale_trials"]


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux /proc): with the pid, it names the process
    (a pid is reused by a later process, its start time is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22, counted after the command name (which may hold spaces) closes with ')'.
    return stat.rsplit(")", 1)[1].split()[19]


@dataclass(frozen=True)
class Worker:
    host: str
    pid: int
    started: str | None

    @classmethod
    def this(cls) -> Worker:
        pid = os.getpid()
        return cls(socket.gethostname(), pid, _start_time(pid))

    def as_dict(self) -> dict[str, Any]:
        return {"host": self.host, "pid": self.pid, "started": self.started}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Worker:
        return cls(str(d.get("host", "")), int(d.get("pid", -1)), d.get("started"))

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}"


def _process_alive(w: Worker) -> bool:
    try:
        os.kill(w.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process, so it exists
    return w.started is None or _start_time(w.pid) == w.started


def is_alive(trial: FrozenTrial, now: float | None = None) -> bool:
    """Whether the worker of a RUNNING trial is still at it (see the module docstring)."""
    attrs = trial.user_attrs
    if "worker" not in attrs:
        # Created but not yet claimed (a worker sets it right after `ask`): young trials count as alive.
        started = trial.datetime_start.timestamp() if trial.datetime_start else 0.0
        return (now or time.time()) - started < STALE_AFTER_S
    worker = Worker.from_dict(attrs["worker"])
    if worker.host == socket.gethostname():
        return _process_alive(worker)
    beat = float(attrs.get("heartbeat", 0.0))
    return (now or time.time()) - beat < STALE_AFTER_S


def stale_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Mark FAIL every RUNNING trial whose worker is gone; returns them (as they were)."""
    from optuna.trial import TrialState

    now = time.time()
    stale = [
        t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if not is_alive(t, now)
    ]
    for t in stale:
        # Another worker may fail it at the same moment: the first one wins, the other skips.
        study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
    return stale


class Heartbeat:
    """`with Heartbeat(trial):` writes the trial's `heartbeat` attribute (unix time) now and then every
    `interval` seconds from a thread, until the block ends."""

    def __init__(self, trial: optuna.Trial, interval: float = HEARTBEAT_S):
        self.trial = trial
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tune-heartbeat", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.trial.set_user_attr("heartbeat", time.time())

    def __enter__(self) -> Heartbeat:
        self.trial.set_user_attr("heartbeat", time.time())
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
