"""Batched greedy generation: left padding, KV cache, prompts sorted by length to waste little padding."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tunesmith.eval.constrain import Decoder


class PromptTuned:
    """Generation from a prompt-tuned PeftModel at the positions it was trained with.

    Training sees `[virtual tokens][prompt][answer]` (right padding), so the prompt starts at position
    num_virtual_tokens. peft's generate() prepends the virtual tokens to the *left-padded* batch,
    `[virtual][pad...][prompt]`, and drops position ids (warning "Position ids are not supported"), so a
    padded prompt starts further right by its padding: in a batch, every prompt but the longest is decoded at
    positions it was never trained at. Here the virtual-token embeddings are prepended to the embedded batch
    ourselves and transformers derives position ids from the extended attention mask (its cumulative sum),
    which skips the padding: every prompt starts at num_virtual_tokens, exactly as in training.
    """

    def __init__(self, peft_model: Any) -> None:
        self.model = peft_model

    @property
    def training(self) -> bool:
        return bool(self.model.training)

    @property
    def device(self) -> Any:
        return self.model.device

    def eval(self) -> PromptTuned:
        self.model.eval()
        return self

    def train(self, mode: bool = True) -> PromptTuned:
        self.model.train(mode)
        return self

    def generate(self, input_ids: Any, attention_mask: Any, generation_config: Any, **kwargs: Any) -> Any:
        import torch

        rows = input_ids.shape[0]
        embeds = self.model.get_input_embeddings()(input_ids)
        virtual = self.model.get_prompt(batch_size=rows).to(embeds.dtype)
        mask = torch.cat([attention_mask.new_ones(rows, virtual.shape[1]), attention_mask], dim=1)
        new = self.model.get_base_model().generate(
            inputs_embeds=torch.cat([virtual, embeds], dim=1),
            attention_mask=mask,
            generation_config=generation_config,
            **kwargs,
        )
        # From embeddings alone, generate() returns only the new tokens; callers expect prompt + new.
        return torch.cat([input_ids, new], dim=1)


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
    decoder: Decoder | None = None,
) -> list[Generation]:
    """Greedy answers to `prompts`, `batch_size` at a time; `decoder` keeps them inside an answer space
    (labels, a JSON schema: tunesmith.eval.constrain)."""
    import torch
    from transformers import GenerationConfig, LogitsProcessorList

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
            ids, mask = ids.to(model.device), mask.to(model.device)
            # The constraint sees the generated tokens only: from embeddings (PromptTuned) generate() has no
            # prompt ids at all.
            proc = decoder.processor(0 if isinstance(model, PromptTuned) else width) if decoder else None
            extra = {"logits_processor": LogitsProcessorList([proc])} if proc is not None else {}
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=gen_cfg, **extra)
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
