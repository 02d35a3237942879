"""Batches, the lr schedule and the token-level loss: small pure pieces the training loop shares."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tunesmith.data.tokenize import IGNORE, Encoded

if TYPE_CHECKING:
    import torch
    from torch import nn


def get_lr(step: int, total: int, warmup: int, lr: float, min_ratio: float) -> float:
    """Linear warm-up to `lr` over `warmup` steps, then cosine decay to `lr * min_ratio` at `total`."""
    if warmup > 0 and step < warmup:
        return lr * (step + 1) / warmup
    if total <= warmup:
        return lr
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    order = list(range(n))
    random.Random(seed * 100_003 + epoch).shuffle(order)
    return order


def epoch_batches(
    lengths: Sequence[int], batch_size: int, seed: int, epoch: int, group_by_length: bool = True
) -> list[list[int]]:
    """The micro-batches of one epoch: a fresh seeded shuffle, the tail batch kept.

    `group_by_length`: within windows of 64 batches, examples of similar length share a batch (then the
    batches are shuffled again), so little compute goes to padding while the order stays random.
    """
    n = len(lengths)
    order = epoch_order(n, seed, epoch)
    if not group_by_length:
        return [order[i : i + batch_size] for i in range(0, n, batch_size)]
    window = batch_size * 64
    grouped: list[list[int]] = []
    for w in range(0, n, window):
        chunk = sorted(order[w : w + window], key=lambda i: lengths[i], reverse=True)
        grouped += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    random.Random(seed * 7_919 + epoch).shuffle(grouped)
    return grouped


def micro_batches(
    lengths: Sequence[int],
    batch_size: int,
    seed: int,
    group_by_length: bool = True,
    start: int = 0,
    skip: int = 0,
) -> Iterator[tuple[int, list[int]]]:
    """Endless (epoch, indices) micro-batches, from batch `skip` of epoch `start` on (see `epoch_batches`)."""
    epoch = start
    while True:
        for batch in epoch_batches(lengths, batch_size, seed, epoch, group_by_length)[skip:]:
            yield epoch, batch
        skip = 0
        epoch += 1


class BatchStream:
    """`micro_batches` that knows its position, so a resumed run sees exactly the same next micro-batches.

    The position is (epoch, index of the next micro-batch within that epoch); an index equal to the
    epoch's batch count simply means "the next epoch starts next".
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        seed: int,
        group_by_length: bool = True,
        epoch: int = 0,
        index: int = 0,
    ) -> None:
        self.epoch, self.index = epoch, index
        self._batches = micro_batches(lengths, batch_size, seed, group_by_length, start=epoch, skip=index)

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> tuple[int, list[int]]:
        epoch, batch = next(self._batches)
        if epoch != self.epoch:
            self.epoch, self.index = epoch, 0
        self.index += 1
        return epoch, batch


def collate(batch: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded tensors; padding is masked out of attention and loss."""
    import torch

    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, e in enumerate(batch):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def loss_tokens(batch: Sequence[Encoded]) -> int:
    """Tokens that will carry loss after the causal shift (the first position predicts nothing)."""
    return sum(sum(1 for lab in e.labels[1:] if lab != IGNORE) for e in batch)


def _causal_lm(model: nn.Module) -> Any:
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def token_loss_sum(model: nn.Module, batch: dict[str, torch.Tensor], fast: bool = True) -> torch.Tensor:
    """Summed next-token cross-entropy over positions under the loss.

    `fast`: run the decoder, then the output head only on positions under the loss. In SFT most tokens
    are prompt tokens, and the head (hidden x vocab) is a large share of a small model's compute; skipping
    it there computes the same loss for less work. Methods that change the forward itself (prefix tuning)
    pass fast=False.
    """
    import torch.nn.functional as F

    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE
    if fast:
        lm = _causal_lm(model)
        decoder = getattr(lm, lm.base_model_prefix)
        hidden = decoder(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).last_hidden_state
        logits = lm.get_output_embeddings()(hidden[:, :-1][keep])
        cap = getattr(lm.config, "final_logit_softcapping", None)
        if cap:
            logits = cap * (logits / cap).tanh()
    else:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        logits = out.logits[:, -batch["input_ids"].shape[1] :][:, :-1][keep]
    return F.cross_entropy(logits.float(), labels[keep], reduction="sum")


@dataclass(frozen=True)
class StepStats:
    loss: float  # mean loss per token under the loss, over the whole optimizer step
    loss_tokens: int
    tokens: int  # input tokens, padding excluded


def accumulate_step(
    model: nn.Module,
    chunks: Sequence[Sequence[Encoded]],
    pad_id: int,
    backward: Callable[[torch.Tensor], Any],
    fast: bool = True,
) -> StepStats:
    """Forward and backward over the micro-batches of one optimizer step; gradients add up in `.grad`.

    Each micro-batch's summed loss is divided by the loss tokens of the whole step, not of the micro-batch:
    otherwise micro-batch size and accumulation change how examples are weighted (the classic accumulation
    bug). So 8 examples x 1 micro-batch and 1 example x 8 micro-batches give the same loss and gradients.
    """
    n_loss = sum(loss_tokens(c) for c in chunks)
    step_loss = 0.0
    step_tokens = 0
    for chunk in chunks:
        batch = collate(chunk, pad_id)
        loss = token_loss_sum(model, batch, fast=fast) / max(n_loss, 1)
        backward(loss)
        step_loss += float(loss.detach())
        step_tokens += int(batch["attention_mask"].sum())
    return StepStats(step_loss, n_loss, step_tokens)
