"""Stages glued together: each stage reads what the previous one left in the run directory."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from tunesmith.config import RunConfig, validate_config
from tunesmith.data import cache as data_cache
from tunesmith.data.pipeline import PreparedData, prepare, read_prepared_examples, write_prepared
from tunesmith.data.report import print_preflight, write_preflight_html
from tunesmith.eval.evaluate import evaluate
from tunesmith.eval.report import build_report
from tunesmith.models import load_model, load_tokenizer, resolve_model
from tunesmith.registry import init_manifest, mark_stage, new_run_dir, read_manifest
from tunesmith.train.loop import train
from tunesmith.train.methods import PEFT_METHODS, check_method_available, output_dir_name


@dataclass
class RunOutcome:
    run_dir: Path
    eval: dict[str, Any] | None

    @property
    def targets_met(self) -> bool:
        return bool(self.eval is None or self.eval["targets_met"])


def check_data(cfg: RunConfig, console: Console) -> tuple[str, Any, PreparedData]:
    """Resolve the model's tokenizer and validate + tokenize all data. Raises DataError; writes nothing."""
    model_path = resolve_model(cfg.model, runs_dir=cfg.runs_dir)
    tok = load_tokenizer(model_path)
    from transformers import GenerationConfig

    try:
        gen_cfg = GenerationConfig.from_pretrained(model_path)
    except OSError:
        gen_cfg = None
    key = data_cache.cache_key(cfg, model_path)
    cached = data_cache.load(key) if cfg.data.cache else None
    if cached is not None:
        data = cached
        console.print(f"data: unchanged since a previous run, prepared splits reused (cache {key})")
    else:
        data = prepare(cfg, tok, gen_cfg)
        data.preflight["cache"] = {"hit": False, "key": key}
        if cfg.data.cache:
            data_cache.save(data, key)
    print_preflight(data.preflight, console)
    return model_path, tok, data


def _start_run(cfg: RunConfig, console: Console) -> tuple[Path, str, Any, PreparedData]:
    model_path, tok, data = check_data(cfg, console)
    run_dir = new_run_dir(cfg)
    console.print(f"run directory: [bold]{run_dir}[/bold]")
    init_manifest(run_dir, cfg, model_path)
    write_prepared(data, run_dir / "data")
    write_preflight_html(data.preflight, run_dir / "data" / "preflight.html", f"{cfg.name}: pre-flight")
    mark_stage(
        run_dir, "data", "done", preflight={k: v for k, v in data.preflight.items() if k != "token_lengths"}
    )
    return run_dir, model_path, tok, data


def prepare_run(cfg: RunConfig, console: Console) -> Path:
    """The data stage alone: a run directory holding the prepared splits and the pre-flight report."""
    return _start_run(cfg, console)[0]


def _load_base(cfg: RunConfig, model_path: str) -> Any:
    return load_model(model_path, load_in_4bit=cfg.method.name == "qlora")


def _base_loader(cfg: RunConfig, model_path: str, device: Any) -> Callable[[], Any] | None:
    """For a full fine-tune, how evaluate() gets the original weights back (see evaluate), on the device
    the tuned model generates on."""
    if cfg.method.name in PEFT_METHODS:
        return None
    return lambda: _load_base(cfg, model_path).to(device)


def _on_accelerator(model: Any) -> Any:
    """Where training would have run: the GPU when there is one (a 4-bit model is placed at load)."""
    import torch

    if torch.cuda.is_available() and not getattr(model, "is_loaded_in_4bit", False):
        return model.to("cuda")
    return model


def run_all(cfg: RunConfig, console: Console) -> RunOutcome:
    # Before any data or model work: a method this machine cannot run (qlora without CUDA) fails now.
    check_method_available(cfg.method)
    run_dir, model_path, tok, data = _start_run(cfg, console)
    model = _load_base(cfg, model_path)
    tuned, result = train(cfg, data, model, tok, run_dir, console)
    mark_stage(run_dir, "train", "done", train=result.as_dict())

    load_base = _base_loader(cfg, model_path, tuned.device)
    ev = evaluate(cfg, run_dir, tuned, tok, data.test.examples, console, load_base=load_base)
    mark_stage(run_dir, "eval", "done")
    report = build_report(run_dir, title=f"{cfg.name}: fine-tuning report")
    print_eval(ev, console)
    console.print(f"report: [bold]{report}[/bold]")
    return RunOutcome(run_dir, ev)


def load_run_config(run_dir: Path) -> RunConfig:
    raw = yaml.safe_load((run_dir / "resolved.yaml").read_text(encoding="utf-8"))
    return validate_config(raw, base_dir=run_dir, source=str(run_dir / "resolved.yaml"))


def eval_run(run_dir: Path, console: Console) -> RunOutcome:
    """Re-run the eval stage of an existing run from its saved adapter (or model) and test split."""
    cfg = load_run_config(run_dir)
    check_method_available(cfg.method)
    manifest = read_manifest(run_dir)
    saved = run_dir / output_dir_name(cfg.method)
    model: Any
    if cfg.method.name in PEFT_METHODS:
        from peft import PeftModel

        if not (saved / "adapter_config.json").is_file():
            raise FileNotFoundError(f"{saved} has no adapter; run `tunesmith train` first")
        tok = load_tokenizer(str(saved))
        model = PeftModel.from_pretrained(_load_base(cfg, manifest["model_path"]), str(saved))
    else:
        if not (saved / "config.json").is_file():
            raise FileNotFoundError(f"{saved} has no model; run `tunesmith train` first")
        tok = load_tokenizer(str(saved))
        model = load_model(str(saved))
    model = _on_accelerator(model)
    test = read_prepared_examples(run_dir / "data" / "test.jsonl")
    load_base = _base_loader(cfg, manifest["model_path"], model.device)
    ev = evaluate(cfg, run_dir, model, tok, test, console, load_base=load_base)
    mark_stage(run_dir, "eval", "done")
    build_report(run_dir, title=f"{cfg.name}: fine-tuning report")
    print_eval(ev, console)
    return RunOutcome(run_dir, ev)


def print_eval(ev: dict[str, Any], console: Console) -> None:
    t = Table(title=f"base vs tuned on {ev['n_examples']} held-out examples", title_justify="left")
    for col in ("metric", "base", "tuned", "delta [95% CI]", "target", "status"):
        t.add_column(col)
    for r in ev["metrics"]:
        lo, hi = r["delta_ci"]
        style = {"PASS": "green", "FAIL": "red", "UNCERTAIN": "yellow"}.get(r["status"] or "", "")
        name = r["metric"] + (" *" if r["metric"] == ev["primary_metric"] else "")
        t.add_row(
            name,
            f"{r['base']:.3f}",
            f"{r['tuned']:.3f}",
            f"{r['delta']:+.3f} [{lo:+.3f}, {hi:+.3f}]",
            r["target"] or "",
            f"[{style}]{r['status']}[/{style}]" if r["status"] else "",
        )
    console.print(t)
