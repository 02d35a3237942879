"""Objectives: packed pre-training blocks, DPO's loss and rewards, sequence log-likelihoods."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from tunesmith.config import MethodConfig
from tunesmith.data.formats import Example
from tunesmith.data.tokenize import IGNORE, encode_pair, pack_texts, stop_token_ids
from tunesmith.train.batching import collate, sequence_logps
from tunesmith.train.methods import apply_method
from tunesmith.train.objectives import DPOObjective, mean_loss


def _model(tiny_model_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)


def test_pack_texts_fills_blocks_with_eos_between_documents(tokenizer: Any) -> None:
    docs = ["Ledgerly reconciles invoices nightly. " * (i + 1) for i in range(12)]
    blocks = pack_texts(tokenizer, docs, 32)
    assert all(len(b.input_ids) == 32 for b in blocks[:-1]) and 8 <= len(blocks[-1].input_ids) <= 32
    assert all(b.labels == b.input_ids for b in blocks)
    stream = [t for b in blocks for t in b.input_ids]
    assert stream.count(tokenizer.eos_token_id) >= len(docs) - 1  # the tail block may have been dropped
    whole = [t for d in docs for t in [*tokenizer(d)["input_ids"], tokenizer.eos_token_id]]
    assert stream == whole[: len(stream)]


def test_sequence_logps_sum_the_answer_tokens(tiny_model_dir: Path, tokenizer: Any) -> None:
    model = _model(tiny_model_dir).eval()
    ex = Example(
        [{"role": "user", "content": "Which queue?"}, {"role": "assistant", "content": "billing"}],
        "f:1",
        kind="preference",
        rejected="shipping and returns",
    )
    pair = encode_pair(tokenizer, ex, 128, stop_token_ids(tokenizer))
    batch = collate([pair.chosen, pair.rejected], tokenizer.pad_token_id)
    got = sequence_logps(model, batch)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logp = torch.log_softmax(logits[:, :-1].float(), -1)
    labels = batch["labels"][:, 1:]
    want = [
        sum(float(logp[r, t, labels[r, t]]) for t in range(labels.shape[1]) if labels[r, t] != IGNORE)
        for r in range(2)
    ]
    assert got.tolist() == pytest.approx(want, abs=1e-4)
    # The two sides share the prompt and differ in the answer only.
    n_prompt = next(i for i, lab in enumerate(pair.chosen.labels) if lab != IGNORE)
    assert pair.chosen.input_ids[:n_prompt] == pair.rejected.input_ids[:n_prompt]


def _pairs(tokenizer: Any, n: int, seed: int) -> list[Any]:
    import random

    rng = random.Random(seed)
    queues = ["billing", "shipping", "security", "account"]
    out = []
    for i in range(n):
        q = rng.choice(queues)
        ex = Example(
            [
                {
                    "role": "user",
                    "content": f"Ticket {i}: route a {q} problem about order {rng.randint(1, 999)}.",
                },
                {"role": "assistant", "content": f"Queue: {q}. Priority: P2."},
            ],
            f"f:{i}",
            kind="preference",
            rejected="I am not sure, maybe ask someone else later.",
        )
        out.append(encode_pair(tokenizer, ex, 128, stop_token_ids(tokenizer)))
    return out


def test_dpo_starts_at_log2_and_training_raises_the_held_out_margin(
    tiny_model_dir: Path, tokenizer: Any
) -> None:
    torch.manual_seed(0)
    model = apply_method(_model(tiny_model_dir), MethodConfig(name="lora", r=8, alpha=16))
    obj = DPOObjective.for_model(model, beta=0.1)
    assert obj.reference is None  # PEFT: the reference is the same model with its adapter off
    train, held_out = _pairs(tokenizer, 32, seed=1), _pairs(tokenizer, 16, seed=2)
    pad = tokenizer.pad_token_id
    before = mean_loss(obj, model, held_out, 8, pad)
    # A fresh LoRA adapter is the identity (B = 0): policy == reference, so every pair scores log 2.
    assert before["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert before["reward_margin"] == pytest.approx(0.0, abs=1e-5)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    model.train()
    for step in range(12):
        chunk = train[(step * 8) % 32 : (step * 8) % 32 + 8]
        loss, _ = obj.loss_sum(model, obj.collate(chunk, pad))
        (loss / obj.units(chunk)).backward()
        opt.step()
        opt.zero_grad()
    after = mean_loss(obj, model, held_out, 8, pad)
    assert after["loss"] < before["loss"] - 0.05
    assert after["reward_margin"] > before["reward_margin"] + 0.1
    assert after["reward_accuracy"] > 0.9


def test_dpo_with_full_fine_tuning_keeps_a_frozen_reference(tiny_model_dir: Path) -> None:
    model = _model(tiny_model_dir)
    obj = DPOObjective.for_model(model, beta=0.1)
    assert obj.reference is not None and obj.reference is not model
    assert not any(p.requires_grad for p in obj.reference.parameters())


def _prepare(tmp_path: Path, model: Path, tokenizer: Any, rows: list[dict[str, Any]], objective: str) -> Any:
    import yaml

    from helpers import write_jsonl
    from tunesmith.config import load_config
    from tunesmith.data.pipeline import prepare

    write_jsonl(tmp_path / "train.jsonl", rows)
    cfg = {
        "name": "o",
        "model": str(model),
        "runs_dir": str(tmp_path / "runs"),
        "data": {"train": "train.jsonl"},
        "train": {"objective": objective, "max_length": 64},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    return prepare(load_config(tmp_path / "c.yaml"), tokenizer)


def test_pretrain_data_is_packed_into_full_blocks(
    tmp_path: Path, tiny_model_dir: Path, tokenizer: Any
) -> None:
    import random

    from helpers import random_words

    rng = random.Random(0)
    rows = [{"text": random_words(rng, rng.randint(20, 90))} for _ in range(60)]
    data = _prepare(tmp_path, tiny_model_dir, tokenizer, rows, "pretrain")
    blocks = data.train.encoded
    assert blocks and all(len(b.input_ids) == 64 for b in blocks[:-1])
    assert data.preflight["share_under_loss"] == 1.0 and data.preflight["objective"] == "pretrain"
    assert data.preflight["tokens_per_epoch"] == sum(len(b.input_ids) for b in blocks)


def test_dpo_data_is_encoded_as_pairs_and_other_rows_are_refused(
    tmp_path: Path, tiny_model_dir: Path, tokenizer: Any
) -> None:
    import random

    from helpers import make_label_rows, random_words
    from tunesmith.data.issues import DataError

    rng = random.Random(1)
    rows = [
        {"prompt": random_words(rng, 12), "chosen": random_words(rng, 5), "rejected": random_words(rng, 6)}
        for _ in range(40)
    ]
    data = _prepare(tmp_path, tiny_model_dir, tokenizer, rows, "dpo")
    assert len(data.train.encoded) == len(data.train.examples)
    p = data.train.encoded[0]
    assert p.chosen.input_ids != p.rejected.input_ids and p.chosen.n_loss > 0 and p.rejected.n_loss > 0
    with pytest.raises(DataError, match="train.objective dpo trains on preference pairs"):
        _prepare(tmp_path, tiny_model_dir, tokenizer, make_label_rows(20), "dpo")


def _train_on(
    tmp_path: Path,
    model_dir: Path,
    tokenizer: Any,
    rows: list[dict[str, Any]],
    train: dict[str, Any],
    method: dict[str, Any] | None = None,
) -> Any:
    import json

    import yaml
    from rich.console import Console

    from helpers import write_jsonl
    from tunesmith.config import load_config
    from tunesmith.data.pipeline import prepare
    from tunesmith.models import load_model
    from tunesmith.train.loop import train as train_loop

    write_jsonl(tmp_path / "train.jsonl", rows)
    cfg_dict = {
        "name": "o",
        "model": str(model_dir),
        "runs_dir": str(tmp_path / "runs"),
        # Toy texts drawn from a 45-word vocabulary all look alike to near-dedup: keep it out of these tests.
        "data": {
            "train": "train.jsonl",
            "split": {"val": 0.2, "test": 0.1},
            "clean": {"near_dedup": False},
            "contamination": {"action": "warn"},
        },
        "method": method or {"name": "lora", "r": 8, "alpha": 16},
        "train": {"max_length": 96, "threads": 1, "warmup_ratio": 0.0, "eval_every": 100, **train},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg_dict))
    cfg = load_config(tmp_path / "c.yaml")
    data = prepare(cfg, tokenizer)
    _, result = train_loop(
        cfg, data, load_model(str(model_dir)), tokenizer, tmp_path / "run", Console(quiet=True)
    )
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    return result, records


def test_pretrain_lowers_held_out_loss_through_the_loop(
    tmp_path: Path, tiny_model_dir: Path, tokenizer: Any
) -> None:
    import random

    from helpers import random_words

    rng = random.Random(3)
    rows = [{"text": random_words(rng, rng.randint(40, 80))} for _ in range(80)]
    result, records = _train_on(
        tmp_path,
        tiny_model_dir,
        tokenizer,
        rows,
        {"objective": "pretrain", "max_steps": 25, "lr": 3e-3, "batch_size": 4},
        method={"name": "full"},  # the 2-layer test model learns a new vocabulary slowly through LoRA
    )
    assert result.val_before is not None
    assert records[-1]["val_loss"] < result.val_before["loss"] - 0.3


def test_dpo_raises_the_held_out_reward_margin_through_the_loop(
    tmp_path: Path, tiny_model_dir: Path, tokenizer: Any
) -> None:
    import random

    from helpers import random_words

    rng = random.Random(5)
    queues = ["billing", "shipping", "security", "account"]
    rows = []
    for _ in range(80):
        q = rng.choice(queues)
        rows.append(
            {
                "prompt": f"{random_words(rng, 8)} {q} {random_words(rng, 4)}",
                "chosen": f"Queue: {q}.",
                "rejected": f"Maybe {random_words(rng, 3)}?",
            }
        )
    result, records = _train_on(
        tmp_path,
        tiny_model_dir,
        tokenizer,
        rows,
        {"objective": "dpo", "max_steps": 15, "lr": 5e-3, "batch_size": 8, "dpo_beta": 0.1},
    )
    before = result.val_before
    assert before is not None and before["loss"] == pytest.approx(math.log(2), abs=1e-4)
    last = records[-1]
    assert last["val_loss"] < before["loss"] - 0.05
    assert last["val_reward_margin"] > before["reward_margin"] + 0.1
    assert "reward_margin" in last and "reward_accuracy" in last


def test_tensorboard_tracker_receives_the_metrics(
    tmp_path: Path, tiny_model_dir: Path, tokenizer: Any
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from helpers import make_label_rows

    rows = [{"instruction": r["instruction"], "output": r["output"]} for r in make_label_rows(60)]
    _, records = _train_on(
        tmp_path, tiny_model_dir, tokenizer, rows, {"max_steps": 3, "eval_every": 3, "track": ["tensorboard"]}
    )
    events = list((tmp_path / "run" / "tracking").rglob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    loss = [e.value for e in acc.Scalars("loss")]
    assert [e.step for e in acc.Scalars("loss")] == [1, 2, 3]
    assert loss == pytest.approx([r["loss"] for r in records], abs=1e-5)
    assert [e.step for e in acc.Scalars("val_loss")] == [3]


def test_missing_tracker_package_is_a_clear_error() -> None:
    from tunesmith.train.loop import _check_trackers

    with pytest.raises(ValueError, match="train.track: wandb not installed; `pip install wandb`"):
        _check_trackers(["wandb"])
