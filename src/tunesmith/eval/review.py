"""Blind human review of base vs tuned outputs.

`export_review(run_dir)` writes `review/sheet.csv` (give it to reviewers) and `review/key.json` (keep it):
each row shows the input, the reference and the two outputs as `output_A` / `output_B`, which of them is the
tuned model being drawn at random per row (seeded), so a reviewer cannot tell. Reviewers fill `score_A` and
`score_B` (integers 1-5) and optionally `comment`; a row left without scores is skipped.

`import_review(run_dir, sheet)` checks every row (errors name the CSV line and column, all reported at once),
un-blinds the scores with the key, and folds a summary into eval/eval.json under `review`: mean score of base
and tuned with 95% bootstrap CIs, the paired delta with its CI, and the tuned model's win / tie / loss rates.
"""

from __future__ import annotations

import csv
import io
import json
import random
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.eval.compare import paired_bootstrap
from tunesmith.eval.result import read_eval, write_eval
from tunesmith.io import atomic_write_json, atomic_write_text

COLUMNS = ["id", "input", "reference", "output_A", "output_B", "score_A", "score_B", "comment"]


class ReviewError(ValueError):
    """Problems in a filled review sheet, all of them, each naming its line and column."""

    def __init__(self, sheet: str, problems: list[str]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{sheet}: {len(problems)} problem(s) in the review sheet:\n{lines}")


def _predictions(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "eval" / "predictions.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; run `tunesmith eval {run_dir}` first")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def export_review(run_dir: Path, seed: int = 0) -> Path:
    """Write review/sheet.csv and review/key.json; return the sheet's path."""
    preds = _predictions(run_dir)
    rng = random.Random(seed)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(COLUMNS)
    key: dict[str, str] = {}
    for i, p in enumerate(preds):
        rid = str(p.get("id", i))
        tuned_is = rng.choice("AB")
        a, b = (p["tuned"], p["base"]) if tuned_is == "A" else (p["base"], p["tuned"])
        w.writerow([rid, p["prompt"], p["reference"], a, b, "", "", ""])
        key[rid] = tuned_is
    out = run_dir / "review"
    atomic_write_text(out / "sheet.csv", buf.getvalue())
    atomic_write_json(out / "key.json", {"tuned_is": key, "seed": seed})
    return out / "sheet.csv"


def _score(value: str, line: int, column: str, problems: list[str]) -> int | None:
    v = value.strip()
    try:
        x = int(float(v)) if v and float(v).is_integer() else None
    except ValueError:
        x = None
    if x is None or not 1 <= x <= 5:
        problems.append(f"line {line}, column {column}: {value!r} is not a score from 1 to 5")
        return None
    return x


def read_sheet(run_dir: Path, sheet: Path) -> list[tuple[str, int, int, str]]:
    """(id, tuned score, base score, comment) per scored row; ReviewError listing every problem."""
    key_path = run_dir / "review" / "key.json"
    if not key_path.is_file():
        raise FileNotFoundError(f"{key_path} does not exist; run `tunesmith review export {run_dir}` first")
    key: dict[str, str] = json.loads(key_path.read_text(encoding="utf-8"))["tuned_is"]
    text = sheet.read_text(encoding="utf-8-sig")  # spreadsheet programs often save a BOM
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    missing = [c for c in ("id", "score_A", "score_B") if c not in header]
    if missing:
        raise ReviewError(str(sheet), [f"line 1 (header): missing column(s) {', '.join(missing)}"])
    problems: list[str] = []
    rows: list[tuple[str, int, int, str]] = []
    seen: set[str] = set()
    for row in reader:
        line = reader.line_num
        rid = (row.get("id") or "").strip()
        if rid not in key:
            problems.append(f"line {line}, column id: {rid!r} is not an id of this run's review sheet")
            continue
        if rid in seen:
            problems.append(f"line {line}, column id: {rid!r} appears twice")
            continue
        seen.add(rid)
        a, b = (row.get("score_A") or "").strip(), (row.get("score_B") or "").strip()
        if not a and not b:
            continue  # not reviewed
        if not a or not b:
            col = "score_A" if not a else "score_B"
            problems.append(f"line {line}, column {col}: empty, but the other output of the row is scored")
            continue
        sa, sb = _score(a, line, "score_A", problems), _score(b, line, "score_B", problems)
        if sa is None or sb is None:
            continue
        tuned, base = (sa, sb) if key[rid] == "A" else (sb, sa)
        rows.append((rid, tuned, base, (row.get("comment") or "").strip()))
    if problems:
        raise ReviewError(str(sheet), problems)
    if not rows:
        raise ReviewError(str(sheet), ["no row has scores: fill score_A and score_B (1-5)"])
    return rows


def summarize(rows: list[tuple[str, int, int, str]], seed: int = 0) -> dict[str, Any]:
    tuned = [float(t) for _, t, _, _ in rows]
    base = [float(b) for _, _, b, _ in rows]
    delta_ci, tuned_ci = paired_bootstrap(base, tuned, seed=seed)
    _, base_ci = paired_bootstrap(tuned, base, seed=seed)
    wins = sum(t > b for t, b in zip(tuned, base, strict=True))
    ties = sum(t == b for t, b in zip(tuned, base, strict=True))
    n = len(rows)
    return {
        "n": n,
        "base": {"mean": float(np.mean(base)), "ci": base_ci},
        "tuned": {"mean": float(np.mean(tuned)), "ci": tuned_ci},
        "delta": float(np.mean(tuned) - np.mean(base)),
        "delta_ci": delta_ci,
        "win_rate": wins / n,
        "tie_rate": ties / n,
        "loss_rate": (n - wins - ties) / n,
        "comments": [{"id": rid, "comment": c} for rid, _, _, c in rows if c],
    }


def import_review(run_dir: Path, sheet: Path) -> dict[str, Any]:
    """Validate a filled sheet and fold its summary into eval/eval.json (key `review`); return the summary."""
    rows = read_sheet(run_dir, sheet)
    summary = summarize(rows)
    write_eval(run_dir / "eval", read_eval(run_dir / "eval").with_sections(review=summary))
    atomic_write_json(
        run_dir / "review" / "scores.json",
        [{"id": rid, "tuned": t, "base": b, "comment": c} for rid, t, b, c in rows],
    )
    return summary
