"""The training loop: setup, loop, validate, save. Reads top to bottom (after nanoGPT's train.py)."""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from tunesmith.config import RunConfig
from tunesmith.data.pipeline import PreparedData
from tunesmith.data.tokenize import Encoded
from tunesmith.io import atomic_dir
from tunesmith.train.batching import collate, get_lr, loss_tokens, micro_batches, token_loss_sum
from tunesmith.train.methods import apply_method, count_parameters
from tunesmith.train.precision import resolve_precision

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class TrainingDiverged(RuntimeError):
    pass


@dataclass
class TrainResult:
    steps: int
    final_train_loss: float
    val_losses: list[tuple[int, float]]
    tokens: int
    seconds: float
    trainable_params: int
    total_params: int
    adapter_dir: str

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def total_steps(cfg: RunConfig, n_train: int) -> int:
    if cfg.train.max_steps:
        return cfg.train.max_steps
    per_step = cfg.train.batch_size * cfg.train.grad_accum
    return max(1, math.ceil(cfg.train.epochs * n_train / per_step))


def evaluate_loss(model: Any, encoded: list[Encoded], batch_size: int, pad_id: int) -> float:
    """Mean next-token loss per token under the loss, over a whole split."""
    import torch

    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(encoded), batch_size):
            chunk = encoded[i : i + batch_size]
            total += float(token_loss_sum(model, collate(chunk, pad_id)))
            count += loss_tokens(chunk)
    model.train(was_training)
    return total / max(count, 1)


def train(
    cfg: RunConfig,
    data: PreparedData,
    base_model: Any,
    tok: PreTrainedTokenizerBase,
    run_dir: Path,
    console: Console | None = None,
    gradient_checkpointing: bool | None = None,
    precision: str | None = None,
) -> tuple[Any, TrainResult]:
    """`gradient_checkpointing` and `precision`: the run's memory plan decides (`auto` in the config);
    None: the config's explicit value (auto reads as off), and its precision resolved for this machine."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    console = console or Console(stderr=True)
    tc = cfg.train
    # ---- setup
    torch.set_num_threads(tc.threads or os.cpu_count() or 1)
    set_seed(tc.seed)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    model = apply_method(base_model, cfg.method)
    if tc.gradient_checkpointing is True if gradient_checkpointing is None else gradient_checkpointing:
        # Non-reentrant: gradients reach adapters of frozen layers (transformers also hooks the inputs).
        cast(Any, model).activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": False}
        )
    precision = precision or resolve_precision(tc.precision, accelerator.device.type)
    autocast = torch.autocast(accelerator.device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    trainable, total = count_parameters(model)
    console.print(
        f"[bold]{cfg.method.name}[/bold]: {trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.2f}%)"
    )
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=tc.lr,
        betas=(0.9, 0.999),
    )
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()

    train_set, val_set = data.train.encoded, data.val.encoded
    steps = total_steps(cfg, len(train_set))
    warmup = int(round(tc.warmup_ratio * steps))
    pad_id = int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    batches = micro_batches([len(e.input_ids) for e in train_set], tc.batch_size, tc.seed, tc.group_by_length)
    metrics_path = run_dir / "metrics.jsonl"
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    val_losses: list[tuple[int, float]] = []
    tokens_seen = 0
    loss_value = float("nan")
    t0 = time.perf_counter()

    # ---- loop
    progress = Progress(
        TextColumn("[bold]train[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    with progress, metrics_path.open("a", encoding="utf-8") as log:
        task = progress.add_task("train", total=steps, info="")
        for step in range(steps):
            lr = get_lr(step, steps, warmup, tc.lr, tc.min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
            step_start = time.perf_counter()
            micro = [next(batches) for _ in range(tc.grad_accum)]
            epoch = micro[-1][0]
            chunks = [[train_set[i] for i in idx] for _, idx in micro]
            # Normalise by the tokens of the whole optimizer step, not per micro-batch: otherwise micro-batch
            # size and accumulation change the weighting of examples (the classic accumulation bug).
            n_loss = sum(loss_tokens(c) for c in chunks)
            step_loss = 0.0
            step_tokens = 0
            for chunk in chunks:
                batch = collate(chunk, pad_id)
                with autocast:
                    loss = token_loss_sum(model, batch) / max(n_loss, 1)
                accelerator.backward(loss)
                step_loss += float(loss.detach())
                step_tokens += int(batch["attention_mask"].sum())
            grad_norm = float(accelerator.clip_grad_norm_(params, tc.max_grad_norm))
            if not math.isfinite(step_loss) or not math.isfinite(grad_norm):
                raise TrainingDiverged(
                    f"step {step + 1}: loss={step_loss} grad_norm={grad_norm}; lower train.lr (now {tc.lr:g})"
                )
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            tokens_seen += step_tokens
            loss_value = step_loss
            dt = time.perf_counter() - step_start
            record: dict[str, Any] = {
                "step": step + 1,
                "epoch": epoch,
                "loss": round(step_loss, 6),
                "lr": lr,
                "grad_norm": round(grad_norm, 6),
                "tokens": tokens_seen,
                "tokens_per_s": round(step_tokens / dt, 1),
                "elapsed_s": round(time.perf_counter() - t0, 2),
            }
            # ---- validate
            if val_set and ((step + 1) % tc.eval_every == 0 or step + 1 == steps):
                val = evaluate_loss(model, val_set, tc.batch_size, pad_id)
                val_losses.append((step + 1, val))
                record["val_loss"] = round(val, 6)
            log.write(json.dumps(record) + "\n")
            log.flush()
            info = f"loss {step_loss:.4f}  lr {lr:.2e}  {record['tokens_per_s']:.0f} tok/s"
            if val_losses:
                info += f"  val {val_losses[-1][1]:.4f}"
            progress.update(task, advance=1, info=info)

    # ---- save
    adapter_dir = run_dir / "adapter"
    unwrapped = accelerator.unwrap_model(model)
    with atomic_dir(adapter_dir) as tmp:
        unwrapped.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    result = TrainResult(
        steps=steps,
        final_train_loss=loss_value,
        val_losses=val_losses,
        tokens=tokens_seen,
        seconds=round(time.perf_counter() - t0, 2),
        trainable_params=trainable,
        total_params=total,
        adapter_dir=str(adapter_dir),
    )
    return unwrapped, result
