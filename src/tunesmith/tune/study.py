"""The study: Optuna storage, sampler and pruner, the loop of trials of one worker, and its end (the chosen
trial scored once on test, the page and study.json).

Storage. By default a journal file, `<runs_dir>/tune/<study>/journal.log` (Optuna's JournalStorage with a
file backend and an O_EXCL lock file): every change is one appended line, written under the lock and
fsynced, so several local worker processes share it without SQLite's "database is locked" under concurrent
writers, and a process killed mid-write leaves at most an unfinished last line, which readers skip. A
`--storage` URL (sqlite:///..., postgresql://..., mysql://...) is an Optuna RDB storage: a database server
is what workers on several machines share. Any other value is the path of a journal file (on a shared
filesystem, say).

Sampler: TPE, seeded from train.seed and the trial number (so two workers starting at once do not draw the
same values, and one worker's study is reproducible), with the constant liar for trials still running.
"""

from __future__ import annotations

import fcntl
import json
import math
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from rich.console import Console
from rich.text import Text

from tunesmith.config import MethodConfig, RunConfig, parse_duration
from tunesmith.eval.metrics import higher_is_better
from tunesmith.eval.result import EvalResult, has_eval, read_eval
from tunesmith.registry import files_hash, read_manifest, update_manifest
from tunesmith.train.loop import total_steps
from tunesmith.train.methods import MethodUnavailableError, check_method_available
from tunesmith.train.plan import Plan
from tunesmith.tune.budget import Budget, TrialTime, estimate_final_eval_s, estimate_trial_s, trial_times
from tunesmith.tune.space import (
    Space,
    SpaceError,
    apply_values,
    build_space,
    check_first_trials,
    first_trial,
    label_rows,
)
from tunesmith.tune.states import counted, is_recipe, recipe_trial, state_of
from tunesmith.tune.trial import NotRun, StudyContext, TrialOutcome, mark_killed, run_trial
from tunesmith.tune.workers import Heartbeat, Worker, is_alive, stale_trials

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from tunesmith.data.pipeline import PreparedData

STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# A worker stops after this many failed trials in a row (a config that cannot train fails every trial).
MAX_FAILURES_IN_A_ROW = 3


class TuneError(Exception):
    """A search that cannot start as asked (limits, storage, space, a study started with other settings):
    `tunesmith tune` exits 2 with the message."""


@dataclass(frozen=True)
class TuneOptions:
    budget_s: float | None = None
    trials: int | None = None
    resume: bool = False
    storage: str | None = None  # None: the journal file in the study folder
    study: str | None = None  # None: the config's name


@dataclass
class TuneOutcome:
    study: str
    folder: Path
    stopped: str  # why this worker's search ended
    trials: dict[str, int]  # state -> count, this study
    best: dict[str, Any] | None  # the chosen trial (number, value, params, run_id)
    chosen_run: Path | None
    test: dict[str, Any] | None  # the chosen run's test evaluation (None: not scored by this worker)
    page: Path | None = None
    summary: Path | None = None
    note: str = ""

    @property
    def targets_met(self) -> bool:
        return self.test is not None and bool(self.test.get("targets_met"))


def study_metric(cfg: RunConfig) -> str:
    """The objective: the primary metric as the eval reports it for this objective."""
    if cfg.train.objective == "classify":
        return "accuracy"
    if cfg.train.objective == "pretrain":
        return "held_out_loss"
    return cfg.eval.primary


def maximizes(metric: str) -> bool:
    better = higher_is_better(metric)
    if better is None:
        raise TuneError(
            f"the primary metric {metric} has no better direction (it is a property, not a score); "
            "set eval.primary_metric to one that does"
        )
    return better


def redact(url: str) -> str:
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


def open_storage(url: str | None, folder: Path) -> Any:
    """An Optuna storage (module docstring)."""
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    if url is None or not re.match(r"^[a-z][a-z0-9+]*://", url):
        path = folder / "journal.log" if url is None else Path(url).expanduser().resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path))))
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # Workers queue on SQLite's file lock for up to a minute instead of failing at once.
        kwargs = {"connect_args": {"timeout": 60}}
    try:
        return RDBStorage(url, engine_kwargs=kwargs)
    except ImportError as e:
        raise TuneError(
            f"storage {redact(url)}: {e} (a PostgreSQL URL needs `pip install psycopg2-binary`)"
        ) from e
    except Exception as e:  # sqlalchemy's errors: a wrong URL, a server that does not answer
        raise TuneError(f"storage {redact(url)}: {type(e).__name__}: {e}") from e


