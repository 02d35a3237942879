"""Real data as users have it: CLINC150's CSV files (a slice in tests/data/real/clinc150, CC BY 3.0) through
`init`, column mapping, hygiene that keeps paraphrases, conflicting answers, and the user's own test file
evaluated exactly as given."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import write_jsonl
from tunesmith.config import load_config
from tunesmith.data.init import inspect, write_config
from tunesmith.data.issues import DataError
from tunesmith.data.stream import build_splits

CLINC = Path(__file__).parent / "real" / "clinc150"


@pytest.fixture
def clinc(tmp_path: Path) -> Path:
    """A private copy of the slice, as a user's folder."""
    dst = tmp_path / "clinc150"
    shutil.copytree(CLINC, dst)
    return dst


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _split_rows(out: Path, split: str) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (out / f"{split}.jsonl").read_text().splitlines()]


def _init(clinc: Path, tokenizer: Any, tiny_model_dir: Path) -> Path:
    cfg_path = clinc / "tunesmith.yaml"
    write_config([str(clinc / "train.csv")], cfg_path, str(tiny_model_dir), tokenizer, 1024)
    return cfg_path


def test_init_maps_clinc_columns_and_uses_its_own_val_and_test_files(
    clinc: Path, tokenizer: Any, tiny_model_dir: Path
) -> None:
    profile = inspect([str(clinc / "train.csv")])
    assert profile.layout == "classification" and profile.answers == "label"
    assert (profile.mapping.text, profile.mapping.label) == ("query", "intent")
    assert len(profile.labels) == 8 and profile.rows == 208
    assert profile.test == [str(clinc / "test.csv")] and profile.val == [str(clinc / "val.csv")]

    cfg_path = _init(clinc, tokenizer, tiny_model_dir)
    text = cfg_path.read_text()
    assert "# Written by `tunesmith init`" in text and "targets: {}" in text
    cfg = load_config(cfg_path)
    assert cfg.name == "clinc150"
    assert cfg.data.columns.text == "query" and cfg.data.columns.label == "intent"
    assert cfg.data.test == [str(clinc / "test.csv")] and cfg.data.val == [str(clinc / "val.csv")]
    assert cfg.train.objective == "classify" and cfg.eval.metrics == ["accuracy", "classification"]
    assert 32 <= cfg.train.max_length <= 128  # queries of ~10 words: the longest 1%, rounded up
    with pytest.raises(Exception, match="exists"):
        _init(clinc, tokenizer, tiny_model_dir)


def test_clinc_paraphrases_are_kept_conflicts_listed_and_test_file_evaluated_as_given(
    clinc: Path, tokenizer: Any, tiny_model_dir: Path, tmp_path: Path
) -> None:
    cfg = load_config(_init(clinc, tokenizer, tiny_model_dir))
    files = build_splits(cfg, tmp_path / "out")
    train = files.report["clean"]["train"]
    # Paraphrases are the signal: none of the 208 queries is a near-duplicate (content-word MinHash at
    # 0.6, the previous default, dropped 40% of CLINC150's train file).
    assert train["near_duplicates"] == 0 and train["exact_duplicates"] == 0 and train["kept"] == 208
    # Near-identical queries with two intents are listed, kept: a class boundary or label noise.
    pairs = {(p["first_prompt"], p["second_prompt"]) for p in train["conflict_pairs"]}
    assert ("what do i need to change my oil", "do i need to change my oil") in pairs
    assert all(p["first_answer"] != p["second_answer"] for p in train["conflict_pairs"])
    assert train["conflicts"] >= 3 and files.counts["train"] == 208
    # The user's test file, exactly: every row, in order, unchanged.
    given = _csv_rows(clinc / "test.csv")
    got = _split_rows(tmp_path / "out", "test")
    assert files.counts["test"] == len(given) == 80
    assert [r["source"] for r in got] == [f"test.csv:{i}" for i in range(2, 82)]
    assert [(r["messages"][1]["content"], r["label"]) for r in got] == [
        (g["query"], g["intent"]) for g in given
    ]
    assert files.report["clean"]["test"]["mode"] == "report"


