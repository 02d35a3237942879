"""How the processes of a launch share training: one process, data parallel, or sharded (FSDP).

Built once in the loop's setup (`make_layout`); the loop then calls the same five things whatever the
layout (place the model, prepare model and optimizer, reduce a step, clip, gather and load state), instead
of branching on the process count at every step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tunesmith.train.batching import StepStats
from tunesmith.train.checkpoint import (
    Checkpoint,
    TrainState,
    load_checkpoint,
    load_optimizer_file,
    load_rng,
    load_weights,
)
from tunesmith.train.sharding import (
    clip_grad_norm,
    full_model_state,
    full_optimizer_state,
    load_checkpoint_weights,
    load_optimizer_state,
    report_share,
    shard_model,
)

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator


@dataclass
class Layout:
    """One process: accelerate prepares model and optimizer, and nothing is reduced."""

    accelerator: Accelerator

    @property
    def world(self) -> int:
        return int(self.accelerator.num_processes)

    @property
    def rank(self) -> int:
        return int(self.accelerator.process_index)

    @property
    def main(self) -> bool:
        return bool(self.accelerator.is_main_process)

    sharded = False  # every process runs every micro-batch (FSDP's gathers need all of them)

    def place(self, model: Any, last: Checkpoint | None) -> Any:
        """The model where it trains, before the optimizer is built on its parameters."""
        return model

    def prepare(self, model: Any, optimizer: torch.optim.Optimizer) -> tuple[Any, Any]:
        return self.accelerator.prepare(model, optimizer)

    def reduce(self, stats: StepStats, params: list[Any]) -> StepStats:
        """The whole step's statistics (and gradients), from each process's share."""
        return stats

    def clip(self, params: list[Any], max_norm: float) -> float:
        return float(self.accelerator.clip_grad_norm_(params, max_norm))

    def resume(self, last: Checkpoint, unwrapped: Any, optimizer: Any) -> TrainState:
        """Weights (unless `place` loaded them), optimizer, RNG: the state to continue from."""
        return load_checkpoint(last, unwrapped, optimizer)

    def load_best(self, best: Checkpoint, model: Any, unwrapped: Any) -> None:
        load_weights(best, unwrapped)

    def gather(self, model: Any, optimizer: Any) -> tuple[Any, Any]:
        """(trainable weights, optimizer state) for the main process to save in a checkpoint; None: read them
        from the model."""
        return None, None

    def final_weights(self, model: Any, trainable_only: bool) -> Any:
        return None


@dataclass
class DataParallel(Layout):
    """Several processes, each with a full copy, no DDP wrapper: every process walks the same seeded batch
    stream, computes its share of each micro-batch, and the gradients are summed before the step. With the
    loss divided by the units of the *whole* step, the sum is exactly the one-process gradient, whatever the
    number of processes, and the wrapper (which the fast loss path would have to unwrap) is not needed."""

    def prepare(self, model: Any, optimizer: torch.optim.Optimizer) -> tuple[Any, Any]:
        return model.to(self.accelerator.device), self.accelerator.prepare(optimizer)

    def reduce(self, stats: StepStats, params: list[Any]) -> StepStats:
        return sum_gradients(params, stats)


@dataclass
class Sharded(Layout):
    """FSDP (sharding.py): each process holds a shard of the weights, gradients and optimizer state; FSDP
    sums the gradients in its reduce-scatter, so only the step statistics are reduced here."""

    sharded = True

    def place(self, model: Any, last: Checkpoint | None) -> Any:
        # A resumed run's weights go into the whole model first; then every process keeps its shard.
        model = model.to(self.accelerator.device)
        if last is not None:
            load_weights(last, model)
        shard_model(model, self.world, self.accelerator.device)
        report_share(model, self.rank, self.world)
        return model

    def prepare(self, model: Any, optimizer: torch.optim.Optimizer) -> tuple[Any, Any]:
        return model, optimizer  # sharded parameters and optimizer state: no accelerate wrapper

    def reduce(self, stats: StepStats, params: list[Any]) -> StepStats:
        return sum_stats(stats)

    def clip(self, params: list[Any], max_norm: float) -> float:
        return clip_grad_norm(params, max_norm)

    def resume(self, last: Checkpoint, unwrapped: Any, optimizer: Any) -> TrainState:
        load_optimizer_state(unwrapped, optimizer, load_optimizer_file(last))  # the weights are in already
        load_rng(last)
        return last.state

    def load_best(self, best: Checkpoint, model: Any, unwrapped: Any) -> None:
        load_checkpoint_weights(best, model)

    def gather(self, model: Any, optimizer: Any) -> tuple[Any, Any]:
        # Every process takes part; the whole state lands on the first.
        return full_model_state(model, trainable_only=True), full_optimizer_state(model, optimizer)

    def final_weights(self, model: Any, trainable_only: bool) -> Any:
        return full_model_state(model, trainable_only=trainable_only)


def make_layout(accelerator: Accelerator, sharding: str) -> Layout:
    """`train.sharding: fsdp` shards across the processes of a launch; one process has nothing to shard."""
    if accelerator.num_processes == 1:
        return Layout(accelerator)
    return Sharded(accelerator) if sharding == "fsdp" else DataParallel(accelerator)


def sum_gradients(params: list[Any], stats: StepStats) -> StepStats:
    """Add up every process's gradients (and step statistics): each holds its share of the step's sum."""
    import torch
    import torch.distributed as dist

    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()
    return sum_stats(stats)


def sum_stats(stats: StepStats) -> StepStats:
    """Add up every process's share of the step statistics (loss, tokens, objective statistics)."""
    import torch
    import torch.distributed as dist

    keys = sorted(stats.extra)
    totals = torch.tensor(
        [stats.loss, float(stats.tokens), *[stats.extra[k] for k in keys]], dtype=torch.float64
    )
    dist.all_reduce(totals)
    return StepStats(
        float(totals[0]),
        stats.loss_tokens,
        int(totals[1]),
        {k: float(v) for k, v in zip(keys, totals[2:], strict=True)},
    )
