"""The search space of `tunesmith tune`: which dimensions apply to a config, narrowed or fixed by its
`tune.space`, and how one trial's values become a run config.

The rule (README, "Tune"): every dimension that applies to the config is searched around the config's own
values; a `tune.space` entry replaces that default: a single value fixes the dimension (every trial uses it),
a list makes it a choice among those values, `{low, high, log}` a range. A dimension named in `tune.space`
that cannot apply to the config (LoRA's rank when no LoRA-family method is searched) is an error, as is a
value that would make an invalid config.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from tunesmith.config import (
    METHOD_OPTIONS,
    TUNE_DIMENSIONS,
    ConfigError,
    RunConfig,
    TuneRange,
    validate_config,
)
from tunesmith.method_traits import LOW_RANK_METHODS, PEFT_METHODS, VIRTUAL_TOKEN_METHODS
from tunesmith.models import builtin_installed, spec_is_encoder
from tunesmith.train.methods import HEAD_LR_RATIO

if TYPE_CHECKING:
    import optuna

    from tunesmith.data.formats import Example

LORA_FAMILY = LOW_RANK_METHODS
# Methods the default space chooses among when the config names one of them (prefix/prompt/ia3 want other
# learning rates; qlora needs CUDA): a `tune.space` list may name any peft method.
DEFAULT_METHODS = ("lora", "dora")
# The base the default space offers beside a decoder for a label task: on the CLINC150 subset it classified
# better (0.910 against 0.86 for SmolLM2-135M sft or classify) in a sixth of the time (README, "Tune").
ENCODER_BASE = "builtin:all-minilm-l6-v2"
# Dimensions that mean something only for some values of another: LoRA's options, the classify head's rate.
APPLIES_WHEN: dict[str, tuple[str, tuple[str, ...]]] = {
    "method.r": ("method.name", LORA_FAMILY),
    "method.alpha": ("method.name", LORA_FAMILY),
    "method.dropout": ("method.name", LORA_FAMILY),
    "train.head_lr": ("train.objective", ("classify",)),
}
# What a trial on another base than the config's leaves to that base's own recipe (train.recipe): the
# config's values were chosen for its own base.
OTHER_BASE_DERIVED = ("lr", "head_lr", "batch_size", "epochs", "max_steps", "eval_every")
# Not searched, and why (printed when the study starts).
LEFT_OUT = (
    "data mix against forgetting: the config has no field that mixes general data into training, so "
    "there is nothing to search",
)


class SpaceError(ValueError):
    """Problems of a search space, all of them; `tunesmith tune` exits 2 with the list."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__(
            f"{len(problems)} problem(s) in the search space:\n" + "\n".join(f"  - {p}" for p in problems)
        )


@dataclass(frozen=True)
class Dimension:
    name: str  # a dotted config key, e.g. train.lr
    kind: Literal["float", "int", "choice"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] | None = None
    # Sampled only when another searched dimension takes one of these values (method.r: a LoRA method).
    when: tuple[str, tuple[Any, ...]] | None = None

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        assert self.low is not None and self.high is not None
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)

    def contains(self, value: Any) -> bool:
        if self.choices is not None:
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        assert self.low is not None and self.high is not None
        if self.kind == "int" and not float(value).is_integer():
            return False
        return self.low <= value <= self.high

    def describe(self) -> str:
        if self.choices is not None:
            text = "{" + ", ".join(_fmt(c) for c in self.choices) + "}"
        else:
            text = f"[{_fmt(self.low)}, {_fmt(self.high)}]" + (" log" if self.log else "")
        if self.when:
            text += f" when {self.when[0]} in {{{', '.join(map(str, self.when[1]))}}}"
        return f"{self.name} {text}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "low": self.low,
            "high": self.high,
            "log": self.log,
            "choices": list(self.choices) if self.choices is not None else None,
            "when": [self.when[0], list(self.when[1])] if self.when else None,
        }


