"""Cleaning: normalisation, degenerate answers, PII, exact and near duplicates, conflicting answers.

Each step is configurable and counted; every dropped example is kept in the report with its source
line and the reason, so nothing disappears silently. The user's own val/test files run the same steps in
report mode by default (`data.clean.eval_files: keep`): findings are counted and listed, no row changes.

Duplicates are judged on two sides of an example, its prompt and its answer (`dedup_parts`): two examples
are duplicates only when both sides match. A side matches exactly (the same words in the same order,
ignoring case, spacing and punctuation) or, when both texts have at least `near_dup_min_words` words, when
their estimated Jaccard reaches `near_dup_threshold`. Short texts are compared exactly only: among
10-word queries a one-word difference is a paraphrase or another intent, not a copy. Near-identical
prompts (estimate >= `conflict_threshold`, any length) whose answers do not match are conflicting answers:
a class boundary or label noise, listed for the user and kept unless `data.clean.conflicts` says otherwise.
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


def dedup_parts(ex: Example) -> tuple[str, str]:
    """(prompt, answer) as the duplicate checks compare them: the prompt is every turn before the final
    answer but the system prompt (usually boilerplate shared by all examples); the answer is the final
    assistant turn, plus the rejected answer of a preference pair. Raw text is all prompt."""
    if ex.kind == "text":
        return ex.text, ""
    turns = [m["content"] for m in ex.messages[:-1] if m.get("role") != "system"]
    answer = ex.messages[-1]["content"] if ex.messages else ""
    return "\n".join(turns), "\n".join(p for p in (answer, ex.rejected) if p)


def degenerate_reason(ex: Example) -> str | None:
    answer = ex.text if ex.kind == "text" else (ex.messages[-1]["content"] if ex.messages else "")
    if not answer.strip():
        return "empty answer after cleaning"
    # A label may be the text itself (CLINC150: the query "yes" has the intent `yes`): not degenerate.
    repeats = len(ex.messages) >= 2 and answer.strip() == ex.messages[-2]["content"].strip()
    if ex.kind != "text" and ex.label is None and repeats:
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
    """The per-example cleaning steps: pure, so a worker process can run them on a chunk of rows.

    `report_only`: find what the steps would change (normalisation, a degenerate answer, PII) and return the
    example as given, for files the user's evaluation depends on."""

    def __init__(self, cfg: CleanConfig, report_only: bool = False):
        self.cfg = cfg
        self.report_only = report_only
        self.extra = dict(cfg.pii_patterns) or None
        self.kinds = cfg.pii_kinds or None
        if cfg.pii != "keep" and self.extra:
            from tunesmith.data.pii import compile_extra_patterns

            compile_extra_patterns(self.extra)  # a bad user regex fails here, before any work

    def __call__(self, ex: Example) -> Cleaned:
        given = ex
        cfg = self.cfg
        out = Cleaned(ex)
        if cfg.normalize:
            cleaned = _map_texts(ex, clean_text)
            out.changed = cleaned != ex
            ex = cleaned
        if cfg.drop_degenerate and (why := degenerate_reason(ex)):
            if self.report_only:
                return Cleaned(given, out.changed, why)
            return Cleaned(None, out.changed, why)
        if cfg.pii != "keep":
            from tunesmith.data.pii import find_pii, redact

            kinds, extra = self.kinds, self.extra
            out.pii = [m.kind for part in example_text(ex).split("\n") for m in find_pii(part, kinds, extra)]
            if out.pii and not self.report_only:
                if cfg.pii == "drop":
                    return Cleaned(None, out.changed, None, out.pii)
                ex = _map_texts(ex, lambda t: redact(t, kinds, extra)[0])
        out.example = given if self.report_only else ex
        return out


def _preview(text: str, limit: int = 160) -> str:
    one_line = " ".join(text.split())
    return one_line if len(one_line) <= limit else one_line[: limit - 1] + "…"


