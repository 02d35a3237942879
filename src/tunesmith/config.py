"""The run configuration: one strict schema, documented once.

Every field carries its description; the CLI help and README's config reference are generated from
it (`tunesmith config-reference`). Unknown keys are errors, and all errors of a file are collected
and reported together with their dotted paths and a suggested fix.
"""

from __future__ import annotations

import difflib
import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from tunesmith.method_traits import LOW_RANK_METHODS, SHARDABLE_METHODS, VIRTUAL_TOKEN_METHODS, MethodName


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def _resolve_path(value: str, info: ValidationInfo) -> str:
    """Resolve a data path against the config file's folder and check that it exists."""
    base = Path((info.context or {}).get("base_dir", "."))
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = base / path
    if not path.exists():
        raise ValueError(f"file not found: {path}")
    return str(path.resolve())


class SplitConfig(_Strict):
    """How one data file is divided when the user gives no separate val/test files."""

    val: float = Field(0.05, ge=0.0, lt=1.0, description="Share of examples held out for validation loss.")
    test: float = Field(
        0.2, ge=0.0, lt=1.0, description="Share of examples held out for the base-vs-tuned evaluation."
    )
    seed: int = Field(0, description="Seed of the deterministic shuffle before splitting.")
    stratify: bool = Field(
        True, description="Keep label proportions equal across splits for classification rows."
    )

    @model_validator(mode="after")
    def _leaves_training_data(self) -> SplitConfig:
        if self.val + self.test >= 0.9:
            raise ValueError(
                f"val + test = {self.val + self.test:.2f} leaves too little training data; keep it under 0.9"
            )
        return self


class CleanConfig(_Strict):
    """Cleaning steps, in this order; each one is counted in the pre-flight report."""

    normalize: bool = Field(
        True,
        description="Unicode NFC, drop invisible/control characters, LF line ends, trim trailing spaces.",
    )
    drop_degenerate: bool = Field(
        True, description="Drop examples whose answer is empty, repeats the prompt, or repeats one phrase."
    )
    pii: Literal["redact", "drop", "keep"] = Field(
        "redact",
        description="PII (emails, phones, Luhn-valid cards, IBANs, US SSNs, UK NI numbers, IPs, your patterns): "
        "`redact` replaces with typed placeholders like <EMAIL>, `drop` removes the example, `keep` leaves it.",
    )
    pii_kinds: list[str] | None = Field(None, description="Only these PII kinds (default: all).")
    pii_patterns: dict[str, str] = Field(
        default_factory=dict, description="Your own PII regexes, name -> pattern; redacted as <NAME>."
    )
    exact_dedup: bool = Field(
        True, description="Drop exact duplicates (after normalisation, case-insensitive)."
    )
    near_dedup: bool = Field(
        True,
        description="Drop near-duplicates: examples whose prompt and answer both match an earlier example's "
        "(MinHash LSH over word sets). Near-identical prompts with different answers are conflicts, not duplicates.",
    )
    near_dup_threshold: float = Field(
        0.7,
        gt=0.0,
        le=1.0,
        description="Estimated Jaccard similarity of word sets at which one side (prompt or answer) of two "
        "examples is near-identical (0.7: recall 0.987 / precision 0.998 on reworded support messages).",
    )
    near_dup_min_words: int = Field(
        20,
        ge=1,
        description="Texts with fewer words are compared exactly only (same words in the same order): in short "
        "texts one word is a paraphrase or another intent, not a copy (at 0.7 a 20-word text may differ in 3 "
        "words). With it, CLINC150 loses 0 of 15,000 queries as near-duplicates, against 40% before.",
    )
    conflict_threshold: float = Field(
        0.8,
        gt=0.0,
        le=1.0,
        description="Estimated Jaccard of two prompts (any length) at which different answers count as a "
        "conflict: a class boundary or label noise, listed in the pre-flight.",
    )
    conflicts: Literal["keep", "drop", "error"] = Field(
        "keep",
        description="Conflicting answers (near-identical prompts, answers that do not match): `keep` both and "
        "list them, `drop` both sides of every pair, or `error` (exit 1, every pair listed).",
    )
    eval_files: Literal["keep", "clean"] = Field(
        "keep",
        description="Your own data.val / data.test files: `keep` them as given (every row evaluated; "
        "duplicates, degenerate answers, PII and conflicts in them are reported, not acted on), or `clean` "
        "them like the train files. Splits cut from the train files are cleaned with them either way.",
    )


class ContaminationConfig(_Strict):
    """Train examples that (nearly) duplicate held-out examples inflate every eval number."""

    threshold: float = Field(
        0.7,
        gt=0.0,
        le=1.0,
        description="A train example overlaps a held-out one when both sides match as for duplicates "
        "(data.clean.near_dup_min_words applies), at this estimated Jaccard of word sets.",
    )
    extra_eval_files: list[str] = Field(
        default_factory=list,
        description="Other benchmark files to keep out of training (any supported format).",
    )
    action: Literal["drop", "warn", "error"] = Field(
        "drop",
        description="`drop` the train side of each overlapping pair, `warn` only, or `error` (exit 1).",
    )

    @field_validator("extra_eval_files", mode="after")
    @classmethod
    def _exist(cls, v: list[str], info: ValidationInfo) -> list[str]:
        return [_resolve_path(p, info) for p in v]


