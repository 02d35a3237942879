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
from typing import Annotated, Any  # noqa: E402

import typer  # noqa: E402
from rich.console import Console  # noqa: E402

from tunesmith.config import ConfigError, RunConfig, config_reference, load_config  # noqa: E402
from tunesmith.data.issues import DataError  # noqa: E402
from tunesmith.method_traits import METHODS  # noqa: E402
from tunesmith.models import ModelError  # noqa: E402
from tunesmith.progress import make_console  # noqa: E402
from tunesmith.train.methods import MethodUnavailableError  # noqa: E402
from tunesmith.train.plan import GPU_CHOICES, PlanError  # noqa: E402
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
console = make_console()


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
        failed = outcome.eval.failed_targets if outcome.eval else []
        console.print(f"[red bold]targets missed:[/red bold] {', '.join(failed)}")
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
        bool | None,
        typer.Option(
            "--measure/--no-measure",
            help="Load the weights and time a few real steps on this machine. Default: when the plan fits and "
            "the steps are cheap (under a minute by the computed time); not with --gpu.",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plans as JSON on stdout.")] = False,
) -> None:
    """Parameters, peak memory (weights, gradients, optimizer, activations, overhead) and time per epoch,
    from the model's config and the prepared data, without loading weights; then, on this machine, the time
    of a few real steps when the plan fits and they are cheap. Exit 3 when no planned method fits."""

    from tunesmith.runner import check_data, resolve_recipe
    from tunesmith.train.plan import (
        DataStats,
        fmt_bytes,
        make_plan,
        measure_steps,
        plan_footnote,
        plans_json,
        plans_table,
        target_device,
        why_not_measured,
    )

    cfg = _config(config, overrides)
    names = list(METHODS) if method == ["all"] else (method or [cfg.method.name])
    quiet = make_console(quiet=as_json)
    try:
        model_path, tok, data = check_data(cfg, quiet)
        cfg = resolve_recipe(cfg, model_path, data, quiet)
        device = target_device(gpu, cfg.train.threads)
        stats = DataStats.from_prepared(data)
        plans = [make_plan(cfg, model_path, stats, device, m) for m in names]
        here = gpu in (None, "cpu")
        if measure and not here:
            raise PlanError("--measure times this machine; leave out --gpu")
        pad = int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
        for p in plans:
            why = why_not_measured(cfg, p) if measure is None and here else None
            if measure or (measure is None and here and why is None):
                p.measured = measure_steps(cfg, model_path, data, p, pad)
            elif why:
                quiet.print(f"[dim]{p.method}: time from FLOPs only ({why})[/dim]", highlight=False)
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
            if m := p.measured:
                console.print(
                    f"[dim]{p.method} measured: {m['steps_timed']} steps after a warm-up, "
                    f"{m['tokens_per_s']:,.0f} tokens/s (padding included)"
                    + (f", {100 * m['mfu']:.0f}% of the matmul peak" if m.get("mfu") else "")
                    + (f", peak RSS {fmt_bytes(m['peak_rss'])}" if m.get("peak_rss") else "")
                    + "[/dim]",
                    highlight=False,
                )
    unfit = [p for p in plans if not p.fits]
    for p in unfit:
        console.print(f"[red bold]does not fit:[/red bold] {p.refusal()}", highlight=False)
    if len(unfit) == len(plans):
        raise typer.Exit(3)


@app.command("init")
def init_cmd(
    data: Annotated[list[Path], typer.Argument(help="Your data file(s) or folder, as they are.")],
    out: Annotated[Path, typer.Option(help="Where to write the config.")] = Path("tunesmith.yaml"),
    model: Annotated[str, typer.Option(help="Base model (its tokenizer measures the lengths).")] = (
        "builtin:smollm2-135m-instruct"
    ),
    force: Annotated[bool, typer.Option(help="Overwrite an existing config.")] = False,
    plan: Annotated[bool, typer.Option(help="Then check the data and print the pre-flight and plan.")] = True,
) -> None:
    """Read your data, detect its format, columns, labels and lengths, and write a commented config.

    Then `tunesmith run` on the written file trains and evaluates it. Exit 1 when the data cannot be read
    or understood (the message says which columns were seen and what to set)."""
    from tunesmith.data.init import InitError, write_config
    from tunesmith.models import load_tokenizer, resolve_model

    try:
        model_path = resolve_model(model)
        tok = load_tokenizer(model_path)
        context = _context_length(model_path)
        profile, path = write_config([str(p) for p in data], out, model, tok, context, force)
    except (InitError, DataError, ModelError) as e:
        raise _fail(e) from None
    columns = profile.mapping.model_dump(exclude_defaults=True)
    console.print(
        f"{profile.rows:,} {profile.layout} rows; answers: {profile.answers}"
        + (f" ({len(profile.labels)} labels)" if profile.labels else "")
        + (f"; columns: {columns}" if columns else "; standard column names")
        + (f"; test file: {profile.test[0]}" if profile.test else "")
    )
    for note in profile.notes:
        console.print(f"[dim]{note}[/dim]")
    console.print(f"[green]wrote {path}[/green]; next: tunesmith run {path}")
    if plan:
        from tunesmith.runner import check_data, plan_on_this_machine, resolve_recipe

        cfg = _config(path, None)
        try:
            model_path, _, prepared = check_data(cfg, console)
        except (DataError, ModelError) as e:
            raise _fail(e) from None
        plan_on_this_machine(
            resolve_recipe(cfg, model_path, prepared, console), model_path, prepared, console
        )