@dataclass
class CleanReport:
    """What cleaning found in one split's files. `mode`: `clean` (findings acted on: dropped, redacted) or
    `report` (the user's own val/test files: counted and listed, every row kept as given)."""

    mode: str = "clean"
    input: int = 0
    normalized_changed: int = 0
    degenerate: int = 0
    pii_examples: int = 0
    pii_found: Counter[str] = field(default_factory=Counter)
    pii_dropped: int = 0
    exact_duplicates: int = 0
    near_duplicates: int = 0
    conflicts: int = 0  # pairs of near-identical prompts with answers that do not match
    conflicts_dropped: int = 0
    kept: int = 0
    dropped: list[dict[str, Any]] = field(default_factory=list)  # first SHOW of each reason
    near_pairs: list[dict[str, Any]] = field(default_factory=list)
    conflict_pairs: list[dict[str, Any]] = field(default_factory=list)
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

    def record_conflict(self, first: str, second: str, jaccard: float, second_parts: tuple[str, str]) -> bool:
        """Count one conflicting pair; True when it is among the listed ones (its first side's texts are
        filled in later by `fill_conflicts`, from the spool)."""
        self.conflicts += 1
        if len(self.conflict_pairs) >= SHOW:
            return False
        prompt, answer = second_parts
        self.conflict_pairs.append(
            {
                "first": first,
                "second": second,
                "jaccard": round(jaccard, 3),
                "second_prompt": _preview(prompt),
                "second_answer": _preview(answer),
            }
        )
        return True

    def fill_conflicts(self, parts_of: dict[str, tuple[str, str]]) -> None:
        for pair in self.conflict_pairs:
            prompt, answer = parts_of.get(pair["first"], ("", ""))
            pair["first_prompt"], pair["first_answer"] = _preview(prompt), _preview(answer)

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "input": self.input,
            "normalized_changed": self.normalized_changed,
            "degenerate": self.degenerate,
            "pii_examples": self.pii_examples,
            "pii_found": dict(self.pii_found),
            "pii_dropped": self.pii_dropped,
            "exact_duplicates": self.exact_duplicates,
            "near_duplicates": self.near_duplicates,
            "conflicts": self.conflicts,
            "conflicts_dropped": self.conflicts_dropped,
            "kept": self.kept,
            "dropped_examples": self.dropped,
            "near_duplicate_pairs": self.near_pairs,
            "conflict_pairs": self.conflict_pairs,
        }


@dataclass
class Sketches:
    """What the duplicate checks need of a chunk of examples, as arrays (cheap to send between processes):
    the whole example's exact digest, and per side (prompt, answer; see `dedup_parts`) the digest of its
    word sequence, its word count and its MinHash signature (all zeros and `has_*` False without words)."""

    digests: list[bytes]
    prompt_exact: list[bytes]
    prompt_digests: list[bytes]
    prompt_sigs: np.ndarray
    has_prompt: np.ndarray
    prompt_words: np.ndarray
    answer_exact: list[bytes]
    answer_digests: list[bytes]
    answer_sigs: np.ndarray
    has_answer: np.ndarray
    answer_words: np.ndarray

    def __len__(self) -> int:
        return len(self.digests)

    def item(self, k: int) -> Sketch:
        return Sketch(
            self.digests[k],
            self.prompt_exact[k],
            self.prompt_digests[k],
            self.prompt_sigs[k] if self.has_prompt[k] else None,
            int(self.prompt_words[k]),
            self.answer_exact[k],
            self.answer_digests[k],
            self.answer_sigs[k] if self.has_answer[k] else None,
            int(self.answer_words[k]),
        )


@dataclass(frozen=True)
class Sketch:
    """One example's row of `Sketches`. Per side, `*_exact` is the text's exact key (case, Unicode form and
    spacing aside) and `*_digest` its word sequence's (punctuation aside too)."""

    digest: bytes
    prompt_exact: bytes
    prompt_digest: bytes
    prompt_sig: np.ndarray | None
    prompt_words: int
    answer_exact: bytes
    answer_digest: bytes
    answer_sig: np.ndarray | None
    answer_words: int


