"""One trial: a normal run (data, plan, train) of the trial's config, val scores reported to the pruner at
every training evaluation, then scored on the val split. Its run is in the registry like any other, tagged
with the study and trial number (manifest `tune`)."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith.config import ConfigError, RunConfig
from tunesmith.data.issues import DataError
from tunesmith.eval.result import EvalResult
from tunesmith.metrics_log import FILE_NAME as METRICS_FILE
from tunesmith.metrics_log import read_metrics
from tunesmith.models import ModelError
from tunesmith.progress import make_console
from tunesmith.registry import mark_stage, read_manifest, update_manifest
from tunesmith.train.checkpoint import TrainingDiverged
from tunesmith.train.loop import StopTraining
from tunesmith.train.methods import MethodUnavailableError
from tunesmith.train.plan import Plan, PlanError
from tunesmith.train.precision import PrecisionError
from tunesmith.tune.budget import TrialTime
from tunesmith.tune.space import Space, apply_values
from tunesmith.tune.workers import Worker

if TYPE_CHECKING:
    import optuna

    from tunesmith.data.pipeline import PreparedData

# A trial that ends with one of these failed (it counts, the study goes on); anything else is a bug and
# stops the study.
TRIAL_ERRORS: tuple[type[Exception], ...] = (
    TrainingDiverged,
    PlanError,
    PrecisionError,
    MethodUnavailableError,
    DataError,
    ModelError,
    ConfigError,
)


class Pruned(StopTraining):
    def __init__(self, message: str, step: int):
        super().__init__(message, status="pruned")
        self.step = step


class NotRun(Exception):
    """The trial was not started (it would not finish in the budget left, or the trial limit was reached)."""


@dataclass(frozen=True)
class StudyContext:
    """What every trial of a study shares."""

    base: RunConfig  # the user's config (its tune block included)
    space: Space
    study: str
    folder: Path  # runs_dir/tune/<study>: the page, study.json, trial logs
    metric: str  # the objective: the primary metric on val
    maximize: bool
    pruning: bool
    val_limit: int | None
    eval_every: int  # every trial evaluates at the same steps, so the pruner compares like with like
    storage: str  # for the manifest (password hidden)

    def trial_name(self, number: int) -> str:
        return f"{self.study}.t{number}"

    def trial_config(self, values: dict[str, Any], number: int) -> RunConfig:
        return apply_values(
            self.base, {**self.space.fixed, **values}, self.trial_name(number), eval_every=self.eval_every
        )


@dataclass
class TrialOutcome:
    number: int
    state: str  # complete, pruned, failed
    params: dict[str, Any]
    value: float | None = None
    run_dir: Path | None = None
    val: dict[str, float] = field(default_factory=dict)  # every val metric (tuned)
    targets_met: bool | None = None  # every target's point estimate met on val
    targets_pass: bool | None = None  # every target's val CI clears it
    time: TrialTime | None = None
    note: str = ""


def targets_on_val(cfg: RunConfig, ev: EvalResult) -> tuple[bool | None, bool | None]:
    """(met, pass) of the config's targets on a val evaluation; (None, None) without targets."""
    targets = cfg.parsed_targets()
    if not targets:
        return None, None
    rows = {r["metric"]: r for r in ev.metrics}
    met = all(t.metric in rows and t.met(float(rows[t.metric]["tuned"])) for t in targets)
    passed = all(t.metric in rows and rows[t.metric].get("status") == "PASS" for t in targets)
    return met, passed


def scoring_config(cfg: RunConfig, val_limit: int | None) -> RunConfig:
    """The eval settings a trial is scored with on val: the first `val_limit` examples, no forgetting probe
    and no latency probe (those are for the chosen run's report)."""
    ev = cfg.eval.model_copy(update={"limit": val_limit, "forgetting_probe": False, "latency_probe": 0})
    return cfg.model_copy(update={"eval": ev})


def _intermediate(ctx: StudyContext, cfg: RunConfig, val: dict[str, float]) -> float:
    """What the pruner sees at a training evaluation, oriented like the study: val accuracy (classify, an
    accuracy study), else the val loss, negated in a study that maximises."""
    if ctx.maximize and cfg.train.objective == "classify" and "accuracy" in val:
        return val["accuracy"]
    return -val["loss"] if ctx.maximize else val["loss"]


def _last_record(run_dir: Path) -> dict[str, Any]:
    records = read_metrics(run_dir / METRICS_FILE)
    return records[-1] if records else {}


