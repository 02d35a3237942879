"""The pre-flight page: what the data stage found, before any training time is spent."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from tunesmith.data.answers import AnswerSpace
from tunesmith.io import atomic_write_text


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def length_histogram(lengths: dict[str, list[int]], max_length: int) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=110)
    top = max([max(v) for v in lengths.values() if v] + [max_length])
    bins = list(range(0, top + top // 40 + 2, max(1, top // 40)))
    for name, color in (("train", "#4C72B0"), ("val", "#55A868"), ("test", "#DD8452")):
        if lengths.get(name):
            ax.hist(lengths[name], bins=bins, alpha=0.6, label=name, color=color)
    ax.axvline(max_length, color="#c5221f", linestyle="--", label=f"max_length {max_length}")
    ax.set_xlabel("tokens per example")
    ax.set_ylabel("examples")
    ax.legend()
    return _png(fig)


CHART_LABELS = 40


def label_chart(labels: dict[str, dict[str, int]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({k for v in labels.values() for k in v})
    if len(names) > CHART_LABELS:
        # A bar per label stops being readable: the rarest ones are those a reader needs to see.
        train = labels.get("train", {})
        names = sorted(sorted(names, key=lambda n: (train.get(n, 0), n))[:CHART_LABELS])
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(names) + 1.2), dpi=110)
    height = 0.27
    for k, (split, color) in enumerate((("train", "#4C72B0"), ("val", "#55A868"), ("test", "#DD8452"))):
        counts = labels.get(split, {})
        total = sum(counts.values()) or 1
        ys = [i + (k - 1) * height for i in range(len(names))]
        ax.barh(ys, [counts.get(n, 0) / total for n in names], height=height, color=color, label=split)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("share of the split")
    ax.legend()
    return _png(fig)


LISTED_LABELS = 12  # more labels than this are summarised: their count, the range, the rarest


def label_summary(counts: dict[str, int]) -> str:
    if len(counts) <= LISTED_LABELS:
        return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    rarest = sorted(counts.items(), key=lambda kv: (kv[1], kv[0]))[:5]
    return (
        f"{len(counts)} labels, {min(counts.values())}-{max(counts.values())} examples each; rarest: "
        + ", ".join(f"{k} {v}" for k, v in rarest)
    )


def _table(rows: list[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


_TOTAL_KEYS = (
    "input",
    "normalized_changed",
    "degenerate",
    "pii_examples",
    "pii_dropped",
    "exact_duplicates",
    "near_duplicates",
    "conflicts",
    "conflicts_dropped",
    "kept",
)


def clean_totals(pre: dict[str, Any], mode: str = "clean") -> dict[str, Any]:
    """Cleaning counts summed over the splits in `mode`: `clean` (acted on) or `report` (the user's own
    val/test files, kept as given: the counts are findings only)."""
    reports = [r for r in pre["clean"].values() if r.get("mode", "clean") == mode]
    totals: dict[str, Any] = {k: sum(r.get(k, 0) for r in reports) for k in _TOTAL_KEYS}
    pii: dict[str, int] = {}
    for r in reports:
        for k, v in r["pii_found"].items():
            pii[k] = pii.get(k, 0) + v
    totals["pii_found"] = pii
    totals["splits"] = [name for name, r in pre["clean"].items() if r.get("mode", "clean") == mode]
    return totals


def conflict_pairs(pre: dict[str, Any]) -> list[dict[str, Any]]:
    return [{**p, "split": name} for name, r in pre["clean"].items() for p in r.get("conflict_pairs", [])]


def _findings(t: dict[str, Any]) -> str:
    pii = ", ".join(f"{k} {v}" for k, v in sorted(t["pii_found"].items())) or "none"
    return (
        f"{t['exact_duplicates']} exact + {t['near_duplicates']} near duplicates, {t['degenerate']} degenerate, "
        f"{t['pii_examples']} with PII ({pii}), {t['conflicts']} conflicting-answer pair(s)"
    )


def write_preflight_html(pre: dict[str, Any], path: Path, title: str = "pre-flight") -> Path:
    ct = clean_totals(pre)
    c = pre["counts"]
    parts = [
        f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title><style>",
        "body{font-family:-apple-system,Segoe UI,Roboto,Helvetica,Arial,sans-serif;margin:2rem auto;max-width:1000px;padding:0 1rem;color:#222}",
        "table{border-collapse:collapse;margin:.5rem 0 1.2rem}td,th{border-bottom:1px solid #ddd;padding:.35rem .7rem;text-align:left}",
        "img{max-width:100%}.warn{color:#b06000;font-weight:bold}code{font-size:.85rem}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<h2>Examples through each step</h2>",
        _table(
            [
                (
                    "read (train / val / test files)",
                    " / ".join(str(pre["read"][k]) for k in ("train", "val", "test")),
                ),
                ("text normalised", ct["normalized_changed"]),
                ("degenerate answers dropped", ct["degenerate"]),
                (
                    "examples with PII",
                    f"{ct['pii_examples']} ({', '.join(f'{k}: {v}' for k, v in sorted(ct['pii_found'].items())) or 'none'})",
                ),
                ("dropped for PII", ct["pii_dropped"]),
                ("exact duplicates dropped", ct["exact_duplicates"]),
                ("near-duplicates dropped", ct["near_duplicates"]),
                (
                    "conflicting-answer pairs (near-identical prompts, other answers)",
                    f"{ct['conflicts']} ({ct['conflicts_dropped']} examples dropped)",
                ),
                (
                    "contaminated train examples",
                    f"{pre['contamination']['train_examples']} ({pre['contamination']['action']})",
                ),
                ("final train / val / test", f"{c['train']} / {c['val']} / {c['test']}"),
            ]
        ),
        "<h2>Tokens</h2>",
        _table(
            [
                ("tokens per epoch (train)", f"{pre['tokens_per_epoch']:,}"),
                ("share of tokens under the loss", f"{100 * pre['share_under_loss']:.1f}%"),
                ("examples whose EOS is trained", f"{100 * pre['eos_trained_share']:.0f}%"),
                ("train/serve template parity", parity_line(pre)),
                ("over max_length", {k: v for k, v in pre["overlength"].items() if v} or "none"),
                ("answers", answers_line(pre) or "free text"),
            ]
        ),
        f"<img alt='token lengths' src='data:image/png;base64,{length_histogram(pre['token_lengths'], pre['max_length'])}'>",
    ]
    if pre.get("labels"):
        n_labels = len({k for v in pre["labels"].values() for k in v})
        parts += [
            f"<h2>Label balance{f' (the {CHART_LABELS} rarest of {n_labels} labels)' if n_labels > CHART_LABELS else ''}</h2>",
            f"<img alt='labels' src='data:image/png;base64,{label_chart(pre['labels'])}'>",
        ]
    held = clean_totals(pre, "report")
    if held["splits"]:
        parts += [
            f"<h2>Your {' and '.join(held['splits'])} file(s), kept as given</h2>",
            f"<p>{held['input']} rows read, every one evaluated. Found, not acted on: "
            f"{html.escape(_findings(held))}. Set <code>data.clean.eval_files: clean</code> to clean them "
            "like the train files.</p>",
        ]
    pairs = conflict_pairs(pre)
    if pairs:
        parts.append(
            f"<h2 class=warn>Conflicting answers: {ct['conflicts'] + held['conflicts']} pair(s)</h2>"
            "<p>Near-identical prompts with answers that do not match: a class boundary, or label noise. "
            "<code>data.clean.conflicts</code>: keep (default), drop, error.</p>"
            "<table><tr><th>split</th><th>first</th><th>second</th><th>Jaccard</th></tr>"
        )
        parts += [
            f"<tr><td>{p['split']}</td><td><code>{html.escape(p['first'])}</code> "
            f"{html.escape(p.get('first_prompt', ''))} → <b>{html.escape(p.get('first_answer', ''))}</b></td>"
            f"<td><code>{html.escape(p['second'])}</code> {html.escape(p['second_prompt'])} → "
            f"<b>{html.escape(p['second_answer'])}</b></td><td>{p['jaccard']}</td></tr>"
            for p in pairs
        ]
        parts.append("</table>")
    listed = pre["contamination"]["listed"]
    if listed:
        parts.append(
            f"<h2 class=warn>Contamination: {pre['contamination']['pairs']} pair(s)</h2><table><tr><th>train</th><th>held-out</th><th>split</th><th>Jaccard</th></tr>"
        )
        parts += [
            f"<tr><td>{html.escape(p['train'])}</td><td>{html.escape(p['eval'])}</td><td>{p['split']}</td><td>{p['jaccard']}</td></tr>"
            for p in listed
        ]
        parts.append("</table>")
    dropped = [d for r in pre["clean"].values() for d in r["dropped_examples"]]
    if dropped:
        parts.append(
            "<h2>Dropped examples (first of each reason)</h2><table><tr><th>source</th><th>reason</th><th>detail</th></tr>"
        )
        for d in dropped:
            detail = d.get("detail") or d.get("of") or ", ".join(d.get("kinds", []))
            parts.append(
                f"<tr><td>{html.escape(d['source'])}</td><td>{d['reason']}</td><td>{html.escape(str(detail))}</td></tr>"
            )
        parts.append("</table>")
    parts.append("</body></html>")
    atomic_write_text(path, "\n".join(parts))
    return path


def answers_line(pre: dict[str, Any]) -> str:
    """What the training answers are, and so how eval and serve decode (eval.constrain: auto)."""
    space = AnswerSpace.from_dict(pre.get("answer_space"))
    if space.kind == "free":
        return ""
    return f"{space.describe()}: eval and serve decode inside it (eval.constrain)"


def parity_line(pre: dict[str, Any]) -> str:
    """Template parity, or for an encoder (no chat template) how it reads its input instead."""
    inp = pre.get("input") or {}
    if inp.get("format") == "plain":
        n = inp.get("system_prompt_ignored", 0)
        return "none: an encoder reads plain text, [CLS] text [SEP]" + (
            f" (the system prompt of {n} train example(s) left out)" if n else ""
        )
    tp = pre["template_parity"]
    return f"{tp['identical']}/{tp['checked']} identical token ids"


def print_preflight(pre: dict[str, Any], console: Console) -> None:
    ct = clean_totals(pre)
    t = Table(title="pre-flight", show_header=False, title_justify="left")
    c = pre["counts"]
    t.add_row("examples", f"{c['train']} train / {c['val']} val / {c['test']} test")
    t.add_row(
        "cleaning (train files)",
        _findings(ct) + (f", {ct['conflicts_dropped']} dropped" if ct["conflicts_dropped"] else ""),
    )
    held = clean_totals(pre, "report")
    if held["splits"]:
        t.add_row(f"your {'/'.join(held['splits'])} file(s)", f"kept as given; found: {_findings(held)}")
    for p in conflict_pairs(pre)[:3]:
        t.add_row(
            "conflicting answers",
            f"{p['first']} {p.get('first_prompt', '')!r} -> {p.get('first_answer', '')!r}  vs  "
            f"{p['second']} {p['second_prompt']!r} -> {p['second_answer']!r}",
        )
    cont = pre["contamination"]
    style = "yellow" if cont["pairs"] else ""
    t.add_row(
        "contamination",
        f"[{style}]{cont['pairs']} train/held-out pair(s), action: {cont['action']}[/{style}]"
        if style
        else "none",
    )
    lt = pre["lengths"]["train"]
    t.add_row(
        "tokens per example (train)",
        f"min {lt['min']}, mean {lt['mean']}, p95 {lt['p95']}, max {lt['max']} (max_length {pre['max_length']})",
    )
    over = {k: v for k, v in pre["overlength"].items() if v}
    if over:
        t.add_row("over max_length", str(over))
    t.add_row(
        "tokens per epoch",
        f"{pre['tokens_per_epoch']:,} ({100 * pre['share_under_loss']:.1f}% under the loss)",
    )
    t.add_row("EOS trained", f"{100 * pre['eos_trained_share']:.0f}% of examples")
    t.add_row("train/serve template parity", parity_line(pre))
    if pre.get("labels"):
        t.add_row("labels (train)", label_summary(pre["labels"]["train"]))
    if answers := answers_line(pre):
        t.add_row("answers", answers)
    console.print(t)