def sketch_examples(examples: Sequence[Example], num_perm: int) -> Sketches:
    import hashlib

    from tunesmith.data.dedup import sketch_sides

    parts = [dedup_parts(e) for e in examples]
    prompts = sketch_sides([p for p, _ in parts], num_perm)
    answers = sketch_sides([a for _, a in parts], num_perm)
    # The whole example's exact key: both sides' exact keys, so "Tell me my balance." and "tell me my
    # balance" with the same label are one example.
    digests = [
        hashlib.blake2b(p + a, digest_size=16).digest() for p, a in zip(prompts[0], answers[0], strict=True)
    ]
    return Sketches(digests, *prompts, *answers)


@dataclass(frozen=True)
class Verdict:
    """The duplicate checks' decision on one example against those kept before it."""

    duplicate: tuple[str, int, float] | None  # (reason, kept example it duplicates, Jaccard estimate)
    conflicts: list[tuple[int, float]]  # kept examples with a near-identical prompt and another answer


class Deduper:
    """Exact and near-duplicate decisions, and conflicting answers, against the examples kept so far, in
    input order (see the module docstring for what matches).

    A dropped duplicate is not indexed: an example is dropped only for resembling one that stays, and
    memory grows with the kept examples. Kept examples are numbered 0, 1, ... in order; for each, the
    exact digest, its sides' digests and word counts and the signatures stay available for the
    contamination check. `keep_all` (report mode): duplicates are found and reported, and kept too.
    """

    def __init__(self, cfg: CleanConfig, keep_all: bool = False):
        from tunesmith.data.dedup import NearDupIndex

        self.exact = cfg.exact_dedup
        self.near_dedup = cfg.near_dedup
        self.keep_all = keep_all
        self.rule = SideRule(cfg.near_dup_threshold, cfg.near_dup_min_words)
        self.conflict_threshold = cfg.conflict_threshold
        # One index over the prompts, banded for the lower of the two thresholds it serves.
        self.near = NearDupIndex(threshold=min(cfg.near_dup_threshold, cfg.conflict_threshold))
        self.num_perm = self.near.num_perm
        self.first: dict[bytes, int] = {}  # digest -> first kept example with it
        self.by_prompt: dict[bytes, list[int]] = {}  # prompt word-sequence digest -> kept examples
        self.digests = bytearray()  # 16 bytes per kept example
        self.prompt_digests = bytearray()
        self.answer_digests = bytearray()
        self.exact_sides = bytearray()  # 32 bytes per kept example: the prompt's and the answer's exact keys
        self.prompt_words = array("i")
        self.answer_words = array("i")
        self.rows = array("q")  # kept example -> prompt signature row, -1 without words
        self.row_to_kept = array("q")
        self.answer_rows = array("q")  # kept example -> row in _answer_sigs, -1 when not kept (short)
        self._answer_sigs = np.empty((0, self.num_perm), dtype=np.uint32)
        self._n_answers = 0
        self.kept = 0

    def check(self, s: Sketch) -> Verdict:
        """The verdict on one example; unless it is a dropped duplicate it becomes kept example
        `self.kept - 1`."""
        dup: tuple[str, int, float] | None = None
        if self.exact and (earlier := self.first.get(s.digest)) is not None:
            dup = ("exact_duplicate", earlier, 1.0)
        conflicts: list[tuple[int, float]] = []
        if dup is None:
            for k, est in self._candidates(s):
                kept = self.sketch(k)
                # Dropping needs the strict reading (punctuation counts: `a+b` is not `a-b`); a conflict is
                # reported on the loose one (`P2` and `P2.` are one answer).
                if self.rule.sides_match(s, kept, est, loose=False):
                    if self.near_dedup and dup is None:
                        dup = ("near_duplicate", k, est)
                elif not self.rule.answers_match(s, kept, loose=True) and (
                    s.prompt_digest == kept.prompt_digest or est >= self.conflict_threshold
                ):
                    conflicts.append((k, est))
        if dup is not None and not self.keep_all:
            return Verdict(dup, [])
        self._keep(s)
        return Verdict(dup, conflicts)

    def _candidates(self, s: Sketch) -> list[tuple[int, float]]:
        """Kept examples whose prompt is the same word sequence (1.0) or whose estimate reaches the index
        threshold, best first."""
        found = dict.fromkeys(self.by_prompt.get(s.prompt_digest, ()), 1.0)
        if s.prompt_sig is not None:
            for row, est in self.near.match_signature(s.prompt_sig):
                found.setdefault(self.row_to_kept[row], est)
        return sorted(found.items(), key=lambda kv: (-kv[1], kv[0]))

    def _keep(self, s: Sketch) -> None:
        row = -1
        if s.prompt_sig is not None:
            row = self.near.insert_signature(s.prompt_sig)
            self.row_to_kept.append(self.kept)
        answer_row = -1
        if s.answer_sig is not None and s.answer_words >= self.rule.min_words:
            if self._n_answers == len(self._answer_sigs):
                grown = np.empty((max(1024, 2 * self._n_answers), self.num_perm), dtype=np.uint32)
                grown[: self._n_answers] = self._answer_sigs[: self._n_answers]
                self._answer_sigs = grown
            answer_row = self._n_answers
            self._answer_sigs[answer_row] = s.answer_sig
            self._n_answers += 1
        self.first.setdefault(s.digest, self.kept)
        self.by_prompt.setdefault(s.prompt_digest, []).append(self.kept)
        self.digests += s.digest
        self.prompt_digests += s.prompt_digest
        self.answer_digests += s.answer_digest
        self.exact_sides += s.prompt_exact + s.answer_exact
        self.prompt_words.append(s.prompt_words)
        self.answer_words.append(s.answer_words)
        self.rows.append(row)
        self.answer_rows.append(answer_row)
        self.kept += 1

    def digest(self, kept: int) -> bytes:
        return bytes(self.digests[16 * kept : 16 * kept + 16])

    def prompt_digest(self, kept: int) -> bytes:
        return bytes(self.prompt_digests[16 * kept : 16 * kept + 16])

    def answer_digest(self, kept: int) -> bytes:
        return bytes(self.answer_digests[16 * kept : 16 * kept + 16])

    def signature(self, kept: int) -> np.ndarray | None:
        """The kept example's prompt signature."""
        row = self.rows[kept]
        return None if row < 0 else self.near.signature(row)

    def sketch(self, kept: int) -> Sketch:
        """What was kept of kept example `kept`, in the form `check` takes (for the contamination check)."""
        row = self.answer_rows[kept]
        sides = bytes(self.exact_sides[32 * kept : 32 * kept + 32])
        return Sketch(
            self.digest(kept),
            sides[:16],
            self.prompt_digest(kept),
            self.signature(kept),
            self.prompt_words[kept],
            sides[16:],
            self.answer_digest(kept),
            None if row < 0 else self._answer_sigs[row],
            self.answer_words[kept],
        )


