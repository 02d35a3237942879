"""Training throughput against the peer, in one run: plain TRL `SFTTrainer` vs tunesmith, same everything else.

Both arms train the same model with the same LoRA settings on the same tokenized examples (the support-tickets
example's train split, tokenized once by tunesmith, loss on the assistant turns in both: TRL gets `input_ids`
and `completion_mask`), with the same learning rate and per-step schedule (linear warm-up, cosine to 10%; TRL
is given tunesmith's `get_lr`, see `SameSchedule`), batch size, seed and number of optimizer steps. What differs is only what each does by default to go fast or slow:

  trl            `SFTTrainer` + `SFTConfig` defaults for everything else (the peer a user would pick:
                 gradient checkpointing on, bf16 on, batches padded to their longest example, full-sequence
                 fused LM head with entropy and token-accuracy metrics).
  trl-tuned      the same with `gradient_checkpointing=False` and `bf16` only where the hardware has it: what
                 a user who tuned TRL for this machine would run. Reported for honesty, not for the ratio.
  tunesmith      `tunesmith.train.loop.train`, as `tunesmith train` runs it (its defaults: length-grouped
                 batches, the output head only on positions under the loss, precision and checkpointing
                 chosen by the plan for this machine).

Each arm runs in a fresh process (so its peak RSS / CUDA peak is its own), arms alternate, `--repeats` times;
the report takes each arm's median. Figures:
  real tokens/s   non-padding input tokens of the optimizer steps / seconds of the training loop (TRL:
                  `trainer.train()`, tunesmith: `train()` including wrapping and saving the adapter)
  peak memory     ru_maxrss of the arm's process (CPU), torch.cuda.max_memory_allocated (GPU)
  MFU             model FLOPs per real token / measured peak FLOP/s of this machine (a large fp32 matmul on
                  CPU, bf16 on GPU, timed in this run). FLOPs per token: 6N for full fine-tuning; for LoRA
                  4N + 6N_lora (forward and input-gradients through every weight, weight-gradients only for
                  the adapters), N counting the output head once and no embedding lookup.
  final loss      both final models scored by the same function (`tunesmith.train.loop.evaluate_loss`) on
                  the same held-out split, plus each arm's mean train loss over its last 10 steps. With
                  `--seeds`, the mean over seeds. A short arm's loss is compared with a tunesmith run of
                  the same number of steps (`tunesmith@N`).

    PYTHONPATH=src .venv/bin/python benchmarks/train_throughput.py [--steps 40] [--repeats 3]
    # as in the README: TRL's defaults for 8 steps (bf16 emulated on a CPU without it), the rest for 40 steps
    # over 3 seeds (one seed's data order moves the held-out loss by a few percent)
    PYTHONPATH=src .venv/bin/python benchmarks/train_throughput.py --repeats 1 --short-arms trl --short-steps 8 \
        --seeds 0 1 2
    # the three data shapes of the README table (support tickets, CLINC150 short rows, ~1k-token PEP documents
    # for pretrain), then the table and its PNG:
    for d in tickets clinc docs; do PYTHONPATH=src .venv/bin/python benchmarks/train_throughput.py --data $d \
        --steps 16 --repeats 1 --arms trl trl-tuned tunesmith --short-arms trl --short-steps 2 \
        --out benchmarks/results/train_throughput-cpu-$d.json; done
    PYTHONPATH=src .venv/bin/python benchmarks/train_throughput.py --table
    # GPU, a random model of a real shape at 2048 tokens (weights do not change speed):
    PYTHONPATH=src python benchmarks/train_throughput.py --device cuda --shape llama-3.2-1b --seq-len 2048

With `--plan-steps N` (default 4) the run also checks the plan: `tunesmith plan`'s computed time for the
same steps and `plan --measure`'s (N timed steps), each against the tunesmith arm's steps (metrics elapsed_s).

Writes benchmarks/results/train_throughput-<device>[-<shape>|-clinc|-docs].json and prints a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples" / "support-tickets" / "tunesmith.yaml"
RESULTS = ROOT / "benchmarks" / "results"
CLINC = ROOT.parent / "shared" / "data" / "clinc150"
PEPS = ROOT / "tests" / "data" / "real" / "peps" / "peps.jsonl"

# The three data shapes (`--data`). Each is a real dataset trained as a user would configure it; the
# batch size and learning rate are what tunesmith's recipe derives for it (`train.recipe: auto`), fixed
# here so every arm runs the same steps.
#   tickets  the support-tickets example: ~135-token chat rows, a JSON answer (its own config)
#   clinc    CLINC150, 10 queries per intent (1,500 rows, 150 intents): ~10-word queries answered with
#            the intent name, ~45 tokens with the chat template
#   docs     300 PEPs (public domain), ~1k-token documents: continued pre-training in 1,024-token blocks,
#            two per step
SHAPE_CONFIGS: dict[str, dict[str, Any]] = {
    "clinc": {
        "model": "builtin:smollm2-135m-instruct",
        "method": {"name": "lora", "r": 16, "alpha": 32},
        "train": {"objective": "sft", "max_length": 128, "batch_size": 16, "lr": 1e-3, "seed": 0},
    },
    "docs": {
        "model": "builtin:smollm2-135m-instruct",
        "method": {"name": "lora", "r": 16, "alpha": 32},
        "train": {"objective": "pretrain", "max_length": 1024, "batch_size": 2, "lr": 2e-4, "seed": 0},
    },
}
CLINC_PER_INTENT = {"train": 10, "val": 2}
DATA_SOURCES = {
    "clinc": "shared/data/clinc150 train.csv/val.csv: 10 train and 2 val queries per intent, seeded (0) sample",
    "docs": "tests/data/real/peps/peps.jsonl (300 PEPs), 5% val",
}


def shape_config(data: str, work: Path) -> Path:
    """The config file of data shape `data` (written under `work` for clinc and docs)."""
    import yaml

    if data == "tickets":
        return CONFIG
    cfg = json.loads(json.dumps(SHAPE_CONFIGS[data]))
    cfg["name"] = f"throughput-{data}"
    cfg["runs_dir"] = str(work / "runs")
    if data == "clinc":
        from quality_clinc import subset  # the same seeded sample as the quality benchmark's

        subset(work, CLINC_PER_INTENT, seed=0)
        files = {split: work / f"{split}.csv" for split in CLINC_PER_INTENT}
        cfg["data"] = {
            "train": str(files["train"]),
            "val": str(files["val"]),
            "split": {"test": 0.0},
            "columns": {"instruction": "query", "output": "intent"},
        }
    else:
        cfg["data"] = {
            "train": str(PEPS),
            "columns": {"ignore": ["source"]},
            "split": {"val": 0.05, "test": 0.0, "seed": 0},
        }
    path = work / f"{data}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


ARMS = ("trl", "trl-tuned", "tunesmith", "tunesmith-compact", "tunesmith-compile")
DEFAULT_ARMS = ("trl", "trl-tuned", "tunesmith", "tunesmith-compact")

# Real model shapes for the GPU run (weights random: speed and memory do not depend on their values).
SHAPES: dict[str, dict[str, Any]] = {
    "llama-3.2-1b": {
        "model_type": "llama",
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 64,
        "vocab_size": 128256,
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "tie_word_embeddings": True,
        "hidden_act": "silu",
    },
    "qwen2.5-0.5b": {
        "model_type": "qwen2",
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": True,
        "hidden_act": "silu",
    },
}


# --------------------------------------------------------------------------------------------------
# Shared set-up: config, data, model


def load_setup(args: argparse.Namespace) -> tuple[Any, Any, Any, str | None]:
    """(config, tokenizer, prepared data, model path or None for a random model of `--shape`)."""
    from rich.console import Console

    from tunesmith.config import load_config
    from tunesmith.runner import check_data

    overrides = [f"train.max_steps={args.steps}", "train.eval_every=1000000", *args.override]
    if args.shape:
        overrides.append(f"train.max_length={args.seq_len}")
    cfg = load_config(args.config, overrides)
    quiet = Console(file=open(os.devnull, "w"))  # noqa: SIM115 - lives as long as the process
    model_path, tok, data = check_data(cfg, quiet)
    if args.shape:
        data = synthetic_long_data(data, tok, args.seq_len, args.steps * cfg.train.batch_size, cfg.train.seed)
        return cfg, tok, data, None
    return cfg, tok, data, model_path


def synthetic_long_data(data: Any, tok: Any, seq_len: int, n: int, seed: int) -> Any:
    """GPU shapes: the example's conversations chained into examples of seq_len/4..seq_len tokens, the
    loss on their assistant turns; a realistic spread of lengths at a realistic sequence length."""
    import random

    from tunesmith.data.pipeline import Split
    from tunesmith.data.tokenize import Encoded

    rng = random.Random(seed)
    pool = data.train.encoded
    out: list[Any] = []
    while len(out) < n:
        target = rng.randint(seq_len // 4, seq_len)
        ids: list[int] = []
        labels: list[int] = []
        while len(ids) < target:
            e = rng.choice(pool)
            ids += e.input_ids
            labels += e.labels
        out.append(Encoded(ids[:target], labels[:target]))
    val = out[: max(8, n // 20)]
    return dataclasses.replace(data, train=Split([], out), val=Split([], val), test=Split([], []))


def build_model(args: argparse.Namespace, model_path: str | None, vocab: int) -> Any:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if model_path is not None:
        from tunesmith.models import load_model

        model = load_model(model_path)
    else:
        shape = dict(SHAPES[args.shape])
        config = AutoConfig.for_model(**shape)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        assert config.vocab_size >= vocab
    return model.to(args.device)


def peak_flops(device: str, seconds: float = 3.0) -> float:
    """Measured peak matmul FLOP/s of this machine: fp32 on CPU (what training runs at there), bf16 on GPU."""
    import torch

    n = 2048 if device == "cpu" else 8192
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    best = 0.0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        if device != "cpu":
            torch.cuda.synchronize()
        t = time.perf_counter()
        reps = 4 if device == "cpu" else 50
        for _ in range(reps):
            a @ b
        if device != "cpu":
            torch.cuda.synchronize()
        best = max(best, reps * 2 * n**3 / (time.perf_counter() - t))
    return best


def flops_per_token(model: Any, method: str) -> float:
    """6N (full) or 4N + 6N_lora (LoRA); N: every weight a token is multiplied by (output head once,
    input embeddings not: a lookup)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    emb = base.get_input_embeddings().weight
    head = base.get_output_embeddings().weight
    seen: set[int] = set()
    n = 0
    lora = 0
    for name, p in base.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        if "lora_" in name:
            lora += p.numel()
        elif p is not emb or p is head:
            n += p.numel()
    if head is not emb and id(head) not in seen:
        n += head.numel()
    return 6.0 * (n + lora) if method == "full" else 4.0 * n + 6.0 * lora


