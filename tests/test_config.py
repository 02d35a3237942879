from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tunesmith.config import ConfigError, load_config, parse_target

ROOT = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, cfg: dict) -> Path:
    p = tmp_path / "tunesmith.yaml"
    p.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return p


def test_all_errors_at_once_with_paths(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        {"data": {"train": "missing.jsonl"}, "train": {"lr": -0.001, "bacth_size": 4}},
    )
    with pytest.raises(ConfigError) as e:
        load_config(path)
    by_path = {i.path: i for i in e.value.issues}
    assert set(by_path) == {"data.train", "train.lr", "train.bacth_size"}
    assert "file not found" in by_path["data.train"].message
    assert "greater than 0" in by_path["train.lr"].message
    assert by_path["train.bacth_size"].fix == "did you mean 'batch_size'?"


def test_cli_exits_2_and_creates_no_run_dir(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        {"runs_dir": "runs", "data": {"train": "missing.jsonl"}, "train": {"lr": -1e-4, "bacth_size": 4}},
    )
    proc = subprocess.run(
        [sys.executable, "-m", "tunesmith.cli", "run", str(path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2, proc.stderr
    err = " ".join(proc.stderr.split())
    for needle in (
        "3 problem(s)",
        "data.train: file not found",
        "train.lr:",
        "train.bacth_size: unknown key",
    ):
        assert needle in err
    assert not (tmp_path / "runs").exists()


def test_dotted_overrides(tmp_path: Path) -> None:
    (tmp_path / "d.jsonl").write_text("")
    path = _write(tmp_path, {"data": {"train": "d.jsonl"}})
    cfg = load_config(path, ["train.lr=1e-4", "train.max_steps=7", "method.r=4", "eval.metrics=[accuracy]"])
    assert cfg.train.lr == 1e-4 and cfg.train.max_steps == 7 and cfg.method.r == 4
    assert cfg.eval.metrics == ["accuracy"]
    assert cfg.data.train == [str((tmp_path / "d.jsonl").resolve())]


def test_targets_are_checked_against_metrics(tmp_path: Path) -> None:
    (tmp_path / "d.jsonl").write_text("")
    path = _write(tmp_path, {"data": {"train": "d.jsonl"}, "targets": {"accuracy": ">= 0.8"}})
    with pytest.raises(ConfigError, match="target metric 'accuracy' is not computed"):
        load_config(path)
    path = _write(
        tmp_path,
        {
            "data": {"train": "d.jsonl"},
            "eval": {"metrics": ["accuracy"]},
            "targets": {"accuracy": "about 0.8"},
        },
    )
    with pytest.raises(ConfigError, match="not of the form"):
        load_config(path)
    t = parse_target("accuracy", "> 0.5")
    assert t.met(0.6) and not t.met(0.5)


@pytest.mark.parametrize("path", sorted(ROOT.glob("examples/*/tunesmith.yaml")), ids=lambda p: p.parent.name)
def test_every_shipped_example_config_is_valid(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.data.train


def test_examples_exist() -> None:
    assert list(ROOT.glob("examples/*/tunesmith.yaml")), "no example configs shipped"


def test_readme_config_reference_is_current() -> None:
    from tunesmith.config import config_reference

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start, end = "<!-- config-reference:start -->\n", "\n<!-- config-reference:end -->"
    section = readme[readme.index(start) + len(start) : readme.index(end)]
    assert section == config_reference(), (
        "README's config reference is stale: regenerate with `tunesmith config-reference`"
    )


def test_method_options_default_per_method_and_reject_other_methods_options(tmp_path: Path) -> None:
    (tmp_path / "d.jsonl").write_text("")
    path = _write(tmp_path, {"data": {"train": "d.jsonl"}})
    for name in ("full", "lora", "dora", "qlora", "prefix", "prompt", "ia3"):
        assert load_config(path, [f"method.name={name}"]).method.name == name
    cfg = load_config(
        path, ["method.name=prompt", "method.num_virtual_tokens=8", "method.prompt_init_text=Route it."]
    )
    assert cfg.method.num_virtual_tokens == 8 and cfg.method.prompt_init_text == "Route it."
    cfg = load_config(path, ["method.name=ia3", "method.target_modules=[k_proj, down_proj]"])
    assert cfg.method.target_modules == ["k_proj", "down_proj"] and cfg.method.feedforward_modules is None

    with pytest.raises(ConfigError) as e:
        load_config(path, ["method.name=prefix", "method.r=8", "method.prompt_init_text=hi"])
    (issue,) = e.value.issues
    assert issue.path == "method"
    assert "`r` applies to lora, dora, qlora, not to `prefix`" in issue.message
    assert "`prompt_init_text` applies to prompt, not to `prefix`" in issue.message
    for overrides, needle in [
        (
            ["method.name=lora", "method.num_virtual_tokens=10"],
            "`num_virtual_tokens` applies to prefix, prompt",
        ),
        (
            ["method.name=full", "method.target_modules=[q_proj]"],
            "`target_modules` applies to lora, dora, qlora, ia3",
        ),
        (
            ["method.name=lora", "method.feedforward_modules=[down_proj]"],
            "`feedforward_modules` applies to ia3",
        ),
        (
            ["method.name=ia3", "method.target_modules=[k_proj]", "method.feedforward_modules=[down_proj]"],
            "feedforward_modules ['down_proj'] are not in target_modules ['k_proj']",
        ),
        (["method.name=lora", "method.target_modules=[]"], "target_modules is empty"),
        (["method.name=prompt", "method.num_virtual_tokens=0"], "greater than 0"),
        (["method.name=adapter"], "'full', 'lora', 'dora', 'qlora', 'prefix', 'prompt' or 'ia3'"),
    ]:
        with pytest.raises(ConfigError) as e:
            load_config(path, overrides)
        assert needle in str(e.value), (overrides, str(e.value))


def test_resolved_config_of_every_method_loads_again(tmp_path: Path) -> None:
    """resolved.yaml holds every option at its value; defaults of other methods must not trip the check."""
    (tmp_path / "d.jsonl").write_text("")
    path = _write(tmp_path, {"data": {"train": "d.jsonl"}})
    for name in ("full", "lora", "dora", "qlora", "prefix", "prompt", "ia3"):
        cfg = load_config(path, [f"method.name={name}"])
        again = _write(tmp_path, cfg.model_dump(mode="json"))
        assert load_config(again).method == cfg.method