COLUMN_FIELDS = (
    "text",
    "label",
    "instruction",
    "input",
    "output",
    "system",
    "prompt",
    "chosen",
    "rejected",
    "messages",
    "facts",
)


class ColumnsConfig(_Strict):
    """Which of your columns (JSON keys) holds each field, when your names are not the standard ones.
    Unset fields keep their standard names. `tunesmith init` writes this block from your file."""

    text: str | None = Field(None, description="Column with the input text (classification, raw text).")
    label: str | None = Field(None, description="Column with the label (classification).")
    instruction: str | None = Field(None, description="Column with the instruction (instruction rows).")
    input: str | None = Field(None, description="Column with the optional extra input (instruction rows).")
    output: str | None = Field(None, description="Column with the answer (instruction rows).")
    system: str | None = Field(None, description="Column with a per-row system prompt.")
    prompt: str | None = Field(None, description="Column with the prompt (preference pairs).")
    chosen: str | None = Field(None, description="Column with the preferred answer (preference pairs).")
    rejected: str | None = Field(None, description="Column with the other answer (preference pairs).")
    messages: str | None = Field(
        None, description="Column with the list of chat turns (ShareGPT's `conversations` is recognised)."
    )
    facts: str | None = Field(None, description="Column with the facts an answer must state (eval only).")
    role: str | None = Field(None, description="Key of a chat turn's role (ShareGPT: `from`).")
    content: str | None = Field(None, description="Key of a chat turn's text (ShareGPT: `value`).")
    roles: dict[str, Literal["system", "user", "assistant"]] = Field(
        default_factory=dict,
        description="Your role names -> system/user/assistant, e.g. `{human: user, gpt: assistant}`.",
    )
    ignore: list[str] = Field(
        default_factory=list,
        description="Columns to leave out of every example (ids, metadata); any other unknown column is an error.",
    )

    @model_validator(mode="after")
    def _distinct(self) -> ColumnsConfig:
        mapped = [(f, getattr(self, f)) for f in COLUMN_FIELDS if getattr(self, f) is not None]
        seen: dict[str, str] = {}
        for name, column in mapped:
            if column in seen:
                raise ValueError(f"column {column!r} is mapped to both {seen[column]} and {name}")
            if column in self.ignore:
                raise ValueError(f"column {column!r} is mapped to {name} and also in ignore")
            seen[column] = name
        return self

    def mapping(self) -> dict[str, str]:
        """Your column -> the standard field name, for the fields you mapped."""
        return {getattr(self, f): f for f in COLUMN_FIELDS if getattr(self, f) is not None}

    @property
    def is_default(self) -> bool:
        return self == ColumnsConfig()


