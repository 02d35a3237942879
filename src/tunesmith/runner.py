"""Stages glued together: each stage reads what the previous one left in the run directory."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from tunesmith.config import RunConfig, load_run_config
from tunesmith.data import cache as data_cache
from tunesmith.data.answers import AnswerSpace
from tunesmith.data.issues import DataError
from tunesmith.data.pipeline import (
    PreparedData,
    Split,
    encode_split,
    prepare,
    read_class_labels,
    read_prepared_examples,
    read_splits,
    write_prepared,
)
from tunesmith.data.report import print_preflight, write_preflight_html
from tunesmith.eval.evaluate import evaluate
from tunesmith.eval.heldout import evaluate_heldout
from tunesmith.eval.report import build_report
from tunesmith.eval.result import EvalResult
from tunesmith.export import ExportError, export_run
from tunesmith.method_traits import PEFT_METHODS, traits
from tunesmith.models import (
    ModelError,
    RunNotMerged,
    load_classifier,
    load_model,
    load_tokenizer,
    resolve_model,
)
from tunesmith.registry import init_manifest, mark_stage, new_run_dir, read_manifest
from tunesmith.train.loop import EvalHook, StopTraining, TrainResult, train
from tunesmith.train.methods import (
    check_base_model,
    check_method_available,
    load_adapter,
    output_dir_name,
)
from tunesmith.train.plan import DataStats, Plan, PlanError, make_plan, plans_table, target_device
from tunesmith.train.recipe import derive as derive_recipe


@dataclass
class RunOutcome:
    run_dir: Path
    eval: EvalResult | None

    @property
    def targets_met(self) -> bool:
        return self.eval is None or self.eval.targets_met


def resolve_base(cfg: RunConfig, merge: bool) -> str:
    """The base model's folder. `model: run:ID` on an adapter run needs that run merged into its base: with
    `merge` (the stages that write a run anyway) the verified merged export is made now; without, the
    read-only commands stop with RunNotMerged, which says how to make it."""
    try:
        return resolve_model(cfg.model, runs_dir=cfg.runs_dir)
    except RunNotMerged as e:
        if not merge:
            raise
        try:
            export_run(e.run_dir, "merged")
        except ExportError as x:
            raise ModelError(f"model {cfg.model}: cannot merge its adapter into the base: {x}") from x
    return resolve_model(cfg.model, runs_dir=cfg.runs_dir)


def check_data(cfg: RunConfig, console: Console, merge: bool = False) -> tuple[str, Any, PreparedData]:
    """Resolve the model's tokenizer and validate + tokenize all data. Raises DataError; writes nothing
    (a `run:` base is merged first only with `merge`, see resolve_base)."""
    model_path = resolve_base(cfg, merge)
    check_base_model(cfg.method, cfg.train.objective, model_path, cfg.model)  # an encoder: classify only
    key = data_cache.cache_key(cfg, model_path)
    cached = data_cache.load(key) if cfg.data.cache else None
    # Parse and validate before the tokenizer loads (importing transformers takes seconds): a bad line is
    # reported at once.
    clean = read_splits(cfg) if cached is None else None
    tok = load_tokenizer(model_path)
    from transformers import GenerationConfig

    try:
        gen_cfg = GenerationConfig.from_pretrained(model_path)
    except OSError:
        gen_cfg = None
    if cached is not None:
        data = cached
        console.print(f"data: unchanged since a previous run, prepared splits reused (cache {key})")
    else:
        data = prepare(cfg, tok, gen_cfg, clean)
        data.preflight["cache"] = {"hit": False, "key": key}
        if cfg.data.cache:
            data_cache.save(data, key)
    print_preflight(data.preflight, console)
    return model_path, tok, data


def plan_on_this_machine(cfg: RunConfig, model_path: str, data: PreparedData, console: Console) -> Plan:
    """The memory and time plan on this machine (no weights loaded), printed."""
    plan = make_plan(cfg, model_path, DataStats.from_prepared(data), target_device(None, cfg.train.threads))
    console.print(plans_table([plan]))
    return plan


def resolve_recipe(cfg: RunConfig, model_path: str, data: PreparedData, console: Console) -> RunConfig:
    """`cfg` with the training settings it leaves out derived from the data (train.recipe: auto), each
    printed with its reason and recorded in the pre-flight (`recipe`)."""
    recipe = derive_recipe(cfg, model_path, list(DataStats.from_prepared(data).lengths))
    for c in recipe.choices:
        console.print(f"recipe: train.{c.field} = {c.value:g} ({c.why})", highlight=False)
    data.preflight["recipe"] = recipe.as_dict()
    return recipe.apply(cfg)


def _start_run(
    cfg: RunConfig,
    console: Console,
    refuse_unfit: bool,
    gate: Callable[[RunConfig, Plan, PreparedData], None] | None = None,
) -> tuple[RunConfig, Path, str, Any, PreparedData, Plan]:
    """The data stage into a new run directory; returns the config as it will train (recipe applied).
    `gate(cfg, plan, data)` may refuse the run, by raising, before its directory is made (`tune`: a trial
    that would not finish in the budget left)."""
    model_path, tok, data = check_data(cfg, console, merge=True)
    cfg = resolve_recipe(cfg, model_path, data, console)
    plan = plan_on_this_machine(cfg, model_path, data, console)
    if not plan.fits:
        if refuse_unfit:
            raise PlanError(plan.refusal())
        console.print(f"[yellow]warning:[/yellow] {plan.refusal()}", highlight=False)
    if gate is not None:
        gate(cfg, plan, data)
    data.preflight["plan"] = plan.as_dict()
    run_dir = new_run_dir(cfg)
    console.print(f"run directory: [bold]{run_dir}[/bold]")
    init_manifest(run_dir, cfg, model_path)
    write_prepared(data, run_dir / "data")
    write_preflight_html(data.preflight, run_dir / "data" / "preflight.html", f"{cfg.name}: pre-flight")
    mark_stage(
        run_dir,
        "data",
        "done",
        preflight={k: v for k, v in data.preflight.items() if k not in ("token_lengths", "plan")},
        plan=plan.as_dict(),
    )
    return cfg, run_dir, model_path, tok, data, plan


def prepare_run(cfg: RunConfig, console: Console) -> Path:
    """The data stage alone: a run directory holding the prepared splits and the pre-flight report."""
    return _start_run(cfg, console, refuse_unfit=False)[1]


def _load_base(cfg: RunConfig, model_path: str, class_labels: list[str] | None = None) -> Any:
    if cfg.train.objective == "classify":
        import torch

        tok = load_tokenizer(model_path)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        # The new head's initial weights come from the run's seed: training starts from them, and a full
        # fine-tune's base pass (and `tunesmith eval` later) scores exactly that untrained head.
        torch.manual_seed(cfg.train.seed)
        return load_classifier(model_path, class_labels or [], int(pad))
    return load_model(model_path, load_in_4bit=traits(cfg.method.name).quantized_base)


def _base_loader(
    cfg: RunConfig, model_path: str, device: Any, class_labels: list[str] | None = None
) -> Callable[[], Any] | None:
    """For a full fine-tune, how evaluate() gets the original weights back (see evaluate), on the device
    the tuned model generates on."""
    if cfg.method.name in PEFT_METHODS:
        return None
    return lambda: _load_base(cfg, model_path, class_labels).to(device)


def _on_accelerator(model: Any) -> Any:
    """Where training would have run: the GPU when there is one (a 4-bit model is placed at load)."""
    import torch

    if torch.cuda.is_available() and not getattr(model, "is_loaded_in_4bit", False):
        return model.to("cuda")
    return model


def choose_training_heap(
    cfg: RunConfig, model_path: str, data: PreparedData, plan: Plan | None, console: Console
) -> None:
    """`train.heap`: keep freed memory for speed when the plan leaves room (tunesmith/malloc.py)."""
    from tunesmith.malloc import choose_heap, set_heap

    if cfg.train.heap == "auto" and plan is None:  # a run trained again or resumed: plan it quietly
        plan = make_plan(
            cfg, model_path, DataStats.from_prepared(data), target_device(None, cfg.train.threads)
        )
    on_cpu = plan is None or plan.device_kind == "cpu"
    kind = choose_heap(cfg.train.heap, plan.memory.peak if plan else None, plan.available if plan else None)
    if on_cpu and set_heap(kind):
        console.print(f"[dim]heap: {kind} (train.heap: {cfg.train.heap})[/dim]")


def _train_stage(
    cfg: RunConfig,
    data: PreparedData,
    model_path: str,
    tok: Any,
    run_dir: Path,
    console: Console,
    resume: bool,
    plan: Plan | None = None,
    on_eval: EvalHook | None = None,
) -> tuple[Any, TrainResult]:
    """`plan`: the memory plan decides gradient checkpointing and precision (`auto`); None (a run directory
    trained again or resumed): the config's explicit values. `on_eval`: see train(); when it ends training
    (StopTraining), the train stage is marked with its status (`pruned`), not `failed`."""
    # Under `torchrun`/`accelerate launch` every process trains; only the first one writes the manifest.
    main = int(os.environ.get("RANK", "0")) == 0
    if main:
        mark_stage(run_dir, "train", "running")
    try:
        choose_training_heap(cfg, model_path, data, plan, console)
        base = _load_base(cfg, model_path, data.class_labels)
        tuned, result = train(
            cfg,
            data,
            base,
            tok,
            run_dir,
            console,
            resume=resume,
            gradient_checkpointing=plan.gradient_checkpointing if plan else None,
            precision=plan.precision if plan else None,
            on_eval=on_eval,
        )
    except StopTraining as e:
        if main:
            mark_stage(run_dir, "train", e.status, stopped=str(e))
        raise
    except BaseException:
        if main:
            mark_stage(run_dir, "train", "failed")
        raise
    if main:
        mark_stage(run_dir, "train", "done", train=result.as_dict())
    return tuned, result


def load_prepared(run_dir: Path, cfg: RunConfig, tok: Any) -> PreparedData:
    """The splits the data stage wrote into `run_dir`, tokenized again exactly as then."""
    manifest = read_manifest(run_dir)
    if manifest["stages"].get("data", {}).get("status") != "done":
        raise FileNotFoundError(f"{run_dir} has no prepared data; run `tunesmith data prepare` first")
    preflight = json.loads((run_dir / "data" / "preflight.json").read_text(encoding="utf-8"))
    splits = []
    for name in ("train", "val", "test"):
        examples = read_prepared_examples(run_dir / "data" / f"{name}.jsonl")
        kept, encoded, issues, _ = encode_split(
            tok,
            examples,
            cfg.train.max_length,
            preflight["stop_token_ids"],
            cfg.data.on_overlength,
            cfg.train.objective,
            {lab: i for i, lab in enumerate(preflight.get("class_labels", []))},
        )
        if issues:
            raise DataError(issues)
        splits.append(Split(kept, encoded))
    return PreparedData.from_preflight(splits[0], splits[1], splits[2], preflight)


def find_unfinished(cfg: RunConfig, stage: str) -> Path:
    """The newest run of this config (same name, same settings) whose `stage` is not done, to resume."""
    root = Path(cfg.runs_dir)
    runs = [p for p in root.glob(f"{cfg.name}-*") if (p / "manifest.json").is_file()] if root.is_dir() else []
    for run_dir in sorted(runs, key=lambda p: (read_manifest(p)["created"], p.name), reverse=True):
        stages = read_manifest(run_dir)["stages"]
        if stages.get("data", {}).get("status") == "done" and stages.get(stage, {}).get("status") != "done":
            differ = _config_diff(
                load_run_config(run_dir).model_dump(mode="json"), cfg.model_dump(mode="json")
            )
            # What the recipe derived for this run differs from the defaults by design, unless set now.
            derived = _preflight(run_dir).get("recipe", {})
            differ = [
                d
                for d in differ
                if d not in derived or d.removeprefix("train.") in cfg.train.model_fields_set
            ]
            if differ:
                raise ValueError(
                    f"{run_dir} was started with other settings ({', '.join(differ[:5])}); "
                    "resume it by its directory, or start a new run without --resume"
                )
            return run_dir
    raise FileNotFoundError(f"no unfinished run of {cfg.name!r} in {root} to resume; run without --resume")


def _config_diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _config_diff(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [prefix.rstrip(".")] if a != b else []


def train_run(run_dir: Path, console: Console, resume: bool = False) -> TrainResult:
    """The train stage on a run directory with prepared data (`resume`: from its latest checkpoint)."""
    cfg = load_run_config(run_dir)
    model_path = read_manifest(run_dir)["model_path"]
    tok = load_tokenizer(model_path)
    data = load_prepared(run_dir, cfg, tok)
    console.print(f"run directory: [bold]{run_dir}[/bold]")
    return _train_stage(cfg, data, model_path, tok, run_dir, console, resume)[1]


def train_new(cfg: RunConfig, console: Console) -> tuple[Path, TrainResult]:
    """Data stage into a new run directory, then the train stage."""
    check_method_available(cfg.method, cfg.train.kernels, cfg.train.attention)
    cfg, run_dir, model_path, tok, data, plan = _start_run(cfg, console, refuse_unfit=True)
    return run_dir, _train_stage(cfg, data, model_path, tok, run_dir, console, resume=False, plan=plan)[1]


@dataclass
class Trained:
    """A run trained in this process, its model still in memory (`tune` scores it on val next)."""

    cfg: RunConfig  # as it trained (recipe applied)
    run_dir: Path
    model_path: str
    tok: Any
    data: PreparedData
    model: Any
    result: TrainResult


def train_trial(
    cfg: RunConfig,
    console: Console,
    on_eval: EvalHook | None = None,
    gate: Callable[[RunConfig, Plan, PreparedData], None] | None = None,
    on_run_dir: Callable[[Path], None] | None = None,
) -> Trained:
    """`tune`: the data and train stages of a new run, as `tunesmith train CFG` runs them. `gate`: see
    _start_run; `on_run_dir(run_dir)`: called once the run directory exists, before training."""
    check_method_available(cfg.method, cfg.train.kernels, cfg.train.attention)
    cfg, run_dir, model_path, tok, data, plan = _start_run(cfg, console, refuse_unfit=True, gate=gate)
    if on_run_dir is not None:
        on_run_dir(run_dir)
    model, result = _train_stage(
        cfg, data, model_path, tok, run_dir, console, resume=False, plan=plan, on_eval=on_eval
    )
    return Trained(cfg, run_dir, model_path, tok, data, model, result)


def evaluate_trained(
    cfg: RunConfig,
    trained: Trained,
    console: Console,
    split: str = "test",
    out_dir: Path | None = None,
    base_pass: bool = True,
) -> EvalResult:
    """The eval stage's scores of a model trained in this process, on `split`, into `out_dir`;
    `base_pass` False (a tune trial): the tuned model's answers only (evaluate)."""
    return _evaluate(
        cfg,
        trained.run_dir,
        trained.model,
        trained.tok,
        trained.data,
        console,
        trained.model_path,
        split,
        out_dir,
        base_pass,
    )


