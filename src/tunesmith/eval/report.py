"""One self-contained HTML page per run (every image embedded as a data: URI): verdict, metric table with
deltas and CIs, loss curves, confusion matrices, forgetting probe, human review, worst regressions and best
gains side by side, samples with hallucinated spans highlighted. `build_comparison` puts several runs on one
page (iterations of the same task)."""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.eval.result import eval_path, has_eval, read_eval
from tunesmith.io import atomic_write_bytes, atomic_write_text
from tunesmith.metrics_log import read_metrics


def loss_plot_png(records: list[dict[str, Any]]) -> bytes | None:
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=110)
    steps = [r["step"] for r in records]
    ax.plot(steps, [r["loss"] for r in records], label="train loss", color="#4C72B0", linewidth=1.4)
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    if val:
        ax.plot([s for s, _ in val], [v for _, v in val], "o-", label="validation loss", color="#DD8452")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (per token under the loss)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def confusion_png(classification: dict[str, Any]) -> bytes | None:
    """Base and tuned confusion matrices side by side (rows: reference label, columns: output)."""
    if not classification or "confusion" not in classification.get("tuned", {}):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4), dpi=100)
    for ax, which in zip(axes, ("base", "tuned"), strict=True):
        rep = classification[which]
        cm = rep["confusion"]
        labels = rep["confusion_labels"]
        ax.imshow(cm, cmap="Blues")
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        top = max((max(r) for r in cm), default=0)
        for i, r in enumerate(cm):
            for j, v in enumerate(r):
                ax.text(
                    j,
                    i,
                    str(v),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if v > top / 2 else "black",
                )
        ax.set_title(f"{which}: accuracy {rep.get('accuracy', 0):.2f}")
        ax.set_xlabel("model output")
        ax.set_ylabel("reference")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _img(png: bytes, alt: str) -> str:
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"


def _fmt(x: float | None, digits: int = 3) -> str:
    return "–" if x is None or x != x else f"{x:.{digits}f}"


def _rel(row: dict[str, Any]) -> str:
    rel = row.get("delta_rel")
    return f" ({100 * rel:+.0f}%)" if rel is not None else ""


def _delta(row: dict[str, Any]) -> str:
    lo, hi = row["delta_ci"]
    if row["delta"] != row["delta"]:  # NaN: no example has a score (e.g. readability of empty outputs)
        return "–<br><span class=ci>no example scored</span>"
    return f"{row['delta']:+.3f}{_rel(row)}<br><span class=ci>95% CI [{lo:+.3f}, {hi:+.3f}]</span>"


def _better(row: dict[str, Any]) -> str:
    """'better' / 'worse' / 'no clear change' from the delta's CI and the metric's direction."""
    hib = row.get("higher_is_better", True)
    lo, hi = row["delta_ci"]
    if hib is None or lo != lo:
        return ""
    if lo > 0 or hi < 0:
        up = lo > 0
        return "better" if up == hib else "worse"
    return "no clear change"


def _p(row: dict[str, Any]) -> str:
    if row.get("p_value") is None:
        return ""
    b, c = row["discordant"]
    return f"{row['p_value']:.3g}<br><span class=ci>{c} gained, {b} lost</span>"


def highlight(text: str, spans: list[dict[str, Any]]) -> str:
    """HTML-escaped text with each span wrapped in <mark class=hall> (kind in the tooltip)."""
    out, pos = [], 0
    for sp in sorted(spans, key=lambda s: s["start"]):
        if sp["start"] < pos:
            continue
        out.append(html.escape(text[pos : sp["start"]]))
        out.append(
            f"<mark class=hall title='not in the input or reference ({html.escape(sp['kind'])})'>"
            f"{html.escape(text[sp['start'] : sp['end']])}</mark>"
        )
        pos = sp["end"]
    out.append(html.escape(text[pos:]))
    return "".join(out)