def _sampler(seed: int, startup: int) -> Any:
    from optuna.samplers import TPESampler

    class TrialSeededTPE(TPESampler):
        """TPE whose random state is reset from (seed, trial number) before each trial: the study replays
        the same draws, and two workers asking at once draw different values."""

        def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
            s = (seed * 1_000_003 + trial.number) % 2**32
            self._rng.rng.seed(s)
            self._random_sampler._rng.rng.seed(s)
            super().before_trial(study, trial)

    return TrialSeededTPE(seed=seed, n_startup_trials=startup)


def _pruner(cfg: RunConfig, enabled: bool, eval_every: int) -> Any:
    from optuna.pruners import MedianPruner, NopPruner, SuccessiveHalvingPruner

    tc = cfg.tune
    assert tc is not None
    if not enabled or tc.pruner == "none":
        return NopPruner()
    warmup = tc.prune_warmup_evals * eval_every + (1 if tc.prune_warmup_evals else 0)
    if tc.pruner == "halving":
        return SuccessiveHalvingPruner(min_resource=eval_every * max(1, tc.prune_warmup_evals))
    return MedianPruner(n_startup_trials=tc.prune_startup_trials, n_warmup_steps=warmup)


def fingerprint(cfg: RunConfig) -> dict[str, Any]:
    """What a study's trials depend on: the config without its tune block and paths, and the data's content
    (workers on other machines hold the same files at other paths)."""
    d = cfg.model_dump(mode="json", exclude={"tune", "runs_dir", "name"})
    for key in ("train", "val", "test"):
        d["data"].pop(key, None)
    d["data"]["contamination"].pop("extra_eval_files", None)
    data = cfg.data
    d["data_hash"] = files_hash([*data.train, *data.val, *data.test])
    return d


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [x for k in sorted(set(a) | set(b)) for x in _diff(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [prefix.rstrip(".")] if a != b else []


def space_clashes(old: list[dict[str, Any]], space: Space) -> list[str]:
    """Dimensions of a resumed study's space that Optuna cannot continue with: a range that became a list
    (or back), another log setting or integer kind, other choices. A range's bounds may change."""
    out = []
    for d in old:
        new = space.get(d["name"])
        if new is None:
            continue
        if new.choices is not None:
            clash = d.get("choices") != list(new.choices)
        else:
            clash = d.get("choices") is not None or bool(d.get("log")) != new.log or d.get("kind") != new.kind
        if clash:
            out.append(d["name"])
    return out


def _fmt_time(s: float | None) -> str:
    if s is None:
        return "?"
    s = max(0, int(round(s)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _fmt_params(params: dict[str, Any]) -> str:
    def one(v: Any) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    return " ".join(f"{k}={one(v)}" for k, v in params.items())


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock among the workers on this machine (flock), released at the end of the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class Search:
    """One worker's search on one study."""

    def __init__(self, cfg: RunConfig, options: TuneOptions, console: Console, clock: Callable[[], float]):
        self.cfg, self.options, self.console = cfg, options, console
        self.clock = clock
        self.failures = 0  # this worker's trials failed in a row

    # ---- set-up
    def prepare(self) -> None:
        from tunesmith.models import is_encoder
        from tunesmith.progress import make_console
        from tunesmith.runner import check_data, resolve_recipe

        cfg, tc = self.cfg, self.cfg.tune
        assert tc is not None
        self._limits()
        check_method_available(cfg.method, cfg.train.kernels, cfg.train.attention)
        quiet = make_console(quiet=True)
        model_path, _, data = check_data(cfg, quiet, merge=True)
        if not data.val.examples:
            raise TuneError(
                "tune scores every trial on the val split, and it is empty: set data.split.val > 0 or give data.val"
            )
        self.data = data
        # The space is centred on what `tunesmith run` would train: the config with the settings it leaves
        # out derived from the data (train.recipe). Trials are built from the config as written, so what a
        # trial does not set is derived for it the same way.
        resolved = resolve_recipe(cfg, model_path, data, quiet)
        try:
            base = self._space(resolved, is_encoder(model_path))
        except SpaceError as e:
            raise TuneError(str(e)) from None
        self.metric = study_metric(base)
        self.maximize = maximizes(self.metric)
        self.folder = Path(cfg.runs_dir) / "tune" / self.name
        self.folder.mkdir(parents=True, exist_ok=True)
        self.storage_label = (
            redact(self.options.storage) if self.options.storage else str(self.folder / "journal.log")
        )
        # sft and classify losses (and two bases' losses) are not on one scale.
        pruning = not {"train.objective", "model"} & set(self.space.names())
        self.ctx = StudyContext(
            base=cfg,
            space=self.space,
            study=self.name,
            folder=self.folder,
            metric=self.metric,
            maximize=self.maximize,
            pruning=pruning and tc.pruner != "none",
            val_limit=tc.val_limit,
            eval_every=base.train.eval_every,
            storage=self.storage_label,
        )
        self.pruning_note = (
            ""
            if pruning
            else "pruning off: the objective or the base model is searched, and their val losses are not on one "
            "scale"
        )
        self.study = self._open(pruning)

    def _limits(self) -> None:
        tc = self.cfg.tune
        assert tc is not None
        budget_s = self.options.budget_s
        if budget_s is None and tc.budget is not None:
            budget_s = parse_duration(tc.budget)
        self.limit = self.options.trials or tc.trials
        if budget_s is None and self.limit is None:
            raise TuneError(
                "give a budget or a number of trials: --budget 2h, --trials 20 (or tune.budget, tune.trials)"
            )
        self.budget = Budget(budget_s, self.clock)
        self.name = self.options.study or self.cfg.name
        if not STUDY_NAME.match(self.name):
            raise TuneError(f"study name {self.name!r}: use letters, digits, '.', '_' and '-'")

    def _space(self, resolved: RunConfig, encoder: bool) -> RunConfig:
        """The search space and the first trials; returns the base every trial varies (fixed values in)."""
        tc = self.cfg.tune
        assert tc is not None
        held_out = [*self.data.val.examples, *self.data.test.examples]
        self.space = build_space(resolved, label_rows(self.data.train.examples, held_out), encoder)
        method_dim = self.space.get("method.name")
        for m in method_dim.choices or () if method_dim else ():
            try:
                check_method_available(MethodConfig(name=m))
            except MethodUnavailableError as e:
                raise SpaceError([f"method.name: {e}"]) from None
        base = apply_values(resolved, self.space.fixed, resolved.name) if self.space.fixed else resolved
        firsts = tc.first_trials if tc.first_trials is not None else [first_trial(base, self.space)]
        check_first_trials(self.space, firsts)
        self.first_trials = [t for t in firsts if t]
        return base

    def _open(self, pruning: bool) -> optuna.Study:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = open_storage(self.options.storage, self.folder)
        sampler = _sampler(self.cfg.train.seed, self.cfg.tune.startup_trials if self.cfg.tune else 5)
        pruner = _pruner(self.cfg, pruning, self.ctx.eval_every)
        direction: Literal["maximize", "minimize"] = "maximize" if self.maximize else "minimize"
        fp = fingerprint(self.cfg)
        try:
            study = optuna.create_study(
                storage=storage, study_name=self.name, direction=direction, sampler=sampler, pruner=pruner
            )
        except optuna.exceptions.DuplicatedStudyError:
            study = None
        if study is None:
            study = optuna.load_study(study_name=self.name, storage=storage, sampler=sampler, pruner=pruner)
            self._check_resumable(study, fp, direction)
            self.created = False
            return study
        # The worker that created the study records what it searches and queues the first trials.
        study.set_user_attr("config", fp)
        study.set_user_attr("metric", self.metric)
        study.set_user_attr("space", [d.as_dict() for d in self.space.dims])
        study.set_user_attr("fixed", self.space.fixed)
        for i, params in enumerate(self.first_trials):
            study.enqueue_trial(params, user_attrs={"recipe": True} if i == 0 else None)
        self.created = True
        return study

    def _check_resumable(self, study: optuna.Study, fp: dict[str, Any], direction: str) -> None:
        if not self.options.resume:
            raise TuneError(
                f"study {self.name!r} already exists in {self.storage_label} ({len(study.trials)} trials): "
                "continue it with --resume, or start another with --study NAME"
            )
        started = study.user_attrs.get("config")
        differ = _diff(started, fp) if started is not None else []
        if differ:
            raise TuneError(
                f"study {self.name!r} was started with other settings ({', '.join(differ[:6])}); resume it "
                "with that config, or start another study with --study NAME"
            )
        clash = space_clashes(study.user_attrs.get("space") or [], self.space)
        if clash:
            raise TuneError(
                f"study {self.name!r} searched {', '.join(clash)} differently (Optuna keeps one kind of "
                "distribution, and one list of choices, per parameter): keep those as they were, or start "
                "another study with --study NAME"
            )
        if study.direction.name.lower() != direction:
            raise TuneError(
                f"study {self.name!r} is to {study.direction.name.lower()}; this config's {self.metric} "
                f"needs {direction}"
            )

    # ---- the loop
    def history(self, model: str | None = None) -> list[TrialTime]:
        """What the study's trials took; with `model`, only the trials on that base (a step of SmolLM2 and
        one of a 22M-parameter encoder differ tenfold)."""
        own = str(self.space.fixed.get("model", self.cfg.model))
        return trial_times(self.study.get_trials(deepcopy=False), model, own)

    def _n_test(self) -> int:
        n = len(self.data.test.examples)
        return min(n, self.cfg.eval.limit) if self.cfg.eval.limit else n

    def _reserve(self) -> float:
        return estimate_final_eval_s(self.history(), self._n_test())

    def stop_reason(self) -> str | None:
        from optuna.trial import TrialState

        trials = self.study.get_trials(deepcopy=False)
        tc = self.cfg.tune
        assert tc is not None
        if tc.stop != "never":
            key = "targets_met" if tc.stop == "met" else "targets_pass"
            hit = [t for t in trials if t.state == TrialState.COMPLETE and t.user_attrs.get(key)]
            if hit:
                return f"targets {'met' if tc.stop == 'met' else 'passed'} on val by trial {hit[0].number}"
        if self.limit is not None:
            now = time.time()
            busy = [t for t in trials if t.state == TrialState.RUNNING and is_alive(t, now)]
            if sum(map(counted, trials)) + len(busy) >= self.limit:
                return f"trial limit: {self.limit} trials" + (f" ({len(busy)} still running)" if busy else "")
        if not self.budget.fits(0.0, self._reserve()):
            return "budget spent"
        return None

    def reap(self) -> None:
        """Trials whose worker died (this one killed earlier, or another worker): FAIL, their runs killed."""
        for t in stale_trials(self.study):
            run_dir = t.user_attrs.get("run_dir")
            who = t.user_attrs.get("worker", {})
            why = f"its worker {who.get('host', '?')}:{who.get('pid', '?')} is gone"
            if run_dir:
                mark_killed(Path(run_dir), why)
            self.console.print(
                f"trial {t.number}: {why}; marked killed (it does not count){self._retry(t)}", highlight=False
            )

    def _retry(self, t: FrozenTrial | optuna.Trial) -> str:
        """Queue a killed trial's values again, once (as Optuna's RetryFailedTrialCallback does): a kill says
        nothing about the values, and the recipe trial is the reference every result is weighed against. A
        retry that is killed too is not queued again (the values may be what kills the worker, e.g. memory).
        Two workers reaping the same trial at once may both queue it; the second copy then finds the values
        trained and trains nothing (`_same_values`). Returns the words for the log."""
        if not t.params:
            return ""
        if "retry_of" in t.user_attrs:
            return f"; it was a retry of trial {t.user_attrs['retry_of']}, so its values are not queued again"
        attrs: dict[str, Any] = {"retry_of": t.number}
        if is_recipe(t):
            attrs["recipe"] = True
        self.study.enqueue_trial(dict(t.params), user_attrs=attrs, skip_if_exists=False)
        return "; its values are queued again"

    def run(self) -> TuneOutcome:
        self._header()
        stopped = ""
        while not stopped:
            self.reap()
            stopped = self.stop_reason() or self._one_trial()
        self.console.print(f"search ended: {stopped}", highlight=False)
        return self._finish(stopped)

    def _one_trial(self) -> str:
        """Run one trial; returns why the search stops after it ('' to go on)."""
        from optuna.trial import TrialState

        trial = self.study.ask()
        trial.set_user_attr("worker", Worker.this().as_dict())
        if self.limit is not None:
            # Another worker may have asked at the same moment: the lower numbers go first.
            now = time.time()
            before = [
                t
                for t in self.study.get_trials(deepcopy=False)
                if t.number < trial.number
                and (counted(t) or (t.state == TrialState.RUNNING and is_alive(t, now)))
            ]
            if len(before) >= self.limit:
                return self._not_run(trial, f"trial limit: {self.limit} trials")
        values = self.space.sample(trial)
        if (earlier := self._same_values(trial)) is not None:
            return self._repeat(trial, earlier)
        started = self.clock()
        try:
            # On a terminal a spinner says which trial runs (its own output goes to its log file).
            status: Any = (
                self.console.status(f"trial {trial.number}  {_fmt_params(values)}")
                if self.console.is_terminal
                else nullcontext()
            )
            with status, Heartbeat(trial):
                outcome = run_trial(self.ctx, trial, values, self._gate(trial))
        except NotRun as e:
            return self._not_run(trial, str(e))
        except BaseException as e:
            # Ctrl-C, or a bug: the trial ends as failed (a bug counts, an interruption does not), then it
            # propagates.
            if isinstance(e, KeyboardInterrupt):
                trial.set_user_attr("interrupted", True)
                self.console.print(f"trial {trial.number}: interrupted{self._retry(trial)}", highlight=False)
            else:
                trial.set_user_attr("error", f"{type(e).__name__}: {e}")
            self.study.tell(trial, state=TrialState.FAIL)
            if run_dir := trial.user_attrs.get("run_dir"):
                mark_killed(Path(run_dir), "interrupted" if isinstance(e, KeyboardInterrupt) else repr(e))
            raise
        self._record(trial, outcome)
        self._line(outcome, self.clock() - started)
        self.write_summary()
        tc = self.cfg.tune
        assert tc is not None
        if tc.stop == "met" and outcome.targets_met or tc.stop == "pass" and outcome.targets_pass:
            return f"targets {'met' if tc.stop == 'met' else 'passed'} on val by trial {outcome.number}"
        self.failures = self.failures + 1 if outcome.state == "failed" else 0
        if self.failures >= MAX_FAILURES_IN_A_ROW:
            return f"{self.failures} trials in a row failed, the last with {outcome.note}"
        return ""

    def _same_values(self, trial: optuna.Trial) -> FrozenTrial | None:
        """An earlier complete trial with exactly these values. TPE draws a categorical value again once it
        looks best, and another base model (`model`) has no dimension of its own to vary."""
        from optuna.trial import TrialState

        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if t.number != trial.number and t.params == trial.params and "same_as" not in t.user_attrs:
                return t
        return None

    def _repeat(self, trial: optuna.Trial, earlier: FrozenTrial) -> str:
        """Values already trained: the earlier trial's result is told again and nothing is trained (Optuna's
        FAQ, "How can I ignore duplicated samples?"). It counts as a trial, so a search that keeps drawing
        them still ends."""
        trial.set_user_attr("same_as", earlier.number)
        for key in ("val", "targets_met", "targets_pass"):
            if key in earlier.user_attrs:
                trial.set_user_attr(key, earlier.user_attrs[key])
        assert earlier.value is not None
        self.study.tell(trial, earlier.value)
        self.console.print(
            f"trial {trial.number} repeats trial {earlier.number}'s values (val {self.metric} "
            f"{earlier.value:.4f}): not trained again",
            highlight=False,
        )
        self.write_summary()
        return ""

    def _gate(self, trial: optuna.Trial) -> Callable[[RunConfig, Plan, PreparedData], None]:
        def gate(cfg: RunConfig, plan: Plan, data: PreparedData) -> None:
            trial.set_user_attr("settings", self.space.settings(cfg))  # for "what changed" on the page
            steps = total_steps(cfg, len(data.train.encoded))
            step_s = (
                plan.seconds_per_epoch / plan.steps_per_epoch
                if plan.seconds_per_epoch and plan.steps_per_epoch
                else None
            )
            estimate = estimate_trial_s(self.history(cfg.model), steps, step_s)
            reserve = self._reserve()
            trial.set_user_attr("estimate_s", estimate)
            if not self.budget.fits(estimate, reserve):
                left = self.budget.left() or 0.0
                raise NotRun(
                    f"budget: {_fmt_time(left)} left, and trial {trial.number} ({steps} steps) needs about "
                    f"{_fmt_time(estimate)}"
                    + (f" plus {_fmt_time(reserve)} kept for the test evaluation" if reserve else "")
                )

        return gate

    def _not_run(self, trial: optuna.Trial, why: str) -> str:
        from optuna.trial import TrialState

        trial.set_user_attr("not_run", why)
        self.study.tell(trial, state=TrialState.FAIL)
        return why

    def _record(self, trial: optuna.Trial, o: TrialOutcome) -> None:
        from optuna.trial import TrialState

        if o.time is not None:
            trial.set_user_attr("time", o.time.as_dict())
        if o.val:
            trial.set_user_attr("val", o.val)
        trial.set_user_attr("targets_met", o.targets_met)
        trial.set_user_attr("targets_pass", o.targets_pass)
        if o.note:
            trial.set_user_attr("note", o.note)
        if o.state == "complete" and o.value is not None and math.isfinite(o.value):
            self.study.tell(trial, o.value)
        elif o.state == "pruned":
            self.study.tell(trial, state=TrialState.PRUNED)
        else:
            if o.state == "complete":
                o.state, o.note = "failed", f"val {self.metric} is {o.value}"
            trial.set_user_attr("error", o.note or "failed")
            self.study.tell(trial, state=TrialState.FAIL)

    # ---- output
    def _header(self) -> None:
        c, ctx = self.console, self.ctx
        n_val = len(self.data.val.examples)
        scored = min(n_val, ctx.val_limit) if ctx.val_limit else n_val
        direction = "higher" if self.maximize else "lower"
        c.print(
            f"study [bold]{self.name}[/bold] ({'new' if self.created else 'resumed'}) in {self.storage_label}: "
            f"val {self.metric} ({direction} is better), each trial scored on {scored} of {n_val} val examples",
            highlight=False,
        )
        limits = []
        if self.limit:
            limits.append(f"{self.limit} trials")
        if self.budget.seconds:
            limits.append(f"budget {_fmt_time(self.budget.seconds)}")
        c.print(f"limits: {', '.join(limits)}; worker {Worker.this()}", highlight=False)
        for line in self.space.describe():
            c.print(f"  space: {line}", highlight=False)
        for note in (*self.space.notes, self.pruning_note):
            if note:
                c.print(f"  [dim]{note}[/dim]", highlight=False)
        c.print(f"  [dim]trial logs: {self.folder / 'trials'}[/dim]", highlight=False)

    def best_trial(self) -> FrozenTrial | None:
        return choose(self.study, self.maximize, self.cfg.tune.stop if self.cfg.tune else "met")

    def _line(self, o: TrialOutcome, seconds: float) -> None:
        best = self.best_trial()
        style = {"complete": "green", "pruned": "yellow"}.get(o.state, "red")
        text = Text(f"trial {o.number} ")
        text.append(o.state, style=style)
        if o.value is not None and o.state == "complete":
            text.append(f"  val {self.metric} {o.value:.4f}")
            if o.targets_met:
                text.append("  targets met", style="green")
        if o.note and o.state != "complete":
            text.append(f"  {o.note}")
        if best is not None and best.value is not None:
            text.append(f"  best {best.value:.4f} (trial {best.number})")
        text.append(f"  {_fmt_params(o.params)}", style="dim")
        text.append(f"  {_fmt_time(seconds)}")
        left = self.budget.left()
        if left is not None:
            text.append(f"  budget left {_fmt_time(left)}")
        self.console.print(text, highlight=False, soft_wrap=True)

    def write_summary(self, result: dict[str, Any] | None = None, chosen: FrozenTrial | None = None) -> Path:
        from tunesmith.tune.page import summary, write_json

        return write_json(self.folder, summary(self.study, self.ctx, chosen or self.best_trial(), result))

    def _finish(self, stopped: str) -> TuneOutcome:
        from tunesmith.tune.page import write_page

        best = self.best_trial()
        lead = val_lead(self.study, best, self.metric, self.maximize)
        recipe = self._recipe_if_tied(best, lead)
        if lead is not None and lead["within_noise"]:
            self.console.print(
                f"[yellow bold]warning:[/yellow bold] trial {lead['trial']}'s val lead over trial "
                f"{lead['recipe_trial']} (the config's own recipe) is within noise: {lead['delta']:+.3f} "
                f"[{lead['ci'][0]:+.3f}, {lead['ci'][1]:+.3f}] on {lead['n']} paired val examples"
                + (f"; the result is trial {lead['recipe_trial']}" if recipe else "")
                + ". Give val more examples (data.split.val, tune.val_limit) for a choice the data supports",
                highlight=False,
            )
        best = recipe or best
        result, note, chosen_run = self._score_chosen(best)
        if result is not None and lead is not None:
            result = {**result, "val_lead": lead}
            self.study.set_user_attr("result", result)
        summary_path = self.write_summary(result, best)
        page = write_page(self.folder, self.study, self.ctx, best, result)
        self.console.print(f"study page: [bold]{page}[/bold]", highlight=False)
        counts: dict[str, int] = {}
        for t in self.study.get_trials(deepcopy=False):
            counts[state_of(t)] = counts.get(state_of(t), 0) + 1
        return TuneOutcome(
            study=self.name,
            folder=self.folder,
            stopped=stopped,
            trials=counts,
            best=None
            if best is None
            else {
                "number": best.number,
                "value": best.value,
                "params": best.params,
                "run_id": best.user_attrs.get("run_id"),
            },
            chosen_run=chosen_run,
            test=(result or {}).get("test"),
            page=page,
            summary=summary_path,
            note=note,
        )

    def _recipe_if_tied(self, best: FrozenTrial | None, lead: dict[str, Any] | None) -> FrozenTrial | None:
        return recipe_if_tied(
            self.study, best, lead, targets_key(self.cfg.tune.stop if self.cfg.tune else "met")
        )

    def _score_chosen(self, best: FrozenTrial | None) -> tuple[dict[str, Any] | None, str, Path | None]:
        """The chosen trial's run scored once on the test split (the normal eval, with its CIs and report),
        by the last worker to finish; (study result, note, run directory)."""
        from optuna.trial import TrialState

        from tunesmith.runner import eval_run

        if best is None:
            self.console.print("[red]no trial completed[/red]: nothing to evaluate on test")
            return None, "no trial completed", None
        now = time.time()
        running = [
            t for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if is_alive(t, now)
        ]
        run_dir = Path(best.user_attrs["run_dir"])
        if running:
            note = (
                f"{len(running)} trial(s) still running on other workers: the last worker to finish scores the "
                "chosen trial on test"
            )
            self.console.print(note)
            return self.study.user_attrs.get("result"), note, run_dir
        if not (run_dir / "manifest.json").is_file():
            worker = best.user_attrs.get("worker", {})
            note = (
                f"the chosen trial {best.number} ran on {worker.get('host', 'another machine')} ({run_dir}): "
                f"score it there with `tunesmith eval {run_dir}`"
            )
            self.console.print(note)
            return self.study.user_attrs.get("result"), note, None
        with _file_lock(self.folder / "final.lock"):
            done = self.study.user_attrs.get("result")
            ev: EvalResult | None
            if done and done.get("trial") == best.number and has_eval(run_dir / "eval"):
                ev = read_eval(run_dir / "eval")
                self.console.print(f"chosen trial {best.number} was scored on test already: {run_dir}")
            else:
                self.console.print(
                    f"chosen: trial {best.number} (val {self.metric} {best.value:.4f}); scoring it on the test split",
                    highlight=False,
                )
                ev = eval_run(run_dir, self.console).eval
                tag = read_manifest(run_dir).get("tune") or {}
                update_manifest(run_dir, tune={**tag, "chosen": True})
                self.console.print(f"result: {run_dir} (report: {run_dir / 'report.html'})", highlight=False)
            rows = {r["metric"]: r for r in ev.metrics} if ev else {}
            primary = ev.primary_metric if ev else None
            result = {
                "trial": best.number,
                "run_id": run_dir.name,
                "run_dir": str(run_dir),
                "test": {
                    "primary_metric": primary,
                    "value": rows.get(primary, {}).get("tuned"),
                    "ci": rows.get(primary, {}).get("tuned_ci"),
                    "n_examples": ev.n_examples if ev else None,
                    "targets_met": ev.targets_met if ev else None,
                    "failed_targets": ev.failed_targets if ev else [],
                },
            }
            self.study.set_user_attr("result", result)
        return result, "", run_dir


def _val_scores(trial: FrozenTrial, metric: str) -> list[float] | None:
    """A trial's per-example val scores of `metric`, from its eval_val/predictions.jsonl."""
    run_dir = trial.user_attrs.get("run_dir")
    path = Path(run_dir) / "eval_val" / "predictions.jsonl" if run_dir else None
    if path is None or not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    scores = [(r.get("scores") or {}).get(metric, {}).get("tuned") for r in rows]
    return None if any(s is None for s in scores) else [float(s) for s in scores]


def val_lead(
    study: optuna.Study, best: FrozenTrial | None, metric: str, maximize: bool
) -> dict[str, Any] | None:
    """The chosen trial's lead over the recipe trial (the config's own recipe: trial 0, or its retry after a
    kill) on the same val examples, with a paired bootstrap 95% CI, oriented so that positive is better.
    `within_noise`: the CI holds 0, so the val set cannot tell the two apart. None when the chosen trial is
    the recipe trial or per-example scores are missing."""
    from tunesmith.eval.compare import paired_bootstrap

    first = recipe_trial(study.get_trials(deepcopy=False))
    if best is None or first is None or best.number == first.number:
        return None
    ref = _val_scores(first, metric)
    chosen = _val_scores(best, metric)
    if ref is None or chosen is None or len(ref) != len(chosen) or not ref:
        return None
    sign = 1.0 if maximize else -1.0
    ref, chosen = [sign * v for v in ref], [sign * v for v in chosen]
    (lo, hi), _ = paired_bootstrap(ref, chosen)
    delta = sum(chosen) / len(chosen) - sum(ref) / len(ref)
    return {
        "trial": best.number,
        "recipe_trial": first.number,
        "n": len(ref),
        "delta": delta,
        "ci": [lo, hi],
        "within_noise": lo <= 0.0,
    }


def targets_key(stop: str) -> str:
    """The trial attribute that says its val scores reach the targets, for `tune.stop`."""
    return "targets_pass" if stop == "pass" else "targets_met"


def recipe_if_tied(
    study: optuna.Study, best: FrozenTrial | None, lead: dict[str, Any] | None, targets_key: str
) -> FrozenTrial | None:
    """The recipe trial (`recipe_trial`), when the value-best trial leads it on val within noise (`val_lead`)
    and the two stand alike against the targets (`targets_key` in their user attrs): a search result should
    be one the val data supports, and a default is kept unless the evidence says otherwise."""
    if best is None or lead is None or not lead["within_noise"]:
        return None
    first = recipe_trial(study.get_trials(deepcopy=False))
    if first is None:
        return None
    return (
        first if bool(first.user_attrs.get(targets_key)) == bool(best.user_attrs.get(targets_key)) else None
    )


def choose(study: optuna.Study, maximize: bool, stop: str = "met") -> FrozenTrial | None:
    """The study's result: among complete trials, those whose val scores meet the targets (pass them, with
    tune.stop: pass) first, then the best val value; the earlier trial on a tie."""
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    if not done:
        return None
    key = targets_key(stop)

    def rank(t: FrozenTrial) -> tuple[int, float, int]:
        value = float(t.value) if t.value is not None else math.nan
        return (0 if t.user_attrs.get(key) else 1, -value if maximize else value, t.number)

    return min(done, key=rank)


def run_tune(
    cfg: RunConfig, options: TuneOptions, console: Console, clock: Callable[[], float] = time.monotonic
) -> TuneOutcome:
    """Search for a recipe until the config's targets pass on val or the limits end it (see README, Tune)."""
    if cfg.tune is None:
        from tunesmith.config import TuneConfig

        cfg = cfg.model_copy(update={"tune": TuneConfig()})
    search = Search(cfg, options, console, clock)
    search.prepare()
    return search.run()


__all__ = ["TuneError", "TuneOptions", "TuneOutcome", "choose", "open_storage", "run_tune", "study_metric"]
