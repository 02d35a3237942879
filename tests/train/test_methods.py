"""Every fine-tuning method on the tiny model: what it trains, that the loss falls, how it is saved,
and that its loss and generation see the virtual tokens where training put them."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from helpers import make_label_rows
from tunesmith.config import MethodConfig
from tunesmith.data.tokenize import encode_chat, encode_prompt
from tunesmith.eval.generate import PromptTuned
from tunesmith.models import load_model
from tunesmith.train.batching import collate, token_loss_sum
from tunesmith.train.methods import (
    MethodUnavailableError,
    apply_method,
    check_method_available,
    count_parameters,
    describe_parameters,
    save_trained,
)

# Tiny model: hidden 32, kv dim 16 (2 of 4 heads), MLP 64, 2 layers, tied 49,152 x 32 embedding.
TOTAL = 1_591_456
# Expected trainable parameters, from the shapes. lora all-linear, r=16, per layer: q, o 16*(32+32);
# k, v 16*(32+16); gate, up 16*(32+64); down 16*(64+32). dora adds a magnitude per output feature.
# ia3 (peft's Llama default): k, v outputs (16 each) and down_proj's input (64). prefix: a key and a
# value vector (kv dim 16) per layer per virtual token. prompt: one embedding (32) per virtual token.
EXPECTED_TRAINABLE = {
    "full": TOTAL,
    "lora": 2 * 16 * (64 + 48 + 48 + 64 + 96 + 96 + 96),
    "dora": 2 * 16 * (64 + 48 + 48 + 64 + 96 + 96 + 96) + 2 * (32 + 16 + 16 + 32 + 64 + 64 + 32),
    "ia3": 2 * (16 + 16 + 64),
    "prefix": 16 * 2 * 2 * 16,
    "prompt": 16 * 32,
}
# Per method: a learning rate at which 5 steps on one fixed batch move this random model clearly.
LR = {"full": 1e-2, "lora": 1e-2, "dora": 1e-2, "ia3": 1.0, "prefix": 0.3, "prompt": 1e-2}


def _method(name: str, **kw: Any) -> MethodConfig:
    if name in ("prefix", "prompt"):
        kw.setdefault("num_virtual_tokens", 16)
    return MethodConfig(name=name, **kw)  # type: ignore[arg-type]


def _batch(tokenizer: Any, n: int = 4) -> dict[str, torch.Tensor]:
    rows = make_label_rows(n)
    encoded = [
        encode_chat(
            tokenizer,
            [{"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": r["output"]}],
            128,
        )
        for r in rows
    ]
    return collate(encoded, tokenizer.pad_token_id)


@pytest.fixture
def tiny(tiny_model_dir: Path) -> Any:
    torch.manual_seed(0)
    return load_model(str(tiny_model_dir))


def _sharpen(model: Any) -> Any:
    """Large random weights: the fixture's (std 0.02) make logits nearly context-free, so a wrong position
    or a missing virtual token would barely change them. Adapter weights included."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0, 0.3)
    return model


@pytest.mark.parametrize("name", ["full", "lora", "dora", "ia3", "prefix", "prompt"])
def test_method_trains_what_it_should_and_loss_falls(name: str, tiny: Any, tokenizer: Any) -> None:
    before = {k: v.detach().clone() for k, v in tiny.state_dict().items()}
    model = apply_method(tiny, _method(name), tokenizer)
    trainable, total = count_parameters(model)
    assert trainable == EXPECTED_TRAINABLE[name]
    assert total == TOTAL + (trainable if name != "full" else 0)  # adapters add to the frozen base
    assert describe_parameters(name, trainable, total).startswith(f"{name}: {trainable:,} trainable of")

    batch = _batch(tokenizer, n=2)
    n_loss = int((batch["labels"][:, 1:] != -100).sum())
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LR[name])
    losses = []
    for _ in range(5):
        loss = token_loss_sum(model, batch) / n_loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] - 0.02, losses

    base = model.get_base_model() if name != "full" else model
    changed = {k for k, v in base.state_dict().items() if k in before and not torch.equal(v, before[k])}
    if name == "full":
        assert "model.embed_tokens.weight" in changed and "model.layers.0.mlp.down_proj.weight" in changed
    else:
        assert not changed, f"{name} changed frozen base weights: {sorted(changed)[:3]}"


@pytest.mark.parametrize("name", ["prefix", "prompt"])
def test_virtual_token_loss_matches_peft_forward_with_labels(name: str, tiny: Any, tokenizer: Any) -> None:
    """The logits slice of token_loss_sum is right for virtual tokens: it agrees with the loss peft and
    transformers compute themselves (prompt tuning prepends -100 labels for the virtual tokens; prefix
    tuning extends the attention mask over its cached keys)."""
    model = _sharpen(apply_method(tiny, _method(name), tokenizer))
    with torch.no_grad():
        batch = _batch(tokenizer)
        n_loss = int((batch["labels"][:, 1:] != -100).sum())
        ours = token_loss_sum(model, batch) / n_loss
        with warnings.catch_warnings():
            # peft's own forward, the reference: for prefix it still passes `past_key_values`, which
            # transformers 5.24 deprecates (the reason for tunesmith.train.prefix); only this call may warn.
            warnings.simplefilter("ignore", FutureWarning)
            ref = type(model).forward(model, **batch).loss
        with model.disable_adapter():
            plain = model(**batch).loss
    assert float(ours) == pytest.approx(float(ref), rel=1e-5)
    assert abs(float(ours) - float(plain)) > 0.05  # the virtual tokens were in the forward