@dataclass(frozen=True)
class Space:
    dims: tuple[Dimension, ...]
    fixed: dict[str, Any] = field(default_factory=dict)  # tune.space values every trial uses
    notes: tuple[str, ...] = LEFT_OUT

    def names(self) -> list[str]:
        return [d.name for d in self.dims]

    def get(self, name: str) -> Dimension | None:
        return next((d for d in self.dims if d.name == name), None)

    def active(self, values: Mapping[str, Any]) -> list[Dimension]:
        """The dimensions sampled for a trial whose other values are `values` (conditions met)."""
        return [d for d in self.dims if d.when is None or values.get(d.when[0]) in d.when[1]]

    def sample(self, trial: optuna.Trial) -> dict[str, Any]:
        """One trial's values, in order: a condition's dimension (method.name) comes before its dependants."""
        values: dict[str, Any] = {}
        for d in self.dims:
            if d.when is None or values.get(d.when[0]) in d.when[1]:
                values[d.name] = d.suggest(trial)
        return values

    def settings(self, cfg: RunConfig) -> dict[str, Any]:
        """What a trial's config trains with on each dimension, as trained (the recipe applied, another
        base's own values): a dimension that does not apply to those values (LoRA's rank for a full
        fine-tune, the head's rate for sft) is left out."""
        out: dict[str, Any] = {}
        for d in self.dims:
            rule = APPLIES_WHEN.get(d.name)
            if rule is None or config_value(cfg, rule[0]) in rule[1]:
                out[d.name] = config_value(cfg, d.name)
        return out

    def describe(self) -> list[str]:
        return [d.describe() for d in self.dims] + [f"{k} = {_fmt(v)} (fixed)" for k, v in self.fixed.items()]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def config_value(cfg: RunConfig, name: str) -> Any:
    if "." not in name:  # model
        return getattr(cfg, name)
    section, key = name.split(".", 1)
    return getattr(getattr(cfg, section), key)


def label_rows(train: list[Example], held_out: list[Example]) -> bool:
    """Whether the answers are labels, so that `classify` can learn the same task as `sft`: labelled rows, or
    short answers (at most 6 words) from a closed set (at most 512 of them, 2+ rows each on average) that
    every val/test answer belongs to."""
    from tunesmith.data.pipeline import class_label

    if not train or any(ex.kind != "chat" for ex in train):
        return False
    answers = [class_label(ex) for ex in train]
    distinct = set(answers)
    return (
        2 <= len(distinct) <= 512
        and len(answers) >= 2 * len(distinct)
        and all(len(a.split()) <= 6 for a in distinct)
        and all(class_label(ex) in distinct for ex in held_out)
    )


def _range(low: float, high: float, kind: Literal["float", "int"], log: bool) -> tuple[float, float]:
    if kind == "int":
        return float(max(1, math.floor(low))), float(max(2, math.ceil(high)))
    return low, high


