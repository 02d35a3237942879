"""Load on a live `tunesmith serve` over loopback, and on llama.cpp's server in the same run: tokens/s and latency.

    PYTHONPATH=src python benchmarks/serve_load.py --model tiny                                   # ~1 min
    # SmolLM2: two LoRA runs of one base in one runs folder; the first also exported as a q8_0 GGUF
    PYTHONPATH=src python benchmarks/serve_load.py --model smollm2 --run runs/A --second-run runs/B \
        --llama-server PATH/TO/llama-server --gguf runs/A/export/gguf-q8_0/model-q8_0.gguf

`tiny` builds the 2-layer Llama of the tests (real SmolLM2 tokenizer) and trains a 2-step LoRA run on the
toy task under benchmarks/.work/ first. Arms, each a server in its own subprocess, one after the other:

  tunesmith-1   `tunesmith serve A`: every request for A
  tunesmith-2   `tunesmith serve A B` (with --second-run): requests alternate between A and B, so the running
                batch mixes the two adapters (peft's mixed-adapter forward)
  llama.cpp     `llama-server -m GGUF --jinja -np MAXCLIENTS` (with --llama-server and --gguf): the merged A
                in q8_0, one slot per client, continuous batching (its default), the GGUF's chat template

For each client count C, C threads each send chat requests back to back (`max_tokens` fixed, greedy) until
`--requests` have been answered in total; a 429 is retried after 250 ms, as a well-behaved client would
(attempts are capped at 20x the requests). Latency is measured per request by the client (non-streaming, so
request to last byte). Only 200 and 429 are designed outcomes; anything else is counted as an error and
makes the script exit 1. The goal printed at the end (issue 16): at 8 clients at least 5x the 1-client
completion tokens/s, with p95 latency at most 3x the 1-client p95; and each arm against llama.cpp, as a
ratio at every client count. Server and clients share this machine's cores, for every arm alike; the load
average is recorded before and after. Results: benchmarks/results/serve_load-<model>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "src")]

from helpers import ServerProcess, make_label_rows, write_jsonl  # noqa: E402

WORK = ROOT / "benchmarks" / ".work" / "serve_load"
KEY = "bench"


def tiny_run() -> tuple[Path, str]:
    """A tiny LoRA run (2 steps) of the toy task; reused when present."""
    import torch
    from rich.console import Console
    from transformers import LlamaConfig, LlamaForCausalLM

    from tunesmith.config import validate_config
    from tunesmith.models import load_tokenizer, materialize_builtin
    from tunesmith.registry import list_runs
    from tunesmith.runner import run_all

    runs = WORK / "runs"
    done = [r for r in list_runs(runs) if r.stage == "eval"] if runs.is_dir() else []
    if done:
        return runs, done[-1].id
    tok = load_tokenizer(str(materialize_builtin("smollm2-135m-instruct")))
    model_dir = WORK / "tiny-llama"
    if not (model_dir / "config.json").is_file():
        torch.manual_seed(0)
        cfg = LlamaConfig(
            vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True,
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        )  # fmt: skip
        LlamaForCausalLM(cfg).save_pretrained(model_dir)
        tok.save_pretrained(model_dir)
    write_jsonl(WORK / "data.jsonl", make_label_rows(80))
    raw = {
        "name": "tiny", "model": str(model_dir), "runs_dir": str(runs),
        "data": {"train": "data.jsonl", "system_prompt": "Route the ticket.", "split": {"val": 0.1, "test": 0.2}},
        "method": {"name": "lora", "r": 8, "alpha": 16},
        "train": {"max_steps": 2, "batch_size": 4, "max_length": 128},
        "eval": {"metrics": ["accuracy"], "max_new_tokens": 4, "limit": 4},
    }  # fmt: skip
    outcome = run_all(validate_config(raw, base_dir=WORK), Console(quiet=True))
    return runs, outcome.run_dir.name


def percentile(xs: list[float], q: float) -> float | None:
    xs = sorted(xs)
    if not xs:
        return None
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def run_threads(fn: Any, n: int) -> float:
    """fn on n threads at once; the seconds until the last one ended."""
    threads = [threading.Thread(target=fn) for _ in range(n)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return time.perf_counter() - t0


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def load_level(
    url: str, models: list[str], clients: int, total: int, max_tokens: int, prompts: list[str]
) -> dict[str, Any]:
    """C clients until `total` requests are answered; request i asks for models[i % len(models)]."""
    import openai

    lock = threading.Lock()
    answered = attempts = 0
    results: list[tuple[int | str, float, int]] = []

    def worker() -> None:
        nonlocal answered, attempts
        with openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=600) as c:
            while True:
                with lock:
                    if answered >= total or attempts >= 20 * total:
                        return
                    i = attempts
                    attempts += 1
                t = time.perf_counter()
                tokens = 0
                try:
                    r = c.chat.completions.create(
                        model=models[i % len(models)],
                        messages=[{"role": "user", "content": prompts[i % len(prompts)]}],
                        max_tokens=max_tokens,
                        temperature=0,
                    )
                    status: int | str = 200
                    tokens = r.usage.completion_tokens if r.usage else 0
                except openai.APIStatusError as e:
                    status = e.status_code
                except Exception as e:  # recorded as an error; the script exits 1
                    status = type(e).__name__
                with lock:
                    results.append((status, time.perf_counter() - t, tokens))
                    answered += status == 200
                if status == 429:
                    time.sleep(0.25)

    wall = run_threads(worker, clients)
    ok = [lat for s, lat, _ in results if s == 200]
    counts = Counter(str(s) for s, _, _ in results)
    return {
        "clients": clients,
        "requests": len(results),
        "wall_s": round(wall, 3),
        "ok": len(ok),
        "status_counts": dict(counts),
        "errors": sum(n for s, n in counts.items() if s not in ("200", "429")),
        "ok_requests_per_s": round(len(ok) / wall, 3),
        "completion_tokens": sum(n for s, _, n in results if s == 200),
        "completion_tokens_per_s": round(sum(n for s, _, n in results if s == 200) / wall, 1),
        "latency_ok_s": {
            "p50": _round(percentile(ok, 0.5)),
            "p95": _round(percentile(ok, 0.95)),
            "mean": round(statistics.fmean(ok), 4) if ok else None,
        },
        "latency_429_s_p95": _round(percentile([lat for s, lat, _ in results if s == 429], 0.95)),
    }


def run_arm(
    name: str,
    server: ServerProcess,
    models: list[str],
    clients: list[int],
    args: argparse.Namespace,
    prompts: list[str],
) -> list[dict[str, Any]]:
    levels = []
    with server as srv:
        load_level(srv.url, models, 1, 2, args.max_tokens, prompts)  # warm-up
        for c in clients:
            before = batch_counters(srv.url) if name.startswith("tunesmith") else None
            level = {
                "arm": name,
                **load_level(srv.url, models, c, max(args.requests, 2 * c), args.max_tokens, prompts),
            }
            if before is not None:
                level["batching"] = batching(before, batch_counters(srv.url))
            print(json.dumps(level), flush=True)
            levels.append(level)
    return levels


def batch_counters(url: str) -> dict[str, float]:
    """The server's decode and prefill counters from /metrics."""
    import httpx

    text = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}, timeout=30).text
    return {
        name: float(value)
        for name, value in (line.split() for line in text.splitlines() if line.startswith("tunesmith_"))
        if name.endswith("_total") and ("decode" in name or "prefill" in name)
    }


