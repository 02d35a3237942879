"""The hallucination detector on a labelled fixture of 240 outputs written by us (hallucination_fixture.py)."""

from __future__ import annotations

from hallucination_fixture import make_cases

from tunesmith.eval.hallucination import find_spans, hallucinated, unsupported_spans


def _kinds(text: str) -> list[tuple[str, str]]:
    return [(s.kind, s.text) for s in find_spans(text)]


def test_span_kinds() -> None:
    text = (
        "Dear Wren, invoice INV-2024-0042 of 12 March 2024 was charged $1,200.50 for 16 users; "
        'see https://x.org/a or help@ledgerly.io. Tagged "urgent" by Cobalt Bike Repair (15%).\n'
        "1. Check the CSV export"
    )
    kinds = _kinds(text)
    assert ("identifier", "INV-2024-0042") in kinds
    assert ("date", "12 March 2024") in kinds
    assert ("amount", "$1,200.50") in kinds
    assert ("number", "16") in kinds and ("number", "15%") in kinds
    assert ("url", "https://x.org/a") in kinds and ("email", "help@ledgerly.io") in kinds
    assert ("quote", "urgent") in kinds
    assert ("entity", "Cobalt Bike Repair") in kinds and ("entity", "Wren") in kinds
    # A list marker, a sentence-initial common word, an acronym and "Dear" are not facts.
    assert not any(t in ("1", "Check", "CSV", "Dear") for _, t in kinds)


def test_support_matching() -> None:
    src = ["Hi, Olu Okafor here. Invoice INV-7 of 2024-03-05 charged £1,200 for 16 seats."]
    assert not unsupported_spans("Okafor, Olu: £1200.00 on 5 March 2024 for 16 seats (INV-7).", src)
    assert [s.text for s in unsupported_spans("A refund of £1,300 on 6 March.", src)] == ["£1,300", "6 March"]
    # Numbers inside the source's dates and ids do not support a number of their own.
    assert hallucinated("You have 5 users.", src) == 1.0
    assert [s.text for s in unsupported_spans("Escalated to Priya Novak.", src)] == ["Priya Novak"]


def test_precision_and_recall_on_the_labelled_fixture() -> None:
    cases = make_cases(240, seed=0)
    assert len(cases) >= 200 and sum(c.label for c in cases) == 120
    tp = fp = fn = 0
    for c in cases:
        pred = hallucinated(c.output, [c.system, c.user, c.reference])
        tp += int(pred == 1 and c.label == 1)
        fp += int(pred == 1 and c.label == 0)
        fn += int(pred == 0 and c.label == 1)
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    print(f"hallucination fixture: n={len(cases)} precision={precision:.3f} recall={recall:.3f}")
    assert precision >= 0.9 and recall >= 0.9
