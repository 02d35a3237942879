"""Detect and redact personal data (PII) in training text, replacing each value with a typed placeholder.

Every built-in kind is a cheap regex that proposes candidates plus, where one exists, a validator that
decides: Luhn for cards, ISO 13616 mod-97 and the country's IBAN length for IBANs, the stdlib `ipaddress`
parser for IPs, the SSA area/group/serial rules for SSNs, HMRC prefix rules for National Insurance numbers.
Precision matters as much as recall (a redacted order number or date damages the training data), so the
patterns are anchored against neighbouring digits, letters and separators and require the separators real
values are written with; bare digit runs are never a phone number.

Kinds and placeholders: EMAIL <EMAIL>, PHONE <PHONE>, CARD <CARD>, IBAN <IBAN>, SSN <SSN>, NINO <NINO>,
IP <IP>, plus caller-supplied regexes (`extra_patterns`, name -> regex) whose placeholder is <NAME> in upper
case. Overlapping matches are resolved longest first; on equal length the more specific kind wins
(caller patterns, then IBAN, CARD, EMAIL, SSN, NINO, IP, PHONE).
"""

from __future__ import annotations

import functools
import ipaddress
import re
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

PII_KINDS: tuple[str, ...] = ("EMAIL", "PHONE", "CARD", "IBAN", "SSN", "NINO", "IP")


@dataclass(frozen=True)
class PiiMatch:
    kind: str
    start: int
    end: int
    text: str


# ---------------------------------------------------------------------------------------------------------
# Validators
# ---------------------------------------------------------------------------------------------------------


def luhn_ok(digits: str) -> bool:
    """Luhn (mod 10) check of an ASCII digit string, check digit last."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


# The grouped tail of an IBAN-shaped code ("GB73 ZYDF 3164 7149 9256 39") can pass Luhn by chance when
# the IBAN itself fails mod-97; it is a mistyped account number, not a card.
_IBAN_HEAD_RE = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: [A-Z0-9]{4}){0,7} $", re.ASCII)


def _card_ok(m: re.Match[str]) -> bool:
    digits = re.sub(r"[ \-]", "", m.group(0))
    # Payment cards start with 2-6 (major industry identifier: Mastercard 2-series, Amex/Diners/JCB,
    # Visa, Mastercard/Maestro, Discover/UnionPay). Other leading digits are airline, fuel, telecom or
    # national ids; rejecting them halves the Luhn coincidences among long reference numbers.
    if digits[0] not in "23456" or len(set(digits)) == 1 or not luhn_ok(digits):
        return False
    return _IBAN_HEAD_RE.search(m.string, max(0, m.start() - 40), m.start()) is None


# ISO 13616 registry: IBAN length per country. A candidate must have exactly its country's length, which
# rejects almost every code that happens to pass mod-97.
IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BI": 27,
    "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27, "DK": 18, "DO": 28,
    "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23,
    "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27,
    "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25,
    "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18,
    "NO": 15, "OM": 23, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33,
    "SA": 24, "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}  # fmt: skip


def iban_ok(candidate: str) -> bool:
    """ISO 13616 check: registered country, that country's length, and mod-97 == 1; spaces ignored."""
    iban = candidate.replace(" ", "")
    if IBAN_LENGTHS.get(iban[:2]) != len(iban) or not iban[2:4].isdigit():
        return False
    rearranged = iban[4:] + iban[:4]
    # int(ch, 36) maps 0-9 to themselves and A-Z to 10-35, exactly the ISO 7064 letter substitution.
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


def _iban_span(m: re.Match[str]) -> tuple[int, int] | None:
    # A compact or grouped IBAN followed by a capitalised word can swallow that word as a "group";
    # give the trailing groups back one at a time until the rest validates.
    text = m.group(0)
    while True:
        if iban_ok(text):
            return m.start(), m.start() + len(text)
        cut = text.rfind(" ")
        if cut < 15:
            return None
        text = text[:cut]


def _ssn_ok(m: re.Match[str]) -> bool:
    area, group, serial = m.group(1), m.group(2), m.group(3)
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


_NINO_BAD_PREFIXES = frozenset({"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"})


def _nino_ok(m: re.Match[str]) -> bool:
    return m.group(1) not in _NINO_BAD_PREFIXES


