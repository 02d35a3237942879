"""Fine-tuning method -> a model with exactly the intended parameters trainable."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunesmith.config import MethodConfig

if TYPE_CHECKING:
    from torch import nn


def apply_method(model: nn.Module, method: MethodConfig) -> nn.Module:
    from peft import LoraConfig, TaskType, get_peft_model

    if method.name == "lora":
        target = method.target_modules
        cfg = LoraConfig(
            r=method.r,
            lora_alpha=method.alpha,  # type: ignore[arg-type]  # peft annotates int; floats work
            lora_dropout=method.dropout,
            target_modules=target if target == "all-linear" else list(target),
            task_type=TaskType.CAUSAL_LM,
        )
        return get_peft_model(model, cfg)
    raise ValueError(f"unknown method {method.name!r}")


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = trainable = 0
    for p in model.parameters():
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total
