"""The Review page: the blind A/B sheet of `tunesmith review export`, filled in the browser, and saved the
way `tunesmith review import` saves a filled sheet (the same checks, eval.json's `review`, the report
rebuilt). The filled sheet is kept as RUN/review/sheet-ui.csv, a file the CLI could import too.

A correction (the answer the model should have given) goes, when the reviewer asks for it, to the feedback
store that `tunesmith serve` writes (RUNS_DIR/serve/feedback.sqlite) as feedback on the tuned answer, PII
redacted with the run's rules, so `tunesmith feedback export` turns it into training data.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.config import load_run_config
from tunesmith.eval.report import build_report
from tunesmith.eval.review import COLUMNS, export_review, import_review
from tunesmith.io import atomic_write_text
from tunesmith.serve.feedback import FeedbackStore, redactor

FILLED_NAME = "sheet-ui.csv"


@dataclass(frozen=True)
class ReviewRow:
    id: str
    input: str
    reference: str
    output_a: str
    output_b: str


@dataclass(frozen=True)
class Verdict:
    id: str
    score_a: str
    score_b: str
    comment: str
    correction: str


def review_rows(run_dir: Path) -> list[ReviewRow]:
    """The run's blind sheet, exported (with its seeded key) on first use."""
    sheet = run_dir / "review" / "sheet.csv"
    if not (sheet.is_file() and (run_dir / "review" / "key.json").is_file()):
        sheet = export_review(run_dir)
    reader = csv.DictReader(io.StringIO(sheet.read_text(encoding="utf-8-sig")))
    return [ReviewRow(r["id"], r["input"], r["reference"], r["output_A"], r["output_B"]) for r in reader]


def verdicts_from_form(form: dict[str, list[str]], rows: list[ReviewRow]) -> list[Verdict]:
    def one(name: str) -> str:
        return (form.get(name) or [""])[0].strip()

    return [
        Verdict(
            r.id,
            one(f"score_A-{r.id}"),
            one(f"score_B-{r.id}"),
            one(f"comment-{r.id}"),
            one(f"correction-{r.id}"),
        )
        for r in rows
    ]


def name_rows(problems: list[str], rows: list[ReviewRow]) -> list[str]:
    """The sheet's `line N` (line 1 is the header) as the page's row: `row #ID (sheet line N)`."""

    def row_of(m: re.Match[str]) -> str:
        i = int(m.group(1)) - 2
        return f"row #{rows[i].id} (sheet line {m.group(1)})" if 0 <= i < len(rows) else m.group(0)

    return [re.sub(r"line (\d+)", row_of, p, count=1) for p in problems]


def save_review(run_dir: Path, rows: list[ReviewRow], verdicts: list[Verdict]) -> dict[str, Any]:
    """Write the filled sheet and import it as the CLI does: ReviewError (every problem, by line and
    column of the sheet) when it does not pass; the summary when it does."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(COLUMNS)
    for r, v in zip(rows, verdicts, strict=True):
        w.writerow([r.id, r.input, r.reference, r.output_a, r.output_b, v.score_a, v.score_b, v.comment])
    sheet = run_dir / "review" / FILLED_NAME
    atomic_write_text(sheet, buf.getvalue())
    summary = import_review(run_dir, sheet)
    build_report(run_dir)
    return summary


def offer_corrections(run_dir: Path, serve_dir: Path, rows: list[ReviewRow], verdicts: list[Verdict]) -> int:
    """Each correction as feedback on the tuned model's answer (the key un-blinds which one it was);
    returns how many were stored."""
    import json

    key: dict[str, str] = json.loads((run_dir / "review" / "key.json").read_text(encoding="utf-8"))[
        "tuned_is"
    ]
    cfg = load_run_config(run_dir)
    redact = redactor(cfg.data.clean)
    store: FeedbackStore | None = None
    stored = 0
    for r, v in zip(rows, verdicts, strict=True):
        if not v.correction:
            continue
        store = store or FeedbackStore(serve_dir)
        tuned_answer, tuned_score = (r.output_a, v.score_a) if key[r.id] == "A" else (r.output_b, v.score_b)
        messages = [{"role": "user", "content": redact(r.input)}]
        if cfg.data.system_prompt:
            messages.insert(0, {"role": "system", "content": cfg.data.system_prompt})
        rid = f"review-{run_dir.name}-{r.id}"
        if store.response(rid) is None:
            # endpoint "chat": the feedback export makes SFT and DPO examples of chat turns only.
            store.record_response(
                rid,
                "chat",
                run_dir.name,
                run_dir.name,
                {"messages": messages, "source": "review"},
                [redact(tuned_answer)],
            )
        rating: str | int = (
            int(tuned_score) if tuned_score.isdigit() and 1 <= int(tuned_score) <= 5 else "down"
        )
        store.add_feedback(rid, 0, rating, redact(v.correction), redact(v.comment) if v.comment else None)
        stored += 1
    return stored
