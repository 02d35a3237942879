"""tune says when the chosen trial's val lead over the config's own recipe is within noise."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
from optuna.trial import TrialState, create_trial

from tunesmith.tune.study import recipe_if_tied, val_lead


def _trial(tmp_path: Path, number: int, scores: list[float], met: bool = False) -> optuna.trial.FrozenTrial:
    run_dir = tmp_path / f"t{number}"
    (run_dir / "eval_val").mkdir(parents=True)
    rows = [{"id": i, "scores": {"accuracy": {"base": None, "tuned": s}}} for i, s in enumerate(scores)]
    (run_dir / "eval_val" / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return create_trial(
        state=TrialState.COMPLETE,
        value=sum(scores) / len(scores),
        params={},
        distributions={},
        user_attrs={"run_dir": str(run_dir), "targets_met": met},
    )


def _study(tmp_path: Path, *trials: list[float], met: tuple[bool, ...] = ()) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    for i, scores in enumerate(trials):
        study.add_trial(_trial(tmp_path, i, scores, met[i] if met else False))
    return study


def test_two_examples_out_of_thirty_are_noise(tmp_path: Path) -> None:
    # The support-tickets tune: 11/30 vs 13/30 on val.
    recipe = [1.0] * 11 + [0.0] * 19
    chosen = [1.0] * 9 + [0.0] * 2 + [1.0] * 4 + [0.0] * 15
    study = _study(tmp_path, recipe, chosen)
    lead = val_lead(study, study.trials[1], "accuracy", maximize=True)
    assert lead is not None and lead["n"] == 30 and lead["within_noise"]
    assert abs(lead["delta"] - 2 / 30) < 1e-9 and lead["ci"][0] < 0 < lead["ci"][1]
    # So the result is the config's own recipe, unless only the other trial met the targets on val.
    chosen_trial = recipe_if_tied(study, study.trials[1], lead, "targets_met")
    assert chosen_trial is not None and chosen_trial.number == 0
    study = _study(tmp_path / "met", recipe, chosen, met=(False, True))
    assert recipe_if_tied(study, study.trials[1], lead, "targets_met") is None


def test_a_clear_lead_is_not_noise_and_trial_0_needs_no_comparison(tmp_path: Path) -> None:
    study = _study(tmp_path, [0.0] * 200, [1.0] * 120 + [0.0] * 80)
    lead = val_lead(study, study.trials[1], "accuracy", maximize=True)
    assert lead is not None and not lead["within_noise"] and lead["ci"][0] > 0.5
    assert recipe_if_tied(study, study.trials[1], lead, "targets_met") is None
    assert val_lead(study, study.trials[0], "accuracy", maximize=True) is None
    # Lower is better (a loss): the same numbers read the other way.
    lead = val_lead(study, study.trials[1], "accuracy", maximize=False)
    assert lead is not None and lead["delta"] < 0 and lead["within_noise"]
