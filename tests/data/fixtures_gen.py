"""Seeded generators for the data-hygiene fixtures (near-duplicates and PII).

Everything is generated from a seed at test time, so no large fixture files live in the repo and every
number reported by the tests and the benchmark can be reproduced exactly.
"""

from __future__ import annotations

import itertools
import random
import re
import string
from dataclasses import dataclass, field

# --------------------------------------------------------------------------------------------------------
# Near-duplicate fixture
# --------------------------------------------------------------------------------------------------------

# fmt: off
FIRST_NAMES = (
    "Maria", "James", "Aisha", "Tom", "Priya", "Lukas", "Chen", "Fatima", "Oliver", "Sofia", "Diego",
    "Hannah", "Kwame", "Elena", "Ravi", "Grace", "Mateo", "Yuki", "Noah", "Amara", "Liam", "Zara", "Ivan",
    "Chloe", "Omar", "Nina", "Felix", "Leila", "Samuel", "Ingrid",
)
PRODUCTS = (
    "wireless headphones", "standing desk", "espresso machine", "4K monitor", "ergonomic chair",
    "laptop sleeve", "smart thermostat", "running shoes", "yoga mat", "coffee grinder", "bluetooth speaker",
    "office printer", "mechanical keyboard", "air purifier", "robot vacuum", "electric kettle",
    "gaming mouse", "webcam", "hiking backpack", "insulated water bottle", "desk lamp", "tablet stand",
    "noise machine", "portable charger", "blender", "rice cooker", "winter jacket", "smart doorbell",
    "photo printer", "label maker", "paper shredder", "monitor arm",
)
ISSUES = (
    "arrived with a cracked screen", "stopped charging after two days", "was missing the power adapter",
    "makes a loud rattling noise", "does not connect to the app", "was delivered to the wrong address",
    "came in the wrong color", "keeps restarting every few minutes", "smells of burnt plastic",
    "has a scratch along the left side", "shows an error light on startup", "was left out in the rain",
    "is much smaller than the photos suggested", "overheats within ten minutes", "lost its pairing again",
    "arrived without the instruction manual", "has a wobbly base", "drains the battery overnight",
    "was charged twice on my statement", "never left the sorting facility",
)
ACTIONS = (
    "send a replacement unit", "issue a full refund", "arrange a courier pickup",
    "escalate this to the warehouse team", "update the shipping address", "cancel the remaining items",
    "apply the loyalty discount", "extend the warranty period", "book a technician visit",
    "reissue the corrected invoice", "credit the difference to my account", "swap it for the larger model",
    "send a prepaid return label", "check the status with the carrier", "reset the account password",
    "merge the two duplicate accounts", "move the delivery to next week", "refund the shipping fee",
)
TIMEFRAMES = (
    "within three business days", "by the end of the week", "before Friday", "as soon as possible",
    "within 48 hours", "by next Monday", "before the holiday weekend", "later this afternoon",
    "within the next two weeks", "before our quarterly review", "by tomorrow morning", "this month",
)
TEAMS = (
    "billing", "logistics", "returns", "technical support", "account management", "customer success",
    "procurement", "the warehouse", "quality assurance", "finance", "onboarding", "the courier desk",
)
CHANNELS = (
    "by email", "over the phone", "through the live chat", "via the mobile app", "on the website",
    "through the customer portal", "in the branch", "by text message",
)
PLANS = ("Basic", "Pro", "Business", "Enterprise", "Starter", "Premium", "Team", "Growth", "Scale", "Plus")
FEATURES = (
    "two-factor login", "bulk export", "calendar sync", "invoice reminders", "team dashboards", "API access",
    "single sign-on", "custom reports", "audit logs", "offline mode", "shared inboxes", "automatic backups",
    "usage alerts", "role permissions", "data retention rules",
)
CITIES = (
    "Leeds", "Denver", "Lyon", "Porto", "Austin", "Glasgow", "Munich", "Toronto", "Dublin", "Seattle",
    "Utrecht", "Valencia", "Krakow", "Bristol", "Phoenix", "Oslo",
)
REASONS = (
    "the package was damaged in transit", "the size chart was misleading", "our budget was cut",
    "we switched to a different supplier", "the colour did not match the website", "it arrived too late",
    "the team has grown faster than expected", "we are consolidating our tools", "the trial ended early",
    "the manager approved a larger order", "the previous invoice had the wrong tax rate",
)
FEELINGS = (
    "frustrated", "disappointed", "confused", "relieved", "pleased", "surprised", "worried", "annoyed",
)
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")
MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
    "November", "December",
)
# fmt: on


