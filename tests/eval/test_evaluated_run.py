"""The eval stage end to end on a small real run: eval.json, predictions, forgetting probe, report sections."""

from __future__ import annotations

import json
from pathlib import Path

from tunesmith.eval.forgetting import answer_correct, probe_items, probe_text, summarize


def test_eval_json_has_every_capability(evaluated_run: Path) -> None:
    ev = json.loads((evaluated_run / "eval" / "eval.json").read_text())
    names = [r["metric"] for r in ev["metrics"]]
    assert names == [
        "accuracy",
        "macro_f1",
        "token_f1",
        "bleu",
        "chrf",
        "perplexity",
        "facts",
        "readability",
        "hallucination",
    ]
    rows = {r["metric"]: r for r in ev["metrics"]}
    assert rows["accuracy"]["test"] in ("mcnemar-exact", "mcnemar-chi2")
    assert rows["perplexity"]["higher_is_better"] is False and rows["perplexity"]["base"] > 1
    assert 0 < rows["facts"]["n"] < ev["n_examples"]  # only rows with facts
    assert rows["accuracy"]["status"] == "FAIL" and ev["failed_targets"] == ["accuracy"]
    cl = ev["classification"]["tuned"]
    assert set(cl) >= {"accuracy", "macro_f1", "micro_f1", "per_label", "confusion"}
    for which in ("base", "tuned"):
        sp = ev["speed"][which]
        assert sp["tokens_per_s"] > 0 and sp["single"]["n"] == 2 and sp["single"]["latency_s_p50"] > 0
    fg = ev["forgetting"]
    assert fg["qa"]["n"] == len(probe_items()) and fg["text_perplexity"]["base"] > 1
    preds = [
        json.loads(line) for line in (evaluated_run / "eval" / "predictions.jsonl").read_text().splitlines()
    ]
    assert all("hallucinated_spans" in p and "ref_nll" in p["scores"] for p in preds)
    assert any("facts" in p for p in preds)
    assert len((evaluated_run / "eval" / "forgetting.jsonl").read_text().splitlines()) == len(probe_items())


def test_probe_is_package_data() -> None:
    import tomllib

    items = probe_items()
    assert 40 <= len(items) <= 60 and all(it["question"] and it["answers"] for it in items)
    assert len(set(it["question"] for it in items)) == len(items)
    assert len(probe_text().split()) > 300
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert "eval/probe/*" in pyproject["tool"]["setuptools"]["package-data"]["tunesmith"]


def test_forgetting_warning() -> None:
    items = probe_items()
    right = [it["answers"][0] for it in items]
    assert answer_correct("It is Paris.", ["Paris"]) == 1.0 and answer_correct("Parisian", ["Paris"]) == 0.0
    ok = summarize(right, right, 10.0, 10.2, margin=0.05)
    assert not ok["degraded"] and ok["qa"]["delta"] == 0.0
    worse = summarize(right, ["no idea"] * len(items), 10.0, 12.0, margin=0.05)
    assert worse["degraded"] and len(worse["warnings"]) == 2
    assert "fell from 1.000 to 0.000" in worse["warnings"][0] and "+20.0%" in worse["warnings"][1]