def run_trial(
    ctx: StudyContext,
    trial: optuna.Trial,
    values: dict[str, Any],
    gate: Callable[[RunConfig, Plan, PreparedData], None],
) -> TrialOutcome:
    """Train and score one trial; its training output goes to the trial's log file. Raises NotRun when
    `gate` refuses it, KeyboardInterrupt as it comes; returns failed trials (TRIAL_ERRORS) as outcomes."""
    from tunesmith.runner import evaluate_trained, train_trial

    number = trial.number
    log_path = ctx.folder / "trials" / f"trial-{number:04d}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    run_dir: Path | None = None
    t0 = time.monotonic()
    outcome = TrialOutcome(number, "failed", values)

    def on_run_dir(path: Path) -> None:
        nonlocal run_dir
        run_dir = path
        outcome.run_dir = path
        trial.set_user_attr("run_id", path.name)
        trial.set_user_attr("run_dir", str(path))
        _tag(ctx, path, number, values, "running")

    with log_path.open("a", encoding="utf-8") as log:
        console = make_console(stderr=False, file=log)
        try:
            cfg = ctx.trial_config(values, number)

            def on_eval(step: int, val: dict[str, float]) -> None:
                trial.report(_intermediate(ctx, cfg, val), step)
                if ctx.pruning and trial.should_prune():
                    raise Pruned(
                        f"pruned at step {step}: val loss {val['loss']:.4f}"
                        + (f", val accuracy {val['accuracy']:.3f}" if "accuracy" in val else "")
                        + " is worse than earlier trials at this step",
                        step,
                    )

            trained = train_trial(cfg, console, on_eval=on_eval, gate=gate, on_run_dir=on_run_dir)
            train_s, steps = trained.result.seconds, trained.result.steps
            setup_s = time.monotonic() - t0 - train_s
            t1 = time.monotonic()
            assert run_dir is not None
            ev = evaluate_trained(
                scoring_config(trained.cfg, ctx.val_limit),
                trained,
                console,
                split="val",
                out_dir=run_dir / "eval_val",
                base_pass=False,  # the same for every trial: only the tuned answers decide one
            )
            eval_s = time.monotonic() - t1
            del trained
            gc.collect()
        except Pruned as e:
            gc.collect()
            last = _last_record(run_dir) if run_dir else {}
            train_s = float(last.get("elapsed_s", 0.0))
            outcome.state, outcome.note = "pruned", str(e)
            outcome.time = TrialTime(time.monotonic() - t0 - train_s, e.step, train_s)
            console.print(str(e))
        except TRIAL_ERRORS as e:
            gc.collect()
            outcome.note = f"{type(e).__name__}: {e}"
            console.print(f"error: {outcome.note}")
            if isinstance(e, PlanError | DataError | ConfigError) and run_dir is None:
                outcome.time = TrialTime(time.monotonic() - t0, 0, 0.0)
        else:
            rows = ev.tuned()
            primary = ev.primary_metric if ev.primary_metric in rows else ctx.metric
            outcome.state = "complete"
            outcome.value = rows.get(primary)
            outcome.val = rows
            outcome.targets_met, outcome.targets_pass = targets_on_val(ctx.base, ev)
            outcome.time = TrialTime(setup_s, steps, train_s, eval_s, ev.n_examples)
            if outcome.value is None:
                outcome.state, outcome.note = "failed", f"the val evaluation has no {ctx.metric}"
    if run_dir is not None:
        _tag(ctx, run_dir, number, values, outcome.state, outcome)
    return outcome


def _tag(
    ctx: StudyContext,
    run_dir: Path,
    number: int,
    values: dict[str, Any],
    state: str,
    outcome: TrialOutcome | None = None,
) -> None:
    """The trial's tag in its run's manifest (and so in the registry)."""
    tag: dict[str, Any] = {
        "study": ctx.study,
        "trial": number,
        "params": values,
        "state": state,
        "metric": ctx.metric,
        "storage": ctx.storage,
        "worker": str(Worker.this()),
    }
    if outcome is not None:
        tag.update(
            value=outcome.value,
            val=outcome.val,
            targets_met_val=outcome.targets_met,
            note=outcome.note or None,
        )
    update_manifest(run_dir, tune=tag)


def mark_killed(run_dir: Path, why: str) -> None:
    """A trial's run whose worker died: its tag and its unfinished train stage say so."""
    if not (run_dir / "manifest.json").is_file():
        return
    manifest = read_manifest(run_dir)
    tag = dict(manifest.get("tune") or {})
    if tag.get("state") in ("complete", "pruned", "failed"):
        return
    update_manifest(run_dir, tune={**tag, "state": "killed", "note": why})
    if manifest["stages"].get("train", {}).get("status") == "running":
        mark_stage(run_dir, "train", "killed")


__all__ = [
    "TRIAL_ERRORS",
    "NotRun",
    "Pruned",
    "StudyContext",
    "TrialOutcome",
    "mark_killed",
    "run_trial",
    "scoring_config",
    "targets_on_val",
]
