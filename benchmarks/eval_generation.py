"""Batched vs one-at-a-time greedy generation with the real SmolLM2-135M-Instruct on this CPU.

    PYTHONPATH=src python benchmarks/eval_generation.py                      # 500 prompts, 24 new tokens
    PYTHONPATH=src python benchmarks/eval_generation.py --n 40 --max-new-tokens 8   # smoke test

The prompts are the first N support tickets of examples/support-tickets (system prompt + ticket, rendered by
the model's chat template, 60-200 tokens). Both passes call `tunesmith.eval.generate.generate`, the code the
eval stage runs: once with `--batch-size` prompts per forward (left padding, KV cache, prompts sorted by
length), once with batch size 1. `max_new_tokens` is short on purpose (24 by default) so that the one-at-a-
time pass finishes in minutes on 2 cores; longer answers favour batching further, since decoding one token
for 32 prompts costs little more than for one on a memory-bound CPU.

Outputs must be identical (greedy decoding; left padding must not change a prompt's tokens). The machine is
shared, so the run samples the 1-minute load average every 5 s and records it next to the timings; a ratio
measured while the load exceeds the core count is marked `contended` in the JSON.
Results: benchmarks/results/eval_generation.json (written atomically).
"""

from __future__ import annotations

import os

# As in the CLI: busy-waiting OpenMP threads slow everything down when other processes compete for the cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tunesmith.data.formats import row_to_example  # noqa: E402
from tunesmith.data.tokenize import encode_prompt, stop_token_ids  # noqa: E402
from tunesmith.eval.generate import generate  # noqa: E402
from tunesmith.io import atomic_write_json  # noqa: E402
from tunesmith.models import load_model, load_tokenizer, resolve_model  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "eval_generation.json"
SYSTEM = "Route this Ledgerly support ticket. Reply with JSON: queue, priority, summary."


class LoadSampler(threading.Thread):
    def __init__(self, every: float = 5.0) -> None:
        super().__init__(daemon=True)
        self.every = every
        self.samples: list[float] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.samples.append(os.getloadavg()[0])
            self._halt.wait(self.every)

    def stop(self) -> dict[str, float]:
        self._halt.set()
        self.join()
        s = self.samples or [os.getloadavg()[0]]
        return {
            "min": round(min(s), 2),
            "mean": round(sum(s) / len(s), 2),
            "max": round(max(s), 2),
            "samples": len(s),
        }


def timed(fn: Any) -> tuple[Any, float, dict[str, float]]:
    sampler = LoadSampler()
    sampler.start()
    t = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t
    return out, dt, sampler.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--model", default="builtin:smollm2-135m-instruct")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    import torch

    path = resolve_model(args.model)
    tok = load_tokenizer(path)
    model = load_model(path)
    rows = [json.loads(line) for line in (ROOT / "examples/support-tickets/data/tickets.jsonl").open()]
    rows = (rows * (args.n // len(rows) + 1))[: args.n]
    prompts = [
        encode_prompt(tok, row_to_example(r, "auto", f"tickets.jsonl:{i + 1}", SYSTEM).prompt_messages)
        for i, r in enumerate(rows)
    ]
    stops = stop_token_ids(tok, model.generation_config)
    load_before = os.getloadavg()
    # Warm-up (first-call allocations, kernel selection) outside the timings.
    generate(model, tok, prompts[:2], 4, 2, stops)

    batched, t_batched, load_b = timed(
        lambda: generate(model, tok, prompts, args.max_new_tokens, args.batch_size, stops)
    )
    single, t_single, load_s = timed(lambda: generate(model, tok, prompts, args.max_new_tokens, 1, stops))
    mismatches = [i for i, (a, b) in enumerate(zip(batched, single, strict=True)) if a.text != b.text]
    cores = os.cpu_count() or 1
    result = {
        "model": args.model,
        "n_prompts": len(prompts),
        "prompt_tokens": {
            "min": min(map(len, prompts)),
            "max": max(map(len, prompts)),
            "mean": round(sum(map(len, prompts)) / len(prompts), 1),
        },
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "new_tokens": {
            "batched": sum(g.new_tokens for g in batched),
            "one_at_a_time": sum(g.new_tokens for g in single),
        },
        "seconds": {"batched": round(t_batched, 2), "one_at_a_time": round(t_single, 2)},
        "prompts_per_s": {
            "batched": round(len(prompts) / t_batched, 2),
            "one_at_a_time": round(len(prompts) / t_single, 2),
        },
        "speedup": round(t_single / t_batched, 2),
        "identical_outputs": not mismatches,
        "mismatched_prompts": mismatches[:20],
        "n_mismatched": len(mismatches),
        "machine": {
            "cpu_count": cores,
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "torch": torch.__version__,
        },
        "load_average": {
            "before": [round(x, 2) for x in load_before],
            "during_batched": load_b,
            "during_one_at_a_time": load_s,
            "after": [round(x, 2) for x in os.getloadavg()],
        },
        "contended": max(load_b["max"], load_s["max"]) > cores,
    }
    atomic_write_json(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
