from __future__ import annotations

from typing import Any

import pytest

from tunesmith.data.formats import Message
from tunesmith.data.tokenize import IGNORE, TooLongError, encode_chat, encode_prompt, render, segments

CHAT: list[Message] = [
    {"role": "system", "content": "You route tickets."},
    {"role": "user", "content": "My refund never arrived."},
    {"role": "assistant", "content": '{"queue": "billing-refunds"}'},
]


def _loss_text(tok: Any, enc: Any) -> list[str]:
    """The runs of consecutive loss tokens, decoded (special tokens kept)."""
    runs: list[list[int]] = []
    prev = False
    for tid, lab in zip(enc.input_ids, enc.labels, strict=True):
        on = lab != IGNORE
        if on:
            assert lab == tid
            if not prev:
                runs.append([])
            runs[-1].append(tid)
        prev = on
    return [tok.decode(r, skip_special_tokens=False) for r in runs]


def test_loss_mask_is_exactly_assistant_content_plus_eos(tokenizer: Any) -> None:
    enc = encode_chat(tokenizer, CHAT, max_length=256)
    assert _loss_text(tokenizer, enc) == ['{"queue": "billing-refunds"}' + tokenizer.eos_token]
    # The last token under the loss is the end-of-turn token the model stops on at inference.
    last = max(i for i, lab in enumerate(enc.labels) if lab != IGNORE)
    assert enc.input_ids[last] == tokenizer.eos_token_id
    # Exact count: content tokens + 1 EOS.
    content = tokenizer('{"queue": "billing-refunds"}', add_special_tokens=False)["input_ids"]
    assert enc.n_loss == len(content) + 1


def test_multi_turn_and_weight_zero(tokenizer: Any) -> None:
    msgs: list[Message] = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello, how can I help?", "weight": 0.0},
        {"role": "user", "content": "Reset my 2FA"},
        {"role": "assistant", "content": "Queue: access-sso"},
    ]
    enc = encode_chat(tokenizer, msgs, max_length=256)
    assert _loss_text(tokenizer, enc) == ["Queue: access-sso" + tokenizer.eos_token]
    msgs[1].pop("weight")
    enc = encode_chat(tokenizer, msgs, max_length=256)
    assert _loss_text(tokenizer, enc) == [
        "Hello, how can I help?" + tokenizer.eos_token,
        "Queue: access-sso" + tokenizer.eos_token,
    ]


def test_inference_prompt_is_prefix_of_training_render(tokenizer: Any) -> None:
    enc = encode_chat(tokenizer, CHAT, max_length=256)
    prompt = encode_prompt(tokenizer, CHAT)
    assert enc.input_ids[: len(prompt)] == prompt
    # Everything after the prompt is the answer (and template filler); nothing in the prompt is trained.
    assert all(lab == IGNORE for lab in enc.labels[: len(prompt)])
    assert enc.labels[len(prompt)] != IGNORE
    # And the prompt is what the chat template renders with add_generation_prompt=True.
    text = render(tokenizer, CHAT[:-1], add_generation_prompt=True)
    assert tokenizer.decode(prompt, skip_special_tokens=False) == text


def test_segments_reassemble_the_template_render(tokenizer: Any) -> None:
    full = render(tokenizer, CHAT, add_generation_prompt=False)
    assert "".join(t for t, _ in segments(tokenizer, CHAT)) == full


def test_over_length_is_an_error_not_a_truncation(tokenizer: Any) -> None:
    long: list[Message] = [{"role": "user", "content": "word " * 300}, {"role": "assistant", "content": "ok"}]
    with pytest.raises(TooLongError, match="over train.max_length=64"):
        encode_chat(tokenizer, long, max_length=64)