def run_all(cfg: RunConfig, console: Console, resume_dir: Path | None = None) -> RunOutcome:
    """Every stage; `resume_dir`: an unfinished run to continue (training from its latest checkpoint)."""
    # Before any data or model work: a method this machine cannot run (qlora without CUDA) fails now.
    check_method_available(cfg.method, cfg.train.kernels, cfg.train.attention)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        raise ValueError(
            f"`tunesmith run` is one process, and this launch has {world} (WORLD_SIZE): train under the "
            "launcher with `tunesmith data prepare CFG` then `torchrun ... -m tunesmith.cli train RUN_DIR`, "
            "and evaluate in one process with `tunesmith eval RUN_DIR`"
        )
    plan: Plan | None = None
    if resume_dir is None:
        cfg, run_dir, model_path, tok, data, plan = _start_run(cfg, console, refuse_unfit=True)
    else:
        # The run's own config: what it started with, recipe included (find_unfinished checked the rest).
        cfg = load_run_config(resume_dir)
        run_dir, model_path = resume_dir, read_manifest(resume_dir)["model_path"]
        console.print(f"resuming run directory: [bold]{run_dir}[/bold]")
        tok = load_tokenizer(model_path)
        data = load_prepared(run_dir, cfg, tok)
    tuned, _ = _train_stage(
        cfg, data, model_path, tok, run_dir, console, resume=resume_dir is not None, plan=plan
    )

    ev = _evaluate(cfg, run_dir, tuned, tok, data, console, model_path)
    mark_stage(run_dir, "eval", "done")
    report = build_report(run_dir, title=f"{cfg.name}: fine-tuning report")
    print_eval(ev, console)
    console.print(f"report: [bold]{report}[/bold]")
    return RunOutcome(run_dir, ev)


