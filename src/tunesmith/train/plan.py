"""The memory and time plan of a training run, from the model's config alone (no weights loaded).

Parameters come from the real architecture built on the meta device, with the method applied by peft,
so adapter counts are peft's own. Peak memory is the sum of what lives at the worst moment of a step:

- weights: frozen weights at their storage size (qlora: ~0.52 byte/param for the 4-bit linears with
  double-quantized constants), trainable weights fp32; under bf16 autocast, plus the bf16 copies of
  the linear weights that matmuls keep for the backward pass.
- gradients: fp32, one per trainable parameter.
- optimizer: AdamW's two fp32 states per trainable parameter, and the temporaries of its step.
- activations: what autograd saves for the largest micro-batch (batch_size x the longest sequence in the
  prepared data), counted tensor by tensor for a Llama-style decoder layer in transformers 5 with SDPA
  attention (see `_per_layer_token_bytes`), plus the output head's logits at the loss positions only
  (`token_loss_sum` never builds logits elsewhere) and the backward pass's temporaries.
- framework overhead: on CPU the resident memory of this very process (Python, torch, transformers,
  the tokenizer and the data), which training runs in; on CUDA the context, cuBLAS workspace and the
  caching allocator's slack (an assumption, stated in `_cuda_overhead`).

Gradients and activations never peak together with set_to_none zeroing and one micro-batch per step:
backward frees a layer's activations as it writes that layer's gradients. So the peak is
weights + optimizer states + overhead + max(activations + gradients written before any activation is
freed, all gradients + the optimizer step's temporaries); never more than the sum of the components. With gradient accumulation the gradients of the
previous micro-batches are alive during the next forward, and the plan adds them all.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, cast

from tunesmith.data.tokenize import Encoded
from tunesmith.io import default_threads
from tunesmith.method_traits import LOW_RANK_METHODS, METHODS, VIRTUAL_TOKEN_METHODS, traits
from tunesmith.train.precision import cpu_has_bf16
from tunesmith.train.precision import resolve_precision as _resolve

if TYPE_CHECKING:
    from tunesmith.config import RunConfig
    from tunesmith.data.pipeline import PreparedData

GiB = 1024**3
MEMORY_LIMIT_ENV = "TUNESMITH_MEMORY_LIMIT"
QLORA_BYTES_PER_PARAM = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4-bit + 8-bit absmax per 64 + fp32 per 256 absmax


class PlanError(Exception):
    """A run that cannot work on this machine (does not fit, or asks for unsupported precision)."""


# --------------------------------------------------------------------------------------------------
# Devices


@dataclass(frozen=True)
class Device:
    name: str
    kind: str  # "cuda" or "cpu"
    memory_bytes: int  # what the run may use: free device memory, or RAM available + this process
    peak_flops: dict[str, float]  # precision -> dense FLOP/s
    mfu: float  # share of peak a fine-tuning step reaches
    bf16: bool
    memory_source: str
    flops_source: str


# Dense (no sparsity) peaks from NVIDIA's data sheets; fp32 is the non-tensor-core rate because torch
# leaves TF32 matmuls off by default. Memory is what nvidia-smi reports as total.
_GPUS: dict[str, tuple[str, int, float, float]] = {
    "h100": ("NVIDIA H100 80GB SXM", 81559 * 2**20, 989.4e12, 66.9e12),
    "a100-40": ("NVIDIA A100 40GB", 40960 * 2**20, 312e12, 19.5e12),
    "a100-80": ("NVIDIA A100 80GB", 81920 * 2**20, 312e12, 19.5e12),
    "l4": ("NVIDIA L4", 23034 * 2**20, 121e12, 30.3e12),
}
GPU_CHOICES = (*_GPUS, "cpu")
# Fine-tuning reaches 30-45% of a GPU's bf16 peak for 1B+ models; a 135M model reaches far less (its
# matmuls are too small to fill the tensor cores), so for small models this time is optimistic.
GPU_MFU = 0.35
# Share of the measured matmul rate that a whole CPU training step reaches (elementwise ops, norms,
# softmax and the optimizer run far below matmul speed). Measured with benchmarks/train_throughput.py
# (SmolLM2-135M, LoRA, train.heap fast) on three data shapes: with 0.5 the computed time was 27%, 36% and
# 20% above the steps' real time (CLINC150 short rows, support tickets, 1k-token documents); 0.62 puts it
# at +2%, +10% and -3%. A run on the compact heap is slower (1.8x on the tickets), which this leaves out;
# `tunesmith plan` times real steps on this machine when it can.
CPU_MFU = 0.62


def named_gpu(key: str) -> Device:
    name, mem, bf16, fp32 = _GPUS[key]
    return Device(name, "cuda", mem, {"bf16": bf16, "fp32": fp32}, GPU_MFU, True, "data sheet", "data sheet")


def process_rss() -> int:
    import psutil  # accelerate's dependency

    return int(psutil.Process().memory_info().rss)


def measure_cpu_flops(threads: int | None = None, seconds: float = 0.5, dtype: str = "fp32") -> float:
    """FLOP/s of a 1024^3 matmul on this machine's CPU, over about `seconds` (after one warm-up)."""
    import torch

    torch.set_num_threads(threads or default_threads())
    dt = torch.bfloat16 if dtype == "bf16" else torch.float32
    n = 1024
    a, b = torch.randn(n, n, dtype=dt), torch.randn(n, n, dtype=dt)
    torch.mm(a, b)
    reps, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds or reps < 3:
        torch.mm(a, b)
        reps += 1
    return 2 * n**3 * reps / elapsed


