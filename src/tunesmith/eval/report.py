"""One self-contained HTML page per run: verdict, metric table, loss curves, side-by-side samples."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from tunesmith.io import atomic_write_bytes, atomic_write_text


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


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


def _fmt(x: float) -> str:
    return f"{x:.3f}"


def _delta(row: dict[str, Any]) -> str:
    lo, hi = row["delta_ci"]
    rel = f" ({100 * row['delta'] / row['base']:+.0f}%)" if row["base"] else ""
    return f"{row['delta']:+.3f}{rel}<br><span class=ci>95% CI [{lo:+.3f}, {hi:+.3f}]</span>"


CSS = """
body{font-family:-apple-system,Segoe UI,Roboto,Helvetica,Arial,sans-serif;margin:2rem auto;max-width:1100px;color:#222;padding:0 1rem}
h1{font-size:1.5rem;margin-bottom:.2rem} .sub{color:#666;margin-top:0}
.verdict{padding:1rem 1.2rem;border-radius:8px;font-size:1.15rem;margin:1rem 0}
.pass{background:#e6f4ea;border:1px solid #34a853} .fail{background:#fce8e6;border:1px solid #d93025}
.none{background:#eef3fb;border:1px solid #4C72B0}
table{border-collapse:collapse;width:100%;margin:1rem 0} th,td{border-bottom:1px solid #ddd;padding:.45rem .6rem;text-align:left;vertical-align:top}
th{background:#f6f6f6} td.num{font-variant-numeric:tabular-nums} .ci{color:#777;font-size:.8rem}
.PASS{color:#137333;font-weight:bold} .FAIL{color:#c5221f;font-weight:bold} .UNCERTAIN{color:#b06000;font-weight:bold}
pre{white-space:pre-wrap;word-break:break-word;margin:0;font-size:.82rem;font-family:ui-monospace,Menlo,Consolas,monospace}
.samples td{width:25%} .good{background:#f1f8f3} .bad{background:#fdf1f0} img{max-width:100%}
.kv{color:#555;font-size:.9rem}
"""


def build_report(run_dir: Path, title: str | None = None) -> Path:
    """Write report.html (and loss.png) from the run directory's artifacts; return the page's path."""
    manifest = (
        json.loads((run_dir / "manifest.json").read_text()) if (run_dir / "manifest.json").is_file() else {}
    )
    ev = (
        json.loads((run_dir / "eval" / "eval.json").read_text())
        if (run_dir / "eval" / "eval.json").is_file()
        else None
    )
    records = read_metrics(run_dir / "metrics.jsonl")
    png = loss_plot_png(records)
    if png:
        atomic_write_bytes(run_dir / "loss.png", png)
    primary = ev["primary_metric"] if ev else None

    parts = [
        f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title or run_dir.name)}</title>"
    ]
    parts.append(f"<style>{CSS}</style></head><body>")
    parts.append(f"<h1>{html.escape(title or run_dir.name)}</h1>")
    parts.append(
        f"<p class=sub>base model <b>{html.escape(str(manifest.get('model', '?')))}</b> · method "
        f"<b>{html.escape(str(manifest.get('method', '?')))}</b> · run <code>{html.escape(run_dir.name)}</code></p>"
    )
    if ev:
        rows = ev["metrics"]
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
            detail = (
                f"<br><span class=kv>{html.escape(prim['metric'])}: base {_fmt(prim['base'])} → tuned "
                f"{_fmt(prim['tuned'])} ({prim['delta'] * 100:+.1f} points) on {ev['n_examples']} held-out examples</span>"
            )
        parts.append(f"<div class='verdict {cls}' id=verdict><b>{html.escape(head)}</b>{detail}</div>")

        parts.append("<h2>Base vs tuned</h2><table id=metrics><tr><th>metric</th><th>base</th><th>tuned</th>")
        parts.append("<th>delta (tuned − base)</th><th>target</th><th>status</th></tr>")
        for r in rows:
            lo, hi = r["tuned_ci"]
            name = html.escape(r["metric"]) + (" <b>(primary)</b>" if r["metric"] == primary else "")
            status = r["status"] or ""
            parts.append(
                f"<tr><td>{name}</td><td class=num>{_fmt(r['base'])}</td>"
                f"<td class=num>{_fmt(r['tuned'])}<br><span class=ci>[{lo:.3f}, {hi:.3f}]</span></td>"
                f"<td class=num>{_delta(r)}</td><td>{html.escape(r['target'] or '')}</td>"
                f"<td class='{status}'>{status}</td></tr>"
            )
        parts.append("</table>")
        sp = ev.get("speed", {})
        if sp:
            parts.append(
                "<p class=kv>Generation: base {b[tokens_per_s]} tok/s, {b[mean_new_tokens]} tokens per answer; "
                "tuned {t[tokens_per_s]} tok/s, {t[mean_new_tokens]} tokens per answer.</p>".format(
                    b=sp["base"], t=sp["tuned"]
                )
            )

    parts.append("<h2>Training</h2>")
    if png:
        parts.append(f"<img alt='loss curves' src='data:image/png;base64,{base64.b64encode(png).decode()}'>")
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

    preds_path = run_dir / "eval" / "predictions.jsonl"
    if ev and preds_path.is_file():
        preds = [
            json.loads(line) for line in preds_path.read_text(encoding="utf-8").splitlines() if line.strip()
        ]
        n = int(manifest.get("samples_in_report", 12))
        parts.append(f"<h2>Sample outputs ({min(n, len(preds))} of {len(preds)})</h2>")
        parts.append(
            "<table class=samples><tr><th>input</th><th>reference</th><th>base</th><th>tuned</th></tr>"
        )
        for p in preds[:n]:
            s = p["scores"].get(primary, {}) if primary else {}
            bcls = "good" if s.get("base") else "bad"
            tcls = "good" if s.get("tuned") else "bad"
            parts.append(
                f"<tr><td><pre>{html.escape(p['prompt'])}</pre><span class=ci>{html.escape(p['source'])}</span></td>"
                f"<td><pre>{html.escape(p['reference'])}</pre></td>"
                f"<td class={bcls}><pre>{html.escape(p['base'])}</pre></td>"
                f"<td class={tcls}><pre>{html.escape(p['tuned'])}</pre></td></tr>"
            )
        parts.append("</table>")
    parts.append("</body></html>")
    out = run_dir / "report.html"
    atomic_write_text(out, "\n".join(parts))
    return out