# Four dot-separated numbers after "version", "build", "release" etc. are release numbers, not addresses
# ("v1.2.3.4" never gets here: the letter glued to the digits already fails the pattern).
_VERSION_CONTEXT_RE = re.compile(r"(?:\bversion|\bver\.?|\bbuild|\brelease|\bfirmware|\brev\.?)\s*$", re.I)


def _ipv4_ok(m: re.Match[str]) -> bool:
    try:
        ipaddress.IPv4Address(m.group(0))  # rejects octets > 255 and leading zeros
    except ValueError:
        return False
    return not _VERSION_CONTEXT_RE.search(m.string, max(0, m.start() - 12), m.start())


def _ipv6_span(m: re.Match[str]) -> tuple[int, int] | None:
    text = m.group(0)
    for candidate in (text, text[:-1] if text.endswith(":") and not text.endswith("::") else None):
        if not candidate or not any(ch not in ":." for ch in candidate):
            continue
        try:
            ipaddress.IPv6Address(candidate)
        except ValueError:
            continue
        return m.start(), m.start() + len(candidate)
    return None


def _phone_intl_ok(m: re.Match[str]) -> bool:
    text = m.group(0).replace("(0)", "")  # the bracketed trunk zero is not dialled from abroad
    n = sum(ch.isdigit() for ch in text)
    # E.164 allows at most 15 digits including the country code; fewer than 8 is an amount or a score.
    return 8 <= n <= 15 and text.count("(") == text.count(")")


def _phone_national_ok(m: re.Match[str]) -> bool:
    digits = re.sub(r"\D", "", m.group(0))
    # National numbers written with a trunk 0 have 10-11 digits in the UK and most of Europe; "00" starts
    # an international prefix, not a number.
    if not 10 <= len(digits) <= 11 or digits[1] == "0":
        return False
    return _IBAN_HEAD_RE.search(m.string, max(0, m.start() - 40), m.start()) is None


# ---------------------------------------------------------------------------------------------------------
# Patterns
# ---------------------------------------------------------------------------------------------------------

# Most patterns consume their first character from a small class and only then check, with a lookbehind
# spanning that character, what precedes it: a pattern that opens with a character class lets the regex
# engine skip straight to candidate characters instead of evaluating a lookbehind at every position.
_EMAIL_RE = re.compile(
    r"[A-Za-z0-9](?<![\w.%+\-][A-Za-z0-9])[A-Za-z0-9._%+\-]{0,63}@"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w\-])",
    re.ASCII,
)
# +CC then digit groups, optionally with a bracketed area code or trunk zero: +44 20 7946 0958,
# +1 (415) 555-0132, +44 (0)20 7946 0958, +33 1 23 45 67 89, +14155550132.
_PHONE_INTL_RE = re.compile(
    r"\+(?<![\w+]\+)[1-9]\d{0,2}(?:[ .\-]?\(0\))?(?:[ .\-]?(?:\(\d{1,5}\)|\d{1,5})){1,7}(?![\w]|[.\-]\d)",
    re.ASCII,
)
# North American numbers: (415) 555-0132, 415-555-0132, 415.555.0132, 415 555 0132, 1-800-555-0199.
# Area code and exchange cannot start with 0 or 1; the two separators must agree.
_PHONE_NANP_RE = re.compile(
    r"(?:\((?<![\w+\-./$#]\()[2-9]\d{2}\) ?[2-9]\d{2}[ .\-]\d{4}"
    r"|1(?<![\w+\-./$#]1)(?<!\d[ .\-]1)[ .\-]"
    r"(?:\([2-9]\d{2}\) ?[2-9]\d{2}[ .\-]\d{4}|[2-9]\d{2}([ .\-])[2-9]\d{2}\1\d{4})"
    r"|[2-9](?<![\w+\-./$#][2-9])(?<!\d[ .\-][2-9])\d{2}([ .\-])[2-9]\d{2}\2\d{4})"
    r"(?![\w]|[.\-]\d)",
    re.ASCII,
)
# Trunk-0 national numbers: 020 7946 0958, 0161 496 0000, 07700 900123, 030 12345678, 01 23 45 67 89.
_PHONE_NATIONAL_RE = re.compile(
    r"0(?<![\w+\-./$#]0)(?<!\d[ .\-]0)"
    r"(?:\d{2,4}(?:[ \-]\d{3,8}){1,2}|[1-9]([ .])\d{2}(?:\1\d{2}){3})"
    r"(?![\w]|[.\-/]\d)",
    re.ASCII,
)
# 13-19 digits: compact, in groups of four (last group shorter), or Amex/Diners 4-6-5 / 4-6-4; one
# separator style throughout.
_CARD_RE = re.compile(
    r"\d(?<![\w\-.,]\d)(?<!\d[ \-]\d)"  # not the tail of a longer run of digit groups (an IBAN's BBAN)
    r"(?:\d{12,18}|\d{3}([ \-])\d{4}\1\d{4}\1\d{1,4}(?:\1\d{1,3})?|\d{3}([ \-])\d{6}\2\d{4,5})"
    r"(?![\w]|[.,]\d|[ \-]\d)",
    re.ASCII,
)
_IBAN_RE = re.compile(
    r"[A-Z](?<!\w[A-Z])[A-Z]\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?(?![\w])", re.ASCII
)
_SSN_RE = re.compile(r"(\d(?<![\w\-./]\d)\d{2})-(\d{2})-(\d{4})(?![\w]|-\d)", re.ASCII)
_NINO_RE = re.compile(
    r"([A-CEGHJ-PR-TW-Z](?<!\w[A-Z])[A-CEGHJ-NPR-TW-Z]) ?\d{2} ?\d{2} ?\d{2} ?[A-D](?![\w])",
    re.ASCII,
)
_IPV4_RE = re.compile(r"\d(?<![\w.\-]\d)\d{0,2}\.(?:\d{1,3}\.){2}\d{1,3}(?![\w]|\.\d)", re.ASCII)
# A run of hex groups with at least two colons, optionally ending in a dotted quad (::ffff:192.0.2.1);
# ipaddress decides. Times (12:30:45) and MAC addresses are runs like this that it rejects.
_IPV6_RE = re.compile(
    r"(?<![\w:.])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:\.\d{1,3}\.\d{1,3}\.\d{1,3})?(?!\w|\.\w)",
    re.ASCII,
)