def _amount(rng: random.Random) -> str:
    return f"${rng.randint(5, 2400)}.{rng.randint(0, 99):02d}"


def _order(rng: random.Random) -> str:
    return f"#{rng.randint(10000, 999999)}"


def _date(rng: random.Random) -> str:
    return f"{rng.choice(MONTHS)} {rng.randint(1, 28)}"


def _small(rng: random.Random) -> str:
    return str(rng.randint(2, 60))


SLOT_FILLERS = {
    "name": lambda r: r.choice(FIRST_NAMES),
    "agent": lambda r: r.choice(FIRST_NAMES),
    "product": lambda r: r.choice(PRODUCTS),
    "product2": lambda r: r.choice(PRODUCTS),
    "issue": lambda r: r.choice(ISSUES),
    "action": lambda r: r.choice(ACTIONS),
    "action2": lambda r: r.choice(ACTIONS),
    "time": lambda r: r.choice(TIMEFRAMES),
    "team": lambda r: r.choice(TEAMS),
    "channel": lambda r: r.choice(CHANNELS),
    "plan": lambda r: r.choice(PLANS),
    "plan2": lambda r: r.choice(PLANS),
    "feature": lambda r: r.choice(FEATURES),
    "city": lambda r: r.choice(CITIES),
    "reason": lambda r: r.choice(REASONS),
    "feeling": lambda r: r.choice(FEELINGS),
    "weekday": lambda r: r.choice(WEEKDAYS),
    "amount": _amount,
    "amount2": _amount,
    "order": _order,
    "date": _date,
    "n": _small,
    "n2": _small,
}

# Main templates: a support/business message skeleton with many slots. Several templates deliberately
# share phrasing so that unrelated texts still overlap heavily in vocabulary.
TEMPLATES = (
    "Hi {agent}, my order {order} for the {product} {issue} on {date}, so could you please {action} {time} "
    "and confirm {channel}?",
    "Hello, I placed order {order} from {city} on {date} and the {product} {issue}; I would like {team} to "
    "{action} {time}.",
    "Our {team} team confirmed {channel} that order {order} was shipped from {city} on {date} but the "
    "{product} {issue}.",
    "I was charged {amount} instead of {amount2} for the {plan} plan on {date}, which is why I am {feeling} "
    "and would like you to {action} {time}.",
    "We want to upgrade {n} seats in {city} from the {plan} plan to the {plan2} plan because {reason}, and "
    "we need {feature} enabled {time}.",
    "Please {action} for order {order} placed on {weekday}; the {product} {issue} and our {team} team in "
    "{city} cannot reuse it.",
    "Thanks {agent}, the {product} you sent on {date} {issue}, so I would rather you {action2} than "
    "{action} {time}.",
    "Can someone from {team} call me {channel} about invoice {order}? It shows {amount} for the {product} "
    "but we agreed on {amount2} in {city}.",
    "After {n} days of waiting, the {product} from order {order} {issue}, and I am honestly {feeling} with "
    "how {team} handled it {channel}.",
    "Our office in {city} ordered {n} units of the {product} on {date}, but only {n2} arrived by {weekday} "
    "and one {issue}.",
    "I contacted {team} {channel} on {weekday} about the {product}; {agent} promised to {action} {time} but "
    "nothing happened since {date}.",
    "Is {feature} included in the {plan} plan for our {n} users in {city}, or do we need to pay {amount} a "
    "month for the {plan2} tier because {reason}?",
    "The {product} we bought on {date} for the {city} store {issue}; could {team} {action} and confirm "
    "{channel} {time}?",
    "We are cancelling the {plan} subscription for {n} seats because {reason}, so please {action} and stop "
    "billing {amount} from {date}.",
    "My colleague {name} in {city} reported {channel} that the {product} {issue} and asked whether {team} "
    "can {action} {time}.",
    "Following up on order {order}: {team} said {channel} the {product} would ship {time}, yet on {date} "
    "it still {issue}.",
    "Could you {action} for the {n} {product} units on order {order} from {city}, since {reason} and "
    "{agent} already approved it?",
    "{agent} from {team} told me {channel} that the refund of {amount} for the {product} would arrive "
    "{time}, but it has not.",
    "I need {feature} turned on for {n} users in {city} {time}; our {plan} contract renews on {date} at "
    "{amount}.",
    "The replacement {product} for order {order} {issue} as well, so this time please ask {team} to "
    "{action} instead of {agent}.",
    "When I opened the box on {weekday}, the {product} {issue}, and the {product2} in the same order "
    "{order} was damaged too.",
    "We have been {feeling} customers in {city} since {date}, but the {plan} plan now costs {amount} and "
    "{reason}.",
    "Please ask {team} to {action} for {name}, whose {product} {issue} after only {n} days in {city}.",
    "Your website says {feature} is part of {plan}, yet our {n} users in {city} cannot find it {channel} "
    "since {date}.",
)