def _preflight(run_dir: Path) -> dict[str, Any]:
    return dict(json.loads((run_dir / "data" / "preflight.json").read_text(encoding="utf-8")))


def _load_classifier_dir(path: str) -> Any:
    import torch
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32)


def _evaluate(
    cfg: RunConfig,
    run_dir: Path,
    model: Any,
    tok: Any,
    data: PreparedData,
    console: Console,
    model_path: str,
    split: str = "test",
    out_dir: Path | None = None,
    base_pass: bool = True,
) -> EvalResult:
    """Generation eval for sft/dpo; label probabilities (classify) or held-out loss (pretrain) otherwise.
    `split` and `out_dir` (default run_dir/eval): `tune` scores a trial on val into its own folder, with
    `base_pass` False: generation then skips the base and the unconstrained passes (a forward pass over the
    held-out items is cheap, so classify and pretrain keep theirs)."""
    load_base = _base_loader(cfg, model_path, model.device, data.class_labels)
    if cfg.train.objective in ("classify", "pretrain"):
        return evaluate_heldout(
            cfg, run_dir, model, tok, data, load_base=load_base, console=console, split=split, out_dir=out_dir
        )
    answers = AnswerSpace.from_dict(data.preflight.get("answer_space"))
    examples = getattr(data, split).examples
    return evaluate(
        cfg,
        run_dir,
        model,
        tok,
        examples,
        console,
        load_base=load_base,
        answers=answers,
        out_dir=out_dir,
        base_pass=base_pass,
        unconstrained_pass=base_pass,
    )


