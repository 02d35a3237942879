"""Padding-free packing: the same loss and gradients as padded batches, and no attention across examples."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import torch

from tunesmith.data.tokenize import IGNORE, Encoded
from tunesmith.train.batching import collate, collate_packed, loss_tokens, token_loss_sum


def _model(tiny_model_dir: Path, attention: str = "sdpa") -> Any:
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    m.set_attn_implementation(attention)  # as train.attention sets it
    for p in m.parameters():
        p.requires_grad_(True)
    return m


def _examples(n: int, seed: int, vocab: int) -> list[Encoded]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        length = 5 + 7 * i  # variable lengths
        ids = torch.randint(10, vocab, (length,), generator=g).tolist()
        prompt = length // 2 if i % 2 else 0  # SFT-like (prompt not trained) and pretrain-like rows
        out.append(Encoded(ids, [IGNORE] * prompt + ids[prompt:]))
    return out


@pytest.mark.parametrize(("fast", "attention"), [(True, "sdpa"), (False, "sdpa"), (True, "eager")])
def test_packed_loss_and_gradients_equal_padded(tiny_model_dir: Path, fast: bool, attention: str) -> None:
    model = _model(tiny_model_dir, attention)
    examples = _examples(6, seed=1, vocab=model.config.vocab_size)
    n = loss_tokens(examples)

    def run(batch: dict[str, torch.Tensor]) -> tuple[float, dict[str, torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        loss = token_loss_sum(model, batch, fast=fast) / n
        loss.backward()
        return float(loss.detach()), {
            k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None
        }

    padded_loss, padded_grads = run(collate(examples, pad_id=0))
    packed = collate_packed(examples, pad_id=0)
    assert packed["input_ids"].shape == (1, sum(len(e.input_ids) for e in examples))  # no padding at all
    packed_loss, packed_grads = run(packed)
    assert packed_loss == pytest.approx(padded_loss, abs=1e-5)
    assert padded_grads.keys() == packed_grads.keys()
    for k, g in padded_grads.items():
        assert torch.allclose(packed_grads[k], g, atol=1e-5), k


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_a_token_planted_in_one_example_changes_no_other_example(
    tiny_model_dir: Path, attention: str
) -> None:
    model = _model(tiny_model_dir, attention).eval()
    examples = _examples(3, seed=2, vocab=model.config.vocab_size)
    batch = collate_packed(examples, pad_id=0)
    planted = {k: v.clone() for k, v in batch.items()}
    start_b = len(examples[0].input_ids)
    planted["input_ids"][0, 2] = (
        planted["input_ids"][0, 2] + 7
    ) % model.config.vocab_size  # inside example A
    with torch.no_grad():
        before = model(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
        ).logits
        after = model(
            input_ids=planted["input_ids"], position_ids=planted["position_ids"], use_cache=False
        ).logits
    # Example A's later positions see the change; examples B and C do not, to the last bit.
    assert not torch.allclose(before[0, 2:start_b], after[0, 2:start_b])
    assert torch.equal(before[0, start_b:], after[0, start_b:])


@pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("flash_attn") is None,
    reason="flash-attention needs a CUDA GPU and flash-attn",
)
def test_flash_attention_varlen_packed_equals_padded(tiny_model_dir: Path) -> None:
    """train.attention: flash_attention_2 on packed rows runs variable-length attention (no mask): the loss and
    gradients match the padded batches' (bf16, so within bf16 rounding), and a planted token stays in its example."""
    model = _model(tiny_model_dir, "flash_attention_2").cuda()
    examples = _examples(6, seed=1, vocab=model.config.vocab_size)
    n = loss_tokens(examples)

    def run(batch: dict[str, torch.Tensor]) -> tuple[float, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = token_loss_sum(model, {k: v.cuda() for k, v in batch.items()}) / n
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        return float(loss.detach()), grads

    padded_loss, padded_grads = run(collate(examples, pad_id=0))
    packed = collate_packed(examples, pad_id=0)
    packed_loss, packed_grads = run(packed)
    assert packed_loss == pytest.approx(padded_loss, rel=1e-2)
    assert float(torch.nn.functional.cosine_similarity(packed_grads, padded_grads, dim=0)) > 0.999

    start_b = len(examples[0].input_ids)
    planted = packed["input_ids"].clone()
    planted[0, 2] = (planted[0, 2] + 7) % model.config.vocab_size
    pos = packed["position_ids"].cuda()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        before = model(input_ids=packed["input_ids"].cuda(), position_ids=pos, use_cache=False).logits
        after = model(input_ids=planted.cuda(), position_ids=pos, use_cache=False).logits
    assert torch.equal(before[0, start_b:], after[0, start_b:])
