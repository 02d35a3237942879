"""Write a llama-architecture model as a llama.cpp GGUF file (f16 or q8_0) with the `gguf` package.

Follows llama.cpp's convert_hf_to_gguf.py for LlamaForCausalLM: tensor names from gguf's own name map,
q/k projection rows permuted into llama.cpp's rotary layout (transformers' GGUF loader undoes it), 1-D
norms kept in f32, tied embeddings stored once (no output.weight), and the tokenizer (GPT-2 byte-level
BPE: tokens, types, merges, special ids, the chat template) in the file's metadata, so the file alone is
the model that was trained, template included.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.data.tokenize import stop_token_ids

QUANTS = ("f16", "q8_0")


class GGUFExportError(Exception):
    pass


def _permute(w: np.ndarray, n_head: int, n_head_kv: int | None = None) -> np.ndarray:
    # llama.cpp convert_hf_to_gguf.py LlamaModel.permute: HF's rotate-half layout -> interleaved pairs.
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# llama.cpp picks its pre-tokenizer (how text is split before BPE: digits one by one or in groups, ...)
# by name; its converter names it from a hash of the tokenization of a fixed text. The text and the hashes
# of the llama-architecture BPE tokenizers, from llama.cpp's conversion/base.py (get_vocab_base_pre).
# Re-check them when llama.cpp adds a pre-tokenizer.
_CHKTXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n\U0001f680 (normal) "
    "\U0001f636\u200d\U0001f32b\ufe0f (multiple emojis concatenated) \u2705 "
    "\U0001f999\U0001f999 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 "
    "\u1780\u17b6\u1793\u17cb\u178f\u17c2\u1796\u17b7\u179f\u17c1\u179f\u17a2\u17b6\u1785\U0001f601 "
    "?\u6211\u60f3\u5728apple\u5de5\u4f5c1314151\u5929\uff5e ------======= "
    "\u043d\u0435\u0449\u043e \u043d\u0430 "
    "\u0411\u044a\u043b\u0433\u0430\u0440\u0441\u043a\u0438 "
    "''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? "
    "'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)
_PRE_TOKENIZERS = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
    "9d032fcbd5501f4a38150912590928bfb36091efb5df11b8e2124b0390e3fb1e": "falcon3",
    "049ecf7629871e3041641907f3de7c733e4dbfdc736f57d882ba0b0845599754": "deepseek-llm",
}


def pre_tokenizer(tok: Any) -> str:
    import hashlib

    ids = tok.encode(_CHKTXT)
    digest = hashlib.sha256(str(ids).encode()).hexdigest()
    if digest not in _PRE_TOKENIZERS:
        raise GGUFExportError(
            f"llama.cpp has no pre-tokenizer known to tunesmith for this tokenizer (hash {digest[:16]}); "
            "export --format merged and convert it with llama.cpp's convert_hf_to_gguf.py"
        )
    return _PRE_TOKENIZERS[digest]


def _tokenizer_metadata(writer: Any, tok: Any, tokenizer_dir: Path) -> None:
    import gguf

    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise GGUFExportError("GGUF export needs a fast (tokenizer.json) tokenizer")
    model = backend.model
    if type(model).__name__ != "BPE":
        raise GGUFExportError(
            f"GGUF export supports byte-level BPE tokenizers; this one is {type(model).__name__}"
        )
    n = len(tok)
    tokens = tok.convert_ids_to_tokens(list(range(n)))
    added = tok.added_tokens_decoder  # id -> AddedToken
    types = []
    for i in range(n):
        if i in added:
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer(tok))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(tokenizer_dir, load_merges=True, n_vocab=n)
    if not special.merges:
        raise GGUFExportError(f"no BPE merges found in {tokenizer_dir}/tokenizer.json")
    special.chat_template = None  # written below from the tokenizer we trained with
    special.add_to_gguf(writer, quiet=True)
    if "pad" not in special.special_token_ids and tok.pad_token_id is not None:
        writer.add_pad_token_id(int(tok.pad_token_id))
    # The tokens training ended answers with: llama.cpp stops at EOS and EOT, so a stop token that is not
    # the tokenizer's EOS (a chat model's end-of-turn) is written as EOT, or the exported model never stops.
    eos = special.special_token_ids.get("eos")
    others = [i for i in stop_token_ids(tok) if i != eos]
    if len(others) > 1:
        raise GGUFExportError(
            f"training stops at {len(others) + 1} tokens; GGUF records EOS and one EOT: {others} besides EOS {eos}"
        )
    if others:
        writer.add_eot_token_id(int(others[0]))
    if not tok.chat_template:
        raise GGUFExportError("the tokenizer has no chat template to store in the GGUF file")
    writer.add_chat_template(tok.chat_template)


def stop_ids_in_gguf(path: Path) -> set[int]:
    """The end-of-generation token ids a GGUF file records (EOS, EOT, EOM): where llama.cpp stops."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    ids = set()
    for key in (gguf.Keys.Tokenizer.EOS_ID, gguf.Keys.Tokenizer.EOT_ID, gguf.Keys.Tokenizer.EOM_ID):
        field = reader.get_field(key)
        if field is not None:
            ids.add(int(field.parts[field.data[0]][0]))
    return ids