def _default_dims(cfg: RunConfig, classify_ok: bool) -> dict[str, Dimension]:
    """Every dimension that applies to `cfg`, around its own values (no conditions yet)."""
    tc, mc = cfg.train, cfg.method
    dims: dict[str, Dimension] = {
        "train.lr": Dimension("train.lr", "float", tc.lr / 10, tc.lr * 10, log=True),
    }
    if tc.max_steps:
        low, high = _range(tc.max_steps / 2, tc.max_steps * 2, "int", False)
        dims["train.max_steps"] = Dimension("train.max_steps", "int", low, high)
    else:
        dims["train.epochs"] = Dimension("train.epochs", "float", tc.epochs / 2, tc.epochs * 2)
    batches = sorted({max(1, tc.batch_size // 2), tc.batch_size, tc.batch_size * 2})
    dims["train.batch_size"] = Dimension("train.batch_size", "int", choices=tuple(batches))
    if mc.name in DEFAULT_METHODS:
        dims["method.name"] = Dimension("method.name", "choice", choices=DEFAULT_METHODS)
    dims["method.r"] = Dimension("method.r", "int", choices=tuple(sorted({4, 8, 16, 32, mc.r})))
    dims["method.alpha"] = Dimension(
        "method.alpha", "float", choices=tuple(sorted({mc.alpha / 2, mc.alpha, mc.alpha * 2}))
    )
    dims["method.dropout"] = Dimension(
        "method.dropout", "float", choices=tuple(sorted({0.0, 0.05, 0.1, mc.dropout}))
    )
    if classify_ok:
        dims["train.objective"] = Dimension("train.objective", "choice", choices=("sft", "classify"))
    head = tc.head_lr or HEAD_LR_RATIO * tc.lr
    dims["train.head_lr"] = Dimension("train.head_lr", "float", head / 10, head * 10, log=True)
    return dims


def _from_entry(name: str, entry: Any) -> Dimension | None:
    """A tune.space entry as a dimension; None for a single value (fixed)."""
    kind = TUNE_DIMENSIONS[name]
    if isinstance(entry, TuneRange):
        log = entry.log if entry.log is not None else name in ("train.lr", "train.head_lr")
        assert kind != "choice"
        low, high = (entry.low, entry.high) if kind == "float" else (float(entry.low), float(entry.high))
        return Dimension(name, kind, low, high, log=log)
    if isinstance(entry, list):
        choices = tuple(dict.fromkeys(int(v) if kind == "int" else v for v in entry))
        return Dimension(name, kind, choices=choices) if len(choices) > 1 else None
    return None


def _single(entry: Any, kind: str) -> Any:
    value = entry[0] if isinstance(entry, list) else entry
    return int(value) if kind == "int" and not isinstance(value, bool) else value


def classify_fits(cfg: RunConfig) -> list[str]:
    """Why `classify` cannot stand in for `sft` on this config's evaluation ([] when it can)."""
    why = []
    if cfg.eval.primary != "accuracy":
        why.append(f"the primary metric is {cfg.eval.primary}, and classify is scored by accuracy")
    other = sorted(set(cfg.targets) - {"accuracy"})
    if other:
        why.append(f"targets on {', '.join(other)}, which classify does not compute")
    if cfg.train.packing:
        why.append("train.packing is on (sft only)")
    if cfg.method.name in VIRTUAL_TOKEN_METHODS:
        why.append(f"method {cfg.method.name}")
    return why


def build_space(cfg: RunConfig, labels: bool, encoder: bool = False) -> Space:
    """The search space of `cfg`: the dimensions that apply to it, with its `tune.space` narrowing or fixing
    them. `labels`: the data's answers are labels (label_rows), so sft and classify are both candidates;
    `encoder`: the base is an encoder (BERT family), which classifies only."""
    entries = dict(cfg.tune.space) if cfg.tune else {}
    fixed = {
        name: _single(e, TUNE_DIMENSIONS[name]) for name, e in entries.items() if _from_entry(name, e) is None
    }
    problems: list[str] = []
    base = cfg
    if fixed:
        try:
            base = apply_values(cfg, fixed, cfg.name)
        except ConfigError as e:
            raise SpaceError([f"fixed values: {i}" for i in e.issues]) from None
    given = {name: d for name, e in entries.items() if (d := _from_entry(name, e)) is not None}
    objective = base.train.objective
    classify_ok = labels and not encoder and objective in ("sft", "classify") and not classify_fits(base)
    dims = _default_dims(base, classify_ok and "train.objective" not in fixed)
    # The encoder trains classify: offered where the objective is searched (a fixed one rules it out).
    if (
        "train.objective" in dims
        and base.model != ENCODER_BASE
        and builtin_installed(ENCODER_BASE.split(":", 1)[1])
    ):
        dims["model"] = Dimension("model", "choice", choices=(base.model, ENCODER_BASE))
    if "train.epochs" in entries or "train.max_steps" in entries:
        dims.pop("train.epochs", None)
        dims.pop("train.max_steps", None)
    dims.update(given)
    for name in fixed:
        dims.pop(name, None)

    methods = dims["method.name"].choices if "method.name" in dims else (base.method.name,)
    assert methods is not None
    objectives = dims["train.objective"].choices if "train.objective" in dims else (objective,)
    assert objectives is not None
    if "train.objective" in given:
        if set(objectives) - {"sft", "classify"} or objective not in ("sft", "classify"):
            problems.append("train.objective: the search chooses between sft and classify only")
        elif encoder:
            problems.append("train.objective: the base model is an encoder, which trains classify only")
        elif not labels:
            problems.append(
                "train.objective: classify needs answers that are labels (a closed set of short answers "
                "every val/test answer belongs to), and these are not"
            )
        elif why := classify_fits(base):
            problems.append(f"train.objective: classify cannot be compared here: {'; '.join(why)}")
    if "method.name" in given:
        bad = [m for m in methods if m not in PEFT_METHODS]
        if bad:
            problems.append(
                f"method.name: {', '.join(map(str, bad))} is not a peft method (the search is over adapters)"
            )
    lora = tuple(m for m in methods if m in LORA_FAMILY)
    for name in ("method.r", "method.alpha", "method.dropout"):
        if name not in dims:
            continue
        if not lora:
            if name in given:
                problems.append(
                    f"{name}: applies to {', '.join(LORA_FAMILY)}; the search's methods are {', '.join(methods)}"
                )
            dims.pop(name)
        elif len(lora) < len(methods):
            dims[name] = _with_when(dims[name], "method.name", lora)
    if "train.head_lr" in dims:
        if "classify" not in objectives:
            if "train.head_lr" in given:
                problems.append("train.head_lr: applies to train.objective classify only")
            dims.pop("train.head_lr")
        elif len(objectives) > 1:
            dims["train.head_lr"] = _with_when(dims["train.head_lr"], "train.objective", ("classify",))
    if "model" in dims:
        problems += _base_problems(dims["model"], base, labels)
        # The other dimensions are searched on the config's own base; another base trains its own recipe.
        for name, d in list(dims.items()):
            if name != "model" and d.when is None:
                dims[name] = _with_when(d, "model", (base.model,))
    if problems:
        raise SpaceError(problems)
    order = ["model", "train.objective", "method.name"]
    ordered = sorted(dims.values(), key=lambda d: order.index(d.name) if d.name in order else len(order))
    space = Space(tuple(ordered), fixed)
    check_values(base, space)
    return space


def _base_problems(dim: Dimension, cfg: RunConfig, labels: bool) -> list[str]:
    """What is wrong with a `model` dimension: it must hold the config's own base (the other dimensions are
    searched on it), and an encoder among the bases needs a label task that classify can be scored on."""
    bases = dim.choices or ()
    problems = []
    if cfg.model not in bases:
        problems.append(
            f"model: the list must hold the config's own model ({cfg.model}), on which the other dimensions "
            "are searched; to tune another base alone, set `model:` in the config"
        )
    for spec in bases:
        if spec == cfg.model or not spec_is_encoder(spec):
            continue
        if not labels:
            problems.append(
                f"model: {spec} is an encoder, which classifies, and these answers are not labels (a closed "
                "set of short answers every val/test answer belongs to)"
            )
        elif why := classify_fits(cfg):
            problems.append(
                f"model: {spec} is an encoder, and classify cannot be compared here: {'; '.join(why)}"
            )
    return problems


def _with_when(d: Dimension, on: str, values: tuple[Any, ...]) -> Dimension:
    return Dimension(d.name, d.kind, d.low, d.high, d.log, d.choices, (on, values))


def check_values(cfg: RunConfig, space: Space) -> None:
    """Every choice and both ends of every range make a valid config (one dimension at a time)."""
    problems: list[str] = []
    for d in space.dims:
        values = d.choices if d.choices is not None else (d.low, d.high)
        for v in values:
            value = int(v) if d.kind == "int" and v is not None else v
            context = {d.when[0]: d.when[1][0]} if d.when else {}
            try:
                apply_values(cfg, {**context, d.name: value}, cfg.name)
            except ConfigError as e:
                problems += [f"{d.name} = {_fmt(value)}: {i}" for i in e.issues]
    if problems:
        raise SpaceError(problems)


def first_trial(cfg: RunConfig, space: Space) -> dict[str, Any]:
    """The config's own recipe as a trial: its values that lie in the space."""
    values: dict[str, Any] = {}
    for d in space.dims:
        if d.when is not None and values.get(d.when[0]) not in d.when[1]:
            continue
        v = config_value(cfg, d.name)
        if v is not None and d.contains(v):
            values[d.name] = v
    return values


def check_first_trials(space: Space, trials: list[dict[str, Any]]) -> None:
    problems = []
    for i, t in enumerate(trials):
        for name, v in t.items():
            d = space.get(name)
            if d is None:
                problems.append(f"first_trials[{i}].{name}: not searched (fixed, or does not apply)")
            elif not d.contains(v):
                problems.append(f"first_trials[{i}].{name}: {v!r} is outside {d.describe()}")
    if problems:
        raise SpaceError(problems)


def apply_values(cfg: RunConfig, values: Mapping[str, Any], name: str, **train: Any) -> RunConfig:
    """`cfg` with a trial's values (dotted keys), named `name`, without its tune block; `train`: more train
    settings every trial shares (eval_every, so that trials are evaluated at the same steps).

    Built from the keys the config sets, so that what it leaves out is still derived as for any run. A
    method switch drops the options the new method does not read; an epochs value unsets max_steps; another
    base model (`model`) drops what the config set for its own base's recipe (_switch_base)."""
    raw = cfg.model_dump(mode="json", exclude_unset=True)
    raw["name"], raw["runs_dir"] = name, cfg.runs_dir
    raw.pop("tune", None)
    base = values.get("model")
    if base is not None and base != cfg.model:
        _switch_base(raw, str(base))
        train = {}  # shared settings such as eval_every were chosen for the config's base
    values = {k: v for k, v in values.items() if k != "model"}
    method = values.get("method.name")
    if method is not None and method != raw.get("method", {}).get("name", cfg.method.name):
        section = raw.setdefault("method", {})
        for option, methods in METHOD_OPTIONS.items():
            if method not in methods:
                section.pop(option, None)
    if "train.epochs" in values:
        raw.setdefault("train", {})["max_steps"] = None
    for key, value in {**{f"train.{k}": v for k, v in train.items()}, **values}.items():
        section, field_name = key.split(".", 1)
        raw.setdefault(section, {})[field_name] = value
    return validate_config(raw, base_dir=cfg.runs_dir, source=f"trial config {name}")


def _switch_base(raw: dict[str, Any], base: str) -> None:
    """A trial on another base model: what the config set for its own base's recipe is dropped (derived for
    the new base), and an encoder classifies with full fine-tuning (the encoder rule of train.recipe)."""
    raw["model"] = base
    section = raw.setdefault("train", {})
    for key in OTHER_BASE_DERIVED:
        section.pop(key, None)
    if spec_is_encoder(base):
        section["objective"] = "classify"
        raw["method"] = {"name": "full"}


__all__ = [
    "LEFT_OUT",
    "Dimension",
    "Space",
    "SpaceError",
    "apply_values",
    "build_space",
    "check_first_trials",
    "first_trial",
    "label_rows",
]
