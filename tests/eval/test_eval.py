from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tunesmith.config import Target
from tunesmith.data.tokenize import encode_prompt, stop_token_ids
from tunesmith.eval.compare import compare, paired_bootstrap, target_status
from tunesmith.eval.generate import generate
from tunesmith.eval.metrics import (
    exact_match,
    field_accuracy,
    json_valid,
    label_accuracy,
    rouge_l,
    score_all,
    token_f1,
)
from tunesmith.models import load_model


def test_text_metrics() -> None:
    assert exact_match(" a  b ", "a b") == 1.0
    assert token_f1("the cat sat", "the cat sat down") == pytest.approx(2 * 1 * 0.75 / 1.75)
    assert label_accuracy("Billing.", "billing") == 1.0
    assert rouge_l("a b c d", "a b c d") == pytest.approx(1.0)
    assert json_valid('{"a": 1}', "") == 1.0 and json_valid("{oops", "") == 0.0
    ref = '{"queue": "payroll", "priority": "P1"}'
    assert field_accuracy('{"queue": "Payroll", "priority": "P2"}', ref, "queue") == 1.0
    assert field_accuracy('{"queue": "Payroll", "priority": "P2"}', ref, "priority") == 0.0
    assert field_accuracy("not json", ref, "queue") == 0.0
    scores = score_all(["field_accuracy", "json_valid"], ["queue"], ['{"queue": "payroll"}'], [ref])
    assert scores == {"field_accuracy.queue": [1.0], "json_valid": [1.0]}


def test_rouge_l_matches_rouge_score_directly() -> None:
    from rouge_score import rouge_scorer

    pred, ref = "the tuned model routes tickets", "the model routes every ticket"
    direct = rouge_scorer.RougeScorer(["rougeL"]).score(ref, pred)["rougeL"].fmeasure
    assert rouge_l(pred, ref) == pytest.approx(direct)


def test_bootstrap_ci_and_target_status() -> None:
    rng = np.random.default_rng(1)
    base = list(rng.integers(0, 2, 200).astype(float))
    tuned = [1.0] * 150 + [0.0] * 50
    (lo, hi), (tlo, thi) = paired_bootstrap(base, tuned)
    delta = np.mean(tuned) - np.mean(base)
    assert lo < delta < hi and tlo < 0.75 < thi
    t = Target("accuracy", ">=", 0.5)
    assert target_status(t, 0.75, (0.7, 0.8)) == "PASS"
    assert target_status(t, 0.52, (0.45, 0.6)) == "UNCERTAIN"
    assert target_status(t, 0.3, (0.2, 0.4)) == "FAIL"
    rows = compare({"accuracy": base}, {"accuracy": tuned}, [t])
    assert rows[0].status == "PASS" and rows[0].tuned == 0.75


def test_batched_generation_equals_one_by_one(tiny_model_dir: Path, tokenizer: Any) -> None:
    """Left padding and the KV cache must not change any prompt's greedy output: 7 prompts of different
    lengths in batches of 3 (so every batch pads) give the same tokens as each prompt alone."""
    model = load_model(str(tiny_model_dir))
    convs = [
        [{"role": "user", "content": "short"}],
        [{"role": "user", "content": "a much longer prompt with many more words in it than the first"}],
        [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "middle length prompt"}],
        [{"role": "user", "content": "x " * 40}],
        [{"role": "user", "content": "Invoice INV-2024-0042 was charged twice: £1,200.50 on 12 March."}],
        [{"role": "system", "content": "Route the ticket."}, {"role": "user", "content": "payslip wrong"}],
        [{"role": "user", "content": "?"}],
    ]
    prompts = [encode_prompt(tokenizer, c) for c in convs]
    assert len({len(p) for p in prompts}) >= 6  # lengths differ: batches need padding
    stops = stop_token_ids(tokenizer)
    batched = generate(model, tokenizer, prompts, 12, batch_size=3, stop_ids=stops)
    single = [generate(model, tokenizer, [p], 12, batch_size=1, stop_ids=stops)[0] for p in prompts]
    assert [g.text for g in batched] == [g.text for g in single]
    assert [g.new_tokens for g in batched] == [g.new_tokens for g in single]
    assert all(g.new_tokens > 0 for g in batched)
    assert len({g.batch for g in batched}) == 3
