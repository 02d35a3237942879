"""The optional `facts` key of instruction and chat rows: validated, carried in Example.meta, round-tripped
through prepared rows, never part of the messages."""

from __future__ import annotations

import pytest

from tunesmith.data.formats import RowError, example_from_row, example_to_row, row_to_example


def test_facts_are_carried_and_round_trip() -> None:
    ex = row_to_example(
        {"instruction": "q", "output": "payroll P2", "facts": ["payroll", " P2 "]}, "auto", "f:1"
    )
    assert ex.meta == {"facts": ["payroll", "P2"]}
    assert all("facts" not in m["content"] for m in ex.messages)
    assert example_from_row(example_to_row(ex)) == ex
    chat = {
        "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
        "facts": ["a"],
    }
    assert row_to_example(chat, "auto", "f:2").meta == {"facts": ["a"]}
    assert row_to_example({"instruction": "q", "output": "a"}, "auto", "f:3").meta == {}


@pytest.mark.parametrize(
    ("facts", "field"),
    [("payroll", "facts"), (["ok", ""], "facts[1]"), ([3], "facts[0]")],
)
def test_bad_facts_name_the_field(facts: object, field: str) -> None:
    with pytest.raises(RowError) as e:
        row_to_example({"instruction": "q", "output": "a", "facts": facts}, "auto", "f:1")
    assert e.value.field == field and e.value.kind == "bad_facts"


def test_unknown_keys_are_still_errors() -> None:
    with pytest.raises(RowError, match="unknown key"):
        row_to_example({"instruction": "q", "output": "a", "fact": ["x"]}, "auto", "f:1")
