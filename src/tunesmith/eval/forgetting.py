"""Forgetting probe: did fine-tuning damage what the base model knew? Two checks, base vs tuned, shipped
with the package (written for tunesmith, not taken from a benchmark):

* `probe/general_qa.jsonl`: 52 general-knowledge questions with short exact answers (and aliases); an
  answer is correct when one of its aliases appears in the output as whole words (case-insensitive).
* `probe/general_text.txt`: five paragraphs of plain encyclopedic English; perplexity under each model.

The tuned model has *degraded* when its probe accuracy is more than `eval.forgetting_margin` (absolute)
below the base model's, or when its perplexity on the text is more than `forgetting_margin` (relative)
above the base model's. Degradation is a warning (console, eval.json, report), not a failed target.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

from tunesmith.data.formats import Message
from tunesmith.eval.metrics import _words

PROBE_SYSTEM = "Answer the question in a few words."
PROBE_MAX_NEW_TOKENS = 16


@lru_cache(maxsize=1)
def probe_items() -> list[dict[str, Any]]:
    text = resources.files("tunesmith.eval").joinpath("probe/general_qa.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@lru_cache(maxsize=1)
def probe_text() -> str:
    return resources.files("tunesmith.eval").joinpath("probe/general_text.txt").read_text(encoding="utf-8")


def probe_messages() -> list[list[Message]]:
    return [
        [{"role": "system", "content": PROBE_SYSTEM}, {"role": "user", "content": it["question"]}]
        for it in probe_items()
    ]


def answer_correct(output: str, answers: list[str]) -> float:
    text = f" {' '.join(_words(output))} "
    return float(any(f" {' '.join(_words(a))} " in text for a in answers))


def summarize(
    base_outputs: list[str], tuned_outputs: list[str], base_ppl: float, tuned_ppl: float, margin: float
) -> dict[str, Any]:
    items = probe_items()
    b = [answer_correct(o, it["answers"]) for o, it in zip(base_outputs, items, strict=True)]
    t = [answer_correct(o, it["answers"]) for o, it in zip(tuned_outputs, items, strict=True)]
    b_acc, t_acc = sum(b) / len(b), sum(t) / len(t)
    rel = tuned_ppl / base_ppl - 1 if base_ppl else float("nan")
    warnings = []
    if b_acc - t_acc > margin:
        warnings.append(
            f"forgetting: general-knowledge probe accuracy fell from {b_acc:.3f} to {t_acc:.3f} "
            f"({t_acc - b_acc:+.3f}; margin {margin:g})"
        )
    if rel > margin:
        warnings.append(
            f"forgetting: perplexity on general text rose from {base_ppl:.2f} to {tuned_ppl:.2f} "
            f"({100 * rel:+.1f}%; margin {100 * margin:g}%)"
        )
    return {
        "qa": {"n": len(items), "base": b_acc, "tuned": t_acc, "delta": t_acc - b_acc},
        "text_perplexity": {"base": base_ppl, "tuned": tuned_ppl, "rel_change": rel},
        "margin": margin,
        "degraded": bool(warnings),
        "warnings": warnings,
        "items": [
            {
                "question": it["question"],
                "answers": it["answers"],
                "base": bo,
                "tuned": to,
                "base_ok": bs,
                "tuned_ok": ts,
            }
            for it, bo, to, bs, ts in zip(items, base_outputs, tuned_outputs, b, t, strict=True)
        ],
    }