def _context_length(model_path: str) -> int:
    """The model's context window (max_position_embeddings), from its config alone."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path)
    return int(getattr(config, "max_position_embeddings", 2048) or 2048)


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


@app.command("tune")
def tune_cmd(
    config: ConfigArg,
    overrides: OverridesArg = None,
    budget: Annotated[
        str | None,
        typer.Option(help="Wall-clock time of this worker, e.g. 45m, 2h, 1h30m (default: tune.budget)."),
    ] = None,
    trials: Annotated[
        int | None,
        typer.Option(min=1, help="Trials of the study, all workers together (default: tune.trials)."),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue the study, or join it as one more worker (it is created if missing); trials whose "
            "worker was killed are marked failed and not counted.",
        ),
    ] = False,
    storage: Annotated[
        str | None,
        typer.Option(
            help="Optuna storage the workers share: postgresql://..., mysql://..., sqlite:///..., or a journal "
            "file path (default: RUNS_DIR/tune/STUDY/journal.log)."
        ),
    ] = None,
    study: Annotated[str | None, typer.Option(help="Study name (default: the config's name).")] = None,
) -> None:
    """Search for a recipe until the targets pass on val or the budget ends (Optuna TPE; weak trials pruned
    at val evaluations); every trial is a run in the registry. The chosen trial is then scored once on the
    test split, and the study's page (history, importances, parallel coordinates, the chosen config) is
    written. Exit 0 when it meets the targets on test, 1 when it misses one (or no trial completed), 2 for a
    configuration or search-space error."""
    from tunesmith.config import parse_duration
    from tunesmith.tune import TuneError, TuneOptions, run_tune

    cfg = _config(config, overrides)
    try:
        budget_s = parse_duration(budget) if budget is not None else None
    except ValueError as e:
        raise _fail(ValueError(f"--budget: {e}"), 2) from None
    options = TuneOptions(budget_s=budget_s, trials=trials, resume=resume, storage=storage, study=study)
    try:
        outcome = run_tune(cfg, options, console)
    except (TuneError, MethodUnavailableError) as e:
        raise _fail(e, 2) from None
    except (DataError, ModelError, FileNotFoundError, ValueError) as e:
        raise _fail(e) from None
    except (PlanError, PrecisionError) as e:
        raise _fail(e, 3) from None
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]: continue the study with --resume")
        raise typer.Exit(130) from None
    if outcome.best is None:
        raise typer.Exit(1)
    if outcome.test is not None and not outcome.targets_met:
        console.print(
            f"[red bold]targets missed on test:[/red bold] {', '.join(outcome.test['failed_targets'])}"
        )
        raise typer.Exit(1)


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
    from tunesmith.eval.report import build_comparison, iterations_summary, load_evaluated

    try:
        page = build_comparison(run_dirs, out)
    except FileNotFoundError as e:
        raise _fail(e) from None
    for line in iterations_summary(load_evaluated(run_dirs)):
        console.print(line, highlight=False)
    print(page)


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


runs_app = typer.Typer(
    no_args_is_help=True, help="The registry of runs: list, inspect, compare, promote, roll back."
)
app.add_typer(runs_app, name="runs")
feedback_app = typer.Typer(no_args_is_help=True, help="Turn served feedback into training data.")
app.add_typer(feedback_app, name="feedback")

RunsDirOpt = Annotated[
    Path,
    typer.Option(
        "--runs-dir", envvar="TUNESMITH_RUNS_DIR", help="Folder of run directories (holds registry.sqlite)."
    ),
]
RUNS_DIR_DEFAULT = Path("runs")


def _stdout_console() -> Console:
    """Tables on stdout; when piped (no terminal width), wide enough that run ids are not cut."""
    return make_console(stderr=False)


def _registry_call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    from tunesmith.registry import RegistryError

    try:
        return fn(*args, **kwargs)
    except RegistryError as e:
        raise _fail(e) from None


@runs_app.command("ls")
def runs_ls(
    runs_dir: RunsDirOpt = RUNS_DIR_DEFAULT,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per run, for scripts.")] = False,
) -> None:
    """List every run with its stage, method, primary metric and aliases."""
    import json

    from rich.table import Table

    from tunesmith.registry import aliases, list_runs

    rows = list_runs(runs_dir)
    by_run: dict[str, list[str]] = {}
    for alias, run_id in aliases(runs_dir).items():
        by_run.setdefault(run_id, []).append(alias)
    if as_json:
        for r in rows:
            fields = (
                "id",
                "created",
                "stage",
                "method",
                "base_model",
                "primary_metric",
                "primary_value",
                "targets_met",
                "parent_run",
            )
            print(
                json.dumps(
                    {
                        **{k: getattr(r, k) for k in fields},
                        "aliases": by_run.get(r.id, []),
                        "tune": r.manifest.get("tune"),
                        "path": str(r.path),
                    }
                )
            )
        return
    t = Table(title=f"runs in {runs_dir}", title_justify="left")
    for col in ("id", "created", "stage", "method", "primary metric", "targets", "parent", "aliases", "tune"):
        t.add_column(col, no_wrap=col in ("id", "parent"))
    for r in rows:
        metric = f"{r.primary_metric} {r.primary_value:.3f}" if r.primary_value is not None else ""
        targets = "" if r.targets_met is None else ("met" if r.targets_met else "missed")
        t.add_row(
            r.id,
            r.created,
            r.stage,
            r.method,
            metric,
            targets,
            r.parent_run or "",
            ", ".join(by_run.get(r.id, [])),
            _tune_tag(r.manifest.get("tune")),
        )
    _stdout_console().print(t)


def _tune_tag(tag: dict[str, Any] | None) -> str:
    """`study #3 pruned` for a tune trial's run."""
    if not tag:
        return ""
    return f"{tag['study']} #{tag['trial']} {tag.get('state', '')}" + (
        " (chosen)" if tag.get("chosen") else ""
    )