def this_cpu(threads: int | None = None) -> Device:
    import psutil

    bf16 = cpu_has_bf16()
    flops = {"fp32": measure_cpu_flops(threads)}
    if bf16:
        flops["bf16"] = measure_cpu_flops(threads, dtype="bf16")
    # The estimate counts this process's resident memory as overhead, so it may also use it.
    mem = int(psutil.virtual_memory().available) + process_rss()
    cores = threads or default_threads()
    return Device(
        f"CPU ({cores} threads)",
        "cpu",
        mem,
        flops,
        CPU_MFU,
        bf16,
        "MemAvailable + this process's RSS",
        "timed 1024x1024 matmul",
    )


def this_gpu() -> Device:
    import torch

    free, _total = torch.cuda.mem_get_info()
    name = torch.cuda.get_device_name()
    key = next((k for k in ("h100", "a100", "l4") if k.replace("-", "") in name.lower()), None)
    if key == "a100":
        key = "a100-80" if _total > 60 * GiB else "a100-40"
    peaks = {"bf16": _GPUS[key][2], "fp32": _GPUS[key][3]} if key else {}
    return Device(
        name,
        "cuda",
        int(free),
        peaks,
        GPU_MFU,
        bool(torch.cuda.is_bf16_supported()),
        "torch.cuda.mem_get_info (free)",
        "data sheet" if key else "unknown GPU: no time estimate",
    )


