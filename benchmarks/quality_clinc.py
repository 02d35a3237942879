"""Quality on real data, in one run: CLINC150 in-scope accuracy of tunesmith's recipes on the same rows.

The subset (`--per-intent`, default 10 train / 2 val / 4 test rows per intent of the 150, drawn with a
fixed seed from ../shared/data/clinc150/) trains in minutes on a CPU. Every arm is a `tunesmith run` of
the same three files in its own process, with the built-in SmolLM2-135M-Instruct and LoRA r16/alpha32:

  sft-today     train.objective sft with the settings of earlier releases (train.recipe: manual: lr 2e-4,
                batch 8, 1 epoch); scored with constrained decoding, and also unconstrained (the same run's
                unconstrained pass): what plain generation scores, and how often it names no label at all
  sft-new       sft with today's defaults (train.recipe: auto, eval.constrain: auto)
  sft-new-nogroup  the same with train.group_by_length false (random batches instead of length-grouped ones)
  classify-new  train.objective classify with today's defaults (head at 10x lr in its own group)
  classify-today classify with the earlier settings (recipe manual: head at the adapter's lr)
  encoder       classify on builtin:all-minilm-l6-v2 (BERT, 22M parameters), full fine-tune
  trl           the peer: a plain TRL script (`SFTTrainer` with `SFTConfig`'s defaults: lr 2e-5, 3 epochs,
                batch 8, linear decay, loss on every token of the `messages` rows) with the same LoRA
                (r16/alpha32, all linear layers), on the same train rows. Two settings differ from TRL's
                defaults, for speed only: bf16 off (TRL refuses its own default on a CPU without bf16) and
                gradient checkpointing off (it recomputes the same activations). Scored by the same scorer
                on the same test rows, greedy, prompts through the same chat template: unconstrained (what
                the script would get), and constrained with tunesmith's label tree, for the invalid share.
  tune          `tunesmith tune` on the sft-new config with `targets: {accuracy: 0.88}` and a 45-minute
                budget (`--tune-budget`): every trial scored on all 300 val rows, the chosen trial once on
                test. Its default space holds the built-in encoder as another base for this label task.

    PYTHONPATH=src .venv/bin/python benchmarks/quality_clinc.py [--arms sft-today sft-new ...] [--per-intent 10]
    # this session's run: pip install trl==1.16.0 (a benchmark peer, not in the lock)
    PYTHONPATH=src .venv/bin/python benchmarks/quality_clinc.py --arms encoder trl tune --out \
        benchmarks/results/quality_clinc-trl-tune.json

Writes benchmarks/results/quality_clinc.json (per arm: accuracy with its 95% CI, macro-F1 where computed,
invalid-label shares, the recipe that ran, wall time) and quality_clinc.png, and prints a table. The CPU
model is recorded: wall times compare arms of one run, not machines.
"""

from __future__ import annotations

