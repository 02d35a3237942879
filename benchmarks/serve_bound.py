"""How far batching can take serving on this machine: the model's ceiling, then the engine without HTTP.

    PYTHONPATH=src python benchmarks/serve_bound.py --run runs/A          # a trained run, ~5 min on 2 cores
    PYTHONPATH=src python benchmarks/serve_bound.py --run runs/A --prompts ../shared/data/clinc150/test.csv

`benchmarks/serve_load.py` measures the whole server over HTTP. This script splits its 8-clients-over-1
ratio in two, with the same prompts (the support tickets, or `--prompts`: CLINC150's queries, as chat
messages with the run's system prompt):

  ceiling   the served model's forward costs, timed alone: the prefill of one prompt and of eight (whole,
            and after the prefix every prompt shares, cached), and one decode step at batch 1 and at
            batch 8 (the run's adapter on). With the mean prompt length and the mean answer length the
            engine produced, the best 8-over-1 tokens/s ratio any scheduler can reach is
            8 x (prefill_1 + n x step_1) / (prefill_8 + n x step_8): eight requests prefilled in one
            forward and decoded together for all of their n tokens, nothing else running.
  engine    the serve engine's batcher, called in-process by C threads back to back (no HTTP, no JSON
            bodies), decoding as the chat endpoint does (inside the run's answer space when it has one):
            tokens/s and p95 latency at 1 and 8 threads, the same ratio as issue 16's goal; with the
            shared-prefix cache (the default) and without it.

So: ceiling below 5x means no scheduler meets the goal on this machine; engine far below the ceiling
means the scheduler loses it; serve_load far below engine means HTTP and the clients' own CPU lose it.
Results: benchmarks/results/serve_bound.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "benchmarks")]

from serve_load import percentile, run_threads  # noqa: E402

TICKETS = ROOT / "examples" / "support-tickets" / "data" / "tickets.jsonl"


def user_turns(path: Path, n: int) -> list[str]:
    """The first n user turns of a file: the support tickets' `instruction`, or a CSV's first column (CLINC150's
    `query`)."""
    import csv

    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            return [row[0] for row in itertools.islice(csv.reader(f), 1, n + 1)]
    return [json.loads(line)["instruction"] for line in path.read_text().splitlines()[:n]]


def chat_prompts(served: Any, rows: list[str]) -> list[list[int]]:
    """The user turns as the server encodes a chat request: the run's system prompt, then the turn."""
    from tunesmith.data.formats import Message
    from tunesmith.data.tokenize import encode_prompt

    system: list[Message] = (
        [{"role": "system", "content": served.system_prompt}] if served.system_prompt else []
    )
    return [list(encode_prompt(served.tokenizer, [*system, {"role": "user", "content": r}])) for r in rows]


