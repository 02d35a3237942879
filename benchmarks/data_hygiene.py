"""Benchmark the data-hygiene modules: PII recall/precision and throughput, near-duplicate recall/precision,
the representation choice behind it, and dedup throughput and memory at growing corpus sizes.

    PYTHONPATH=src python benchmarks/data_hygiene.py            # full run, a few minutes
    PYTHONPATH=src python benchmarks/data_hygiene.py --quick    # smaller sizes, for a smoke test

Results go to benchmarks/results/data_hygiene.json (written atomically). Every fixture is generated from
a seed (tests/data/fixtures_gen.py), so the quality numbers are exactly reproducible; timings depend on the
machine and on what else runs on it, so the run records the CPU count and load average next to them.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import re
import resource
import subprocess
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# The fixture generators live with the tests; the repo's own source is what is being measured.
sys.path[:0] = [str(ROOT / "tests" / "data"), str(ROOT / "src")]

import fixtures_gen as fg  # noqa: E402
from datasketch import MinHash, MinHashLSH  # noqa: E402

from tunesmith.data import dedup, pii  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "data_hygiene.json"


def _status_mb(field: str) -> float:
    # VmHWM rather than getrusage: Linux folds the parent's peak into ru_maxrss across fork+exec, so a
    # child would report the parent's high-water mark.
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024


def _rss_mb() -> float:
    return _status_mb("VmRSS")


def _peak_rss_mb() -> float:
    return _status_mb("VmHWM")


# ---------------------------------------------------------------------------------------------------------
# PII
# ---------------------------------------------------------------------------------------------------------


def pii_quality(per_type: int, n_clean: int) -> dict[str, Any]:
    lines = fg.pii_fixture(per_type=per_type, seed=7)
    total: Counter[str] = Counter()
    exact: Counter[str] = Counter()
    placeholder_ok: Counter[str] = Counter()
    spurious: list[tuple[str, str]] = []
    for line in lines:
        matches = pii.find_pii(line.text)
        by_span = {(m.start, m.end): m.kind for m in matches}
        redacted, _ = pii.redact(line.text)
        expected, pos = [], 0
        for kind, start, end in sorted(line.planted, key=lambda p: p[1]):
            expected += [line.text[pos:start], f"<{kind}>"]
            pos = end
        line_ok = redacted == "".join(expected) + line.text[pos:]
        for kind, start, end in line.planted:
            total[kind] += 1
            exact[kind] += by_span.get((start, end)) == kind
            placeholder_ok[kind] += line_ok
        planted_spans = {(s, e) for _, s, e in line.planted}
        spurious += [(m.kind, m.text) for m in matches if (m.start, m.end) not in planted_spans]
    clean = fg.pii_free_lines(n=n_clean, seed=11)
    false_pos = [(m.kind, m.text, line) for line in clean for m in pii.find_pii(line)]
    n_matches = sum(exact.values()) + len(spurious)
    return {
        "planted_fixture": {"lines": len(lines), "values_per_kind": dict(total)},
        "recall_per_kind": {k: round(exact[k] / total[k], 4) for k in sorted(total)},
        "placeholder_correct_per_kind": {k: round(placeholder_ok[k] / total[k], 4) for k in sorted(total)},
        "precision_on_planted_lines": round(sum(exact.values()) / max(1, n_matches), 4),
        "spurious_on_planted_lines": spurious[:20],
        "pii_free_lines": len(clean),
        "false_positives_on_pii_free_lines": len(false_pos),
        "false_positive_examples": false_pos[:20],
    }


def pii_throughput(n_lines: int) -> dict[str, Any]:
    # A realistic mix: mostly ordinary support messages, some number-heavy business lines, a few with PII.
    base = fg.support_corpus(4000, dup_rate=0.0, seed=21)
    base += fg.pii_free_lines(n=2000, seed=22)
    base += [line.text for line in fg.pii_fixture(per_type=60, seed=23)]
    lines = [base[i % len(base)] for i in range(n_lines)]
    n_chars = sum(map(len, lines))
    pii.redact("warm up caches 415-555-0132")
    t0 = time.perf_counter()
    hits = 0
    for line in lines:
        hits += sum(pii.redact(line)[1].values())
    dt = time.perf_counter() - t0
    return {
        "lines": n_lines,
        "mean_line_chars": round(n_chars / n_lines, 1),
        "seconds": round(dt, 2),
        "lines_per_s": round(n_lines / dt),
        "mb_per_s": round(n_chars / dt / 2**20, 2),
        "extrapolated_seconds_per_1m_lines": round(1_000_000 / (n_lines / dt), 1),
        "values_redacted": hits,
    }


# ---------------------------------------------------------------------------------------------------------
# Near-duplicates
# ---------------------------------------------------------------------------------------------------------


def _score(found: list[tuple[int, int, float]], pairs: set[tuple[int, int]]) -> tuple[float, float]:
    predicted = {(i, j) for i, j, _ in found}
    tp = len(predicted & pairs)
    return tp / len(pairs), tp / max(1, len(predicted))


def dedup_quality(seeds: list[int]) -> dict[str, Any]:
    per_seed = {}
    for seed in seeds:
        fx = fg.near_dup_fixture(n_pairs=1000, n_distinct=1000, seed=seed)
        t0 = time.perf_counter()
        recall, precision = _score(dedup.find_near_duplicates(fx.texts), fx.pairs)
        per_seed[str(seed)] = {
            "texts": len(fx.texts),
            "planted_pairs": len(fx.pairs),
            "recall": round(recall, 4),
            "precision": round(precision, 4),
            "seconds": round(time.perf_counter() - t0, 2),
        }
    fx = fg.near_dup_fixture(n_pairs=1000, n_distinct=1000, seed=seeds[0])
    sweep = {}
    for t in (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8):
        recall, precision = _score(dedup.find_near_duplicates(fx.texts, threshold=t), fx.pairs)
        sweep[f"{t:.2f}"] = {"recall": round(recall, 4), "precision": round(precision, 4)}
    return {
        "default_threshold": dedup.DEFAULT_THRESHOLD,
        "num_perm": dedup.DEFAULT_NUM_PERM,
        "lsh_bands_rows": list(dedup.lsh_params(dedup.DEFAULT_THRESHOLD, dedup.DEFAULT_NUM_PERM)),
        "fixture_seeds": per_seed,
        f"threshold_sweep_seed_{seeds[0]}": sweep,
    }


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", dedup.normalize_text(text).casefold())


def _chars(text: str, n: int) -> set[bytes]:
    t = dedup.normalize_text(text).casefold()
    return {t[i : i + n].encode() for i in range(max(1, len(t) - n + 1))}


REPRESENTATIONS: dict[str, Callable[[str], set[bytes]]] = {
    "word_unigrams_content (chosen)": dedup.shingles,
    "word_unigrams_all": lambda t: {w.encode() for w in _words(t)},
    "word_bigrams": lambda t: dedup.shingles(t, n=2),
    "char_3grams": lambda t: _chars(t, 3),
    "char_5grams": lambda t: _chars(t, 5),
}


def representation_comparison(seed: int) -> dict[str, Any]:
    """Exact-Jaccard separability of planted pairs from everything else, per representation, at each
    representation's own best threshold; plus the same with 128-permutation MinHash estimates.

    Candidate pairs come from a low-threshold (0.3) LSH over each representation, so all pairs similar
    enough to matter are scored without an all-pairs pass."""
    fx = fg.near_dup_fixture(n_pairs=1000, n_distinct=1000, seed=seed)
    out: dict[str, Any] = {}
    for name, fn in REPRESENTATIONS.items():
        sets = [fn(t) for t in fx.texts]
        mhs = MinHash.bulk(sets, num_perm=128, seed=1, hashfunc=zlib.crc32)
        lsh = MinHashLSH(threshold=0.3, num_perm=128)
        cands: set[tuple[int, int]] = set(fx.pairs)
        for i, mh in enumerate(mhs):
            cands.update((j, i) for j in lsh.query(mh))
            lsh.insert(i, mh)
        exact = {p: len(sets[p[0]] & sets[p[1]]) / len(sets[p[0]] | sets[p[1]]) for p in cands}
        est = {p: float(mhs[p[0]].jaccard(mhs[p[1]])) for p in cands}
        row: dict[str, Any] = {"mean_set_size": round(sum(map(len, sets)) / len(sets), 1)}
        for label, sims in (("exact", exact), ("minhash128", est)):
            best = (0.0, 0.0, 0.0, 0.0)
            for k in range(30, 96):
                t = k / 100
                hits = [p for p, s in sims.items() if s >= t]
                tp = sum(p in fx.pairs for p in hits)
                recall, precision = tp / len(fx.pairs), tp / max(1, len(hits))
                best = max(best, (min(recall, precision), t, recall, precision))
            row[label] = {
                "best_threshold": best[1],
                "recall": round(best[2], 4),
                "precision": round(best[3], 4),
            }
        out[name] = row
    return out


CORPORA: dict[str, tuple[str, Callable[[int], list[str]]]] = {
    "support": (
        "fixture-style support messages: 24 templates, 20-60 words, 10% reworded copies; the worst case, "
        "every text has thousands of same-template siblings that LSH must propose and verify",
        lambda n: fg.support_corpus(n, dup_rate=0.1, seed=3),
    ),
    "diverse": (
        "20-60 words from a Zipf-distributed 50k-word vocabulary plus function words, 10% reworded copies; "
        "unrelated texts share little, as in a varied real corpus",
        lambda n: fg.diverse_corpus(n, dup_rate=0.1, seed=4),
    ),
}


def _helper_peak_mb(texts: list[str]) -> float:
    """Peak RSS of a helper process like the one find_near_duplicates starts (imports plus in-flight
    chunks), measured in a process of its own since the real helper exits before it could be read."""

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(dedup.sketch_texts, texts[:4096], 128, 1) for _ in range(dedup._IN_FLIGHT)]
        for f in futures:
            f.result()
        return pool.submit(_peak_rss_mb).result()


def _dedup_child(corpus: str, n: int, helper_mode: str) -> None:
    texts = CORPORA[corpus][1](n)
    helper = dedup._use_helper(n) if helper_mode == "auto" else helper_mode == "on"
    dedup._use_helper = lambda _n: helper  # type: ignore[assignment]  # decide once, report what ran
    base = _rss_mb()
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    found = dedup.find_near_duplicates(texts)
    dt = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    print(
        json.dumps(
            {
                "texts": n,
                "seconds": round(dt, 2),
                "texts_per_s": round(n / dt),
                "this_process_cpu_seconds": round(cpu, 2),
                "duplicates_reported": len(found),
                "rss_before_mb": round(base, 1),
                "peak_rss_mb": round(_peak_rss_mb(), 1),
                "index_peak_mb": round(_peak_rss_mb() - base, 1),
                "mean_words": round(sum(len(t.split()) for t in texts) / n, 1),
                "helper_process_peak_mb": round(_helper_peak_mb(texts), 1) if helper else None,
            }
        )
    )


def helper_comparison(n: int) -> dict[str, Any]:
    return {
        "one_process": _run_child("diverse", n, helper="off"),
        "with_helper": _run_child("diverse", n, helper="on"),
        "note": "the helper hashes texts on a second core while the main process runs the LSH; "
        f"find_near_duplicates uses it for {dedup._PARALLEL_MIN_TEXTS}+ texts when a core is idle "
        "(1-minute load average at least 0.5 below the usable CPU count). this_process_cpu_seconds "
        "shows the work moved off the main process; wall time only improves with a free core.",
    }


def _run_child(corpus: str, n: int, helper: str = "auto") -> dict[str, Any]:
    # A fresh interpreter per run, so peak RSS belongs to that run alone.
    cmd = [sys.executable, __file__, "--dedup-child", corpus, str(n), "--helper", helper]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def dedup_throughput(corpus: str, sizes: list[int]) -> dict[str, Any]:
    runs = []
    for n in sizes:
        runs.append(_run_child(corpus, n))
        print(
            f"  dedup {corpus} {n:>8} texts: {runs[-1]['texts_per_s']} texts/s, "
            f"peak {runs[-1]['peak_rss_mb']} MB"
        )
    # Time per text can grow with N (more candidates to verify when many texts are alike), so fit
    # t(N) = a*N + b*N^2 (b >= 0) by least squares; memory is linear in the number of distinct texts.
    ns = [r["texts"] for r in runs]
    ts = [r["seconds"] for r in runs]
    s11 = sum(n**2 for n in ns)
    s12 = sum(n**3 for n in ns)
    s22 = sum(n**4 for n in ns)
    y1 = sum(n * t for n, t in zip(ns, ts, strict=True))
    y2 = sum(n**2 * t for n, t in zip(ns, ts, strict=True))
    det = s11 * s22 - s12 * s12
    a, b = (y1 * s22 - y2 * s12) / det, (s11 * y2 - s12 * y1) / det
    if b < 0:
        a, b = y1 / s11, 0.0
    mem = [r["index_peak_mb"] for r in runs]
    slope = (mem[-1] - mem[0]) / (ns[-1] - ns[0])
    million = 1_000_000
    seconds = a * million + b * million**2
    return {
        "corpus": CORPORA[corpus][0],
        "runs": runs,
        "index_bytes_per_text": round(slope * 2**20),
        "extrapolated_1m": {
            "seconds": round(seconds),
            "minutes": round(seconds / 60, 1),
            "texts_per_s": round(million / seconds),
            "index_peak_mb": round(mem[-1] + slope * (million - ns[-1])),
            "model": "t(N) = a*N + b*N^2, least squares over the runs; memory linear, smallest to largest",
        },
    }


# ---------------------------------------------------------------------------------------------------------


def _write_atomically(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--steps", help="comma-separated subset of steps to (re)run, merged into --out")
    parser.add_argument("--dedup-child", nargs=2, metavar=("CORPUS", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--helper", choices=("auto", "on", "off"), default="auto", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.dedup_child:
        _dedup_child(args.dedup_child[0], int(args.dedup_child[1]), args.helper)
        return

    sizes = [5_000, 10_000] if args.quick else [25_000, 50_000, 100_000, 200_000]
    results: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
            "platform": platform.platform(),
        }
    }
    t0 = time.perf_counter()
    steps: list[tuple[str, Callable[[], Any]]] = [
        ("pii_quality", lambda: pii_quality(60 if args.quick else 300, 1000 if args.quick else 5000)),
        ("pii_throughput", lambda: pii_throughput(20_000 if args.quick else 200_000)),
        ("dedup_quality", lambda: dedup_quality([13] if args.quick else [13, 1, 2, 3])),
        ("dedup_representations", lambda: representation_comparison(13)),
        ("dedup_throughput", lambda: {corpus: dedup_throughput(corpus, sizes) for corpus in CORPORA}),
        (
            "dedup_helper_process_comparison",
            lambda: helper_comparison(sizes[-2] if len(sizes) > 1 else sizes[0]),
        ),
    ]
    if args.steps:
        wanted = set(args.steps.split(","))
        unknown = wanted - {name for name, _ in steps}
        if unknown:
            parser.error(f"unknown steps: {', '.join(sorted(unknown))}")
        steps = [(name, step) for name, step in steps if name in wanted]
        if args.out.exists():  # re-measure some steps, keep the others from the previous run
            results = {**json.loads(args.out.read_text()), "machine": results["machine"]}
    for name, step in steps:
        print(f"{name} ...", flush=True)
        results[name] = step()
        # Written after every step, so an interrupted run still leaves what it measured.
        _write_atomically(args.out, results)
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["benchmark_seconds"] = round(time.perf_counter() - t0, 1)
    _write_atomically(args.out, results)
    print(json.dumps(results, indent=2, ensure_ascii=False))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
