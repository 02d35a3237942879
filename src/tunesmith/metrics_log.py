"""metrics.jsonl: one JSON record per optimizer step, written by training and read by resume, the report,
tune's pruner and the UI. The one module that writes and reads it.

Lines are appended and flushed at every step (a live reader sees them) and fsynced at every checkpoint, so
after a crash every step up to the last checkpoint is on disk. A crash mid-write (power loss, a full disk)
can leave the last line torn: readers drop it with a warning; a bad line anywhere else is an error that
names the file and line, since that is not what a crash leaves.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from tunesmith.io import atomic_write_text

FILE_NAME = "metrics.jsonl"


class MetricsFileError(ValueError):
    """metrics.jsonl holds a line that is not a record and is not a torn last line."""


@dataclass(frozen=True)
class MetricsRead:
    records: list[dict[str, Any]]
    torn: str | None  # the torn last line that was dropped, if any


def _parse(path: Path) -> MetricsRead:
    if not path.is_file():
        return MetricsRead([], None)
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    # A complete file ends with a newline, so the last element is empty; anything else there was cut short.
    complete, tail = lines[:-1], lines[-1]
    records: list[dict[str, Any]] = []
    for i, line in enumerate(complete, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(complete) and not tail:
                return MetricsRead(records, line)  # torn, then a newline from a later append
            raise MetricsFileError(
                f"{path}:{i}: not a JSON record ({e.msg}); the file was changed by hand or the disk is "
                f"damaged. Delete the bad line (later steps are logged again on --resume)"
            ) from e
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise MetricsFileError(f"{path}:{i}: a record needs an integer 'step'; delete the line")
        records.append(record)
    return MetricsRead(records, tail if tail.strip() else None)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Every complete record. An incomplete last line is left out: while a run trains, that is a line being
    written; after a crash, a torn one (resume drops it and says so)."""
    return _parse(path).records


def truncate_metrics(path: Path, step: int) -> str | None:
    """Keep the records of steps up to `step` (a resumed run logs the later ones again), and drop a torn last
    line. Returns a warning for the caller to show when a torn line was dropped."""
    if not path.is_file():
        return None
    read = _parse(path)
    keep = [r for r in read.records if r["step"] <= step]
    if len(keep) < len(read.records) or read.torn is not None:  # a fresh or finished log stays as it is
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in keep))
    if read.torn is None:
        return None
    return f"{path}: dropped a torn last line left by the interrupted run ({read.torn[:60]!r})"


class MetricsLog:
    """Appends records: flushed per step, fsynced by `sync()` (called at each checkpoint)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file: IO[str] = path.open("a", encoding="utf-8")

    def append(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def sync(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if not self._file.closed:
            self.sync()
            self._file.close()

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