def load_trained(run_dir: Path, cfg: RunConfig, manifest: dict[str, Any]) -> tuple[Any, Any]:
    """A trained run's model (its base with the adapter, or its own weights; a classifier with its head) and
    the tokenizer training used, on the CPU."""
    saved = run_dir / output_dir_name(cfg.method)
    model: Any
    if cfg.method.name in PEFT_METHODS:
        if not (saved / "adapter_config.json").is_file():
            raise FileNotFoundError(f"{saved} has no adapter; run `tunesmith train` first")
        tok = load_tokenizer(str(saved))
        labels = read_class_labels(run_dir / "data")
        model = load_adapter(_load_base(cfg, manifest["model_path"], labels), saved)
    else:
        if not (saved / "config.json").is_file():
            raise FileNotFoundError(f"{saved} has no model; run `tunesmith train` first")
        tok = load_tokenizer(str(saved))
        model = (
            load_model(str(saved)) if cfg.train.objective != "classify" else _load_classifier_dir(str(saved))
        )
    return model, tok


def eval_run(run_dir: Path, console: Console) -> RunOutcome:
    """Re-run the eval stage of an existing run from its saved adapter (or model) and test split."""
    cfg = load_run_config(run_dir)
    check_method_available(cfg.method, cfg.train.kernels, cfg.train.attention)
    manifest = read_manifest(run_dir)
    model, tok = load_trained(run_dir, cfg, manifest)
    model = _on_accelerator(model)
    data = load_prepared(run_dir, cfg, tok)
    ev = _evaluate(cfg, run_dir, model, tok, data, console, manifest["model_path"])
    mark_stage(run_dir, "eval", "done")
    build_report(run_dir, title=f"{cfg.name}: fine-tuning report")
    print_eval(ev, console)
    return RunOutcome(run_dir, ev)