def parse_bytes(text: str) -> int:
    """'8GiB', '512MiB', '8G', '1500000000' -> bytes (binary units; G and GB read as GiB)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.I)
    if not m:
        raise PlanError(f"{MEMORY_LIMIT_ENV}={text!r} is not a size like 8GiB or 512MiB")
    return int(float(m.group(1)) * 1024 ** "BKMGT".index((m.group(2) or "B").upper()))


def target_device(gpu: str | None, threads: int | None = None) -> Device:
    """`gpu`: a named GPU (planning for a machine you do not have), `cpu`, or None for this machine.

    On this machine, the environment variable TUNESMITH_MEMORY_LIMIT (e.g. `8GiB`) caps the memory a
    run may plan for: a share of a machine that others use too.
    """
    if gpu in _GPUS:
        return named_gpu(gpu)
    if gpu not in (None, "cpu"):
        raise PlanError(f"unknown --gpu {gpu!r}; choose one of {', '.join(GPU_CHOICES)}")
    device = None
    if gpu is None:
        import torch

        if torch.cuda.is_available():
            device = this_gpu()
    device = device or this_cpu(threads)
    limit = os.environ.get(MEMORY_LIMIT_ENV)
    if limit and parse_bytes(limit) < device.memory_bytes:
        device = replace(device, memory_bytes=parse_bytes(limit), memory_source=f"{MEMORY_LIMIT_ENV}={limit}")
    return device


def resolve_precision(requested: str, device: Device) -> str:
    return _resolve(requested, device.kind, supported=device.bf16, where=device.name)


# --------------------------------------------------------------------------------------------------
# The model's shape and parameter counts, on the meta device


@dataclass(frozen=True)
class Shape:
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool

    @classmethod
    def from_config(cls, c: Any) -> Shape:
        heads = int(c.num_attention_heads)
        head_dim = int(getattr(c, "head_dim", None) or c.hidden_size // heads)
        return cls(
            layers=int(c.num_hidden_layers),
            hidden=int(c.hidden_size),
            intermediate=int(getattr(c, "intermediate_size", None) or 4 * c.hidden_size),
            heads=heads,
            kv_heads=int(getattr(c, "num_key_value_heads", None) or heads),
            head_dim=head_dim,
            vocab=int(c.vocab_size),
            tied=bool(getattr(c, "tie_word_embeddings", False)),
        )


@dataclass(frozen=True)
class MethodSpec:
    name: str
    r: int = 16
    target_modules: str | tuple[str, ...] = "all-linear"
    num_virtual_tokens: int = 20
    dropout: float = 0.0

    @classmethod
    def from_config(cls, method: Any, name: str | None = None) -> MethodSpec:
        tm = getattr(method, "target_modules", None) or "all-linear"  # None: the method's default
        return cls(
            name=name or method.name,
            r=int(getattr(method, "r", 16)),
            target_modules=tm if isinstance(tm, str) else tuple(tm),
            num_virtual_tokens=int(getattr(method, "num_virtual_tokens", 20)),
            dropout=float(getattr(method, "dropout", 0.0)),
        )


@dataclass(frozen=True)
class Params:
    total: int  # base model + adapter, tied weights once
    trainable: int
    linear: int  # weights of the decoder layers' linear projections (what qlora stores in 4 bits)
    largest_trainable: int
    head_trainable: bool  # output head (or the embedding tied to it) gets a gradient
    norms_trainable: bool
    adapter_width: int  # per layer: sum over adapted modules of the adapter's inner width (LoRA: r)
    adapted_out: int  # per layer: sum of adapted modules' output features (DoRA keeps the base output)


def _peft_config(spec: MethodSpec, classification: bool = False) -> Any:
    """The same peft configuration training builds (train.methods.peft_config), from the spec's options."""
    from tunesmith.config import MethodConfig
    from tunesmith.train.methods import peft_config

    if spec.name not in METHODS or spec.name == "full":
        raise PlanError(f"unknown method {spec.name!r}; known: {', '.join(METHODS)}")
    options: dict[str, Any] = {"name": spec.name}
    if spec.name in LOW_RANK_METHODS:
        tm = spec.target_modules if spec.target_modules == "all-linear" else list(spec.target_modules)
        options |= {"r": spec.r, "target_modules": tm, "dropout": spec.dropout}
    elif spec.name in VIRTUAL_TOKEN_METHODS:
        options["num_virtual_tokens"] = spec.num_virtual_tokens
    return peft_config(MethodConfig(**options), classification=classification)


