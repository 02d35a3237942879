"""The data stage at scale: N generated chat examples checked, cleaned (PII redacted), deduplicated (exact and
MinHash near-duplicates), split and checked for contamination, with wall time and peak memory.

    PYTHONPATH=src python benchmarks/data_prepare.py                # 1,000,000 examples (~10 min incl. generation)
    PYTHONPATH=src python benchmarks/data_prepare.py --n 50000      # a quick run

The corpus is generated from a seed (cached under benchmarks/.work/, not committed): a fixed system prompt,
a user message of 20-60 words and an answer of 10-40 words drawn from a Zipf-distributed synthetic
vocabulary (a varied corpus: unrelated examples share only frequent words), with planted problems whose
ground truth is kept: 5% near-duplicates (an earlier example reworded by a few words), 2% exact copies
(re-cased, re-spaced), 3% with one PII value of a random supported kind in the user message.

The stage runs in a fresh child process (`tunesmith.data.stream.build_splits`, the code behind
`tunesmith data prepare`); a sampler thread sums the resident memory of the child and its worker
processes every 0.2 s, so "peak memory" is the whole process tree, not one process. The parent then reads
the split files back and scores the planted problems. Results: benchmarks/results/data_prepare.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "data"), str(ROOT / "src")]

import fixtures_gen as fg  # noqa: E402

WORK = ROOT / "benchmarks" / ".work"
RESULTS = ROOT / "benchmarks" / "results" / "data_prepare.json"
SYSTEM = "You are the support assistant of Ledgerly. Answer briefly and politely."
PII_MAKERS = {
    "EMAIL": fg.make_email,
    "PHONE": fg.make_phone,
    "CARD": fg.make_card,
    "IBAN": fg.make_iban,
    "SSN": fg.make_ssn,
    "NINO": fg.make_nino,
    "IP": fg.make_ip,
}


# ------------------------------------------------------------------------------------------ the corpus
def generate(path: Path, n: int, seed: int) -> dict[str, Any]:
    """Write `n` chat examples; return the planted ground truth (line numbers are 1-based)."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["".join(rng.choice(letters) for _ in range(rng.randint(3, 10))) for _ in range(50_000)]
    cum = list(itertools.accumulate(1.0 / (rank + 1) for rank in range(50_000)))
    function = ("the", "to", "and", "a", "of", "is", "for", "we", "you", "it", "on", "with", "that", "this")

    def text(lo: int, hi: int) -> str:
        k = rng.randint(lo, hi)
        words = rng.choices(vocab, cum_weights=cum, k=k - k // 3) + [
            rng.choice(function) for _ in range(k // 3)
        ]
        rng.shuffle(words)
        return " ".join(words).capitalize() + f" {rng.randint(1, 9999)}."

    originals: list[tuple[str, str]] = []  # (user, answer) of examples that are not planted copies
    truth: dict[str, Any] = {"near": [], "exact": [], "pii": {}}
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for line in range(1, n + 1):
            r = rng.random()
            if originals and r < 0.05:
                user, answer = rng.choice(originals)
                user = fg.reword(user, rng)[0]
                truth["near"].append(line)
            elif originals and r < 0.07:
                user, answer = rng.choice(originals)
                user = "  ".join(user.upper().split()) if rng.random() < 0.5 else user.lower()
                truth["exact"].append(line)
            else:
                user, answer = text(20, 60), text(10, 40)
                if r < 0.10:
                    kind = rng.choice(sorted(PII_MAKERS))
                    value = PII_MAKERS[kind](rng)
                    words = user.split()
                    words.insert(rng.randint(1, len(words)), f"(contact: {value})")
                    user = " ".join(words)
                    truth["pii"][line] = [kind, value]
                originals.append((user, answer))
            row = {
                "messages": [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": user},
                    {"role": "assistant", "content": answer},
                ]
            }
            f.write(json.dumps(row) + "\n")
    os.replace(tmp, path)
    return truth


# -------------------------------------------------------------------------------- the measured child
def _tree_rss_mb(pid: int) -> float:
    total = 0.0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) / 1024
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def measure(data: Path, out_dir: Path) -> None:
    from tunesmith.config import validate_config
    from tunesmith.data.stream import build_splits

    cfg = validate_config(
        {"name": "bench", "model": "builtin:smollm2-135m-instruct", "data": {"train": str(data)}},
        base_dir=data.parent,
    )
    peak = [0.0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _tree_rss_mb(os.getpid()))
            time.sleep(0.2)

    rows = [0]
    last = [time.perf_counter()]
    t0 = time.perf_counter()

    def progress(n: int) -> None:
        rows[0] += n
        if time.perf_counter() - last[0] > 15:
            last[0] = time.perf_counter()
            rate = rows[0] / (last[0] - t0)
            print(f"  {rows[0]:,} rows, {rate:,.0f} rows/s, {peak[0]:,.0f} MB", file=sys.stderr, flush=True)

    threading.Thread(target=sample, daemon=True).start()
    files = build_splits(cfg, out_dir, progress)
    seconds = time.perf_counter() - t0
    done.set()
    peak[0] = max(peak[0], _tree_rss_mb(os.getpid()))
    print(
        json.dumps(
            {"seconds": seconds, "peak_tree_rss_mb": peak[0], "counts": files.counts, "report": files.report}
        )
    )