def print_eval(ev: EvalResult, console: Console) -> None:
    t = Table(title=f"base vs tuned on {ev.n_examples} held-out examples", title_justify="left")
    for col in ("metric", "base", "tuned", "delta (rel) [95% CI]", "McNemar p", "target", "status"):
        t.add_column(col)
    for r in ev.metrics:
        lo, hi = r["delta_ci"]
        style = {"PASS": "green", "FAIL": "red", "UNCERTAIN": "yellow"}.get(r["status"] or "", "")
        name = r["metric"] + (" *" if r["metric"] == ev.primary_metric else "")
        t.add_row(
            name,
            f"{r['base']:.3f}",
            f"{r['tuned']:.3f}",
            f"{r['delta']:+.3f}"
            + (f" ({100 * r['delta_rel']:+.0f}%)" if r.get("delta_rel") is not None else "")
            + f" [{lo:+.3f}, {hi:+.3f}]",
            f"{r['p_value']:.3g}" if r.get("p_value") is not None else "",
            r["target"] or "",
            f"[{style}]{r['status']}[/{style}]" if r["status"] else "",
        )
    console.print(t)
    if c := ev.sections.get("constrained"):
        line = f"decoded inside {c['answer_space']}"
        if free := c.get("invalid_share_unconstrained"):
            line += (
                f"; unconstrained, {100 * free['tuned']:.1f}% of the tuned model's answers (base "
                f"{100 * free['base']:.1f}%) were outside it"
            )
        console.print(line, highlight=False)
