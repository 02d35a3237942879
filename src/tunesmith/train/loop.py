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
    accumulate_step,
    collate,
    get_lr,
    loss_tokens,
    token_loss_sum,
)
from tunesmith.train.checkpoint import (
    Checkpoint,
    TrainingDiverged,
    TrainState,
    best_checkpoint,
    checkpoints_root,
    clean_partial,
    latest_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from tunesmith.train.kernels import apply_liger_kernels, choose_attention
from tunesmith.train.layout import Layout, make_layout
from tunesmith.train.methods import (
    apply_method,
    count_parameters,
    describe_parameters,
    output_dir_name,
    param_groups,
    save_trained,
)
from tunesmith.train.monitor import ValMonitor
from tunesmith.train.objectives import Objective, TokenObjective, make_objective, mean_loss
from tunesmith.train.precision import resolve_precision

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


def compile_decoder(model: Any) -> None:
    """`train.compile`: the decoder stack through torch.compile (inductor), in place, with dynamic sequence
    lengths so variable-length batches reuse one graph. Both loss paths call the decoder module, so both
    run compiled; the output head (often only at the loss positions) stays eager. (Config validation
    refuses compile with fsdp.)"""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    getattr(lm, lm.base_model_prefix).compile(dynamic=True)


@dataclass
class _Setup:
    """What setup builds and the loop uses: the model placed in its process layout, its optimizer, the
    objectives, and the checkpoint to resume from."""

    layout: Layout
    model: Any
    unwrapped: Any  # the model without accelerate's wrapper: what is saved and loaded
    optimizer: Any
    params: list[Any]
    objective: Objective
    val_objective: Objective
    autocast: Any
    trainable: int
    total: int
    ckpt_root: Path
    last: Checkpoint | None


@dataclass
class _Running:
    """The loop's running totals; a checkpoint saves them as a TrainState."""

    tokens: int
    loss: float
    val_losses: list[tuple[int, float]]
    monitor: ValMonitor
    stopped: bool
    t0: float

    def snapshot(self, step: int, batches: BatchStream, val: float | None) -> TrainState:
        return TrainState(
            step=step,
            epoch=batches.epoch,
            batch=batches.index,
            tokens=self.tokens,
            loss=self.loss,
            elapsed_s=time.perf_counter() - self.t0,
            val_loss=val,
            val_losses=self.val_losses,
            monitor=self.monitor.state(),
            stopped=self.stopped,
        )


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
    tc = cfg.train
    # ---- setup
    layout = make_layout(_accelerator(cfg, run_dir), tc.sharding)
    # One process reports; the others train their share quietly.
    console = (console or make_console()) if layout.main else Console(file=io.StringIO())
    s = _setup(cfg, base_model, tok, run_dir, layout, console, resume, gradient_checkpointing, precision)
    train_set, val_set = data.train.encoded, data.val.encoded
    steps = total_steps(cfg, len(train_set))
    warmup = int(round(tc.warmup_ratio * steps))
    pad_id = int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    state = _resume_state(s, steps, console)
    run = _Running(
        state.tokens,
        state.loss,
        list(state.val_losses),
        ValMonitor.from_state(state.monitor) if s.last else ValMonitor(tc.patience, tc.min_delta),
        state.stopped,
        time.perf_counter() - state.elapsed_s,
    )
    metrics_path = run_dir / METRICS_FILE
    if layout.main and (torn := truncate_metrics(metrics_path, state.step)):
        console.print(f"[yellow bold]warning:[/yellow bold] {torn}")
    layout.accelerator.wait_for_everyone()
    lengths = [len(e.input_ids) for e in train_set]
    batches = BatchStream(lengths, tc.batch_size, tc.seed, tc.group_by_length, state.epoch, state.batch)
    end = state.step if state.stopped else steps  # early stopping already ended the run that is resumed

    # ---- loop
    val_before: dict[str, float] | None = None
    progress = _progress_bar(console)
    with progress, MetricsLog(metrics_path) as log:
        task = progress.add_task("step", total=steps, completed=state.step, info="")
        if val_set and state.step == 0 and end > 0:
            # Held-out loss before any update: the baseline every later val_loss is read against.
            val_before = mean_loss(s.val_objective, s.model, val_set, tc.batch_size, pad_id)
            console.print("before training: " + ", ".join(f"val {k} {v:.4f}" for k, v in val_before.items()))
        for step in range(state.step + 1, end + 1):  # `step`: the optimizer step this iteration makes
            lr = get_lr(step - 1, steps, warmup, tc.lr, tc.min_lr_ratio)
            record = _train_step(s, cfg, batches, train_set, step, lr, pad_id, run)
            # ---- validate
            val_stats: dict[str, float] | None = None
            improved = False
            if val_set and (step % tc.eval_every == 0 or step == steps):
                val_stats, improved, fields = _validate(s, cfg, val_set, step, pad_id, run, console)
                record.update(fields)
            if layout.main:
                log.append(record)
            if on_eval is not None and val_stats is not None:
                on_eval(step, val_stats)
            if tc.track:
                numbers = {k: v for k, v in record.items() if isinstance(v, int | float) and k != "step"}
                layout.accelerator.log(numbers, step=step)
            progress.update(task, advance=1, info=_info(record, run))
            # ---- checkpoint (with early stopping, every new best too: the final weights come from it)
            if _checkpoint_due(cfg, step, steps, run.stopped, improved):
                state = run.snapshot(step, batches, val_stats["loss"] if val_stats else None)
                _save_checkpoint(s, cfg, state, log)
            if run.stopped:
                console.print(
                    f"early stopping at step {step}: no val-loss improvement for {tc.patience} evaluations"
                )
                break

    # ---- save
    output_dir, weights_step = _save_final(s, cfg, tok, run_dir, state.step, console)
    return s.unwrapped, TrainResult(
        steps=state.step,
        final_train_loss=run.loss,
        val_losses=run.val_losses,
        tokens=run.tokens,
        seconds=round(time.perf_counter() - run.t0, 2),
        trainable_params=s.trainable,
        total_params=s.total,
        output_dir=str(output_dir),
        resumed_from=s.last.step if s.last else None,
        stopped_early=run.stopped,
        weights_from_step=weights_step,
        val_before=val_before,
    )


# ---------------------------------------------------------------------------------------------- setup


def _accelerator(cfg: RunConfig, run_dir: Path) -> Any:
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    tc = cfg.train
    torch.set_num_threads(tc.threads or default_threads())
    set_seed(tc.seed)
    _check_trackers(tc.track)
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        log_with=list(tc.track) or None,
        project_dir=str(run_dir / "tracking"),
    )
    if tc.track:
        accelerator.init_trackers(cfg.name, config=_flat_config(cfg.model_dump(mode="json")))
    return accelerator