# Add-on clauses appended to reach 20-60 words; shared by every template, which makes unrelated texts
# look alike (the hard case for precision).
# fmt: off
ADDONS = (
    "I have attached photos of the {product} and the original packaging.",
    "This is the {n}th time I have had to contact {team} about it.",
    "Our account manager {agent} is copied on this message.",
    "We would also like to know whether {feature} will be available on the {plan} plan.",
    "The delivery driver left the parcel at the wrong door in {city}.",
    "Please reply {channel} rather than calling, as I am travelling until {weekday}.",
    "I have been a customer for {n} years and have never had a problem like this.",
    "Let me know if you need the serial number or the receipt for {amount}.",
    "Our finance team needs the updated invoice before {date} to close the month.",
    "Honestly I am {feeling}, because {reason}.", "If that is not possible, please {action2} instead.",
    "The same thing happened with order {order} last year.", "Thanks in advance for your help, {agent}.",
    "We are happy to pay the difference of {amount2} if needed.",
    "Kind regards from the whole {team} team in {city}.",
    "The tracking page has not changed since {weekday} morning.",
)
# fmt: on

# Word-level edits for the reworded copy: synonyms for substitutions, fillers for insertions.
SYNONYMS = {
    "order": ("purchase",),
    "please": ("kindly",),
    "could": ("can", "would"),
    "would": ("could",),
    "like": ("prefer", "want"),
    "need": ("require",),
    "arrived": ("came", "turned up"),
    "confirmed": ("said", "verified"),
    "reported": ("mentioned", "said"),
    "asked": ("wondered",),
    "honestly": ("frankly",),
    "cancel": ("stop",),
    "send": ("ship", "mail"),
    "issue": ("process",),
    "help": ("support",),
    "bought": ("purchased",),
    "units": ("items", "pieces"),
    "told": ("informed",),
    "contacted": ("reached", "messaged"),
    "customer": ("client",),
    "message": ("email", "note"),
    "team": ("group", "department"),
    "photos": ("pictures",),
    "problem": ("issue",),
    "wrong": ("incorrect",),
    "still": ("yet",),
    "because": ("since", "as"),
    "also": ("additionally",),
    "happy": ("willing", "glad"),
    "refund": ("reimbursement",),
    "since": ("as",),
    "replacement": ("new",),
    "again": ("once more",),
}
# fmt: off
FILLERS = (
    "really", "also", "just", "still", "actually", "again", "now", "kindly", "urgently", "today", "already",
    "unfortunately", "please", "completely", "quite",
)
# fmt: on

_NUMBER_RE = re.compile(r"\d+")
_SENTENCE_SPLIT_RE = re.compile(r"(?<=[.?!])\s+")


@dataclass
class NearDupFixture:
    """Texts plus the planted (earlier index, later index) duplicate pairs; everything else is distinct."""

    texts: list[str]
    pairs: set[tuple[int, int]]
    edits: dict[tuple[int, int], list[str]] = field(default_factory=dict)  # which edits made each copy
    template: list[int] = field(default_factory=list)  # template id of each text


def _render(template: str, rng: random.Random) -> tuple[str, tuple[str, ...]]:
    values: dict[str, str] = {}

    def fill(m: re.Match[str]) -> str:
        slot = m.group(1)
        if slot not in values:
            values[slot] = SLOT_FILLERS[slot](rng)
        return values[slot]

    text = re.sub(r"\{(\w+)\}", fill, template)
    return text, tuple(sorted(values.values()))


def _make_text(rng: random.Random) -> tuple[str, int, frozenset[str]]:
    """One message of 20-60 words, plus its template id and a fingerprint of the slot values used."""
    t_id = rng.randrange(len(TEMPLATES))
    body, slots = _render(TEMPLATES[t_id], rng)
    parts = [body]
    fingerprint = set(slots)
    target = rng.randint(20, 60)
    addon_ids = rng.sample(range(len(ADDONS)), k=len(ADDONS))
    for a_id in addon_ids:
        if len(" ".join(parts).split()) >= target:
            break
        clause, a_slots = _render(ADDONS[a_id], rng)
        candidate = " ".join([*parts, clause])
        if len(candidate.split()) > 60:
            continue
        parts.append(clause)
        fingerprint.add(f"a{a_id}")
        fingerprint.update(a_slots)
    return " ".join(parts), t_id, frozenset(fingerprint)


