"""Cleaning: normalisation, degenerate answers, PII, exact and near duplicates, contamination.

Each step is configurable and counted; every dropped example is kept in the report with its source
line and the reason, so nothing disappears silently.
"""

from __future__ import annotations

import re
import unicodedata
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

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


def dedup_text(ex: Example) -> str:
    """What duplicate and contamination checks compare: every turn but the system prompt, which is usually
    one boilerplate shared by all examples (it would make unrelated examples look alike), plus raw text and
    the rejected answer."""
    parts = [m["content"] for m in ex.messages if m.get("role") != "system"] + [ex.text, ex.rejected]
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
class Cleaned:
    """What the per-example steps (normalise, degenerate, PII) did to one example."""

    example: Example | None  # None: dropped
    changed: bool = False
    degenerate: str | None = None
    pii: list[str] = field(default_factory=list)


class ExampleCleaner:
    """The per-example cleaning steps: pure, so a worker process can run them on a chunk of rows."""

    def __init__(self, cfg: CleanConfig):
        self.cfg = cfg
        self.extra = dict(cfg.pii_patterns) or None
        self.kinds = cfg.pii_kinds or None
        if cfg.pii != "keep" and self.extra:
            from tunesmith.data.pii import compile_extra_patterns

            compile_extra_patterns(self.extra)  # a bad user regex fails here, before any work

    def __call__(self, ex: Example) -> Cleaned:
        cfg = self.cfg
        out = Cleaned(ex)
        if cfg.normalize:
            cleaned = _map_texts(ex, clean_text)
            out.changed = cleaned != ex
            ex = cleaned
        if cfg.drop_degenerate and (why := degenerate_reason(ex)):
            return Cleaned(None, out.changed, why)
        if cfg.pii != "keep":
            from tunesmith.data.pii import find_pii, redact

            kinds, extra = self.kinds, self.extra
            out.pii = [m.kind for part in example_text(ex).split("\n") for m in find_pii(part, kinds, extra)]
            if out.pii:
                if cfg.pii == "drop":
                    return Cleaned(None, out.changed, None, out.pii)
                ex = _map_texts(ex, lambda t: redact(t, kinds, extra)[0])
        out.example = ex
        return out


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
    _shown: Counter[str] = field(default_factory=Counter, repr=False)

    def note_drop(self, source: str, reason: str, **extra: Any) -> None:
        if self._shown[reason] < SHOW:
            self._shown[reason] += 1
            self.dropped.append({"source": source, "reason": reason, **extra})

    def record(
        self, source: str, changed: bool, degenerate: str | None, pii: Sequence[str], kept: bool
    ) -> None:
        """Count what the per-example steps (`ExampleCleaner`) did to one example."""
        self.input += 1
        self.normalized_changed += changed
        if degenerate:
            self.degenerate += 1
            self.note_drop(source, "degenerate", detail=degenerate)
        if pii:
            self.pii_examples += 1
            self.pii_found.update(pii)
            if not kept:
                self.pii_dropped += 1
                self.note_drop(source, "pii", kinds=sorted(set(pii)))

    def record_duplicate(self, source: str, reason: str, of: str, jaccard: float) -> None:
        if reason == "exact_duplicate":
            self.exact_duplicates += 1
            self.note_drop(source, reason, of=of)
        else:
            self.near_duplicates += 1
            self.note_drop(source, reason, of=of, jaccard=round(jaccard, 3))
            if len(self.near_pairs) < SHOW:
                self.near_pairs.append({"kept": of, "dropped": source, "jaccard": round(jaccard, 3)})

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


class Deduper:
    """Exact and near-duplicate decisions against the examples kept so far, in input order.

    A dropped duplicate is not indexed: an example is dropped only for resembling one that stays, and
    memory grows with the kept examples. Kept examples are numbered 0, 1, ... in order; for each, the
    exact digest and (if it has words) its signature row stay available for the contamination check.
    """

    def __init__(self, cfg: CleanConfig):
        from tunesmith.data.dedup import NearDupIndex

        self.exact = cfg.exact_dedup
        self.near = NearDupIndex(threshold=cfg.near_dup_threshold) if cfg.near_dedup else None
        self.num_perm = self.near.num_perm if self.near else 128
        self.first: dict[bytes, int] = {}  # digest -> first kept example with it
        self.digests = bytearray()  # 16 bytes per kept example
        self.rows = array("q")  # kept example -> signature row, -1 without words
        self.row_to_kept = array("q")
        self.kept = 0
        # Without near-dedup the signatures are still kept (for the contamination check) in a plain array.
        self._sigs = np.empty((0, self.num_perm), dtype=np.uint32)
        self._n_sigs = 0

    def check(self, digest: bytes, signature: np.ndarray | None) -> tuple[str, int, float] | None:
        """None when the example is kept (it becomes kept example `self.kept - 1`); otherwise (reason,
        kept example it duplicates, Jaccard estimate)."""
        if self.exact and (earlier := self.first.get(digest)) is not None:
            return "exact_duplicate", earlier, 1.0
        row = -1
        if self.near is not None and signature is not None:
            found = self.near.match_signature(signature)
            if found:
                best_row, est = found[0]
                return "near_duplicate", self.row_to_kept[best_row], est
            row = self.near.insert_signature(signature)
            self.row_to_kept.append(self.kept)
        elif signature is not None:
            if self._n_sigs == len(self._sigs):
                grown = np.empty((max(1024, 2 * self._n_sigs), self.num_perm), dtype=np.uint32)
                grown[: self._n_sigs] = self._sigs[: self._n_sigs]
                self._sigs = grown
            row = self._n_sigs
            self._sigs[row] = signature
            self._n_sigs += 1
        self.first.setdefault(digest, self.kept)
        self.digests += digest
        self.rows.append(row)
        self.kept += 1
        return None

    def digest(self, kept: int) -> bytes:
        return bytes(self.digests[16 * kept : 16 * kept + 16])

    def signature(self, kept: int) -> np.ndarray | None:
        row = self.rows[kept]
        if row < 0:
            return None
        return self.near.signature(row) if self.near is not None else self._sigs[row]


def clean_examples(examples: Sequence[Example], cfg: CleanConfig) -> tuple[list[Example], CleanReport]:
    """The whole cleaning stage on an in-memory list (the streaming stage in `stream.py` runs the same
    steps chunk by chunk)."""
    from tunesmith.data.dedup import sketch_texts

    cleaner = ExampleCleaner(cfg)
    dedup = Deduper(cfg)
    report = CleanReport()
    kept: list[Example] = []
    for ex in examples:
        c = cleaner(ex)
        report.record(ex.source, c.changed, c.degenerate, c.pii, c.example is not None)
        if c.example is None:
            continue
        digests, sigs, has_words = sketch_texts([dedup_text(c.example)], dedup.num_perm)
        dup = dedup.check(digests[0], sigs[0] if has_words[0] else None)
        if dup is not None:
            reason, of, est = dup
            report.record_duplicate(ex.source, reason, kept[of].source, est)
            continue
        kept.append(c.example)
    report.kept = len(kept)
    return kept, report
