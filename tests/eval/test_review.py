"""Blind review: export -> fill -> import round trip, validation errors, the report shows the scores."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunesmith.cli import app
from tunesmith.eval.review import ReviewError, export_review, import_review


def _rows(sheet: Path) -> list[dict[str, str]]:
    with sheet.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _fill(sheet: Path, key: dict[str, str], tuned: int, base: int, out: Path) -> Path:
    rows = _rows(sheet)
    for r in rows:
        a, b = (tuned, base) if key[r["id"]] == "A" else (base, tuned)
        r["score_A"], r["score_B"] = str(a), str(b)
    rows[0]["comment"] = "tuned one is terse"
    rows[-1]["score_A"] = rows[-1]["score_B"] = ""  # not reviewed: skipped
    with out.open("w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return out


def test_export_fill_import_round_trip(run_copy: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["review", "export", str(run_copy)])
    assert res.exit_code == 0, res.output
    sheet = run_copy / "review" / "sheet.csv"
    rows = _rows(sheet)
    assert list(rows[0]) == [
        "id",
        "input",
        "reference",
        "output_A",
        "output_B",
        "score_A",
        "score_B",
        "comment",
    ]
    key = json.loads((run_copy / "review" / "key.json").read_text())["tuned_is"]
    assert set(key.values()) == {"A", "B"}  # the order is drawn per row
    preds = [json.loads(x) for x in (run_copy / "eval" / "predictions.jsonl").read_text().splitlines()]
    for r in rows:  # the sheet is blind, but the key recovers which output is which
        p = preds[int(r["id"])]
        assert r[f"output_{key[r['id']]}"] == p["tuned"] and r["input"] == p["prompt"]

    filled = _fill(sheet, key, tuned=4, base=2, out=tmp_path / "filled.csv")
    res = runner.invoke(app, ["review", "import", str(run_copy), str(filled)])
    assert res.exit_code == 0, res.output
    rv = json.loads((run_copy / "eval" / "eval.json").read_text())["review"]
    assert rv["n"] == len(rows) - 1
    assert rv["tuned"]["mean"] == 4 and rv["base"]["mean"] == 2 and rv["win_rate"] == 1.0
    assert rv["delta_ci"] == [2.0, 2.0] and rv["comments"][0]["comment"] == "tuned one is terse"
    page = (run_copy / "report.html").read_text()
    assert "id=review" in page and "Human reviewers" in page and "100% / 0% / 0%" in page
    # Evaluating again (greedy: the same outputs) keeps the review that rated them.
    assert runner.invoke(app, ["eval", str(run_copy)]).exit_code == 1  # the toy run's accuracy target fails
    assert json.loads((run_copy / "eval" / "eval.json").read_text())["review"] == rv
    assert "id=review" in (run_copy / "report.html").read_text()


def test_import_names_row_and_column(run_copy: Path, tmp_path: Path) -> None:
    sheet = export_review(run_copy)
    rows = _rows(sheet)
    rows[0]["score_A"], rows[0]["score_B"] = "6", "3"
    rows[1]["score_A"], rows[1]["score_B"] = "4", ""
    rows[2]["score_A"], rows[2]["score_B"] = "good", "2"
    rows[3]["id"] = "999"
    bad = tmp_path / "bad.csv"
    with bad.open("w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(ReviewError) as e:
        import_review(run_copy, bad)
    msg = str(e.value)
    assert "4 problem(s)" in msg
    assert "line 2, column score_A: '6' is not a score from 1 to 5" in msg
    assert "column score_B: empty" in msg
    assert "column score_A: 'good' is not a score" in msg
    assert "column id: '999' is not an id" in msg
    res = CliRunner().invoke(app, ["review", "import", str(run_copy), str(bad)])
    assert res.exit_code == 1
    no_scores = tmp_path / "empty.csv"
    no_scores.write_text("id,output_A\n0,x\n", encoding="utf-8")
    with pytest.raises(ReviewError, match="missing column"):
        import_review(run_copy, no_scores)