def _change_number(words: list[str], rng: random.Random) -> bool:
    idx = [i for i, w in enumerate(words) if _NUMBER_RE.search(w)]
    if not idx:
        return False
    i = rng.choice(idx)

    def bump(m: re.Match[str]) -> str:
        digits = m.group(0)
        new = str(int(digits) + rng.randint(1, 9))
        return new.zfill(len(digits))

    words[i] = _NUMBER_RE.sub(bump, words[i], count=1)
    return True


def _word_edit(words: list[str], rng: random.Random) -> str:
    op = rng.choice(("sub", "sub", "ins", "del"))
    if op == "sub":
        cands = [i for i, w in enumerate(words) if w.lower().strip(",.;?!:") in SYNONYMS]
        if cands:
            i = rng.choice(cands)
            core = words[i].lower().strip(",.;?!:")
            tail = words[i][len(words[i].rstrip(",.;?!:")) :]
            words[i] = rng.choice(SYNONYMS[core]) + tail
            return "sub"
        op = "ins"
    if op == "ins":
        words.insert(rng.randrange(1, len(words)), rng.choice(FILLERS))
        return "ins"
    # Deleting punctuation-carrying words would merge clauses; drop a plain word instead.
    cands = [i for i, w in enumerate(words[1:], start=1) if w.isalpha()]
    del words[rng.choice(cands)]
    return "del"


def _reorder_clause(text: str, rng: random.Random) -> str | None:
    sentences = _SENTENCE_SPLIT_RE.split(text)
    if len(sentences) >= 2:
        i = rng.randrange(len(sentences) - 1)
        sentences[i], sentences[i + 1] = sentences[i + 1], sentences[i]
        return " ".join(sentences)
    head, sep, tail = text.partition(", ")
    if not sep:
        return None
    # "A, B." -> "B, a." keeps the result a sentence rather than two fragments.
    tail = tail.rstrip(".?!")
    return f"{tail[:1].upper()}{tail[1:]}, {head[:1].lower()}{head[1:]}{text[-1]}"


def reword(text: str, rng: random.Random) -> tuple[str, list[str]]:
    """A near-duplicate: 2-4 word substitutions/insertions/deletions, then maybe a changed number and a
    swapped clause pair, the way a copy-edited or templated ticket differs from its original."""
    edits: list[str] = []
    if rng.random() < 0.3:
        swapped = _reorder_clause(text, rng)
        if swapped is not None:
            text = swapped
            edits.append("reorder")
    words = text.split()
    for _ in range(rng.randint(2, 4)):
        edits.append(_word_edit(words, rng))
    if rng.random() < 0.5 and _change_number(words, rng):
        edits.append("number")
    return " ".join(words), edits


def _too_close(fp: frozenset[str], others: list[frozenset[str]]) -> bool:
    # Ground truth for "distinct": at most half of the slot values (and add-on clauses) in common with any
    # other message from the same template; otherwise two random fills could be genuine near-duplicates.
    return any(len(fp & other) * 2 > max(len(fp), len(other)) for other in others)


def near_dup_fixture(n_pairs: int = 1000, n_distinct: int = 1000, seed: int = 13) -> NearDupFixture:
    """`n_pairs` originals each with a reworded copy, plus `n_distinct` unrelated texts, shuffled."""
    rng = random.Random(seed)
    by_template: dict[int, list[frozenset[str]]] = {}
    bases: list[tuple[str, int]] = []
    while len(bases) < n_pairs + n_distinct:
        text, t_id, fp = _make_text(rng)
        seen = by_template.setdefault(t_id, [])
        if _too_close(fp, seen):
            continue
        seen.append(fp)
        bases.append((text, t_id))
    items: list[tuple[str, int, int]] = []  # (text, group id, template id)
    edits: dict[int, list[str]] = {}
    for g, (text, t_id) in enumerate(bases):
        items.append((text, g, t_id))
        if g < n_pairs:
            copy, how = reword(text, rng)
            items.append((copy, g, t_id))
            edits[g] = how
    rng.shuffle(items)
    where: dict[int, list[int]] = {}
    for idx, (_, g, _t) in enumerate(items):
        where.setdefault(g, []).append(idx)
    pairs: set[tuple[int, int]] = set()
    pair_edits: dict[tuple[int, int], list[str]] = {}
    for g, idxs in where.items():
        if len(idxs) == 2:
            pair = (min(idxs), max(idxs))
            pairs.add(pair)
            pair_edits[pair] = edits[g]
    return NearDupFixture(
        texts=[t for t, _, _ in items], pairs=pairs, edits=pair_edits, template=[t for _, _, t in items]
    )


