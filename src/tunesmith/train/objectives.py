"""What a training step minimises (`train.objective`), as three small pieces the loop calls: the unit a
loss is averaged over, how examples become a batch, and the summed loss of a batch.

- `sft`: next-token loss on assistant turns (+ their end-of-turn token); averaged per token under the
  loss, over the whole optimizer step.
- `pretrain`: continued pre-training on raw text for a domain's language. Documents are tokenized, each
  closed with EOS, concatenated and cut into full `max_length` blocks (no padding wasted); every token is
  under the loss, so it shares SFT's token loss.
- `dpo`: Direct Preference Optimization (Rafailov et al., 2023) on (prompt, chosen, rejected) pairs:
  ``-log sigmoid(beta * ((log pi(c) - log ref(c)) - (log pi(r) - log ref(r))))`` per pair, with sequence
  log-likelihoods summed over the answer tokens; averaged per pair. The reference model is the base with
  the adapter disabled, so PEFT methods keep no second copy in memory; `full` keeps a frozen copy.
  Reported with it: the implicit rewards ``beta * (log pi - log ref)`` of both answers, their margin and
  the share of pairs whose chosen answer wins (reward accuracy), the same quantities TRL logs.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from tunesmith.data.tokenize import ClassEncoded, PairEncoded
from tunesmith.train.batching import TokenObjective, collate, sequence_logps

if TYPE_CHECKING:
    import torch
    from torch import nn


# ----------------------------------------------------------------------------------------- objectives
@contextlib.contextmanager
def _adapter_disabled(model: nn.Module) -> Iterator[None]:
    disable = getattr(model, "disable_adapter", None)
    if disable is None:
        raise TypeError("the model has no adapter to disable; pass a reference model")
    with disable():
        yield


class DPOObjective:
    """Direct Preference Optimization, averaged per pair."""

    name = "dpo"

    def __init__(self, beta: float, reference: nn.Module | None = None):
        self.beta = beta
        self.reference = reference  # None: the policy with its adapter disabled

    @classmethod
    def for_model(cls, model: nn.Module, beta: float) -> DPOObjective:
        """PEFT models use themselves with the adapter off; a fully trained model gets a frozen copy."""
        if hasattr(model, "disable_adapter"):
            return cls(beta)
        ref = copy.deepcopy(model).eval()
        for p in ref.parameters():
            p.requires_grad_(False)
        return cls(beta, ref)

    def units(self, chunk: Sequence[PairEncoded]) -> int:
        return len(chunk)

    def collate(self, chunk: Sequence[PairEncoded], pad_id: int) -> dict[str, torch.Tensor]:
        # Chosen rows first, then rejected rows: one forward for both halves.
        return collate([p.chosen for p in chunk] + [p.rejected for p in chunk], pad_id)

    def _reference_logps(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        import torch

        with torch.no_grad():
            if self.reference is not None:
                return sequence_logps(self.reference, batch)
            was_training = model.training
            model.eval()  # no dropout in the reference pass
            try:
                with _adapter_disabled(model):
                    return sequence_logps(model, batch)
            finally:
                model.train(was_training)

    def loss_sum(
        self, model: nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        import torch.nn.functional as F

        n = batch["input_ids"].shape[0] // 2
        ref = self._reference_logps(model, batch)
        policy = sequence_logps(model, batch)
        chosen = self.beta * (policy[:n] - ref[:n].to(policy.device))
        rejected = self.beta * (policy[n:] - ref[n:].to(policy.device))
        loss = -F.logsigmoid(chosen - rejected).sum()
        stats = {
            "reward_chosen": float(chosen.detach().sum()),
            "reward_rejected": float(rejected.detach().sum()),
            "reward_margin": float((chosen - rejected).detach().sum()),
            "reward_accuracy": float((chosen > rejected).float().sum()),
        }
        return loss, stats  # stats are sums over the pairs; divide by `units` for means


class ClassifyObjective:
    """A sequence-classification head over the last prompt token: cross-entropy per example, averaged per
    example; the head gives calibrated label probabilities instead of generated text."""

    name = "classify"

    def units(self, chunk: Sequence[ClassEncoded]) -> int:
        return len(chunk)

    def collate(self, chunk: Sequence[ClassEncoded], pad_id: int) -> dict[str, torch.Tensor]:
        import torch

        width = max(len(e.input_ids) for e in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, e in enumerate(chunk):
            ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids)
            mask[i, : len(e.input_ids)] = 1
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "class_labels": torch.tensor([e.label_id for e in chunk], dtype=torch.long),
        }

    def loss_sum(
        self, model: nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        import torch.nn.functional as F

        device = next(p for p in model.parameters()).device
        logits = model(
            input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
        ).logits.float()
        labels = batch["class_labels"].to(device)
        loss = F.cross_entropy(logits, labels, reduction="sum")
        return loss, {"accuracy": float((logits.argmax(-1) == labels).float().sum())}


Objective = TokenObjective | DPOObjective | ClassifyObjective


def make_objective(
    name: str, model: nn.Module, beta: float = 0.1, packed: bool = False, fused: bool = False
) -> Objective:
    """The training objective; `packed` and `fused` are the token objective's paths (sft, pretrain)."""
    if name == "dpo":
        return DPOObjective.for_model(model, beta)
    if name == "classify":
        return ClassifyObjective()
    return TokenObjective(packed=packed, fused=fused, name=name)


def mean_loss(
    objective: Objective, model: nn.Module, items: Sequence[Any], batch_size: int, pad_id: int
) -> dict[str, float]:
    """Mean loss per unit over a whole split (and DPO's reward statistics), without gradients."""
    import torch

    was_training = model.training
    model.eval()
    total, units = 0.0, 0
    stats: dict[str, float] = {}
    with torch.no_grad():
        for i in range(0, len(items), batch_size):
            chunk = items[i : i + batch_size]
            loss, st = objective.loss_sum(model, objective.collate(chunk, pad_id))
            total += float(loss)
            units += objective.units(chunk)
            for k, v in st.items():
                stats[k] = stats.get(k, 0.0) + v
    model.train(was_training)
    out = {"loss": total / max(units, 1)}
    out.update({k: v / max(units, 1) for k, v in stats.items()})
    return out


__all__ = [
    "ClassifyObjective",
    "DPOObjective",
    "Objective",
    "TokenObjective",
    "make_objective",
    "mean_loss",
]
