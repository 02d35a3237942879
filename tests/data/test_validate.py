from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunesmith.data.formats import RowError, row_to_messages
from tunesmith.data.issues import DataError
from tunesmith.data.validate import load_examples


def test_broken_line_7_is_reported_with_file_and_line(tmp_path: Path) -> None:
    lines = [json.dumps({"instruction": f"q{i}", "output": f"a{i}"}) for i in range(10)]
    lines[6] = '{"instruction": "q6", "output": "a6"'  # line 7: truncated object
    path = tmp_path / "support.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    examples, issues = load_examples([str(path)])
    assert len(examples) == 9
    assert len(issues) == 1
    assert str(issues[0]).startswith(
        "support.jsonl:7: is not valid JSON: Expecting ',' delimiter at column 3"
    )
    err = DataError(issues)
    assert "support.jsonl:7" in str(err) and "bad_json (1)" in str(err)


@pytest.mark.parametrize(
    ("row", "field", "kind"),
    [
        ({"messages": [{"role": "bot", "content": "x"}]}, "messages[0].role", "bad_role"),
        ({"messages": [{"role": "user", "content": "x"}]}, "messages", "missing_assistant"),
        (
            {"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "y"}]},
            "messages[0].content",
            "empty_content",
        ),
        (
            {"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "y"}]},
            "messages[0].content",
            "non_string_content",
        ),
        ({"instruction": "x", "output": "y", "outptu": "z"}, "outptu", "unknown_key"),
        ({"instruction": "x"}, "output", "missing_field"),
        ({"text": "x"}, "", "unknown_format"),
        ([1, 2], "", "not_an_object"),
    ],
)
def test_row_errors_name_the_field(row: object, field: str, kind: str) -> None:
    with pytest.raises(RowError) as e:
        row_to_messages(row, "auto")
    assert e.value.field == field
    assert e.value.kind == kind


def test_instruction_with_input_and_system_prompt() -> None:
    msgs = row_to_messages(
        {"instruction": "Classify", "input": "text", "output": "pos"}, "auto", system_prompt="Be brief."
    )
    assert msgs == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Classify\n\ntext"},
        {"role": "assistant", "content": "pos"},
    ]


def test_bad_utf8_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"instruction": "a", "output": "b"}\n{"instruction": "\xff", "output": "b"}\n')
    _, issues = load_examples([str(path)])
    assert [(i.line, i.kind) for i in issues] == [(2, "bad_utf8")]
