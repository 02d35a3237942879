"""Near-duplicate rules measured on real data (CLINC150) and on the planted fixture, side by side.

    .venv/bin/python benchmarks/dedup_real.py            # ~2 minutes on 2 cores

Arms:
- `previous`: the rule before the prompt/answer split (content-word unigram sets of the whole example,
  function words dropped, MinHash LSH at 0.6), re-implemented here with datasketch for comparison;
- `current`: the data stage itself (`tunesmith.data.stream.build_splits` at the defaults: word sets,
  prompt and answer compared apart, texts under 20 words compared exactly, conflicts listed).

Measured:
1. the planted fixture (tests/data/fixtures_gen.py: 1,000 reworded copies of 20-60-word support messages
   among 1,000 distinct same-template texts): recall and precision of `find_near_duplicates` for word sets
   and content-word sets at 0.6 / 0.7 / 0.8;
2. CLINC150 (shared/data/clinc150, crowd-sourced queries of ~8 words, 150 intents): the share of train
   rows each arm drops as near-duplicates, and of the test file; the conflicting-answer pairs the current
   arm lists; pairs of queries with two intents whose word sets are identical under each representation.
Results: benchmarks/results/dedup_real.json (atomic write).
"""

from __future__ import annotations

import csv
import json
import platform
import re
import sys
import tempfile
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "data"), str(ROOT / "tests"), str(ROOT / "src")]

import fixtures_gen as fg  # noqa: E402
import yaml  # noqa: E402
from datasketch import MinHash, MinHashLSH  # noqa: E402

from tunesmith.config import load_config  # noqa: E402
from tunesmith.data import dedup  # noqa: E402
from tunesmith.data.stream import build_splits  # noqa: E402
from tunesmith.io import atomic_write_text  # noqa: E402

CLINC = ROOT.parent / "shared" / "data" / "clinc150"
OUT = ROOT / "benchmarks" / "results" / "dedup_real.json"
# The function words the previous representation dropped (negations kept), as it had them.
PREVIOUS_STOPWORDS = frozenset(
    """a about above after again against all also am an and any are as at be because been before being below
    between both but by can could did do does doing down during each few for from further had has have having he
    her here hers herself him himself his how i if in into is it its itself just me more most my myself of off on
    once only or other our ours ourselves out over own same she should so some such than that the their theirs
    them themselves then there these they this those through to too under until up very was we were what when
    where which while who whom why will with would you your yours yourself yourselves""".split()
)
_WORD = re.compile(r"\w+")


def _words(text: str, content: bool) -> set[bytes]:
    words = _WORD.findall(dedup.normalize_text(text).casefold())
    if content:
        kept = [w for w in words if w not in PREVIOUS_STOPWORDS]
        words = kept or words
    return {w.encode() for w in words}


def _minhash(tokens: set[bytes]) -> MinHash:
    m = MinHash(num_perm=128, seed=1, hashfunc=zlib.crc32)
    m.update_batch(tokens)
    return m


def fixture_quality() -> list[dict[str, Any]]:
    fx = fg.near_dup_fixture(n_pairs=1000, n_distinct=1000, seed=13)
    rows = []
    for threshold in (0.6, 0.7, 0.8):
        found = {(i, j) for i, j, _ in dedup.find_near_duplicates(fx.texts, threshold=threshold)}
        tp = len(found & fx.pairs)
        rows.append(
            {
                "representation": "word sets (tunesmith)",
                "threshold": threshold,
                "recall": round(tp / len(fx.pairs), 4),
                "precision": round(tp / max(len(found), 1), 4),
            }
        )
        lsh = MinHashLSH(num_perm=128, params=dedup.lsh_params(threshold, 128))  # the banding tunesmith uses
        sigs: list[MinHash] = []
        found = set()
        for i, text in enumerate(fx.texts):
            m = _minhash(_words(text, content=True))
            for j in lsh.query(m):
                if m.jaccard(sigs[j]) >= threshold:
                    found.add((j, i))
            lsh.insert(i, m)
            sigs.append(m)
        tp = len(found & fx.pairs)
        rows.append(
            {
                "representation": "content-word sets (previous)",
                "threshold": threshold,
                "recall": round(tp / len(fx.pairs), 4),
                "precision": round(tp / max(len(found), 1), 4),
            }
        )
    return rows


