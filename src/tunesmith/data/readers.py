"""Stream rows out of data files, each with the file and line it came from.

JSONL, JSON arrays, CSV/TSV, Parquet, a folder of .txt/.md files (one raw-text document each), and a
Hugging Face `datasets` folder (what `Dataset.save_to_disk` writes; read with `datasets.load_from_disk`,
memory-mapped). Rows are yielded one at a time, so a large file is never held in memory whole (JSON arrays
excepted: the format has no record boundaries to stream on).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tunesmith.data.issues import DataIssue

TEXT_SUFFIXES = (".txt", ".md")
TOO_DEEP = "is JSON nested too deeply to read (hundreds of levels): an example is a flat object"
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
        except RecursionError:
            return RawRow(
                self.file, self.line, issue=DataIssue(self.file, self.line, "", TOO_DEEP, "bad_json")
            )


HF_DATASET_MARKERS = ("state.json", "dataset_info.json")  # what Dataset.save_to_disk writes
HF_DATASET_DICT_MARKER = (
    "dataset_dict.json"  # what DatasetDict.save_to_disk writes, beside one folder per split
)


def is_hf_dataset(path: Path) -> bool:
    return path.is_dir() and all((path / m).is_file() for m in HF_DATASET_MARKERS)


def iter_files(path: Path) -> Iterator[Path]:
    """A file itself, a Hugging Face dataset folder itself, or the supported files of a folder (sorted, so
    runs are reproducible)."""
    if is_hf_dataset(path) or (path / HF_DATASET_DICT_MARKER).is_file():
        yield path
    elif path.is_dir():
        for p in sorted(path.rglob("*")):
            if p.is_file() and p.suffix.lower() in SUPPORTED and not p.name.startswith("."):
                yield p
    else:
        yield path


def iter_rows(path: Path, display: str | None = None, parse: bool = True) -> Iterator[RawRow]:
    """Rows of one file. `parse=False` leaves JSONL lines unparsed (`RawRow.text`), so that the parsing
    can run in a worker process; call `RawRow.parse()` there."""
    name = display or path.name
    try:
        yield from _rows_of(path, name, parse)
    except OSError as e:  # unreadable: permissions, a vanished file, an I/O error
        reason = f"cannot be read: {e.strerror or e}"
        yield RawRow(name, 0, issue=DataIssue(name, 0, "", reason, "bad_file"))


def _rows_of(path: Path, name: str, parse: bool) -> Iterator[RawRow]:
    suffix = path.suffix.lower()
    if path.is_dir():
        yield from _hf_dataset(path, name)
    elif suffix == ".jsonl":
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


# A row larger than this is no training example (16 MiB is millions of tokens, beyond any context
# window): the file is probably not the one meant (a binary file has no line breaks at all). Lines are read
# up to this many bytes at a time, so such a file never sits in memory whole.
MAX_ROW_BYTES = 16 << 20
# Formats read whole (a JSON array has no record boundaries to stream on; a text file is one document).
MAX_WHOLE_FILE_BYTES = 256 << 20
_SKIP_CHUNK = 1 << 20


def _too_long(name: str, line: int, what: str = "line") -> DataIssue:
    return DataIssue(
        name,
        line,
        "",
        f"is a {what} over {MAX_ROW_BYTES >> 20} MiB (no training example is that long; is this the right file?)",
        "too_long",
    )


def _lines(f: IO[bytes], name: str, issues: list[DataIssue]) -> Iterator[tuple[int, str | None]]:
    """(line number, text) of a binary file, each line at most MAX_ROW_BYTES: a longer line, or one that
    is not UTF-8, is recorded in `issues` and comes out as None. A UTF-8 BOM on the first line is dropped."""
    lineno = 0
    while True:
        raw = f.readline(MAX_ROW_BYTES + 1)
        if not raw:
            return
        lineno += 1
        if len(raw) > MAX_ROW_BYTES and not raw.endswith(b"\n"):
            issues.append(_too_long(name, lineno))
            while (rest := f.readline(_SKIP_CHUNK)) and not rest.endswith(b"\n"):
                pass  # the rest of that line, a chunk at a time
            yield lineno, None
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            issues.append(DataIssue(name, lineno, "", f"is not valid UTF-8 (byte {e.start})", "bad_utf8"))
            yield lineno, None
            continue
        yield lineno, text.lstrip("\ufeff") if lineno == 1 else text


def _jsonl(path: Path, name: str, parse: bool = True) -> Iterator[RawRow]:
    issues: list[DataIssue] = []
    with path.open("rb") as f:
        for lineno, text in _lines(f, name, issues):
            while issues:
                yield RawRow(name, issues[0].line, issue=issues.pop(0))
            if text is None or not text.strip():
                continue
            row = RawRow(name, lineno, text=text.rstrip("\r\n"))
            yield row.parse() if parse else row


def _read_whole(path: Path, name: str) -> str | DataIssue:
    if path.stat().st_size > MAX_WHOLE_FILE_BYTES:
        return DataIssue(
            name,
            0,
            "",
            f"is over {MAX_WHOLE_FILE_BYTES >> 20} MiB, and this format is read whole: use JSONL (one object per "
            "line), which is streamed",
            "too_long",
        )
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        return DataIssue(name, line, "", f"is not valid UTF-8 (byte {e.start})", "bad_utf8")


def _json_array(path: Path, name: str) -> Iterator[RawRow]:
    text = _read_whole(path, name)
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
    except RecursionError:
        yield RawRow(name, 1, issue=DataIssue(name, 1, "", TOO_DEEP, "bad_json"))
        return
    if not isinstance(data, list):
        yield RawRow(
            name, 1, issue=DataIssue(name, 1, "", "a .json file must hold an array of examples", "bad_json")
        )
        return
    for i, row in enumerate(data, start=1):
        yield RawRow(name, i, row)


def _delimited(path: Path, name: str, delimiter: str) -> Iterator[RawRow]:
    """CSV/TSV streamed line by line (a quoted cell may span lines); every problem is a row issue."""
    csv.field_size_limit(MAX_ROW_BYTES)
    issues: list[DataIssue] = []
    with path.open("rb") as f:
        lines = (text if text is not None else "\n" for _, text in _lines(f, name, issues))
        reader = csv.reader(lines, delimiter=delimiter)
        header: list[str] | None = None
        while True:
            try:
                record = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                issues.append(DataIssue(name, reader.line_num, "", f"is not valid CSV: {e}", "bad_csv"))
                record = None
            while issues:
                yield RawRow(name, issues[0].line, issue=issues.pop(0))
            if record is None:
                continue
            lineno = reader.line_num
            if header is None:
                header = [h.strip() for h in record]
                if dupes := _duplicate_columns(header):
                    yield RawRow(name, lineno, issue=DataIssue(name, lineno, "", dupes, "bad_csv"))
                    return
                continue
            if not any(cell.strip() for cell in record):
                continue
            if len(record) != len(header):
                yield RawRow(
                    name,
                    lineno,
                    issue=DataIssue(
                        name,
                        lineno,
                        "",
                        f"has {len(record)} columns, the header has {len(header)}",
                        "bad_csv",
                    ),
                )
                continue
            yield RawRow(name, lineno, dict(zip(header, record, strict=True)))


def _duplicate_columns(header: list[str]) -> str:
    """'' or the header's repeated names with their positions (a dict of the row would keep only one)."""
    seen: dict[str, list[int]] = {}
    for i, h in enumerate(header, start=1):
        seen.setdefault(h, []).append(i)
    repeated = {h: pos for h, pos in seen.items() if len(pos) > 1}
    if not repeated:
        return ""
    listed = "; ".join(f"{h!r} (columns {', '.join(map(str, pos))})" for h, pos in repeated.items())
    return f"has repeated column names: {listed}; give every column its own name"


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
    import pyarrow as pa

    n = 0
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
            for row in batch.to_pylist():
                n += 1
                yield RawRow(name, n, row)
    except (pa.ArrowException, OSError) as e:
        # A truncated or corrupt file: what was read is kept, the rest is this issue.
        where = f"after row {n}: " if n else ""
        issue = DataIssue(
            name, n + 1 if n else 0, "", f"is not a readable Parquet file ({where}{e})", "bad_file"
        )
        yield RawRow(name, issue.line, issue=issue)