@pytest.mark.parametrize("name", ["lora", "dora", "ia3"])
def test_fast_loss_path_equals_full_forward(name: str, tiny: Any, tokenizer: Any) -> None:
    model = apply_method(tiny, _method(name), tokenizer)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)  # non-identity adapters (lora_B starts at 0)
        batch = _batch(tokenizer, n=2)
        fast = token_loss_sum(model, batch, fast=True)
        slow = token_loss_sum(model, batch, fast=False)
    assert float(fast) == pytest.approx(float(slow), rel=1e-5)


def _prefill_logits(model: Any, gen: Any, tokenizer: Any, prompts: list[list[int]]) -> torch.Tensor:
    """The last-position logits of the first (prefill) forward of a left-padded batched generate()."""
    from transformers import GenerationConfig

    seen: list[torch.Tensor] = []
    hook = model.get_base_model().register_forward_hook(lambda m, a, out: seen.append(out.logits[:, -1]))
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), tokenizer.pad_token_id)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, width - len(p) :] = torch.tensor(p)
        mask[row, width - len(p) :] = 1
    cfg = GenerationConfig(max_new_tokens=1, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    try:
        with torch.no_grad():
            gen.generate(input_ids=ids, attention_mask=mask, generation_config=cfg)
    finally:
        hook.remove()
    return seen[0]


@pytest.mark.parametrize("name", ["prefix", "prompt"])
def test_batched_left_padded_generation_sees_what_training_saw(name: str, tiny: Any, tokenizer: Any) -> None:
    """Each prompt's next-token logits in a left-padded batch equal the training forward's (PeftModel.forward,
    unpadded) for that prompt alone. For prompt tuning this needs PromptTuned: peft's own generate()
    would shift padded prompts away from the virtual tokens."""
    model = _sharpen(apply_method(tiny, _method(name), tokenizer)).eval()
    texts = ["my refund is broken please help", "password", "the payslip of april is missing again today"]
    prompts = [encode_prompt(tokenizer, [{"role": "user", "content": t}]) for t in texts]
    assert len({len(p) for p in prompts}) == 3  # real padding in the batch
    gen = PromptTuned(model) if name == "prompt" else model
    batched = _prefill_logits(model, gen, tokenizer, prompts)
    with torch.no_grad():
        for row, p in enumerate(prompts):
            ids = torch.tensor([p])
            alone = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1]
            torch.testing.assert_close(batched[row], alone, rtol=1e-4, atol=1e-5)


def test_prefix_step_by_step_decoding_with_the_cache_equals_generate(tiny: Any, tokenizer: Any) -> None:
    """What `serve` does: a first forward without a cache (the virtual keys/values go in), then one token
    at a time with the returned cache, which already holds them. Greedy, it must pick generate()'s tokens."""
    from transformers import GenerationConfig

    model = _sharpen(apply_method(tiny, _method("prefix"), tokenizer)).eval()
    ids = torch.tensor([encode_prompt(tokenizer, [{"role": "user", "content": "my refund is broken"}])])
    cfg = GenerationConfig(max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():
        want = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=cfg)
        want_new = want[0, ids.shape[1] :].tolist()
        out = model(input_ids=ids, use_cache=True)
        got = []
        for _ in want_new:
            got.append(int(out.logits[0, -1].argmax()))
            out = model(input_ids=torch.tensor([[got[-1]]]), cache=out.cache, use_cache=True)
        with model.disable_adapter():
            plain = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=cfg)
    assert want_new and got == want_new
    assert plain[0].tolist() != want[0].tolist()  # the prefix changed what was generated


def test_adapter_disabled_generation_is_the_base_model(tiny_model_dir: Path, tokenizer: Any) -> None:
    from tunesmith.eval.generate import generate

    prompts = [
        encode_prompt(tokenizer, [{"role": "user", "content": t}]) for t in ("my refund", "a long password")
    ]
    stops = [tokenizer.eos_token_id]
    base = generate(load_model(str(tiny_model_dir)), tokenizer, prompts, 4, 2, stops)
    for name in ("prefix", "prompt"):  # they swap forward and generation hooks; LoRA-like ones switch layers
        model = apply_method(load_model(str(tiny_model_dir)), _method(name), tokenizer)
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.normal_(0, 0.5)  # an adapter that would change the output
        with model.disable_adapter():
            assert [g.text for g in generate(model, tokenizer, prompts, 4, 2, stops)] == [
                g.text for g in base
            ], name