import argparse
import collections
import csv
import hashlib
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
TUNE_TARGET = 0.88  # the goal for tune on this subset
ARMS: dict[str, dict[str, Any]] = {
    "sft-today": {"train": {"objective": "sft", "recipe": "manual"}},
    "sft-new": {"train": {"objective": "sft"}},
    "sft-new-nogroup": {"train": {"objective": "sft", "group_by_length": False}},
    "classify-new": {"train": {"objective": "classify"}},
    "classify-today": {"train": {"objective": "classify", "recipe": "manual", "head_lr": 2e-4}},
    "encoder": {
        "model": "builtin:all-minilm-l6-v2",
        "method": {"name": "full"},
        "train": {"objective": "classify"},
    },
    "tune": {"train": {"objective": "sft"}, "targets": {"accuracy": TUNE_TARGET}, "tune": {"val_limit": 300}},
    "trl": {},  # not a tunesmith config: run_trl
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


def subset_hash(data: Path) -> dict[str, str]:
    """Each split file's sha256: arms of separate runs compare only on the same rows."""
    return {s: hashlib.sha256((data / f"{s}.csv").read_bytes()).hexdigest() for s in ("train", "val", "test")}


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


def run_arm(name: str, data: Path, runs: Path, tune_budget: str) -> dict[str, Any]:
    if name == "trl":
        return run_trl_arm(data)
    cfg = arm_config(name, data, runs)
    log = data / f"{name}.log"
    cmd = ["run", str(cfg)] if name != "tune" else ["tune", str(cfg), "--budget", tune_budget]
    t = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.run(
            [sys.executable, "-m", "tunesmith.cli", *cmd], stdout=f, stderr=subprocess.STDOUT
        )
    wall = time.perf_counter() - t
    out: dict[str, Any] = {"arm": name, "rc": proc.returncode, "wall_s": round(wall, 1)}
    if name == "tune":
        study = json.loads((runs / "tune" / name / "study.json").read_text())
        out["study"] = tune_summary(study, tune_budget)
        result = study.get("result") or {}
        run_dir = Path(result["run_dir"]) if result.get("run_dir") else None
    else:
        run_dir = max((runs.glob(f"{name}-*")), key=lambda p: p.stat().st_mtime, default=None)
    if proc.returncode not in (0, 1) or run_dir is None:  # 1: targets missed
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


def tune_summary(study: dict[str, Any], budget: str) -> dict[str, Any]:
    """The search as the arm reports it: each trial's values, state, val accuracy and time."""
    return {
        "budget": budget,
        "val_limit": study["val_limit"],
        "counts": study["counts"],
        "chosen": study.get("best"),
        "trials": [
            {k: t.get(k) for k in ("number", "state", "params", "value", "seconds", "run_id", "user_attrs")}
            for t in study["trials"]
        ],
    }


def run_trl_arm(data: Path) -> dict[str, Any]:
    """The TRL arm in its own process (its peak memory and threads its own), results as JSON on stdout."""
    log = data / "trl.log"
    t = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.run(
            [sys.executable, __file__, "--trl-child", str(data)], stdout=subprocess.PIPE, stderr=f, text=True
        )
    out: dict[str, Any] = {"arm": "trl", "rc": proc.returncode, "wall_s": round(time.perf_counter() - t, 1)}
    if proc.returncode != 0:
        out["log_tail"] = log.read_text()[-2000:]
        return out
    out.update(json.loads(proc.stdout.strip().splitlines()[-1]))
    return out


def trl_child(data: Path) -> dict[str, Any]:
    """Plain TRL on the train rows, then greedy answers to the test rows, scored like tunesmith's eval."""
    import torch
    import trl
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from tunesmith.data.answers import AnswerSpace
    from tunesmith.eval.compare import paired_bootstrap
    from tunesmith.eval.constrain import Decoder
    from tunesmith.eval.generate import generate
    from tunesmith.eval.metrics import label_accuracy
    from tunesmith.models import resolve_model

    def rows(split: str) -> list[dict[str, str]]:
        return list(csv.DictReader((data / f"{split}.csv").open(encoding="utf-8")))

    train, test = rows("train"), rows("test")
    path = resolve_model(str(BASE["model"]))
    tok = AutoTokenizer.from_pretrained(path)
    # What a user's script gets from from_pretrained; float32 on a CPU (the converted weights' dtype).
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ds = Dataset.from_list(
        [
            {
                "messages": [
                    {"role": "user", "content": r["query"]},
                    {"role": "assistant", "content": r["intent"]},
                ]
            }
            for r in train
        ]
    )
    with tempfile.TemporaryDirectory() as tmp:
        args = SFTConfig(
            output_dir=tmp,
            bf16=False,
            gradient_checkpointing=False,
            use_cpu=True,
            save_strategy="no",
            report_to="none",
            seed=0,
        )
        peft = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
        trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=peft)
        t0 = time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - t0
        tuned = trainer.model
    settings = {
        k: str(getattr(args, k))
        for k in ("learning_rate", "num_train_epochs", "per_device_train_batch_size", "lr_scheduler_type")
    }
    stops = [tok.convert_tokens_to_ids("<|im_end|>"), tok.eos_token_id]
    # The prompt as TRL rendered it in training: the chat template with the generation prompt.
    texts = [
        tok.apply_chat_template(
            [{"role": "user", "content": r["query"]}], add_generation_prompt=True, tokenize=False
        )
        for r in test
    ]
    prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    refs = [r["intent"] for r in test]
    labels = sorted({r["intent"] for r in train})
    space = AnswerSpace("labels", tuple(labels))
    decoder = Decoder(space, tok, stops)
    scores: dict[str, Any] = {}
    for name, dec in (("unconstrained", None), ("constrained", decoder)):
        t0 = time.perf_counter()
        outs = generate(tuned, tok, prompts, max_new_tokens=16, batch_size=64, stop_ids=stops, decoder=dec)
        hits = [label_accuracy(o.text, ref) for o, ref in zip(outs, refs, strict=True)]
        valid = {lab.lower() for lab in labels}
        scores[name] = {
            "accuracy": sum(hits) / len(hits),
            "ci": paired_bootstrap(hits, hits)[1],  # the tuned CI as eval computes it
            "invalid_share": sum(o.text.strip().lower().rstrip(".") not in valid for o in outs) / len(outs),
            "seconds": round(time.perf_counter() - t0, 1),
        }
    return {
        "n_test": len(test),
        "accuracy": {"tuned": scores["unconstrained"]["accuracy"], "tuned_ci": scores["unconstrained"]["ci"]},
        "trl_scores": scores,
        "train_s": round(train_s, 1),
        "trl": trl.__version__,
        "trl_defaults": settings,
    }


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars: list[tuple[str, float]] = []
    for r in results:
        if "accuracy" not in r:
            continue
        if (t := r.get("trl_scores")) is not None:
            bars.append(("trl\nunconstrained", t["unconstrained"]["accuracy"]))
            bars.append(("trl\nconstrained", t["constrained"]["accuracy"]))
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
    ap.add_argument("--tune-budget", default="45m", help="the tune arm's --budget")
    ap.add_argument("--trl-child", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.trl_child is not None:
        print(json.dumps(trl_child(args.trl_child)))
        return
    with tempfile.TemporaryDirectory(prefix="quality-clinc-") as tmp:
        data = args.work or Path(tmp)
        data.mkdir(parents=True, exist_ok=True)
        counts = subset(data, dict(zip(("train", "val", "test"), args.per_intent, strict=True)), args.seed)
        results = []
        for arm in args.arms:
            print(f"arm {arm} ...", flush=True)
            r = run_arm(arm, data, data / "runs", args.tune_budget)
            results.append(r)
            acc = r.get("accuracy", {})
            print(f"arm {arm}: rc {r['rc']}, tuned accuracy {acc.get('tuned')}, {r['wall_s']} s", flush=True)
            # Written after every arm: a long run that is stopped keeps what it measured.
            report = {
                "cpu": cpu_name(),
                "subset": counts,
                "subset_sha256": subset_hash(data),
                "seed": args.seed,
                "arms": results,
            }
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
