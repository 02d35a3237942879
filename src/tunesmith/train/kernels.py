"""GPU kernels for training, each refused with the fix before any model loads where the machine lacks it.

`train.kernels: liger`: Liger's Triton kernels on CUDA GPUs (RMSNorm, RoPE, SwiGLU, and a fused output
head + cross-entropy that never materialises the logits).

`train.attention`: the attention implementation. `flash_attention_2` (flash-attn on a CUDA GPU) reads the
restarting `position_ids` of packed batches (`train.packing`) and runs variable-length attention over each
example on its own: no block-diagonal mask is built and no compute goes across examples."""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

from tunesmith.method_traits import VIRTUAL_TOKEN_METHODS

if TYPE_CHECKING:
    import torch
    from torch import nn

LIGER_FIX = "set train.kernels: none, or run on a CUDA GPU with `pip install liger-kernel`"
ATTENTION_FIX = "set train.attention: auto or sdpa, or run on a CUDA GPU with `pip install flash-attn`"


def cuda_package_missing(module: str, package: str, why_cuda: str) -> list[str]:
    """What this machine lacks of a CUDA GPU and `package` (importable as `module`); empty: nothing."""
    import torch

    missing = []
    if not torch.cuda.is_available():
        missing.append(f"no CUDA GPU is visible ({why_cuda})")
    if importlib.util.find_spec(module) is None:
        missing.append(f"{package} is not installed")
    return missing


def kernels_missing(kernels: str) -> list[str]:
    """What this machine lacks for `train.kernels` (empty: it can run them)."""
    if kernels != "liger":
        return []
    return cuda_package_missing("liger_kernel", "liger-kernel", "Liger's kernels are Triton, CUDA only")


def attention_missing(attention: str) -> list[str]:
    """What this machine lacks for `train.attention` (empty: it can run it)."""
    if attention != "flash_attention_2":
        return []
    return cuda_package_missing("flash_attn", "flash-attn", "flash-attn is CUDA only")


def choose_attention(requested: str, device_type: str, precision: str, method: str) -> str | None:
    """The attention implementation to set on the model for training; None keeps the one it loaded with
    (transformers' default, SDPA).

    `auto`: flash-attention 2 on a CUDA GPU in bf16 when flash-attn is installed (packed batches then run
    variable-length attention), except for prefix/prompt tuning, whose virtual tokens go through the cache;
    SDPA everywhere else. An explicit `flash_attention_2` in fp32 is an error: flash-attn computes in
    16-bit only.
    """
    if requested == "auto":
        if device_type != "cuda" or precision != "bf16" or method in VIRTUAL_TOKEN_METHODS:
            return None
        from transformers.utils import is_flash_attn_2_available

        return "flash_attention_2" if is_flash_attn_2_available() else None
    if requested == "flash_attention_2" and precision != "bf16":
        from tunesmith.train.precision import PrecisionError

        raise PrecisionError(
            "train.attention: flash_attention_2 computes in bf16 only, and this run's precision is fp32; "
            "set train.precision: auto or bf16, or train.attention: sdpa"
        )
    return requested


def apply_liger_kernels(model: nn.Module) -> None:
    """Swap the model's RMSNorm, RoPE and SwiGLU MLP for Liger's kernels, in place (before peft wraps it).
    The output head and loss are fused separately, in `fused_token_loss_sum`."""
    from liger_kernel.transformers.monkey_patch import (
        MODEL_TYPE_TO_APPLY_LIGER_FN,
        _apply_liger_kernel_to_instance,
    )

    model_type = getattr(getattr(model, "config", None), "model_type", None)

    if model_type not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        raise ValueError(
            f"train.kernels: liger has no kernels for model type {model_type!r} "
            f"(it has: {', '.join(sorted(MODEL_TYPE_TO_APPLY_LIGER_FN))}); set train.kernels: none"
        )
    _apply_liger_kernel_to_instance(
        model=model,
        rope=True,
        rms_norm=True,
        swiglu=True,
        cross_entropy=False,
        fused_linear_cross_entropy=False,
    )


def fused_token_loss_sum(
    hidden: torch.Tensor, head: nn.Module, targets: torch.Tensor, softcap: float | None
) -> torch.Tensor:
    """Summed cross-entropy of `head(hidden)` against `targets`, computed chunk by chunk by Liger's fused
    kernel: the (positions x vocab) logits are never held in memory, and the gradient flows to `hidden`
    and to the head's weight if it trains."""
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    bias: Any = getattr(head, "bias", None)
    return liger_fused_linear_cross_entropy(
        hidden, head.weight, targets, bias=bias, reduction="sum", softcap=softcap
    )