# A validator returns True/False for the whole match, or a (start, end) span (None to reject) when it may
# trim the match.
_Validator = Callable[[re.Match[str]], bool | tuple[int, int] | None]


@dataclass(frozen=True)
class _Detector:
    kind: str
    pattern: re.Pattern[str]
    validate: _Validator | None
    needs: str = ""  # a character that must occur in the text for a match to be possible
    min_count: int = 1  # ... at least this many times


_DETECTORS: tuple[_Detector, ...] = (
    _Detector("EMAIL", _EMAIL_RE, None, "@"),
    _Detector("IBAN", _IBAN_RE, _iban_span, ""),
    _Detector("CARD", _CARD_RE, _card_ok, ""),
    _Detector("SSN", _SSN_RE, _ssn_ok, "-"),
    _Detector("NINO", _NINO_RE, _nino_ok, ""),
    _Detector("IP", _IPV4_RE, _ipv4_ok, "."),
    _Detector("IP", _IPV6_RE, _ipv6_span, ":", 2),
    _Detector("PHONE", _PHONE_INTL_RE, _phone_intl_ok, "+"),
    _Detector("PHONE", _PHONE_NANP_RE, None, ""),
    _Detector("PHONE", _PHONE_NATIONAL_RE, _phone_national_ok, "0"),
)
# Tie-break on equal length: lower is more specific. Caller patterns get 0.
_PRIORITY = {"IBAN": 1, "CARD": 2, "EMAIL": 3, "SSN": 4, "NINO": 5, "IP": 6, "PHONE": 7}
_DIGIT_RE = re.compile(r"\d", re.ASCII)
_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


# ---------------------------------------------------------------------------------------------------------
# API
# ---------------------------------------------------------------------------------------------------------


def compile_extra_patterns(extra: Mapping[str, str]) -> dict[str, re.Pattern[str]]:
    """Compile caller patterns, keyed by their upper-cased name (which is also their kind and placeholder).

    Raises ValueError naming the pattern for an invalid regex, a name that is not an identifier, a name
    that clashes with a built-in kind, or two names that differ only in case.
    """
    compiled: dict[str, re.Pattern[str]] = {}
    for name, regex in extra.items():
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise ValueError(
                f"extra pattern name {name!r} must be letters, digits and _, starting with a letter"
            )
        kind = name.upper()
        if kind in PII_KINDS:
            raise ValueError(f"extra pattern {name!r} clashes with the built-in kind {kind}")
        if kind in compiled:
            raise ValueError(
                f"extra pattern {name!r} clashes with another pattern named {kind} in upper case"
            )
        try:
            compiled[kind] = re.compile(regex)
        except (re.error, TypeError) as err:
            raise ValueError(f"extra pattern {name!r} is not a valid regex ({regex!r}): {err}") from None
    return compiled


