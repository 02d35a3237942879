"""Base vs tuned for the objectives whose outputs are not generated text.

- `classify`: the classifier's label probabilities on every test example. Metrics: accuracy (per example,
  so it gets a paired bootstrap CI like every other metric) and macro-F1 (scikit-learn, on the whole set).
  The base is the same network before training: its new head is untrained, so it scores about chance; the
  comparison says how much the head and adapter learnt, on the same examples.
- `pretrain`: per-block mean next-token loss on the held-out text blocks (`held_out_loss`, lower is better)
  and the perplexity exp(mean loss).

Both write the same `eval/eval.json` and `eval/predictions.jsonl` as the generation evaluation, so the
report, the targets and the exit code work the same way.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

from tunesmith.config import RunConfig
from tunesmith.data.pipeline import PreparedData
from tunesmith.eval.compare import compare
from tunesmith.eval.result import EvalResult, write_eval
from tunesmith.io import atomic_write_text
from tunesmith.progress import make_console, stage_progress

Advance = Callable[[int], None]


@contextlib.contextmanager
def _base_of(model: Any, load_base: Callable[[], Any] | None) -> Iterator[Any]:
    if load_base is not None:
        base = load_base()
        try:
            yield base
        finally:
            del base
            gc.collect()
    else:
        with model.disable_adapter():
            yield model


def _class_probs(
    model: Any, items: list[Any], batch_size: int, pad_id: int, advance: Advance
) -> list[list[float]]:
    import torch

    from tunesmith.train.objectives import ClassifyObjective

    obj = ClassifyObjective()
    device = next(p for p in model.parameters()).device
    was = model.training
    model.eval()
    out: list[list[float]] = []
    with torch.no_grad():
        for i in range(0, len(items), batch_size):
            batch = obj.collate(items[i : i + batch_size], pad_id)
            logits = model(
                input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
            ).logits.float()
            out += torch.softmax(logits, -1).tolist()
            advance(len(batch["input_ids"]))
    model.train(was)
    return out


def _block_losses(
    model: Any, items: list[Any], batch_size: int, pad_id: int, advance: Advance
) -> list[float]:
    import torch

    from tunesmith.train.batching import collate, loss_tokens, token_loss_sum

    was = model.training
    model.eval()
    out: list[float] = []
    with torch.no_grad():
        for item in items:  # one block at a time: a loss per block for the paired bootstrap
            out.append(float(token_loss_sum(model, collate([item], pad_id))) / max(loss_tokens([item]), 1))
            advance(1)
    model.train(was)
    return out


def evaluate_heldout(
    cfg: RunConfig,
    run_dir: Path,
    model: Any,
    tok: Any,
    data: PreparedData,
    load_base: Callable[[], Any] | None = None,
    console: Console | None = None,
    split: str = "test",
    out_dir: Path | None = None,
) -> EvalResult:
    """Base then tuned over every item of `split` (test; `tune` scores its trials on val), with progress
    (a bar, or plain lines in a log); results go to `out_dir` (default run_dir/eval)."""
    progress = stage_progress(
        console or make_console(),
        "eval",
        TextColumn("[bold]eval {task.description}[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with progress:
        return _evaluate_heldout(
            cfg, out_dir or run_dir / "eval", model, tok, data, load_base, progress, split
        )


def _evaluate_heldout(
    cfg: RunConfig,
    out_dir: Path,
    model: Any,
    tok: Any,
    data: PreparedData,
    load_base: Callable[[], Any] | None,
    progress: Any,
    split: str,
) -> EvalResult:
    from sklearn.metrics import f1_score

    objective = cfg.train.objective
    pad_id = int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    part = getattr(data, split)
    items = list(part.encoded)
    examples = list(part.examples)
    if cfg.eval.limit:
        items, examples = items[: cfg.eval.limit], examples[: cfg.eval.limit]
    bs = cfg.eval.batch_size

    def advancer(which: str) -> Advance:
        task = progress.add_task(which, total=len(items))
        return lambda n: progress.advance(task, n)

    preds: list[dict[str, Any]] = []
    extra: dict[str, Any] = {}
    if objective == "classify":
        names = data.class_labels
        with _base_of(model, load_base) as base:
            base_p = _class_probs(base, items, bs, pad_id, advancer("base"))
        tuned_p = _class_probs(model, items, bs, pad_id, advancer("tuned"))
        gold = [e.label_id for e in items]
        base_pred = [max(range(len(p)), key=p.__getitem__) for p in base_p]
        tuned_pred = [max(range(len(p)), key=p.__getitem__) for p in tuned_p]
        scores_b = {"accuracy": [float(a == g) for a, g in zip(base_pred, gold, strict=True)]}
        scores_t = {"accuracy": [float(a == g) for a, g in zip(tuned_pred, gold, strict=True)]}
        labels = list(range(len(names)))
        extra["macro_f1"] = {
            "base": float(f1_score(gold, base_pred, labels=labels, average="macro", zero_division=0)),
            "tuned": float(f1_score(gold, tuned_pred, labels=labels, average="macro", zero_division=0)),
        }
        for i, ex in enumerate(examples):
            preds.append(
                {
                    "source": ex.source,
                    "prompt": ex.messages[-2]["content"] if len(ex.messages) >= 2 else "",
                    "reference": names[gold[i]],
                    "base": names[base_pred[i]],
                    "tuned": names[tuned_pred[i]],
                    "tuned_probabilities": {n: round(tuned_p[i][k], 4) for k, n in enumerate(names)},
                    "scores": {
                        "accuracy": {"base": scores_b["accuracy"][i], "tuned": scores_t["accuracy"][i]}
                    },
                }
            )
        primary = "accuracy"
    elif objective == "pretrain":
        with _base_of(model, load_base) as base:
            b = _block_losses(base, items, bs, pad_id, advancer("base"))
        t = _block_losses(model, items, bs, pad_id, advancer("tuned"))
        scores_b, scores_t = {"held_out_loss": b}, {"held_out_loss": t}
        extra["perplexity"] = {
            "base": math.exp(sum(b) / max(len(b), 1)),
            "tuned": math.exp(sum(t) / max(len(t), 1)),
        }
        preds = [
            {
                "source": f"test block {i + 1}",
                "prompt": tok.decode(items[i].input_ids[:64]) + " ...",
                "reference": "",
                "base": f"loss {b[i]:.4f}",
                "tuned": f"loss {t[i]:.4f}",
                "scores": {"held_out_loss": {"base": b[i], "tuned": t[i]}},
            }
            for i in range(len(items))
        ]
        primary = "held_out_loss"
    else:
        raise ValueError(f"evaluate_heldout handles classify and pretrain, not {objective!r}")

    rows = compare(scores_b, scores_t, cfg.parsed_targets(), seed=cfg.train.seed)
    failed = [r.metric for r in rows if r.status == "FAIL"]
    atomic_write_text(
        out_dir / "predictions.jsonl", "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in preds)
    )
    result = EvalResult(
        n_examples=len(items),
        primary_metric=primary,
        metrics=[r.as_dict() for r in rows],
        targets_met=not failed,
        failed_targets=failed,
        sections={"objective": objective, **extra},
    )
    write_eval(out_dir, result)
    return result


__all__ = ["evaluate_heldout"]
