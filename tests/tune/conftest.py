"""A toy study: the toy routing task on the tiny model, a few steps per trial, scored on a few val examples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import write_toy_config


def write_tune_config(root: Path, model_dir: Path, tune: dict[str, Any], **top: Any) -> Path:
    """The toy config (80 rows: 56 train, 8 val, 16 test of which the first 8 are evaluated; 6 steps of 8
    examples, val loss at steps 3 and 6) with `tune` as its tune block; `top` replaces top-level keys
    (targets, train, ...)."""
    path = write_toy_config(root, model_dir)
    cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    cfg["eval"].update({"forgetting_probe": False, "latency_probe": 0, "metrics": ["accuracy"], "limit": 8})
    cfg["tune"] = tune
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key].update(value)
        else:
            cfg[key] = value
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


@pytest.fixture
def tune_config(tmp_path: Path, tiny_model_dir: Path) -> Any:
    def make(tune: dict[str, Any], **top: Any) -> Path:
        return write_tune_config(tmp_path, tiny_model_dir, tune, **top)

    return make
