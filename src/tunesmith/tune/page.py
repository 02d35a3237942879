"""The study's page (study.html: history, parameter importances, parallel coordinates, what changed from one
best trial to the next, the chosen trial's config) and its JSON summary (study.json). One self-contained file:
plotly.js is embedded once, in the first figure, so the page works offline."""

from __future__ import annotations

import html
import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from tunesmith.io import atomic_write_json, atomic_write_text
from tunesmith.tune.states import state_of

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from tunesmith.tune.trial import StudyContext

__all__ = ["improvements", "summary", "write_json", "write_page"]


def _finite(x: Any) -> Any:
    return None if isinstance(x, float) and not math.isfinite(x) else x


def _trial_record(t: FrozenTrial) -> dict[str, Any]:
    a = t.user_attrs
    start, end = t.datetime_start, t.datetime_complete
    state = state_of(t)
    return {
        "number": t.number,
        "state": state,
        "params": t.params,
        "settings": a.get("settings"),  # what it trained with on each dimension (recipe applied)
        "value": _finite(t.value) if state == "complete" else None,
        "intermediate": {str(k): _finite(v) for k, v in sorted(t.intermediate_values.items())},
        "val": a.get("val"),
        "targets_met": a.get("targets_met"),
        "targets_pass": a.get("targets_pass"),
        "run_id": a.get("run_id"),
        "run_dir": a.get("run_dir"),
        "worker": a.get("worker"),
        "time": a.get("time"),
        "estimate_s": a.get("estimate_s"),
        "same_as": a.get("same_as"),  # a repeat of that trial's values, told its value, not trained
        "note": a.get("error") or a.get("not_run") or a.get("note"),
        "started": start.isoformat(timespec="seconds") if start else None,
        "finished": end.isoformat(timespec="seconds") if end else None,
        "duration_s": round((end - start).total_seconds(), 2) if start and end else None,
    }


def improvements(records: list[dict[str, Any]], maximize: bool) -> list[dict[str, Any]]:
    """Each time the best val value improved (trials in number order): the trial, its value, and the
    settings that differ from the previous best trial's: what each trained with (`settings`: a trial on
    another base has no sampled values but its own recipe's), else its sampled parameters."""
    out: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    for r in sorted(records, key=lambda r: r["number"]):
        v = r["value"]
        if r["state"] != "complete" or v is None:
            continue
        if best is not None and not (v > best["value"] if maximize else v < best["value"]):
            continue
        entry: dict[str, Any] = {"trial": r["number"], "value": v}
        if best is not None:
            old, new = best.get("settings") or best["params"], r.get("settings") or r["params"]
            keys = sorted(set(old) | set(new))
            entry.update(
                from_trial=best["number"],
                from_value=best["value"],
                delta=v - best["value"],
                changed={k: [old.get(k), new.get(k)] for k in keys if old.get(k) != new.get(k)},
            )
        out.append(entry)
        best = r
    return out


def summary(
    study: optuna.Study, ctx: StudyContext, best: FrozenTrial | None, result: dict[str, Any] | None
) -> dict[str, Any]:
    records = [_trial_record(t) for t in study.get_trials(deepcopy=False)]
    counts: dict[str, int] = {}
    for r in records:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    return {
        "study": ctx.study,
        "storage": ctx.storage,
        "metric": ctx.metric,
        "direction": "maximize" if ctx.maximize else "minimize",
        "val_limit": ctx.val_limit,
        "space": [d.as_dict() for d in ctx.space.dims],
        "fixed": ctx.space.fixed,
        "left_out": list(ctx.space.notes),
        "counts": counts,
        "best": None
        if best is None
        else {
            "trial": best.number,
            "value": _finite(best.value),
            "params": best.params,
            "run_id": best.user_attrs.get("run_id"),
            "targets_met_val": best.user_attrs.get("targets_met"),
        },
        "improvements": improvements(records, ctx.maximize),
        "result": result,
        "trials": records,
    }


def write_json(folder: Path, data: dict[str, Any]) -> Path:
    path = folder / "study.json"
    atomic_write_json(path, data)
    return path


def _figures(study: optuna.Study, ctx: StudyContext) -> list[tuple[str, Any | None, str]]:
    """(title, plotly figure or None, note) for each plot of the page."""
    from optuna import visualization as vis
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    varied = {k for t in complete for k in t.params if len({str(u.params.get(k)) for u in complete}) > 1}
    target = f"val {ctx.metric}"
    out: list[tuple[str, Any | None, str]] = []
    if complete:
        out.append(("Optimisation history", vis.plot_optimization_history(study, target_name=target), ""))
        out.append(
            ("Parallel coordinates", vis.plot_parallel_coordinate(study, target_name=target), "")
            if varied
            else ("Parallel coordinates", None, "needs a parameter that differs between complete trials")
        )
    else:
        out += [(t, None, "no complete trial yet") for t in ("Optimisation history", "Parallel coordinates")]
    if len(complete) >= 2 and varied:
        # With few trials Optuna's evaluator (PED-ANOVA) warns that an importance may be inaccurate: the
        # page says so under the plot rather than the warning going to the terminal.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fig = vis.plot_param_importances(study, target_name=target)
        notes = sorted({str(w.message) for w in caught})
        out.insert(1, ("Parameter importances", fig, " ".join(notes)))
    else:
        out.insert(1, ("Parameter importances", None, "needs two complete trials that differ in a parameter"))
    return out