def batching(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Over one level: rows per decode step (how much concurrency became batching), prompts per prefill,
    and the time those forwards took (against the level's wall time: what the model did not use)."""
    d = {k: after[k] - before[k] for k in after}
    return {
        "mean_decode_batch": round(
            d["tunesmith_decode_rows_total"] / max(d["tunesmith_decode_steps_total"], 1), 2
        ),
        "mean_prefill_batch": round(
            d["tunesmith_prefill_rows_total"] / max(d["tunesmith_prefills_total"], 1), 2
        ),
        "decode_steps": int(d["tunesmith_decode_steps_total"]),
        "prefills": int(d["tunesmith_prefills_total"]),
        "mean_decode_step_s": round(
            d["tunesmith_decode_seconds_total"] / max(d["tunesmith_decode_steps_total"], 1), 4
        ),
        "decode_s": round(d["tunesmith_decode_seconds_total"], 2),
        "prefill_s": round(d["tunesmith_prefill_seconds_total"], 2),
    }


def goal(levels: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Issue 16's goal: 8 clients >= 5x the 1-client tokens/s, p95 at 8 clients <= 3x the 1-client p95."""
    by = {lv["clients"]: lv for lv in levels}
    if 1 not in by or 8 not in by:
        return None
    speedup = by[8]["completion_tokens_per_s"] / by[1]["completion_tokens_per_s"]
    p95 = by[8]["latency_ok_s"]["p95"] / by[1]["latency_ok_s"]["p95"]
    return {
        "tokens_per_s_8_over_1": round(speedup, 2),
        "p95_8_over_1": round(p95, 2),
        "met": speedup >= 5 and p95 <= 3,
    }


def versus(levels: list[dict[str, Any]], peer: list[dict[str, Any]]) -> dict[str, Any]:
    """tokens/s and p95 of an arm over the peer's, per client count."""
    by = {lv["clients"]: lv for lv in peer}
    return {
        str(lv["clients"]): {
            "tokens_per_s": round(
                lv["completion_tokens_per_s"] / by[lv["clients"]]["completion_tokens_per_s"], 2
            ),
            "p95": round(lv["latency_ok_s"]["p95"] / by[lv["clients"]]["latency_ok_s"]["p95"], 2),
        }
        for lv in levels
        if lv["clients"] in by and by[lv["clients"]]["completion_tokens_per_s"]
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    ap.add_argument("--run", type=Path, help="Run directory to serve (required for smollm2).")
    ap.add_argument("--second-run", type=Path, help="A second run of the same base, in the same runs folder.")
    ap.add_argument("--llama-server", type=Path, help="A llama.cpp `llama-server` binary: the peer arm.")
    ap.add_argument(
        "--gguf", type=Path, help="The GGUF llama-server loads (`export --format gguf --quant q8_0`)."
    )
    ap.add_argument("--clients", default="1,4,8,16", help="Client counts, comma-separated.")
    ap.add_argument(
        "--requests", type=int, default=32, help="Requests per client count (at least 2 per client)."
    )
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--limit", type=int, default=16, help="Server --max-concurrency.")
    ap.add_argument("--out", type=Path, help="Default: benchmarks/results/serve_load-<model>.json")
    args = ap.parse_args()

    if args.model == "tiny":
        runs, run_id = tiny_run()
    else:
        if args.run is None:
            ap.error("--model smollm2 needs --run RUN_DIR (a trained SmolLM2 run)")
        runs, run_id = args.run.resolve().parent, args.run.name
    if args.second_run is not None and args.second_run.resolve().parent != runs:
        ap.error("--second-run must be in the same runs folder as --run")
    prompts = [r["instruction"] for r in make_label_rows(50, seed=11)]
    if args.model == "smollm2":
        tickets = ROOT / "examples" / "support-tickets" / "data" / "tickets.jsonl"
        prompts = [json.loads(line)["instruction"] for line in tickets.read_text().splitlines()[:50]]
    clients = [int(x) for x in args.clients.split(",")]
    load_before = os.getloadavg()
    WORK.mkdir(parents=True, exist_ok=True)

    def tunesmith(served: list[str]) -> ServerProcess:
        return ServerProcess(
            [*served, "--runs-dir", str(runs), "--api-key", KEY, "--max-concurrency", str(args.limit),
             "--serve-dir", str(WORK / "serve")],
            WORK / f"server-{len(served)}.log",
        )  # fmt: skip

    arms: dict[str, list[dict[str, Any]]] = {}
    arms["tunesmith-1"] = run_arm("tunesmith-1", tunesmith([run_id]), [run_id], clients, args, prompts)
    if args.second_run is not None:
        both = [run_id, args.second_run.name]
        arms["tunesmith-2"] = run_arm("tunesmith-2", tunesmith(both), both, clients, args, prompts)
    if args.llama_server is not None and args.gguf is not None:
        slots = max(clients)
        peer = ServerProcess(
            ["-m", str(args.gguf), "--jinja", "-np", str(slots), "-c", str(1024 * slots), "--host", "127.0.0.1",
             "--api-key", KEY, "--no-webui"],
            WORK / "llama-server.log",
            command=[str(args.llama_server)],
        )  # fmt: skip
        arms["llama.cpp"] = run_arm("llama.cpp", peer, ["model"], clients, args, prompts)
    result = {
        "model": args.model,
        "runs": [run_id, *([args.second_run.name] if args.second_run else [])],
        "gguf": args.gguf.name if args.gguf else None,
        "server_max_concurrency": args.limit,
        "max_tokens": args.max_tokens,
        "requests_per_level": args.requests,
        "arms": arms,
        "goal": {name: goal(levels) for name, levels in arms.items()},
        "vs_llama_cpp": {n: versus(lv, arms["llama.cpp"]) for n, lv in arms.items() if n != "llama.cpp"}
        if "llama.cpp" in arms
        else None,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
        "cpu": _cpu_name(),
        "machine": platform.platform(),
        "note": "loopback, non-streaming, greedy; latency is client-side request to last byte",
    }
    out = args.out or ROOT / "benchmarks" / "results" / f"serve_load-{args.model}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"goal": result["goal"], "vs_llama_cpp": result["vs_llama_cpp"]}, indent=2))
    print(out)
    if any(level["errors"] for levels in arms.values() for level in levels):
        sys.exit(1)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
