"""The fine-tuning methods and what each one is: the one table the config, the planner, the trainers, the
exporter and tune read, so adding or changing a method is one row here.

Bottom layer: imports nothing from the package.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal, get_args

MethodName = Literal["full", "lora", "dora", "qlora", "prefix", "prompt", "ia3"]


@dataclass(frozen=True)
class MethodTraits:
    peft: bool  # trains a peft adapter (saved as adapter/); else every weight (saved as model/)
    low_rank: bool  # LoRA family: reads method.r, alpha, dropout
    virtual_tokens: bool  # prefix/prompt: learned tokens change the input, not the weights
    # Folds into the base weights for export and fast eval. qlora is not: merging into NF4 weights
    # re-quantizes them, so the merged model is no longer the one that was trained.
    mergeable: bool
    # Trains under FSDP (train.sharding: fsdp); prefix/prompt change the forward and qlora the weights'
    # storage (a 4-bit base) in ways FSDP does not shard.
    shardable: bool
    encoder: bool  # trains a BERT-family encoder (classify)
    quantized_base: bool  # the base is loaded in 4 bits (CUDA + bitsandbytes)


_T, _F = True, False
METHOD_TRAITS: dict[str, MethodTraits] = {
    #                      peft low_rank virtual mergeable shardable encoder quantized
    "full": MethodTraits(_F, _F, _F, _F, _T, _T, _F),
    "lora": MethodTraits(_T, _T, _F, _T, _T, _T, _F),
    "dora": MethodTraits(_T, _T, _F, _T, _T, _T, _F),
    "qlora": MethodTraits(_T, _T, _F, _F, _F, _F, _T),
    "prefix": MethodTraits(_T, _F, _T, _F, _F, _F, _F),
    "prompt": MethodTraits(_T, _F, _T, _F, _F, _F, _F),
    "ia3": MethodTraits(_T, _F, _F, _T, _T, _T, _F),
}
METHODS: tuple[str, ...] = get_args(MethodName)
assert set(METHODS) == set(METHOD_TRAITS), "MethodName and METHOD_TRAITS must list the same methods"
_TRAIT_NAMES = {f.name for f in fields(MethodTraits)}


def methods_with(trait: str) -> tuple[str, ...]:
    """The methods that have `trait` (a MethodTraits field), in METHODS order."""
    if trait not in _TRAIT_NAMES:
        raise KeyError(f"no method trait {trait!r}; known: {', '.join(sorted(_TRAIT_NAMES))}")
    return tuple(m for m in METHODS if getattr(METHOD_TRAITS[m], trait))


def traits(method: str) -> MethodTraits:
    return METHOD_TRAITS[method]


PEFT_METHODS = methods_with("peft")
LOW_RANK_METHODS = methods_with("low_rank")
VIRTUAL_TOKEN_METHODS = methods_with("virtual_tokens")
MERGEABLE_METHODS = methods_with("mergeable")
SHARDABLE_METHODS = methods_with("shardable")
ENCODER_METHODS = methods_with("encoder")
