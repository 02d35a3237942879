"""Answers decoded inside their closed set: the rule that finds the set, and generation that stays in it
(labels through a prefix tree, JSON through lm-format-enforcer) on the tiny random model, whose free
output is noise."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tunesmith.data.answers import AnswerSpace, infer_answer_space, is_valid, json_schema
from tunesmith.data.tokenize import encode_prompt, stop_token_ids
from tunesmith.eval.constrain import Decoder, LabelTrie, answer_ids
from tunesmith.eval.generate import PromptTuned, generate
from tunesmith.models import load_model

LABELS = ["billing", "access_reset", "payroll", "mobile_app_crash"]


def _prompts(tok: Any, n: int) -> list[list[int]]:
    return [
        encode_prompt(tok, [{"role": "user", "content": f"ticket {i}: my thing is broken"}]) for i in range(n)
    ]


def test_label_answers_are_a_closed_set_and_long_or_unique_ones_are_not() -> None:
    labels = infer_answer_space([LABELS[i % 4] for i in range(40)])
    assert labels.kind == "labels" and labels.labels == tuple(sorted(LABELS))
    # Every answer unique: text, however short.
    assert infer_answer_space([f"answer {i}" for i in range(40)]).kind == "free"
    # Repeated, but sentences: text.
    long = [f"please reset the password of account {i % 4} now" for i in range(40)]
    assert infer_answer_space(long).kind == "free"


def test_json_answers_give_a_schema_with_enums_for_closed_set_fields_only() -> None:
    rows = [
        {
            "queue": ["billing", "payroll"][i % 2],
            "priority": ["low", "high", "urgent"][i % 3],
            "summary": f"s {i}",
        }
        for i in range(30)
    ]
    space = infer_answer_space([json.dumps(r) for r in rows])
    assert space.kind == "json"
    props = space.schema["properties"]
    assert props["queue"]["enum"] == ["billing", "payroll"] and props["priority"]["enum"] == [
        "high",
        "low",
        "urgent",
    ]
    # 30 values seen once each: copied text, not a set; at most 1.25x the longest, so it ends in budget.
    assert props["summary"] == {"type": "string", "maxLength": 5}
    assert space.schema["required"] == ["queue", "priority", "summary"]
    assert json_schema([{"n": 1}, {"n": 2.5}]) == {
        "type": "object",
        "properties": {"n": {"type": "number"}},
        "required": ["n"],
        "additionalProperties": False,
    }
    assert json_schema([{"n": 1}, {"n": "x"}]) is None  # mixed types: no schema, free text
    assert is_valid(space, json.dumps(rows[0])) and not is_valid(space, '{"queue": "sales"}')
    assert AnswerSpace.from_dict(space.as_dict()) == space


def test_label_trie_walks_token_prefixes() -> None:
    trie = LabelTrie([[1, 2, 9], [1, 3, 9], [4, 9]])
    assert sorted(trie.allowed([])) == [1, 4] and sorted(trie.allowed([1])) == [2, 3]
    assert trie.allowed([1, 2, 9]) == [] and trie.allowed([7]) == []


def test_label_tokens_are_what_training_puts_under_the_loss(tokenizer: Any) -> None:
    from tunesmith.data.tokenize import IGNORE, encode_chat

    stops = stop_token_ids(tokenizer)
    msgs = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "mobile_app_crash"}]
    enc = encode_chat(tokenizer, msgs, max_length=256, stop_ids=stops)
    trained = [t for t, lab in zip(enc.input_ids, enc.labels, strict=True) if lab != IGNORE]
    assert answer_ids(tokenizer, "mobile_app_crash", stops) == trained


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> Any:
    return load_model(str(tiny_model_dir))


def test_random_model_answers_only_labels_when_constrained(tiny: Any, tokenizer: Any) -> None:
    stops = stop_token_ids(tokenizer)
    space = infer_answer_space([LABELS[i % 4] for i in range(40)])
    prompts = _prompts(tokenizer, 12)
    free = generate(tiny, tokenizer, prompts, 8, 4, stops)
    assert sum(g.text in LABELS for g in free) == 0  # a random 2-layer model emits noise
    constrained = generate(tiny, tokenizer, prompts, 8, 4, stops, decoder=Decoder(space, tokenizer, stops))
    assert all(g.text in LABELS for g in constrained)
    # Batching does not mix rows up: one prompt alone decodes the same label as in its batch.
    alone = generate(tiny, tokenizer, prompts[5:6], 8, 1, stops, decoder=Decoder(space, tokenizer, stops))
    assert alone[0].text == constrained[5].text


def test_random_model_writes_schema_valid_json_when_constrained(tiny: Any, tokenizer: Any) -> None:
    stops = stop_token_ids(tokenizer)
    rows = [{"queue": LABELS[i % 4], "priority": ["low", "high"][i % 2]} for i in range(24)]
    space = infer_answer_space([json.dumps(r) for r in rows])
    prompts = _prompts(tokenizer, 6)
    out = generate(tiny, tokenizer, prompts, 96, 3, stops, decoder=Decoder(space, tokenizer, stops))
    for g in out:
        obj = json.loads(g.text)
        assert obj["queue"] in LABELS and obj["priority"] in ("low", "high"), g.text
        assert is_valid(space, g.text)


def test_prompt_tuned_generation_is_constrained_from_its_first_token(
    tiny_model_dir: Path, tokenizer: Any
) -> None:
    from tunesmith.config import MethodConfig
    from tunesmith.train.methods import apply_method

    stops = stop_token_ids(tokenizer)
    model = apply_method(load_model(str(tiny_model_dir)), MethodConfig(name="prompt"), tokenizer)
    space = infer_answer_space([LABELS[i % 4] for i in range(40)])
    out = generate(
        PromptTuned(model),
        tokenizer,
        _prompts(tokenizer, 4),
        8,
        2,
        stops,
        decoder=Decoder(space, tokenizer, stops),
    )
    assert all(g.text in LABELS for g in out)


@pytest.mark.parametrize("max_states", [200_000, 3])
def test_a_json_space_shared_by_answers_allows_what_a_fresh_enforcer_allows(
    tokenizer: Any, max_states: int
) -> None:
    """Serve and eval share one enforcer per schema (its parser states are cached by generated prefix);
    each answer must still see exactly what an enforcer of its own allows. With a cache of 3 states the
    enforcer starts over mid-answer on nearly every token, and the row's prefix must be replayed."""
    from lmformatenforcer import JsonSchemaParser, TokenEnforcer

    from tunesmith.eval.constrain import JsonSpace, _token_table

    stops = stop_token_ids(tokenizer)
    rows = [{"queue": LABELS[i % 4], "priority": ["low", "high"][i % 2]} for i in range(24)]
    space = infer_answer_space([json.dumps(r) for r in rows])
    table = _token_table(tokenizer, tuple(stops))
    shared = JsonSpace(table, space.schema, max_states=max_states)
    answers = [answer_ids(tokenizer, json.dumps(r), stops)[:-1] for r in rows[:4]]
    # interleaved, as rows of one batch step in turn
    fresh = [TokenEnforcer(table, JsonSchemaParser(space.schema)) for _ in answers]
    for k in range(max(len(a) for a in answers) + 1):
        for ans, own in zip(answers, fresh, strict=True):
            if k <= len(ans):
                expected = sorted(own.get_allowed_tokens(ans[:k]).allowed_tokens)
                assert sorted(shared.allowed(ans[:k]).tolist()) == expected, (k, tokenizer.decode(ans[:k]))
    if max_states == 3:
        assert len(shared.enforcer.prefix_states) <= 3 + max(len(a) for a in answers) + 1