def test_saving_full_writes_model_and_peft_writes_adapter(tiny: Any, tokenizer: Any, tmp_path: Path) -> None:
    full = apply_method(tiny, _method("full"), tokenizer)
    out = save_trained(full, tokenizer, tmp_path, _method("full"))
    assert out == tmp_path / "model"
    for f in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json"):
        assert (out / f).is_file(), f
    reloaded = load_model(str(out))
    assert torch.equal(reloaded.model.embed_tokens.weight, full.model.embed_tokens.weight)

    run2 = tmp_path / "run2"
    prompt = apply_method(load_model(str(out)), _method("prompt"), tokenizer)
    out = save_trained(prompt, tokenizer, run2, _method("prompt"))
    assert out == run2 / "adapter"
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= {
        p.name for p in out.iterdir()
    }
    assert not (run2 / "model").exists()


def test_prompt_init_text_starts_from_its_token_embeddings(tiny: Any, tokenizer: Any) -> None:
    text = "Route the ticket."
    model = apply_method(tiny, _method("prompt", num_virtual_tokens=6, prompt_init_text=text), tokenizer)
    ids = tokenizer(text)["input_ids"]
    ids = (ids * 6)[:6]
    expected = tiny.get_input_embeddings().weight[ids]
    torch.testing.assert_close(model.get_prompt(batch_size=1)[0], expected)


def test_qlora_without_gpu_fails_with_the_fix(monkeypatch: pytest.MonkeyPatch, tiny: Any) -> None:
    from tunesmith.train import methods

    method = _method("qlora")
    for name in ("full", "lora", "dora", "prefix", "prompt", "ia3"):
        check_method_available(_method(name))
    # Never a silent full-precision LoRA when the base was not loaded in 4 bits.
    with pytest.raises(MethodUnavailableError, match="4-bit base"):
        apply_method(tiny, method)
    # Each missing piece is named, with the fix.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(methods, "has_bitsandbytes", lambda: False)
    with pytest.raises(MethodUnavailableError) as e:
        check_method_available(method)
    assert str(e.value) == (
        "method.name: qlora needs a CUDA GPU and `pip install bitsandbytes`; use method.name: lora on CPU "
        "(here: no CUDA GPU is visible; bitsandbytes is not installed)"
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(MethodUnavailableError, match=r"\(here: bitsandbytes is not installed\)$"):
        check_method_available(method)
    monkeypatch.setattr(methods, "has_bitsandbytes", lambda: True)
    check_method_available(method)


@pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("bitsandbytes") is None,
    reason="qlora needs a CUDA GPU and bitsandbytes",
)
def test_qlora_on_gpu_trains_a_4bit_base(tiny_model_dir: Path, tokenizer: Any) -> None:
    from tunesmith.eval.generate import generate

    torch.manual_seed(0)
    base = load_model(str(tiny_model_dir), load_in_4bit=True)
    assert base.is_loaded_in_4bit
    model = apply_method(base, _method("qlora"), tokenizer)
    trainable, total = count_parameters(model)
    assert trainable == EXPECTED_TRAINABLE["lora"]
    assert total == TOTAL + trainable  # 4-bit weights counted unpacked
    batch = _batch(tokenizer)
    n_loss = int((batch["labels"][:, 1:] != -100).sum())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(6):
        loss = token_loss_sum(model, batch) / n_loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] - 0.02, losses
    prompts = [encode_prompt(tokenizer, [{"role": "user", "content": "my refund"}])]
    (out,) = generate(model, tokenizer, prompts, 4, 1, [tokenizer.eos_token_id])
    assert out.new_tokens > 0


def test_classify_head_gets_its_own_learning_rate(tiny_model_dir: Path) -> None:
    from tunesmith.config import TrainConfig
    from tunesmith.models import load_classifier
    from tunesmith.train.methods import HEAD_LR_RATIO, param_groups

    model = apply_method(
        load_classifier(str(tiny_model_dir), ["a", "b", "c"], pad_token_id=0), MethodConfig(name="lora")
    )
    head = {id(p) for n, p in model.named_parameters() if p.requires_grad and ".score." in n}
    assert head  # peft's modules_to_save copy of the head is trainable
    default = param_groups(model, TrainConfig(objective="classify", lr=1e-4))
    assert {id(p) for p in default[2]["params"]} == head and default[2]["lr_scale"] == HEAD_LR_RATIO
    assert not head & {id(p) for g in default[:2] for p in g["params"]}
    set_ = param_groups(model, TrainConfig(objective="classify", lr=1e-4, head_lr=3e-3))
    assert set_[2]["lr_scale"] == pytest.approx(30.0)
    # Generation objectives have no head: two groups, every trainable parameter in one of them.
    sft = param_groups(
        apply_method(load_model(str(tiny_model_dir)), MethodConfig(name="lora")), TrainConfig()
    )
    assert len(sft) == 2 and all("lr_scale" not in g for g in sft)