class DataConfig(_Strict):
    train: list[str] = Field(
        ...,
        description="Training data: one path or a list (JSONL). Relative paths are read from the config's folder.",
    )
    val: list[str] = Field(
        default_factory=list, description="Validation files. Empty: split off from `train`."
    )
    test: list[str] = Field(
        default_factory=list, description="Held-out test files for evaluation. Empty: split off from `train`."
    )
    format: Literal["auto", "instruction", "chat", "classification", "text", "preference"] = Field(
        "auto",
        description="Row format, detected per row with `auto`: `instruction` ({instruction, input?, output}), `chat` "
        "({messages: [...]}), `classification` ({text, label}, e.g. CSV), `text` ({text}, raw text, also .txt/.md files), "
        "`preference` ({prompt, chosen, rejected}). ShareGPT rows ({conversations: [{from, value}]}) and OpenAI chat "
        "fine-tuning rows are chat rows. Other column names: `data.columns`. Files: JSONL, JSON arrays, CSV/TSV, "
        "Parquet, a folder of them, or a Hugging Face `datasets` folder (`save_to_disk`).",
    )
    columns: ColumnsConfig = Field(
        default_factory=ColumnsConfig,
        description="Your column names for the standard fields, e.g. `{text: query, label: intent}`.",
    )
    system_prompt: str | None = Field(
        None,
        description="System message put before every instruction-format example (train and inference alike).",
    )
    split: SplitConfig = Field(
        default_factory=SplitConfig, description="Split used when val/test files are not given."
    )
    clean: CleanConfig = Field(default_factory=CleanConfig, description="Cleaning steps.")
    contamination: ContaminationConfig = Field(
        default_factory=ContaminationConfig,
        description="Overlap check between train and val/test (and extra eval files).",
    )
    on_overlength: Literal["error", "drop", "truncate"] = Field(
        "error",
        description="Examples longer than train.max_length: `error` (list them), `drop` or `truncate` them (counted).",
    )
    cache: bool = Field(
        True,
        description="Reuse prepared splits when the data files' contents, these settings, train.max_length, the "
        "tokenizer and the data-stage code are all unchanged (kept under $TUNESMITH_HOME/prepared/).",
    )

    @field_validator("train", "val", "test", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("train", "val", "test", mode="after")
    @classmethod
    def _exist(cls, v: list[str], info: ValidationInfo) -> list[str]:
        return [_resolve_path(p, info) for p in v]

    @field_validator("train", mode="after")
    @classmethod
    def _not_empty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one training file is needed")
        return v


# What train.sharding: fsdp shards: the token objectives (DPO's reference pass and the classify head are not
# wired through the sharded forward).
SHARDABLE_OBJECTIVES = ("sft", "pretrain")
# Which methods read each option; a non-default value under any other method would be silently ignored.
METHOD_OPTIONS: dict[str, tuple[str, ...]] = {
    "r": LOW_RANK_METHODS,
    "alpha": LOW_RANK_METHODS,
    "dropout": LOW_RANK_METHODS,
    "target_modules": (*LOW_RANK_METHODS, "ia3"),
    "feedforward_modules": ("ia3",),
    "num_virtual_tokens": VIRTUAL_TOKEN_METHODS,
    "prompt_init_text": ("prompt",),
}


class MethodConfig(_Strict):
    """Which parameters are trained; each option applies to the methods named in its description."""

    name: MethodName = Field(
        "lora",
        description="Fine-tuning method. `full`: every weight trained (no peft; saves `model/`). "
        "`lora`: low-rank adapters. `dora`: LoRA plus a learned magnitude per output feature (better at low rank, "
        "slower steps). `qlora`: LoRA on a 4-bit NF4 base (needs a CUDA GPU and bitsandbytes). "
        "`prefix`: trained key/value vectors in every layer. `prompt`: trained input embeddings "
        "before the prompt. `ia3`: learned scaling vectors on a few projections. "
        "Every method but `full` trains a peft adapter and saves `adapter/`.",
    )
    r: int = Field(16, gt=0, le=1024, description="LoRA rank (lora, dora, qlora).")
    alpha: float = Field(
        32.0, gt=0, description="LoRA scaling numerator, scale = alpha / r (lora, dora, qlora)."
    )
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA branch (lora, dora, qlora).")
    target_modules: list[str] | Literal["all-linear"] | None = Field(
        None,
        description="Modules to adapt, by name (e.g. [q_proj, v_proj]) or `all-linear` (lora, dora, qlora, "
        "ia3). Default: `all-linear` for the LoRA family; for ia3 peft's choice for the architecture "
        "(Llama: k_proj, v_proj, down_proj).",
    )
    feedforward_modules: list[str] | None = Field(
        None,
        description="ia3: the target modules whose input (not output) is scaled, as in the IA3 paper's "
        "feed-forward layers; a subset of `target_modules`. Default: peft's choice for the architecture "
        "(Llama: down_proj).",
    )
    num_virtual_tokens: int = Field(
        20, gt=0, le=512, description="Trained virtual tokens (prefix, prompt); they take context length."
    )
    prompt_init_text: str | None = Field(
        None,
        min_length=1,
        description="prompt: start the virtual tokens from the embeddings of this text (e.g. a short "
        "task description; repeated or cut to `num_virtual_tokens`) instead of random vocabulary rows.",
    )

    @model_validator(mode="after")
    def _options_fit_method(self) -> MethodConfig:
        problems = []
        for option, methods in METHOD_OPTIONS.items():
            if self.name not in methods and getattr(self, option) != type(self).model_fields[option].default:
                problems.append(
                    f"`{option}` applies to {', '.join(methods)}, not to `{self.name}`: remove it "
                    "or choose one of those methods"
                )
        ff, target = self.feedforward_modules, self.target_modules
        if ff is not None and isinstance(target, list) and not set(ff) <= set(target):
            problems.append(
                f"feedforward_modules {sorted(set(ff) - set(target))} are not in target_modules {target}"
            )
        if target is not None and not target:
            problems.append("target_modules is empty; name at least one module or use all-linear")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class TrainConfig(_Strict):
    objective: Literal["sft", "pretrain", "dpo", "classify"] = Field(
        "sft",
        description="`sft`: instruction/chat rows, loss on assistant turns. `pretrain`: continued pre-training "
        "on raw text ({text} rows, .txt/.md folders) packed into full max_length blocks, loss on every token. "
        "`dpo`: preference pairs ({prompt, chosen, rejected}); the reference model is the base with the adapter "
        "disabled. `classify`: a sequence-classification head on the last prompt token (an encoder base: on its "
        "[CLS] token, plain text without a chat template or system prompt; methods full, lora, dora, ia3), trained "
        "on labelled rows (CSV text,label or any rows whose answer is the label); evaluated as accuracy/F1 with "
        "label probabilities.",
    )
    dpo_beta: float = Field(
        0.1, gt=0, description="DPO: strength of the pull towards the reference model (higher: stay closer)."
    )
    track: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(
        default_factory=list,
        description="Experiment trackers that also receive every metrics.jsonl record (through accelerate): "
        "`tensorboard` (logs under the run's `tracking/`), `mlflow`, `wandb` (each needs its package: "
        "`pip install tunesmith[track]`).",
    )
    recipe: Literal["auto", "manual"] = Field(
        "auto",
        description="`auto`: the settings below that the config leaves out are derived from the data and the "
        "method, each printed with its reason and stored in the run's manifest (`recipe`): `lr` 1e-3 for "
        "lora/dora/qlora on a base under 1B parameters, 2e-4 from 1B; ia3 3e-3; full 5e-5, 1e-4 on a BERT-family "
        "encoder (prefix, prompt: the default below); `batch_size` 16 when 95% of the training examples are at "
        "most 256 tokens, 8 up to 1024, else 4; `epochs` (without `max_steps`) enough for 150 optimizer steps, "
        "in whole epochs, 1 to 6 (an encoder: 750 steps, 1 to 8); `eval_every` "
        "about 8 evaluations per run (at least every 10 steps). What you set is kept. `manual`: the defaults "
        "below as they are.",
    )
    lr: float = Field(2e-4, gt=0, description="Peak learning rate (AdamW).")
    head_lr: float | None = Field(
        None,
        gt=0,
        description="`classify`: peak learning rate of the new classification head, its own parameter group "
        "(default: HEAD_LR_RATIO x `lr`; a freshly initialised head trained at an adapter's rate barely moves).",
    )
    epochs: float = Field(
        1.0, gt=0, description="Passes over the training split (ignored when max_steps is set)."
    )
    max_steps: int | None = Field(None, gt=0, description="Optimizer steps to run; overrides `epochs`.")
    batch_size: int = Field(8, gt=0, description="Examples per micro-batch.")
    grad_accum: int = Field(1, gt=0, description="Micro-batches per optimizer step.")
    max_length: int = Field(
        512, gt=8, description="Longest tokenized example; longer ones are an error (never silently cut)."
    )
    warmup_ratio: float = Field(
        0.1, ge=0.0, lt=1.0, description="Share of steps with linear lr warm-up, before cosine decay."
    )
    min_lr_ratio: float = Field(
        0.1, ge=0.0, le=1.0, description="Floor of the cosine schedule as a share of `lr`."
    )
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    seed: int = Field(0, description="Seed for weights init, shuffling and dropout.")
    eval_every: int = Field(
        20, gt=0, description="Compute validation loss every N optimizer steps (and at the end)."
    )
    threads: int | None = Field(
        None,
        gt=0,
        description="CPU threads for torch (default: OMP_NUM_THREADS when set, else every CPU this process may use).",
    )
    group_by_length: bool = Field(
        True,
        description="Batch examples of similar length together (less padding, same randomness across windows).",
    )
    packing: bool = Field(
        False,
        description="Padding-free batches (sft, pretrain): a micro-batch's examples end to end in one row with "
        "restarting position ids and a block-diagonal attention mask, so no example sees another and no compute "
        "goes to padding. Same loss and gradients as padded batches. Off by default: on CPU, attention over "
        "the whole row costs more than the little padding that length grouping leaves.",
    )
    save_every: int = Field(
        0,
        ge=0,
        description="Save a checkpoint (trainable weights, optimizer, RNG, data position) every N optimizer steps "
        "into `checkpoints/step-N/`, written atomically; 0: only at the end. `tunesmith train RUN_DIR --resume` "
        "continues from the latest.",
    )
    keep_checkpoints: int = Field(
        2, ge=1, description="Checkpoints kept on disk: the last N, plus the one with the best val loss."
    )
    early_stopping: bool = Field(
        False,
        description="Stop when val loss has not improved by `min_delta` for `patience` evaluations; the final "
        "adapter is the best-val checkpoint's weights (a checkpoint is also saved at every new best).",
    )
    patience: int = Field(
        3,
        gt=0,
        description="Evaluations without a new best val loss before early stopping, and before the overfitting "
        "warning (val loss up while train loss fell; printed and recorded in metrics.jsonl).",
    )
    min_delta: float = Field(
        0.0, ge=0.0, description="Smallest fall of val loss that counts as an improvement."
    )
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto",
        description="Compute precision. `auto`: bf16 autocast on CUDA GPUs with bf16 and on CPUs with AVX512-BF16 "
        "or AMX, fp32 otherwise; `bf16` where the hardware lacks it is an error. Weights and optimizer stay fp32.",
    )
    gradient_checkpointing: bool | Literal["auto"] = Field(
        "auto",
        description="Recompute each layer's activations in the backward pass (less memory, ~1/3 more compute). "
        "`auto`: on only when the memory plan does not fit without it.",
    )
    kernels: Literal["none", "liger"] = Field(
        "none",
        description="`liger`: Liger's Triton kernels on a CUDA GPU (RMSNorm, RoPE, SwiGLU, and the output head fused "
        "with the cross-entropy so the logits are never held in memory); needs `pip install liger-kernel`. "
        "Without CUDA the run stops before any model loads (exit 2) with the fix.",
    )
    attention: Literal["auto", "sdpa", "eager", "flash_attention_2"] = Field(
        "auto",
        description="Attention implementation while training. `auto`: flash-attention 2 on a CUDA GPU in bf16 when "
        "`flash-attn` is installed (packed batches then run variable-length attention, each example on its own, "
        "no mask built), SDPA elsewhere. `flash_attention_2` without CUDA or flash-attn stops before any model "
        "loads (exit 2) with the fix.",
    )
    compile: bool = Field(
        False,
        description="Run the decoder through `torch.compile` (inductor; CPU needs a C++ compiler). The first "
        "steps pay for compilation; see benchmarks/train_throughput.py (arm `tunesmith-compile`) for whether it "
        "pays off on your machine.",
    )
    heap: Literal["auto", "compact", "fast"] = Field(
        "auto",
        description="CPU memory allocator policy while training (glibc). `compact`: tensors above 128 KiB get their "
        "own pages, returned when freed, so resident memory stays at what the tensors need (the memory plan's "
        "figure). `fast`: freed memory is kept and reused, 1.7-1.8x the tokens/s on CPU for up to ~1.5x the resident "
        "memory (benchmarks/train_throughput.py). `auto`: `fast` when 1.5x the plan's peak fits in available "
        "memory, else `compact`. A MALLOC_MMAP_THRESHOLD_ in the environment overrides it.",
    )
    sharding: Literal["none", "fsdp"] = Field(
        "none",
        description="Under `torchrun`/`accelerate launch` with several processes: `none` keeps a full copy of the "
        "model on every process (data parallel); `fsdp` shards parameters, gradients and optimizer state across "
        "the processes (PyTorch FSDP2, one unit per decoder layer), for models whose training state does not fit "
        "one device. Same loss curve either way; checkpoints and the saved adapter/model are the one-process "
        "format. Ignored with one process. Methods full, lora, dora, ia3; objectives sft and pretrain.",
    )


