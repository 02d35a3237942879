"""The training loop: setup, loop, validate, save. Reads top to bottom (after nanoGPT's train.py)."""

from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from tunesmith.config import RunConfig
from tunesmith.data.pipeline import PreparedData
from tunesmith.data.tokenize import Encoded
from tunesmith.io import default_threads
from tunesmith.metrics_log import FILE_NAME as METRICS_FILE
from tunesmith.metrics_log import MetricsLog, truncate_metrics
from tunesmith.progress import make_console, stage_progress
from tunesmith.train.batching import (
    BatchStream,
    StepStats,
    accumulate_step,
    collate,
    get_lr,
    loss_tokens,
    token_loss_sum,
)
from tunesmith.train.checkpoint import (
    TrainingDiverged,
    TrainState,
    best_checkpoint,
    checkpoints_root,
    clean_partial,
    latest_checkpoint,
    load_checkpoint,
    load_optimizer_file,
    load_rng,
    load_weights,
    prune_checkpoints,
    save_checkpoint,
)
from tunesmith.train.kernels import apply_liger_kernels, choose_attention
from tunesmith.train.methods import (
    apply_method,
    count_parameters,
    describe_parameters,
    output_dir_name,
    param_groups,
    save_trained,
)
from tunesmith.train.monitor import ValMonitor
from tunesmith.train.objectives import TokenObjective, make_objective, mean_loss
from tunesmith.train.precision import resolve_precision
from tunesmith.train.sharding import (
    check_sharding,
    clip_grad_norm,
    full_model_state,
    full_optimizer_state,
    load_checkpoint_weights,
    load_optimizer_state,
    report_share,
    shard_model,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["StopTraining", "TrainResult", "TrainingDiverged", "evaluate_loss", "total_steps", "train"]

# Called after each val evaluation with the step and the val statistics (`loss`; classify: `accuracy`).
EvalHook = Callable[[int, dict[str, float]], None]


class StopTraining(Exception):
    """Raised by an `on_eval` hook to end training at once (`tune`: a pruned trial). Nothing more is saved;
    the runner marks the train stage `status` and re-raises."""

    def __init__(self, message: str, status: str = "stopped"):
        super().__init__(message)
        self.status = status


@dataclass
class TrainResult:
    steps: int
    final_train_loss: float
    val_losses: list[tuple[int, float]]
    tokens: int
    seconds: float
    trainable_params: int
    total_params: int
    output_dir: str  # adapter/ (peft methods) or model/ (full)
    resumed_from: int | None = None  # the checkpoint step training continued from
    stopped_early: bool = False
    weights_from_step: int | None = None  # the step whose weights were saved (early stopping: the best)
    val_before: dict[str, float] | None = None  # held-out loss (DPO: and rewards) before any update

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


_TRACKER_PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}


def _check_trackers(track: Sequence[str]) -> None:
    import importlib.util

    missing = [t for t in track if importlib.util.find_spec(_TRACKER_PACKAGES[t]) is None]
    if missing:
        raise ValueError(
            f"train.track: {', '.join(missing)} not installed; `pip install {' '.join(missing)}` "
            "(or `pip install tunesmith[track]`), or remove it from train.track"
        )


def _flat_config(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> {"train.lr": ...} with scalar values (trackers take flat hyperparameters)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat_config(v, f"{prefix}{k}."))
        elif isinstance(v, bool | int | float | str) or v is None:
            out[f"{prefix}{k}"] = "" if v is None else v
        else:
            out[f"{prefix}{k}"] = json.dumps(v)
    return out


def _sum_gradients(params: list[Any], stats: StepStats) -> StepStats:
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
    return _sum_stats(stats)


def _sum_stats(stats: StepStats) -> StepStats:
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


def compile_decoder(model: Any, sharded: bool = False) -> None:
    """`train.compile`: the decoder stack through torch.compile (inductor), in place, with dynamic sequence
    lengths so variable-length batches reuse one graph. Both loss paths call the decoder module, so both
    run compiled; the output head (often only at the loss positions) stays eager."""
    if sharded:
        raise ValueError(
            "train.compile with train.sharding: fsdp is not supported; set train.compile: false to shard, "
            "or train.sharding: none to compile"
        )
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    getattr(lm, lm.base_model_prefix).compile(dynamic=True)


