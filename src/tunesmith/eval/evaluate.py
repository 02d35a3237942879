"""The eval stage: base and tuned model generate on the same test prompts; scores, CIs, targets."""

from __future__ import annotations

import gc
import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tunesmith.config import RunConfig
from tunesmith.data.formats import Example
from tunesmith.data.tokenize import encode_prompt, stop_token_ids
from tunesmith.eval.compare import compare
from tunesmith.eval.generate import Generation, PromptTuned, generate
from tunesmith.eval.metrics import score_all
from tunesmith.io import atomic_write_json, atomic_write_text
from tunesmith.train.methods import MERGEABLE, PEFT_METHODS


def _speed(gens: list[Generation]) -> dict[str, float]:
    # Batch members share their batch's wall time: count each batch once.
    seconds = sum({g.batch: g.seconds for g in gens}.values())
    tokens = sum(g.new_tokens for g in gens)
    return {
        "new_tokens": tokens,
        "mean_new_tokens": round(statistics.fmean(g.new_tokens for g in gens), 2) if gens else 0.0,
        "tokens_per_s": round(tokens / seconds, 1) if seconds else 0.0,
    }


def evaluate(
    cfg: RunConfig,
    run_dir: Path,
    model: Any,
    tok: Any,
    test: list[Example],
    console: Console | None = None,
    load_base: Callable[[], Any] | None = None,
) -> dict[str, Any]:
    """Base and tuned `model` generate on the same test prompts.

    Peft methods: the base is the same weights with the adapter disabled (no second copy). A full
    fine-tune changed the weights themselves, so `load_base` loads the original model again from its
    source for the base pass, and it is freed before the tuned pass. That is exact (the same weights through
    the same code) and cheap: one load, and a second copy of the weights in memory only during the base
    pass, well under training's peak (weights, gradients and two AdamW moments); and `tunesmith eval
    RUN_DIR`, which has no pre-training model, takes the same path.
    """
    console = console or Console(stderr=True)
    ec = cfg.eval
    method = cfg.method.name
    if method not in PEFT_METHODS and load_base is None:
        raise ValueError(f"method {method!r} changed the base weights: pass load_base for the base pass")
    examples = test[: ec.limit] if ec.limit else test
    prompts = [encode_prompt(tok, ex.messages) for ex in examples]
    refs = [ex.reference for ex in examples]
    stops = stop_token_ids(tok, getattr(model, "generation_config", None))

    outputs: dict[str, list[Generation]] = {}
    with Progress(
        TextColumn("[bold]eval {task.description}[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        for which in ("base", "tuned"):
            task = progress.add_task(which, total=len(prompts))

            def advance(n: int, task: Any = task) -> None:
                progress.advance(task, n)

            def run(m: Any) -> list[Generation]:
                return generate(m, tok, prompts, ec.max_new_tokens, ec.batch_size, stops, advance)

            if which == "base" and load_base is not None:
                base = load_base()
                outputs[which] = run(base)
                del base
                gc.collect()
            elif which == "base":
                with model.disable_adapter():
                    outputs[which] = run(model)
            elif method in MERGEABLE:
                # Merged weights decode faster (no extra matmuls per layer) and are what an exported model
                # serves; the adapter is saved already, and unmerging restores the base for reuse.
                model.merge_adapter()
                try:
                    outputs[which] = run(model)
                finally:
                    model.unmerge_adapter()
            elif method == "prompt":
                outputs[which] = run(PromptTuned(model))
            else:
                # prefix (peft offsets the positions past its virtual keys/values), qlora, full.
                outputs[which] = run(model)

    base_texts = [g.text for g in outputs["base"]]
    tuned_texts = [g.text for g in outputs["tuned"]]
    base_scores = score_all(ec.metrics, ec.json_fields, base_texts, refs)
    tuned_scores = score_all(ec.metrics, ec.json_fields, tuned_texts, refs)
    rows = compare(base_scores, tuned_scores, cfg.parsed_targets(), seed=cfg.train.seed)

    out_dir = run_dir / "eval"
    preds = []
    for i, ex in enumerate(examples):
        preds.append(
            {
                "source": ex.source,
                "prompt": ex.messages[-2]["content"] if len(ex.messages) >= 2 else "",
                "reference": refs[i],
                "base": base_texts[i],
                "tuned": tuned_texts[i],
                "scores": {m: {"base": base_scores[m][i], "tuned": tuned_scores[m][i]} for m in tuned_scores},
            }
        )
    atomic_write_text(
        out_dir / "predictions.jsonl", "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in preds)
    )
    failed = [r.metric for r in rows if r.status == "FAIL"]
    result = {
        "n_examples": len(examples),
        "primary_metric": ec.primary,
        "metrics": [r.as_dict() for r in rows],
        "speed": {"base": _speed(outputs["base"]), "tuned": _speed(outputs["tuned"])},
        "targets_met": not failed,
        "failed_targets": failed,
    }
    atomic_write_json(out_dir / "eval.json", result)
    return result
