"""Per-example metric scores (each in [0, 1]); aggregation and confidence live in compare.py."""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")


def normalize(text: str) -> str:
    return " ".join(text.strip().split())


def _words(text: str) -> list[str]:
    return _PUNCT.sub(" ", text.lower()).split()


def exact_match(pred: str, ref: str) -> float:
    return float(normalize(pred) == normalize(ref))


def token_f1(pred: str, ref: str) -> float:
    """SQuAD-style bag-of-words F1 on lower-cased, punctuation-free words."""
    p, r = _words(pred), _words(ref)
    if not p or not r:
        return float(p == r)
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


@lru_cache(maxsize=1)
def _rouge() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(pred: str, ref: str) -> float:
    return float(_rouge().score(ref, pred)["rougeL"].fmeasure)


def label_accuracy(pred: str, ref: str) -> float:
    """Outputs are labels: case-insensitive match after trimming whitespace and trailing punctuation."""
    return float(normalize(pred).lower().rstrip(".") == normalize(ref).lower().rstrip("."))


def parse_json_object(text: str) -> dict[str, Any] | None:
    """The JSON object in a model output, tolerating a ```json fence; None when there is none."""
    t = text.strip()
    if t.startswith("```"):
        t = t.strip("`").removeprefix("json").strip()
    try:
        obj = json.loads(t)
    except json.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def json_valid(pred: str, ref: str) -> float:
    return float(parse_json_object(pred) is not None)


def field_accuracy(pred: str, ref: str, field: str) -> float:
    p, r = parse_json_object(pred), parse_json_object(ref)
    if r is None or field not in r:
        raise ValueError(f"reference is not a JSON object with field {field!r}: {ref[:80]!r}")
    if p is None or field not in p:
        return 0.0
    return float(normalize(str(p[field])).lower() == normalize(str(r[field])).lower())


SIMPLE: dict[str, Callable[[str, str], float]] = {
    "exact_match": exact_match,
    "token_f1": token_f1,
    "rouge_l": rouge_l,
    "accuracy": label_accuracy,
    "json_valid": json_valid,
}


def score_all(
    metrics: Sequence[str], json_fields: Sequence[str], preds: Sequence[str], refs: Sequence[str]
) -> dict[str, list[float]]:
    """metric name -> per-example scores, in the order of `preds`."""
    out: dict[str, list[float]] = {}
    for m in metrics:
        if m == "field_accuracy":
            for f in json_fields:
                out[f"field_accuracy.{f}"] = [
                    field_accuracy(p, r, f) for p, r in zip(preds, refs, strict=True)
                ]
        else:
            fn = SIMPLE[m]
            out[m] = [fn(p, r) for p, r in zip(preds, refs, strict=True)]
    return out
