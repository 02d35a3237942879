"""Command line: parse, call one function, print with rich. Exit codes: 0 ok, 1 data error or missed
target, 2 configuration error (or a method this machine cannot run, e.g. qlora without CUDA), 3 the run
cannot work on this machine (memory plan does not fit, or bf16 asked for without hardware support)."""

from __future__ import annotations

import os

# Busy-waiting OpenMP threads (libgomp's default) slow CPU training 3x when any other process competes
# for the cores; passive waiting costs little when the machine is idle. Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from tunesmith.malloc import limit_heap_fragmentation  # noqa: E402

limit_heap_fragmentation()  # before torch allocates: see tunesmith/malloc.py

from pathlib import Path  # noqa: E402
from typing import Annotated  # noqa: E402

import typer  # noqa: E402
from rich.console import Console  # noqa: E402

from tunesmith.config import ConfigError, RunConfig, config_reference, load_config  # noqa: E402
from tunesmith.data.validate import DataError  # noqa: E402
from tunesmith.models import ModelError  # noqa: E402
from tunesmith.train.methods import MethodUnavailableError  # noqa: E402
from tunesmith.train.plan import GPU_CHOICES, METHODS, PlanError  # noqa: E402
from tunesmith.train.precision import PrecisionError  # noqa: E402

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


ResumeOpt = Annotated[
    bool,
    typer.Option(
        "--resume",
        help="Continue an interrupted run from its latest checkpoint (with a config: its newest unfinished run).",
    ),
]


@app.command()
def run(config: ConfigArg, overrides: OverridesArg = None, resume: ResumeOpt = False) -> None:
    """Run every stage: data check, prepare, train, evaluate base vs tuned, report."""
    from tunesmith.runner import find_unfinished, run_all
    from tunesmith.train.checkpoint import TrainingDiverged

    cfg = _config(config, overrides)
    try:
        outcome = run_all(cfg, console, resume_dir=find_unfinished(cfg, "eval") if resume else None)
    except MethodUnavailableError as e:
        raise _fail(e, code=2) from None
    except (DataError, ModelError, TrainingDiverged, FileNotFoundError, FileExistsError, ValueError) as e:
        raise _fail(e) from None
    except (PlanError, PrecisionError) as e:
        raise _fail(e, 3) from None
    if not outcome.targets_met:
        console.print(f"[red bold]targets missed:[/red bold] {', '.join(outcome.eval['failed_targets'])}")  # type: ignore[index]
        raise typer.Exit(1)


@app.command()
def plan(
    config: ConfigArg,
    overrides: OverridesArg = None,
    gpu: Annotated[
        str | None,
        typer.Option(help=f"Plan for this device instead of this machine: {', '.join(GPU_CHOICES)}."),
    ] = None,
    method: Annotated[
        list[str] | None,
        typer.Option(
            help=f"Plan these methods (repeat; `all`: {', '.join(METHODS)}). Default: the config's."
        ),
    ] = None,
    measure: Annotated[
        bool, typer.Option(help="Also load the weights and time a few real steps (this machine only).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plans as JSON on stdout.")] = False,
) -> None:
    """Parameters, peak memory (weights, gradients, optimizer, activations, overhead) and time per epoch,
    from the model's config and the prepared data, without loading weights. Exit 3 when no planned method fits."""
    import json

    from tunesmith.runner import check_data
    from tunesmith.train.plan import (
        DataStats,
        make_plan,
        measure_steps,
        plan_footnote,
        plans_json,
        plans_table,
        target_device,
    )

    cfg = _config(config, overrides)
    names = list(METHODS) if method == ["all"] else (method or [cfg.method.name])
    quiet = Console(stderr=True, quiet=as_json)
    try:
        model_path, tok, data = check_data(cfg, quiet)
        device = target_device(gpu, cfg.train.threads)
        stats = DataStats.from_prepared(data)
        plans = [make_plan(cfg, model_path, stats, device, m) for m in names]
        if measure:
            if gpu not in (None, "cpu"):
                raise PlanError("--measure times this machine; leave out --gpu")
            pad = int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
            for p in plans:
                p.measured = measure_steps(cfg, model_path, data, p, pad)
    except (DataError, ModelError) as e:
        raise _fail(e) from None
    except (PlanError, PrecisionError) as e:
        raise _fail(e, 3) from None
    if as_json:
        print(plans_json(plans))
    else:
        console.print(plans_table(plans))
        console.print(f"[dim]{plan_footnote(plans[0])}[/dim]")
        for p in plans:
            if p.measured:
                console.print(f"[dim]{p.method} measured: {json.dumps(p.measured)}[/dim]")
    unfit = [p for p in plans if not p.fits]
    for p in unfit:
        console.print(f"[red bold]does not fit:[/red bold] {p.refusal()}", highlight=False)
    if len(unfit) == len(plans):
        raise typer.Exit(3)


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


@app.command("train")
def train_cmd(
    target: Annotated[
        Path,
        typer.Argument(help="tunesmith.yaml (prepare data into a new run), or a run directory (runs/<id>)."),
    ],
    overrides: OverridesArg = None,
    resume: ResumeOpt = False,
) -> None:
    """Train stage only: on a config, prepare the data into a new run and train; on a run directory with
    prepared data, train it (with --resume: from its latest checkpoint). Prints the run directory."""
    from tunesmith.runner import find_unfinished, train_new, train_run
    from tunesmith.train.checkpoint import TrainingDiverged

    errors = (DataError, ModelError, TrainingDiverged, FileNotFoundError, FileExistsError, ValueError)
    if target.is_dir():
        if overrides:
            console.print(
                "[red bold]error:[/red bold] a run directory trains with its own resolved.yaml; no overrides"
            )
            raise typer.Exit(2)
        run_dir = target
        try:
            train_run(run_dir, console, resume=resume)
        except errors as e:
            raise _fail(e) from None
    else:
        cfg = _config(target, overrides)
        try:
            if resume:
                run_dir = find_unfinished(cfg, "train")
                train_run(run_dir, console, resume=True)
            else:
                run_dir, _ = train_new(cfg, console)
        except MethodUnavailableError as e:
            raise _fail(e, code=2) from None
        except errors as e:
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
