"""Metric values agree with the reference implementations called directly; CIs cover at the nominal rate."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from tunesmith.eval.classify import classification_report, encode, macro_f1_stat
from tunesmith.eval.compare import compare, mcnemar, paired_bootstrap
from tunesmith.eval.metrics import bleu, chrf, facts_coverage, readability, rouge_l, score_all

PREDS = [
    "The invoice was paid twice in April.",
    "Reset the password from the login page",
    "payroll",
    "",
    "The tuned model routes tickets to the right queue quickly.",
]
REFS = [
    "The April invoice was charged twice.",
    "You can reset your password on the login page.",
    "payroll",
    "billing",
    "The model routes every ticket to the right queue.",
]


def test_bleu_chrf_rouge_match_the_libraries() -> None:
    import sacrebleu
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    for p, r in zip(PREDS, REFS, strict=True):
        assert bleu(p, r) == pytest.approx(sacrebleu.sentence_bleu(p, [r]).score / 100)
        assert chrf(p, r) == pytest.approx(sacrebleu.sentence_chrf(p, [r]).score / 100)
        assert rouge_l(p, r) == pytest.approx(scorer.score(r, p)["rougeL"].fmeasure)
    scores = score_all(["bleu", "chrf"], [], PREDS, REFS)
    assert scores["bleu"][2] == pytest.approx(1.0) and scores["chrf"][3] == 0.0


def test_classification_matches_scikit_learn() -> None:
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_score, recall_score

    rng = random.Random(0)
    labels = ["billing", "access", "payroll", "mobile"]
    refs = [rng.choice(labels) for _ in range(300)]
    preds = [r if rng.random() < 0.7 else rng.choice([*labels, "no idea"]) for r in refs]
    preds = [p.upper() + "." if i % 7 == 0 else p for i, p in enumerate(preds)]  # case and full stop ignored
    rep = classification_report(preds, refs)
    labs, y_true, y_pred = encode(preds, refs)
    assert "(other)" in y_pred and rep["labels"] == sorted(labels)
    assert rep["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    for avg in ("macro", "micro"):
        kw = {"labels": labs, "average": avg, "zero_division": 0}
        assert rep[f"{avg}_f1"] == pytest.approx(f1_score(y_true, y_pred, **kw))
        assert rep[f"{avg}_precision"] == pytest.approx(precision_score(y_true, y_pred, **kw))
        assert rep[f"{avg}_recall"] == pytest.approx(recall_score(y_true, y_pred, **kw))
    per = f1_score(y_true, y_pred, labels=labs, average=None, zero_division=0)
    assert [rep["per_label"][lab]["f1"] for lab in labs] == pytest.approx(list(per))
    assert rep["confusion"] == confusion_matrix(y_true, y_pred, labels=[*labs, "(other)"]).tolist()
    # The bootstrap's fast macro F1 equals scikit-learn's on resampled index sets, repeats included.
    stat = macro_f1_stat(preds, refs)
    nrng = np.random.default_rng(0)
    for _ in range(20):
        idx = nrng.integers(0, len(refs), len(refs))
        direct = f1_score(
            [y_true[i] for i in idx], [y_pred[i] for i in idx], labels=labs, average="macro", zero_division=0
        )
        assert stat(idx) == pytest.approx(direct)


def test_readability_and_facts() -> None:
    import textstat

    text = "The refund was sent on Monday. It should arrive within three working days."
    assert readability(text) == pytest.approx(textstat.flesch_kincaid_grade(text))
    assert readability("") is None
    # Words outside the pronunciation dictionary (names, a tiny model's nonsense) are scored, not an error.
    assert readability("Ledgerly routes ensoryensoryensory tickets") is not None
    assert facts_coverage("Queue: Payroll, priority P2.", ["payroll", "P2", "P1"]) == pytest.approx(2 / 3)
    assert facts_coverage("P21", ["P2"]) == 0.0  # whole words only
    assert facts_coverage("anything", []) is None
    scores = score_all(["facts"], [], ["payroll P2", "x"], ["", ""], facts=[["P2"], []])
    assert scores["facts"] == [1.0, None]


def test_mcnemar_matches_scipy() -> None:
    from scipy.stats import binomtest, chi2

    # Small discordant count: exact binomial.
    base = [1, 1, 0, 0, 0, 0, 0, 1, 1, 0]
    tuned = [1, 0, 1, 1, 1, 1, 0, 1, 1, 1]
    p, test, (b, c) = mcnemar(base, tuned)
    assert (test, b, c) == ("mcnemar-exact", 1, 5)
    assert p == pytest.approx(binomtest(1, 6, 0.5).pvalue)
    # Many discordant pairs: chi-square with continuity correction.
    rng = np.random.default_rng(0)
    base = list(rng.integers(0, 2, 400))
    tuned = [x if rng.random() < 0.6 else 1 for x in base]
    p, test, (b, c) = mcnemar(base, tuned)
    assert test == "mcnemar-chi2" and b + c >= 25
    assert p == pytest.approx(chi2.sf((abs(b - c) - 1) ** 2 / (b + c), 1))
    assert mcnemar([1, 0], [1, 0])[0] == 1.0


def test_compare_rows_carry_relative_delta_and_mcnemar() -> None:
    rows = compare(
        {
            "accuracy": [0.0, 1.0, 0.0, 0.0],
            "facts": [0.5, None, 1.0, 0.0],
            "hallucination": [1.0, 0.0, 1.0, 1.0],
        },
        {
            "accuracy": [1.0, 1.0, 1.0, 0.0],
            "facts": [1.0, 1.0, None, 0.5],
            "hallucination": [0.0, 0.0, 1.0, 0.0],
        },
        [],
    )
    acc, facts, hall = rows
    assert acc.delta == pytest.approx(0.5) and acc.delta_rel == pytest.approx(2.0)
    assert acc.test == "mcnemar-exact" and acc.discordant == (0, 2) and acc.p_value == pytest.approx(0.5)
    assert (
        facts.n == 2 and facts.base == pytest.approx(0.25) and facts.p_value is None
    )  # pairs with both scores
    assert hall.higher_is_better is False and hall.delta == pytest.approx(-0.5)


def test_bootstrap_ci_covers_the_true_delta_at_the_nominal_rate() -> None:
    """Simulate 1000 test sets of 100 paired examples from a known distribution; the 95% CI of the mean
    delta should contain the true delta in about 95% of them (measured: see README)."""
    rng = np.random.default_rng(12345)
    n_sets, n = 1000, 100
    # Base correct with p=0.55; tuned keeps a base success with 0.9 and fixes a failure with 0.4:
    # P(tuned correct) = 0.55*0.9 + 0.45*0.4 = 0.675, true delta = 0.125.
    true_delta = 0.55 * 0.9 + 0.45 * 0.4 - 0.55
    covered = 0
    for i in range(n_sets):
        base = rng.random(n) < 0.55
        tuned = np.where(base, rng.random(n) < 0.9, rng.random(n) < 0.4)
        (lo, hi), _ = paired_bootstrap(base.astype(float), tuned.astype(float), n=1000, seed=i)
        covered += lo <= true_delta <= hi
    coverage = covered / n_sets
    print(f"bootstrap coverage: {coverage:.3f}")
    assert 0.92 <= coverage <= 0.98


def test_bootstrap_coverage_continuous_scores() -> None:
    """The same for a continuous, skewed score (like token F1): Beta-distributed with a paired shift."""
    rng = np.random.default_rng(7)
    n_sets, n = 600, 120
    covered = 0
    for i in range(n_sets):
        base = rng.beta(2, 5, n)
        tuned = np.clip(base + rng.normal(0.05, 0.15, n), 0, 1)
        # True mean delta of clip(b + e) - b, by a large Monte Carlo sample once.
        if i == 0:
            bb = rng.beta(2, 5, 2_000_000)
            true_delta = float(np.mean(np.clip(bb + rng.normal(0.05, 0.15, bb.size), 0, 1) - bb))
        (lo, hi), _ = paired_bootstrap(base, tuned, n=1000, seed=i)
        covered += lo <= true_delta <= hi
    coverage = covered / n_sets
    print(f"bootstrap coverage (continuous): {coverage:.3f}")
    assert 0.92 <= coverage <= 0.98
    assert math.isfinite(true_delta)
