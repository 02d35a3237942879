"""Command line: parse, call one function, print with rich. Exit codes: 0 ok, 1 data error or missed
target, 2 configuration error (or a method this machine cannot run, e.g. qlora without CUDA)."""

from __future__ import annotations

import os

# Busy-waiting OpenMP threads (libgomp's default) slow CPU training 3x when any other process competes
# for the cores; passive waiting costs little when the machine is idle. Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path  # noqa: E402
from typing import Annotated  # noqa: E402

import typer  # noqa: E402
from rich.console import Console  # noqa: E402

from tunesmith.config import ConfigError, RunConfig, config_reference, load_config  # noqa: E402
from tunesmith.data.validate import DataError  # noqa: E402
from tunesmith.models import ModelError  # noqa: E402
from tunesmith.train.methods import MethodUnavailableError  # noqa: E402

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Fine-tune a pretrained LLM into a domain specialist."
)
data_app = typer.Typer(no_args_is_help=True, help="Check and prepare data before any GPU time is spent.")
app.add_typer(data_app, name="data")
model_app = typer.Typer(no_args_is_help=True, help="Resolve and cache base models.")
app.add_typer(model_app, name="model")
review_app = typer.Typer(no_args_is_help=True, help="Blind human review of base vs tuned outputs.")
app.add_typer(review_app, name="review")
console = Console(stderr=True)


