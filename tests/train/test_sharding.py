"""train.sharding pieces that need no second process: lockstep tail micro-batches, unsupported configs,
the decoder layers FSDP shards one by one, and checkpoint weights by peft's names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from tunesmith.config import ConfigError, MethodConfig, load_config
from tunesmith.data.pipeline import prepare
from tunesmith.models import load_model
from tunesmith.train.batching import accumulate_step
from tunesmith.train.checkpoint import TrainState, latest_checkpoint, save_checkpoint
from tunesmith.train.methods import apply_method
from tunesmith.train.sharding import decoder_layers, load_checkpoint_weights


def test_lockstep_runs_a_zero_weighted_pass_for_an_empty_share(toy_config: Path, tokenizer: Any) -> None:
    cfg = load_config(toy_config)
    data = prepare(cfg, tokenizer)
    ex = data.train.encoded
    # Process 1 of 2: its share of the one-example tail micro-batch is empty.
    chunks = [ex[0:4], ex[4:5]]
    model = load_model(cfg.model).float()
    calls: list[int] = []
    model.model.register_forward_hook(lambda *_: calls.append(1))

    def run(lockstep: bool) -> tuple[Any, dict[str, torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        calls.clear()
        stats = accumulate_step(
            model,
            chunks,
            tokenizer.pad_token_id,
            lambda loss: loss.backward(),
            shard=(1, 2),
            lockstep=lockstep,
        )
        return stats, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    skipped, grads = run(lockstep=False)
    assert len(calls) == 1
    stepped, grads_lockstep = run(lockstep=True)
    assert len(calls) == 2  # a forward (and backward) for every micro-batch
    assert stepped == skipped  # the zero-weighted pass counts no loss, tokens or units
    assert grads.keys() == grads_lockstep.keys() and grads
    for name, g in grads.items():
        assert torch.equal(g, grads_lockstep[name]), name


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"method": {"name": "prefix"}}, "method.name: prefix"),
        ({"method": {"name": "prompt"}}, "method.name: prompt"),
        ({"method": {"name": "qlora"}}, "method.name: qlora"),
        ({"train": {"objective": "dpo"}}, "train.objective: dpo"),
        ({"train": {"objective": "classify"}}, "train.objective: classify"),
        ({"train": {"compile": True}}, "train.compile"),
        ({"train": {"kernels": "liger"}}, "train.kernels: liger"),
    ],
)
def test_unsupported_sharded_configs_name_the_key_and_the_fix(
    toy_config: Path, change: dict[str, Any], key: str
) -> None:
    """Refused by config validation (exit 2), before any weights load."""
    raw = yaml.safe_load(toy_config.read_text())
    for section, values in change.items():
        raw[section] = values if section == "method" else {**raw[section], **values}
    raw["train"]["sharding"] = "fsdp"
    toy_config.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="train.sharding: fsdp") as err:
        load_config(toy_config)
    assert key in str(err.value) and "train.sharding: none" in str(err.value)
    # Not sharded: nothing to refuse.
    raw["train"]["sharding"] = "none"
    toy_config.write_text(yaml.safe_dump(raw))
    load_config(toy_config)


def test_sharding_defaults_to_none_and_rejects_unknown_values(toy_config: Path) -> None:
    assert load_config(toy_config).train.sharding == "none"
    raw = yaml.safe_load(toy_config.read_text())
    raw["train"]["sharding"] = "zero3"
    toy_config.write_text(yaml.safe_dump(raw))
    with pytest.raises(Exception, match="sharding"):
        load_config(toy_config)


def test_decoder_layers_are_found_under_peft(tiny_model_dir: Path) -> None:
    model = load_model(str(tiny_model_dir))
    assert [type(m).__name__ for m in decoder_layers(model)] == ["LlamaDecoderLayer"] * 2
    peft = apply_method(model, MethodConfig(name="lora", r=4, alpha=8))
    assert len(decoder_layers(peft)) == 2


def test_checkpoint_weights_load_by_peft_file_names(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Early stopping's best weights into a sharded model: peft's file names map back to the model's."""
    torch.manual_seed(0)
    model = apply_method(load_model(str(tiny_model_dir)), MethodConfig(name="lora", r=4, alpha=8))
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    with torch.no_grad():
        for p in trainable.values():
            p.normal_()
    optimizer = torch.optim.AdamW(list(trainable.values()))
    save_checkpoint(tmp_path, model, optimizer, TrainState(step=3))
    saved = {n: p.detach().clone() for n, p in trainable.items()}
    with torch.no_grad():
        for p in trainable.values():
            p.zero_()
    ckpt = latest_checkpoint(tmp_path)
    assert ckpt is not None
    load_checkpoint_weights(ckpt, model)
    assert all(torch.equal(saved[n], p) for n, p in trainable.items())
