"""Column mapping (`data.columns`) and the layouts people already have: CSV with their own column names,
ShareGPT, OpenAI chat fine-tuning rows, custom chat keys and role names, Hugging Face `datasets` folders."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from helpers import write_jsonl
from tunesmith.config import ColumnsConfig
from tunesmith.data.init import inspect
from tunesmith.data.validate import load_examples


def _csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_csv_with_its_own_column_names_is_mapped(tmp_path: Path) -> None:
    p = _csv(tmp_path / "intents.csv", ["id", "query", "intent"], [["1", "what is my balance", "balance"]])
    cols = ColumnsConfig(text="query", label="intent", ignore=["id"])
    examples, issues = load_examples([str(p)], columns=cols)
    assert not issues
    (ex,) = examples
    assert ex.label == "balance" and ex.messages[1]["content"] == "what is my balance"
    assert ex.source == "intents.csv:2"


def test_unknown_columns_name_the_columns_seen_and_the_line_that_maps_them(tmp_path: Path) -> None:
    p = _csv(tmp_path / "intents.csv", ["query", "intent"], [["what is my balance right now", "balance"]])
    _, issues = load_examples([str(p)])
    (issue,) = issues
    assert issue.kind == "unknown_format" and issue.line == 2
    assert "['intent', 'query']" in issue.reason
    assert "data.columns: {text: query, label: intent}" in issue.reason

    # A mapped column the file lacks, and a column nobody mapped, are named with the fix.
    _, issues = load_examples([str(p)], columns=ColumnsConfig(text="question", label="intent"))
    assert issues[0].field == "question" and "data.columns.text" in issues[0].reason
    extra = _csv(tmp_path / "extra.csv", ["query", "intent", "source"], [["hi there", "greeting", "app"]])
    _, issues = load_examples([str(extra)], columns=ColumnsConfig(text="query", label="intent"))
    assert issues[0].field == "source" and "data.columns.ignore: [source]" in issues[0].reason


def test_columns_config_refuses_one_column_for_two_fields() -> None:
    with pytest.raises(ValueError, match="mapped to both text and label"):
        ColumnsConfig(text="q", label="q")
    with pytest.raises(ValueError, match="also in ignore"):
        ColumnsConfig(text="q", ignore=["q"])


SHAREGPT = {
    "conversations": [
        {"from": "system", "value": "You are a travel agent."},
        {"from": "human", "value": "Book me a flight to Oslo."},
        {"from": "gpt", "value": "For which date?"},
        {"from": "human", "value": "Friday."},
        {"from": "gpt", "value": "Booked: Friday, 9:40."},
    ]
}


def test_sharegpt_and_openai_chat_rows_are_read_as_they_are(tmp_path: Path) -> None:
    openai_row = {
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello, how can I help?", "weight": 1},
        ]
    }
    p = write_jsonl(tmp_path / "chat.jsonl", [SHAREGPT, openai_row])
    examples, issues = load_examples([str(p)])
    assert not issues
    share, oa = examples
    assert [m["role"] for m in share.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert share.reference == "Booked: Friday, 9:40." and oa.reference == "Hello, how can I help?"


def test_custom_chat_keys_and_role_names_are_mapped(tmp_path: Path) -> None:
    row = {
        "dialog": [
            {"speaker": "customer", "utterance": "My card was declined."},
            {"speaker": "agent", "utterance": "I can unblock it now."},
        ],
        "ticket": 77,
    }
    p = write_jsonl(tmp_path / "support.jsonl", [row])
    cols = ColumnsConfig.model_validate(
        {
            "messages": "dialog",
            "role": "speaker",
            "content": "utterance",
            "roles": {"customer": "user", "agent": "assistant"},
            "ignore": ["ticket"],
        }
    )
    examples, issues = load_examples([str(p)], columns=cols)
    assert not issues and examples[0].messages[0] == {"role": "user", "content": "My card was declined."}
    # Without the role names, the error says how to map them.
    no_roles = cols.model_copy(update={"roles": {}})
    _, issues = load_examples([str(p)], columns=no_roles)
    assert "data.columns.roles: {customer: user}" in issues[0].reason

    profile = inspect([str(p)])
    assert profile.layout == "chat"
    assert (profile.mapping.messages, profile.mapping.role, profile.mapping.content) == (
        "dialog",
        "speaker",
        "utterance",
    )
    assert profile.mapping.roles == {"customer": "user", "agent": "assistant"}
    assert profile.mapping.ignore == ["ticket"]


def test_hf_datasets_folder_is_read_with_datasets_and_a_datasetdict_names_its_splits(tmp_path: Path) -> None:
    from datasets import Dataset, DatasetDict

    rows = [{"question": f"what is {i} plus {i}", "answer": str(2 * i)} for i in range(5)]
    ds = Dataset.from_list(rows)
    ds.save_to_disk(str(tmp_path / "arith"))
    cols = ColumnsConfig(instruction="question", output="answer")
    examples, issues = load_examples([str(tmp_path / "arith")], columns=cols)
    assert not issues and [e.reference for e in examples] == ["0", "2", "4", "6", "8"]
    assert examples[1].source == "arith:2"

    DatasetDict({"train": ds, "test": ds}).save_to_disk(str(tmp_path / "both"))
    _, issues = load_examples([str(tmp_path / "both")], columns=cols)
    assert issues[0].kind == "bad_file" and "both/train" in issues[0].reason

    profile = inspect([str(tmp_path / "arith")])
    assert profile.layout == "instruction"
    assert (profile.mapping.instruction, profile.mapping.output) == ("question", "answer")


def test_init_reads_json_answers_as_fields_and_closed_sets(tmp_path: Path) -> None:
    rows: list[dict[str, Any]] = []
    for i in range(60):
        queue = ("billing", "access", "payroll")[i % 3]
        answer = {"queue": queue, "customer": f"customer {i}", "amount": f"{10 + i} EUR"}
        rows.append({"request": f"please refund customer {i} {10 + i} EUR now", "json": json.dumps(answer)})
    p = write_jsonl(tmp_path / "extract.jsonl", rows)
    profile = inspect([str(p)])
    assert profile.layout == "instruction" and profile.answers == "json"
    assert profile.mapping.instruction == "request" and profile.mapping.output == "json"
    assert profile.json_fields == ["queue", "customer", "amount"] and profile.closed_fields == ["queue"]