@runs_app.command("show")
def runs_show(
    run_id: Annotated[str, typer.Argument(help="Run id.")], runs_dir: RunsDirOpt = RUNS_DIR_DEFAULT
) -> None:
    """Print a run's manifest (config, data hash, base model and revision, code version, metrics, artifacts,
    parent run, stages, promotions) as JSON."""
    import json

    from tunesmith.registry import get_run

    run = _registry_call(get_run, runs_dir, run_id)
    print(json.dumps(run.manifest, indent=2, ensure_ascii=False))


@runs_app.command("compare")
def runs_compare(
    a: Annotated[str, typer.Argument(help="Run id.")],
    b: Annotated[str, typer.Argument(help="Run id.")],
    runs_dir: RunsDirOpt = RUNS_DIR_DEFAULT,
) -> None:
    """Two runs side by side: lineage facts, the config keys that differ, every metric."""
    from rich.table import Table

    from tunesmith.registry import compare_runs, get_run

    diff = compare_runs(_registry_call(get_run, runs_dir, a), _registry_call(get_run, runs_dir, b))
    out = _stdout_console()
    for title, rows in (
        ("facts", diff["facts"]),
        ("config (differences)", diff["config"]),
        ("metrics (tuned)", diff["metrics"]),
    ):
        t = Table(title=title, title_justify="left")
        t.add_column("key")
        t.add_column(a)
        t.add_column(b)
        for k, (va, vb) in rows.items():
            fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else ("" if v is None else str(v))  # noqa: E731
            t.add_row(k, fmt(va), fmt(vb))
        out.print(t)


@runs_app.command("promote")
def runs_promote(
    run_id: Annotated[str, typer.Argument(help="Run id.")],
    alias: Annotated[str, typer.Option(help="Alias to point at the run.")] = "production",
    force: Annotated[bool, typer.Option(help="Promote a run that missed its targets.")] = False,
    runs_dir: RunsDirOpt = RUNS_DIR_DEFAULT,
) -> None:
    """Point an alias (default `production`) at a run; `serve --alias` serves it. History is kept."""
    from tunesmith.registry import promote

    _registry_call(promote, runs_dir, run_id, alias, force)
    console.print(f"{alias} -> {run_id}")