# --------------------------------------------------------------------------------------------------------
# PII fixtures
# --------------------------------------------------------------------------------------------------------


def luhn_check_digit(payload: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(payload)):
        d = int(ch)
        if i % 2 == 0:  # these positions are doubled once the check digit is appended
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return str((10 - total % 10) % 10)


_CARD_PREFIXES = (
    ("4", 16),
    ("4", 13),
    ("4", 19),
    ("51", 16),
    ("55", 16),
    ("2221", 16),
    ("2720", 16),
    ("34", 15),
    ("37", 15),
    ("6011", 16),
    ("65", 16),
    ("36", 14),
    ("3528", 16),
    ("62", 19),
    ("5018", 18),
)


def _group(digits: str, sizes: tuple[int, ...], sep: str) -> str:
    out, pos = [], 0
    for size in sizes:
        out.append(digits[pos : pos + size])
        pos += size
    if pos < len(digits):
        out.append(digits[pos:])
    return sep.join(p for p in out if p)


def make_card(rng: random.Random, valid: bool = True) -> str:
    prefix, length = rng.choice(_CARD_PREFIXES)
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    check = luhn_check_digit(body)
    if not valid:
        check = str((int(check) + rng.randint(1, 9)) % 10)
    digits = body + check
    style = rng.choice(("compact", "space", "dash"))
    if style == "compact":
        return digits
    sep = " " if style == "space" else "-"
    if length == 15:
        return _group(digits, (4, 6, 5), sep)
    if length == 14 and rng.random() < 0.5:
        return _group(digits, (4, 6, 4), sep)
    return _group(digits, (4, 4, 4, 4, 4), sep)


IBAN_SPECS = {  # country: BBAN layout as (kind, count) with "n" digits, "a" letters, "c" alphanumerics
    "GB": (("a", 4), ("n", 14)),
    "DE": (("n", 18),),
    "FR": (("n", 10), ("c", 11), ("n", 2)),
    "NL": (("a", 4), ("n", 10)),
    "ES": (("n", 20),),
    "IT": (("a", 1), ("n", 10), ("c", 12)),
    "BE": (("n", 12),),
    "CH": (("n", 5), ("c", 12)),
    "IE": (("a", 4), ("n", 14)),
    "PL": (("n", 24),),
    "NO": (("n", 11),),
    "SE": (("n", 20),),
    "AT": (("n", 16),),
    "PT": (("n", 21),),
    "DK": (("n", 14),),
    "FI": (("n", 14),),
    "LU": (("n", 3), ("c", 13)),
    "MT": (("a", 4), ("n", 5), ("c", 18)),
}


def _iban_digits(s: str) -> int:
    return int("".join(str(int(ch, 36)) for ch in s))


def make_iban(rng: random.Random, valid: bool = True, grouped: bool | None = None) -> str:
    country = rng.choice(sorted(IBAN_SPECS))
    pools = {"n": string.digits, "a": string.ascii_uppercase, "c": string.ascii_uppercase + string.digits}
    bban = "".join(rng.choice(pools[k]) for k, count in IBAN_SPECS[country] for _ in range(count))
    check = 98 - _iban_digits(bban + country + "00") % 97
    if not valid:
        check = (check + rng.randint(1, 50)) % 97 + 2
        if 98 - _iban_digits(bban + country + "00") % 97 == check:
            check = check % 97 + 2
    iban = f"{country}{check:02d}{bban}"
    if grouped is None:
        grouped = rng.random() < 0.6
    return " ".join(iban[i : i + 4] for i in range(0, len(iban), 4)) if grouped else iban


def make_ssn(rng: random.Random) -> str:
    area = rng.choice([a for a in range(1, 900) if a != 666])
    return f"{area:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"


_NINO_FIRST = "ABCEGHJKLMNOPRSTWXYZ"
_NINO_SECOND = "ABCEGHJKLMNPRSTWXYZ"
_NINO_BAD_PREFIXES = {"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"}