@app.callback()
def _quiet_libraries() -> None:
    """Our own progress bars and tables replace the libraries' tqdm bars and info logs."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    # peft reads the deprecated `is_gradient_checkpointing` alias (peft 0.21, transformers 5); harmless,
    # drop once peft reads `is_activation_checkpointing`.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


ConfigArg = Annotated[Path, typer.Argument(help="Path to tunesmith.yaml.")]
OverridesArg = Annotated[
    list[str] | None,
    typer.Argument(help="Dotted overrides, e.g. train.lr=1e-4 train.max_steps=20.", show_default=False),
]


def _config(path: Path, overrides: list[str] | None) -> RunConfig:
    try:
        return load_config(path, overrides or [])
    except ConfigError as e:
        console.print(f"[red bold]error:[/red bold] {e}", highlight=False)
        raise typer.Exit(2) from None


def _fail(e: Exception, code: int = 1) -> typer.Exit:
    console.print(f"[red bold]error:[/red bold] {e}", highlight=False)
    return typer.Exit(code)


@app.command()
def run(config: ConfigArg, overrides: OverridesArg = None) -> None:
    """Run every stage: data check, prepare, train, evaluate base vs tuned, report."""
    from tunesmith.runner import run_all

    cfg = _config(config, overrides)
    try:
        outcome = run_all(cfg, console)
    except MethodUnavailableError as e:
        raise _fail(e, code=2) from None
    except (DataError, ModelError) as e:
        raise _fail(e) from None
    if not outcome.targets_met:
        console.print(f"[red bold]targets missed:[/red bold] {', '.join(outcome.eval['failed_targets'])}")  # type: ignore[index]
        raise typer.Exit(1)


@data_app.command("check")
def data_check(
    config: ConfigArg,
    overrides: OverridesArg = None,
    html: Annotated[
        Path | None, typer.Option(help="Also write the pre-flight page (HTML with plots) here.")
    ] = None,
) -> None:
    """Validate, clean and tokenize every example and print the pre-flight summary. Exit 1 on hard errors."""
    from tunesmith.data.report import write_preflight_html
    from tunesmith.runner import check_data

    cfg = _config(config, overrides)
    try:
        _, _, data = check_data(cfg, console)
    except (DataError, ModelError) as e:
        raise _fail(e) from None
    if html:
        write_preflight_html(data.preflight, html, f"{cfg.name}: pre-flight")
        console.print(f"pre-flight page: {html}")
    console.print("[green]data OK[/green]")


@data_app.command("prepare")
def data_prepare(config: ConfigArg, overrides: OverridesArg = None) -> None:
    """Check the data and write the prepared splits and pre-flight report into a new run directory."""
    from tunesmith.runner import prepare_run

    cfg = _config(config, overrides)
    try:
        run_dir = prepare_run(cfg, console)
    except (DataError, ModelError) as e:
        raise _fail(e) from None
    print(run_dir)


@app.command("eval")
def eval_cmd(run_dir: Annotated[Path, typer.Argument(help="A run directory (runs/<id>).")]) -> None:
    """Evaluate a trained run again (base vs tuned on its test split) and rebuild its report."""
    from tunesmith.runner import eval_run

    try:
        outcome = eval_run(run_dir, console)
    except MethodUnavailableError as e:
        raise _fail(e, code=2) from None
    except (FileNotFoundError, ModelError) as e:
        raise _fail(e) from None
    if not outcome.targets_met:
        raise typer.Exit(1)


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="A run directory (runs/<id>).")]) -> None:
    """Rebuild report.html of a run from its artifacts."""
    from tunesmith.eval.report import build_report

    console.print(str(build_report(run_dir)))


RunDirArg = Annotated[Path, typer.Argument(help="A run directory (runs/<id>).")]


@app.command("compare")
def compare_cmd(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run directories, in the order to show them.")],
    out: Annotated[Path, typer.Option(help="Where to write the page.")] = Path("comparison.html"),
) -> None:
    """One HTML page comparing evaluated runs (iterations): verdicts, scores with CIs, forgetting, review."""
    from tunesmith.eval.report import build_comparison

    try:
        print(build_comparison(run_dirs, out))
    except FileNotFoundError as e:
        raise _fail(e) from None


@review_app.command("export")
def review_export(
    run_dir: RunDirArg,
    seed: Annotated[int, typer.Option(help="Seed of the per-row A/B order.")] = 0,
) -> None:
    """Write RUN/review/sheet.csv (blind: base and tuned as A/B in random order) and the key next to it."""
    from tunesmith.eval.review import export_review

    try:
        sheet = export_review(run_dir, seed=seed)
    except FileNotFoundError as e:
        raise _fail(e) from None
    console.print(
        "fill score_A and score_B (1-5) and optionally comment; keep review/key.json from reviewers"
    )
    print(sheet)


@review_app.command("import")
def review_import(
    run_dir: RunDirArg,
    sheet: Annotated[Path, typer.Argument(help="The filled review sheet (CSV).")],
) -> None:
    """Check a filled sheet, fold the scores into eval.json and rebuild the report. Exit 1 on a bad sheet."""
    from tunesmith.eval.report import build_report
    from tunesmith.eval.review import ReviewError, import_review

    try:
        rv = import_review(run_dir, sheet)
    except (FileNotFoundError, ReviewError) as e:
        raise _fail(e) from None
    console.print(
        f"{rv['n']} pairs: base {rv['base']['mean']:.2f}, tuned {rv['tuned']['mean']:.2f} "
        f"(delta {rv['delta']:+.2f}, 95% CI [{rv['delta_ci'][0]:+.2f}, {rv['delta_ci'][1]:+.2f}]); "
        f"tuned wins {100 * rv['win_rate']:.0f}%, ties {100 * rv['tie_rate']:.0f}%"
    )
    print(build_report(run_dir))


@model_app.command("prepare")
def model_prepare(
    model: Annotated[
        str, typer.Argument(help="builtin:NAME, a local folder or a hub id.")
    ] = "builtin:smollm2-135m-instruct",
) -> None:
    """Resolve a model (converting a built-in GGUF to cached safetensors once) and print its folder."""
    from tunesmith.models import resolve_model

    try:
        print(resolve_model(model))
    except ModelError as e:
        raise _fail(e) from None


@app.command("config-reference")
def config_reference_cmd() -> None:
    """Print every configuration key with its type, default and meaning (Markdown)."""
    print(config_reference())


if __name__ == "__main__":
    app()