@runs_app.command("rollback")
def runs_rollback(
    alias: Annotated[str, typer.Option(help="Alias to move back.")] = "production",
    runs_dir: RunsDirOpt = RUNS_DIR_DEFAULT,
) -> None:
    """Point an alias back at the run promoted before the current one (history is kept)."""
    from tunesmith.registry import rollback

    old, new = _registry_call(rollback, runs_dir, alias)
    console.print(f"{alias} -> {new} (was {old})")


@runs_app.command("reindex")
def runs_reindex(runs_dir: RunsDirOpt = RUNS_DIR_DEFAULT) -> None:
    """Rebuild registry.sqlite from the runs' manifest.json files alone (promotion history included)."""
    from tunesmith.registry import rebuild

    print(rebuild(runs_dir))


@app.command("export")
def export_cmd(
    run: Annotated[str, typer.Argument(help="Run id or run directory.")],
    format: Annotated[
        str, typer.Option("--format", "-f", help="merged, adapter, gguf, ollama or vllm.")
    ] = "merged",
    quant: Annotated[str, typer.Option(help="GGUF weights (gguf, ollama): q8_0 or f16.")] = "q8_0",
    prompts: Annotated[int, typer.Option(help="Test prompts the export is verified on.")] = 8,
    runs_dir: RunsDirOpt = RUNS_DIR_DEFAULT,
) -> None:
    """Export a trained run and verify it against base + adapter on its test prompts (logits max abs
    difference, top-1 and greedy-output agreement); exit 1 when verification fails."""
    import json

    from tunesmith.export import ExportError, ExportVerificationError, export_run
    from tunesmith.serve.server import run_dir_of

    run_dir = _registry_call(run_dir_of, runs_dir, run)
    try:
        report = export_run(run_dir, format, quant=quant, n_prompts=prompts, console=console)
    except ExportVerificationError as e:
        print(json.dumps({k: v for k, v in e.report.items() if k != "files"}, indent=2, default=str))
        raise _fail(e) from None
    except (ExportError, ModelError) as e:
        raise _fail(e) from None
    v = report["verification"]
    summary: dict[str, Any] = {
        k: report[k] for k in ("run", "format", "integrity", "eval_predictions") if k in report
    }
    summary["verification"] = {
        k: v[k]
        for k in (
            "prompts",
            "positions",
            "max_abs_diff",
            "max_rel_diff",
            "top1_agreement",
            "greedy_agreement",
            "tolerance",
            "passed",
        )
    }
    for k in ("command", "file", "tokenizer"):
        if k in report:
            summary[k] = report[k]
    print(json.dumps(summary, indent=2))
    console.print(f"[green]export verified[/green]: {run_dir / 'export'}")


# The options `serve` and `ui` share: both bind loopback unless a key is set.
HostOpt = Annotated[str, typer.Option(help="Address to bind; anything but loopback needs an API key.")]
ApiKeyOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--api-key",
        help="Accepted API key (repeat for several). Default: TUNESMITH_API_KEY, one string, several "
        "keys separated by commas.",
        show_default=False,
    ),
]


@app.command("serve")
def serve_cmd(
    runs: Annotated[
        list[str] | None, typer.Argument(help="Run ids (or run directories) to serve.", show_default=False)
    ] = None,
    alias: Annotated[
        str | None, typer.Option(help="Also serve the run this alias points at, under the alias name.")
    ] = None,
    host: HostOpt = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    api_key: ApiKeyOpt = None,
    max_concurrency: Annotated[
        int,
        typer.Option(help="Requests admitted at once (they decode together, in one batch); more get 429."),
    ] = 16,
    timeout: Annotated[
        float, typer.Option(help="Seconds a request may take, waiting included (504 after).")
    ] = 60.0,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body (413 above).")] = 1 << 20,
    max_tokens: Annotated[
        int, typer.Option(help="Completion tokens when a request gives no max_tokens.")
    ] = 256,
    max_context: Annotated[
        int | None, typer.Option(help="Prompt + completion limit below the model's own.")
    ] = None,
    max_n: Annotated[int, typer.Option(help="Largest `n` (choices per request).")] = 4,
    serve_dir: Annotated[
        Path | None, typer.Option(help="Where responses and feedback are stored (default RUNS_DIR/serve).")
    ] = None,
    insecure_no_key: Annotated[
        bool, typer.Option(help="Allow a non-loopback host without an API key.")
    ] = False,
    heap: Annotated[
        str,
        typer.Option(
            help="glibc heap: fast (freed memory is reused; decoding ~15% faster) or compact (RSS ~7% lower)."
        ),
    ] = "fast",
    runs_dir: RunsDirOpt = RUNS_DIR_DEFAULT,
) -> None:
    """Serve runs over an OpenAI-compatible API (one base model, one adapter per run, chosen by `model`)."""
    from tunesmith.malloc import set_heap
    from tunesmith.registry import RegistryError
    from tunesmith.serve.app import Settings
    from tunesmith.serve.engine import ServeError
    from tunesmith.serve.server import api_keys, serve

    settings = Settings(
        api_keys=api_keys(api_key, os.environ.get("TUNESMITH_API_KEY")),
        max_body_bytes=max_body_bytes,
        max_concurrency=max_concurrency,
        timeout_s=timeout,
        max_n=max_n,
        default_max_tokens=max_tokens,
        max_context=max_context,
        serve_dir=serve_dir or runs_dir / "serve",
    )
    if heap not in ("fast", "compact"):
        raise _fail(ValueError(f"--heap {heap!r}: use fast or compact"))
    set_heap(heap)  # before the model loads; see tunesmith/malloc.py
    try:
        serve(runs_dir, list(runs or []), alias, settings, host, port, allow_no_key=insecure_no_key)
    except (ServeError, RegistryError, ModelError, FileNotFoundError) as e:
        raise _fail(e) from None


