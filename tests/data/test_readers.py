from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tunesmith.data.validate import load_examples


def test_csv_labels_become_classification_examples(tmp_path: Path) -> None:
    p = tmp_path / "labels.csv"
    p.write_text(
        'text,label\n"Refund, please",billing\nLogin fails,access\n"too,many",cells,here\n', encoding="utf-8"
    )
    exs, issues = load_examples([str(p)])
    assert [(e.messages[1]["content"], e.messages[2]["content"], e.label) for e in exs] == [
        ("Refund, please", "billing", "billing"),
        ("Login fails", "access", "access"),
    ]
    assert [str(i) for i in issues] == ["labels.csv:4: has 3 columns, the header has 2"]


def test_tsv_json_array_parquet_and_text_folder(tmp_path: Path) -> None:
    (tmp_path / "a.tsv").write_text("text\tlabel\nhello\tgreeting\n", encoding="utf-8")
    (tmp_path / "b.json").write_text(json.dumps([{"instruction": "q", "output": "a"}, {"instruction": "q2"}]))
    pq.write_table(
        pa.table({"prompt": ["p"], "chosen": ["good"], "rejected": ["bad"]}), tmp_path / "c.parquet"
    )
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "one.md").write_text("# Policy\nAll refunds within 30 days.", encoding="utf-8")
    (docs / "two.txt").write_text("Chargebacks go to the risk team.", encoding="utf-8")
    exs, issues = load_examples([str(tmp_path / n) for n in ("a.tsv", "b.json", "c.parquet", "docs")])
    assert [e.kind for e in exs] == ["chat", "chat", "preference", "text", "text"]
    assert [e.source for e in exs] == [
        "a.tsv:2",
        "b.json:1",
        "c.parquet:1",
        "docs/one.md:1",
        "docs/two.txt:1",
    ]
    assert exs[2].rejected == "bad" and exs[2].messages[-1]["content"] == "good"
    assert [str(i) for i in issues] == ["b.json:2: output is missing"]


def test_preference_pair_must_differ(tmp_path: Path) -> None:
    p = tmp_path / "pairs.jsonl"
    p.write_text(json.dumps({"prompt": "p", "chosen": "same", "rejected": "same"}) + "\n")
    _, issues = load_examples([str(p)])
    assert [(i.line, i.field, i.kind) for i in issues] == [(1, "rejected", "degenerate")]


def test_data_hash_covers_folders_and_changes_with_content(tmp_path: Path) -> None:
    from tunesmith.registry import files_hash

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("one")
    first = files_hash([str(docs)])
    assert files_hash([str(docs)]) == first
    (docs / "a.txt").write_text("two")
    assert files_hash([str(docs)]) != first
