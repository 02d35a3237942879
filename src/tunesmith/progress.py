"""Consoles and progress that read as well in a log file as on a terminal (bottom layer: rich only).

Off a terminal (`> run.log`, nohup, CI, a cluster job) rich cannot redraw a bar: the log kept only its
last frame, cut to 80 columns. There, progress is one complete line every `PLAIN_INTERVAL_S` seconds
instead, and tables get the width they need.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import Progress, ProgressColumn, TaskID

__all__ = [
    "PLAIN_INTERVAL_S",
    "WIDE_COLUMNS",
    "PlainProgress",
    "StageProgress",
    "make_console",
    "stage_progress",
]

# A line every 30 s is ~120 lines an hour: a day-long run's log stays a few thousand lines, and a stalled
# step shows within a minute. Time-based, not every N steps, so the same holds at 0.1 s or 60 s a step.
PLAIN_INTERVAL_S = 30.0

# Off a terminal rich falls back to 80 columns and wraps or cuts tables (`field_accura…`). Tables take only
# the width their content needs, so a wide limit costs nothing; 200 fits the eval table with many metrics.
WIDE_COLUMNS = 200


def make_console(stderr: bool = True, **kwargs: Any) -> Console:
    """A rich Console for CLI output (stderr by default); off a terminal, `WIDE_COLUMNS` wide unless the
    caller or a COLUMNS variable sets the width (rich reads COLUMNS itself)."""
    console = Console(stderr=stderr, **kwargs)
    explicit = "width" in kwargs or os.environ.get("COLUMNS", "").isdigit()
    # Jupyter is not a terminal either, but rich gives it a width of its own.
    if not (console.is_terminal or console.is_jupyter or explicit):
        console.width = WIDE_COLUMNS
    return console


def _clock_text(seconds: float | None) -> str:
    """0:12:04, as rich's elapsed and remaining columns print it; unknown as rich shows it."""
    return "-:--:--" if seconds is None else str(timedelta(seconds=max(0, int(seconds))))


@dataclass
class _Task:
    description: str
    total: float | None
    completed: float
    fields: dict[str, Any]
    started: float
    start_completed: float  # a resumed run starts part-way: the rate counts this process's work only
    printed_at: float | None = None
    printed_completed: float | None = None

    def line(self, stage: str, now: float) -> str:
        done, total = int(self.completed), self.total
        percent = 100 if not total else int(100 * self.completed / total)
        parts = [f"{stage} {self.description} {done}/{'?' if total is None else int(total)} ({percent}%)"]
        if self.fields.get("info"):
            parts.append(str(self.fields["info"]))
        elapsed = now - self.started
        work = self.completed - self.start_completed
        eta = None if total is None or work <= 0 else (total - self.completed) * elapsed / work
        parts += [f"elapsed {_clock_text(elapsed)}", f"eta {_clock_text(eta)}"]
        return "  ".join(parts)


@dataclass
class PlainProgress:
    """The part of rich's Progress the stages use (add_task, update, advance, `with`), as plain lines: a
    task's line at its first advance, then at most one per `interval` seconds, and at its end (complete,
    or where it stopped: early stopping, an error) so the log always shows the last state."""

    console: Console
    stage: str
    interval: float = field(default_factory=lambda: PLAIN_INTERVAL_S)  # read late: tests shorten it
    clock: Callable[[], float] = time.monotonic
    _tasks: list[_Task] = field(default_factory=list, init=False, repr=False)

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        self._flush()

    def add_task(
        self, description: str, total: float | None = 100.0, completed: int = 0, **fields: Any
    ) -> TaskID:
        self._flush()  # the previous task's end comes before the next task's first line
        now = self.clock()
        self._tasks.append(_Task(description, total, completed, dict(fields), now, completed))
        return TaskID(len(self._tasks) - 1)

    def update(
        self,
        task_id: TaskID,
        *,
        total: float | None = None,
        completed: float | None = None,
        advance: float | None = None,
        **fields: Any,
    ) -> None:
        task = self._tasks[task_id]
        if total is not None:
            task.total = total
        if completed is not None:
            task.completed = completed
        if advance is not None:
            task.completed += advance
        task.fields.update(fields)
        now = self.clock()
        if task.completed == task.printed_completed:
            return
        finished = task.total is not None and task.completed >= task.total
        if task.printed_at is None or finished or now - task.printed_at >= self.interval:
            self._print(task, now)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def _print(self, task: _Task, now: float) -> None:
        # `out`, not `print`: no markup, highlighting or wrapping, whatever the console's width.
        self.console.out(task.line(self.stage, now), highlight=False)
        task.printed_at, task.printed_completed = now, task.completed

    def _flush(self) -> None:
        for task in self._tasks:
            if task.completed != task.printed_completed:
                self._print(task, self.clock())


StageProgress = Progress | PlainProgress


def stage_progress(console: Console, stage: str, *columns: str | ProgressColumn) -> StageProgress:
    """rich's live bar of `columns` where it can redraw; elsewhere `PlainProgress` lines headed `stage`
    (`train step 165/1000 (16%)  loss ...  elapsed 0:12:04  eta 1:01:10`).

    `is_interactive` is `is_terminal` less dumb terminals (TERM=dumb, e.g. an editor's shell): rich does not
    redraw there either and would leave the same one-frame bar. Jupyter draws rich's bar as a widget."""
    if console.is_interactive or console.is_jupyter:
        return Progress(*columns, console=console)
    return PlainProgress(console, stage)
