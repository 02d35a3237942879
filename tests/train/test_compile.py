"""`train.compile`: the decoder through torch.compile trains the same curve as eager, and refuses FSDP."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tunesmith.config import ConfigError, load_config
from tunesmith.data.pipeline import prepare
from tunesmith.models import load_model
from tunesmith.train.loop import train


def _losses(run_dir: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.timeout(600)
def test_compiled_decoder_follows_the_eager_loss_curve(
    toy_config: Path, tokenizer: Any, tmp_path: Path
) -> None:
    curves = []
    for flag in ("false", "true"):
        # fp32: compiled and eager kernels round bf16 differently (auto is bf16 on AVX512-BF16/AMX CPUs).
        overrides = [
            "train.max_steps=3",
            "train.eval_every=100",
            "train.precision=fp32",
            f"train.compile={flag}",
        ]
        cfg = load_config(toy_config, overrides)
        data = prepare(cfg, tokenizer)
        run_dir = tmp_path / flag
        train(cfg, data, load_model(cfg.model), tokenizer, run_dir)
        curves.append(_losses(run_dir))
    eager, compiled = curves
    assert len(eager) == len(compiled) == 3
    assert compiled == pytest.approx(eager, abs=1e-4)


def test_compile_with_fsdp_is_refused_with_the_fix(toy_config: Path) -> None:
    with pytest.raises(ConfigError, match="train.compile with train.sharding: fsdp"):
        load_config(toy_config, ["train.compile=true", "train.sharding=fsdp"])