def forward_costs(engine: Any, prompt_len: int, shared: int, repeat: int) -> dict[str, float]:
    """Median seconds, at batch 1 and 8: the prefill of prompts of `prompt_len` tokens, whole and after a
    cached prefix of `shared` tokens, and one decode step. The forwards are timed in rounds, batch 1 and
    batch 8 alternating in each, so a machine whose speed drifts (shared cores) shifts both alike."""
    import torch
    from transformers import DynamicCache

    model, config = engine.model, engine.batcher.config

    def forward(ids: torch.Tensor, cache: Any, start: int) -> None:
        positions = torch.arange(start, start + ids.shape[1]).expand(ids.shape[0], -1)
        model(input_ids=ids, position_ids=positions, cache=cache, use_cache=True, logits_to_keep=1)

    def cache_of(ids: torch.Tensor) -> Any:
        cache = DynamicCache(config=config)
        forward(ids, cache, 0)
        return cache

    def after_prefix(ids: torch.Tensor, prefix: Any) -> None:
        cache = DynamicCache(config=config)
        for i, layer in enumerate(prefix.layers):
            cache.update(layer.keys, layer.values, i)
        forward(ids[:, shared:], cache, shared)

    times: dict[str, list[float]] = {}

    def timed(name: str, fn: Any) -> None:
        t = time.perf_counter()
        fn()
        times.setdefault(name, []).append(time.perf_counter() - t)

    with torch.inference_mode():
        ids = {b: torch.randint(1000, 2000, (b, prompt_len)) for b in (1, 8)}
        prefixes = {b: cache_of(ids[b][:, :shared]) for b in (1, 8)}
        caches = {b: cache_of(ids[b]) for b in (1, 8)}
        pos = prompt_len
        for _ in range(repeat + 1):  # the first round warms up and is dropped
            for b in (1, 8):
                timed(f"prefill_{b}_s", lambda b=b: cache_of(ids[b]))
                timed(f"prefill_{b}_after_prefix_s", lambda b=b: after_prefix(ids[b], prefixes[b]))
            for _ in range(4):
                for b in (1, 8):
                    timed(
                        f"step_{b}_s",
                        lambda b=b, p=pos: forward(torch.randint(1000, 2000, (b, 1)), caches[b], p),
                    )
                pos += 1
    return {
        name: statistics.median(ts[1:] if name.startswith("prefill") else ts[4:])
        for name, ts in times.items()
    }


def ceiling(costs: dict[str, float], answer_tokens: float, prefill: str = "prefill_{b}_s") -> float:
    """8 x (prefill_1 + n x step_1) / (prefill_8 + n x step_8)."""
    one = costs[prefill.format(b=1)] + answer_tokens * costs["step_1_s"]
    eight = costs[prefill.format(b=8)] + answer_tokens * costs["step_8_s"]
    return 8 * one / eight


def engine_level(
    engine: Any, served: Any, prompts: list[list[int]], threads: int, total: int, max_tokens: int
) -> dict[str, Any]:
    """`threads` callers decode back to back until `total` requests are answered: tokens/s, latency."""
    from tunesmith.serve.engine import Sampling

    lock = threading.Lock()
    issued = 0
    done: list[tuple[float, int]] = []

    def caller() -> None:
        nonlocal issued
        while True:
            with lock:
                if issued >= total:
                    return
                i = issued
                issued += 1
            t = time.perf_counter()
            ids = list(
                engine.decode(
                    served,
                    prompts[i % len(prompts)],
                    # as the chat endpoint decodes: inside the run's answer space, when it has one
                    Sampling(max_tokens=max_tokens, constrain=True),
                    time.monotonic() + 600,
                    threading.Event(),
                )
            )
            with lock:
                done.append((time.perf_counter() - t, len(ids)))

    wall = run_threads(caller, threads)
    latencies = [lat for lat, _ in done]
    tokens = sum(n for _, n in done)
    return {
        "threads": threads,
        "requests": len(done),
        "wall_s": round(wall, 3),
        "tokens": tokens,
        "tokens_per_s": round(tokens / wall, 2),
        "mean_answer_tokens": round(tokens / len(done), 1),
        "latency_p50_s": round(percentile(latencies, 0.5) or 0.0, 3),
        "latency_p95_s": round(percentile(latencies, 0.95) or 0.0, 3),
        "mean_batch": None,  # rows per decode step, filled by the caller from the batcher's counters
        "mean_join": None,  # prompts per prefill
    }


