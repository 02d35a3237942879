"""Prefix tuning through transformers' `cache` argument.

peft (0.21.2, the newest release on 2026-12-01) hands prefix tuning's trained keys and values to the base
model as `past_key_values=`; transformers 5.24 renamed that argument `cache` and warns on the old name
(FutureWarning, the old name goes in 5.40). `adapt_peft_model` gives a PeftModel a forward and a generate
that do what peft does for PREFIX_TUNING under the new name: the virtual keys/values as a prefilled cache
and the attention mask extended over them. Every other adapter type keeps peft's own forward.

Remove once a peft release passes `cache` itself (then `tests/train/test_methods.py` still compares this
path with peft's forward and will show when the two can be swapped).
"""

from __future__ import annotations

from types import MethodType
from typing import Any

PREFIX_TUNING = "PREFIX_TUNING"


def _is_prefix(model: Any) -> bool:
    config = getattr(model, "active_peft_config", None)
    return str(getattr(getattr(config, "peft_type", None), "value", "")) == PREFIX_TUNING


def _extended_mask(mask: Any, rows: int, virtual: int, ref: Any) -> Any:
    """Ones over the virtual tokens, then the caller's mask (all ones when there is none)."""
    import torch

    if mask is None:
        mask = torch.ones(ref.shape[:2], dtype=torch.long, device=ref.device)
    return torch.cat([mask.new_ones(rows, virtual), mask], dim=1)


def _forward(self: Any, input_ids: Any = None, attention_mask: Any = None, **kwargs: Any) -> Any:
    """PeftModel.forward for prefix tuning with `cache=`; any other active adapter takes peft's forward.

    A caller that passes a non-empty `cache` (a decode step after the first) already holds the virtual
    keys/values in it, so the call goes to the base model as it is."""
    if not _is_prefix(self):
        return type(self).forward(self, input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    base = self.get_base_model()
    cache = kwargs.pop("cache", None)
    if cache is not None and cache.get_seq_length() > 0:
        return base(input_ids=input_ids, attention_mask=attention_mask, cache=cache, **kwargs)
    virtual = int(self.active_peft_config.num_virtual_tokens)
    ref = input_ids if input_ids is not None else kwargs["inputs_embeds"]
    rows = ref.shape[0]
    if kwargs.get("position_ids") is not None:
        # As peft does: positions continue after the cached virtual tokens.
        kwargs["position_ids"] = kwargs["position_ids"] + virtual
    kwargs.pop("token_type_ids", None)
    return base(
        input_ids=input_ids,
        attention_mask=_extended_mask(attention_mask, rows, virtual, ref),
        cache=self.get_prompt(rows, max_cache_len=ref.shape[1] + virtual),
        **kwargs,
    )


def _generate(self: Any, input_ids: Any = None, attention_mask: Any = None, **kwargs: Any) -> Any:
    """generate() for prefix tuning: the base model decodes from a cache prefilled with the virtual tokens.

    The mask is longer than `input_ids` by the virtual tokens, which tells transformers that the cache holds
    tokens the ids do not repeat; position ids come from the mask's running count, so every left-padded
    prompt starts right after the virtual tokens, as in training. Disabled adapters (peft's
    `disable_adapter()`) decode with the base model alone."""
    if getattr(self, "_adapters_disabled", False):
        return self.get_base_model().generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    if not _is_prefix(self):
        return type(self).generate(self, input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    virtual = int(self.active_peft_config.num_virtual_tokens)
    rows = input_ids.shape[0]
    return self.get_base_model().generate(
        input_ids=input_ids,
        attention_mask=_extended_mask(attention_mask, rows, virtual, input_ids),
        cache=self.get_prompt(rows),
        **kwargs,
    )


def adapt_peft_model(model: Any) -> Any:
    """The same PeftModel, with prefix tuning's forward and generate passing `cache=` (see the module doc).

    Set on the instance, so peft's `disable_adapter()`, which swaps `self.forward` for the base model's and
    back, keeps working; a model that is not a PeftModel is returned unchanged."""
    if callable(getattr(model, "get_prompt", None)) and hasattr(model, "active_peft_config"):
        model.forward = MethodType(_forward, model)
        model.generate = MethodType(_generate, model)
    return model
