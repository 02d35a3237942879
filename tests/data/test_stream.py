"""The streaming data stage: worker processes change nothing, errors are counted in full, the prepared-data
cache reuses unchanged data and notices changed data."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from helpers import data_config, make_label_rows, random_words, write_jsonl
from tunesmith.config import load_config
from tunesmith.data import stream
from tunesmith.data.clean import dedup_parts
from tunesmith.data.formats import Example
from tunesmith.data.issues import DataError


def _messy_rows(n: int, seed: int) -> list[dict[str, Any]]:
    """Label rows with planted exact copies, reworded copies and PII. Each instruction is 20+ words, long
    enough for the near-duplicate check (shorter texts are compared exactly only)."""
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = make_label_rows(n, seed=seed)
    for r in rows:
        r["instruction"] += " " + random_words(rng, 10)
    for i in range(10, n, 7):
        src = rows[rng.randrange(i)]
        if i % 2:
            rows[i] = dict(src)
        else:
            words = src["instruction"].split()
            words[rng.randrange(len(words))] = "changed"
            rows[i] = {**src, "instruction": " ".join(words)}
    for i in range(5, n, 23):
        rows[i] = {**rows[i], "instruction": rows[i]["instruction"] + " mail me at jo.doe@example.com"}
    return rows


def test_worker_processes_give_the_same_splits_as_one_process(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_jsonl(tmp_path / "train.jsonl", _messy_rows(700, seed=3))
    cfg = load_config(data_config(tmp_path, tiny_model_dir))
    one = stream.build_splits(cfg, tmp_path / "one")
    monkeypatch.setattr(stream, "CHUNK_ROWS", 50)
    monkeypatch.setattr(stream, "POOL_AFTER_ROWS", 100)
    monkeypatch.setattr(stream, "_workers", lambda: 2)
    pooled = stream.build_splits(cfg, tmp_path / "pooled")
    for split in ("train", "val", "test"):
        assert (tmp_path / "one" / f"{split}.jsonl").read_bytes() == (
            tmp_path / "pooled" / f"{split}.jsonl"
        ).read_bytes()
    assert one.report == pooled.report
    clean = one.report["clean"]["train"]
    assert clean["exact_duplicates"] > 0 and clean["near_duplicates"] > 0
    assert clean["pii_found"] == {"EMAIL": clean["pii_examples"]}
    assert sum(one.counts.values()) == clean["kept"]
    kept = "".join((tmp_path / "one" / f"{s}.jsonl").read_text() for s in ("train", "val", "test"))
    assert "jo.doe@example.com" not in kept and "<EMAIL>" in kept


def test_every_bad_line_is_counted_and_nothing_is_written(tmp_path: Path, tiny_model_dir: Path) -> None:
    rows = [json.dumps(r) for r in make_label_rows(40)]
    rows += ['{"instruction": "x", "output": '] * 450  # 450 broken lines: all counted, the first listed
    (tmp_path / "train.jsonl").write_text("\n".join(rows) + "\n")
    cfg = load_config(data_config(tmp_path, tiny_model_dir))
    with pytest.raises(DataError) as e:
        stream.build_splits(cfg, tmp_path / "out")
    msg = str(e.value)
    assert "450 problem(s)" in msg and "bad_json (450)" in msg
    assert "train.jsonl:41:" in msg and "... and 445 more" in msg
    assert not (tmp_path / "out").exists()
    assert not any(p.name.startswith(".tunesmith-data-") for p in tmp_path.iterdir())


def test_system_prompt_is_left_out_of_duplicate_checks() -> None:
    ex = Example(
        [
            {"role": "system", "content": "Shared boilerplate."},
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "a"},
        ],
        "f:1",
    )
    assert dedup_parts(ex) == ("q", "a")


def test_prepared_data_is_reused_until_the_data_changes(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tunesmith import runner

    write_jsonl(tmp_path / "train.jsonl", make_label_rows(60, seed=4))
    cfg = load_config(data_config(tmp_path, tiny_model_dir))
    quiet = Console(file=io.StringIO())
    _, _, first = runner.check_data(cfg, quiet)
    assert first.preflight["cache"]["hit"] is False

    calls = []
    real = runner.prepare
    monkeypatch.setattr(runner, "prepare", lambda *a, **k: calls.append(1) or real(*a, **k))
    (tmp_path / "train.jsonl").touch()  # a new timestamp alone is no change
    _, _, second = runner.check_data(cfg, quiet)
    assert calls == [] and second.preflight["cache"]["hit"] is True
    for split in ("train", "val", "test"):
        a, b = getattr(first, split), getattr(second, split)
        assert [e.source for e in a.examples] == [e.source for e in b.examples]
        assert [(e.input_ids, e.labels) for e in a.encoded] == [(e.input_ids, e.labels) for e in b.encoded]

    rows = make_label_rows(60, seed=4)
    rows[3]["output"] = "a different answer"
    write_jsonl(tmp_path / "train.jsonl", rows)
    _, _, third = runner.check_data(cfg, quiet)
    assert calls == [1] and third.preflight["cache"]["hit"] is False

    off = load_config(data_config(tmp_path, tiny_model_dir, cache=False))
    runner.check_data(off, quiet)
    assert calls == [1, 1]
