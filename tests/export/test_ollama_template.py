"""The Ollama TEMPLATE derived from a chat template renders what the chat template renders: checked in
Python and through Go's text/template (the engine Ollama runs), on ChatML (SmolLM2, with its default system
prompt), a Llama 3 style template, and refused for a template that merges the system prompt into the
first user turn."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from tunesmith.export.ollama import (
    TemplateNotPortable,
    check_template,
    go_available,
    modelfile,
    read_wrapping,
)

LLAMA3_STYLE = (
    "{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n'"
    " + m['content'] + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
SYSTEM_IN_FIRST_USER = (
    "{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' }}"
    "{% if loop.index0 == 1 and messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\\n\\n' }}"
    "{% endif %}{{ m['content'] + ' [/INST]' }}{% elif m['role'] == 'assistant' %}{{ m['content'] + '</s>' }}"
    "{% endif %}{% endfor %}"
)

CONVERSATIONS = [
    [{"role": "system", "content": "Route the ticket. Reply with JSON."}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "No system prompt here; {{ braces }} and\n\nblank lines stay."}],
    [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": '{"queue": "payroll"}'},
        {"role": "user", "content": "second"},
    ],
]


@pytest.fixture
def with_template(tokenizer: Any) -> Iterator[Any]:
    original = tokenizer.chat_template

    def use(template: str | None) -> Any:
        tokenizer.chat_template = template or original
        return tokenizer

    yield use
    tokenizer.chat_template = original


def _expect_go() -> bool:
    if go_available():
        return True
    assert not os.environ.get("CI"), "CI installs golang-go (.ci/run)"
    return False


@pytest.mark.parametrize("template", [None, LLAMA3_STYLE], ids=["chatml-smollm2", "llama3-style"])
def test_the_template_renders_like_training(with_template: Any, template: str | None) -> None:
    tok = with_template(template)
    wrapping = read_wrapping(tok)
    report = check_template(tok, wrapping, CONVERSATIONS)
    assert report["python_identical"] == len(CONVERSATIONS)
    if _expect_go():
        assert report["go_identical"] == len(CONVERSATIONS), report.get("first_go_mismatch")
    if template is None:  # SmolLM2 adds its own system prompt when the conversation has none
        assert "You are a helpful AI assistant named SmolLM" in wrapping.no_system


def test_a_template_that_moves_the_system_prompt_is_refused(with_template: Any) -> None:
    with pytest.raises(TemplateNotPortable):
        read_wrapping(with_template(SYSTEM_IN_FIRST_USER))


def test_modelfile_quotes_and_refuses_what_it_cannot_quote() -> None:
    text = modelfile("run-q8_0.gguf", "T", ["<|im_end|>", 'say "stop"'], "Be brief.")
    assert text.splitlines() == [
        "FROM ./run-q8_0.gguf",
        'TEMPLATE """T"""',
        'PARAMETER stop "<|im_end|>"',
        'PARAMETER stop "say \\"stop\\""',
        'SYSTEM """Be brief."""',
    ]
    with pytest.raises(TemplateNotPortable, match='"""'):
        modelfile("m.gguf", "T", [], 'a """ b')