def _text_file(path: Path, name: str) -> Iterator[RawRow]:
    text = _read_whole(path, name)
    if isinstance(text, DataIssue):
        yield RawRow(name, text.line, issue=text)
        return
    yield RawRow(name, 1, {"text": text})


def _hf_dataset(path: Path, name: str) -> Iterator[RawRow]:
    """Rows of a `datasets` folder; line = row number. A DatasetDict folder is refused with its splits."""
    if (path / HF_DATASET_DICT_MARKER).is_file():
        splits = json.loads((path / HF_DATASET_DICT_MARKER).read_text(encoding="utf-8")).get("splits", [])
        issue = DataIssue(
            name,
            0,
            "",
            f"is a DatasetDict with splits {splits}: point data.train at {name}/{splits[0] if splits else 'train'} "
            "(and data.val / data.test at the other splits)",
            "bad_file",
        )
        yield RawRow(name, 0, issue=issue)
        return
    from datasets import load_from_disk

    try:
        ds = load_from_disk(str(path))
    except Exception as e:  # any failure to open the folder is reported as this file's problem
        yield RawRow(name, 0, issue=DataIssue(name, 0, "", f"cannot be read by datasets: {e}", "bad_file"))
        return
    for i, row in enumerate(ds, start=1):
        yield RawRow(name, i, row)
