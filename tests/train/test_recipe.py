"""train.recipe: auto derives what the config leaves out, from the data and the method; what it sets stays."""

from __future__ import annotations

import json
from pathlib import Path

from tunesmith.config import validate_config
from tunesmith.train.recipe import FULL_LR, LORA_LR, LORA_LR_LARGE, MIN_STEPS, derive


def _cfg(tmp_path: Path, model: Path, train: dict | None = None, method: str = "lora"):  # type: ignore[no-untyped-def]
    (tmp_path / "d.jsonl").write_text('{"instruction": "a", "output": "b"}\n')
    raw = {
        "model": str(model),
        "data": {"train": "d.jsonl"},
        "method": {"name": method},
        "train": train or {},
    }
    return validate_config(raw, base_dir=tmp_path)


def _model(tmp_path: Path, hidden: int, layers: int, vocab: int = 50_000) -> Path:
    d = tmp_path / f"m{hidden}x{layers}"
    d.mkdir()
    (d / "config.json").write_text(
        json.dumps({"hidden_size": hidden, "num_hidden_layers": layers, "vocab_size": vocab})
    )
    return d


def test_small_dataset_gets_several_epochs_and_a_large_one_one(tmp_path: Path) -> None:
    model = _model(tmp_path, 576, 30)  # SmolLM2-135M's shape
    small = derive(_cfg(tmp_path, model), str(model), [50] * 1500)
    got = {c.field: c.value for c in small.choices}
    assert got["lr"] == LORA_LR and got["batch_size"] == 16
    assert got["epochs"] == 2.0  # 94 steps an epoch: two passes reach MIN_STEPS
    assert MIN_STEPS <= 2 * 94 and got["eval_every"] == 24
    large = {c.field: c.value for c in derive(_cfg(tmp_path, model), str(model), [600] * 40_000).choices}
    assert large["epochs"] == 1.0 and large["batch_size"] == 8
    tiny = {c.field: c.value for c in derive(_cfg(tmp_path, model), str(model), [50] * 100).choices}
    assert tiny["epochs"] == 6.0  # capped: 7 steps an epoch would want 22 passes


def test_the_rate_follows_the_method_and_the_base_size(tmp_path: Path) -> None:
    big = _model(tmp_path, 4096, 32)  # ~7B
    got = {c.field: c.value for c in derive(_cfg(tmp_path, big), str(big), [50] * 100).choices}
    assert got["lr"] == LORA_LR_LARGE
    full = {
        c.field: c.value for c in derive(_cfg(tmp_path, big, method="full"), str(big), [50] * 100).choices
    }
    assert full["lr"] == FULL_LR
    prompt = {c.field for c in derive(_cfg(tmp_path, big, method="prompt"), str(big), [50] * 100).choices}
    assert "lr" not in prompt


def test_what_the_config_sets_is_kept_and_manual_derives_nothing(tmp_path: Path) -> None:
    model = _model(tmp_path, 576, 30)
    cfg = _cfg(tmp_path, model, {"lr": 3e-4, "max_steps": 40, "batch_size": 4})
    recipe = derive(cfg, str(model), [50] * 1500)
    assert {c.field for c in recipe.choices} == {"eval_every"}
    applied = recipe.apply(cfg)
    assert applied.train.lr == 3e-4 and applied.train.batch_size == 4 and applied.train.eval_every == 10
    assert "eval_every" in applied.train.model_fields_set  # a resumed run keeps it as given
    assert derive(_cfg(tmp_path, model, {"recipe": "manual"}), str(model), [50] * 1500).choices == ()


def test_an_encoder_gets_its_own_rate_and_more_passes(tmp_path: Path) -> None:
    from tunesmith.models import resolve_model
    from tunesmith.train.recipe import ENCODER_LR

    path = resolve_model("builtin:all-minilm-l6-v2")
    (tmp_path / "d.jsonl").write_text('{"text": "a", "label": "b"}\n')
    raw = {
        "model": path,
        "data": {"train": "d.jsonl"},
        "method": {"name": "full"},
        "train": {"objective": "classify"},
    }
    got = {
        c.field: c.value for c in derive(validate_config(raw, base_dir=tmp_path), path, [20] * 1500).choices
    }
    assert (
        got["lr"] == ENCODER_LR and got["epochs"] == 8.0
    )  # 94 steps an epoch; 750 steps wanted, capped at 8