def engine_levels(
    args: argparse.Namespace, prefix_cache: bool
) -> tuple[list[dict[str, Any]], dict[str, float], list[list[int]]]:
    """The engine at 1 and 8 threads; then (from the prefix-cache arm) the model's forward costs."""
    from tunesmith.serve.engine import Engine

    engine = Engine([args.run], prefix_cache=prefix_cache)
    try:
        served = next(iter(engine.served.values()))
        prompts = chat_prompts(served, user_turns(args.prompts, 50))
        batcher = engine.batcher
        if batcher is None:
            sys.exit(f"{args.run.name} is a classifier: it answers in one forward, nothing to batch")
        levels = []
        for threads in (1, 8):
            before = batcher.stats()
            level = engine_level(engine, served, prompts, threads, args.requests, args.max_tokens)
            after = batcher.stats()
            level["mean_batch"] = round(
                (after.rows_stepped - before.rows_stepped) / max(after.steps - before.steps, 1), 2
            )
            level["mean_join"] = round(
                (after.prefill_rows - before.prefill_rows) / max(after.prefills - before.prefills, 1), 2
            )
            level["mean_decode_step_s"] = round(
                (after.decode_seconds - before.decode_seconds) / max(after.steps - before.steps, 1), 4
            )
            level["decode_s"] = round(after.decode_seconds - before.decode_seconds, 2)
            level["prefill_s"] = round(after.prefill_seconds - before.prefill_seconds, 2)
            level["prompt_tokens_prefilled"] = after.prefill_tokens - before.prefill_tokens
            level["prompt_tokens_from_prefix_cache"] = after.prefix_tokens - before.prefix_tokens
            print(json.dumps({"prefix_cache": prefix_cache, **level}), flush=True)
            levels.append(level)
        costs: dict[str, float] = {}
        if prefix_cache:
            costs = forward_costs(engine, *prompt_shape(prompts), args.repeat)
        return levels, costs, prompts
    finally:
        engine.close()


def prompt_shape(prompts: list[list[int]]) -> tuple[int, int]:
    """The prompts' mean length and the prefix all of them share (system prompt and template), in tokens."""
    from tunesmith.serve.batcher import common_prefix_len

    mean = round(statistics.fmean(len(p) for p in prompts))
    return mean, min(common_prefix_len(prompts[0], p) for p in prompts[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="A trained run directory (an adapter).")
    ap.add_argument("--requests", type=int, default=32, help="Requests per engine level.")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=10, help="Timed rounds of the forwards (4 steps each).")
    ap.add_argument(
        "--prompts",
        type=Path,
        default=TICKETS,
        help="User turns: a JSONL with `instruction`, or a CSV (first column).",
    )
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    arms: dict[str, list[dict[str, Any]]] = {}
    costs: dict[str, float] = {}
    for arm, prefix_cache in (("prefix cache", True), ("no prefix cache", False)):
        arms[arm], arm_costs, prompts = engine_levels(args, prefix_cache)
        costs = costs or arm_costs
    prompt_len, shared = prompt_shape(prompts)
    answer = statistics.fmean(lv["mean_answer_tokens"] for levels in arms.values() for lv in levels)
    result = {
        "run": args.run.name,
        "prompts": f"{args.prompts.parent.name}/{args.prompts.name}",
        "prompt_tokens_mean": prompt_len,
        "shared_prefix_tokens": shared,
        "answer_tokens_mean": round(answer, 1),
        "forward_costs_s": {k: round(v, 4) for k, v in costs.items()},
        "ceiling_8_over_1": round(ceiling(costs, answer), 2),
        "ceiling_8_over_1_prefix_cached": round(ceiling(costs, answer, "prefill_{b}_after_prefix_s"), 2),
        "decode_only_8_over_1": round(8 * costs["step_1_s"] / costs["step_8_s"], 2),
        "prefill_8_over_1": round(8 * costs["prefill_1_s"] / costs["prefill_8_s"], 2),
        "engine": arms,
        "engine_8_over_1": {
            arm: {
                "tokens_per_s": round(levels[1]["tokens_per_s"] / levels[0]["tokens_per_s"], 2),
                "p95": round(levels[1]["latency_p95_s"] / levels[0]["latency_p95_s"], 2),
            }
            for arm, levels in arms.items()
        },
        "torch_threads": _torch_threads(),
        "cpus": os.cpu_count(),
        "cpu": _cpu_name(),
        "machine": platform.platform(),
    }
    out = args.out or ROOT / "benchmarks" / "results" / "serve_bound.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "engine"}, indent=2))
    print(out)


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


if __name__ == "__main__":
    main()
