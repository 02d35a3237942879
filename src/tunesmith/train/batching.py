"""Batches, the lr schedule and the token-level loss: small pure pieces the training loop shares."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
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


def collate_packed(batch: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Padding-free: the micro-batch's examples end to end in one row, no padding token at all.

    `position_ids` restart at 0 for every example, and no attention mask is passed: transformers then builds a
    block-diagonal causal mask from the position restarts (masking_utils.find_packed_sequence_indices), so an
    example attends to itself only, exactly as in its own padded row. The first token of every example is
    kept out of the loss: it would be the target of the previous example's last position, a prediction
    across examples (its own row never predicts it either, the causal shift drops position 0).
    """
    import torch

    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    for e in batch:
        n = len(e.input_ids)
        ids += e.input_ids
        labels += [IGNORE, *e.labels[1:]]
        positions += range(n)
    return {
        "input_ids": torch.tensor([ids], dtype=torch.long),
        "labels": torch.tensor([labels], dtype=torch.long),
        "position_ids": torch.tensor([positions], dtype=torch.long),
    }


def batch_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Real (non-padding) input tokens of a collated batch."""
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    return int(batch["input_ids"].numel())


def loss_tokens(batch: Sequence[Encoded]) -> int:
    """Tokens that will carry loss after the causal shift (the first position predicts nothing)."""
    return sum(sum(1 for lab in e.labels[1:] if lab != IGNORE) for e in batch)


def _causal_lm(model: nn.Module) -> Any:
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def uses_virtual_tokens(model: nn.Module) -> bool:
    """Prefix/prompt tuning (peft "prompt learning"): the forward adds virtual tokens to the input."""
    config = getattr(model, "active_peft_config", None)
    return bool(getattr(config, "is_prompt_learning", False))


def _model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    # Padded batches carry an attention mask; packed ones carry position ids instead (see collate_packed).
    # No KV cache: a loss pass never decodes, and transformers builds the packed (block-diagonal) mask only
    # when there is no cache object.
    inputs: dict[str, Any] = {
        k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch
    }
    inputs["use_cache"] = False
    return inputs


# The attribute under which train.sharding puts `decoder_head_logits` on a sharded model (see sharding.py).
SHARDED_LOSS_LOGITS = "tunesmith_loss_logits"


def decoder_head_logits(model: nn.Module, inputs: dict[str, Any], keep: torch.Tensor) -> torch.Tensor:
    """The decoder's hidden states, then the output head on the positions `keep` only (the fast loss path)."""
    lm = _causal_lm(model)
    decoder = getattr(lm, lm.base_model_prefix)
    hidden = decoder(**inputs).last_hidden_state
    logits = lm.get_output_embeddings()(hidden[:, :-1][keep])
    cap = getattr(lm.config, "final_logit_softcapping", None)
    if cap:
        logits = cap * (logits / cap).tanh()
    return logits


def loss_position_logits(
    model: nn.Module, batch: dict[str, torch.Tensor], fast: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits, target ids, row of each) at the positions under the loss, after the causal shift.

    `fast`: run the decoder, then the output head only on positions under the loss. In SFT most tokens
    are prompt tokens, and the head (hidden x vocab) is a large share of a small model's compute; skipping
    it there computes the same logits for less work. It is right for every method that leaves the forward
    alone (full, lora, dora, qlora, ia3 change weights or wrap layers inside the decoder); prefix and prompt
    tuning add virtual tokens in PeftModel.forward, which the decoder alone would skip, so they always take
    the full forward.
    """
    device = _causal_lm(model).get_input_embeddings().weight.device
    batch = {k: v.to(device) for k, v in batch.items()}
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE
    if fast and not uses_virtual_tokens(model):
        # Sharded (train.sharding: fsdp): the same computation as a method of the model that FSDP treats as
        # a forward, so the root's parameters (embeddings, final norm, head) are gathered around it.
        sharded = getattr(model, SHARDED_LOSS_LOGITS, None)
        inputs = _model_inputs(batch)
        logits = sharded(inputs, keep) if sharded is not None else decoder_head_logits(model, inputs, keep)
    else:
        # PeftModel.forward extends the attention mask by the virtual tokens itself. Prompt tuning prepends
        # them to the sequence, so logits hold num_virtual_tokens extra leading positions: the last
        # input-length positions are the input's. Prefix tuning puts them in the KV cache (past_key_values),
        # and logits are input-length already; the same slice keeps all of them.
        out = model(**_model_inputs(batch))
        logits = out.logits[:, -batch["input_ids"].shape[1] :][:, :-1][keep]
    rows = keep.nonzero()[:, 0]
    return logits, labels[keep], rows


def token_loss_sum(
    model: nn.Module, batch: dict[str, torch.Tensor], fast: bool = True, fused: bool = False
) -> torch.Tensor:
    """Summed next-token cross-entropy over positions under the loss (see `loss_position_logits`).

    `fused` (train.kernels: liger, CUDA): the decoder, then Liger's fused head + cross-entropy on the loss
    positions, so not even their logits are held in memory. Falls back to the logits path where it cannot
    apply (virtual tokens, a sharded model, an output head that is not a plain Linear)."""
    import torch.nn.functional as F
    from torch import nn as _nn

    lm = _causal_lm(model) if fused else None
    if (
        lm is not None
        and fast
        and not uses_virtual_tokens(model)
        and getattr(model, SHARDED_LOSS_LOGITS, None) is None
        and type(head := lm.get_output_embeddings()) is _nn.Linear
    ):
        from tunesmith.train.kernels import fused_token_loss_sum

        device = lm.get_input_embeddings().weight.device
        batch = {k: v.to(device) for k, v in batch.items()}
        labels = batch["labels"][:, 1:]
        keep = labels != IGNORE
        hidden = getattr(lm, lm.base_model_prefix)(**_model_inputs(batch)).last_hidden_state
        cap = getattr(lm.config, "final_logit_softcapping", None)
        return fused_token_loss_sum(hidden[:, :-1][keep], head, labels[keep], cap)
    logits, targets, _ = loss_position_logits(model, batch, fast)
    return F.cross_entropy(logits.float(), targets, reduction="sum")


def sequence_logps(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per row: the summed log-probability of its tokens under the loss (DPO's sequence log-likelihood)."""
    import torch

    logits, targets, rows = loss_position_logits(model, batch)
    logp = torch.log_softmax(logits.float(), dim=-1).gather(1, targets[:, None])[:, 0]
    return torch.zeros(batch["input_ids"].shape[0], device=logp.device, dtype=logp.dtype).index_add(
        0, rows, logp
    )


