"""Per-token negative log-likelihood of known text under a model: the reference answers of the test split
(the tokens under the training loss: the answer and its end-of-turn token) and plain text (the forgetting
probe). Perplexity of a set = exp(total NLL / total tokens), so long answers weigh by their length."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

IGNORE = -100


def sequence_nll(
    model: Any, seqs: Sequence[tuple[list[int], list[int]]], batch_size: int = 4
) -> list[tuple[float, int]]:
    """(sum of NLL over the labelled tokens, number of labelled tokens) per (input_ids, labels) pair; labels
    are IGNORE where not scored. Works for peft prompt/prefix models too: their virtual tokens come first, so
    the last len(input_ids) logits belong to the input."""
    import torch

    out: list[tuple[float, int]] = []
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(seqs), batch_size):
            chunk = seqs[start : start + batch_size]
            width = max(len(ids) for ids, _ in chunk)
            ids = torch.zeros((len(chunk), width), dtype=torch.long)
            labels = torch.full((len(chunk), width), IGNORE, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, (x, y) in enumerate(chunk):
                ids[row, : len(x)] = torch.tensor(x)
                labels[row, : len(y)] = torch.tensor(y)
                mask[row, : len(x)] = 1
            device = model.device
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, -width:]
            logits = logits[:, :-1].float()
            target = labels[:, 1:].to(logits.device)
            nll = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]),
                target.reshape(-1),
                ignore_index=IGNORE,
                reduction="none",
            ).view(target.shape)
            counted = target != IGNORE
            for row in range(len(chunk)):
                out.append((float(nll[row][counted[row]].sum()), int(counted[row].sum())))
    model.train(was_training)
    return out


def text_windows(tok: Any, text: str, window: int = 256) -> list[tuple[list[int], list[int]]]:
    """Plain text as (ids, labels) windows of at most `window` tokens, every token scored but the first."""
    ids = list(tok(text, add_special_tokens=False)["input_ids"])
    return [(ids[i : i + window], ids[i : i + window]) for i in range(0, len(ids), window)]


def perplexity(parts: Sequence[tuple[float, int]]) -> float:
    tokens = sum(n for _, n in parts)
    return math.exp(sum(s for s, _ in parts) / tokens) if tokens else float("nan")