def train(
    cfg: RunConfig,
    data: PreparedData,
    base_model: Any,
    tok: PreTrainedTokenizerBase,
    run_dir: Path,
    console: Console | None = None,
    resume: bool = False,
    gradient_checkpointing: bool | None = None,
    precision: str | None = None,
    on_eval: EvalHook | None = None,
) -> tuple[Any, TrainResult]:
    """Train, writing metrics.jsonl, checkpoints/ and adapter/ into `run_dir`.

    `resume`: continue from the latest complete checkpoint in `run_dir` (from the start if there is none),
    with the same weights, optimizer, RNG states and next micro-batches as if never interrupted.

    `gradient_checkpointing` and `precision`: the run's memory plan decides (`auto` in the config);
    None: the config's explicit value (auto reads as off), and its precision resolved for this machine.

    `on_eval(step, val_stats)`: after each val evaluation is logged; it may raise StopTraining.
    """
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    console = console or make_console()
    tc = cfg.train
    # ---- setup
    torch.set_num_threads(tc.threads or default_threads())
    set_seed(tc.seed)
    _check_trackers(tc.track)
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        log_with=list(tc.track) or None,
        project_dir=str(run_dir / "tracking"),
    )
    if tc.track:
        accelerator.init_trackers(
            cfg.name, config={k: v for k, v in _flat_config(cfg.model_dump(mode="json")).items()}
        )
    world, rank, main = accelerator.num_processes, accelerator.process_index, accelerator.is_main_process
    sharded = tc.sharding == "fsdp" and world > 1
    if sharded:
        check_sharding(cfg)
    if not main:  # one process reports; the others train their share quietly
        console = Console(file=io.StringIO())
    precision = precision or resolve_precision(tc.precision, accelerator.device.type)
    attention = choose_attention(tc.attention, accelerator.device.type, precision, cfg.method.name)
    if attention is not None and attention != getattr(base_model.config, "_attn_implementation", None):
        base_model.set_attn_implementation(attention)
        console.print(f"attention: {attention} (train.attention: {tc.attention})")
    if tc.kernels == "liger":
        if sharded:
            raise ValueError(
                "train.kernels: liger with train.sharding: fsdp is not supported; set one of them to none"
            )
        apply_liger_kernels(base_model)
    model = apply_method(base_model, cfg.method, tok)
    if tc.gradient_checkpointing is True if gradient_checkpointing is None else gradient_checkpointing:
        # Non-reentrant: gradients reach adapters of frozen layers (transformers also hooks the inputs).
        cast(Any, model).activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": False}
        )
    if tc.compile:
        compile_decoder(model, sharded)
    # Sharded, autocast must not keep its bf16 copies of the weights for the whole step: FSDP frees and
    # re-gathers the unsharded weights between micro-batches, and with the cache on, the step's gradients
    # came out wrong (measured on CPU, the tests' tiny Llama, full: the grad norm 2.7% off the one-process
    # run, against 0.02% with the cache off; fp32 is exact either way).
    autocast = torch.autocast(
        accelerator.device.type, dtype=torch.bfloat16, enabled=precision == "bf16", cache_enabled=not sharded
    )
    trainable, total = count_parameters(model)
    console.print(describe_parameters(cfg.method.name, trainable, total))
    if tc.sharding == "fsdp" and not sharded:
        console.print(
            "train.sharding: fsdp ignored: one process (it shards across the processes of a launch)"
        )
    ckpt_root = checkpoints_root(run_dir)
    if main:
        clean_partial(ckpt_root)  # temp folders of a save that was killed
    last = latest_checkpoint(ckpt_root)
    if last is not None and not resume:
        raise FileExistsError(
            f"{run_dir} already has checkpoints (up to step {last.step}); resume it or start a new run"
        )
    if sharded:
        # Sharded data parallel (sharding.py): a resumed run's weights go into the whole model first, then
        # every process keeps its shard of them; the optimizer is built on the sharded parameters.
        model = model.to(accelerator.device)
        if last is not None:
            load_weights(last, model)
        shard_model(model, world, accelerator.device)
        report_share(model, rank, world)
    groups = param_groups(model, tc)
    params = [p for g in groups for p in g["params"]]
    optimizer = torch.optim.AdamW(groups, lr=tc.lr, betas=(0.9, 0.999))
    if sharded:
        pass  # FSDP's sharded parameters, gradients and optimizer state: no accelerate wrapper
    elif world > 1:
        # Data parallel without the DDP wrapper: every process walks the same seeded batch stream, computes
        # its share of each micro-batch, and the gradients are summed across processes before the step
        # (`_sum_gradients`). With the loss divided by the units of the *whole* step, the sum is exactly
        # the one-process gradient, whatever the number of processes, and the wrapper (which the fast
        # loss path would have to unwrap) is not needed.
        model = model.to(accelerator.device)
        optimizer = accelerator.prepare(optimizer)
    else:
        model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)
    objective = make_objective(tc.objective, unwrapped, tc.dpo_beta)
    val_objective = objective if tc.objective in ("dpo", "classify") else TokenObjective()
    model.train()

    train_set, val_set = data.train.encoded, data.val.encoded
    if tc.early_stopping and not val_set:
        raise ValueError("train.early_stopping needs validation examples, and the val split is empty")
    steps = total_steps(cfg, len(train_set))
    warmup = int(round(tc.warmup_ratio * steps))
    pad_id = int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    metrics_path = run_dir / METRICS_FILE
    state = TrainState()
    monitor = ValMonitor(tc.patience, tc.min_delta)
    if last is not None:
        if sharded:  # the weights are in already
            load_optimizer_state(model, optimizer, load_optimizer_file(last))
            load_rng(last)
            state = last.state
        else:
            state = load_checkpoint(last, unwrapped, optimizer)
        monitor = ValMonitor.from_state(state.monitor)
        console.print(f"resuming from [bold]{last.path}[/bold] (step {state.step} of {steps})")
    if main and (torn := truncate_metrics(metrics_path, state.step)):
        console.print(f"[yellow bold]warning:[/yellow bold] {torn}")
    accelerator.wait_for_everyone()
    batches = BatchStream(
        [len(e.input_ids) for e in train_set],
        tc.batch_size,
        tc.seed,
        tc.group_by_length,
        epoch=state.epoch,
        index=state.batch,
    )
    val_losses = list(state.val_losses)
    tokens_seen = state.tokens
    loss_value = state.loss
    stopped = state.stopped
    end = state.step if stopped else steps  # early stopping already ended the run that is resumed
    t0 = time.perf_counter() - state.elapsed_s

    # ---- loop
    progress = stage_progress(
        console,
        "train",
        TextColumn("[bold]train[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    val_before: dict[str, float] | None = None
    with progress, MetricsLog(metrics_path) as log:
        task = progress.add_task("step", total=steps, completed=state.step, info="")
        if val_set and state.step == 0 and end > 0:
            # Held-out loss before any update: the baseline every later val_loss is read against.
            val_before = mean_loss(val_objective, model, val_set, tc.batch_size, pad_id)
            console.print("before training: " + ", ".join(f"val {k} {v:.4f}" for k, v in val_before.items()))
        for step in range(state.step, end):
            lr = get_lr(step, steps, warmup, tc.lr, tc.min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)  # the head's group runs at head_lr
            step_start = time.perf_counter()
            micro = [next(batches) for _ in range(tc.grad_accum)]
            epoch = micro[-1][0]
            chunks = [[train_set[i] for i in idx] for _, idx in micro]
            with autocast:
                stats = accumulate_step(
                    model,
                    chunks,
                    pad_id,
                    accelerator.backward,
                    objective=objective if tc.objective in ("dpo", "classify") else None,
                    shard=(rank, world),
                    packed=tc.packing,
                    fused=tc.kernels == "liger",
                    lockstep=sharded,
                )
            if sharded:  # FSDP summed the gradients in its reduce-scatter
                stats = _sum_stats(stats)
                grad_norm = clip_grad_norm(params, tc.max_grad_norm)
            else:
                if world > 1:
                    stats = _sum_gradients(params, stats)
                grad_norm = float(accelerator.clip_grad_norm_(params, tc.max_grad_norm))
            if not math.isfinite(stats.loss) or not math.isfinite(grad_norm):
                good = latest_checkpoint(ckpt_root)
                raise TrainingDiverged(
                    f"step {step + 1}: loss={stats.loss} grad_norm={grad_norm}; lower train.lr (now {tc.lr:g}). "
                    f"Last good checkpoint: {good.path if good else 'none'}"
                )
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            tokens_seen += stats.tokens
            loss_value = stats.loss
            monitor.add_train(stats.loss)
            dt = time.perf_counter() - step_start
            record: dict[str, Any] = {
                "step": step + 1,
                "epoch": epoch,
                "loss": round(stats.loss, 6),
                "lr": lr,
                "grad_norm": round(grad_norm, 6),
                "tokens": tokens_seen,
                "tokens_per_s": round(stats.tokens / dt, 1),
                "elapsed_s": round(time.perf_counter() - t0, 2),
                **{k: round(v, 6) for k, v in stats.extra.items()},
            }
            # ---- validate
            val: float | None = None
            improved = False
            if val_set and ((step + 1) % tc.eval_every == 0 or step + 1 == steps):
                val_stats = mean_loss(val_objective, model, val_set, tc.batch_size, pad_id)
                val = val_stats["loss"]
                record.update({f"val_{k}": round(v, 6) for k, v in val_stats.items() if k != "loss"})
                if not math.isfinite(val):
                    good = latest_checkpoint(ckpt_root)
                    raise TrainingDiverged(
                        f"step {step + 1}: val_loss={val}; lower train.lr (now {tc.lr:g}). "
                        f"Last good checkpoint: {good.path if good else 'none'}"
                    )
                val_losses.append((step + 1, val))
                record["val_loss"] = round(val, 6)
                verdict = monitor.update(step + 1, val)
                improved = verdict.improved
                if verdict.warning:
                    console.print(f"[yellow bold]warning:[/yellow bold] step {step + 1}: {verdict.warning}")
                    record["warning"] = verdict.warning
                if tc.early_stopping and verdict.stop:
                    stopped = True
                    record["early_stop"] = True
            if main:
                log.append(record)
            if on_eval is not None and val is not None:
                on_eval(step + 1, val_stats)
            if tc.track:
                accelerator.log(
                    {k: v for k, v in record.items() if isinstance(v, int | float) and k != "step"},
                    step=step + 1,
                )
            info = f"loss {stats.loss:.4f}  lr {lr:.2e}  {record['tokens_per_s']:.0f} tok/s"
            if val_losses:
                info += f"  val {val_losses[-1][1]:.4f}"
            progress.update(task, advance=1, info=info)
            # ---- checkpoint (with early stopping, every new best too: the final weights come from it)
            if (
                (tc.save_every and (step + 1) % tc.save_every == 0)
                or step + 1 == steps
                or stopped
                or (tc.early_stopping and improved)
            ):
                state = TrainState(
                    step=step + 1,
                    epoch=batches.epoch,
                    batch=batches.index,
                    tokens=tokens_seen,
                    loss=loss_value,
                    elapsed_s=time.perf_counter() - t0,
                    val_loss=val,
                    val_losses=val_losses,
                    monitor=monitor.state(),
                    stopped=stopped,
                )
                # Sharded: the whole state, gathered onto the first process (every process takes part).
                weights = full_model_state(model, trainable_only=True) if sharded else None
                optimizer_state = full_optimizer_state(model, optimizer) if sharded else None
                if main:
                    log.sync()  # every step the checkpoint covers is on disk before the checkpoint is
                    save_checkpoint(ckpt_root, unwrapped, optimizer, state, weights, optimizer_state)
                    prune_checkpoints(ckpt_root, tc.keep_checkpoints)
                accelerator.wait_for_everyone()
            if stopped:
                console.print(
                    f"early stopping at step {step + 1}: no val-loss improvement for {tc.patience} evaluations"
                )
                break

    # ---- save (with early stopping: the weights of the best-val checkpoint)
    weights_step = state.step
    best = best_checkpoint(ckpt_root) if tc.early_stopping else None
    if best is not None and best.step != state.step:
        if sharded:
            load_checkpoint_weights(best, model)
        else:
            load_weights(best, unwrapped)
        weights_step = best.step
        console.print(f"final weights: step {best.step} (best val loss {best.state.val_loss:.4f})")
    if tc.track:
        accelerator.end_training()
    output_dir = run_dir / output_dir_name(cfg.method)
    # Sharded: an adapter's weights, or the whole model (full), gathered onto the first process.
    final_state = full_model_state(model, trainable_only=cfg.method.name != "full") if sharded else None
    if main:
        output_dir = save_trained(
            unwrapped, tok, run_dir, cfg.method, final_state
        )  # adapter/ or model/ (full)
    accelerator.wait_for_everyone()
    result = TrainResult(
        steps=state.step,
        final_train_loss=loss_value,
        val_losses=val_losses,
        tokens=tokens_seen,
        seconds=round(time.perf_counter() - t0, 2),
        trainable_params=trainable,
        total_params=total,
        output_dir=str(output_dir),
        resumed_from=last.step if last else None,
        stopped_early=stopped,
        weights_from_step=weights_step,
        val_before=val_before,
    )
    return unwrapped, result