def test_the_test_file_keeps_its_duplicates_pii_and_degenerate_rows_and_reports_them(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    base = (
        "please move the standing desk order to the berlin office on the second floor and confirm the new "
        "delivery date by friday"
    )
    test_rows = [
        {"instruction": base, "output": "logistics"},
        {"instruction": base, "output": "logistics"},  # exact duplicate
        {"instruction": base.replace("confirm", "tell me"), "output": "logistics"},  # near (20+ words)
        {"instruction": "mail jane.doe@example.com the invoice", "output": "billing"},  # PII
        {"instruction": "route this", "output": "route this"},  # degenerate: repeats the prompt
        *({"instruction": f"ticket number {i} about payroll", "output": "payroll"} for i in range(10)),
    ]
    train_rows = [{"instruction": f"train ticket {i} about refunds", "output": "billing"} for i in range(40)]
    write_jsonl(tmp_path / "train.jsonl", train_rows)
    write_jsonl(tmp_path / "test.jsonl", test_rows)
    raw = {
        "name": "t",
        "model": str(tiny_model_dir),
        "data": {"train": "train.jsonl", "test": "test.jsonl", "split": {"val": 0.1, "test": 0.0}},
    }
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(raw))
    files = build_splits(load_config(tmp_path / "t.yaml"), tmp_path / "out")
    got = _split_rows(tmp_path / "out", "test")
    assert [r["messages"][-2]["content"] for r in got] == [r["instruction"] for r in test_rows]
    held = files.report["clean"]["test"]
    assert held["mode"] == "report" and held["kept"] == len(test_rows)
    assert held["exact_duplicates"] == 1 and held["near_duplicates"] == 1
    assert held["degenerate"] == 1 and held["pii_found"] == {"EMAIL": 1}
    assert {d["source"] for d in held["dropped_examples"]} >= {"test.jsonl:2", "test.jsonl:3", "test.jsonl:5"}
    assert "jane.doe@example.com" in (tmp_path / "out" / "test.jsonl").read_text()  # as given

    # Asked for, the test file is cleaned like the train files.
    raw["data"]["clean"] = {"eval_files": "clean"}
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(raw))
    files = build_splits(load_config(tmp_path / "t.yaml"), tmp_path / "out2")
    assert files.counts["test"] == len(test_rows) - 3
    assert "jane.doe@example.com" not in (tmp_path / "out2" / "test.jsonl").read_text()


def _pairs_config(tmp_path: Path, tiny_model_dir: Path, rows: list[dict[str, Any]], **clean: Any) -> Any:
    write_jsonl(tmp_path / "train.jsonl", rows)
    raw = {
        "name": "t",
        "model": str(tiny_model_dir),
        "data": {"train": "train.jsonl", "split": {"val": 0.0, "test": 0.0}, "clean": clean},
    }
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(raw))
    return load_config(tmp_path / "t.yaml")


LONG = (
    "our payroll export for the munich branch failed again this morning with an error about missing tax "
    "codes for three employees hired last week"
)


def _rows_with_conflict() -> list[dict[str, Any]]:
    rows = [{"instruction": f"filler ticket {i} about the mobile app", "output": "mobile"} for i in range(12)]
    rows += [
        {"instruction": LONG, "output": '{"queue": "payroll", "priority": "P2"}'},
        # The same ticket reworded, the same answer: a near-duplicate.
        {
            "instruction": LONG.replace("this morning", "today"),
            "output": '{"queue": "payroll", "priority": "P2"}',
        },
        # The same ticket, another answer: a conflict, never a duplicate.
        {
            "instruction": LONG.replace("again", "once more"),
            "output": '{"queue": "billing", "priority": "P1"}',
        },
        # JSON answers share their keys; other requests are other examples.
        {"instruction": "reset the password of ana", "output": '{"queue": "access", "user": "ana"}'},
        {"instruction": "reset the password of bob", "output": '{"queue": "access", "user": "bob"}'},
    ]
    return rows


def test_duplicates_need_prompt_and_answer_and_conflicts_keep_drop_or_error(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    files = build_splits(_pairs_config(tmp_path, tiny_model_dir, _rows_with_conflict()), tmp_path / "a")
    clean = files.report["clean"]["train"]
    assert clean["near_duplicates"] == 1 and clean["near_duplicate_pairs"][0]["dropped"] == "train.jsonl:14"
    assert clean["conflicts"] == 1 and files.counts["train"] == 16  # 17 rows, one duplicate dropped
    pair = clean["conflict_pairs"][0]
    assert (pair["first"], pair["second"]) == ("train.jsonl:13", "train.jsonl:15")
    assert "payroll" in pair["first_answer"] and "billing" in pair["second_answer"]

    dropped = build_splits(
        _pairs_config(tmp_path, tiny_model_dir, _rows_with_conflict(), conflicts="drop"), tmp_path / "b"
    )
    assert dropped.counts["train"] == 14 and dropped.report["clean"]["train"]["conflicts_dropped"] == 2
    sources = {r["source"] for r in _split_rows(tmp_path / "b", "train")}
    assert not sources & {"train.jsonl:13", "train.jsonl:15"}

    with pytest.raises(DataError) as err:
        build_splits(
            _pairs_config(tmp_path, tiny_model_dir, _rows_with_conflict(), conflicts="error"), tmp_path / "c"
        )
    assert "train.jsonl:15" in str(err.value) and "train.jsonl:13" in str(err.value)
    assert not (tmp_path / "c").exists()


def test_short_paraphrases_are_never_near_duplicates(tmp_path: Path, tiny_model_dir: Path) -> None:
    rows = [
        {"text": "what is my balance", "label": "balance"},
        {"text": "what's my balance", "label": "balance"},
        {"text": "tell me my balance please", "label": "balance"},
        {"text": "tell me my balance", "label": "balance"},
        {"text": "Tell me my balance.", "label": "balance"},  # the same words: an exact duplicate
        *({"text": f"set a timer for {i} minutes", "label": "timer"} for i in range(10)),
    ]
    files = build_splits(_pairs_config(tmp_path, tiny_model_dir, rows), tmp_path / "out")
    clean = files.report["clean"]["train"]
    assert clean["near_duplicates"] == 0 and clean["exact_duplicates"] == 1
    assert files.counts["train"] == len(rows) - 1