def write_gguf(model: Any, tok: Any, tokenizer_dir: Path, path: Path, quant: str, name: str) -> Path:
    """Write `model` (a transformers LlamaForCausalLM, any dtype) to `path` as GGUF."""
    import gguf
    import torch

    if quant not in QUANTS:
        raise GGUFExportError(
            f"GGUF quantization {quant!r} is not supported; choose one of {', '.join(QUANTS)}"
        )
    cfg = model.config
    if cfg.model_type != "llama":
        raise GGUFExportError(
            f"GGUF export handles the llama architecture (SmolLM2, Llama); this model is {cfg.model_type!r}. "
            "Use --format merged and llama.cpp's convert_hf_to_gguf.py"
        )
    if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
        raise GGUFExportError("GGUF export of llama models with biases is not supported")
    rope = dict(getattr(cfg, "rope_parameters", None) or {})
    if rope.get("rope_type", "default") != "default":
        raise GGUFExportError(f"rope scaling {rope.get('rope_type')!r} is not written by this exporter")
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    n_head, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    qtype = gguf.GGMLQuantizationType.F16 if quant == "f16" else gguf.GGMLQuantizationType.Q8_0
    ftype = gguf.LlamaFileType.MOSTLY_F16 if quant == "f16" else gguf.LlamaFileType.MOSTLY_Q8_0

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_context_length(int(cfg.max_position_embeddings))
    writer.add_embedding_length(int(cfg.hidden_size))
    writer.add_block_count(int(cfg.num_hidden_layers))
    writer.add_feed_forward_length(int(cfg.intermediate_size))
    writer.add_head_count(int(n_head))
    writer.add_head_count_kv(int(n_kv))
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    writer.add_rope_dimension_count(int(head_dim))
    writer.add_vocab_size(int(cfg.vocab_size))
    writer.add_file_type(int(ftype))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _tokenizer_metadata(writer, tok, tokenizer_dir)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, int(cfg.num_hidden_layers))
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp reads token_embd for the output layer when output.weight is absent
        if "rotary_emb" in hf_name:
            continue
        base, suffix = hf_name.rsplit(".", 1)
        gg = names.get_name(base)
        if gg is None:
            raise GGUFExportError(f"no GGUF name for tensor {hf_name!r}")
        data = tensor.detach().to(torch.float32).cpu().numpy()
        if hf_name.endswith("q_proj.weight"):
            data = _permute(data, n_head, n_head)
        elif hf_name.endswith("k_proj.weight"):
            data = _permute(data, n_head, n_kv)
        if data.ndim == 1:
            writer.add_tensor(f"{gg}.{suffix}", data.astype(np.float32))
            continue
        if qtype == gguf.GGMLQuantizationType.Q8_0 and data.shape[-1] % 32:
            raise GGUFExportError(f"{hf_name}: rows of {data.shape[-1]} do not split into q8_0 blocks of 32")
        q = gguf.quants.quantize(data, qtype)
        writer.add_tensor(f"{gg}.{suffix}", q, raw_shape=q.shape, raw_dtype=qtype)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
