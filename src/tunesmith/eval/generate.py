"""Batched greedy generation: left padding, KV cache, prompts sorted by length to waste little padding."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Generation:
    text: str
    new_tokens: int
    seconds: float  # wall time of the batch it ran in, shared by its members
    batch: int  # which batch it ran in


def generate(
    model: Any,
    tok: Any,
    prompts: Sequence[list[int]],
    max_new_tokens: int,
    batch_size: int,
    stop_ids: Sequence[int],
    on_batch: Callable[[int], None] | None = None,
) -> list[Generation]:
    import torch
    from transformers import GenerationConfig

    pad_id = int(tok.pad_token_id if tok.pad_token_id is not None else stop_ids[0])
    # A fresh config: the model's own may carry sampling settings that greedy decoding would warn about.
    gen_cfg = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=list(stop_ids),
        pad_token_id=pad_id,
    )
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
    results: list[Generation | None] = [None] * len(prompts)
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            width = max(len(prompts[i]) for i in idx)
            ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                p = prompts[i]
                ids[row, width - len(p) :] = torch.tensor(p)
                mask[row, width - len(p) :] = 1
            t = time.perf_counter()
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=gen_cfg)
            dt = time.perf_counter() - t
            for row, i in enumerate(idx):
                new = out[row, width:].tolist()
                cut = next((k for k, x in enumerate(new) if x in stop_ids), len(new))
                text = tok.decode(new[:cut], skip_special_tokens=True)
                results[i] = Generation(
                    text=text.strip(), new_tokens=cut, seconds=dt, batch=start // batch_size
                )
            if on_batch:
                on_batch(len(idx))
    model.train(was_training)
    return [r for r in results if r is not None]