CSS = """
body{font-family:-apple-system,Segoe UI,Roboto,Helvetica,Arial,sans-serif;margin:2rem auto;max-width:1150px;color:#222;padding:0 1rem}
h1{font-size:1.5rem;margin-bottom:.2rem} .sub{color:#666;margin-top:0} h2{margin-top:2rem}
.verdict{padding:1rem 1.2rem;border-radius:8px;font-size:1.15rem;margin:1rem 0}
.pass{background:#e6f4ea;border:1px solid #34a853} .fail{background:#fce8e6;border:1px solid #d93025}
.none{background:#eef3fb;border:1px solid #4C72B0} .warn{background:#fef7e0;border:1px solid #f9ab00;padding:.6rem 1rem;border-radius:6px}
table{border-collapse:collapse;width:100%;margin:1rem 0} th,td{border-bottom:1px solid #ddd;padding:.45rem .6rem;text-align:left;vertical-align:top}
th{background:#f6f6f6} td.num{font-variant-numeric:tabular-nums} .ci{color:#777;font-size:.8rem}
.PASS{color:#137333;font-weight:bold} .FAIL{color:#c5221f;font-weight:bold} .UNCERTAIN{color:#b06000;font-weight:bold}
.better{color:#137333} .worse{color:#c5221f}
pre{white-space:pre-wrap;word-break:break-word;margin:0;font-size:.82rem;font-family:ui-monospace,Menlo,Consolas,monospace}
.samples td{width:25%} .good{background:#f1f8f3} .bad{background:#fdf1f0} img{max-width:100%}
.kv{color:#555;font-size:.9rem} mark.hall{background:#ffd6d1;border-bottom:2px solid #d93025;padding:0 1px}
.cols{display:grid;grid-template-columns:1fr 1fr;gap:1.2rem} .cols h3{margin:.4rem 0}
.card{border:1px solid #ddd;border-radius:6px;padding:.6rem;margin-bottom:.6rem} .card pre{margin:.2rem 0 .5rem}
.lab{font-size:.75rem;color:#666;text-transform:uppercase;letter-spacing:.03em}
"""


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def verdict(ev: dict[str, Any]) -> tuple[str, str, str]:
    """(css class, headline, detail line) for a run's eval result."""
    rows = ev["metrics"]
    primary = ev["primary_metric"]
    prim = next((r for r in rows if r["metric"] == primary), rows[0] if rows else None)
    with_target = [r for r in rows if r["status"]]
    if with_target:
        failed = [r["metric"] for r in with_target if r["status"] == "FAIL"]
        uncertain = [r["metric"] for r in with_target if r["status"] == "UNCERTAIN"]
        if failed:
            cls, head = "fail", f"Targets missed: {', '.join(failed)}"
        elif uncertain:
            cls, head = "none", f"Targets met on the estimate, but uncertain: {', '.join(uncertain)}"
        else:
            cls, head = "pass", f"All {len(with_target)} target(s) met"
    else:
        cls, head = "none", "No targets declared"
    detail = ""
    if prim:
        lo, hi = prim["delta_ci"]
        judgement = _better(prim)
        said = {
            "better": "the tuned model is better",
            "worse": "the tuned model is worse",
            "no clear change": "no clear difference between the models",
        }.get(judgement, "")
        detail = (
            f"{prim['metric']}: base {_fmt(prim['base'])} → tuned {_fmt(prim['tuned'])} "
            f"({prim['delta']:+.3f}{_rel(prim)}, 95% CI [{lo:+.3f}, {hi:+.3f}]) on {prim.get('n') or ev['n_examples']} "
            f"held-out examples" + (f": {said}." if said else ".")
        )
    return cls, head, detail


def _metric_table(ev: dict[str, Any]) -> list[str]:
    primary = ev["primary_metric"]
    parts = ["<table id=metrics><tr><th>metric</th><th>base</th><th>tuned [95% CI]</th>"]
    parts.append(
        "<th>change (tuned − base), relative</th><th>McNemar p</th><th>target</th><th>status</th></tr>"
    )
    for r in ev["metrics"]:
        lo, hi = r["tuned_ci"]
        name = html.escape(r["metric"]) + (" <b>(primary)</b>" if r["metric"] == primary else "")
        hib = r.get("higher_is_better", True)
        name += (
            "<br><span class=ci>"
            + {True: "higher is better", False: "lower is better"}.get(hib, "")
            + "</span>"
        )
        status = r["status"] or ""
        judgement = _better(r)
        parts.append(
            f"<tr><td>{name}</td><td class=num>{_fmt(r['base'])}</td>"
            f"<td class=num>{_fmt(r['tuned'])}<br><span class=ci>[{_fmt(lo)}, {_fmt(hi)}]</span></td>"
            f"<td class=num>{_delta(r)}<br><span class='{judgement.replace(' ', '-')}'>{judgement}</span></td>"
            f"<td class=num>{_p(r)}</td><td>{html.escape(r['target'] or '')}</td>"
            f"<td class='{status}'>{status}</td></tr>"
        )
    parts.append("</table>")
    parts.append(
        "<p class=kv>The 95% confidence intervals come from a paired bootstrap over the test examples: when an "
        "interval of the change excludes 0, the difference is unlikely to be luck. McNemar's p (0/1 metrics) is "
        "the chance of a split at least this uneven between examples gained and lost if both models were "
        "equally good.</p>"
    )
    return parts