def _config_yaml(ctx: StudyContext, best: FrozenTrial | None) -> str:
    if best is None:
        return ""
    run_dir = Path(best.user_attrs.get("run_dir", ""))
    resolved = run_dir / "resolved.yaml"
    if resolved.is_file():
        return resolved.read_text(encoding="utf-8")
    cfg = ctx.trial_config(dict(best.params), best.number)
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; font-size: 0.9rem; } td, th { border: 1px solid #ddd; padding: 3px 8px; }
th { background: #f4f4f4; text-align: left; } pre { background: #f7f7f7; padding: 1rem; overflow-x: auto; }
.complete { color: #1a7f37; } .pruned { color: #9a6700; } .failed, .killed { color: #cf222e; }
.plot { height: 440px; margin-bottom: 1.5rem; } .note { color: #666; font-style: italic; }
"""


def write_page(
    folder: Path,
    study: optuna.Study,
    ctx: StudyContext,
    best: FrozenTrial | None,
    result: dict[str, Any] | None,
) -> Path:
    data = summary(study, ctx, best, result)
    e = html.escape
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{e(ctx.study)}: tune</title>"
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Study {e(ctx.study)}</h1>",
        "<table>",
        f"<tr><th>objective</th><td>val {e(ctx.metric)} ({'higher' if ctx.maximize else 'lower'} is better), "
        f"first {ctx.val_limit or 'all'} val examples per trial</td></tr>",
        f"<tr><th>storage</th><td>{e(ctx.storage)}</td></tr>",
        f"<tr><th>trials</th><td>{e(', '.join(f'{n} {s}' for s, n in sorted(data['counts'].items())))}</td></tr>",
        f"<tr><th>space</th><td>{'<br>'.join(e(x) for x in ctx.space.describe())}</td></tr>",
        f"<tr><th>left out</th><td>{'<br>'.join(e(x) for x in ctx.space.notes)}</td></tr>",
    ]
    if best is not None:
        parts.append(
            f"<tr><th>chosen</th><td>trial {best.number}: val {e(ctx.metric)} {_fmt(best.value)} "
            f"(run {e(str(best.user_attrs.get('run_id')))})</td></tr>"
        )
    test = (result or {}).get("test")
    if test:
        verdict = (
            "targets met"
            if test.get("targets_met")
            else f"targets missed: {', '.join(test['failed_targets'])}"
        )
        ci = test.get("ci") or [None, None]
        parts.append(
            f"<tr><th>test</th><td>{e(str(test['primary_metric']))} {_fmt(test['value'])} "
            f"[95% CI {_fmt(ci[0])}, {_fmt(ci[1])}] on {test['n_examples']} test examples; {e(verdict)}</td></tr>"
        )
    parts.append("</table>")

    first = True
    for title, fig, note in _figures(study, ctx):
        parts.append(f"<h2>{e(title)}</h2>")
        if fig is None:
            parts.append(f"<p class='note'>{e(note)}</p>")
            continue
        parts.append(
            "<div class='plot'>"
            + fig.to_html(full_html=False, include_plotlyjs=first, default_height="440px")
            + "</div>"
        )
        if note:
            parts.append(f"<p class='note'>{e(note)}</p>")
        first = False

    parts.append("<h2>What changed from trial to trial that mattered</h2>")
    imp = data["improvements"]
    if not imp:
        parts.append("<p class='note'>no complete trial yet</p>")
    else:
        parts.append("<table><tr><th>trial</th><th>val</th><th>vs. previous best</th><th>changed</th></tr>")
        for i in imp:
            if "from_trial" not in i:
                parts.append(
                    f"<tr><td>{i['trial']}</td><td>{_fmt(i['value'])}</td><td>first complete trial</td><td></td></tr>"
                )
                continue
            changed = (
                "; ".join(f"{k}: {_fmt(a)} → {_fmt(b)}" for k, (a, b) in i["changed"].items())
                or "(same values)"
            )
            parts.append(
                f"<tr><td>{i['trial']}</td><td>{_fmt(i['value'])}</td><td>{i['delta']:+.4g} "
                f"(trial {i['from_trial']}: {_fmt(i['from_value'])})</td><td>{e(changed)}</td></tr>"
            )
        parts.append("</table>")

    parts.append(
        "<h2>Trials</h2><table><tr><th>#</th><th>state</th><th>val</th><th>params</th><th>run</th>"
        "<th>seconds</th><th>note</th></tr>"
    )
    for r in data["trials"]:
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in r["params"].items())
        parts.append(
            f"<tr><td>{r['number']}</td><td class='{e(r['state'].split()[0])}'>{e(r['state'])}</td>"
            f"<td>{_fmt(r['value'])}</td><td>{e(params)}</td><td>{e(r['run_id'] or '')}</td>"
            f"<td>{_fmt(r['duration_s'])}</td><td>{e(str(r['note'] or ''))}</td></tr>"
        )
    parts.append("</table>")
    parts.append("<h2>The chosen trial's config</h2>")
    config = _config_yaml(ctx, best)
    parts.append(
        f"<pre class='config'>{e(config)}</pre>" if config else "<p class='note'>no trial completed</p>"
    )
    parts.append("</body></html>")
    path = folder / "study.html"
    atomic_write_text(path, "\n".join(parts))
    return path