@dataclass(frozen=True)
class SideRule:
    """When one side (prompt or answer) of two examples is near-identical beyond an exact match: both texts
    have at least `min_words` words and their estimated Jaccard reaches `threshold`."""

    threshold: float
    min_words: int

    def near(self, estimate: float, words_a: int, words_b: int) -> bool:
        return estimate >= self.threshold and min(words_a, words_b) >= self.min_words

    def prompts_match(self, a: Sketch, b: Sketch, estimate: float, loose: bool) -> bool:
        """`estimate`: the prompts' Jaccard estimate (from the index). `loose`: an exact match ignores
        punctuation (word sequences), else only case, Unicode form and spacing."""
        same = a.prompt_digest == b.prompt_digest if loose else a.prompt_exact == b.prompt_exact
        return same or self.near(estimate, a.prompt_words, b.prompt_words)

    def answers_match(self, a: Sketch, b: Sketch, loose: bool) -> bool:
        if (a.answer_digest == b.answer_digest) if loose else (a.answer_exact == b.answer_exact):
            return True
        if a.answer_sig is None or b.answer_sig is None:
            return False
        estimate = float(np.count_nonzero(a.answer_sig == b.answer_sig)) / len(a.answer_sig)
        return self.near(estimate, a.answer_words, b.answer_words)

    def sides_match(self, a: Sketch, b: Sketch, prompt_estimate: float, loose: bool) -> bool:
        """Both sides match: a duplicate (strict) or a contamination (loose: a held-out item copied into the
        training data with other punctuation still leaks)."""
        return self.prompts_match(a, b, prompt_estimate, loose) and self.answers_match(a, b, loose)
