"""The study page and study.json, from a study of made-up trials (no training)."""

from __future__ import annotations

import json
from pathlib import Path

from tunesmith.config import validate_config
from tunesmith.tune.page import summary, write_json, write_page
from tunesmith.tune.space import build_space
from tunesmith.tune.study import choose
from tunesmith.tune.trial import StudyContext


def test_page_has_the_plots_the_changes_and_the_chosen_config(tmp_path: Path) -> None:
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution
    from optuna.trial import TrialState, create_trial

    (tmp_path / "d.jsonl").write_text("")
    tune = {"space": {"train.lr": {"low": 1e-4, "high": 1e-2}, "method.r": [4, 8, 16], "method.name": "lora"}}
    cfg = validate_config(
        {
            "name": "t",
            "data": {"train": "d.jsonl"},
            "train": {"max_steps": 10},
            "eval": {"metrics": ["accuracy"]},
            "tune": tune,
        },
        base_dir=tmp_path,
    )
    space = build_space(cfg, labels=False)
    ctx = StudyContext(cfg, space, "t", tmp_path, "accuracy", True, True, 200, 5, "journal.log")
    dist = {
        "train.lr": FloatDistribution(1e-4, 1e-2, log=True),
        "method.r": CategoricalDistribution([4, 8, 16]),
    }
    study = optuna.create_study(direction="maximize")
    made = [
        (TrialState.COMPLETE, 1e-3, 8, 0.50),
        (TrialState.COMPLETE, 1e-2, 8, 0.40),
        (TrialState.PRUNED, 1e-4, 4, None),
        (TrialState.COMPLETE, 3e-3, 16, 0.75),
    ]
    for n, (state, lr, r, value) in enumerate(made):
        study.add_trial(
            create_trial(
                state=state,
                value=value,
                params={"train.lr": lr, "method.r": r},
                distributions=dist,
                intermediate_values={5: -2.0} if state == TrialState.PRUNED else {5: -1.0},
                user_attrs={"run_id": f"t.t{n}-x", "targets_met": value is not None and value > 0.7},
            )
        )
    best = choose(study, maximize=True)
    assert best is not None and best.number == 3
    result = {
        "trial": 3,
        "test": {
            "primary_metric": "accuracy",
            "value": 0.7,
            "ci": [0.6, 0.8],
            "n_examples": 50,
            "targets_met": True,
            "failed_targets": [],
        },
    }
    html = write_page(tmp_path, study, ctx, best, result).read_text(encoding="utf-8")
    for title in ("Optimisation history", "Parameter importances", "Parallel coordinates", "What changed"):
        assert f"<h2>{title}" in html
    assert html.count("Plotly.newPlot(") == 3  # three figures...
    assert html.count("plotly.js v") == 1  # ...and plotly.js once, inline: the page works offline
    assert "<script src=" not in html  # nothing fetched from a CDN
    # Trial 3 beat trial 0 (trial 1 did not): its row names the parameters that differed.
    assert "method.r: 8 → 16; train.lr: 0.001 → 0.003" in html
    config = html.split("<pre class='config'>", 1)[1].split("</pre>", 1)[0]
    assert "name: t.t3" in config and "lr: 0.003" in config and "r: 16" in config
    assert "accuracy 0.7 [95% CI 0.6, 0.8] on 50 test examples; targets met" in html

    data = json.loads(write_json(tmp_path, summary(study, ctx, best, result)).read_text(encoding="utf-8"))
    assert data["counts"] == {"complete": 3, "pruned": 1}
    assert [t["state"] for t in data["trials"]] == ["complete", "complete", "pruned", "complete"]
    assert data["trials"][2]["value"] is None and data["trials"][2]["intermediate"] == {"5": -2.0}
    assert data["best"]["trial"] == 3 and data["best"]["run_id"] == "t.t3-x"
    assert [i["trial"] for i in data["improvements"]] == [0, 3]
    assert data["result"]["test"]["value"] == 0.7
