"""Progress and consoles off a terminal: complete plain lines at a bounded rate, tables at full width."""

from __future__ import annotations

import io

import pytest
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from tunesmith.progress import WIDE_COLUMNS, PlainProgress, make_console, stage_progress


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _plain(interval: float = 30.0) -> tuple[PlainProgress, io.StringIO, FakeClock]:
    out, clock = io.StringIO(), FakeClock()
    return PlainProgress(Console(file=out), "train", interval=interval, clock=clock), out, clock


def test_plain_lines_at_the_first_step_every_interval_and_the_last() -> None:
    progress, out, clock = _plain(interval=30.0)
    with progress:
        task = progress.add_task("step", total=100, info="")
        for step in range(1, 101):
            clock.now += 1.0  # one step a second: a line at 1, then each 30 s, and at 100
            progress.update(task, advance=1, info=f"loss {1 / step:.4f}")
    lines = out.getvalue().splitlines()
    assert [ln.split()[2] for ln in lines] == ["1/100", "31/100", "61/100", "91/100", "100/100"]
    assert lines[1] == "train step 31/100 (31%)  loss 0.0323  elapsed 0:00:31  eta 0:01:09"
    assert lines[-1] == "train step 100/100 (100%)  loss 0.0100  elapsed 0:01:40  eta 0:00:00"


def test_plain_progress_shows_where_each_task_ended() -> None:
    """An eval pass's end comes before the next pass's first line; a stopped task (early stopping, an
    error) is shown where it stopped when the block exits; a resumed task's eta counts only new work."""
    progress, out, clock = _plain(interval=30.0)
    with pytest.raises(RuntimeError), progress:
        base = progress.add_task("base", total=10)
        for _ in range(4):
            clock.now += 2.0
            progress.advance(base, 1)
        tuned = progress.add_task("tuned", total=10, completed=5)
        clock.now += 10.0
        progress.advance(tuned, 1)
        clock.now += 10.0
        progress.advance(tuned, 1)
        raise RuntimeError("diverged")
    assert out.getvalue().splitlines() == [
        "train base 1/10 (10%)  elapsed 0:00:02  eta 0:00:18",
        "train base 4/10 (40%)  elapsed 0:00:08  eta 0:00:12",
        "train tuned 6/10 (60%)  elapsed 0:00:10  eta 0:00:40",
        "train tuned 7/10 (70%)  elapsed 0:00:20  eta 0:00:30",
    ]


def _wide_table() -> Table:
    table = Table(title="base vs tuned")
    for name in ("metric", "base", "tuned", "delta (rel) [95% CI]", "field_accuracy", "McNemar p", "status"):
        table.add_column(name)
    table.add_row(
        "field_accuracy", "0.412", "0.838", "+0.426 (+103.4%) [+0.301, +0.551]", "0.9", "1e-05", "PASS"
    )
    return table


def test_console_off_a_terminal_is_wide_so_tables_are_not_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    out = io.StringIO()
    console = make_console(file=out)
    assert not console.is_terminal and console.width == WIDE_COLUMNS
    console.print(_wide_table())
    text = out.getvalue()
    assert "…" not in text
    header = next(ln for ln in text.splitlines() if "metric" in ln)
    assert "delta (rel) [95% CI]" in header and "field_accuracy" in header and "McNemar p" in header
    assert "+0.426 (+103.4%) [+0.301, +0.551]" in text  # the row on one line too


def test_console_width_set_by_columns_or_the_caller_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "120")
    assert make_console(file=io.StringIO()).width == 120
    monkeypatch.delenv("COLUMNS")
    assert make_console(file=io.StringIO(), width=90).width == 90


def test_live_bar_on_a_terminal_plain_lines_off_one(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = Console(file=io.StringIO(), force_terminal=True, force_interactive=True)
    assert isinstance(stage_progress(terminal, "train"), Progress)
    # TERM=dumb: a terminal that rich does not redraw on, so it would keep one cut-off frame as well
    monkeypatch.setenv("TERM", "dumb")
    dumb = Console(file=io.StringIO(), force_terminal=True)
    assert isinstance(stage_progress(dumb, "train"), PlainProgress)
    assert isinstance(stage_progress(Console(file=io.StringIO()), "train"), PlainProgress)