EvalMetric = Literal[
    "exact_match",
    "token_f1",
    "rouge_l",
    "accuracy",
    "json_valid",
    "field_accuracy",
    "bleu",
    "chrf",
    "classification",
    "perplexity",
    "facts",
    "readability",
    "hallucination",
]
# Config metric -> the metric names it puts in the comparison table (and that targets may name).
_METRIC_ROWS = {"classification": "macro_f1"}


class EvalConfig(_Strict):
    metrics: list[EvalMetric] = Field(
        default_factory=lambda: ["exact_match", "token_f1", "rouge_l"],  # type: ignore[arg-type]
        description="Metrics on the test split. `accuracy`: outputs are labels (case-insensitive exact match, "
        "with McNemar's test); `classification`: labels scored by scikit-learn (macro/micro F1, precision, recall, "
        "per-label scores, confusion matrix; table row `macro_f1`); `json_valid`/`field_accuracy`: outputs are "
        "JSON objects, scored per field in `json_fields`; `bleu`/`chrf`: sacrebleu sentence scores / 100; "
        "`perplexity`: of the reference answers under each model (lower is better); `facts`: share of a row's "
        "`facts` found in the output; `readability`: Flesch-Kincaid grade of the output; `hallucination`: share "
        "of outputs stating a number, date, amount, id, name or quoted label found in neither the prompt nor the "
        "reference (lower is better).",
    )
    json_fields: list[str] = Field(
        default_factory=list,
        description="Fields scored by `field_accuracy` (one metric each: field_accuracy.<name>).",
    )
    primary_metric: str | None = Field(
        None, description="The metric the verdict and report lead with (default: the first metric)."
    )
    max_new_tokens: int = Field(64, gt=0, le=4096, description="Generation budget per test example.")
    constrain: Literal["auto", "off"] = Field(
        "auto",
        description="`auto`: when the training answers form a closed set, test answers are decoded inside "
        "it, in eval and in `serve`: labels (at most 512 distinct answers of at most 6 words, 2+ rows each "
        "on average) through a prefix tree over their tokens; JSON objects (every answer one) through the "
        "schema they imply (keys, types, `enum` for string fields of at most 64 values seen 3+ times each "
        "on average), with lm-format-enforcer. For labels the report adds the share of unconstrained "
        "outputs that were no label. `off`: free generation.",
    )
    batch_size: int = Field(16, gt=0, description="Prompts generated together (left-padded, KV cache).")
    limit: int | None = Field(None, gt=0, description="Evaluate only the first N test examples.")
    samples_in_report: int = Field(12, ge=0, description="Side-by-side examples shown in the report.")
    latency_probe: int = Field(
        4, ge=0, description="Test prompts also generated one at a time, for single-request latency."
    )
    forgetting_probe: bool = Field(
        True,
        description="Score base and tuned on the shipped general-knowledge questions and general text.",
    )
    forgetting_margin: float = Field(
        0.05,
        ge=0,
        description="Warn when the tuned model's probe accuracy is this much (absolute) below the base "
        "model's, or its perplexity on the general text this much (relative) above.",
    )

    @model_validator(mode="after")
    def _fields_named(self) -> EvalConfig:
        if "field_accuracy" in self.metrics and not self.json_fields:
            raise ValueError("`field_accuracy` needs `json_fields`, e.g. json_fields: [queue, priority]")
        if self.primary_metric is not None and self.primary_metric not in self.metric_names():
            raise ValueError(
                f"primary_metric {self.primary_metric!r} is not computed; choose one of {self.metric_names()}"
            )
        return self

    def metric_names(self) -> list[str]:
        names: list[str] = []
        for m in self.metrics:
            if m == "field_accuracy":
                names += [f"field_accuracy.{f}" for f in self.json_fields]
            else:
                names.append(_METRIC_ROWS.get(m, m))
        return names

    @property
    def primary(self) -> str:
        return self.primary_metric or self.metric_names()[0]