def _setup(
    cfg: RunConfig,
    base_model: Any,
    tok: PreTrainedTokenizerBase,
    run_dir: Path,
    layout: Layout,
    console: Console,
    resume: bool,
    gradient_checkpointing: bool | None,
    precision: str | None,
) -> _Setup:
    """Kernels and attention on the base, the method on top, then the model placed in its layout with its
    optimizer. Runs before the data loop; every configuration conflict was refused at config validation."""
    import torch

    tc = cfg.train
    device = layout.accelerator.device.type
    precision = precision or resolve_precision(tc.precision, device)
    attention = choose_attention(tc.attention, device, precision, cfg.method.name)
    if attention is not None and attention != getattr(base_model.config, "_attn_implementation", None):
        base_model.set_attn_implementation(attention)
        console.print(f"attention: {attention} (train.attention: {tc.attention})")
    if tc.kernels == "liger":
        apply_liger_kernels(base_model)
    model = apply_method(base_model, cfg.method, tok)
    if tc.gradient_checkpointing is True if gradient_checkpointing is None else gradient_checkpointing:
        # Non-reentrant: gradients reach adapters of frozen layers (transformers also hooks the inputs).
        cast(Any, model).activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": False}
        )
    if tc.compile:
        compile_decoder(model)
    # Sharded, autocast must not keep its bf16 copies of the weights for the whole step: FSDP frees and
    # re-gathers the unsharded weights between micro-batches, and with the cache on, the step's gradients
    # came out wrong (measured on CPU, the tests' tiny Llama, full: the grad norm 2.7% off the one-process
    # run, against 0.02% with the cache off; fp32 is exact either way).
    autocast = torch.autocast(
        device, dtype=torch.bfloat16, enabled=precision == "bf16", cache_enabled=not layout.sharded
    )
    trainable, total = count_parameters(model)
    console.print(describe_parameters(cfg.method.name, trainable, total))
    if tc.sharding == "fsdp" and not layout.sharded:
        console.print(
            "train.sharding: fsdp ignored: one process (it shards across the processes of a launch)"
        )
    ckpt_root = checkpoints_root(run_dir)
    if layout.main:
        clean_partial(ckpt_root)  # temp folders of a save that was killed
    last = latest_checkpoint(ckpt_root)
    if last is not None and not resume:
        raise FileExistsError(
            f"{run_dir} already has checkpoints (up to step {last.step}); resume it or start a new run"
        )
    model = layout.place(model, last)
    groups = param_groups(model, tc)
    optimizer = torch.optim.AdamW(groups, lr=tc.lr, betas=(0.9, 0.999))
    model, optimizer = layout.prepare(model, optimizer)
    unwrapped = layout.accelerator.unwrap_model(model)
    objective = make_objective(
        tc.objective, unwrapped, tc.dpo_beta, packed=tc.packing, fused=tc.kernels == "liger"
    )
    # Validation scores the token loss on plain padded batches (packing and fusing are training speed-ups).
    val_objective = TokenObjective() if isinstance(objective, TokenObjective) else objective
    model.train()
    params = [p for g in groups for p in g["params"]]
    return _Setup(
        layout, model, unwrapped, optimizer, params, objective, val_objective, autocast, trainable, total,
        ckpt_root, last,
    )  # fmt: skip


