"""Cleaning: normalisation, degenerate answers, PII, exact and near duplicates, contamination.

Each step is configurable and counted; every dropped example is kept in the report with its source
line and the reason, so nothing disappears silently.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from tunesmith.config import CleanConfig
from tunesmith.data.formats import Example, Message

_INVISIBLE = re.compile("[\u200b\u200c\u200d\u2060\ufeff\u00ad]")
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_TRAILING = re.compile(r"[ \t]+\n")
_BLANKS = re.compile(r"\n{3,}")
SHOW = 20  # examples of each finding kept in the report


def clean_text(text: str) -> str:
    """Unicode NFC, no invisible/control characters, LF line ends, no trailing spaces, at most one blank line.

    Unlike dedup's normalisation this keeps line structure: answers are often formatted (lists, JSON, code).
    """
    t = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    t = _CONTROL.sub("", _INVISIBLE.sub("", t))
    t = _BLANKS.sub("\n\n", _TRAILING.sub("\n", t))
    return t.strip()


def example_text(ex: Example) -> str:
    """Everything a duplicate check should compare: all turns, raw text, the rejected answer."""
    parts = [m["content"] for m in ex.messages] + [ex.text, ex.rejected]
    return "\n".join(p for p in parts if p)


def degenerate_reason(ex: Example) -> str | None:
    answer = ex.text if ex.kind == "text" else (ex.messages[-1]["content"] if ex.messages else "")
    if not answer.strip():
        return "empty answer after cleaning"
    if ex.kind != "text" and len(ex.messages) >= 2 and answer.strip() == ex.messages[-2]["content"].strip():
        return "answer repeats the prompt"
    words = answer.split()
    if len(words) >= 8 and len(set(words)) / len(words) < 0.2:
        return "answer is one phrase repeated"
    return None


def _map_texts(ex: Example, fn: Any) -> Example:
    msgs: list[Message] = [{**m, "content": fn(m["content"])} for m in ex.messages]
    return replace(
        ex,
        messages=msgs,
        text=fn(ex.text) if ex.text else "",
        rejected=fn(ex.rejected) if ex.rejected else "",
    )


@dataclass
class CleanReport:
    input: int = 0
    normalized_changed: int = 0
    degenerate: int = 0
    pii_examples: int = 0
    pii_found: Counter[str] = field(default_factory=Counter)
    pii_dropped: int = 0
    exact_duplicates: int = 0
    near_duplicates: int = 0
    kept: int = 0
    dropped: list[dict[str, Any]] = field(default_factory=list)  # first SHOW of each reason
    near_pairs: list[dict[str, Any]] = field(default_factory=list)

    def note_drop(self, ex: Example, reason: str, **extra: Any) -> None:
        if sum(1 for d in self.dropped if d["reason"] == reason) < SHOW:
            self.dropped.append({"source": ex.source, "reason": reason, **extra})

    def as_dict(self) -> dict[str, Any]:
        return {
            "input": self.input,
            "normalized_changed": self.normalized_changed,
            "degenerate": self.degenerate,
            "pii_examples": self.pii_examples,
            "pii_found": dict(self.pii_found),
            "pii_dropped": self.pii_dropped,
            "exact_duplicates": self.exact_duplicates,
            "near_duplicates": self.near_duplicates,
            "kept": self.kept,
            "dropped_examples": self.dropped,
            "near_duplicate_pairs": self.near_pairs,
        }


def clean_examples(examples: Sequence[Example], cfg: CleanConfig) -> tuple[list[Example], CleanReport]:
    from tunesmith.data.dedup import NearDupIndex, dedup_key

    report = CleanReport(input=len(examples))
    extra = cfg.pii_patterns or None
    if cfg.pii != "keep":
        from tunesmith.data.pii import compile_extra_patterns, find_pii, redact

        if extra:
            compile_extra_patterns(extra)  # a bad user regex fails here, before any work
    kinds = cfg.pii_kinds or None
    seen: dict[str, str] = {}
    near = NearDupIndex(threshold=cfg.near_dup_threshold) if cfg.near_dedup else None
    kept: list[Example] = []
    for ex in examples:
        if cfg.normalize:
            cleaned = _map_texts(ex, clean_text)
            if cleaned != ex:
                report.normalized_changed += 1
            ex = cleaned
        if cfg.drop_degenerate and (why := degenerate_reason(ex)):
            report.degenerate += 1
            report.note_drop(ex, "degenerate", detail=why)
            continue
        if cfg.pii != "keep":
            found = [m.kind for part in example_text(ex).split("\n") for m in find_pii(part, kinds, extra)]
            if found:
                report.pii_examples += 1
                report.pii_found.update(found)
                if cfg.pii == "drop":
                    report.pii_dropped += 1
                    report.note_drop(ex, "pii", kinds=sorted(set(found)))
                    continue
                ex = _map_texts(ex, lambda t: redact(t, kinds, extra)[0])
        text = example_text(ex)
        if cfg.exact_dedup:
            key = dedup_key(text)
            if key in seen:
                report.exact_duplicates += 1
                report.note_drop(ex, "exact_duplicate", of=seen[key])
                continue
            seen[key] = ex.source
        if near is not None:
            dups = near.add(ex.source, text)
            if dups:
                report.near_duplicates += 1
                report.note_drop(ex, "near_duplicate", of=dups[0])
                if len(report.near_pairs) < SHOW:
                    report.near_pairs.append({"kept": dups[0], "dropped": ex.source})
                continue
        kept.append(ex)
    report.kept = len(kept)
    return kept, report


def contamination(
    train: Sequence[Example], others: dict[str, Sequence[Example]], threshold: float
) -> list[dict[str, Any]]:
    """Train examples that duplicate (exactly or nearly) an example of an eval split, as named pairs."""
    from tunesmith.data.dedup import cross_contamination

    pairs: list[dict[str, Any]] = []
    train_texts = [example_text(e) for e in train]
    for split, exs in others.items():
        if not exs:
            continue
        for ti, oi, jac in cross_contamination(
            train_texts, [example_text(e) for e in exs], threshold=threshold
        ):
            pairs.append(
                {
                    "split": split,
                    "train": train[ti].source,
                    "eval": exs[oi].source,
                    "jaccard": round(jac, 3),
                    "train_index": ti,
                }
            )
    return pairs