_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
}
_TARGET_RE = re.compile(r"^\s*(>=|<=|>|<)\s*([-+]?\d*\.?\d+(?:[eE][-+]?\d+)?)\s*$")


@dataclass(frozen=True)
class Target:
    metric: str
    op: str
    value: float

    def met(self, x: float) -> bool:
        return _OPS[self.op](x, self.value)

    def __str__(self) -> str:
        return f"{self.op} {self.value:g}"


def parse_target(metric: str, spec: str | float) -> Target:
    if isinstance(spec, int | float):
        return Target(metric, ">=", float(spec))
    m = _TARGET_RE.match(str(spec))
    if not m:
        raise ValueError(f"target {spec!r} is not of the form '>= 0.8' (operators: >=, >, <=, <)")
    return Target(metric, m.group(1), float(m.group(2)))


# --------------------------------------------------------------------------------------------------
# `tunesmith tune`: the search space and its limits

# Dimension -> its kind: `float`/`int` take ranges or lists, `choice` takes lists of names.
TUNE_DIMENSIONS: dict[str, Literal["float", "int", "choice"]] = {
    "model": "choice",
    "train.lr": "float",
    "train.epochs": "float",
    "train.max_steps": "int",
    "train.batch_size": "int",
    "train.head_lr": "float",
    "train.objective": "choice",
    "method.name": "choice",
    "method.r": "int",
    "method.alpha": "float",
    "method.dropout": "float",
}
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(h|m|s)")