class TokenObjective:
    """sft and pretrain: summed token cross-entropy, averaged per token under the loss.

    It owns the token loss's two training paths: `packed` (several examples per row, attention kept within
    each, train.packing) and `fused` (Liger's fused linear cross-entropy, train.kernels: liger). `fast`
    computes the output head only at positions under the loss."""

    name = "sft"

    def __init__(self, packed: bool = False, fused: bool = False, fast: bool = True, name: str = "sft"):
        self.packed, self.fused, self.fast, self.name = packed, fused, fast, name

    def units(self, chunk: Sequence[Any]) -> int:
        return loss_tokens(chunk)

    def collate(self, chunk: Sequence[Any], pad_id: int) -> dict[str, torch.Tensor]:
        return collate_packed(chunk, pad_id) if self.packed else collate(chunk, pad_id)

    def loss_sum(
        self, model: nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        return token_loss_sum(model, batch, fast=self.fast, fused=self.fused), {}


@dataclass(frozen=True)
class StepStats:
    loss: float  # mean loss per token under the loss, over the whole optimizer step
    loss_tokens: int  # units the loss is averaged over: tokens under the loss (DPO: pairs)
    tokens: int  # input tokens, padding excluded
    extra: dict[str, float] = field(default_factory=dict)  # objective statistics, means per unit


def accumulate_step(
    model: nn.Module,
    chunks: Sequence[Sequence[Any]],
    pad_id: int,
    backward: Callable[[torch.Tensor], Any],
    fast: bool = True,
    objective: Any = None,
    shard: tuple[int, int] = (0, 1),
    packed: bool = False,
    fused: bool = False,
    lockstep: bool = False,
) -> StepStats:
    """Forward and backward over the micro-batches of one optimizer step; gradients add up in `.grad`.

    Each micro-batch's summed loss is divided by the units (tokens under the loss; DPO: pairs) of the whole
    step, not of the micro-batch: otherwise micro-batch size and accumulation change how examples are
    weighted (the classic accumulation bug). So 8 examples x 1 micro-batch and 1 example x 8 micro-batches
    give the same loss and gradients. `objective`: a `train.objectives` objective; None is the token loss.

    `shard=(rank, world)`: data parallel. Every process sees the whole step (the batch stream is seeded
    alike everywhere), so it knows the step's units without talking to the others, and computes only every
    world-th example of each micro-batch; summing the processes' gradients then gives the one-process
    gradient exactly. The returned loss and tokens are this process's share.

    `lockstep`: every process runs a forward and backward for every micro-batch, as sharded training needs
    (each forward gathers parameters from all processes). A process whose share of a tail micro-batch is
    empty runs the micro-batch's first example with its loss multiplied by 0: zero gradients, nothing
    counted. Without it, such a process skips the micro-batch.
    """
    if objective is None:  # the token loss, with its paths
        objective = TokenObjective(packed=packed, fused=fused, fast=fast)
    n_units = sum(objective.units(c) for c in chunks)
    rank, world = shard
    step_loss = 0.0
    step_tokens = 0
    stats: dict[str, float] = {}
    for full in chunks:
        chunk, weight = full[rank::world], 1.0
        if not chunk:  # a tail micro-batch smaller than the number of processes
            if not lockstep:
                continue
            chunk, weight = full[:1], 0.0
        batch = objective.collate(chunk, pad_id)
        loss_sum, st = objective.loss_sum(model, batch)
        for k, v in st.items():
            stats[k] = stats.get(k, 0.0) + weight * v / max(n_units, 1)
        loss = loss_sum * weight / max(n_units, 1)
        backward(loss)
        if weight:
            step_loss += float(loss.detach())
            step_tokens += batch_tokens(batch)
    return StepStats(step_loss, n_units, step_tokens, stats)
