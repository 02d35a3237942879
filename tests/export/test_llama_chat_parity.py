"""The GGUF's chat path through llama.cpp's own server (`llama-server --jinja`): a faithful file passes, and a
file with another chat template, or one that does not record the end-of-turn token, is caught.

SmolLM2-135M-Instruct itself plays the trained model (its answers end with <|im_end|> within the limit, which
a random test model's never do). Needs a llama-server binary (`make llama-server`; CI builds it): skipped
without one, except in CI, where a skip would hide the check.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tunesmith.data.tokenize import encode_prompt, stop_token_ids
from tunesmith.export.gguf import stop_ids_in_gguf, write_gguf
from tunesmith.export.llamacpp import Conversation, chat_parity, find_llama_server
from tunesmith.models import load_model, load_tokenizer

QUESTIONS = [
    "What is the capital of France? Answer in one word.",
    "Say hello.",
    "Is water wet? Answer yes or no.",
    "Name one primary color.",
]
MAX_TOKENS = 40


@pytest.fixture(scope="module")
def server() -> Path:
    binary = find_llama_server()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("no llama-server in CI: .ci/run builds it with `make llama-server`")
        pytest.skip("no llama-server binary (`make llama-server` builds one)")
    return binary


@pytest.fixture(scope="module")
def model(smollm2_dir: Path) -> Any:
    return load_model(str(smollm2_dir)).eval()


def convs(tok: Any) -> list[Conversation]:
    out = []
    for q in QUESTIONS:
        messages = [{"role": "user", "content": q}]
        out.append(Conversation(messages, encode_prompt(tok, messages)))
    return out


def tokenizer_copy(smollm2_dir: Path, dest: Path, **changes: Any) -> Any:
    dest.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(smollm2_dir / name, dest / name)
    cfg = json.loads((dest / "tokenizer_config.json").read_text())
    (dest / "tokenizer_config.json").write_text(json.dumps({**cfg, **changes}))
    return load_tokenizer(str(dest))


def parity(server: Path, model: Any, tok: Any, gguf: Path) -> dict[str, Any]:
    return chat_parity(server, gguf, model, tok, convs(tok), MAX_TOKENS, stop_token_ids(tok))


def test_a_faithful_gguf_answers_chat_requests_as_the_model_does(
    server: Path, model: Any, tokenizer: Any, smollm2_dir: Path, tmp_path: Path
) -> None:
    gguf = write_gguf(model, tokenizer, smollm2_dir, tmp_path / "m.gguf", "f16", "m")
    result = parity(server, model, tokenizer, gguf)
    assert result["passed"], result["problems"]
    n = len(QUESTIONS)
    assert result["template_identical"] == result["tokens_identical"] == n
    # The check has teeth only where the model stops on its own: it does on these questions.
    assert result["reference_stopped"] >= n - 1 and result["ran_on"] == 0
    assert result["answer_agreement"] >= 0.75


def test_another_chat_template_in_the_file_is_caught(
    server: Path, model: Any, tokenizer: Any, smollm2_dir: Path, tmp_path: Path
) -> None:
    # A common export mistake: the base model's generic template instead of the one the run trained with.
    other = tokenizer_copy(smollm2_dir, tmp_path / "tok", chat_template=None)
    other.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    gguf = write_gguf(model, other, tmp_path / "tok", tmp_path / "m.gguf", "f16", "m")
    result = parity(server, model, tokenizer, gguf)
    assert not result["passed"] and result["template_identical"] == 0
    assert "another prompt text than training's chat template" in result["problems"][0]


def renamed_end_of_turn(smollm2_dir: Path, dest: Path, eos: str) -> Any:
    """SmolLM2's tokenizer with its end-of-turn token (id 2) renamed to one llama.cpp does not know by name,
    as a fine-tune's own special token would be: llama.cpp treats `<|im_end|>` as end-of-generation by its
    text alone, so only an unknown name shows whether the file itself records where answers end."""
    dest.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        text = (smollm2_dir / name).read_text().replace("<|im_end|>", "<|turn_end|>")
        (dest / name).write_text(text)
    cfg = json.loads((dest / "tokenizer_config.json").read_text())
    (dest / "tokenizer_config.json").write_text(json.dumps({**cfg, "eos_token": eos}))
    return load_tokenizer(str(dest))


def test_a_file_without_the_end_of_turn_token_is_caught(
    server: Path, model: Any, smollm2_dir: Path, tmp_path: Path
) -> None:
    trained = renamed_end_of_turn(smollm2_dir, tmp_path / "trained", eos="<|turn_end|>")
    assert stop_token_ids(trained) == [2]
    # The exporter records the token training ended answers with: llama.cpp stops where the model stops.
    good = write_gguf(model, trained, tmp_path / "trained", tmp_path / "good.gguf", "f16", "m")
    assert parity(server, model, trained, good)["passed"]

    # The classic mistake: EOS left at the base's <|endoftext|>, so the end of turn is recorded nowhere and
    # llama.cpp writes past the end of every answer.
    wrong = renamed_end_of_turn(smollm2_dir, tmp_path / "wrong", eos="<|endoftext|>")
    bad = write_gguf(model, wrong, tmp_path / "wrong", tmp_path / "bad.gguf", "f16", "m")
    assert 2 not in stop_ids_in_gguf(bad)
    result = parity(server, model, trained, bad)
    assert not result["passed"] and result["template_identical"] == len(QUESTIONS)
    assert result["ran_on"] >= len(QUESTIONS) - 1
    assert any("runs on past the end" in p for p in result["problems"]), result["problems"]