def parse_duration(text: str | float) -> float:
    """`45m`, `2h`, `1h30m`, `90s`, or a number of seconds -> seconds."""
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        s = str(text).strip().lower().replace(" ", "")
        if re.fullmatch(r"\d+(?:\.\d+)?", s):
            seconds = float(s)
        elif s and _DURATION_RE.sub("", s) == "":
            unit = {"h": 3600.0, "m": 60.0, "s": 1.0}
            seconds = sum(float(n) * unit[u] for n, u in _DURATION_RE.findall(s))
        else:
            raise ValueError(f"{text!r} is not a duration like 45m, 2h, 1h30m or 90s")
    if seconds <= 0:
        raise ValueError(f"duration {text!r} must be more than 0 seconds")
    return seconds


TuneScalar = bool | int | float | str


class TuneRange(_Strict):
    """A numeric range of one search dimension."""

    low: float = Field(..., description="Smallest value.")
    high: float = Field(..., description="Largest value.")
    log: bool | None = Field(
        None, description="Sample on a log scale (default: yes for learning rates, no otherwise)."
    )

    @model_validator(mode="after")
    def _ordered(self) -> TuneRange:
        if not self.low < self.high:
            raise ValueError(
                f"low ({self.low:g}) must be below high ({self.high:g}); a single value fixes it"
            )
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got {self.low:g}")
        return self


def _check_dimension(name: str, value: Any) -> str | None:
    """What is wrong with `name: value` in tune.space (None: nothing)."""
    kind = TUNE_DIMENSIONS.get(name)
    if kind is None:
        close = difflib.get_close_matches(name, list(TUNE_DIMENSIONS), n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(TUNE_DIMENSIONS)}"
        return f"{name}: not a search dimension ({hint})"
    if isinstance(value, TuneRange):
        if kind == "choice":
            return f"{name}: takes a value or a list of names, not a range"
        if kind == "int" and not (value.low.is_integer() and value.high.is_integer()):
            return f"{name}: an integer range needs whole numbers, got {value.low:g}..{value.high:g}"
        return None
    values = value if isinstance(value, list) else [value]
    if not values:
        return f"{name}: an empty list; give a value, a list of values or {{low, high}}"
    for v in values:
        numeric = isinstance(v, int | float) and not isinstance(v, bool)
        if kind == "choice" and not isinstance(v, str):
            return f"{name}: {v!r} is not a name"
        if kind != "choice" and not numeric:
            return f"{name}: {v!r} is not a number"
        if kind == "int" and numeric and not float(v).is_integer():
            return f"{name}: {v!r} is not a whole number"
    return None


