"""Responses and the feedback on them, in the serve folder's feedback.sqlite; and their export as
training data (corrections -> SFT chat examples, (rejected, corrected) pairs -> DPO preference examples).

Every text is stored PII-redacted with the data-stage rules of the run that answered (its data.clean), so
the serve folder holds no more personal data than the training data would have.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections import Counter
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tunesmith.config import CleanConfig
from tunesmith.io import atomic_write_json, atomic_write_text, sqlite_write

DB_NAME = "feedback.sqlite"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY, created TEXT NOT NULL, endpoint TEXT NOT NULL, model TEXT NOT NULL,
    run_id TEXT NOT NULL, request TEXT NOT NULL, choices TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS feedback (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, response_id TEXT NOT NULL REFERENCES responses(id),
    created TEXT NOT NULL, choice INTEGER NOT NULL, rating TEXT NOT NULL, score INTEGER NOT NULL,
    correction TEXT, comment TEXT
);
"""


def redactor(clean: CleanConfig) -> Any:
    """text -> text with the run's PII rules (`keep`: unchanged; `redact` and `drop`: placeholders)."""
    if clean.pii == "keep":
        return lambda t: t
    from tunesmith.data.pii import redact

    kinds, extra = clean.pii_kinds or None, dict(clean.pii_patterns) or None
    return lambda t: redact(t, kinds, extra)[0]


def score(rating: str | int) -> int:
    """up/down -> +1/-1... on the 1-5 scale: up = 5, down = 1."""
    if rating == "up":
        return 5
    if rating == "down":
        return 1
    return int(rating)


class FeedbackStore:
    def __init__(self, serve_dir: str | Path):
        self.dir = Path(serve_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / DB_NAME
        db = sqlite3.connect(self.path, timeout=30)
        try:
            # WAL: readers (feedback export, /v1/feedback look-ups) never block the writer that records
            # answers, and a crash mid-write leaves the database whole. The mode is stored in the file.
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)  # executescript commits by itself
        finally:
            db.close()

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        return sqlite_write(self.path)

    def record_response(
        self, rid: str, endpoint: str, model: str, run_id: str, request: dict[str, Any], choices: list[str]
    ) -> None:
        now = datetime.now(UTC).isoformat(timespec="seconds")
        with self._tx() as db:
            db.execute(
                "INSERT INTO responses VALUES (?,?,?,?,?,?,?)",
                (
                    rid,
                    now,
                    endpoint,
                    model,
                    run_id,
                    json.dumps(request, ensure_ascii=False),
                    json.dumps(choices),
                ),
            )

    def response(self, rid: str) -> dict[str, Any] | None:
        with self._tx() as db:
            r = db.execute("SELECT * FROM responses WHERE id = ?", (rid,)).fetchone()
        return dict(r) if r else None

    def add_feedback(
        self, rid: str, choice: int, rating: str | int, correction: str | None, comment: str | None
    ) -> int:
        now = datetime.now(UTC).isoformat(timespec="seconds")
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO feedback (response_id, created, choice, rating, score, correction, comment) "
                "VALUES (?,?,?,?,?,?,?)",
                (rid, now, choice, str(rating), score(rating), correction, comment),
            )
            return int(cur.lastrowid or 0)

    def rows(self) -> list[dict[str, Any]]:
        """The latest feedback per (response, choice), joined with its response."""
        with self._tx() as db:
            q = """
            SELECT f.*, r.endpoint, r.model, r.run_id, r.request, r.choices FROM feedback f
            JOIN responses r ON r.id = f.response_id
            WHERE f.seq = (SELECT MAX(seq) FROM feedback g WHERE g.response_id = f.response_id AND g.choice = f.choice)
            ORDER BY f.seq
            """
            return [dict(r) for r in db.execute(q)]


@dataclass
class FeedbackExport:
    out_dir: Path
    sft: int
    dpo: int
    skipped: dict[str, int]
    set_id: str


