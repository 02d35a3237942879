"""Per-example metric scores; aggregation and confidence live in compare.py.

Scores are in [0, 1] except `readability` (a Flesch-Kincaid grade) and `perplexity` (see perplexity.py).
A score is None where a metric does not apply to an example (`facts` on an example without facts, or
`readability` of an empty output); compare() pairs base and tuned on the examples where both have one.
Corpus-level statistics (macro F1, corpus BLEU, perplexity) are computed from the per-example parts in
compare.py and classify.py.
"""

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


def bleu(pred: str, ref: str) -> float:
    """Sentence BLEU (sacrebleu defaults: 13a tokenizer, exp smoothing, effective order) scaled to [0, 1]."""
    import sacrebleu

    return float(sacrebleu.sentence_bleu(pred, [ref]).score) / 100


def chrf(pred: str, ref: str) -> float:
    """Sentence chrF (sacrebleu defaults: character 6-grams, beta 2) scaled to [0, 1]."""
    import sacrebleu

    return float(sacrebleu.sentence_chrf(pred, [ref]).score) / 100


def readability(pred: str) -> float | None:
    """Flesch-Kincaid grade level of the output (textstat); None for an output without words."""
    if not _words(pred):
        return None
    import textstat

    return float(textstat.flesch_kincaid_grade(pred))


def facts_coverage(pred: str, facts: Sequence[str]) -> float | None:
    """Share of the required facts that appear in the output (case-, punctuation- and spacing-insensitive,
    whole words); None for an example without facts."""
    if not facts:
        return None
    text = f" {' '.join(_words(pred))} "
    found = sum(1 for f in facts if f" {' '.join(_words(f))} " in text)
    return found / len(facts)


SIMPLE: dict[str, Callable[[str, str], float]] = {
    "exact_match": exact_match,
    "token_f1": token_f1,
    "rouge_l": rouge_l,
    "accuracy": label_accuracy,
    "json_valid": json_valid,
    "bleu": bleu,
    "chrf": chrf,
}

# Which way is better, for deltas, regressions and the forgetting probe; None: neither (a property).
HIGHER_IS_BETTER: dict[str, bool | None] = {
    "hallucination": False,
    "perplexity": False,
    "held_out_loss": False,  # pretrain's held-out eval
    "readability": None,
}


def higher_is_better(metric: str) -> bool | None:
    return HIGHER_IS_BETTER.get(metric, True)


def score_all(
    metrics: Sequence[str],
    json_fields: Sequence[str],
    preds: Sequence[str],
    refs: Sequence[str],
    sources: Sequence[Sequence[str]] | None = None,
    facts: Sequence[Sequence[str]] | None = None,
) -> dict[str, list[float | None]]:
    """metric name -> per-example scores, in the order of `preds`.

    `sources`: per example, the prompt texts (for `hallucination`, which also reads the reference);
    `facts`: per example, the facts its output must state (for `facts`). Metrics that need a model
    (`perplexity`) or the whole set (`classification`) are computed elsewhere and skipped here.
    """
    from tunesmith.eval.hallucination import hallucinated

    out: dict[str, list[float | None]] = {}
    pairs = list(zip(preds, refs, strict=True))
    for m in metrics:
        if m == "field_accuracy":
            for f in json_fields:
                out[f"field_accuracy.{f}"] = [field_accuracy(p, r, f) for p, r in pairs]
        elif m == "readability":
            out[m] = [readability(p) for p, _ in pairs]
        elif m == "facts":
            fs = facts or [[] for _ in preds]
            out[m] = [facts_coverage(p, f) for p, f in zip(preds, fs, strict=True)]
        elif m == "hallucination":
            srcs = sources or [[] for _ in preds]
            out[m] = [hallucinated(p, [*s, r]) for (p, r), s in zip(pairs, srcs, strict=True)]
        elif m in SIMPLE:
            fn = SIMPLE[m]
            out[m] = [fn(p, r) for p, r in pairs]
    return out