class TuneConfig(_Strict):
    """`tunesmith tune`: trials of train + val scoring until the targets pass on val, or the budget ends.
    The space holds every dimension that applies to the config (README, "Tune"); `space` narrows or fixes it."""

    budget: str | None = Field(
        None,
        description="Wall-clock time of one `tunesmith tune` worker, e.g. `45m`, `2h`, `1h30m` (`--budget` "
        "overrides it). A trial that would not finish in the time left does not start.",
    )
    trials: int | None = Field(
        None,
        gt=0,
        description="Trials of the study, all workers and resumes together: complete, pruned, or failed with "
        "an error (a killed trial does not count). `--trials` overrides it.",
    )
    space: dict[str, TuneRange | list[TuneScalar] | TuneScalar] = Field(
        default_factory=dict,
        description="Dimension -> a value (fixed: not searched), a list (choices) or `{low, high, log}` (a "
        f"range). Dimensions: {', '.join(TUNE_DIMENSIONS)}. Dimensions left out keep their defaults.",
    )
    first_trials: list[dict[str, TuneScalar]] | None = Field(
        None,
        description="Trials run first, in order (dimension -> value; the rest sampled). Default: the config's "
        "own recipe (its values that lie in the space), so the search starts from what you wrote.",
    )
    val_limit: int | None = Field(
        200,
        gt=0,
        description="Val examples each trial is scored on (the first N; null: all). The chosen trial is then "
        "scored once on the whole test split.",
    )
    stop: Literal["met", "pass", "never"] = Field(
        "met",
        description="When the search ends before its budget: `met`, a trial whose val scores meet every target; "
        "`pass`, one whose val 95% CIs clear every target (the run verdict's PASS); `never`, use the whole budget.",
    )
    pruner: Literal["median", "halving", "none"] = Field(
        "median",
        description="Stop weak trials at a val evaluation (every train.eval_every steps): `median`, worse than "
        "the median of earlier trials at that step (Optuna's MedianPruner); `halving`, Optuna's "
        "SuccessiveHalvingPruner; `none`.",
    )
    prune_startup_trials: int = Field(2, ge=0, description="Complete trials before any trial can be pruned.")
    prune_warmup_evals: int = Field(
        1, ge=0, description="Val evaluations of a trial before it can be pruned (early val loss is noisy)."
    )
    startup_trials: int = Field(
        5,
        ge=0,
        description="Random trials before the TPE sampler models the results (first_trials included).",
    )

    @field_validator("budget", mode="after")
    @classmethod
    def _duration(cls, v: str | None) -> str | None:
        if v is not None:
            parse_duration(v)
        return v

    @model_validator(mode="after")
    def _dimensions(self) -> TuneConfig:
        problems = [p for name, value in self.space.items() if (p := _check_dimension(name, value))]
        for i, trial in enumerate(self.first_trials or []):
            problems += [f"first_trials[{i}].{p}" for n, v in trial.items() if (p := _check_dimension(n, v))]
        if "train.epochs" in self.space and "train.max_steps" in self.space:
            problems.append("give train.epochs or train.max_steps, not both (max_steps overrides epochs)")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class RunConfig(_Strict):
    """The whole configuration of one run (`tunesmith.yaml`)."""

    name: str = Field(
        "run",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="Run name; run ids are `<name>-<timestamp>`.",
    )
    model: str = Field(
        "builtin:smollm2-135m-instruct",
        description="Base model: `builtin:smollm2-135m-instruct`, `builtin:all-minilm-l6-v2` (a BERT encoder, for "
        "`train.objective: classify` only), a local Hugging Face model folder, a hub id (needs internet), "
        "or `run:ID`, a registered run in `runs_dir` to continue fine-tuning from (its merged weights; the new run's "
        "manifest names it as parent).",
    )
    runs_dir: str = Field("runs", description="Folder for run directories, relative to the config file.")
    data: DataConfig = Field(..., description="Where the examples are and how they are read.")
    method: MethodConfig = Field(default_factory=MethodConfig, description="Fine-tuning method.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Optimisation settings.")
    eval: EvalConfig = Field(
        default_factory=EvalConfig, description="Base-vs-tuned evaluation on the test split."
    )
    targets: dict[str, str | float] = Field(
        default_factory=dict,
        description='Success criteria, metric -> condition, e.g. `accuracy: ">= 0.8"`. A missed target makes `tunesmith run` exit 1.',
    )
    tune: TuneConfig | None = Field(
        None,
        description="`tunesmith tune`: the search space and its limits (optional; the command searches the "
        "dimensions that apply to the config without it).",
    )

    @field_validator("runs_dir", mode="after")
    @classmethod
    def _runs_dir(cls, v: str, info: ValidationInfo) -> str:
        base = Path((info.context or {}).get("base_dir", "."))
        p = Path(v).expanduser()
        return str((p if p.is_absolute() else base / p).resolve())

    @model_validator(mode="after")
    def _sharding_fits(self) -> RunConfig:
        """train.sharding: fsdp with what it cannot shard. Checked here, before any weights load; with one
        process fsdp is ignored, but a config that names both is refused the same everywhere."""
        tc = self.train
        if tc.sharding != "fsdp":
            return self
        keep = "data-parallel with a full copy per process"
        if self.method.name not in SHARDABLE_METHODS:
            raise ValueError(
                f"train.sharding: fsdp does not support method.name: {self.method.name} (supported: "
                f"{', '.join(SHARDABLE_METHODS)}); set train.sharding: none to train it {keep}"
            )
        if tc.objective not in SHARDABLE_OBJECTIVES:
            raise ValueError(
                f"train.sharding: fsdp does not support train.objective: {tc.objective} (supported: "
                f"{', '.join(SHARDABLE_OBJECTIVES)}); set train.sharding: none to train it {keep}"
            )
        if tc.compile:
            raise ValueError(
                "train.compile with train.sharding: fsdp is not supported; set train.compile: false to shard, "
                "or train.sharding: none to compile"
            )
        if tc.kernels == "liger":
            raise ValueError(
                "train.kernels: liger with train.sharding: fsdp is not supported; set train.kernels: none to shard, "
                "or train.sharding: none to use the kernels"
            )
        return self

    @model_validator(mode="after")
    def _packing_fits(self) -> RunConfig:
        if self.train.packing and self.train.objective not in ("sft", "pretrain"):
            raise ValueError(
                f"train.packing works with objective sft or pretrain, not {self.train.objective}"
            )
        if self.train.packing and self.method.name in VIRTUAL_TOKEN_METHODS:
            raise ValueError(
                f"train.packing cannot be used with method {self.method.name}: its virtual tokens would be shared "
                "by every packed example; turn packing off"
            )
        return self

    @model_validator(mode="after")
    def _early_stopping_has_val(self) -> RunConfig:
        if self.train.early_stopping and not self.data.val and self.data.split.val == 0:
            raise ValueError(
                "train.early_stopping needs validation data: set data.split.val > 0 or give data.val files"
            )
        return self

    @model_validator(mode="after")
    def _targets_known(self) -> RunConfig:
        names = self.eval.metric_names()
        problems = []
        for metric, spec in self.targets.items():
            if metric not in names:
                problems.append(
                    f"target metric {metric!r} is not computed by eval.metrics ({', '.join(names)})"
                )
                continue
            try:
                parse_target(metric, spec)
            except ValueError as e:
                problems.append(str(e))
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def parsed_targets(self) -> list[Target]:
        return [parse_target(m, s) for m, s in self.targets.items()]