def export_feedback(
    serve_dir: str | Path,
    out_dir: str | Path,
    include_upvoted: bool = False,
    clean: CleanConfig | None = None,
) -> FeedbackExport:
    """Write sft.jsonl (chat examples), dpo.jsonl ({prompt, chosen, rejected}) and feedback_set.json.

    A correction becomes an SFT example (the conversation + the corrected answer) and, when it differs
    from the model's answer, a DPO pair (chosen: the correction, rejected: the answer). DPO rows hold a
    single prompt string, so multi-turn conversations give SFT examples only. `include_upvoted`: answers
    rated up (or 4-5) without a correction become SFT examples too. Every example then goes through the
    data stage's per-example cleaning (normalise, degenerate answers, PII) with `clean` (default: the data
    stage's defaults), exactly as training data does.
    """
    from tunesmith.data.clean import ExampleCleaner
    from tunesmith.data.formats import RowError, row_to_example
    from tunesmith.data.validate import load_examples

    cleaner = ExampleCleaner(clean or CleanConfig())
    store = FeedbackStore(serve_dir)
    skipped: Counter[str] = Counter()
    sft_rows: list[dict[str, Any]] = []
    dpo_rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    runs: set[str] = set()
    for r in store.rows():
        if r["endpoint"] != "chat":
            skipped["completion_endpoint"] += 1  # raw-text prompts have no chat turns to train on
            continue
        request = json.loads(r["request"])
        answers = json.loads(r["choices"])
        answer = answers[r["choice"]] if r["choice"] < len(answers) else ""
        messages = [{"role": m["role"], "content": m["content"]} for m in request["messages"]]
        correction = (r["correction"] or "").strip()
        if not correction:
            if include_upvoted and r["score"] >= 4 and answer.strip():
                correction = answer
            else:
                skipped["no_correction"] += 1
                continue
        candidates: list[tuple[str, dict[str, Any]]] = [
            ("sft", {"messages": [*messages, {"role": "assistant", "content": correction}]})
        ]
        users = [m for m in messages if m["role"] == "user"]
        if correction != answer.strip() and answer.strip():
            if len(users) == 1 and messages[-1]["role"] == "user":
                system = next((m["content"] for m in messages if m["role"] == "system"), None)
                pair = {"prompt": users[0]["content"], "chosen": correction, "rejected": answer.strip()}
                if system:
                    pair["system"] = system
                candidates.append(("dpo", pair))
            else:
                skipped["dpo_multi_turn"] += 1
        elif not answer.strip():
            skipped["dpo_empty_answer"] += 1
        for kind, row in candidates:
            try:
                ex = row_to_example(row, "auto", f"feedback:{r['seq']}")
            except RowError as e:
                skipped[f"{kind}_{e.kind}"] += 1
                continue
            cleaned = cleaner(ex)
            if cleaned.example is None:
                skipped[f"{kind}_{'degenerate' if cleaned.degenerate else 'pii'}"] += 1
                continue
            ex = cleaned.example
            out = _to_row(ex, kind)
            key = kind + json.dumps(out, sort_keys=True)
            if key in seen:
                skipped[f"{kind}_duplicate"] += 1
                continue
            seen.add(key)
            (sft_rows if kind == "sft" else dpo_rows).append(out)
            runs.add(r["run_id"])

    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    texts = {
        name: "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in rows)
        for name, rows in (("sft.jsonl", sft_rows), ("dpo.jsonl", dpo_rows))
    }
    for name, text in texts.items():
        atomic_write_text(folder / name, text)
    # The same loader as training data: anything it rejects is a bug here, not something to skip.
    for name in texts:
        _, issues = load_examples([str(folder / name)])
        if issues:
            raise ValueError(f"feedback export wrote invalid examples in {name}: {issues[:3]}")
    set_id = "fb-" + hashlib.sha256("".join(texts.values()).encode()).hexdigest()[:12]
    atomic_write_json(
        folder / "feedback_set.json",
        {
            "id": set_id,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "serve_dir": str(Path(serve_dir).resolve()),
            "runs": sorted(runs),
            "sft": len(sft_rows),
            "dpo": len(dpo_rows),
            "skipped": dict(skipped),
            "files": {"sft": "sft.jsonl", "dpo": "dpo.jsonl"},
        },
    )
    return FeedbackExport(folder, len(sft_rows), len(dpo_rows), dict(skipped), set_id)


def _to_row(ex: Any, kind: str) -> dict[str, Any]:
    if kind == "sft":
        return {"messages": [{"role": m["role"], "content": m["content"]} for m in ex.messages]}
    system = next((m["content"] for m in ex.messages if m["role"] == "system"), None)
    user = next(m["content"] for m in ex.messages if m["role"] == "user")
    row = {"prompt": user, "chosen": ex.messages[-1]["content"], "rejected": ex.rejected}
    if system:
        row["system"] = system
    return row
