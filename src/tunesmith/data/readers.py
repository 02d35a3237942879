"""Stream rows out of data files, each with the file and line it came from.

JSONL, JSON arrays, CSV/TSV, Parquet, and a folder of .txt/.md files (one raw-text document each).
Rows are yielded one at a time, so a large file is never held in memory whole (JSON arrays excepted:
the format has no record boundaries to stream on).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.data.validate import DataIssue

TEXT_SUFFIXES = (".txt", ".md")
SUPPORTED = (".jsonl", ".json", ".csv", ".tsv", ".parquet", *TEXT_SUFFIXES)


@dataclass(frozen=True)
class RawRow:
    file: str
    line: int  # JSONL/CSV: line of the record; JSON array: item number; Parquet: row number; text: 1
    row: Any = None
    issue: DataIssue | None = None
    text: str | None = None  # an unparsed JSONL line (iter_rows(..., parse=False)); see `parse_row`

    def parse(self) -> RawRow:
        """This row with `text` parsed, or with the JSON error as its issue."""
        if self.text is None:
            return self
        try:
            return RawRow(self.file, self.line, json.loads(self.text))
        except json.JSONDecodeError as e:
            return RawRow(
                self.file,
                self.line,
                issue=DataIssue(
                    self.file, self.line, "", f"is not valid JSON: {e.msg} at column {e.colno}", "bad_json"
                ),
            )


def iter_files(path: Path) -> Iterator[Path]:
    """A file itself, or the supported files of a folder (sorted, so runs are reproducible)."""
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            if p.is_file() and p.suffix.lower() in SUPPORTED and not p.name.startswith("."):
                yield p
    else:
        yield path


def iter_rows(path: Path, display: str | None = None, parse: bool = True) -> Iterator[RawRow]:
    """Rows of one file. `parse=False` leaves JSONL lines unparsed (`RawRow.text`), so that the parsing
    can run in a worker process; call `RawRow.parse()` there."""
    name = display or path.name
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        yield from _jsonl(path, name, parse)
    elif suffix == ".json":
        yield from _json_array(path, name)
    elif suffix in (".csv", ".tsv"):
        yield from _delimited(path, name, "\t" if suffix == ".tsv" else ",")
    elif suffix == ".parquet":
        yield from _parquet(path, name)
    elif suffix in TEXT_SUFFIXES:
        yield from _text_file(path, name)
    else:
        yield RawRow(
            name,
            0,
            issue=DataIssue(
                name, 0, "", f"unsupported file type {suffix!r} (use {', '.join(SUPPORTED)})", "bad_file"
            ),
        )


def _jsonl(path: Path, name: str, parse: bool = True) -> Iterator[RawRow]:
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield RawRow(
                    name,
                    lineno,
                    issue=DataIssue(name, lineno, "", f"is not valid UTF-8 (byte {e.start})", "bad_utf8"),
                )
                continue
            if not text.strip():
                continue
            row = RawRow(name, lineno, text=text.rstrip("\r\n"))
            yield row.parse() if parse else row


def _decode(path: Path, name: str) -> str | DataIssue:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        return DataIssue(name, line, "", f"is not valid UTF-8 (byte {e.start})", "bad_utf8")


def _json_array(path: Path, name: str) -> Iterator[RawRow]:
    text = _decode(path, name)
    if isinstance(text, DataIssue):
        yield RawRow(name, text.line, issue=text)
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        yield RawRow(
            name,
            e.lineno,
            issue=DataIssue(
                name, e.lineno, "", f"is not valid JSON: {e.msg} at column {e.colno}", "bad_json"
            ),
        )
        return
    if not isinstance(data, list):
        yield RawRow(
            name, 1, issue=DataIssue(name, 1, "", "a .json file must hold an array of examples", "bad_json")
        )
        return
    for i, row in enumerate(data, start=1):
        yield RawRow(name, i, row)


def _delimited(path: Path, name: str, delimiter: str) -> Iterator[RawRow]:
    text = _decode(path, name)
    if isinstance(text, DataIssue):
        yield RawRow(name, text.line, issue=text)
        return
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header: list[str] | None = None
    for record in reader:
        lineno = reader.line_num
        if header is None:
            header = [h.strip() for h in record]
            continue
        if not any(cell.strip() for cell in record):
            continue
        if len(record) != len(header):
            yield RawRow(
                name,
                lineno,
                issue=DataIssue(
                    name, lineno, "", f"has {len(record)} columns, the header has {len(header)}", "bad_csv"
                ),
            )
            continue
        yield RawRow(name, lineno, dict(zip(header, record, strict=True)))


def _parquet(path: Path, name: str) -> Iterator[RawRow]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        yield RawRow(
            name,
            0,
            issue=DataIssue(name, 0, "", "reading Parquet needs pyarrow: pip install pyarrow", "bad_file"),
        )
        return
    n = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            n += 1
            yield RawRow(name, n, row)


def _text_file(path: Path, name: str) -> Iterator[RawRow]:
    text = _decode(path, name)
    if isinstance(text, DataIssue):
        yield RawRow(name, text.line, issue=text)
        return
    yield RawRow(name, 1, {"text": text})