@app.command("ui")
def ui_cmd(
    runs_dir: RunsDirOpt = RUNS_DIR_DEFAULT,
    host: HostOpt = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 7860,
    api_key: ApiKeyOpt = None,
    max_concurrency: Annotated[int, typer.Option(help="Playground answers generated at once.")] = 4,
    timeout: Annotated[float, typer.Option(help="Seconds a playground answer may take.")] = 60.0,
    max_tokens: Annotated[int, typer.Option(help="Largest max tokens of a playground answer.")] = 256,
    max_body_bytes: Annotated[int, typer.Option(help="Largest form body (uploads: 512 MiB).")] = 1 << 20,
) -> None:
    """The browser UI: runs (promote, roll back), a run's live curves and report, start a run from a data
    file, the playground (base vs tuned, streamed), blind review, compare. Loopback only without a key."""
    from tunesmith.malloc import set_heap
    from tunesmith.serve.app import Settings
    from tunesmith.serve.server import api_keys
    from tunesmith.ui.server import UIStartError, serve_ui

    set_heap("fast")  # the playground decodes in this process, as `serve` does (runs train in their own)

    settings = Settings(
        api_keys=api_keys(api_key, os.environ.get("TUNESMITH_API_KEY")),
        max_body_bytes=max_body_bytes,
        max_concurrency=max_concurrency,
        timeout_s=timeout,
        default_max_tokens=max_tokens,
        serve_dir=runs_dir / "serve",
    )
    try:
        serve_ui(runs_dir, settings, host, port)
    except UIStartError as e:
        raise _fail(e) from None


@feedback_app.command("export")
def feedback_export(
    out: Annotated[Path, typer.Option(help="Folder for sft.jsonl, dpo.jsonl and feedback_set.json.")],
    serve_dir: Annotated[Path | None, typer.Option(help="The serve folder (default RUNS_DIR/serve).")] = None,
    include_upvoted: Annotated[
        bool, typer.Option(help="Up-rated answers without a correction become SFT examples too.")
    ] = False,
    runs_dir: RunsDirOpt = RUNS_DIR_DEFAULT,
) -> None:
    """Corrections -> SFT chat examples; (rejected answer, correction) -> DPO pairs; both cleaned with the
    served run's data rules and checked by the training data loader."""
    import json

    from tunesmith.serve.feedback import FeedbackStore, export_feedback

    sdir = serve_dir or runs_dir / "serve"
    if not (sdir / "feedback.sqlite").is_file():
        raise _fail(
            FileNotFoundError(f"{sdir} holds no feedback.sqlite; is it the folder `tunesmith serve` wrote?")
        )
    clean = None
    served_runs = sorted({r["run_id"] for r in FeedbackStore(sdir).rows()})
    if served_runs and (runs_dir / served_runs[0] / "resolved.yaml").is_file():
        from tunesmith.config import load_run_config

        clean = load_run_config(runs_dir / served_runs[0]).data.clean
    result = export_feedback(sdir, out, include_upvoted=include_upvoted, clean=clean)
    print(
        json.dumps(
            {
                "feedback_set": result.set_id,
                "out": str(result.out_dir),
                "sft": result.sft,
                "dpo": result.dpo,
                "skipped": result.skipped,
            },
            indent=2,
        )
    )


@app.command("config-reference")
def config_reference_cmd() -> None:
    """Print every configuration key with its type, default and meaning (Markdown)."""
    print(config_reference())


if __name__ == "__main__":
    app()