# ------------------------------------------------------------------------------------------- scoring
def score(out_dir: Path, truth: dict[str, Any]) -> dict[str, Any]:
    """Planted copies must be gone, planted PII values absent from what was kept and replaced by their
    placeholder."""
    near, exact = set(truth["near"]), set(truth["exact"])
    pii = {int(k): v for k, v in truth["pii"].items()}
    kept_lines: set[int] = set()
    redacted_ok = leaked = 0
    for split in ("train", "val", "test"):
        with (out_dir / f"{split}.jsonl").open(encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                n = int(row["source"].rpartition(":")[2])
                kept_lines.add(n)
                if n in pii:
                    kind, value = pii[n]
                    user = row["messages"][1]["content"]
                    if value in user:
                        leaked += 1
                    elif f"<{kind}>" in user:
                        redacted_ok += 1
    pii_kept = sum(1 for n in pii if n in kept_lines)
    return {
        "near_duplicates_planted": len(near),
        "near_duplicates_removed": len(near - kept_lines),
        "near_duplicate_recall": round(len(near - kept_lines) / max(len(near), 1), 4),
        "exact_copies_planted": len(exact),
        "exact_copies_removed": len(exact - kept_lines),
        "pii_planted_in_kept_examples": pii_kept,
        "pii_redacted_with_right_placeholder": redacted_ok,
        "pii_leaked": leaked,
        "pii_redaction_recall": round(redacted_ok / max(pii_kept, 1), 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--measure", nargs=2, metavar=("DATA", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        measure(Path(args.measure[0]), Path(args.measure[1]))
        return

    WORK.mkdir(parents=True, exist_ok=True)
    data = WORK / f"chat-{args.n}-s{args.seed}.jsonl"
    truth_path = data.with_suffix(".truth.json")
    if not (data.exists() and truth_path.exists()):
        print(f"generating {args.n:,} examples -> {data}", file=sys.stderr)
        t = time.perf_counter()
        truth = generate(data, args.n, args.seed)
        truth_path.write_text(json.dumps(truth))
        print(f"  {time.perf_counter() - t:.0f} s", file=sys.stderr)
    truth = json.loads(truth_path.read_text())
    out_dir = WORK / f"prepared-{args.n}"
    print(f"preparing {data.stat().st_size / 1e6:,.0f} MB in a fresh process ...", file=sys.stderr)
    load_before = os.getloadavg()
    proc = subprocess.run(
        [sys.executable, __file__, "--measure", str(data), str(out_dir)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    sys.stderr.write(proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(proc.returncode)
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    clean = child["report"]["clean"]["train"]
    result = {
        "machine": {
            "python": platform.python_version(),
            "cpus": len(os.sched_getaffinity(0)),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
        "examples": args.n,
        "input_mb": round(data.stat().st_size / 1e6, 1),
        "seconds": round(child["seconds"], 1),
        "examples_per_s": round(args.n / child["seconds"]),
        "peak_memory_mb_process_tree": round(child["peak_tree_rss_mb"]),
        "limits": {"seconds": 600, "peak_memory_mb": 4096},
        "within_limits": child["seconds"] <= 600 and child["peak_tree_rss_mb"] <= 4096,
        "split_counts": child["counts"],
        "clean_counts": {k: v for k, v in clean.items() if not isinstance(v, list)},
        "contamination_pairs": child["report"]["contamination"]["pairs"],
        "planted": score(out_dir, truth),
    }
    results = RESULTS if args.n == 1_000_000 else RESULTS.with_name(f"data_prepare-{args.n}.json")
    results.parent.mkdir(parents=True, exist_ok=True)
    tmp = results.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, results)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
