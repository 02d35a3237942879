"""Stages glued together: each stage reads what the previous one left in the run directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from tunesmith.config import RunConfig, validate_config
from tunesmith.data.pipeline import PreparedData, prepare, read_prepared_examples, write_prepared
from tunesmith.data.report import print_preflight, write_preflight_html
from tunesmith.eval.evaluate import evaluate
from tunesmith.eval.report import build_report
from tunesmith.models import load_model, load_tokenizer, resolve_model
from tunesmith.registry import init_manifest, mark_stage, new_run_dir, read_manifest
from tunesmith.train.loop import train
from tunesmith.train.plan import DataStats, Plan, PlanError, make_plan, plans_table, target_device


@dataclass
class RunOutcome:
    run_dir: Path
    eval: dict[str, Any] | None

    @property
    def targets_met(self) -> bool:
        return bool(self.eval is None or self.eval["targets_met"])


def check_data(cfg: RunConfig, console: Console) -> tuple[str, Any, PreparedData]:
    """Resolve the model's tokenizer and validate + tokenize all data. Raises DataError; writes nothing."""
    model_path = resolve_model(cfg.model)
    tok = load_tokenizer(model_path)
    from transformers import GenerationConfig

    try:
        gen_cfg = GenerationConfig.from_pretrained(model_path)
    except OSError:
        gen_cfg = None
    data = prepare(cfg, tok, gen_cfg)
    print_preflight(data.preflight, console)
    return model_path, tok, data


def plan_on_this_machine(cfg: RunConfig, model_path: str, data: PreparedData, console: Console) -> Plan:
    """The memory and time plan on this machine (no weights loaded), printed."""
    plan = make_plan(cfg, model_path, DataStats.from_prepared(data), target_device(None, cfg.train.threads))
    console.print(plans_table([plan]))
    return plan


def _start_run(
    cfg: RunConfig, console: Console, refuse_unfit: bool
) -> tuple[Path, str, Any, PreparedData, Plan]:
    model_path, tok, data = check_data(cfg, console)
    plan = plan_on_this_machine(cfg, model_path, data, console)
    if not plan.fits:
        if refuse_unfit:
            raise PlanError(plan.refusal())
        console.print(f"[yellow]warning:[/yellow] {plan.refusal()}", highlight=False)
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
    return run_dir, model_path, tok, data, plan


def prepare_run(cfg: RunConfig, console: Console) -> Path:
    """The data stage alone: a run directory holding the prepared splits and the pre-flight report."""
    return _start_run(cfg, console, refuse_unfit=False)[0]


def run_all(cfg: RunConfig, console: Console) -> RunOutcome:
    """Every stage. Raises PlanError before any weights load when the plan cannot fit this machine."""
    run_dir, model_path, tok, data, plan = _start_run(cfg, console, refuse_unfit=True)
    model = load_model(model_path)
    tuned, result = train(
        cfg,
        data,
        model,
        tok,
        run_dir,
        console,
        gradient_checkpointing=plan.gradient_checkpointing,
        precision=plan.precision,
    )
    mark_stage(run_dir, "train", "done", train=result.as_dict())

    ev = evaluate(cfg, run_dir, tuned, tok, data.test.examples, console)
    mark_stage(run_dir, "eval", "done")
    report = build_report(run_dir, title=f"{cfg.name}: fine-tuning report")
    print_eval(ev, console)
    console.print(f"report: [bold]{report}[/bold]")
    return RunOutcome(run_dir, ev)


def load_run_config(run_dir: Path) -> RunConfig:
    raw = yaml.safe_load((run_dir / "resolved.yaml").read_text(encoding="utf-8"))
    return validate_config(raw, base_dir=run_dir, source=str(run_dir / "resolved.yaml"))


def eval_run(run_dir: Path, console: Console) -> RunOutcome:
    """Re-run the eval stage of an existing run from its saved adapter and test split."""
    from peft import PeftModel

    cfg = load_run_config(run_dir)
    manifest = read_manifest(run_dir)
    adapter = run_dir / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter} has no adapter; run `tunesmith train` first")
    tok = load_tokenizer(str(adapter))
    base = load_model(manifest["model_path"])
    model = PeftModel.from_pretrained(base, str(adapter))
    test = read_prepared_examples(run_dir / "data" / "test.jsonl")
    ev = evaluate(cfg, run_dir, model, tok, test, console)
    mark_stage(run_dir, "eval", "done")
    build_report(run_dir, title=f"{cfg.name}: fine-tuning report")
    print_eval(ev, console)
    return RunOutcome(run_dir, ev)


def print_eval(ev: dict[str, Any], console: Console) -> None:
    t = Table(title=f"base vs tuned on {ev['n_examples']} held-out examples", title_justify="left")
    for col in ("metric", "base", "tuned", "delta [95% CI]", "target", "status"):
        t.add_column(col)
    for r in ev["metrics"]:
        lo, hi = r["delta_ci"]
        style = {"PASS": "green", "FAIL": "red", "UNCERTAIN": "yellow"}.get(r["status"] or "", "")
        name = r["metric"] + (" *" if r["metric"] == ev["primary_metric"] else "")
        t.add_row(
            name,
            f"{r['base']:.3f}",
            f"{r['tuned']:.3f}",
            f"{r['delta']:+.3f} [{lo:+.3f}, {hi:+.3f}]",
            r["target"] or "",
            f"[{style}]{r['status']}[/{style}]" if r["status"] else "",
        )
    console.print(t)