def meta_model(model_path: str, num_labels: int = 2) -> Any:
    """The architecture with every tensor on the meta device: shapes without memory or weights. A decoder
    as a causal LM; an encoder (BERT family: classify only) with its classification head of `num_labels`."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    from tunesmith.models import is_encoder

    config = AutoConfig.from_pretrained(model_path)
    with init_empty_weights():
        if is_encoder(model_path):
            config.num_labels = max(num_labels, 2)
            model = AutoModelForSequenceClassification.from_config(config)
        else:
            model = AutoModelForCausalLM.from_config(config)
    model.tie_weights()  # from_config on meta leaves a tied head as its own tensor
    return model


def count_params(model_path: str, spec: MethodSpec, num_labels: int = 2) -> tuple[Shape, Params]:
    import warnings

    from torch import nn

    model = meta_model(model_path, num_labels)
    classification = type(model).__name__.endswith("ForSequenceClassification")
    shape = Shape.from_config(model.config)
    if classification:  # the head's outputs are the classes, not the vocabulary
        shape = replace(shape, vocab=int(model.config.num_labels))
    layers = next(m for m in model.modules() if isinstance(m, nn.ModuleList))
    linear = sum(
        mod.weight.numel()
        for mod in layers.modules()
        if isinstance(mod, nn.Linear) and "lora" not in type(mod).__name__
    )
    if spec.name == "full":
        for p in model.parameters():
            p.requires_grad_(True)
    else:
        from peft import get_peft_model

        with warnings.catch_warnings():
            # peft warns about meta tensors and deprecated aliases; shapes are all we read here.
            warnings.simplefilter("ignore")
            model = get_peft_model(model, _peft_config(spec, classification))
    params = list(model.parameters())  # parameters() yields a tied tensor once
    trainable = [p for p in params if p.requires_grad]
    head = model.get_output_embeddings()
    first = next(m for m in model.modules() if isinstance(m, nn.ModuleList))[0]
    adapter_width = adapted_out = 0
    if spec.name in LOW_RANK_METHODS:
        mod: Any
        for mod in first.modules():
            a = getattr(mod, "lora_A", None)
            if isinstance(a, nn.ModuleDict) and a:
                inner: Any = next(iter(a.values()))
                adapter_width += int(inner.out_features)
                adapted_out += int(mod.base_layer.out_features)
    norms = [m for m in first.modules() if "norm" in type(m).__name__.lower()]
    return shape, Params(
        total=sum(p.numel() for p in params),
        trainable=sum(p.numel() for p in trainable),
        linear=linear,
        largest_trainable=max((p.numel() for p in trainable), default=0),
        head_trainable=bool(head is not None and head.weight.requires_grad),
        norms_trainable=any(p.requires_grad for m in norms for p in m.parameters()),
        adapter_width=adapter_width,
        adapted_out=adapted_out,
    )


# --------------------------------------------------------------------------------------------------
# Data: the largest micro-batch and the tokens an epoch computes


@dataclass(frozen=True)
class DataStats:
    lengths: tuple[int, ...]  # tokens per training example
    loss_tokens: tuple[int, ...]  # tokens under the loss per training example
    num_labels: int = 0  # classify: the classes of the head

    @classmethod
    def from_prepared(cls, data: PreparedData) -> DataStats:
        from tunesmith.data.tokenize import IGNORE, ClassEncoded, EncodedExample, PairEncoded

        def loss_tokens(e: EncodedExample) -> int:
            if isinstance(e, PairEncoded):  # a DPO pair: both answers are scored
                return loss_tokens(e.chosen) + loss_tokens(e.rejected)
            if isinstance(e, ClassEncoded):  # classification: one prediction per example
                return 1
            return sum(1 for lab in e.labels[1:] if lab != IGNORE)

        enc = data.train.encoded
        return cls(
            tuple(len(e.input_ids) for e in enc),
            tuple(loss_tokens(e) for e in enc),
            len(data.class_labels),
        )


def epoch_tokens(stats: DataStats, batch_size: int, seed: int, group_by_length: bool) -> tuple[int, int]:
    """(padded tokens, batches) of one epoch, batched exactly as the training loop batches it."""
    from tunesmith.train.batching import micro_batches

    padded = batches = 0
    for epoch, idx in micro_batches(stats.lengths, batch_size, seed, group_by_length):
        if epoch > 0:
            break
        padded += len(idx) * max(stats.lengths[i] for i in idx)
        batches += 1
    return padded, batches


# --------------------------------------------------------------------------------------------------
# Memory


def _per_layer_token_bytes(shape: Shape, params: Params, method: str, precision: str, seq: int) -> float:
    """Bytes autograd saves per token in one decoder layer.

    Counted on SmolLM2 (Llama) in transformers 5.23 / torch 2.13 with saved_tensors_hooks, fp32:
    full fine-tuning saves 6 hidden-sized tensors (the two RMSNorm inputs, their normalised outputs
    because the norm weights train, the two linear inputs), q/k/v/output of SDPA at all heads
    (4 x heads x head_dim; k/v after repeat_kv), 4 intermediate-sized tensors of the SwiGLU MLP, the
    float attention mask (seq per token) and SDPA's logsumexp (heads). With frozen norms, 2 hidden-sized
    tensors fewer. LoRA adds its A output (r) per adapted module; DoRA keeps each base output too.
    Under bf16 autocast the linear inputs and outputs are bf16; the norms and residual stay fp32.
    """
    lo = 2 if precision == "bf16" else 4
    h, a, i = shape.hidden, shape.heads * shape.head_dim, shape.intermediate
    norm_terms = 4 * (2 + (2 if params.norms_trainable else 0)) * h
    lin_terms = lo * (2 * h + 4 * a + 4 * i)
    extra = lo * params.adapter_width
    if method == "dora":
        extra += lo * params.adapted_out
    if method == "ia3":
        extra += lo * (2 * shape.kv_heads * shape.head_dim + i)  # the scaled k, v and MLP inputs
    return norm_terms + lin_terms + extra + 4 * seq + 4 * shape.heads


@dataclass
class MemoryPlan:
    weights: int
    gradients: int
    optimizer: int
    activations: int
    overhead: int
    peak: int
    detail: dict[str, Any] = field(default_factory=dict)

    def components(self) -> dict[str, int]:
        return {
            "weights": self.weights,
            "gradients": self.gradients,
            "optimizer": self.optimizer,
            "activations": self.activations,
            "overhead": self.overhead,
        }

    def biggest(self) -> str:
        c = self.components()
        return max(c, key=lambda k: c[k])


def _cuda_overhead(tensor_bytes: float) -> int:
    # Assumed, not measured here (no GPU on the development machine): ~0.5 GiB for the CUDA context
    # and kernels, 256 MiB of cuBLAS/cuDNN workspace, and 10% caching-allocator fragmentation.
    return int(0.75 * GiB + 0.10 * tensor_bytes)


def estimate_memory(
    shape: Shape,
    params: Params,
    method: str,
    precision: str,
    batch_size: int,
    seq_len: int,
    loss_positions: int,
    checkpointing: bool,
    grad_accum: int,
    device_kind: str,
    framework_bytes: int,
    virtual_tokens: int = 0,
) -> MemoryPlan:
    frozen = params.total - params.trainable
    # ---- weights
    if traits(method).quantized_base:
        weights = QLORA_BYTES_PER_PARAM * params.linear + 4 * (frozen - params.linear) + 4 * params.trainable
    else:
        weights = 4 * params.total
    autocast_copies = 2 * params.linear if precision == "bf16" else 0
    # ---- gradients and optimizer
    gradients = 4 * params.trainable
    optimizer = 8 * params.trainable
    # CPU AdamW runs per tensor (foreach needs CUDA): sqrt and divide make two temporaries of the largest
    # parameter. CUDA's foreach AdamW makes one temporary of every trainable parameter at once.
    step_temp = 8 * params.largest_trainable if device_kind == "cpu" else 4 * params.trainable
    # ---- activations
    seq = seq_len + (virtual_tokens if method == "prompt" else 0)
    tokens = batch_size * seq
    layer = tokens * _per_layer_token_bytes(shape, params, method, precision, seq)
    # Checkpointed, each layer keeps only its fp32 input; backward recomputes one layer at a time.
    saved_layers = (
        (shape.layers * tokens * 4 * shape.hidden + layer) if checkpointing else shape.layers * layer
    )
    # Embedding output, final norm input/output, hidden states gathered at the loss positions.
    outside = tokens * 4 * 3 * shape.hidden + loss_positions * 4 * shape.hidden
    logits_saved = loss_positions * shape.vocab * 4  # log_softmax output, fp32
    # Backward temporaries: at the head, the logits' gradient and log_softmax's input gradient; in a
    # layer, gradients shaped like that layer's saved tensors. The larger of the two.
    transient = max(2 * loss_positions * shape.vocab * 4, layer)
    activations = int(saved_layers + outside + logits_saved + transient + autocast_copies)
    # ---- overhead
    tensor_bytes = weights + gradients + optimizer + activations
    overhead = framework_bytes if device_kind == "cpu" else _cuda_overhead(tensor_bytes)
    # ---- peak: see the module docstring
    early_grads = 4 * shape.vocab * shape.hidden if params.head_trainable else 0
    if grad_accum > 1:
        early_grads = gradients
    peak = weights + optimizer + overhead + max(activations + early_grads, gradients + step_temp)
    return MemoryPlan(
        weights=int(weights),
        gradients=int(gradients),
        optimizer=int(optimizer + step_temp),
        activations=activations,
        overhead=int(overhead),
        peak=int(peak),
        detail={
            "micro_batch_tokens": tokens,
            "loss_positions": loss_positions,
            "per_layer_activations": int(layer),
            "logits_at_loss_positions": int(logits_saved),
            "backward_temporaries": int(transient),
            "autocast_weight_copies": int(autocast_copies),
            "optimizer_step_temporaries": int(step_temp),
        },
    )


# --------------------------------------------------------------------------------------------------
# Time


def flops_per_epoch(
    shape: Shape, params: Params, method: str, padded_tokens: int, loss_tokens: int, seq: float, ckpt: bool
) -> float:
    """6N per token for full fine-tuning; for PEFT the forward (2N), the backward through the activations
    (~2N) and weight gradients (2 per trainable parameter) only. N counts the decoder's matmul weights; the
    output head runs only at the loss positions; attention adds 2 x heads x head_dim x seq per token."""
    attn = 2 * shape.layers * shape.heads * shape.head_dim * seq
    decoder_fwd = padded_tokens * (2 * params.linear + attn)
    head_fwd = loss_tokens * 2 * shape.hidden * shape.vocab
    fwd = decoder_fwd + head_fwd
    if method == "full":
        total = 3 * fwd
    else:
        adapter = 2 * params.trainable * padded_tokens
        total = 2 * fwd + 2 * adapter  # adapter forward, then its weight gradients
    if ckpt:
        total += decoder_fwd  # the recomputed forward
    return float(total)


# --------------------------------------------------------------------------------------------------
# The plan


@dataclass
class Plan:
    method: str
    model: str
    device: str
    device_kind: str
    precision: str
    gradient_checkpointing: bool
    params: int
    trainable: int
    batch_size: int
    seq_len: int
    seq_source: str
    memory: MemoryPlan
    available: int
    available_source: str
    fits: bool
    tokens_per_epoch: int
    padded_tokens_per_epoch: int
    steps_per_epoch: int
    flops_per_epoch: float
    device_flops: float | None
    mfu: float
    flops_source: str
    seconds_per_epoch: float | None
    measured: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["memory"] = {**self.memory.components(), "peak": self.memory.peak, "detail": self.memory.detail}
        d["biggest"] = self.memory.biggest()
        return d

    def refusal(self) -> str:
        big = self.memory.biggest()
        fixes = {
            "activations": "lower train.batch_size or train.max_length"
            + ("" if self.gradient_checkpointing else ", set train.gradient_checkpointing: true")
            + (", or use method lora/qlora" if self.method == "full" else ""),
            "weights": "use method qlora (4-bit weights) or a smaller model",
            "optimizer": "use method lora or qlora (optimizer state only for the adapter)",
            "gradients": "use method lora or qlora (gradients only for the adapter)",
            "overhead": "free memory on this machine (other processes hold it)",
        }
        comp = self.memory.components()[big]
        return (
            f"the {self.method} plan"
            + (" (gradient checkpointing on)" if self.gradient_checkpointing else "")
            + f" does not fit: it needs {fmt_bytes(self.memory.peak)} at its peak, "
            f"{fmt_bytes(self.available)} is available ({self.device}, {self.available_source}). "
            f"Biggest part: {big} {fmt_bytes(comp)}"
            + (
                f" (batch_size {self.batch_size} x {self.seq_len} tokens)"
                if big == "activations"
                else f" ({self.trainable:,} trainable of {self.params:,} parameters)"
            )
            + f". Fix: {fixes[big]}."
        )


def fmt_bytes(n: float) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB / 10 else f"{n / 2**20:.0f} MiB"


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "n/a"
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def make_plan(
    cfg: RunConfig,
    model_path: str,
    stats: DataStats,
    device: Device,
    method: str | None = None,
    gradient_checkpointing: bool | None = None,
    framework_bytes: int | None = None,
) -> Plan:
    """The plan of `cfg` (or of another `method` on the same data) on `device`.

    `gradient_checkpointing` None follows train.gradient_checkpointing; `auto` turns it on only when the
    plan does not fit without it and fits with it.
    """
    tc = cfg.train
    spec = MethodSpec.from_config(cfg.method, method)
    if spec.name not in METHODS:
        raise PlanError(f"unknown method {spec.name!r}; known: {', '.join(METHODS)}")
    precision = resolve_precision(tc.precision, device)
    shape, params = count_params(model_path, spec, stats.num_labels)
    if stats.lengths:
        seq, seq_source = max(stats.lengths), "longest example in the prepared train split"
    else:
        seq, seq_source = tc.max_length, "train.max_length"
    loss_positions = sum(sorted(stats.loss_tokens, reverse=True)[: tc.batch_size]) or tc.batch_size * seq
    batch = min(tc.batch_size, max(len(stats.lengths), 1))
    fw = framework_bytes if framework_bytes is not None else (process_rss() if device.kind == "cpu" else 0)
    virtual = spec.num_virtual_tokens if spec.name in VIRTUAL_TOKEN_METHODS else 0

    def memory(ckpt: bool) -> MemoryPlan:
        return estimate_memory(
            shape,
            params,
            spec.name,
            precision,
            batch,
            seq,
            loss_positions,
            ckpt,
            tc.grad_accum,
            device.kind,
            fw,
            virtual,
        )

    wanted = tc.gradient_checkpointing if gradient_checkpointing is None else gradient_checkpointing
    if wanted == "auto":
        # On when the plan does not fit without it: the run's best chance (refused if it still does not).
        ckpt = memory(False).peak > device.memory_bytes and spec.name != "prefix"
    else:
        ckpt = bool(wanted)
    if ckpt and spec.name == "prefix":
        raise PlanError("prefix tuning does not work with gradient checkpointing (peft); use another method")
    mem = memory(ckpt)

    padded, batches = (
        epoch_tokens(stats, tc.batch_size, tc.seed, tc.group_by_length) if stats.lengths else (0, 0)
    )
    mean_seq = sum(stats.lengths) / len(stats.lengths) if stats.lengths else seq
    flops = flops_per_epoch(shape, params, spec.name, padded, sum(stats.loss_tokens), mean_seq, ckpt)
    peak_flops = device.peak_flops.get(precision)
    seconds = flops / (peak_flops * device.mfu) if peak_flops else None
    return Plan(
        method=spec.name,
        model=cfg.model,
        device=device.name,
        device_kind=device.kind,
        precision=precision,
        gradient_checkpointing=ckpt,
        params=params.total,
        trainable=params.trainable,
        batch_size=batch,
        seq_len=seq,
        seq_source=seq_source,
        memory=mem,
        available=device.memory_bytes,
        available_source=device.memory_source,
        fits=mem.peak <= device.memory_bytes,
        tokens_per_epoch=sum(stats.lengths),
        padded_tokens_per_epoch=padded,
        steps_per_epoch=math.ceil(batches / tc.grad_accum) if batches else 0,
        flops_per_epoch=flops,
        device_flops=peak_flops,
        mfu=device.mfu,
        flops_source=device.flops_source,
        seconds_per_epoch=seconds,
    )


# --------------------------------------------------------------------------------------------------
# Measuring real steps (CPU or the current GPU): the time, and the peak memory so far


# `tunesmith plan` times real steps by default when that is cheap: MEASURE_STEPS micro-batches after one
# warm-up, when the computed time of those says they take at most MEASURE_MAX_S.
MEASURE_STEPS = 4
MEASURE_MAX_S = 60.0


def _untimeable(cfg: RunConfig, plan: Plan) -> str | None:
    """Why real steps of `plan` cannot be timed at all (None: they can): `measure_steps` runs the token
    objectives, on the configured method or full."""
    if cfg.train.objective not in ("sft", "pretrain"):
        return f"train.objective {cfg.train.objective} is timed from its shapes alone"
    if plan.method not in (cfg.method.name, "full"):
        return f"only the configured method ({cfg.method.name}) or full is timed"
    return None


def why_not_measured(cfg: RunConfig, plan: Plan, steps: int = MEASURE_STEPS) -> str | None:
    """Why `tunesmith plan` does not time real steps of `plan` by default (None: it does). The computed time
    misses what FLOPs do not count (per-layer overheads that dominate short rows, the allocator), so a
    few real steps on this machine give the time; they are skipped when they cannot run or would be slow."""
    if why := _untimeable(cfg, plan):
        return why
    if not plan.fits:
        return "the plan does not fit this machine's memory"
    batches = plan.steps_per_epoch * max(cfg.train.grad_accum, 1)
    if plan.seconds_per_epoch and batches:
        cost = plan.seconds_per_epoch / batches * (steps + 1)
        if cost > MEASURE_MAX_S:
            return f"{steps + 1} real steps would take about {fmt_seconds(cost)}: ask for them with --measure"
    return None


def measure_steps(
    cfg: RunConfig, model_path: str, data: PreparedData, plan: Plan, pad_id: int, steps: int = MEASURE_STEPS
) -> dict[str, Any]:
    """Load the weights, apply the method, and time `steps` micro-batches (after one warm-up) of the epoch's
    first batches, through the training loop's own step (`accumulate_step` with the run's objective: the
    output head only at loss positions, packed or fused as configured). Returns tokens/s (padding
    included, as the plan counts), seconds per epoch and the achieved share of peak FLOP/s."""
    import resource

    import torch

    from tunesmith.models import load_model
    from tunesmith.train.batching import BatchStream, accumulate_step
    from tunesmith.train.methods import apply_method
    from tunesmith.train.objectives import make_objective

    tc = cfg.train
    if why := _untimeable(cfg, plan):
        raise PlanError(f"--measure: {why}; leave out --measure")
    examples = cast(list[Encoded], data.train.encoded)  # sft and pretrain encode to Encoded
    if tc.threads:
        torch.set_num_threads(tc.threads)
    if plan.device_kind == "cpu":
        # The heap policy the run would use (train.heap): `fast` trains up to ~1.8x faster than `compact`.
        from tunesmith.malloc import choose_heap, set_heap

        set_heap(choose_heap(tc.heap, plan.memory.peak, plan.available))
    model: Any = load_model(model_path)
    if plan.method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
    else:  # the configured method (`_untimeable`)
        model = apply_method(model, cfg.method)
    if plan.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=tc.lr)
    device = "cuda" if plan.device_kind == "cuda" and torch.cuda.is_available() else "cpu"
    model.to(device)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=plan.precision == "bf16")
    objective = make_objective(tc.objective, model, packed=tc.packing, fused=tc.kernels == "liger")
    lengths = [len(e.input_ids) for e in examples]
    batches = BatchStream(lengths, tc.batch_size, tc.seed, tc.group_by_length)
    timed_tokens, timed = 0, 0.0
    for step in range(steps + 1):
        _, idx = next(batches)
        chunk = [examples[i] for i in idx]
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with autocast:
            accumulate_step(model, [chunk], pad_id, lambda loss: loss.backward(), objective=objective)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if step > 0:
            timed += time.perf_counter() - t0
            timed_tokens += len(chunk) * max(len(e.input_ids) for e in chunk)  # padded, as the plan counts
    tok_s = timed_tokens / timed
    achieved = (
        plan.flops_per_epoch / plan.padded_tokens_per_epoch * tok_s if plan.padded_tokens_per_epoch else 0
    )
    return {
        "steps_timed": steps,
        "tokens_per_s": round(tok_s, 1),
        "seconds_per_epoch": plan.padded_tokens_per_epoch / tok_s if plan.padded_tokens_per_epoch else None,
        "achieved_flops": achieved,
        "mfu": achieved / plan.device_flops if plan.device_flops else None,
        # ru_maxrss is KiB on Linux: the whole process's peak resident memory so far.
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 if device == "cpu" else None,
        "peak_cuda": int(torch.cuda.max_memory_allocated()) if device == "cuda" else None,
    }


# --------------------------------------------------------------------------------------------------
# Output


def plans_table(plans: Sequence[Plan]) -> Any:
    from rich.table import Table

    p0 = plans[0]
    t = Table(
        title=f"plan: {p0.model} on {p0.device}, batch {p0.batch_size} x {p0.seq_len} tokens ({p0.seq_source})",
        title_justify="left",
    )
    t.add_column("")
    for p in plans:
        t.add_column(p.method, justify="right")
    rows: list[tuple[str, Any]] = [
        ("parameters", lambda p: f"{p.params / 1e6:,.1f} M"),
        ("trainable", lambda p: f"{p.trainable / 1e6:,.2f} M ({100 * p.trainable / p.params:.2f}%)"),
        ("precision", lambda p: p.precision),
        ("gradient checkpointing", lambda p: "on" if p.gradient_checkpointing else "off"),
        ("weights", lambda p: fmt_bytes(p.memory.weights)),
        ("gradients", lambda p: fmt_bytes(p.memory.gradients)),
        ("optimizer (AdamW)", lambda p: fmt_bytes(p.memory.optimizer)),
        ("activations", lambda p: fmt_bytes(p.memory.activations)),
        ("framework overhead", lambda p: fmt_bytes(p.memory.overhead)),
        ("[bold]peak[/bold]", lambda p: f"[bold]{fmt_bytes(p.memory.peak)}[/bold]"),
        (
            "available",
            lambda p: (
                f"{fmt_bytes(p.available)} "
                + ("[green]fits[/green]" if p.fits else "[red]does not fit[/red]")
            ),
        ),
        ("tokens / epoch (padded)", lambda p: f"{p.padded_tokens_per_epoch:,}"),
        ("FLOPs / epoch", lambda p: f"{p.flops_per_epoch:.2e}"),
        ("time / epoch (from FLOPs)", lambda p: fmt_seconds(p.seconds_per_epoch)),
    ]
    if any(p.measured for p in plans):
        rows.append(
            (
                "[bold]time / epoch (measured)[/bold]",
                lambda p: (
                    f"[bold]{fmt_seconds(p.measured['seconds_per_epoch'])}[/bold]" if p.measured else "-"
                ),
            )
        )
    for label, f in rows:
        t.add_row(label, *[f(p) for p in plans])
    return t


def plan_footnote(p: Plan) -> str:
    flops = f"{p.device_flops:.3g} FLOP/s ({p.flops_source})" if p.device_flops else "unknown"
    return (
        f"peak = weights + optimizer + overhead + max(activations, gradients + optimizer step temporaries): "
        f"backward frees activations as it writes gradients. Time = FLOPs / ({flops} x MFU {p.mfu})."
    )


def plans_json(plans: Sequence[Plan]) -> str:
    return json.dumps([p.as_dict() for p in plans], indent=2)


__all__ = [
    "GPU_CHOICES",
    "DataStats",
    "Device",
    "MemoryPlan",
    "Plan",
    "PlanError",
    "estimate_memory",
    "make_plan",
    "measure_steps",
    "resolve_precision",
    "why_not_measured",
    "target_device",
]
