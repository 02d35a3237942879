"""Bad files get a data issue with the file, the line and a fix: exit 1, never a traceback or an
out-of-memory, and nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from helpers import data_config, make_label_rows, write_jsonl
from tunesmith.data import readers

MiB = 1 << 20


def _prepare(tmp_path: Path, model: Path, train: str) -> tuple[int, str]:
    """`tunesmith data prepare` in this process: exit code and the error text; a traceback fails the test."""
    from typer.testing import CliRunner

    from tunesmith.cli import app

    res = CliRunner().invoke(app, ["data", "prepare", str(data_config(tmp_path, model, train=train))])
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    assert not (tmp_path / "runs").exists()  # nothing written
    return res.exit_code, " ".join(res.stderr.split())


def _good_lines(n: int = 12) -> str:
    return "".join(json.dumps(r) + "\n" for r in make_label_rows(n))


def test_an_endless_jsonl_line_is_too_long_and_read_in_bounded_memory(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(readers, "MAX_ROW_BYTES", 1 * MiB)
    path = tmp_path / "data.jsonl"
    with path.open("w") as f:
        f.write(_good_lines(6))
        f.write('{"instruction": "' + "x" * (24 * MiB) + '", "output": "a"}\n')  # line 7
        f.write(_good_lines(6))
    tracemalloc.start()
    rows = list(readers.iter_rows(path))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 6 * MiB, f"peak {peak / MiB:.1f} MiB for a 24 MiB line"
    bad = [r.issue for r in rows if r.issue is not None]
    assert [(i.line, i.kind) for i in bad] == [(7, "too_long")]
    assert sum(r.issue is None for r in rows) == 12

    code, err = _prepare(tmp_path, tiny_model_dir, "data.jsonl")
    assert code == 1 and "data.jsonl:7: is a line over 1 MiB" in err and "fix:" in err


def test_a_binary_file_without_newlines(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(readers, "MAX_ROW_BYTES", 1 * MiB)
    (tmp_path / "model.jsonl").write_bytes(os.urandom(5 * MiB).replace(b"\n", b"\0"))
    code, err = _prepare(tmp_path, tiny_model_dir, "model.jsonl")
    assert code == 1 and "model.jsonl:1: is a line over 1 MiB" in err


def test_a_huge_csv_cell_is_a_row_issue_not_a_csv_error(tmp_path: Path, tiny_model_dir: Path) -> None:
    # Over csv's default 128 KiB field limit (which raised _csv.Error): now read, then too long in tokens.
    cell = "word " * 27_000  # 135 KB
    (tmp_path / "data.csv").write_text(
        "text,label\n"
        + "".join(f"ticket {i} is about money,billing\n" for i in range(30))
        + f'"{cell}",billing\n'
    )
    code, err = _prepare(tmp_path, tiny_model_dir, "data.csv")
    assert code == 1 and "data.csv:32:" in err and "over train.max_length" in err


def test_deeply_nested_json_is_bad_json_with_its_line(tmp_path: Path, tiny_model_dir: Path) -> None:
    (tmp_path / "data.jsonl").write_text(_good_lines(11) + "[" * 200_000 + "\n")
    code, err = _prepare(tmp_path, tiny_model_dir, "data.jsonl")
    assert code == 1 and "data.jsonl:12: is JSON nested too deeply" in err


def test_a_corrupt_parquet_file(tmp_path: Path, tiny_model_dir: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(make_label_rows(40)), tmp_path / "good.parquet")
    data = (tmp_path / "good.parquet").read_bytes()
    (tmp_path / "data.parquet").write_bytes(data[: len(data) // 2])  # truncated: no footer
    code, err = _prepare(tmp_path, tiny_model_dir, "data.parquet")
    assert code == 1 and "data.parquet: is not a readable Parquet file" in err


def test_a_utf8_bom_does_not_break_the_first_jsonl_line(tmp_path: Path) -> None:
    (tmp_path / "data.jsonl").write_bytes(b"\xef\xbb\xbf" + _good_lines(3).encode())
    rows = list(readers.iter_rows(tmp_path / "data.jsonl"))
    assert [r.issue for r in rows] == [None, None, None] and rows[0].row["output"] == "billing"


def test_repeated_csv_header_names_are_refused(tmp_path: Path, tiny_model_dir: Path) -> None:
    (tmp_path / "data.csv").write_text("text,label,text\n" + "".join(f"a {i},b,c\n" for i in range(12)))
    code, err = _prepare(tmp_path, tiny_model_dir, "data.csv")
    assert code == 1 and "data.csv:1: has repeated column names: 'text' (columns 1, 3)" in err


def test_a_json_array_too_large_to_read_whole(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(readers, "MAX_WHOLE_FILE_BYTES", 1 * MiB)
    (tmp_path / "data.json").write_text(json.dumps(make_label_rows(12) * 2000))
    code, err = _prepare(tmp_path, tiny_model_dir, "data.json")
    assert code == 1 and "data.json: is over 1 MiB, and this format is read whole: use JSONL" in err


def test_the_cli_shows_no_traceback_on_a_bad_file(tmp_path: Path, tiny_model_dir: Path) -> None:
    """The same as a real process: exit 1 and the issue, nothing else on stderr."""
    write_jsonl(tmp_path / "ok.jsonl", make_label_rows(12))
    (tmp_path / "data.parquet").write_bytes(b"PAR1 this is not parquet")
    cfg = data_config(tmp_path, tiny_model_dir, train="data.parquet")
    proc = subprocess.run(
        [sys.executable, "-m", "tunesmith.cli", "data", "check", str(cfg)], capture_output=True, text=True
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "data.parquet: is not a readable Parquet file" in " ".join(proc.stderr.split())