# --------------------------------------------------------------------------------------------------
# Loading, overrides and error reporting


@dataclass(frozen=True)
class ConfigIssue:
    path: str
    message: str
    fix: str = ""

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" + (f" ({self.fix})" if self.fix else "")


class ConfigError(Exception):
    """All problems of one configuration, reported together."""

    def __init__(self, source: str, issues: Sequence[ConfigIssue]):
        self.source = source
        self.issues = list(issues)
        lines = "\n".join(f"  - {i}" for i in self.issues)
        super().__init__(f"{source}: {len(self.issues)} problem(s) in the configuration:\n{lines}")


def _section(ann: Any) -> type[BaseModel] | None:
    """The model of a nested section, also an optional one (`TuneConfig | None`)."""
    import types
    import typing

    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        if len(args) == 1 and isinstance(args[0], type) and issubclass(args[0], BaseModel):
            return args[0]
    return None


def _model_for(path: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The pydantic model that owns the field at `path` (for 'did you mean' suggestions)."""
    model: type[BaseModel] | None = RunConfig
    for part in path:
        if model is None or not isinstance(part, str) or part not in model.model_fields:
            return None
        model = _section(model.model_fields[part].annotation)
    return model


def _issues_from(err: ValidationError) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    for e in err.errors():
        loc = tuple(e["loc"])
        path = ".".join(str(p) for p in loc) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        fix = ""
        if e["type"] == "extra_forbidden":
            owner = _model_for(loc[:-1])
            known = list(owner.model_fields) if owner else []
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            msg = "unknown key"
            fix = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(known)}"
        elif e["type"] == "missing":
            fix = "add it to the config"
        elif e["type"] in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
            msg = f"{msg}, got {e.get('input')!r}"
        elif "file not found" in msg:
            fix = "check the path; relative paths are read from the config file's folder"
        issues.append(ConfigIssue(path, msg, fix))
    return issues


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ValueError(f"override {text!r} is not of the form key.path=value (e.g. train.lr=1e-4)")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else ""
    # YAML 1.1 reads 1e-4 as a string; a user typing it means a number.
    if isinstance(value, str) and re.fullmatch(r"[-+]?\d*\.?\d+[eE][-+]?\d+", value):
        value = float(value)
    return key.strip().split("."), value


def apply_overrides(raw: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    out = _deep_copy(raw)
    for text in overrides:
        keys, value = parse_override(text)
        node = out
        for k in keys[:-1]:
            nxt = node.get(k)
            if not isinstance(nxt, dict):
                nxt = {}
                node[k] = nxt
            node = nxt
        node[keys[-1]] = value
    return out


def _deep_copy(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in d.items()}


class _NumberLoader(yaml.SafeLoader):
    """SafeLoader that reads 1e-4 as a float (YAML 1.1 insists on a dot: 1.0e-4)."""


_NumberLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> RunConfig:
    """Read, override and validate a config file; raise ConfigError listing every problem."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(str(path), [ConfigIssue("(file)", "config file not found", "check the path")])
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_NumberLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "(file)"
        raise ConfigError(
            str(path), [ConfigIssue(where, f"not valid YAML: {e}", "fix the YAML syntax")]
        ) from e
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(
            str(path), [ConfigIssue("(top level)", "must be a mapping of keys", "see the config reference")]
        )
    try:
        raw = apply_overrides(raw, overrides)
    except ValueError as e:
        raise ConfigError(str(path), [ConfigIssue("(override)", str(e))]) from e
    return validate_config(raw, base_dir=path.parent, source=str(path))


def load_run_config(run_dir: Path) -> RunConfig:
    """The config a run trained with: its resolved.yaml (recipe applied, every default written out)."""
    path = run_dir / "resolved.yaml"
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    return validate_config(raw, base_dir=run_dir, source=str(path))


def validate_config(
    raw: Mapping[str, Any], base_dir: str | Path = ".", source: str = "<config>"
) -> RunConfig:
    try:
        return RunConfig.model_validate(raw, context={"base_dir": str(base_dir)})
    except ValidationError as e:
        raise ConfigError(source, _issues_from(e)) from None


def _type_name(ann: Any) -> str:
    """`int`, `list[str]`, `'auto' or 'chat'`: types as a reader of the YAML sees them."""
    import types
    import typing

    origin = typing.get_origin(ann)
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(ann))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(ann)).replace("NoneType", "null")
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in typing.get_args(ann))}]"
    return getattr(ann, "__name__", str(ann))


def config_reference() -> str:
    """Markdown reference of every key, generated from the schema (README embeds it)."""
    lines = ["| key | type | default | description |", "| --- | --- | --- | --- |"]

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, f in model.model_fields.items():
            ann = f.annotation
            key = f"{prefix}{name}"
            section = _section(ann)
            if section is not None:
                lines.append(f"| `{key}` | section | | {f.description or ''} |")
                walk(section, key + ".")
                continue
            if f.is_required():
                default = "required"
            elif f.default_factory is not None:
                default = f"`{f.default_factory()!r}`"  # type: ignore[call-arg]
            else:
                default = f"`{f.default!r}`"
            tname = _type_name(ann)
            lines.append(f"| `{key}` | {tname} | {default} | {f.description or ''} |")

    walk(RunConfig, "")
    return "\n".join(lines)