def _clinc(name: str) -> list[dict[str, str]]:
    with (CLINC / f"{name}.csv").open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def previous_rule_drops(rows: list[dict[str, str]]) -> int:
    """Near-duplicates dropped by the previous default: the whole example (query + label) as one
    content-word set, MinHash LSH at 0.6, each example against those kept before it."""
    lsh = MinHashLSH(num_perm=128, params=dedup.lsh_params(0.6, 128))
    kept: list[MinHash] = []
    dropped = 0
    for r in rows:
        m = _minhash(_words(f"{r['query']}\n{r['intent']}", content=True))
        if any(m.jaccard(kept[j]) >= 0.6 for j in lsh.query(m)):
            dropped += 1
            continue
        lsh.insert(len(kept), m)
        kept.append(m)
    return dropped


def identical_sets_with_two_intents(rows: list[dict[str, str]], content: bool) -> int:
    """Pairs of rows with two different intents whose queries are the same word set."""
    by_set: dict[frozenset[bytes], Counter[str]] = {}
    for r in rows:
        by_set.setdefault(frozenset(_words(r["query"], content)), Counter())[r["intent"]] += 1
    pairs = 0
    for intents in by_set.values():
        n = sum(intents.values())
        pairs += (n * n - sum(c * c for c in intents.values())) // 2
    return pairs


def current_stage(work: Path) -> dict[str, Any]:
    raw = {
        "name": "clinc150",
        "model": "builtin:smollm2-135m-instruct",
        "data": {
            "train": str(CLINC / "train.csv"),
            "val": str(CLINC / "val.csv"),
            "test": str(CLINC / "test.csv"),
            "columns": {"text": "query", "label": "intent"},
        },
        "train": {"objective": "classify"},
        "eval": {"metrics": ["accuracy"]},
    }
    (work / "cfg.yaml").write_text(yaml.safe_dump(raw))
    t = time.perf_counter()
    files = build_splits(load_config(work / "cfg.yaml"), work / "out")
    seconds = time.perf_counter() - t
    train, test = files.report["clean"]["train"], files.report["clean"]["test"]
    return {
        "seconds": round(seconds, 1),
        "train_read": train["input"],
        "train_near_duplicates": train["near_duplicates"],
        "train_exact_duplicates": train["exact_duplicates"],
        "train_conflict_pairs": train["conflicts"],
        "conflict_examples": [
            {
                k: p[k]
                for k in (
                    "first",
                    "first_prompt",
                    "first_answer",
                    "second",
                    "second_prompt",
                    "second_answer",
                    "jaccard",
                )
            }
            for p in train["conflict_pairs"][:5]
        ],
        "contaminated_train_examples": files.report["contamination"]["train_examples"],
        "test_rows_given": test["input"],
        "test_rows_evaluated": files.counts["test"],
        "test_duplicates_reported": test["exact_duplicates"] + test["near_duplicates"],
        "counts": files.counts,
    }


def main() -> None:
    started = time.time()
    train, test = _clinc("train"), _clinc("test")
    with tempfile.TemporaryDirectory() as tmp:
        current = current_stage(Path(tmp))
    result: dict[str, Any] = {
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
        "fixture": fixture_quality(),
        "clinc150": {
            "previous": {
                "train_near_duplicates": previous_rule_drops(train),
                "train_rows": len(train),
                "test_near_duplicates": previous_rule_drops(test),
                "test_rows": len(test),
            },
            "current": current,
            "two_intents_identical_word_sets": {
                "content words (previous)": identical_sets_with_two_intents(train, content=True),
                "all words (current)": identical_sets_with_two_intents(train, content=False),
            },
            "labels": len(Counter(r["intent"] for r in train)),
        },
        "seconds": round(time.time() - started, 1),
    }
    prev = result["clinc150"]["previous"]
    print(
        f"CLINC150 train near-duplicates: previous {prev['train_near_duplicates']} / {prev['train_rows']} "
        f"({prev['train_near_duplicates'] / prev['train_rows']:.1%}), current {current['train_near_duplicates']}; "
        f"test rows evaluated {current['test_rows_evaluated']} of {current['test_rows_given']} "
        f"(previous rule would drop {prev['test_near_duplicates']}); conflicts listed {current['train_conflict_pairs']}"
    )
    for row in result["fixture"]:
        print(
            f"fixture {row['representation']:30s} {row['threshold']}: recall {row['recall']} precision {row['precision']}"
        )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(OUT, json.dumps(result, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
