"""Helpers shared by tests (importable because pytest puts tests/ on the path)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

QUEUES = ["billing", "access", "payroll", "mobile"]


def make_label_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """A learnable toy task: a keyword in the ticket decides the label."""
    rng = random.Random(seed)
    words = {"billing": "refund", "access": "password", "payroll": "payslip", "mobile": "iphone"}
    rows = []
    for i in range(n):
        q = QUEUES[i % len(QUEUES)]
        filler = " ".join(rng.choice(["please", "help", "today", "urgent", "thanks", "team"]) for _ in range(3))
        rows.append({"instruction": f"Ticket {i}: my {words[q]} is broken, {filler}", "output": q})
    return rows


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path