def make_nino(rng: random.Random) -> str:
    while True:
        prefix = rng.choice(_NINO_FIRST) + rng.choice(_NINO_SECOND)
        if prefix not in _NINO_BAD_PREFIXES:
            break
    digits = f"{rng.randint(0, 999999):06d}"
    suffix = rng.choice("ABCD")
    if rng.random() < 0.5:
        return f"{prefix} {digits[:2]} {digits[2:4]} {digits[4:]} {suffix}"
    return f"{prefix}{digits}{suffix}"


# fmt: off
_EMAIL_DOMAINS = (
    "example.com", "acme-corp.co.uk", "mail.fastmail.org", "northwind.io", "contoso.net", "uni-leeds.ac.uk",
    "startup.dev", "gmail.com", "outlook.de", "shop.example.fr",
)
# fmt: on


def make_email(rng: random.Random) -> str:
    first = rng.choice(FIRST_NAMES).lower()
    last = rng.choice(("smith", "garcia", "okafor", "muller", "tanaka", "oconnor", "novak", "silva"))
    local = rng.choice(
        (
            f"{first}.{last}",
            f"{first}{rng.randint(1, 99)}",
            f"{first[0]}{last}",
            f"{first}_{last}",
            f"{first}+orders",
            f"{last}.{first}-{rng.randint(1, 9)}",
        )
    )
    if rng.random() < 0.2:
        local = local.capitalize()
    return f"{local}@{rng.choice(_EMAIL_DOMAINS)}"


def make_phone(rng: random.Random) -> str:
    d = lambda n: "".join(rng.choice(string.digits) for _ in range(n))  # noqa: E731
    area = f"{rng.randint(2, 9)}{d(2)}"
    exch = f"{rng.randint(2, 9)}{d(2)}"
    line = d(4)
    style = rng.randrange(14)
    if style == 0:
        return f"({area}) {exch}-{line}"
    if style == 1:
        return f"{area}-{exch}-{line}"
    if style == 2:
        return f"{area}.{exch}.{line}"
    if style == 3:
        return f"+1 {area} {exch} {line}"
    if style == 4:
        return f"+1-{area}-{exch}-{line}"
    if style == 5:
        return f"+1 ({area}) {exch}-{line}"
    if style == 6:
        return f"+44 20 {rng.randint(3, 8)}{d(3)} {d(4)}"
    if style == 7:
        return f"020 {rng.randint(3, 8)}{d(3)} {d(4)}"
    if style == 8:
        return f"+44 7{d(3)} {d(6)}"
    if style == 9:
        return f"07{d(3)} {d(6)}"
    if style == 10:
        return f"+49 30 {d(8)}"
    if style == 11:
        return f"+33 {rng.randint(1, 9)} {d(2)} {d(2)} {d(2)} {d(2)}"
    if style == 12:
        return f"0161 {d(3)} {d(4)}"
    return f"+{rng.choice(('61', '91', '353', '34', '81'))} {d(3)} {d(3)} {d(3)}"


def make_ipv4(rng: random.Random) -> str:
    first = rng.choice((10, 172, 192, 8, 34, 52, 100, 203, 81, 151))
    return ".".join(str(o) for o in (first, rng.randint(0, 255), rng.randint(0, 255), rng.randint(1, 254)))


def make_ipv6(rng: random.Random) -> str:
    groups = [f"{rng.randint(0, 0xFFFF):x}" for _ in range(8)]
    style = rng.randrange(5)
    if style == 0:
        return ":".join(groups)
    if style == 1:
        return f"2001:db8::{groups[0]}"
    if style == 2:
        return f"fe80::{groups[0]}:{groups[1]}:{groups[2]}:{groups[3]}"
    if style == 3:
        return f"2001:db8:{groups[0]}::{groups[1]}:{groups[2]}".upper()
    return f"::ffff:192.0.2.{rng.randint(1, 254)}"


def make_ip(rng: random.Random) -> str:
    return make_ipv4(rng) if rng.random() < 0.5 else make_ipv6(rng)


PII_MAKERS = {
    "EMAIL": make_email,
    "PHONE": make_phone,
    "CARD": make_card,
    "IBAN": make_iban,
    "SSN": make_ssn,
    "NINO": make_nino,
    "IP": make_ip,
}