def _resume_state(s: _Setup, steps: int, console: Console) -> TrainState:
    if s.last is None:
        return TrainState()
    state = s.layout.resume(s.last, s.unwrapped, s.optimizer)
    console.print(f"resuming from [bold]{s.last.path}[/bold] (step {state.step} of {steps})")
    return state


def _progress_bar(console: Console) -> Any:
    return stage_progress(
        console,
        "train",
        TextColumn("[bold]train[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )


# ----------------------------------------------------------------------------------------------- loop


def _train_step(
    s: _Setup,
    cfg: RunConfig,
    batches: BatchStream,
    train_set: Sequence[Any],
    step: int,
    lr: float,
    pad_id: int,
    run: _Running,
) -> dict[str, Any]:
    """One optimizer step over `grad_accum` micro-batches; returns its metrics record."""
    tc = cfg.train
    for group in s.optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)  # the head's group runs at head_lr
    start = time.perf_counter()
    micro = [next(batches) for _ in range(tc.grad_accum)]
    chunks = [[train_set[i] for i in idx] for _, idx in micro]
    layout = s.layout
    with s.autocast:
        stats = accumulate_step(
            s.model,
            chunks,
            pad_id,
            layout.accelerator.backward,
            objective=s.objective,
            shard=(layout.rank, layout.world),
            lockstep=layout.sharded,
        )
    stats = layout.reduce(stats, s.params)
    grad_norm = layout.clip(s.params, tc.max_grad_norm)
    if not math.isfinite(stats.loss) or not math.isfinite(grad_norm):
        _diverged(s, cfg, step, f"loss={stats.loss} grad_norm={grad_norm}")
    s.optimizer.step()
    s.optimizer.zero_grad(set_to_none=True)
    run.tokens += stats.tokens
    run.loss = stats.loss
    run.monitor.add_train(stats.loss)
    return {
        "step": step,
        "epoch": micro[-1][0],
        "loss": round(stats.loss, 6),
        "lr": lr,
        "grad_norm": round(grad_norm, 6),
        "tokens": run.tokens,
        "tokens_per_s": round(stats.tokens / (time.perf_counter() - start), 1),
        "elapsed_s": round(time.perf_counter() - run.t0, 2),
        **{k: round(v, 6) for k, v in stats.extra.items()},
    }


def _diverged(s: _Setup, cfg: RunConfig, step: int, what: str) -> None:
    good = latest_checkpoint(s.ckpt_root)
    raise TrainingDiverged(
        f"step {step}: {what}; lower train.lr (now {cfg.train.lr:g}). "
        f"Last good checkpoint: {good.path if good else 'none'}"
    )


def _validate(
    s: _Setup,
    cfg: RunConfig,
    val_set: Sequence[Any],
    step: int,
    pad_id: int,
    run: _Running,
    console: Console,
) -> tuple[dict[str, float], bool, dict[str, Any]]:
    """The val loss (and the objective's statistics) at `step`, read by the overfitting monitor and early
    stopping; returns the statistics, whether it is a new best, and the fields for the step's record."""
    tc = cfg.train
    stats = mean_loss(s.val_objective, s.model, val_set, tc.batch_size, pad_id)
    val = stats["loss"]
    if not math.isfinite(val):
        _diverged(s, cfg, step, f"val_loss={val}")
    fields: dict[str, Any] = {f"val_{k}": round(v, 6) for k, v in stats.items() if k != "loss"}
    run.val_losses.append((step, val))
    fields["val_loss"] = round(val, 6)
    verdict = run.monitor.update(step, val)
    if verdict.warning:
        console.print(f"[yellow bold]warning:[/yellow bold] step {step}: {verdict.warning}")
        fields["warning"] = verdict.warning
    if tc.early_stopping and verdict.stop:
        run.stopped = True
        fields["early_stop"] = True
    return stats, verdict.improved, fields


def _info(record: dict[str, Any], run: _Running) -> str:
    info = f"loss {record['loss']:.4f}  lr {record['lr']:.2e}  {record['tokens_per_s']:.0f} tok/s"
    return info + (f"  val {run.val_losses[-1][1]:.4f}" if run.val_losses else "")


def _checkpoint_due(cfg: RunConfig, step: int, steps: int, stopped: bool, improved: bool) -> bool:
    tc = cfg.train
    every = bool(tc.save_every) and step % tc.save_every == 0
    return every or step == steps or stopped or (tc.early_stopping and improved)


def _save_checkpoint(s: _Setup, cfg: RunConfig, state: TrainState, log: MetricsLog) -> None:
    weights, optimizer_state = s.layout.gather(s.model, s.optimizer)  # sharded: every process takes part
    if s.layout.main:
        log.sync()  # every step the checkpoint covers is on disk before the checkpoint is
        save_checkpoint(s.ckpt_root, s.unwrapped, s.optimizer, state, weights, optimizer_state)
        prune_checkpoints(s.ckpt_root, cfg.train.keep_checkpoints)
    s.layout.accelerator.wait_for_everyone()


# ----------------------------------------------------------------------------------------------- save


def _save_final(
    s: _Setup, cfg: RunConfig, tok: PreTrainedTokenizerBase, run_dir: Path, last_step: int, console: Console
) -> tuple[Path, int]:
    """adapter/ (peft) or model/ (full): with early stopping, the weights of the best-val checkpoint.
    Returns the folder and the step its weights are from."""
    weights_step = last_step
    best = best_checkpoint(s.ckpt_root) if cfg.train.early_stopping else None
    if best is not None and best.step != last_step:
        s.layout.load_best(best, s.model, s.unwrapped)
        weights_step = best.step
        console.print(f"final weights: step {best.step} (best val loss {best.state.val_loss:.4f})")
    if cfg.train.track:
        s.layout.accelerator.end_training()
    output_dir = run_dir / output_dir_name(cfg.method)
    # Sharded: an adapter's weights, or the whole model (full), gathered onto the first process.
    final = s.layout.final_weights(s.model, trainable_only=cfg.method.name != "full")
    if s.layout.main:
        output_dir = save_trained(s.unwrapped, tok, run_dir, cfg.method, final)
    s.layout.accelerator.wait_for_everyone()
    return output_dir, weights_step
