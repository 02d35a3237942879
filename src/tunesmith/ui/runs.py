"""What the Runs and Run pages show, read from the registry and the run directories (never written here:
promote and rollback go through tunesmith.registry, as the CLI's `runs promote` / `runs rollback` do)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.eval.report import verdict
from tunesmith.eval.result import eval_path, has_eval, read_eval
from tunesmith.metrics_log import FILE_NAME as METRICS_FILE
from tunesmith.metrics_log import read_metrics
from tunesmith.registry import STAGE_ORDER, RunRow, aliases, get_run, list_runs

# Fields of a metrics.jsonl record the Run page plots (loss and val_loss share one chart).
CURVES = ("loss", "val_loss", "lr", "tokens_per_s")


@dataclass(frozen=True)
class RunView:
    id: str
    name: str
    created: str
    stage: str
    status: str  # one word: finished, failed, running or created (from the manifest's stage statuses)
    method: str
    primary: str  # "accuracy: base 0.250 → tuned 0.812 (+0.562, 95% CI [...])" or ""
    verdict: str  # the report's headline ("All 1 target(s) met"), or ""
    verdict_class: str  # pass, fail or none
    parent_run: str | None
    feedback_sets: list[str]
    tune: str
    aliases: list[str]
    trained: bool


@dataclass(frozen=True)
class RunFiles:
    """What a run directory holds that its page links to."""

    report: bool
    preflight: bool
    checkpoints: list[str]
    exports: list[str]
    review_saved: bool
    has_predictions: bool
    stages: dict[str, str] = field(default_factory=dict)


def _status(manifest: dict[str, Any]) -> str:
    stages: dict[str, dict[str, Any]] = manifest.get("stages", {})
    states = [s.get("status") for s in stages.values()]
    if any(st in ("failed", "diverged", "killed") for st in states):
        return "failed"
    if stages.get("eval", {}).get("status") == "done":
        return "finished"
    return "running" if stages else "created"


def _tune_tag(tag: dict[str, Any] | None) -> str:
    if not tag:
        return ""
    return f"{tag['study']} #{tag['trial']} {tag.get('state', '')}".strip() + (
        " (chosen)" if tag.get("chosen") else ""
    )


def _verdict(run: RunRow) -> tuple[str, str, str]:
    """(class, headline, the primary metric's base -> tuned line with its CI) from eval/eval.json."""
    if not has_eval(run.path / "eval"):
        return "none", "", ""
    path = eval_path(run.path / "eval")
    try:
        ev = read_eval(path).as_json()  # eval.json is read by the module that writes it
        return verdict(ev) if ev["metrics"] else ("none", "", "")
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        # One damaged file must not take the whole list down: the run's row says what is wrong instead.
        return (
            "fail",
            f"{path} cannot be read ({type(e).__name__}: {e}); `tunesmith eval` writes it again",
            "",
        )


def run_view(run: RunRow, alias_names: list[str]) -> RunView:
    m = run.manifest
    cls, head, detail = _verdict(run)
    return RunView(
        id=run.id,
        name=run.name,
        created=run.created,
        stage=run.stage,
        status=_status(m),
        method=run.method,
        primary=detail,
        verdict=head,
        verdict_class=cls,
        parent_run=run.parent_run,
        feedback_sets=[str(f.get("id")) for f in m.get("feedback_sets") or []],
        tune=_tune_tag(m.get("tune")),
        aliases=alias_names,
        trained=m.get("stages", {}).get("train", {}).get("status") == "done",
    )


def _aliases_by_run(runs_dir: Path) -> dict[str, list[str]]:
    by_run: dict[str, list[str]] = {}
    for alias, run_id in aliases(runs_dir).items():
        by_run.setdefault(run_id, []).append(alias)
    return by_run


def all_runs(runs_dir: Path) -> list[RunView]:
    """Every run of the registry, newest first."""
    by_run = _aliases_by_run(runs_dir)
    return [run_view(r, by_run.get(r.id, [])) for r in reversed(list_runs(runs_dir))]


def one_run(runs_dir: Path, run_id: str) -> tuple[RunView, RunRow]:
    """A run by id; RegistryError when the registry has no such run."""
    row = get_run(runs_dir, run_id)
    return run_view(row, _aliases_by_run(runs_dir).get(row.id, [])), row


def run_files(run: RunRow) -> RunFiles:
    d = run.path
    checkpoints = sorted(
        (p.name for p in (d / "checkpoints").glob("step-*") if p.is_dir()),
        key=lambda n: int(n.split("-")[1]) if n.split("-")[1].isdigit() else 0,
    )
    exports = sorted(p.name for p in (d / "export").iterdir()) if (d / "export").is_dir() else []
    stages = {s: run.manifest.get("stages", {}).get(s, {}).get("status", "") for s in STAGE_ORDER}
    return RunFiles(
        report=(d / "report.html").is_file(),
        preflight=(d / "data" / "preflight.html").is_file(),
        checkpoints=checkpoints,
        exports=exports,
        review_saved=(d / "review" / "scores.json").is_file(),
        has_predictions=(d / "eval" / "predictions.jsonl").is_file(),
        stages=stages,
    )


def curve_points(run_dir: Path, after: int) -> list[dict[str, Any]]:
    """The metrics.jsonl records after step `after`, reduced to the plotted fields."""
    records = read_metrics(run_dir / METRICS_FILE)
    return [{"step": r["step"], **{k: r.get(k) for k in CURVES}} for r in records if int(r["step"]) > after]


def training_done(run: RunRow) -> bool:
    """No more points will come: training finished, failed or was stopped by tune."""
    status = run.manifest.get("stages", {}).get("train", {}).get("status")
    return status is not None and status != "running"