# Sentences the PII is embedded in; some carry business numbers right next to the PII so that spans must
# be exact and the look-alikes must stay untouched.
PII_CONTEXTS = (
    "Please update my record, the new value is {v} as of March 3.",
    'Customer {name} wrote: "you can reach me on {v} after 5pm".',
    "Ticket 48213 - value on file: {v}; refund of $1,249.99 pending.",
    "({v}) was listed in the signup form for order #77120.",
    "I typed {v}, but the portal (v2.13.0) rejected it.",
    "{v} is the one we used in 2023, on invoice INV-2024-00123.",
    "Refer to {v}. Thanks!",
    "Details for {name}: {v}, 12 units, 15/03/2024.",
    "On 2024-03-15 at 12:30:45 the agent logged {v} for the account.",
    "Replace the old entry with {v}, effective immediately.",
    '{{"customer": "{name}", "contact": "{v}", "order": 55012, "total": "$89.90"}}',
    "**{v}** (verified 14:05)",
    "Contact: <{v}>",
    "Old value '{v}' replaced on 12.04.2024 by agent #2231",
    "{v}",
    "Ref {v}\tqty 3\tv1.4.2",
)


@dataclass
class PiiLine:
    text: str
    planted: list[tuple[str, int, int]]  # (kind, start, end) of every planted value


def pii_fixture(per_type: int = 120, seed: int = 7) -> list[PiiLine]:
    """`per_type` lines per PII kind, each with one planted value of that kind in a business sentence."""
    rng = random.Random(seed)
    lines: list[PiiLine] = []
    for kind, maker in PII_MAKERS.items():
        for _ in range(per_type):
            value = maker(rng)
            context = rng.choice(PII_CONTEXTS)
            before, after = context.replace("{{", "{").replace("}}", "}").split("{v}")
            before = before.replace("{name}", rng.choice(FIRST_NAMES))
            after = after.replace("{name}", rng.choice(FIRST_NAMES))
            start = len(before)
            text = before + value + after
            planted = [(kind, start, start + len(value))]
            if rng.random() < 0.2:  # a second value of another kind on the same line
                other = rng.choice([k for k in PII_MAKERS if k != kind])
                second = PII_MAKERS[other](rng)
                text += f" Backup: {second} (added 2024-05-02)."
                s2 = text.index(second, start + len(value))
                planted.append((other, s2, s2 + len(second)))
            lines.append(PiiLine(text, planted))
    rng.shuffle(lines)
    return lines


