"""The data stage as a whole: planted errors, cleaning counts, stratified splits, contamination."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

from helpers import data_config, make_label_rows, random_words, write_jsonl
from tunesmith.config import load_config
from tunesmith.data.pipeline import prepare, read_splits


def test_one_planted_error_of_each_kind_is_reported_and_nothing_written(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    good = [json.dumps(r) for r in make_label_rows(30)]
    planted = {
        3: '{"instruction": "x", "output": "y"',  # bad_json
        5: json.dumps(
            {"messages": [{"role": "bot", "content": "hi"}, {"role": "assistant", "content": "x"}]}
        ),
        7: json.dumps({"messages": [{"role": "user", "content": "only a question"}]}),
        9: json.dumps({"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "x"}]}),
        11: json.dumps(
            {"messages": [{"role": "user", "content": ["a", "list"]}, {"role": "assistant", "content": "x"}]}
        ),
        13: json.dumps({"instruction": "x", "output": "y", "lang": "en"}),
        15: json.dumps({"instruction": "long " * 200, "output": "y"}),
    }
    lines = [line.encode() for line in good]
    for n, text in planted.items():
        lines[n - 1] = text.encode()
    lines[16] = b'{"instruction": "caf\xe9", "output": "y"}'  # line 17: latin-1, not UTF-8
    (tmp_path / "train.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    cfg = data_config(tmp_path, tiny_model_dir)
    proc = subprocess.run(
        [sys.executable, "-m", "tunesmith.cli", "run", str(cfg)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 1
    err = " ".join(proc.stderr.split())
    expected = {
        3: "bad_json",
        5: "messages[0].role 'bot' is not one of system/user/assistant",
        7: "messages must end with an assistant turn",
        9: "messages[0].content is empty",
        11: "messages[0].content must be a string, got list",
        13: "lang unknown key",
        17: "is not valid UTF-8",
    }
    for line, text in expected.items():
        assert f"train.jsonl:{line}:" in err, line
        assert text in err, text
    assert not (tmp_path / "runs").exists()
    # The over-length line is found once the parse errors are fixed (it needs the tokenizer).
    for n in expected:
        lines[n - 1] = good[n - 1].encode()
    (tmp_path / "train.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    proc = subprocess.run(
        [sys.executable, "-m", "tunesmith.cli", "data", "check", str(cfg)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    assert (
        "train.jsonl:15: is " in " ".join(proc.stderr.split()) and "over train.max_length=96" in proc.stderr
    )
    assert not (tmp_path / "runs").exists()


def test_too_few_examples(tmp_path: Path, tiny_model_dir: Path) -> None:
    write_jsonl(tmp_path / "train.jsonl", make_label_rows(8))
    cfg = load_config(data_config(tmp_path, tiny_model_dir, split={"val": 0.0, "test": 0.0}))
    try:
        read_splits(cfg)
    except Exception as e:  # noqa: BLE001 - the message is what is checked
        assert "has 8 examples; at least 10 are needed" in str(e)
    else:
        raise AssertionError("8 examples were accepted")


def test_cleaning_counts_and_overlength_policies(
    tmp_path: Path, tiny_model_dir: Path, tokenizer: Any
) -> None:
    rows = make_label_rows(60)
    rows.append(dict(rows[0]))  # exact duplicate
    rows.append({**rows[1], "instruction": rows[1]["instruction"] + " "})  # duplicate after normalisation
    rows.append({"instruction": "Contact me at jane.doe@example.com or +1 415 555 0132", "output": "billing"})
    rows.append({"instruction": "same same same", "output": "same same same"})  # degenerate
    rows.append({"instruction": "long " * 200, "output": "billing"})
    write_jsonl(tmp_path / "train.jsonl", rows)
    cfg = load_config(
        data_config(tmp_path, tiny_model_dir, on_overlength="drop", split={"val": 0.0, "test": 0.2})
    )
    data = prepare(cfg, tokenizer)
    clean = data.preflight["clean"]["train"]
    assert clean["exact_duplicates"] == 2 and clean["degenerate"] == 1
    assert clean["pii_found"] == {"EMAIL": 1, "PHONE": 1}
    redacted = [e for e in data.train.examples + data.test.examples if "<EMAIL>" in e.messages[1]["content"]]
    assert len(redacted) == 1 and "<PHONE>" in redacted[0].messages[1]["content"]
    assert sum(data.preflight["overlength"][k].get("overlength_dropped", 0) for k in ("train", "test")) == 1

    cfg = load_config(
        data_config(tmp_path, tiny_model_dir, on_overlength="truncate", split={"val": 0.0, "test": 0.2})
    )
    data = prepare(cfg, tokenizer)
    assert max(len(e.input_ids) for e in data.train.encoded + data.test.encoded) <= 96


def test_stratified_split_keeps_label_balance(tmp_path: Path, tiny_model_dir: Path) -> None:
    rng = random.Random(0)
    rows = [
        {"text": random_words(rng, 12), "label": ["a", "b", "c"][i % 3] if i < 90 else "d"}
        for i in range(100)
    ]
    (tmp_path / "train.csv").write_text("text,label\n" + "".join(f"{r['text']},{r['label']}\n" for r in rows))
    cfg = load_config(
        data_config(tmp_path, tiny_model_dir, train="train.csv", split={"val": 0.1, "test": 0.2})
    )
    cs = read_splits(cfg)
    from collections import Counter

    assert Counter(e.label for e in cs.test) == {"a": 6, "b": 6, "c": 6, "d": 2}
    assert cs.report["split"]["stratified"] is True


def test_contaminated_test_split_is_reported_with_pairs(tmp_path: Path, tiny_model_dir: Path) -> None:
    train = make_label_rows(40, seed=1)
    train[5] = {
        "instruction": "Customer 5 writes that the invoice for order 5 shows the wrong VAT number and asks for a corrected copy",
        "output": "billing",
    }
    test = [
        # A reworded copy of train line 6 (one word changed) and unrelated examples.
        {
            "instruction": "Customer 5 says that the invoice for order 5 shows the wrong VAT number and asks for a corrected copy",
            "output": "billing",
        },
        *make_label_rows(11, seed=2),
    ]
    write_jsonl(tmp_path / "train.jsonl", train)
    write_jsonl(tmp_path / "test.jsonl", test)
    write_jsonl(tmp_path / "val.jsonl", test[2:])
    cfg = load_config(
        data_config(tmp_path, tiny_model_dir, test="test.jsonl", val="val.jsonl", clean={"near_dedup": False})
    )
    cs = read_splits(cfg)
    listed = cs.report["contamination"]["listed"]
    assert {(p["train"], p["eval"], p["split"]) for p in listed} == {
        ("train.jsonl:6", "test.jsonl:1", "test")
    }
    assert len(cs.train) == 39  # the train side is dropped (action: drop)