def peak_memory(device: str) -> int:
    if device == "cpu":
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    import torch

    return int(torch.cuda.max_memory_allocated())


def heldout_loss(model: Any, data: Any, tok: Any, device: str) -> float:
    from tunesmith.train.loop import evaluate_loss

    pad = int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    model = model.float() if device == "cpu" else model
    return evaluate_loss(model, data.val.encoded, 8, pad)


# --------------------------------------------------------------------------------------------------
# The arms


def run_tunesmith(args: argparse.Namespace) -> dict[str, Any]:
    from rich.console import Console

    from tunesmith.malloc import limit_heap_fragmentation

    if not args.default_malloc:
        limit_heap_fragmentation()  # as the CLI does at start
    import tunesmith.train.loop as loop
    from tunesmith.data.pipeline import Split
    from tunesmith.runner import choose_training_heap

    cfg, tok, data, model_path = load_setup(args)
    quiet = Console(file=open(os.devnull, "w"))  # noqa: SIM115
    if not args.default_malloc and model_path is not None:
        choose_training_heap(cfg, model_path, data, None, quiet)  # train.heap, as `tunesmith train` does
    model = build_model(args, model_path, len(tok))
    no_val = dataclasses.replace(data, val=Split([], []))  # eval is scored afterwards
    with tempfile.TemporaryDirectory() as tmp:
        sync(args.device)
        t0 = time.perf_counter()
        trained, result = loop.train(cfg, no_val, model, tok, Path(tmp), quiet)
        sync(args.device)
        seconds = time.perf_counter() - t0
        records = [json.loads(x) for x in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
        losses = [r["loss"] for r in records if "loss" in r]
        loop_seconds = max(float(r.get("elapsed_s", 0.0)) for r in records)
    mem = peak_memory(args.device)
    return {
        "seconds": seconds,
        "loop_seconds": loop_seconds,  # the steps alone (metrics elapsed_s): what the plan's time estimates
        "real_tokens": result.tokens,
        "peak_memory": mem,
        "train_losses": losses,
        "heldout_loss": heldout_loss(trained, data, tok, args.device),
        "flops_per_token": flops_per_token(trained, cfg.method.name),
        "settings": {
            "precision": "auto",
            "gradient_checkpointing": cfg.train.gradient_checkpointing,
            "group_by_length": cfg.train.group_by_length,
            "packing": cfg.train.packing,
            "heap": cfg.train.heap,
            "compile": cfg.train.compile,
        },
    }


def run_plan(args: argparse.Namespace) -> dict[str, Any]:
    """The plan's time for `--steps` steps of this config, computed from FLOPs and measured from a few real
    steps (`tunesmith plan` and `plan --measure`), to set beside the tunesmith arm's measured time."""
    from tunesmith.train.plan import DataStats, make_plan, measure_steps, target_device

    cfg, tok, data, model_path = load_setup(args)
    assert model_path is not None, "the plan is checked on the real model"
    plan = make_plan(cfg, model_path, DataStats.from_prepared(data), target_device(None, args.threads))
    pad = int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    measured = measure_steps(cfg, model_path, data, plan, pad, steps=args.plan_steps)
    per_step = args.steps / plan.steps_per_epoch
    return {
        "steps_per_epoch": plan.steps_per_epoch,
        "padded_tokens_per_epoch": plan.padded_tokens_per_epoch,
        "computed_seconds": (plan.seconds_per_epoch or 0.0) * per_step,
        "measured_seconds": (measured["seconds_per_epoch"] or 0.0) * per_step,
        "measure_steps_timed": args.plan_steps,
        "gradient_checkpointing": plan.gradient_checkpointing,
        "precision": plan.precision,
    }


class _CountTokens:
    """Wraps TRL's collator and counts the non-padding tokens of every batch it builds."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.tokens = 0

    def __call__(self, examples: list[Any]) -> Any:
        batch = self.inner(examples)
        mask = batch.get("attention_mask")
        self.tokens += int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())
        return batch


def run_trl(args: argparse.Namespace, tuned: bool) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from tunesmith.data.tokenize import IGNORE
    from tunesmith.train.batching import get_lr
    from tunesmith.train.precision import resolve_precision

    cfg, tok, data, model_path = load_setup(args)
    tc, mc = cfg.train, cfg.method
    model = build_model(args, model_path, len(tok))
    rows = [
        {"input_ids": e.input_ids, "completion_mask": [int(lab != IGNORE) for lab in e.labels]}
        for e in data.train.encoded
    ]
    extra: dict[str, Any] = {}
    if tuned:
        extra["gradient_checkpointing"] = False
        extra["bf16"] = resolve_precision("auto", args.device) == "bf16"
    losses: list[float] = []

    class Losses(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    with tempfile.TemporaryDirectory() as tmp:
        sft_args = SFTConfig(
            output_dir=tmp,
            max_steps=tc.max_steps,
            per_device_train_batch_size=tc.batch_size,
            gradient_accumulation_steps=tc.grad_accum,
            learning_rate=tc.lr,
            weight_decay=tc.weight_decay,
            max_grad_norm=tc.max_grad_norm,
            seed=tc.seed,
            max_length=tc.max_length,
            # The loss on the assistant turns, as tunesmith: TRL applies `completion_mask` only when asked.
            completion_only_loss=True,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            use_cpu=args.device == "cpu",
            **extra,
        )
        peft_config = LoraConfig(
            r=mc.r,
            lora_alpha=mc.alpha,
            lora_dropout=mc.dropout,
            target_modules="all-linear" if mc.target_modules is None else mc.target_modules,
            task_type="CAUSAL_LM",
        )
        warmup = int(round(tc.warmup_ratio * tc.max_steps))

        class SameSchedule(SFTTrainer):
            """tunesmith's per-step learning rates (`get_lr`). transformers' warm-up starts at 0, so its first
            optimizer step changes nothing and every later step runs one warm-up step behind. Measured, 8 steps
            of trl-tuned: held-out loss 1.2901 with transformers' schedule, 1.1476 with this one (tunesmith's
            own: 1.1468)."""

            def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> Any:
                if getattr(self, "lr_scheduler", None) is None:
                    self.lr_scheduler: Any = torch.optim.lr_scheduler.LambdaLR(
                        cast(Any, optimizer or self.optimizer),
                        lambda s: get_lr(s, tc.max_steps, warmup, 1.0, tc.min_lr_ratio),
                    )
                    self._created_lr_scheduler = True
                return self.lr_scheduler

        trainer = SameSchedule(
            model=model,
            args=sft_args,
            train_dataset=Dataset.from_list(rows),
            processing_class=tok,
            peft_config=peft_config,
            callbacks=[Losses()],
        )
        counter = _CountTokens(trainer.data_collator)
        trainer.data_collator = counter
        sync(args.device)
        t0 = time.perf_counter()
        trainer.train()
        sync(args.device)
        seconds = time.perf_counter() - t0
        trained = cast(Any, trainer.model)
    mem = peak_memory(args.device)
    if hasattr(trained, "gradient_checkpointing_disable"):
        trained.gradient_checkpointing_disable()
    return {
        "seconds": seconds,
        "real_tokens": counter.tokens,
        "peak_memory": mem,
        "train_losses": losses,
        "heldout_loss": heldout_loss(trained, data, tok, args.device),
        "flops_per_token": flops_per_token(trained, mc.name),
        "settings": {
            "gradient_checkpointing": sft_args.gradient_checkpointing,
            "bf16": sft_args.bf16,
            "packing": sft_args.packing,
            "padding_free": sft_args.padding_free,
            "torch": torch.__version__,
        },
    }


def sync(device: str) -> None:
    if device != "cpu":
        import torch

        torch.cuda.synchronize()


def child(args: argparse.Namespace) -> dict[str, Any]:
    if args.device == "cpu" and args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.child == "plan":
        return run_plan(args)
    if args.child.startswith("tunesmith"):
        if args.child == "tunesmith-compact":
            args.override = [*args.override, "train.heap=compact"]
        if args.child == "tunesmith-compile":
            args.override = [*args.override, "train.compile=true"]
        r = run_tunesmith(args)
    else:
        r = run_trl(args, tuned=args.child == "trl-tuned")
    r["arm"] = args.child
    r["real_tokens_per_s"] = r["real_tokens"] / r["seconds"]
    tail = r["train_losses"][-10:]
    r["train_loss_last10"] = sum(tail) / max(len(tail), 1)
    return r


# --------------------------------------------------------------------------------------------------
# The parent: alternate arms in fresh processes, take medians, compare


SHAPE_NAMES = {
    "clinc": "short rows (CLINC150, sft)",
    "tickets": "support tickets (sft)",
    "docs": "~1k-token documents (PEPs, pretrain)",
}


def shapes_table(device: str, png: Path) -> str:
    """The three shapes side by side from their result files: a markdown table, and a PNG of tokens/s."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, bars = [], {}
    header = (
        "| shape | arm | steps | real tokens/s | vs TRL defaults | vs TRL tuned | peak RSS | held-out loss "
        "(vs TRL, same steps) | plan: computed / measured vs the steps' time |\n|---|---|---|---|---|---|---|---|---|"
    )
    for data, name in SHAPE_NAMES.items():
        path = RESULTS / f"train_throughput-{device}-{data}.json"
        if not path.is_file():
            continue
        r = json.loads(path.read_text(encoding="utf-8"))
        arms, comps, plan = r["arms"], r["comparisons"], r.get("plan")
        bars[name] = {a: arms[a]["real_tokens_per_s"] for a in ("trl", "trl-tuned", "tunesmith") if a in arms}
        for arm in ("trl", "trl-tuned", "tunesmith"):
            if arm not in arms:
                continue
            a = arms[arm]
            vs = {peer: comps.get(f"{arm}_vs_{peer}") for peer in ("trl", "trl-tuned")}
            loss = a["heldout_loss"]
            loss_note = ""
            if arm == "tunesmith":
                c = vs["trl"] or {}
                if c.get("heldout_loss_rel_diff") is not None:
                    loss_note = (
                        f" ({100 * c['heldout_loss_rel_diff']:+.1f}% at {c['loss_compared_at_steps']} steps)"
                    )
                c = vs["trl-tuned"] or {}
                if c.get("heldout_loss_rel_diff") is not None:
                    loss_note += f" ({100 * c['heldout_loss_rel_diff']:+.1f}% vs tuned)"
            plan_cell = (
                f"{100 * plan['computed_error']:+.0f}% / {100 * plan['measured_error']:+.0f}%"
                if plan and arm == "tunesmith"
                else ""
            )
            rows.append(
                f"| {name} | {arm} | {a['steps']} | {a['real_tokens_per_s']:.1f} | "
                + " | ".join(f"{vs[p]['speedup']:.2f}x" if vs[p] else "" for p in ("trl", "trl-tuned"))
                + f" | {a['peak_memory_bytes'] / 2**30:.2f} GiB | {loss:.4f}{loss_note} | {plan_cell} |"
            )
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.27
    for i, arm in enumerate(("trl", "trl-tuned", "tunesmith")):
        xs = [k + (i - 1) * width for k in range(len(bars))]
        ax.bar(xs, [b.get(arm, 0.0) for b in bars.values()], width, label=arm)
    ax.set_xticks(range(len(bars)), list(bars), fontsize=8)
    ax.set_ylabel("real (non-padding) tokens/s")
    ax.set_title(f"Training throughput on three data shapes ({device}), SmolLM2-135M + LoRA r16")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    return header + "\n" + "\n".join(rows)


