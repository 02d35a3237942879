"""Hallucination rate: the share of outputs that state a checkable fact found in neither the input nor the
reference.

Definition (what the `hallucination` metric measures, per example, 1 = hallucinated, 0 = not):

1. **Checkable facts** are spans of the output of these kinds, found in this order (a character belongs to
   at most one span; earlier kinds win):

   * ``quote``: text in straight or curly quotes, 1-60 characters (``"P2"``, ``'billing'``, ``“Gold plan”``);
   * ``url`` / ``email``;
   * ``date``: ISO ``2024-03-12``, ``12/03/2024``, ``12 March 2024``, ``March 12, 2024``, ``March 2024``,
     ``12 March`` (month names and their 3-letter abbreviations);
   * ``amount``: a number with a currency symbol or code (``$1,200.50``, ``€30``, ``45 USD``, ``£46.55``);
   * ``identifier``: a token mixing letters and digits, optionally with ``-``/``_``/``/`` inside
     (``INV-2024-0042``, ``AB12CD``, ``P2``); an ordinal or a number with a unit suffix (``3rd``,
     ``24h``, ``5pm``) is read as a number;
   * ``number``: any other number (``16``, ``3.5``, ``1,200``, ``15%``), except a list marker at the start of
     a line (``1.``, ``2)``);
   * ``entity``: a run of capitalised words on one line, which may contain ``of``/``de``/``van``/``von``/
     ``the``/``and``/``&`` (``Wren Castellane``, ``Bank of England``); a possessive ``'s`` is dropped.
     Common words (scikit-learn's English stop words plus ``COMMON_OPENERS``: "Please", "Thanks",
     "Unfortunately", ...) split a run and are not part of any entity, capitalised or not. A single
     capitalised word that opens a sentence (or a line, or follows a list marker) is not an entity, nor are
     ``I``, month and weekday names or all-capital acronyms of 2-5 letters (``PDF``, ``CSV``) on their own.

2. A span is **supported** when it occurs in the *source*: the prompt messages (system and user turns) and
   the reference answer together. Text matches case-insensitively, as whole words, on whitespace-normalised
   text. Numbers, amounts and percentages match by value against the numbers and amounts the source states
   (``1,200`` = ``1200`` = ``$1200.00``; the currency is not compared) and the years of its dates, never
   against digits inside the source's dates or ids (``2024-03-20`` does not support "20 users"). Dates match
   by (year, month, day) in any of the formats above (a missing year or day matches any), or verbatim. An
   entity is also supported when each of its words occurs in the source as a word (``Castellane, Wren``
   supports ``Wren Castellane``); one that opens a sentence is also supported without its first word
   (``Notify Keiko Novak`` when the source names Keiko Novak).

3. An output **hallucinates** when it has at least one unsupported span. The rate is the mean over outputs.

It is a surface check, precise by construction for what it covers: a claim paraphrased without numbers,
names or quotes ("the invoice was paid twice") is not checkable here, and a correct fact the user did not
give and the reference does not contain (world knowledge) counts as unsupported. For a classifier or a
JSON router, a wrong label that appears nowhere in the input (``"P3"`` when the reference says ``"P2"``) is
an unsupported quote: by this definition a wrong answer of that kind is a hallucination.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

MONTHS = {
    m: i + 1
    for i, names in enumerate(
        [
            ("january", "jan"),
            ("february", "feb"),
            ("march", "mar"),
            ("april", "apr"),
            ("may",),
            ("june", "jun"),
            ("july", "jul"),
            ("august", "aug"),
            ("september", "sep", "sept"),
            ("october", "oct"),
            ("november", "nov"),
            ("december", "dec"),
        ]
    )
    for m in names
}
WEEKDAYS = {"monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"}
# Words that open sentences without naming anything (beyond scikit-learn's English stop words).
COMMON_OPENERS = frozenset(
    """
    yes no sure ok okay thanks thank please note hello hi hey dear sorry unfortunately however also
    here there this that these those it its our your their my we you they he she answer summary result
    results reply response first second third next then finally overall both each every all some many
    most few several one two three four five six seven eight nine ten in on at for to from by with
    without after before during since until while when where why how what which who whom whose if
    because although though unless once as so but and or nor not yet still just only even already
    today tomorrow yesterday now currently recently usually generally typically likely possibly
    check contact send open click go use try make let see ask call update reset change add remove
    billing access payroll mobile invoice invoices account accounts payment payments refund ticket
    queue priority issue problem error user users customer customers team staff employee employees
    the a an is are was were be been being do does did done have has had can could should would will
    may might must shall based according given using following regarding
    """.split()
)

_MONTH_RE = (
    r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|"
    r"sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)"
)
_NUM = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?"
_CUR_SYM = r"[$€£¥₹]"
_CUR_CODE = r"(?:USD|EUR|GBP|JPY|INR|CHF|CAD|AUD|dollars?|euros?|pounds?)"

_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    (
        "quote",
        re.compile(
            r"\"([^\"\n]{1,60})\"|“([^”\n]{1,60})”|‘([^’\n]{1,60})’|(?<![A-Za-z])'([^'\n]{1,60})'(?![A-Za-z])"
        ),
    ),
    ("url", re.compile(r"\bhttps?://[^\s<>\"')\]]+", re.I)),
    ("email", re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")),
    (
        "date",
        re.compile(
            rf"\b\d{{4}}-\d{{1,2}}-\d{{1,2}}\b|\b\d{{1,2}}/\d{{1,2}}/\d{{2,4}}\b|"
            rf"\b\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?{_MONTH_RE}\.?(?:,?\s+\d{{4}})?\b|"
            rf"\b{_MONTH_RE}\.?\s+\d{{1,2}}(?:st|nd|rd|th)?(?:,?\s+\d{{4}})?\b|"
            rf"\b{_MONTH_RE}\.?\s+\d{{4}}\b",
            re.I,
        ),
    ),
    (
        "amount",
        re.compile(rf"{_CUR_SYM}\s?(?:{_NUM})(?:\s?[kKmM]\b)?|\b(?:{_NUM})\s?{_CUR_CODE}\b"),
    ),
    ("identifier", re.compile(r"\b(?=[\w/-]*\d)(?=[\w/-]*[A-Za-z])[A-Za-z0-9][\w/-]*[A-Za-z0-9]\b")),
    ("number", re.compile(rf"(?<![\w.])(?:{_NUM})%?(?![\w])")),
    (
        "entity",
        re.compile(r"\b[A-Z][a-zA-Z'’-]*(?:[ \t]+(?:(?:of|de|van|von|the|and|&)[ \t]+)?[A-Z][a-zA-Z'’-]*)*"),
    ),
]
_LIST_MARKER = re.compile(r"^\s*\d{1,2}[.)]\s")
_NUMBER_WITH_UNIT = re.compile(r"^\d+(?:\.\d+)?(?:st|nd|rd|th|am|pm|h|hrs?|k|m|min|s|x|kg|km|gb|mb)$", re.I)
_WORD = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class Span:
    kind: str
    text: str
    start: int
    end: int
    initial: bool = False  # an entity that opens a sentence: its first word may be an ordinary word

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _norm(text: str) -> str:
    t = text.lower().replace("’", "'").replace("“", '"').replace("”", '"')
    return " ".join(t.split())


def _number_values(text: str) -> set[float]:
    out = set()
    for m in re.finditer(_NUM, text):
        try:
            out.add(round(float(m.group(0).replace(",", "")), 6))
        except ValueError:
            continue
    return out


def _date_keys(text: str) -> set[tuple[int | None, int, int | None]]:
    """(year, month, day) of every date in `text`, both day/month orders for d/m/y (ambiguous)."""
    keys: set[tuple[int | None, int, int | None]] = set()
    t = text.lower()
    for y, mo, d in re.findall(r"\b(\d{4})-(\d{1,2})-(\d{1,2})\b", t):
        keys.add((int(y), int(mo), int(d)))
    for a, b, y in re.findall(r"\b(\d{1,2})/(\d{1,2})/(\d{2,4})\b", t):
        yy = int(y) + (2000 if len(y) == 2 else 0)
        keys |= {(yy, int(b), int(a)), (yy, int(a), int(b))}
    for d, mon, y in re.findall(
        rf"\b(\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?({_MONTH_RE})\.?(?:,?\s+(\d{{4}}))?", t
    ):
        keys.add((int(y) if y else None, MONTHS[mon], int(d)))
    for mon, d, y in re.findall(rf"\b({_MONTH_RE})\.?\s+(\d{{1,2}})(?:st|nd|rd|th)?\b(?:,?\s+(\d{{4}}))?", t):
        keys.add((int(y) if y else None, MONTHS[mon], int(d)))
    for mon, y in re.findall(rf"\b({_MONTH_RE})\.?\s+(\d{{4}})\b", t):
        keys.add((int(y), MONTHS[mon], None))
    return keys


@lru_cache(maxsize=1)
def _stop_words() -> frozenset[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS) | COMMON_OPENERS


def _sentence_start(text: str, pos: int) -> bool:
    before = text[:pos].rstrip(" \t\"'“‘(*-")
    return not before or before[-1] in ".!?:\n"


def _entities(text: str, m: re.Match[str]) -> list[tuple[str, int, int, bool]]:
    """Split a run of capitalised words at common words ("Notify Eamon Brennan We" -> "Eamon Brennan" with
    an optional leading "Notify"); (phrase, start, end, sentence_initial) for each name left."""
    stop = _stop_words()
    out: list[tuple[str, int, int, bool]] = []
    run: list[tuple[str, int, int]] = []  # (word, start, end) in `text`

    def flush() -> None:
        while run and run[-1][0].lower() in _CONNECTORS:
            run.pop()
        if not run:
            return
        s, e = run[0][1], run[-1][2]
        initial = _sentence_start(text, s)
        words = [w[0].lower().strip("'’") for w in run]
        single = len(words) == 1
        acronym = single and run[0][0].isupper() and 2 <= len(run[0][0]) <= 5
        if single and (
            initial or acronym or words[0] in _PRONOUNS or words[0] in MONTHS or words[0] in WEEKDAYS
        ):
            run.clear()
            return
        if len(text[s:e]) >= 2:
            out.append((text[s:e], s, e, initial))
        run.clear()

    for w in re.finditer(r"[A-Za-z][a-zA-Z'’-]*|&", m.group(0)):
        word = w.group(0)
        end = m.start() + w.end()
        if word.endswith(("'s", "’s")):  # possessive: "Northwind Dental's" names Northwind Dental
            word, end = word[:-2], end - 2
        lw = word.lower().strip("'’")
        here = (word, m.start() + w.start(), end)
        if (lw in _CONNECTORS and run) or (word[0].isupper() and lw not in stop):
            run.append(here)
        else:
            flush()
    flush()
    return out


_CONNECTORS = frozenset({"of", "de", "van", "von", "the", "and", "&"})
_PRONOUNS = frozenset({"i", "i'm", "i've", "i'll", "i'd"})


def find_spans(text: str) -> list[Span]:
    """Every checkable fact in `text` (see the module docstring), in order of position."""
    taken = [False] * len(text)
    spans: list[Span] = []
    for kind, pat in _PATTERNS:
        for m in pat.finditer(text):
            s, e = m.start(), m.end()
            if any(taken[s:e]):
                continue
            if kind == "quote":
                inner = next(g for g in m.groups() if g is not None)
                if not inner.strip():
                    continue
                spans.append(Span(kind, inner.strip(), s, e))
            elif kind == "number":
                line_start = text.rfind("\n", 0, s) + 1
                if _LIST_MARKER.match(text[line_start : e + 2]) and not text[line_start:s].strip():
                    continue
                spans.append(Span(kind, m.group(0), s, e))
            elif kind == "entity":
                for phrase, es, ee, initial in _entities(text, m):
                    spans.append(Span(kind, phrase, es, ee, initial))
            elif kind == "identifier" and _NUMBER_WITH_UNIT.match(m.group(0)):
                spans.append(Span("number", m.group(0), s, e))
            else:
                spans.append(Span(kind, m.group(0), s, e))
            for k in range(s, e):
                taken[k] = True
    return sorted(spans, key=lambda sp: sp.start)


@dataclass(frozen=True)
class Source:
    """What an output may state: prompt and reference, pre-digested once per example."""

    text: str
    numbers: frozenset[float]
    dates: frozenset[tuple[int | None, int, int | None]]
    words: frozenset[str]

    @classmethod
    def of(cls, texts: Sequence[str]) -> Source:
        raw = "\n".join(texts)
        joined = _norm(raw)
        # Numbers the source states as numbers or amounts (and the years of its dates): the 20 inside
        # 2024-03-20 or INV-20-1 does not support "20 users".
        numbers: set[float] = set()
        for sp in find_spans(raw):
            if sp.kind in ("number", "amount"):
                numbers |= _number_values(sp.text)
            elif sp.kind == "date":
                numbers |= {float(y) for y, _, _ in _date_keys(sp.text) if y is not None}
        return cls(
            joined, frozenset(numbers), frozenset(_date_keys(joined)), frozenset(_WORD.findall(joined))
        )


def supported(span: Span, src: Source) -> bool:
    t = _norm(span.text)
    if span.kind not in ("number", "amount") and re.search(rf"(?<!\w){re.escape(t)}(?!\w)", src.text):
        return True
    if span.kind in ("number", "amount"):
        values = _number_values(t)
        return bool(values) and values <= src.numbers
    if span.kind == "date":
        keys = _date_keys(t)
        for y, mo, d in keys:
            for sy, smo, sd in src.dates:
                if smo == mo and (d is None or sd == d) and (y is None or sy is None or sy == y):
                    return True
        return False
    if span.kind == "entity":
        words = _WORD.findall(t)
        if span.initial and len(words) > 1 and " ".join(words[1:]) in src.text:
            return True
        return bool(words) and all(w in src.words for w in words[span.initial and len(words) > 1 :])
    return False


def unsupported_spans(output: str, source_texts: Sequence[str]) -> list[Span]:
    src = Source.of(source_texts)
    return [sp for sp in find_spans(output) if not supported(sp, src)]


def hallucinated(output: str, source_texts: Sequence[str]) -> float:
    return float(bool(unsupported_spans(output, source_texts)))
