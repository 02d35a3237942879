"""The memory plan against the measured peak: SmolLM2-135M on the support-tickets example, per method.

Each method trains in a fresh process through the real training loop (`tunesmith.train.loop.train`)
until it has run the largest micro-batch of the epoch (plus one step, so AdamW's state exists), and
reports its peak resident memory: `resource.getrusage(RUSAGE_SELF).ru_maxrss` of that whole process,
nothing subtracted. The plan is computed in the same process just before the weights load, so its
"framework overhead" is that process's resident memory at that moment (Python, torch, transformers,
tokenizer, prepared data), which is part of the measured peak too.

    PYTHONPATH=src nice -n 19 .venv/bin/python benchmarks/memory_plan.py [--methods full lora]

Writes benchmarks/results/memory_plan.json. Memory does not depend on how busy the machine is; the
step times recorded alongside are not speed claims unless the machine was otherwise idle.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from tunesmith.malloc import limit_heap_fragmentation  # noqa: E402

# As the CLI does; --default-malloc measures without it.
if "--default-malloc" not in sys.argv:
    limit_heap_fragmentation()

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples" / "support-tickets" / "tunesmith.yaml"
OUT = ROOT / "benchmarks" / "results" / "memory_plan.json"
GiB = 1024**3


def worst_step(lengths: list[int], batch_size: int, seed: int, group: bool) -> tuple[int, int]:
    """(index, tokens) of the epoch's micro-batch with the most padded tokens."""
    from tunesmith.train.batching import micro_batches

    best = (0, 0)
    for i, (epoch, idx) in enumerate(micro_batches(lengths, batch_size, seed, group)):
        if epoch > 0:
            break
        tokens = len(idx) * max(lengths[j] for j in idx)
        if tokens > best[1]:
            best = (i, tokens)
    return best


def child(method: str, overrides: list[str], ckpt: bool) -> dict[str, Any]:
    import tempfile

    from rich.console import Console

    import tunesmith.train.loop as loop
    from tunesmith.config import load_config
    from tunesmith.models import load_model
    from tunesmith.runner import check_data
    from tunesmith.train.plan import DataStats, make_plan, process_rss, target_device

    quiet = Console(file=open(os.devnull, "w"))  # noqa: SIM115 - lives as long as the process
    overrides = [f"method.name={method}", *overrides]
    cfg = load_config(CONFIG, overrides)
    model_path, tok, data = check_data(cfg, quiet)
    lengths = [len(e.input_ids) for e in data.train.encoded]
    step, tokens = worst_step(lengths, cfg.train.batch_size, cfg.train.seed, cfg.train.group_by_length)
    steps = max(3, step + 2)  # the worst batch, then one more step with AdamW's state allocated
    cfg = load_config(CONFIG, [*overrides, f"train.max_steps={steps}", "train.eval_every=100000"])
    rss_before = process_rss()
    plan = make_plan(cfg, model_path, DataStats.from_prepared(data), target_device("cpu"), method, ckpt)
    model = load_model(model_path)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        loop.train(cfg, data, model, tok, Path(tmp), quiet, gradient_checkpointing=ckpt)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {
        "method": method,
        "gradient_checkpointing": ckpt,
        "steps": steps,
        "worst_batch_step": step + 1,
        "worst_batch_tokens": tokens,
        "rss_at_plan": rss_before,
        "plan": plan.as_dict(),
        "estimate_peak": plan.memory.peak,
        "measured_peak_rss": peak,
        "error": round(plan.memory.peak / peak - 1, 4),
        "train_seconds": round(seconds, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=["full", "lora"])
    ap.add_argument("--checkpointing", action="store_true", help="Also measure with gradient checkpointing.")
    ap.add_argument("--override", nargs="*", default=[], help="Config overrides, e.g. train.batch_size=4.")
    ap.add_argument(
        "--default-malloc",
        action="store_true",
        help="Leave glibc's dynamic mmap threshold on (see malloc.py).",
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--ckpt", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.override, args.ckpt)))
        return

    results = []
    # Each method in its own process, all at once: peak memory does not depend on how busy the cores are.
    children = []
    for ckpt in [False, True] if args.checkpointing else [False]:
        for method in args.methods:
            cmd = [sys.executable, __file__, "--child", method, *(["--ckpt"] if ckpt else [])]
            if args.default_malloc:
                cmd.append("--default-malloc")
            if args.override:
                cmd += ["--override", *args.override]
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
            children.append((method, ckpt, proc))
    for method, ckpt, proc in children:
        out, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"{method}: child failed:\n{err[-3000:]}")
        r = json.loads(out.strip().splitlines()[-1])
        results.append(r)
        print(
            f"{method:6s} ckpt={ckpt!s:5s} estimate {r['estimate_peak'] / GiB:.3f} GiB  "
            f"measured {r['measured_peak_rss'] / GiB:.3f} GiB  ({100 * r['error']:+.1f}%)",
            flush=True,
        )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(
        json.dumps(
            {
                "what": "plan's peak memory estimate vs measured peak RSS (ru_maxrss of a fresh process, "
                "nothing subtracted) training SmolLM2-135M on examples/support-tickets through the real loop",
                "config": str(CONFIG.relative_to(ROOT)),
                "overrides": args.override,
                "malloc": "glibc default (dynamic mmap threshold)"
                if args.default_malloc
                else "mmap threshold fixed at 128 KiB (tunesmith.malloc, as the CLI does)",
                "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
                "results": results,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