def run_child(label: str, cmd: list[str]) -> dict[str, Any]:
    """Run one arm in a fresh process; its RESULT line."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{label}: failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return dict(json.loads(lines[-1][len("RESULT ") :]))


def median_of(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40, help="Optimizer steps per arm (the example's 40).")
    ap.add_argument(
        "--data",
        default="tickets",
        choices=["tickets", "clinc", "docs"],
        help="The data shape: the support-tickets example, CLINC150 short queries, or ~1k-token PEP documents "
        "(pretrain).",
    )
    ap.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    ap.add_argument(
        "--plan-steps",
        type=int,
        default=4,
        help="Also check the plan: its computed time and `plan --measure` (this many timed steps) against the "
        "tunesmith arm's time; 0 leaves the plan out.",
    )
    ap.add_argument(
        "--work", type=Path, help="Where the clinc/docs configs and data subsets go (default: temp)."
    )
    ap.add_argument("--repeats", type=int, default=3, help="Runs per arm (alternating); medians reported.")
    ap.add_argument("--arms", nargs="+", default=list(DEFAULT_ARMS), choices=ARMS)
    ap.add_argument(
        "--short-arms",
        nargs="*",
        default=[],
        choices=ARMS,
        help="Arms too slow for --steps here (TRL's defaults on a CPU without bf16): --short-steps steps. Their "
        "loss is compared with one more tunesmith run of --short-steps (reported as tunesmith@N).",
    )
    ap.add_argument("--short-steps", type=int, default=4)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--shape", choices=sorted(SHAPES), help="A random model of this real shape (GPU runs).")
    ap.add_argument("--seq-len", type=int, default=2048, help="With --shape: the longest example.")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads for every arm (default: torch's).")
    ap.add_argument("--override", nargs="*", default=[], help="Config overrides for every arm.")
    ap.add_argument(
        "--default-malloc", action="store_true", help="tunesmith arm: leave glibc's malloc tuning alone."
    )
    ap.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=None,
        help="Train every arm once per seed (train.seed; data order and adapter init). The held-out loss is "
        "compared as the mean over seeds: one seed's data order alone moves it by a few percent.",
    )
    ap.add_argument(
        "--first-seed-arms",
        nargs="*",
        default=["tunesmith-compact"],
        choices=ARMS,
        help="With --seeds: arms that run for the first seed only (speed and memory figures; their arithmetic is "
        "another arm's). The --short-arms always do.",
    )
    ap.add_argument("--out", type=Path, help="Write the JSON here (default: benchmarks/results/...).")
    ap.add_argument(
        "--table",
        action="store_true",
        help="Print the three shapes' results (from their JSON files) as one table and write the PNG.",
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.table:
        png = RESULTS / f"train_throughput-{args.device}-shapes.png"
        print(shapes_table(args.device, png))
        print(f"wrote {png}")
        return
    if args.child:
        print("RESULT " + json.dumps(child(args)))
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="throughput-"))
    work.mkdir(parents=True, exist_ok=True)
    args.config = shape_config(args.data, work)

    import torch

    # A short arm's loss is compared with tunesmith's at the same number of steps: one more (cheap) tunesmith
    # run of --short-steps, labelled "tunesmith@N". Its loss stands for every tunesmith arm (the heap policy
    # changes speed and memory, not the arithmetic).
    labels = list(args.arms)
    short_label = f"tunesmith@{args.short_steps}"
    if any(a in args.short_arms for a in args.arms) and any(
        a.startswith("tunesmith") and a not in args.short_arms for a in args.arms
    ):
        labels.append(short_label)
    runs: dict[str, list[dict[str, Any]]] = {a: [] for a in labels}

    def steps_of(label: str) -> int:
        return args.short_steps if label in args.short_arms or "@" in label else args.steps

    seeds: list[int | None] = list(args.seeds) if args.seeds else [None]
    rounds = [(seed, rep) for seed in seeds for rep in range(args.repeats)]  # (seed, repeat)
    for n, (seed, _rep) in enumerate(rounds):
        order = labels if n % 2 == 0 else list(reversed(labels))
        for label in order:
            arm, steps = label.split("@")[0], steps_of(label)
            first_seed_only = arm in args.first_seed_arms or steps != args.steps
            if first_seed_only and seed != seeds[0]:
                continue
            cmd = [sys.executable, __file__, "--child", arm, "--steps", str(steps), "--device", args.device]
            cmd += ["--config", str(args.config)]
            if args.shape:
                cmd += ["--shape", args.shape, "--seq-len", str(args.seq_len)]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            overrides = [*args.override, *([f"train.seed={seed}"] if seed is not None else [])]
            if overrides:
                cmd += ["--override", *overrides]
            r = run_child(label, cmd)
            r["seed"] = seed
            runs[label].append(r)
            print(
                f"[{n + 1}/{len(rounds)}{'' if seed is None else f' seed {seed}'}] {label:18s} "
                f"{r['real_tokens_per_s']:9.1f} real tok/s  "
                f"peak {r['peak_memory'] / 2**30:.2f} GiB  held-out loss {r['heldout_loss']:.4f}  "
                f"({r['seconds']:.1f} s)",
                flush=True,
            )

    plan = None
    if args.plan_steps and not args.shape and "tunesmith" in runs:
        cmd = [
            sys.executable,
            __file__,
            "--child",
            "plan",
            "--steps",
            str(args.steps),
            "--config",
            str(args.config),
        ]
        cmd += [
            "--plan-steps",
            str(args.plan_steps),
            *(["--threads", str(args.threads)] if args.threads else []),
        ]
        plan = run_child("plan", cmd + (["--override", *args.override] if args.override else []))
        actual = median_of(runs["tunesmith"], "loop_seconds")
        plan["tunesmith_loop_seconds"] = actual
        plan["tunesmith_seconds"] = median_of(runs["tunesmith"], "seconds")
        plan["computed_error"] = round(plan["computed_seconds"] / actual - 1, 4)
        plan["measured_error"] = round(plan["measured_seconds"] / actual - 1, 4)
        print(
            f"plan for {args.steps} steps: computed {plan['computed_seconds']:.1f} s "
            f"({100 * plan['computed_error']:+.1f}%), measured ({args.plan_steps} steps) "
            f"{plan['measured_seconds']:.1f} s ({100 * plan['measured_error']:+.1f}%); tunesmith's steps took "
            f"{actual:.1f} s ({plan['tunesmith_seconds']:.1f} s with set-up and saving)",
            flush=True,
        )

    peak = peak_flops(args.device)
    summary: dict[str, dict[str, Any]] = {}
    for arm, rs in runs.items():
        tps = median_of(rs, "real_tokens_per_s")
        by_seed = {
            seed: median_of([r for r in rs if r["seed"] == seed], "heldout_loss")
            for seed in seeds
            if any(r["seed"] == seed for r in rs)
        }
        summary[arm] = {
            "real_tokens_per_s": round(tps, 1),
            "real_tokens_per_s_runs": [round(r["real_tokens_per_s"], 1) for r in rs],
            "peak_memory_bytes": int(median_of(rs, "peak_memory")),
            "mfu": round(tps * rs[0]["flops_per_token"] / peak, 4),
            # Per seed the median over repeats (the loss of a seed is deterministic up to float noise),
            # then the mean over seeds.
            "heldout_loss": round(statistics.mean(by_seed.values()), 4),
            "heldout_loss_by_seed": {str(k): round(v, 4) for k, v in by_seed.items()},
            "heldout_loss_stdev": round(statistics.stdev(by_seed.values()), 4) if len(by_seed) > 1 else None,
            "train_loss_last10": round(median_of(rs, "train_loss_last10"), 4),
            "seconds": round(median_of(rs, "seconds"), 1),
            "real_tokens": rs[0]["real_tokens"],
            "steps": steps_of(arm),
            "settings": rs[0]["settings"],
        }
    comparisons: dict[str, Any] = {}
    for peer in ("trl", "trl-tuned"):
        if peer in summary:
            theirs = summary[peer]
            for mine in ("tunesmith", "tunesmith-compact", "tunesmith-compile"):
                if mine not in summary:
                    continue
                ours = summary[mine]
                # The loss at the peer's number of steps: this arm's own run, or tunesmith@N for a short peer.
                # A first-seed-only arm's loss is tunesmith's (the heap policy does not change the arithmetic).
                same_math = "tunesmith" if mine in args.first_seed_arms and "tunesmith" in summary else mine
                loss_arm = same_math if ours["steps"] == theirs["steps"] else short_label
                loss = (
                    summary.get(loss_arm)
                    if summary.get(loss_arm, {}).get("steps") == theirs["steps"]
                    else None
                )
                comparisons[f"{mine}_vs_{peer}"] = {
                    "speedup": round(ours["real_tokens_per_s"] / theirs["real_tokens_per_s"], 3),
                    "memory_ratio": round(ours["peak_memory_bytes"] / theirs["peak_memory_bytes"], 3),
                    "heldout_loss_rel_diff": round(loss["heldout_loss"] / theirs["heldout_loss"] - 1, 4)
                    if loss
                    else None,
                    "loss_compared_at_steps": theirs["steps"] if loss else None,
                }

    print()
    print(
        f"{'arm':18s} {'steps':>5s} {'real tok/s':>11s} {'peak GiB':>9s} {'MFU':>7s} {'held-out':>9s} {'train(last10)':>14s}"
    )
    for arm, s in summary.items():
        print(
            f"{arm:18s} {s['steps']:5d} {s['real_tokens_per_s']:11.1f} {s['peak_memory_bytes'] / 2**30:9.2f} "
            f"{100 * s['mfu']:6.2f}% {s['heldout_loss']:9.4f} {s['train_loss_last10']:14.4f}"
        )
    for name, c in comparisons.items():
        loss = c["heldout_loss_rel_diff"]
        print(
            f"{name}: {c['speedup']:.2f}x real tokens/s, memory {c['memory_ratio']:.2f}x, "
            + (
                f"held-out loss {100 * loss:+.2f}% (after {c['loss_compared_at_steps']} steps)"
                if loss is not None
                else "(fewer steps: loss not compared)"
            )
        )
    import transformers
    import trl

    cpu_flags = ""
    if Path("/proc/cpuinfo").is_file():
        flags = Path("/proc/cpuinfo").read_text().split("flags")[1].split("\n")[0].split()
        cpu_flags = " ".join(f for f in flags if f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16"))
    # The tickets shape alone keeps its first name (the 40-step, three-seed table of the README).
    tag = f"-{args.shape}" if args.shape else ("" if args.data == "tickets" else f"-{args.data}")
    out = args.out or RESULTS / f"train_throughput-{args.device}{tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    from tunesmith.io import atomic_write_text

    atomic_write_text(
        out,
        json.dumps(
            {
                "what": "real (non-padding) tokens/s, peak memory, MFU and final loss: plain TRL SFTTrainer vs "
                "tunesmith, same model, data, LoRA, schedule and steps; medians over alternating fresh processes",
                "data": args.data,
                "config": str(CONFIG.relative_to(ROOT))
                if args.data == "tickets"
                else {**SHAPE_CONFIGS[args.data], "data": DATA_SOURCES[args.data]},
                "steps": args.steps,
                "repeats": args.repeats,
                "seeds": args.seeds,
                "shape": args.shape or "SmolLM2-135M-Instruct (pretrained)",
                "seq_len": args.seq_len if args.shape else None,
                "overrides": args.override,
                "machine": {
                    "device": args.device,
                    "name": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor(),
                    "cores": os.cpu_count(),
                    "cpu_flags": cpu_flags,
                    "load_avg_at_end": os.getloadavg(),
                    "measured_peak_flops": peak,
                },
                "versions": {
                    "torch": torch.__version__,
                    "transformers": transformers.__version__,
                    "trl": trl.__version__,
                },
                "arms": summary,
                "comparisons": comparisons,
                "plan": plan,
                "runs": runs,
            },
            indent=2,
        )
        + "\n",
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
