"""Fine-tuning method -> a model with exactly the intended parameters trainable, and how it is saved."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith.config import MethodConfig, TrainConfig
from tunesmith.io import atomic_dir
from tunesmith.method_traits import ENCODER_METHODS, LOW_RANK_METHODS, PEFT_METHODS
from tunesmith.models import ModelError
from tunesmith.train.prefix import adapt_peft_model

if TYPE_CHECKING:
    from peft import PeftConfig
    from torch import nn
    from transformers import PreTrainedTokenizerBase


QLORA_FIX = "needs a CUDA GPU and `pip install bitsandbytes`; use method.name: lora on CPU"


class MethodUnavailableError(Exception):
    """The configured method cannot run here (hardware, packages or architecture), with the fix."""


class ArchitectureError(MethodUnavailableError, ModelError):
    """The base model's architecture cannot train this objective or method (an encoder for `sft`): a
    configuration error (exit 2 where a method error is), and a model error to the commands that only
    read data."""


def check_base_model(method: MethodConfig, objective: str, model_path: str, model: str | None = None) -> None:
    """Fail before any weights load when the base at `model_path` (the config's `model`) cannot train
    `objective` with `method`: an encoder has no language-model head (classify only), and tunesmith gives
    its virtual-token methods no [CLS] to read (prefix, prompt) and quantizes no encoder (qlora)."""
    from tunesmith.models import is_encoder

    if not is_encoder(model_path):
        return
    name = model or model_path
    if objective != "classify":
        raise ArchitectureError(
            f"model {name} is an encoder (BERT family): it reads text but does not generate it, so it cannot "
            f"train train.objective: {objective}. Use train.objective: classify on labelled rows, or a "
            "decoder (e.g. model: builtin:smollm2-135m-instruct) for sft, dpo and pretrain"
        )
    if method.name not in ENCODER_METHODS:
        raise ArchitectureError(
            f"method.name: {method.name} is not supported with an encoder base (model {name}); "
            f"use method.name: {' / '.join(ENCODER_METHODS)} (lora is the small adapter, full the best "
            "accuracy for a model this size)"
        )


def has_bitsandbytes() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


def check_method_available(method: MethodConfig, kernels: str = "none", attention: str = "auto") -> None:
    """Fail before any model loads when this machine cannot run the method (qlora: CUDA + bitsandbytes),
    the kernels (`train.kernels: liger`: CUDA + liger-kernel) or the attention (`train.attention:
    flash_attention_2`: CUDA + flash-attn)."""
    from tunesmith.train.kernels import ATTENTION_FIX, LIGER_FIX, attention_missing, kernels_missing

    missing_kernels = kernels_missing(kernels)
    if missing_kernels:
        raise MethodUnavailableError(
            f"train.kernels: {kernels} cannot run here ({'; '.join(missing_kernels)}); {LIGER_FIX}"
        )
    missing_attention = attention_missing(attention)
    if missing_attention:
        raise MethodUnavailableError(
            f"train.attention: {attention} cannot run here ({'; '.join(missing_attention)}); {ATTENTION_FIX}"
        )
    if method.name != "qlora":
        return
    import torch

    missing = []
    if not torch.cuda.is_available():
        missing.append("no CUDA GPU is visible")
    if not has_bitsandbytes():
        missing.append("bitsandbytes is not installed")
    if missing:
        raise MethodUnavailableError(f"method.name: qlora {QLORA_FIX} (here: {'; '.join(missing)})")


def output_dir_name(method: MethodConfig) -> str:
    """`adapter` for peft methods (small, applied onto the base), `model` for a full fine-tune."""
    return "adapter" if method.name in PEFT_METHODS else "model"


def peft_config(
    method: MethodConfig, tokenizer_path: str | None = None, classification: bool = False
) -> PeftConfig:
    """The peft configuration of a peft method (see MethodConfig for what each option means)."""
    from peft import (
        IA3Config,
        LoraConfig,
        PrefixTuningConfig,
        PromptTuningConfig,
        PromptTuningInit,
        TaskType,
    )

    # SEQ_CLS also makes peft train and save the new classification head (`score`) in full.
    task = TaskType.SEQ_CLS if classification else TaskType.CAUSAL_LM
    target = method.target_modules
    if method.name in LOW_RANK_METHODS:
        return LoraConfig(
            r=method.r,
            lora_alpha=method.alpha,  # type: ignore[arg-type]  # peft annotates int; floats work
            lora_dropout=method.dropout,
            target_modules="all-linear" if target is None else target,
            use_dora=method.name == "dora",
            task_type=task,
        )
    if method.name == "ia3":
        # None lets peft pick the modules of the architecture (Llama: k_proj, v_proj, down_proj).
        return IA3Config(
            target_modules=target, feedforward_modules=method.feedforward_modules, task_type=task
        )
    if method.name == "prefix":
        return PrefixTuningConfig(num_virtual_tokens=method.num_virtual_tokens, task_type=task)
    if method.name == "prompt":
        if method.prompt_init_text is None:
            # peft's default (RANDOM) draws N(0, 1) vectors, far larger than real token embeddings, and the
            # first steps are spent shrinking them; rows of the vocabulary start in the right range.
            return PromptTuningConfig(
                num_virtual_tokens=method.num_virtual_tokens,
                prompt_tuning_init=PromptTuningInit.SAMPLE_VOCAB,
                task_type=task,
            )
        if tokenizer_path is None:
            raise ValueError("prompt_init_text needs the tokenizer's path to tokenize the text")
        return PromptTuningConfig(
            num_virtual_tokens=method.num_virtual_tokens,
            prompt_tuning_init=PromptTuningInit.TEXT,
            prompt_tuning_init_text=method.prompt_init_text,
            tokenizer_name_or_path=tokenizer_path,
            task_type=task,
        )
    raise ValueError(f"{method.name!r} is not a peft method")


def _check_ia3_defaults(model: nn.Module, method: MethodConfig) -> None:
    from peft.utils.constants import (
        TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as FF,
    )
    from peft.utils.constants import (
        TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as TARGETS,
    )

    model_type = getattr(getattr(model, "config", None), "model_type", "?")
    unknown = [
        key
        for key, table in (("target_modules", TARGETS), ("feedforward_modules", FF))
        if getattr(method, key) is None and model_type not in table
    ]
    if unknown:
        raise MethodUnavailableError(
            f"ia3 has no default {' or '.join(unknown)} for model type {model_type!r}; "
            f"set method.{' and method.'.join(unknown)} (the names of its linear layers)"
        )


def apply_method(
    model: nn.Module, method: MethodConfig, tokenizer: PreTrainedTokenizerBase | None = None
) -> nn.Module:
    """Make exactly the method's parameters trainable: all of them (`full`) or a peft adapter's."""
    if method.name == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    from peft import get_peft_model

    if method.name == "qlora":
        from peft import prepare_model_for_kbit_training

        if not getattr(model, "is_loaded_in_4bit", False):
            raise MethodUnavailableError(
                "qlora trains on a 4-bit base: load it with load_model(path, load_in_4bit=True)"
            )
        # Freezes the quantized base, keeps norms in fp32, and checkpoints activations (non-reentrant: the
        # frozen embedding output needs no grad hook): QLoRA's point is memory, so it takes the recompute.
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False}
        )
    if method.name == "ia3":
        _check_ia3_defaults(model, method)
    tokenizer_path = getattr(tokenizer, "name_or_path", None) if tokenizer is not None else None
    classification = type(model).__name__.endswith("ForSequenceClassification")
    return adapt_peft_model(get_peft_model(model, peft_config(method, tokenizer_path, classification)))


def load_adapter(base: nn.Module, path: str | Path, adapter_name: str = "default") -> Any:
    """A saved adapter onto `base` (PeftModel.from_pretrained), prefix tuning adapted as in training."""
    from peft import PeftModel

    return adapt_peft_model(PeftModel.from_pretrained(base, str(path), adapter_name=adapter_name))


# The classification head's learning rate, as a multiple of `train.lr` (train.head_lr sets it directly): the
# usual practice for a freshly initialised head. On CLINC150 (benchmarks/quality_clinc.py) the earlier settings
# with the head at the adapter's rate scored 0.475 and today's recipe with it 0.862; the ratio's own share of
# that gain is not isolated there.
HEAD_LR_RATIO = 10.0
# Attribute names transformers gives the head of its *ForSequenceClassification models: decoders use
# `score`, BERT-family encoders `classifier`.
CLASSIFIER_HEADS = frozenset({"score", "classifier"})


def is_classifier_head(name: str) -> bool:
    """A parameter of the classification head, by its dotted name (peft wraps it in modules_to_save)."""
    return not CLASSIFIER_HEADS.isdisjoint(name.split("."))


def param_groups(model: nn.Module, tc: TrainConfig) -> list[dict[str, Any]]:
    """AdamW's groups: weights with decay, biases and norms without, and for `classify` the new head in a
    group of its own whose rate is `lr_scale` x the schedule's (head_lr / lr)."""
    decay: list[Any] = []
    no_decay: list[Any] = []
    head: list[Any] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if tc.objective == "classify" and is_classifier_head(name):
            head.append(p)
        elif p.ndim >= 2:
            decay.append(p)
        else:
            no_decay.append(p)
    groups: list[dict[str, Any]] = [
        {"params": decay, "weight_decay": tc.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if head:
        head_lr = tc.head_lr if tc.head_lr is not None else tc.lr * HEAD_LR_RATIO
        groups.append({"params": head, "weight_decay": tc.weight_decay, "lr_scale": head_lr / tc.lr})
    return groups


def _numel(p: Any) -> int:
    n = int(p.numel())
    # bitsandbytes stores two 4-bit values per byte of its storage dtype (the same rule as peft's
    # get_nb_trainable_parameters), so numel() of a packed weight undercounts the model.
    if p.__class__.__name__ == "Params4bit":
        n *= 2 * int(p.element_size())
    return n


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied weights count once, 4-bit weights count unpacked."""
    total = trainable = 0
    for p in model.parameters():
        n = _numel(p)
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total


def describe_parameters(name: str, trainable: int, total: int) -> str:
    """`ia3: 1,234 trainable of 134,515,008 parameters (0.000917%)`: enough digits for the smallest method."""
    share = 100 * trainable / max(total, 1)
    return f"{name}: {trainable:,} trainable of {total:,} parameters ({share:.3g}%)"


def save_trained(
    model: Any,
    tok: PreTrainedTokenizerBase,
    run_dir: Path,
    method: MethodConfig,
    state_dict: dict[str, Any] | None = None,
) -> Path:
    """Write `adapter/` (peft methods) or `model/` (full: safetensors, config, generation config), each with
    the tokenizer and its chat template, in one atomic rename: a reader never sees half a save.
    `state_dict`: the weights to write in place of the model's own (a sharded model's, gathered whole)."""
    out = run_dir / output_dir_name(method)
    with atomic_dir(out) as tmp:
        # safetensors (the only format of transformers 5 and peft's default)
        model.save_pretrained(tmp, **({} if state_dict is None else {"state_dict": state_dict}))
        tok.save_pretrained(tmp)
    return out
