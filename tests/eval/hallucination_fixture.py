"""A labelled hallucination fixture, generated from a seed: support-desk prompts with facts (names, companies,
amounts, dates, ids, counts, plan names), a reference answer, and a model-like output that either restates
facts from the prompt/reference (reformatted: 1200 -> 1,200, 2024-03-12 -> 12 March 2024, names reordered,
sentence-initial capitals, list markers, quotes) or invents one checkable fact of a random kind (a number, a
date, an amount, an id, a person or company, a quoted label). Label 1 = the output states an invented fact.

Written by us for the detector in tunesmith.eval.hallucination; the benchmark of that module is this file,
so the precision/recall it yields is an in-distribution number, not a claim about any model's outputs.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

FIRST = ["Wren", "Eamon", "Saoirse", "Priya", "Tomasz", "Amara", "Jonas", "Keiko", "Rafael", "Ines", "Olu"]
LAST = ["Castellane", "Okafor", "Lindqvist", "Moreau", "Haddad", "Novak", "Brennan", "Takeda", "Alvarez"]
COMPANIES = [
    "Cobalt Bike Repair",
    "Harbour Street Bakery",
    "Northwind Dental",
    "Juniper Legal",
    "Bright Lantern Studio",
    "Oakridge Plumbing",
    "Blue Heron Cafe",
]
PLANS = ["Starter", "Growth", "Premium", "Team"]
QUEUES = ["billing", "access", "payroll", "mobile"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October"]


@dataclass(frozen=True)
class Case:
    system: str
    user: str
    reference: str
    output: str
    label: int  # 1: the output states a fact found in neither the prompt nor the reference
    invented_kind: str | None


def _facts(rng: random.Random) -> dict[str, str | int | float]:
    return {
        "first": rng.choice(FIRST),
        "last": rng.choice(LAST),
        "company": rng.choice(COMPANIES),
        "amount": round(rng.uniform(20, 4000), 2),
        "count": rng.randint(2, 60),
        "year": rng.choice([2024, 2025, 2026]),
        "month": rng.randint(1, 10),
        "day": rng.randint(1, 28),
        "invoice": f"INV-{rng.randint(2023, 2026)}-{rng.randint(100, 9999):04d}",
        "plan": rng.choice(PLANS),
        "queue": rng.choice(QUEUES),
        "priority": f"P{rng.randint(1, 4)}",
    }


def _prompt(f: dict[str, str | int | float], rng: random.Random) -> str:
    amount = f"£{f['amount']:,.2f}" if rng.random() < 0.5 else f"{f['amount']} GBP"
    date = f"{f['year']}-{f['month']:02d}-{f['day']:02d}"
    return rng.choice(
        [
            f"Subject: Double charge\n\nHi, this is {f['first']} {f['last']} from {f['company']}. Invoice "
            f"{f['invoice']} dated {date} charged us {amount} twice. We have {f['count']} users on the "
            f"{f['plan']} plan.\n\nThanks",
            f"Hello team,\n\n{f['company']} cannot export payroll since {date}. {f['count']} employees on the "
            f"{f['plan']} plan are affected and the total owed is {amount}. Reference {f['invoice']}. Regards, {f['first']} {f['last']}",
            f"{f['first']} {f['last']} ({f['company']}) asks why invoice {f['invoice']} of {date} shows "
            f"{amount} for {f['count']} seats on the {f['plan']} plan.",
        ]
    )


def _faithful(f: dict[str, str | int | float], rng: random.Random) -> str:
    """Restate facts from the prompt/reference, reformatted the way models do."""
    month = MONTHS[int(f["month"]) - 1]
    date = rng.choice(
        [
            f"{f['day']} {month} {f['year']}",
            f"{month} {f['day']}, {f['year']}",
            f"{f['year']}-{f['month']:02d}-{f['day']:02d}",
            f"{f['day']} {month}",
        ]
    )
    amount = rng.choice([f"£{f['amount']:,.2f}", f"£{f['amount']}", f"{f['amount']:,.2f} GBP"])
    name = rng.choice([f"{f['first']} {f['last']}", f"{f['last']}, {f['first']}", str(f["first"])])
    parts = [
        f"Thanks for reaching out, {name}.",
        f"The invoice {f['invoice']} from {date} was charged {amount}.",
        f"Your account has {f['count']} users on the {f['plan']} plan.",
        f"This goes to the {f['queue']} queue with priority {f['priority']}.",
        f"Please allow a few days while {f['company']} is reviewed.",
        f'Routing: "{f["queue"]}", priority "{f["priority"]}".',
        f"Sure. Here is the summary for {f['company']}: {f['count']} seats, invoice {f['invoice']}.",
        f"Unfortunately the export failed on {date}. We will fix it soon.",
        "We are looking into it and will reply shortly.",
        f"Dear {f['first']}, sorry for the trouble.",
        "Ledgerly support will follow up by email.",
        f"I checked {f['company']}'s account and the CSV export.",
        "You can download the invoice as a PDF from the settings page.",
        f"\n1. Check invoice {f['invoice']}\n2. Refund {amount}\n3. Notify {name}\n",
    ]
    rng.shuffle(parts)
    return " ".join(parts[: rng.randint(2, 4)])


def _invented(f: dict[str, str | int | float], rng: random.Random) -> tuple[str, str]:
    """One sentence with a fact that is not in the prompt or the reference."""
    kind = rng.choice(["number", "date", "amount", "identifier", "entity", "quote"])
    if kind == "number":
        n = int(f["count"]) + rng.choice([1, 3, 7, 12, 25])
        s = rng.choice([f"You currently have {n} active users.", f"About {n}% of exports fail on this plan."])
    elif kind == "date":
        m = MONTHS[(int(f["month"]) + rng.randint(1, 5)) % len(MONTHS)]
        d = (int(f["day"]) + rng.randint(1, 20)) % 28 + 1
        s = rng.choice([f"The charge will be reversed on {d} {m}.", f"It was fixed on {m} {d}, {f['year']}."])
    elif kind == "amount":
        a = round(float(f["amount"]) * rng.choice([0.5, 1.1, 2.0, 3.0]) + 1, 2)
        s = rng.choice([f"A credit of £{a:,.2f} has been applied.", f"The refund is ${a:,.0f}."])
    elif kind == "identifier":
        s = rng.choice(
            [
                f"Your case number is CS-{rng.randint(10000, 99999)}.",
                f"See knowledge-base article KB{rng.randint(100, 999)} for details.",
            ]
        )
    elif kind == "entity":
        other = rng.choice([c for c in COMPANIES if c != f["company"]])
        person = f"{rng.choice([x for x in FIRST if x != f['first']])} {rng.choice([x for x in LAST if x != f['last']])}"
        s = rng.choice(
            [f"I have escalated this to {person} in our finance team.", f"We saw the same issue at {other}."]
        )
    else:
        label = rng.choice(["enterprise-billing", "Gold support", "tier 3", "legacy access"])
        s = rng.choice([f'The ticket is tagged "{label}".', f"Routed to the '{label}' queue."])
    return s, kind


def make_cases(n: int = 240, seed: int = 0) -> list[Case]:
    rng = random.Random(seed)
    cases = []
    for i in range(n):
        f = _facts(rng)
        system = "Route this Ledgerly support ticket and reply to the customer."
        user = _prompt(f, rng)
        reference = (
            f'{{"queue": "{f["queue"]}", "priority": "{f["priority"]}", "summary": '
            f'"{f["company"]} reports a problem with {f["invoice"]}"}}'
        )
        out = _faithful(f, rng)
        label, kind = 0, None
        if i % 2 == 1:
            sent, kind = _invented(f, rng)
            sentences = out.split(". ")
            sentences.insert(rng.randint(0, len(sentences)), sent.rstrip("."))
            out = ". ".join(s.rstrip(".") for s in sentences) + "."
            label = 1
        cases.append(Case(system, user, reference, out, label, kind))
    return cases
