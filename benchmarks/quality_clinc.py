"""Quality on real data, in one run: CLINC150 in-scope accuracy of tunesmith's recipes on the same rows.

The subset (`--per-intent`, default 10 train / 2 val / 4 test rows per intent of the 150, drawn with a
fixed seed from ../shared/data/clinc150/) trains in minutes on a CPU. Every arm is a `tunesmith run` of
the same three files in its own process, with the built-in SmolLM2-135M-Instruct and LoRA r16/alpha32:

  sft-today     train.objective sft with the settings of earlier releases (train.recipe: manual: lr 2e-4,
                batch 8, 1 epoch); scored with constrained decoding, and also unconstrained (the same run's
                unconstrained pass): what plain generation scores, and how often it names no label at all
  sft-new       sft with today's defaults (train.recipe: auto, eval.constrain: auto)
  classify-new  train.objective classify with today's defaults (head at 10x lr in its own group)
  classify-today classify with the earlier settings (recipe manual: head at the adapter's lr)
  encoder       classify on builtin:all-minilm-l6-v2 (BERT, 22M parameters), full fine-tune

    PYTHONPATH=src .venv/bin/python benchmarks/quality_clinc.py [--arms sft-today sft-new ...] [--per-intent 10]

Writes benchmarks/results/quality_clinc.json (per arm: accuracy with its 95% CI, macro-F1 where computed,
invalid-label shares, the recipe that ran, wall time) and quality_clinc.png, and prints a table. The CPU
model is recorded: wall times compare arms of one run, not machines.
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CLINC = ROOT.parent / "shared" / "data" / "clinc150"
RESULTS = ROOT / "benchmarks" / "results"

BASE = {
    "model": "builtin:smollm2-135m-instruct",
    "method": {"name": "lora", "r": 16, "alpha": 32},
    "train": {"max_length": 128, "seed": 0},
    "eval": {
        "metrics": ["accuracy"],
        "forgetting_probe": False,
        "max_new_tokens": 16,
        "latency_probe": 0,
        "batch_size": 64,
    },
}
ARMS: dict[str, dict[str, Any]] = {
    "sft-today": {"train": {"objective": "sft", "recipe": "manual"}},
    "sft-new": {"train": {"objective": "sft"}},
    "classify-new": {"train": {"objective": "classify"}},
    "classify-today": {"train": {"objective": "classify", "recipe": "manual", "head_lr": 2e-4}},
    "encoder": {
        "model": "builtin:all-minilm-l6-v2",
        "method": {"name": "full"},
        "train": {"objective": "classify"},
    },
}


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def subset(out: Path, per_intent: dict[str, int], seed: int) -> dict[str, int]:
    """The first rows of a seeded shuffle per intent, for each split; columns query,intent as shipped."""
    counts = {}
    for split, k in per_intent.items():
        rows = list(csv.DictReader((CLINC / f"{split}.csv").open(encoding="utf-8")))
        by: dict[str, list[dict[str, str]]] = collections.defaultdict(list)
        for r in rows:
            by[r["intent"]].append(r)
        rng = random.Random(seed)
        picked = [r for lab in sorted(by) for r in rng.sample(by[lab], k)]
        rng.shuffle(picked)
        with (out / f"{split}.csv").open("w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, ["query", "intent"])
            w.writeheader()
            w.writerows(picked)
        counts[split] = len(picked)
    return counts


def merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def arm_config(name: str, data: Path, runs: Path) -> Path:
    cfg = merge(BASE, ARMS[name])
    sft = cfg["train"]["objective"] == "sft"
    cfg["name"] = name
    cfg["runs_dir"] = str(runs)
    cfg["data"] = {
        "train": str(data / "train.csv"),
        "val": str(data / "val.csv"),
        "test": str(data / "test.csv"),
        "columns": {"instruction": "query", "output": "intent"}
        if sft
        else {"text": "query", "label": "intent"},
    }
    path = data / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


def run_arm(name: str, data: Path, runs: Path) -> dict[str, Any]:
    cfg = arm_config(name, data, runs)
    log = data / f"{name}.log"
    t = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.run(
            [sys.executable, "-m", "tunesmith.cli", "run", str(cfg)], stdout=f, stderr=subprocess.STDOUT
        )
    wall = time.perf_counter() - t
    run_dir = max((runs.glob(f"{name}-*")), key=lambda p: p.stat().st_mtime, default=None)
    out: dict[str, Any] = {"arm": name, "rc": proc.returncode, "wall_s": round(wall, 1)}
    if proc.returncode not in (0, 1) or run_dir is None:  # 1: targets missed (none are set here)
        out["log_tail"] = log.read_text()[-2000:]
        return out
    ev = json.loads((run_dir / "eval" / "eval.json").read_text())
    manifest = json.loads((run_dir / "manifest.json").read_text())
    pre = json.loads((run_dir / "data" / "preflight.json").read_text())
    acc = next(r for r in ev["metrics"] if r["metric"] == "accuracy")
    out.update(
        run=run_dir.name,
        n_test=ev["n_examples"],
        accuracy={"base": acc["base"], "tuned": acc["tuned"], "tuned_ci": acc.get("tuned_ci")},
        train=manifest["config"]["train"],
        recipe=pre.get("recipe", {}),
    )
    if "macro_f1" in ev:
        out["macro_f1"] = ev["macro_f1"]
    if c := ev.get("constrained"):
        out["constrained"] = c
    return out


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars: list[tuple[str, float]] = []
    for r in results:
        if "accuracy" not in r:
            continue
        if (c := r.get("constrained")) and "unconstrained_scores" in c:
            bars.append((f"{r['arm']}\nunconstrained", c["unconstrained_scores"]["tuned"]["accuracy"]))
        bars.append((r["arm"] + ("\nconstrained" if r.get("constrained") else ""), r["accuracy"]["tuned"]))
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(bars)), 4))
    ax.bar(range(len(bars)), [v for _, v in bars], color="#4a7bb7")
    for i, (_, v) in enumerate(bars):
        ax.text(i, v + 0.01, f"{v:.3f}", ha="center", fontsize=8)
    ax.set_xticks(range(len(bars)), [n for n, _ in bars], fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("in-scope accuracy (test)")
    ax.set_title("CLINC150 subset: tuned accuracy by arm (same rows)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--per-intent", type=int, nargs=3, default=[10, 2, 4], metavar=("TRAIN", "VAL", "TEST"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS / "quality_clinc.json")
    ap.add_argument("--work", type=Path, default=None, help="keep the subset and the runs here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="quality-clinc-") as tmp:
        data = args.work or Path(tmp)
        data.mkdir(parents=True, exist_ok=True)
        counts = subset(data, dict(zip(("train", "val", "test"), args.per_intent, strict=True)), args.seed)
        results = []
        for arm in args.arms:
            print(f"arm {arm} ...", flush=True)
            r = run_arm(arm, data, data / "runs")
            results.append(r)
            acc = r.get("accuracy", {})
            print(f"arm {arm}: rc {r['rc']}, tuned accuracy {acc.get('tuned')}, {r['wall_s']} s", flush=True)
            # Written after every arm: a long run that is stopped keeps what it measured.
            report = {"cpu": cpu_name(), "subset": counts, "seed": args.seed, "arms": results}
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=2) + "\n")
    plot(results, args.out.with_suffix(".png"))
    for r in results:
        acc = r.get("accuracy", {})
        extra = ""
        if c := r.get("constrained"):
            free = c.get("invalid_share_unconstrained", {})
            un = c.get("unconstrained_scores", {}).get("tuned", {}).get("accuracy")
            extra = f"  unconstrained acc {un}  invalid labels unconstrained {free.get('tuned')}"
        print(f"{r['arm']:15} base {acc.get('base')}  tuned {acc.get('tuned')}  {r['wall_s']} s{extra}")


if __name__ == "__main__":
    main()
