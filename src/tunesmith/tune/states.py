"""How a trial's record in the study reads: its state in words, and whether it counts towards --trials."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial, Trial

__all__ = ["counted", "is_recipe", "recipe_trial", "state_of"]


def counted(t: FrozenTrial) -> bool:
    """Whether a trial counts towards the trial limit: it ran to an end (complete, pruned, failed with an
    error). Killed trials and trials never started do not."""
    from optuna.trial import TrialState

    return t.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
        t.state == TrialState.FAIL and "error" in t.user_attrs
    )


def state_of(t: FrozenTrial) -> str:
    """complete, pruned, failed (an error), killed (its worker died), not run, running, waiting."""
    from optuna.trial import TrialState

    if t.state == TrialState.FAIL:
        if "error" in t.user_attrs:
            return "failed"
        if "not_run" in t.user_attrs:
            return "not run"
        return "interrupted" if "interrupted" in t.user_attrs else "killed"
    return t.state.name.lower()


def is_recipe(t: FrozenTrial | Trial) -> bool:
    """Whether the trial trains the config's own recipe: the first trial the study queued, or a retry of it
    after its worker died (studies from before the `recipe` attribute: trial 0)."""
    return bool(t.user_attrs.get("recipe", t.number == 0))


def recipe_trial(trials: list[FrozenTrial]) -> FrozenTrial | None:
    """The complete trial that trained the config's own recipe (the reference a search result must beat)."""
    from optuna.trial import TrialState

    return next((t for t in trials if t.state == TrialState.COMPLETE and is_recipe(t)), None)