def _example_card(p: dict[str, Any], primary: str | None) -> str:
    s = p["scores"].get(primary, {}) if primary else {}
    spans = p.get("hallucinated_spans", {})
    return (
        f"<div class=card><span class=lab>input</span><pre>{html.escape(p['prompt'])}</pre>"
        f"<span class=lab>reference</span><pre>{html.escape(p['reference'])}</pre>"
        f"<span class=lab>base ({_fmt(s.get('base'), 2)})</span><pre>{highlight(p['base'], spans.get('base', []))}</pre>"
        f"<span class=lab>tuned ({_fmt(s.get('tuned'), 2)})</span><pre>{highlight(p['tuned'], spans.get('tuned', []))}</pre></div>"
    )


def gains_and_regressions(
    preds: list[dict[str, Any]], metric: str, higher_better: bool | None, k: int = 5
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(best gains, worst regressions) by the per-example change of `metric`, in the better direction."""
    sign = -1.0 if higher_better is False else 1.0
    scored = []
    for p in preds:
        s = p["scores"].get(metric)
        if not s or s.get("base") is None or s.get("tuned") is None:
            continue
        scored.append((sign * (s["tuned"] - s["base"]), p))
    gains = [p for d, p in sorted(scored, key=lambda x: -x[0]) if d > 0][:k]
    regressions = [p for d, p in sorted(scored, key=lambda x: x[0]) if d < 0][:k]
    return gains, regressions


def _forgetting(fg: dict[str, Any]) -> list[str]:
    qa, tp = fg["qa"], fg["text_perplexity"]
    parts = ["<h2>Forgetting probe</h2>"]
    if fg["degraded"]:
        parts += [f"<p class=warn id=forgetting-warning>⚠ {html.escape(w)}</p>" for w in fg["warnings"]]
    else:
        parts.append(
            f"<p class=kv id=forgetting-ok>No forgetting beyond the margin ({fg['margin']:g}): general knowledge "
            "and general-text perplexity held up.</p>"
        )
    parts.append("<table id=forgetting><tr><th>check</th><th>base</th><th>tuned</th><th>change</th></tr>")
    parts.append(
        f"<tr><td>general-knowledge questions answered correctly ({qa['n']})</td><td class=num>{_fmt(qa['base'])}</td>"
        f"<td class=num>{_fmt(qa['tuned'])}</td><td class=num>{qa['delta']:+.3f}</td></tr>"
    )
    parts.append(
        f"<tr><td>perplexity on general English text (lower is better)</td><td class=num>{_fmt(tp['base'], 2)}</td>"
        f"<td class=num>{_fmt(tp['tuned'], 2)}</td><td class=num>{100 * tp['rel_change']:+.1f}%</td></tr></table>"
    )
    return parts


def _review(rv: dict[str, Any]) -> list[str]:
    b, t = rv["base"], rv["tuned"]
    lo, hi = rv["delta_ci"]
    parts = [f"<h2>Human review ({rv['n']} rated pairs, blind)</h2><table id=review>"]
    parts.append(
        "<tr><th></th><th>base</th><th>tuned</th><th>change</th><th>tuned wins / ties / loses</th></tr>"
    )
    parts.append(
        f"<tr><td>mean score (1-5)</td><td class=num>{b['mean']:.2f}<br><span class=ci>[{b['ci'][0]:.2f}, {b['ci'][1]:.2f}]</span></td>"
        f"<td class=num>{t['mean']:.2f}<br><span class=ci>[{t['ci'][0]:.2f}, {t['ci'][1]:.2f}]</span></td>"
        f"<td class=num>{rv['delta']:+.2f}<br><span class=ci>95% CI [{lo:+.2f}, {hi:+.2f}]</span></td>"
        f"<td class=num>{100 * rv['win_rate']:.0f}% / {100 * rv['tie_rate']:.0f}% / {100 * rv['loss_rate']:.0f}%</td></tr></table>"
    )
    if rv.get("comments"):
        parts.append(
            "<p class=kv>Comments: "
            + "; ".join(
                f"#{html.escape(str(c['id']))}: {html.escape(c['comment'])}" for c in rv["comments"][:10]
            )
            + "</p>"
        )
    return parts


def _classification(cl: dict[str, Any]) -> list[str]:
    b, t = cl["base"], cl["tuned"]
    if "accuracy" not in t:
        return []
    parts = [
        "<h2>Classification</h2><table id=classification><tr><th>score</th><th>base</th><th>tuned</th></tr>"
    ]
    for key in (
        "accuracy",
        "macro_f1",
        "macro_precision",
        "macro_recall",
        "micro_f1",
        "micro_precision",
        "micro_recall",
    ):
        parts.append(
            f"<tr><td>{key.replace('_', ' ')}</td><td class=num>{_fmt(b.get(key))}</td><td class=num>{_fmt(t.get(key))}</td></tr>"
        )
    parts.append(
        "</table><table><tr><th>label</th><th>support</th><th>base F1</th><th>tuned F1</th><th>tuned precision / recall</th></tr>"
    )
    for lab, s in t["per_label"].items():
        bs = b.get("per_label", {}).get(lab, {})
        parts.append(
            f"<tr><td>{html.escape(lab)}</td><td class=num>{s['support']}</td><td class=num>{_fmt(bs.get('f1'))}</td>"
            f"<td class=num>{_fmt(s['f1'])}</td><td class=num>{_fmt(s['precision'])} / {_fmt(s['recall'])}</td></tr>"
        )
    parts.append("</table>")
    png = confusion_png(cl)
    if png:
        parts.append(_img(png, "confusion matrices"))
    return parts


def _constrained(c: dict[str, Any]) -> list[str]:
    """How the answers were decoded: inside the training answers' closed set, and how often free
    generation (the unconstrained pass) answered outside it."""

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}%"

    rows = [("outside the set, constrained (as scored above)", c["invalid_share"])]
    if "invalid_share_unconstrained" in c:
        rows.append(("outside the set, unconstrained generation", c["invalid_share_unconstrained"]))
    parts = [
        "<h2>Constrained decoding</h2>",
        f"<p class=kv id=constrained-space>Answers decoded inside {html.escape(c['answer_space'])} "
        "(<code>eval.constrain: auto</code>; <code>off</code> generates freely).</p>",
        "<table id=constrained><tr><th>share of outputs</th><th>base</th><th>tuned</th></tr>",
    ]
    for name, v in rows:
        parts.append(f"<tr><td>{name}</td><td>{pct(v.get('base'))}</td><td>{pct(v.get('tuned'))}</td></tr>")
    for which, scores in (c.get("unconstrained_scores") or {}).items():
        for m, x in scores.items():
            parts.append(
                f"<tr><td>{html.escape(m)}, unconstrained ({which})</td><td colspan=2>{_fmt(x)}</td></tr>"
            )
    parts.append("</table>")
    return parts


def _speed(sp: dict[str, Any]) -> str:
    def one(name: str, x: dict[str, Any]) -> str:
        s = f"{name}: {x['tokens_per_s']} tokens/s batched, {x['mean_new_tokens']} tokens per answer"
        if "single" in x:
            s += f", {x['single']['latency_s_p50']} s per answer alone (median of {x['single']['n']})"
        return s

    return (
        "<p class=kv id=speed>Generation speed — "
        + html.escape("; ".join(one(k, sp[k]) for k in ("base", "tuned") if k in sp))
        + ".</p>"
    )


def build_report(run_dir: Path, title: str | None = None) -> Path:
    """Write report.html (and loss.png) from the run directory's artifacts; return the page's path."""
    manifest = _read_json(run_dir / "manifest.json") or {}
    # The report renders the JSON form of the eval result, section by section.
    ev = read_eval(run_dir / "eval").as_json() if has_eval(run_dir / "eval") else None
    records = read_metrics(run_dir / "metrics.jsonl")
    png = loss_plot_png(records)
    if png:
        atomic_write_bytes(run_dir / "loss.png", png)
    primary = ev["primary_metric"] if ev else None
    title = title or run_dir.name

    parts = [f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>"]
    parts.append(f"<style>{CSS}</style></head><body>")
    parts.append(f"<h1>{html.escape(title)}</h1>")
    parts.append(
        f"<p class=sub>base model <b>{html.escape(str(manifest.get('model', '?')))}</b> · method "
        f"<b>{html.escape(str(manifest.get('method', '?')))}</b> · run <code>{html.escape(run_dir.name)}</code></p>"
    )
    preds = _read_jsonl(run_dir / "eval" / "predictions.jsonl") if ev else []
    if ev:
        cls, head, detail = verdict(ev)
        extra = ""
        for w in ev.get("warnings", []):
            extra += f"<br><span class=kv>⚠ {html.escape(w)}</span>"
        rv = ev.get("review")
        if rv:
            extra += (
                f"<br><span class=kv>Human reviewers ({rv['n']} pairs): base {rv['base']['mean']:.2f} → tuned "
                f"{rv['tuned']['mean']:.2f} of 5; tuned preferred in {100 * rv['win_rate']:.0f}% of pairs.</span>"
            )
        parts.append(
            f"<div class='verdict {cls}' id=verdict><b>{html.escape(head)}</b><br>"
            f"<span class=kv>{html.escape(detail)}</span>{extra}</div>"
        )
        parts.append("<h2>Base vs tuned</h2>")
        parts += _metric_table(ev)
        if ev.get("speed"):
            parts.append(_speed(ev["speed"]))
        if ev.get("constrained"):
            parts += _constrained(ev["constrained"])
        if ev.get("classification"):
            parts += _classification(ev["classification"])
        if ev.get("forgetting"):
            parts += _forgetting(ev["forgetting"])
        if ev.get("review"):
            parts += _review(ev["review"])

    parts.append("<h2>Training</h2>")
    if png:
        parts.append(_img(png, "loss curves"))
    tr = manifest.get("train")
    if tr:
        parts.append(
            f"<p class=kv>{tr['steps']} optimizer steps, {tr['tokens']:,} tokens in {tr['seconds']:.0f} s; "
            f"{tr['trainable_params']:,} trainable of {tr['total_params']:,} parameters; final train loss "
            f"{tr['final_train_loss']:.4f}</p>"
        )
    pre = manifest.get("preflight")
    if pre:
        parts.append(
            f"<p class=kv>Data: {pre['counts']['train']} train / {pre['counts']['val']} val / {pre['counts']['test']} test "
            f"examples; {pre['tokens_per_epoch']:,} tokens per epoch, {100 * pre['share_under_loss']:.1f}% under the loss; "
            f"EOS trained in {100 * pre['eos_trained_share']:.0f}% of examples.</p>"
        )

    if ev and preds:
        prim_row = next((r for r in ev["metrics"] if r["metric"] == primary), None)
        hib = prim_row.get("higher_is_better", True) if prim_row else True
        gains, regressions = gains_and_regressions(preds, primary or "", hib)
        parts.append(f"<h2>Worst regressions and best gains ({html.escape(primary or '')})</h2>")
        parts.append("<div class=cols id=gains-regressions><div><h3>Worst regressions</h3>")
        parts += [_example_card(p, primary) for p in regressions] or [
            "<p class=kv>None: no example got worse.</p>"
        ]
        parts.append("</div><div><h3>Best gains</h3>")
        parts += [_example_card(p, primary) for p in gains] or [
            "<p class=kv>None: no example got better.</p>"
        ]
        parts.append("</div></div>")

        n = int(manifest.get("samples_in_report", 12))
        parts.append(f"<h2>Sample outputs ({min(n, len(preds))} of {len(preds)})</h2>")
        if any(p.get("hallucinated_spans") for p in preds):
            parts.append(
                "<p class=kv><mark class=hall>Highlighted</mark>: numbers, dates, amounts, ids, names or quoted "
                "labels found in neither the input nor the reference (possible hallucinations).</p>"
            )
        parts.append(
            "<table class=samples><tr><th>input</th><th>reference</th><th>base</th><th>tuned</th></tr>"
        )
        for p in preds[:n]:
            s = p["scores"].get(primary, {}) if primary else {}
            bcls = "good" if s.get("base") else "bad"
            tcls = "good" if s.get("tuned") else "bad"
            spans = p.get("hallucinated_spans", {})
            parts.append(
                f"<tr><td><pre>{html.escape(p['prompt'])}</pre><span class=ci>{html.escape(p['source'])}</span></td>"
                f"<td><pre>{html.escape(p['reference'])}</pre></td>"
                f"<td class={bcls}><pre>{highlight(p['base'], spans.get('base', []))}</pre></td>"
                f"<td class={tcls}><pre>{highlight(p['tuned'], spans.get('tuned', []))}</pre></td></tr>"
            )
        parts.append("</table>")
    parts.append("</body></html>")
    out = run_dir / "report.html"
    atomic_write_text(out, "\n".join(parts))
    return out


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        return {k: v for key, sub in d.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): d}


# Settings that name a run rather than change how it trains.
_NOT_SETTINGS = ("name", "runs_dir")


@dataclass(frozen=True)
class Iteration:
    """One run after the first, against the run before it: what changed and what it did to the score."""

    run: str
    changed: dict[str, tuple[Any, Any]]  # setting -> (before, after)
    primary: str
    before: float | None
    after: float | None
    targets_met: bool

    @property
    def gain(self) -> float | None:
        return None if self.before is None or self.after is None else self.after - self.before


def iterations(evs: list[tuple[Path, dict[str, Any], dict[str, Any]]]) -> list[Iteration]:
    """Consecutive runs in the order given: the settings that differ (from each manifest's config) and the
    primary metric of the later run's tuned model against the earlier one's."""
    out = []
    for (_, ev0, man0), (d, ev, man) in zip(evs, evs[1:], strict=False):
        a, b = _flat(man0.get("config", {})), _flat(man.get("config", {}))
        changed = {
            k: (a.get(k), b.get(k))
            for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k) and k not in _NOT_SETTINGS
        }
        primary = ev["primary_metric"]

        def tuned(e: dict[str, Any], metric: str = primary) -> float | None:
            return next((r["tuned"] for r in e["metrics"] if r["metric"] == metric), None)

        out.append(Iteration(d.name, changed, primary, tuned(ev0), tuned(ev), bool(ev.get("targets_met"))))
    return out


def iterations_summary(evs: list[tuple[Path, dict[str, Any], dict[str, Any]]]) -> list[str]:
    """Plain lines: after how many runs the targets passed, and which change moved the primary metric most."""
    lines = []
    met = next((i for i, (_, ev, _) in enumerate(evs) if ev.get("targets_met")), None)
    if met is None:
        lines.append(f"targets not passed in {len(evs)} run(s)")
    else:
        lines.append(f"targets passed at run {met + 1} of {len(evs)} ({evs[met][0].name})")
    steps = [it for it in iterations(evs) if it.gain is not None]
    if steps:
        best = max(steps, key=lambda it: it.gain or 0.0)
        change = ", ".join(f"{k} {v0!r} -> {v1!r}" for k, (v0, v1) in best.changed.items()) or "no setting"
        lines.append(f"largest gain in {best.primary}: {best.gain:+.3f} at {best.run} ({change})")
    return lines


def _iterations_html(evs: list[tuple[Path, dict[str, Any], dict[str, Any]]]) -> list[str]:
    parts = ["<h2>Iterations</h2>"]
    parts += [f"<p class=kv>{html.escape(line)}</p>" for line in iterations_summary(evs)]
    its = iterations(evs)
    if its:
        parts.append(
            "<table id=iterations><tr><th>run</th><th>changed from the run before</th>"
            f"<th>{html.escape(its[0].primary)} (tuned)</th><th>change</th><th>targets</th></tr>"
        )
        for it in its:
            changed = "<br>".join(
                f"<code>{html.escape(k)}</code>: {html.escape(repr(v0))} → {html.escape(repr(v1))}"
                for k, (v0, v1) in it.changed.items()
            )
            gain = "–" if it.gain is None else f"{it.gain:+.3f}"
            parts.append(
                f"<tr><td><code>{html.escape(it.run)}</code></td><td>{changed or 'nothing'}</td>"
                f"<td class=num>{_fmt(it.after)}</td><td class=num>{gain}</td>"
                f"<td>{'met' if it.targets_met else 'missed'}</td></tr>"
            )
        parts.append("</table>")
    return parts


def load_evaluated(run_dirs: list[Path]) -> list[tuple[Path, dict[str, Any], dict[str, Any]]]:
    """(run dir, eval.json, manifest) of each run; FileNotFoundError names a run not evaluated yet."""
    evs = []
    for d in run_dirs:
        if not has_eval(d / "eval"):
            raise FileNotFoundError(f"{eval_path(d / 'eval')} does not exist; run `tunesmith eval {d}` first")
        evs.append((d, read_eval(d / "eval").as_json(), _read_json(d / "manifest.json") or {}))
    return evs


def build_comparison(run_dirs: list[Path], out: Path) -> Path:
    """One page across runs (iterations): each run's verdict, and per metric the tuned score with its CI and
    the change against that run's base, plus forgetting and review lines; then the iterations: after how many
    runs the targets passed, and what changed from each run to the next."""
    evs = load_evaluated(run_dirs)
    metrics: list[str] = []
    for _, ev, _ in evs:
        metrics += [r["metric"] for r in ev["metrics"] if r["metric"] not in metrics]
    parts = ["<!doctype html><html><head><meta charset=utf-8><title>tunesmith: run comparison</title>"]
    parts.append(f"<style>{CSS}</style></head><body><h1>Runs compared</h1>")
    parts.append("<table id=runs><tr><th>run</th><th>model · method</th><th>verdict</th></tr>")
    for d, ev, man in evs:
        cls, head, detail = verdict(ev)
        parts.append(
            f"<tr><td><code>{html.escape(d.name)}</code></td><td>{html.escape(str(man.get('model', '?')))} · "
            f"{html.escape(str(man.get('method', '?')))}</td><td class='verdict {cls}'><b>{html.escape(head)}</b>"
            f"<br><span class=kv>{html.escape(detail)}</span></td></tr>"
        )
    parts.append(
        "</table><h2>Tuned score per run (change vs its base)</h2><table id=comparison><tr><th>metric</th>"
    )
    parts += [f"<th>{html.escape(d.name)}</th>" for d, _, _ in evs]
    parts.append("</tr>")
    for m in metrics:
        parts.append(f"<tr><td>{html.escape(m)}</td>")
        for _, ev, _ in evs:
            r = next((x for x in ev["metrics"] if x["metric"] == m), None)
            if r is None:
                parts.append("<td>–</td>")
                continue
            lo, hi = r["tuned_ci"]
            parts.append(
                f"<td class=num>{_fmt(r['tuned'])} <span class=ci>[{_fmt(lo)}, {_fmt(hi)}]</span><br>"
                f"{r['delta']:+.3f}{_rel(r)} vs base {r['status'] and '· <span class=' + r['status'] + '>' + r['status'] + '</span>' or ''}</td>"
            )
        parts.append("</tr>")
    parts.append("<tr><td>forgetting probe (QA accuracy, text perplexity)</td>")
    for _, ev, _ in evs:
        fg = ev.get("forgetting")
        parts.append(
            f"<td class=num>{_fmt(fg['qa']['tuned'])} ({fg['qa']['delta']:+.3f}), "
            f"{_fmt(fg['text_perplexity']['tuned'], 2)} ({100 * fg['text_perplexity']['rel_change']:+.1f}%)"
            f"{' ⚠' if fg['degraded'] else ''}</td>"
            if fg
            else "<td>–</td>"
        )
    parts.append("</tr><tr><td>human review (tuned mean, win rate)</td>")
    for _, ev, _ in evs:
        rv = ev.get("review")
        parts.append(
            f"<td class=num>{rv['tuned']['mean']:.2f} ({100 * rv['win_rate']:.0f}% wins)</td>"
            if rv
            else "<td>–</td>"
        )
    parts.append("</tr></table>")
    parts += _iterations_html(evs)
    parts.append("</body></html>")
    atomic_write_text(out, "\n".join(parts))
    return out
