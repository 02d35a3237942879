"""The search space, trial configs, the time budget and the page's "what changed": no model needed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tunesmith.config import ConfigError, RunConfig, parse_duration, validate_config
from tunesmith.data.formats import Example
from tunesmith.tune.budget import Budget, TrialTime, estimate_final_eval_s, estimate_trial_s, trial_times
from tunesmith.tune.page import improvements
from tunesmith.tune.space import SpaceError, apply_values, build_space, first_trial, label_rows
from tunesmith.tune.study import space_clashes


def _cfg(tmp_path: Path, tune: dict[str, Any] | None = None, **top: Any) -> RunConfig:
    (tmp_path / "d.jsonl").write_text("")
    raw: dict[str, Any] = {
        "name": "t",
        "data": {"train": "d.jsonl"},
        "method": {"name": "lora", "r": 8},
        "train": {"lr": 1e-3, "max_steps": 40, "batch_size": 8},
        "eval": {"metrics": ["accuracy"]},
        **top,
    }
    if tune is not None:
        raw["tune"] = tune
    return validate_config(raw, base_dir=tmp_path)


def _ex(answer: str, label: str | None = None) -> Example:
    return Example(
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": answer}], "f:1", label=label
    )


def test_default_space_holds_what_applies(tmp_path: Path) -> None:
    space = build_space(_cfg(tmp_path), labels=True)
    dims = {d.name: d for d in space.dims}
    assert set(dims) == {
        "train.lr",
        "train.max_steps",
        "train.batch_size",
        "method.name",
        "method.r",
        "method.alpha",
        "method.dropout",
        "train.objective",
        "train.head_lr",
        "model",
    }
    lr = dims["train.lr"]
    assert (lr.low, lr.high, lr.log) == (pytest.approx(1e-4), pytest.approx(1e-2), True)
    assert (dims["train.max_steps"].low, dims["train.max_steps"].high) == (20, 80)
    assert dims["train.batch_size"].choices == (4, 8, 16)
    assert dims["method.name"].choices == ("lora", "dora")
    assert 8 in (dims["method.r"].choices or ())  # the config's own value is a choice
    # head_lr only where the trial is a classifier; the objective and the method come first.
    assert dims["train.head_lr"].when == ("train.objective", ("classify",))
    assert [d.name for d in space.dims[:3]] == ["model", "train.objective", "method.name"]
    # A label task on a decoder also tries the built-in encoder; the rest is searched on the config's base.
    assert dims["model"].choices == ("builtin:smollm2-135m-instruct", "builtin:all-minilm-l6-v2")
    assert dims["train.lr"].when == ("model", ("builtin:smollm2-135m-instruct",))
    assert any("data mix" in n for n in space.notes)


def test_tune_block_narrows_and_fixes(tmp_path: Path) -> None:
    tune = {
        "space": {
            "train.lr": {"low": 1e-5, "high": 1e-3},
            "method.r": [4, 16],
            "train.batch_size": 4,  # fixed
            "train.epochs": {"low": 1, "high": 3},  # replaces max_steps
            "method.name": "lora",
        }
    }
    space = build_space(_cfg(tmp_path, tune), labels=False)
    dims = {d.name: d for d in space.dims}
    assert set(dims) == {"train.lr", "method.r", "method.alpha", "method.dropout", "train.epochs"}
    assert (dims["train.lr"].low, dims["train.lr"].high, dims["train.lr"].log) == (1e-5, 1e-3, True)
    assert dims["method.r"].choices == (4, 16)
    assert dims["train.epochs"].log is False
    assert space.fixed == {"train.batch_size": 4, "method.name": "lora"}
    # No label rows: sft only, so no classify head to tune either.
    assert "train.objective" not in dims and "train.head_lr" not in dims


def test_lora_options_only_with_a_lora_method(tmp_path: Path) -> None:
    space = build_space(_cfg(tmp_path, {"space": {"method.name": ["lora", "ia3"]}}), labels=False)
    assert space.get("method.r") is not None
    assert space.get("method.r").when == ("method.name", ("lora",))  # type: ignore[union-attr]
    ia3 = build_space(_cfg(tmp_path, {"space": {"method.name": "ia3"}}), labels=False)
    assert ia3.get("method.r") is None and ia3.get("method.name") is None
    with pytest.raises(SpaceError, match="method.r: applies to lora"):
        build_space(_cfg(tmp_path, {"space": {"method.name": "ia3", "method.r": [4, 8]}}), labels=False)


def test_space_errors_are_listed(tmp_path: Path) -> None:
    with pytest.raises(SpaceError) as e:
        build_space(
            _cfg(tmp_path, {"space": {"train.objective": ["sft", "classify"], "train.batch_size": [0, 8]}}),
            labels=False,
        )
    text = str(e.value)
    assert "classify needs answers that are labels" in text
    with pytest.raises(SpaceError, match=r"train.batch_size = 0: .*greater than 0"):
        build_space(_cfg(tmp_path, {"space": {"train.batch_size": [0, 8]}}), labels=False)
    with pytest.raises(SpaceError, match="primary metric is token_f1"):
        build_space(
            _cfg(
                tmp_path, {"space": {"train.objective": ["sft", "classify"]}}, eval={"metrics": ["token_f1"]}
            ),
            labels=True,
        )
    # An encoder base classifies only: no objective to choose, and asking for one is an error.
    assert build_space(_cfg(tmp_path), labels=True, encoder=True).get("train.objective") is None
    with pytest.raises(SpaceError, match="is an encoder"):
        build_space(
            _cfg(tmp_path, {"space": {"train.objective": ["sft", "classify"]}}), labels=True, encoder=True
        )
    with pytest.raises(ConfigError, match="did you mean 'train.lr'"):
        _cfg(tmp_path, {"space": {"train.lrr": 1e-3}})


def test_trial_config_keeps_what_the_config_leaves_out(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    trial = apply_values(
        cfg, {"method.name": "ia3", "train.epochs": 2.0, "train.lr": 3e-3}, "t.t4", eval_every=5
    )
    assert trial.name == "t.t4" and trial.tune is None
    assert trial.method.name == "ia3" and trial.method.r == 16  # LoRA's rank went back to its default
    assert trial.train.max_steps is None and trial.train.epochs == 2.0 and trial.train.lr == 3e-3
    assert trial.train.eval_every == 5
    # What the user left out is still unset (so a data-derived recipe may fill it), what the trial sets is set.
    assert "weight_decay" not in trial.train.model_fields_set
    assert {"lr", "epochs", "eval_every", "batch_size"} <= trial.train.model_fields_set


def test_first_trial_is_the_config_recipe(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, {"space": {"train.lr": {"low": 1e-2, "high": 1e-1}}})
    values = first_trial(cfg, build_space(cfg, labels=True))
    assert "train.lr" not in values  # 1e-3 lies outside the range: sampled instead
    assert values["train.max_steps"] == 40 and values["method.r"] == 8 and values["method.name"] == "lora"
    assert values["train.objective"] == "sft" and "train.head_lr" not in values


def test_label_rows() -> None:
    labels = [_ex(q) for q in ["billing", "access"] * 4]
    assert label_rows(labels, [_ex("access")])
    assert not label_rows(labels, [_ex("refunds")])  # a held-out answer outside the set
    assert not label_rows([_ex(f"free text answer number {i}") for i in range(8)], [])
    assert label_rows([_ex("x", label=lab) for lab in ["a", "b"] * 3], [])


def test_durations() -> None:
    assert parse_duration("45m") == 2700 and parse_duration("2h") == 7200
    assert parse_duration("1h30m") == 5400 and parse_duration("90s") == 90 and parse_duration("12") == 12
    for bad in ("2x", "", "h", "0m"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_budget_estimate_and_gate() -> None:
    history = [TrialTime(2.0, 10, 20.0, 4.0, 8), TrialTime(4.0, 20, 40.0, 6.0, 8)]
    # setup (median 3) + 30 steps x 2 s + scoring (median 5)
    assert estimate_trial_s(history, 30) == pytest.approx(68.0)
    assert estimate_trial_s([], 30) is None
    assert estimate_trial_s([], 30, plan_step_s=0.5) == pytest.approx(15.0)
    assert estimate_final_eval_s(history, 16) == pytest.approx(16 * 0.625)
    now = [0.0]
    budget = Budget(100.0, clock=lambda: now[0])
    assert budget.fits(68.0) and not budget.fits(68.0, reserve_s=40.0)
    now[0] = 50.0
    assert budget.left() == 50.0 and not budget.fits(68.0) and budget.fits(None)
    now[0] = 100.0
    assert not budget.fits(None)
    assert Budget(None).fits(1e9)


def test_improvements_name_what_changed() -> None:
    def rec(n: int, v: float | None, state: str = "complete", **params: Any) -> dict[str, Any]:
        return {"number": n, "value": v, "state": state, "params": params}

    records = [
        rec(0, 0.5, lr=1e-3, r=8),
        rec(1, 0.4, lr=1e-2, r=8),
        rec(2, None, "pruned", lr=1e-5, r=4),
        rec(3, 0.7, lr=1e-3, r=16),
    ]
    imp = improvements(records, maximize=True)
    assert [i["trial"] for i in imp] == [0, 3]
    assert imp[1]["changed"] == {"r": [8, 16]} and imp[1]["delta"] == pytest.approx(0.2)
    assert [i["trial"] for i in improvements(records, maximize=False)] == [0, 1]


def test_what_changed_reads_what_each_trial_trained(tmp_path: Path) -> None:
    """A trial on another base samples nothing else: the page compares what the two trials trained with."""
    cfg = _cfg(tmp_path)
    space = build_space(cfg, labels=True)
    encoder = apply_values(cfg, {"model": "builtin:all-minilm-l6-v2"}, "t.t1")
    enc = space.settings(encoder.model_copy(update={"train": encoder.train.model_copy(update={"lr": 1e-4})}))
    assert enc["model"] == "builtin:all-minilm-l6-v2" and enc["method.name"] == "full"
    assert enc["train.objective"] == "classify" and enc["train.lr"] == 1e-4
    assert "method.r" not in enc  # LoRA's rank means nothing to a full fine-tune
    own = space.settings(cfg)
    assert "train.head_lr" not in own and own["method.r"] == 8  # sft: no head
    records = [
        {"number": 0, "value": 0.8, "state": "complete", "params": {"model": cfg.model}, "settings": own},
        {"number": 1, "value": 0.9, "state": "complete", "params": {"model": encoder.model}, "settings": enc},
    ]
    changed = improvements(records, maximize=True)[1]["changed"]
    assert changed["model"] == [cfg.model, "builtin:all-minilm-l6-v2"]
    assert changed["method.name"] == ["lora", "full"] and changed["train.lr"] == [1e-3, 1e-4]
    assert changed["method.r"] == [8, None]


def test_a_resumed_study_refuses_a_space_optuna_cannot_continue(tmp_path: Path) -> None:
    old = [d.as_dict() for d in build_space(_cfg(tmp_path), labels=False).dims]
    wider = _cfg(tmp_path, {"space": {"train.lr": {"low": 1e-6, "high": 1e-1}}})  # new bounds: fine
    assert space_clashes(old, build_space(wider, labels=False)) == []
    changed = _cfg(tmp_path, {"space": {"train.lr": [1e-3, 1e-2], "method.r": [4, 64]}})
    assert space_clashes(old, build_space(changed, labels=False)) == ["train.lr", "method.r"]


def test_another_base_trains_its_own_recipe(tmp_path: Path) -> None:
    """A trial on the built-in encoder: classify with full fine-tuning, and what the config set for its own
    base's recipe (lr, batch, steps) left to the encoder's recipe; a value fixed by tune.space still holds."""
    cfg = _cfg(tmp_path)
    trial = apply_values(cfg, {"model": "builtin:all-minilm-l6-v2"}, "t.t1", eval_every=5)
    assert trial.model == "builtin:all-minilm-l6-v2"
    assert trial.train.objective == "classify" and trial.method.name == "full"
    assert not {"lr", "batch_size", "max_steps", "eval_every"} & trial.train.model_fields_set
    fixed = apply_values(cfg, {"model": "builtin:all-minilm-l6-v2", "train.max_steps": 4}, "t.t2")
    assert fixed.train.max_steps == 4
    # The config's own base changes nothing.
    same = apply_values(cfg, {"model": cfg.model, "train.lr": 2e-3}, "t.t3")
    assert same.method.name == "lora" and same.train.lr == 2e-3 and same.train.max_steps == 40


def test_base_model_choices_are_checked(tmp_path: Path) -> None:
    # A fixed objective rules the encoder out of the default space (it trains classify only).
    assert (
        build_space(_cfg(tmp_path, {"space": {"train.objective": "sft"}}), labels=True).get("model") is None
    )
    assert build_space(_cfg(tmp_path), labels=False).get("model") is None
    with pytest.raises(SpaceError, match="must hold the config's own model"):
        build_space(
            _cfg(tmp_path, {"space": {"model": ["builtin:all-minilm-l6-v2", "./other"]}}), labels=True
        )
    with pytest.raises(SpaceError, match="is an encoder, which classifies, and these answers are not labels"):
        build_space(
            _cfg(
                tmp_path, {"space": {"model": ["builtin:smollm2-135m-instruct", "builtin:all-minilm-l6-v2"]}}
            ),
            labels=False,
        )


def test_a_trial_is_timed_by_the_trials_on_its_base() -> None:
    """SmolLM2 steps do not estimate an encoder's: the budget gate reads the trials on the trial's base only."""
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import create_trial

    dist = {"model": CategoricalDistribution(["dec", "enc"])}

    def done(model: str | None, train_s: float) -> Any:
        params = {} if model is None else {"model": model}
        time = TrialTime(setup_s=1.0, steps=10, train_s=train_s, eval_s=2.0, n_val=4).as_dict()
        return create_trial(
            value=0.5, params=params, distributions=dist if params else {}, user_attrs={"time": time}
        )

    trials = [done("dec", 100.0), done(None, 80.0), done("enc", 10.0)]  # the second trained the config's base
    assert [t.train_s for t in trial_times(trials, "dec", own="dec")] == [100.0, 80.0]
    assert estimate_trial_s(trial_times(trials, "enc", own="dec"), steps=750) == 1.0 + 750 * 1.0 + 2.0
    assert estimate_trial_s(trial_times(trials, "other", own="dec"), steps=100, plan_step_s=0.5) == 50.0
    assert len(trial_times(trials)) == 3
