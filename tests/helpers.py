"""Helpers shared by tests (importable because pytest puts tests/ on the path)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

QUEUES = ["billing", "access", "payroll", "mobile"]


FILLER = (
    "please help today urgent thanks team since monday again still cannot our office staff customer account "
    "invoice april march report screen button error message browser laptop morning evening weekend manager "
    "client order export import settings profile company branch"
).split()


def random_words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(FILLER) for _ in range(n))


def make_label_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """A learnable toy task: a keyword in the ticket decides the label; random filler keeps rows distinct."""
    rng = random.Random(seed)
    words = {"billing": "refund", "access": "password", "payroll": "payslip", "mobile": "iphone"}
    rows = []
    for i in range(n):
        q = QUEUES[i % len(QUEUES)]
        rows.append(
            {
                "instruction": f"{random_words(rng, 4)} my {words[q]} is broken {random_words(rng, 5)}",
                "output": q,
            }
        )
    return rows


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def data_config(tmp_path: Path, model: Path, **data: Any) -> Path:
    """A config in `tmp_path` on `train.jsonl` there (label rows routed by a system prompt); `data` overrides."""
    import yaml

    cfg = {
        "name": "t",
        "model": str(model),
        "runs_dir": str(tmp_path / "runs"),
        "data": {"train": "train.jsonl", "system_prompt": "Route.", **data},
        "train": {"max_length": 96},
        "eval": {"metrics": ["accuracy"]},
    }
    p = tmp_path / "tunesmith.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p