@functools.lru_cache(maxsize=32)
def _compiled_extras(items: tuple[tuple[str, str], ...]) -> dict[str, re.Pattern[str]]:
    # find_pii is called once per line with the same mapping; compile it once.
    return compile_extra_patterns(dict(items))


@functools.lru_cache(maxsize=64)
def _selected(kinds: frozenset[str] | None) -> tuple[_Detector, ...]:
    return tuple(d for d in _DETECTORS if kinds is None or d.kind in kinds)


def _resolve_kinds(
    kinds: Collection[str] | None, extras: Mapping[str, re.Pattern[str]]
) -> frozenset[str] | None:
    if kinds is None:
        return None
    wanted = frozenset(k.upper() for k in kinds)
    unknown = wanted.difference(PII_KINDS, extras)
    if unknown:
        known = ", ".join([*PII_KINDS, *extras])
        raise ValueError(f"unknown PII kind(s) {', '.join(sorted(unknown))}; known: {known}")
    return wanted


def find_pii(
    text: str, kinds: Collection[str] | None = None, extra_patterns: Mapping[str, str] | None = None
) -> list[PiiMatch]:
    """PII in `text`, sorted by position and non-overlapping (longest wins, then the more specific kind).

    `kinds` restricts detection to these built-in kinds and extra-pattern names (None: all of them).
    """
    extras = _compiled_extras(tuple(extra_patterns.items())) if extra_patterns else {}
    wanted = _resolve_kinds(kinds, extras)
    found: list[tuple[int, int, int, str]] = []  # (start, end, priority, kind)
    if _DIGIT_RE.search(text) is not None:
        for det in _selected(wanted):
            if det.needs and text.count(det.needs) < det.min_count:
                continue
            prio = _PRIORITY[det.kind]
            for m in det.pattern.finditer(text):
                if det.validate is None:
                    found.append((m.start(), m.end(), prio, det.kind))
                    continue
                verdict = det.validate(m)
                if verdict is True:
                    found.append((m.start(), m.end(), prio, det.kind))
                elif verdict:
                    found.append((verdict[0], verdict[1], prio, det.kind))
    elif "@" in text and (wanted is None or "EMAIL" in wanted):
        found.extend((m.start(), m.end(), _PRIORITY["EMAIL"], "EMAIL") for m in _EMAIL_RE.finditer(text))
    for kind, pattern in extras.items():
        if wanted is None or kind in wanted:
            found.extend((m.start(), m.end(), 0, kind) for m in pattern.finditer(text) if m.end() > m.start())
    if not found:
        return []
    if len(found) > 1:
        found = _non_overlapping(found)
    return [PiiMatch(kind, start, end, text[start:end]) for start, end, _, kind in found]


def _non_overlapping(found: list[tuple[int, int, int, str]]) -> list[tuple[int, int, int, str]]:
    chosen: list[tuple[int, int, int, str]] = []
    starts: list[int] = []
    for cand in sorted(found, key=lambda c: (c[0] - c[1], c[2], c[0])):
        start, end = cand[0], cand[1]
        i = bisect_left(starts, start)
        if i > 0 and chosen[i - 1][1] > start:
            continue
        if i < len(chosen) and chosen[i][0] < end:
            continue
        chosen.insert(i, cand)
        starts.insert(i, start)
    return chosen


def placeholder(kind: str) -> str:
    return f"<{kind.upper()}>"


def redact(
    text: str, kinds: Collection[str] | None = None, extra_patterns: Mapping[str, str] | None = None
) -> tuple[str, Counter[str]]:
    """Replace every match of `find_pii` with its placeholder; return the new text and a count per kind."""
    matches = find_pii(text, kinds, extra_patterns)
    counts: Counter[str] = Counter()
    if not matches:
        return text, counts
    parts: list[str] = []
    pos = 0
    for m in matches:
        parts.append(text[pos : m.start])
        parts.append(placeholder(m.kind))
        counts[m.kind] += 1
        pos = m.end
    parts.append(text[pos:])
    return "".join(parts), counts