def pii_free_lines(n: int = 1200, seed: int = 11) -> list[str]:
    """Business lines packed with number-like look-alikes that must never be flagged as PII."""
    rng = random.Random(seed)
    d = lambda k: "".join(rng.choice(string.digits) for _ in range(k))  # noqa: E731

    def year() -> str:
        return str(rng.randint(1998, 2031))

    def iso_date() -> str:
        return f"{year()}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"

    def eu_date() -> str:
        return f"{rng.randint(1, 28):02d}/{rng.randint(1, 12):02d}/{year()}"

    def dotted_date() -> str:
        return f"{rng.randint(1, 28):02d}.{rng.randint(1, 12):02d}.{year()}"

    def time() -> str:
        return f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}" + (
            f":{rng.randint(0, 59):02d}" if rng.random() < 0.5 else ""
        )

    def amount() -> str:
        whole = rng.randint(1, 999_999)
        cur = rng.choice(("$", "£", "€", "USD ", "EUR "))
        return f"{cur}{whole:,}.{rng.randint(0, 99):02d}"

    def version() -> str:
        if rng.random() < 0.25:  # four-part builds look exactly like IPv4 addresses
            parts = ".".join(str(rng.randint(0, 30)) for _ in range(4))
            return rng.choice(("v", "version ", "build ")) + parts
        return rng.choice(("v", "version ", "release ", "")) + ".".join(
            str(rng.randint(0, 20)) for _ in range(rng.choice((2, 3, 3)))
        )

    gens = {
        "order": lambda: rng.choice(
            (
                f"order #{d(6)}",
                f"order {d(8)}",
                f"PO-{d(5)}",
                f"order {d(3)}-{d(7)}-{d(7)}",
                f"order no. {d(10)}",
                f"ORD-{year()}-{d(6)}",
            )
        ),
        "invoice": lambda: rng.choice((f"INV-{year()}-{d(5)}", f"invoice {d(7)}", f"INV{d(9)}")),
        "amount": amount,
        "date": lambda: rng.choice((iso_date(), eu_date(), dotted_date())),
        "time": time,
        "version": version,
        "percent": lambda: f"{rng.randint(0, 100)}{rng.choice(('', '.5', '.25'))}%",
        "zip": lambda: rng.choice((d(5), f"{d(5)}-{d(4)}", f"SW1A {rng.randint(1, 9)}AA")),
        "id": lambda: rng.choice((f"#{d(4)}", f"ID {d(6)}", f"case {d(5)}", f"ticket {d(7)}")),
        "year": year,
        "qty": lambda: f"{rng.randint(1, 5000):,} {rng.choice(('units', 'boxes', 'pallets', 'kg', 'pcs'))}",
        "sku": lambda: rng.choice(
            (
                f"SKU-{d(4)}-{rng.choice(('BLK', 'RED', 'XL', 'M'))}",
                f"WM-{d(4)}-{d(2)}",
                f"SKU {d(5)}",
                f"{rng.choice(string.ascii_uppercase)}{rng.choice(string.ascii_uppercase)}-{d(6)}",
                f"ART{d(8)}",
            )
        ),
        "tracking": lambda: rng.choice((d(12), d(20), d(22))),
        "ratio": lambda: f"{rng.randint(1, 9)}:{rng.randint(1, 9)}",
        "range": lambda: f"{rng.randint(1, 99)}-{rng.randint(100, 999)}",
        "phone_ext": lambda: f"ext. {d(4)}",
        "isbn": lambda: rng.choice((f"978-{d(1)}-{d(2)}-{d(6)}-{d(1)}", f"978{d(10)}")),
        "stamp": lambda: f"{iso_date()}T{time()}Z",
    }
    templates = (
        "Shipped {order} on {date} at {time}; {qty} left the warehouse, tracking {tracking}.",
        "{invoice} for {amount} is due {date}, a {percent} discount applies to {sku}.",
        "Release {version} went out on {date} at {time} and fixed {percent} of the crashes in {year}.",
        "Customer in ZIP {zip} returned {qty} of {sku} under {order}; refund {amount}.",
        "Q{q} {year} revenue was {amount}, up {percent} on {year}; see {invoice}.",
        "Ref {id}: {qty} of {sku} moved from bin {range} on {date}, ratio {ratio}.",
        "Meeting at {time} on {date} to review {invoice} ({amount}) and {order}.",
        "Upgrade to {version} before {date}; {percent} of users are still on {version}.",
        "Stock check {date}: {sku} {qty}, {sku} {qty}, reorder point {percent}.",
        "Call the depot on {phone_ext} about {order}, pallet {range}, weight {qty}.",
        "Batch {id} produced {qty} between {time} and {time} on {date}.",
        "Our {year} budget is {amount} across {qty}, with {percent} held back; see {id}.",
        "Catalogue ISBN {isbn} restocked at {stamp}: {qty} at {amount} each ({percent} margin).",
        "Event log {stamp} - {sku} scanned, {order}, build {version}, zone {range}.",
    )
    lines = []
    for _ in range(n):
        template = rng.choice(templates)

        def fill(m: re.Match[str]) -> str:
            slot = m.group(1)
            if slot == "q":
                return str(rng.randint(1, 4))
            return gens[slot]()

        lines.append(re.sub(r"\{(\w+)\}", fill, template))
    return lines


def support_corpus(n: int, dup_rate: float = 0.1, seed: int = 3) -> list[str]:
    """`n` fixture-style messages for throughput runs; about `dup_rate` of them reworded copies of earlier
    ones. No distinctness check, so it scales linearly."""
    rng = random.Random(seed)
    out: list[str] = []
    for _ in range(n):
        if out and rng.random() < dup_rate:
            out.append(reword(rng.choice(out), rng)[0])
        else:
            out.append(_make_text(rng)[0])
    return out


def diverse_corpus(n: int, dup_rate: float = 0.1, seed: int = 4, vocab: int = 50_000) -> list[str]:
    """`n` texts of 20-60 words drawn from a Zipf-distributed synthetic vocabulary mixed with function
    words, about `dup_rate` of them reworded copies of earlier ones.

    The opposite extreme to `support_corpus`: unrelated texts share little beyond common words, as in a
    varied real corpus, so LSH candidates per query stay flat as the corpus grows."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["".join(rng.choice(letters) for _ in range(rng.randint(3, 10))) for _ in range(vocab)]
    cum_weights = list(itertools.accumulate(1.0 / (rank + 1) for rank in range(vocab)))
    function = ("the", "to", "and", "a", "of", "is", "for", "we", "you", "it", "on", "with", "that", "this")
    out: list[str] = []
    for _ in range(n):
        if out and rng.random() < dup_rate:
            out.append(reword(rng.choice(out), rng)[0])
            continue
        k = rng.randint(20, 60)
        content = rng.choices(words, cum_weights=cum_weights, k=k - k // 3)
        text = content + [rng.choice(function) for _ in range(k // 3)]
        rng.shuffle(text)
        out.append(" ".join(text).capitalize() + f" {rng.randint(1, 9999)}.")
    return out
