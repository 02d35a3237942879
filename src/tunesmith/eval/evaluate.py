"""The eval stage: base and tuned model generate on the same test prompts; scores, CIs, targets."""

from __future__ import annotations

import dataclasses
import gc
import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

from tunesmith.config import RunConfig
from tunesmith.data.answers import FREE, AnswerSpace, is_valid
from tunesmith.data.formats import Example
from tunesmith.data.tokenize import encode_chat, encode_prompt, stop_token_ids
from tunesmith.eval.classify import classification_report, macro_f1_stat
from tunesmith.eval.compare import compare
from tunesmith.eval.constrain import Decoder
from tunesmith.eval.forgetting import PROBE_MAX_NEW_TOKENS, probe_messages, probe_text, summarize
from tunesmith.eval.generate import Generation, PromptTuned, generate
from tunesmith.eval.hallucination import unsupported_spans
from tunesmith.eval.metrics import score_all
from tunesmith.eval.perplexity import perplexity, sequence_nll, text_windows
from tunesmith.eval.result import EvalResult, read_eval, write_eval
from tunesmith.io import atomic_write_text
from tunesmith.method_traits import MERGEABLE_METHODS, PEFT_METHODS
from tunesmith.progress import make_console, stage_progress


def _percentile(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else 0.0


def _speed(gens: list[Generation], single: list[Generation]) -> dict[str, Any]:
    """Throughput of the batched pass; latency as each answer saw it (its batch's wall time), and, on a few
    prompts run alone (`eval.latency_probe`), the latency of a single request."""
    # Batch members share their batch's wall time: count each batch once.
    seconds = sum({g.batch: g.seconds for g in gens}.values())
    tokens = sum(g.new_tokens for g in gens)
    out: dict[str, Any] = {
        "new_tokens": tokens,
        "mean_new_tokens": round(statistics.fmean(g.new_tokens for g in gens), 2) if gens else 0.0,
        "tokens_per_s": round(tokens / seconds, 1) if seconds else 0.0,
        "batch_latency_s": {
            "p50": round(_percentile([g.seconds for g in gens], 50), 3),
            "p95": round(_percentile([g.seconds for g in gens], 95), 3),
        },
    }
    if single:
        secs = [g.seconds for g in single]
        toks = sum(g.new_tokens for g in single)
        out["single"] = {
            "n": len(single),
            "latency_s_p50": round(_percentile(secs, 50), 3),
            "latency_s_p95": round(_percentile(secs, 95), 3),
            "tokens_per_s": round(toks / sum(secs), 1) if sum(secs) else 0.0,
        }
    return out


@dataclass
class PassOutput:
    """What one model (base or tuned) produced."""

    gens: list[Generation]
    nll: list[tuple[float, int]] = field(default_factory=list)
    single: list[Generation] = field(default_factory=list)
    probe: list[Generation] = field(default_factory=list)
    probe_nll: list[tuple[float, int]] = field(default_factory=list)
    free: list[Generation] = field(
        default_factory=list
    )  # the unconstrained pass, when decoding is constrained


def evaluate(
    cfg: RunConfig,
    run_dir: Path,
    model: Any,
    tok: Any,
    test: list[Example],
    console: Console | None = None,
    load_base: Callable[[], Any] | None = None,
    out_dir: Path | None = None,
    answers: AnswerSpace = FREE,
    base_pass: bool = True,
    unconstrained_pass: bool = True,
) -> EvalResult:
    """Base and tuned `model` generate on the same test prompts; results go to `out_dir` (default
    run_dir/eval; `tune` scores its trials on the val split into another folder).

    `base_pass` and `unconstrained_pass` False: only what decides a `tune` trial is generated, the tuned
    model's (constrained) answers. The base pass is the same for every trial and the unconstrained pass only
    reports; together they were two thirds of a label trial's scoring. The result says `base_scored: false`
    and its base fields are null.

    Peft methods: the base is the same weights with the adapter disabled (no second copy). A full
    fine-tune changed the weights themselves, so `load_base` loads the original model again from its
    source for the base pass, and it is freed before the tuned pass. That is exact (the same weights through
    the same code) and cheap: one load, and a second copy of the weights in memory only during the base
    pass, well under training's peak (weights, gradients and two AdamW moments); and `tunesmith eval
    RUN_DIR`, which has no pre-training model, takes the same path.

    Each pass also scores the reference answers' NLL (`perplexity`), times a few prompts alone
    (`latency_probe`), and runs the forgetting probe (`forgetting_probe`).

    When the training answers form a closed set (`answers`: labels, or JSON objects of one schema) and
    `eval.constrain` is auto, test answers are decoded inside it; for labels an unconstrained pass, cut at
    the longest label's length, measures how often free generation answers no valid label at all.
    """
    console = console or make_console()
    ec = cfg.eval
    method = cfg.method.name
    if method not in PEFT_METHODS and load_base is None:
        raise ValueError(f"method {method!r} changed the base weights: pass load_base for the base pass")
    examples = test[: ec.limit] if ec.limit else test
    prompts = [encode_prompt(tok, ex.messages) for ex in examples]
    refs = [ex.reference for ex in examples]
    stops = stop_token_ids(tok, getattr(model, "generation_config", None))
    want_nll = "perplexity" in ec.metrics
    nll_seqs = []
    if want_nll:
        for ex in examples:
            enc = encode_chat(tok, ex.messages, max_length=1 << 30, stop_ids=stops)
            nll_seqs.append((enc.input_ids, enc.labels))
    n_single = min(ec.latency_probe, len(prompts))
    probe_prompts = [encode_prompt(tok, m) for m in probe_messages()] if ec.forgetting_probe else []
    probe_windows = text_windows(tok, probe_text()) if ec.forgetting_probe else []
    decoder = Decoder(answers, tok, stops) if ec.constrain == "auto" and answers.kind != "free" else None
    free_tokens = decoder.max_answer_tokens() if decoder and unconstrained_pass else None
    n_free = len(prompts) if free_tokens else 0

    outputs: dict[str, PassOutput] = {}
    with stage_progress(
        console,
        "eval",
        TextColumn("[bold]eval {task.description}[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    ) as progress:
        for which in ("base", "tuned") if base_pass else ("tuned",):
            task = progress.add_task(which, total=len(prompts) + n_free + n_single + len(probe_prompts))

            def advance(n: int, task: Any = task) -> None:
                progress.advance(task, n)

            def run(m: Any, fwd: Any | None = None) -> PassOutput:
                """`m` generates; `fwd` (default `m`) scores NLL: a PromptTuned wrapper only generates."""
                fwd = m if fwd is None else fwd
                out = PassOutput(
                    generate(m, tok, prompts, ec.max_new_tokens, ec.batch_size, stops, advance, decoder)
                )
                if free_tokens:
                    # One token past the longest label: anything that long is no label already.
                    budget = min(ec.max_new_tokens, free_tokens + 1)
                    out.free = generate(m, tok, prompts, budget, ec.batch_size, stops, advance)
                if want_nll:
                    out.nll = sequence_nll(fwd, nll_seqs)
                if n_single:
                    out.single = generate(
                        m, tok, prompts[:n_single], ec.max_new_tokens, 1, stops, advance, decoder
                    )
                if probe_prompts:
                    out.probe = generate(
                        m, tok, probe_prompts, PROBE_MAX_NEW_TOKENS, ec.batch_size, stops, advance
                    )
                    out.probe_nll = sequence_nll(fwd, probe_windows)
                return out

            if which == "base" and load_base is not None:
                base = load_base()
                outputs[which] = run(base)
                del base
                gc.collect()
            elif which == "base":
                with model.disable_adapter():
                    outputs[which] = run(model)
            elif method in MERGEABLE_METHODS:
                # Merged weights decode faster (no extra matmuls per layer) and are what an exported model
                # serves; the adapter is saved already, and unmerging restores the base for reuse.
                model.merge_adapter()
                try:
                    outputs[which] = run(model)
                finally:
                    model.unmerge_adapter()
            elif method == "prompt":
                outputs[which] = run(PromptTuned(model), model)
            else:
                # prefix (peft offsets the positions past its virtual keys/values), qlora, full.
                outputs[which] = run(model)

    if not base_pass:
        # The tuned pass stands in for the base so that one code path builds the rows; the result then
        # blanks every base field (_without_base).
        outputs["base"] = outputs["tuned"]
    base_texts = [g.text for g in outputs["base"].gens]
    tuned_texts = [g.text for g in outputs["tuned"].gens]
    sources = [[m["content"] for m in ex.prompt_messages] for ex in examples]
    facts = [list(ex.meta.get("facts", [])) for ex in examples]
    base_scores = score_all(ec.metrics, ec.json_fields, base_texts, refs, sources, facts)
    tuned_scores = score_all(ec.metrics, ec.json_fields, tuned_texts, refs, sources, facts)
    corpus: dict[str, tuple[Any, Any, int]] = {}
    result_extra: dict[str, Any] = {}
    if "classification" in ec.metrics:
        corpus["macro_f1"] = (macro_f1_stat(base_texts, refs), macro_f1_stat(tuned_texts, refs), len(refs))
        result_extra["classification"] = {
            "base": classification_report(base_texts, refs),
            "tuned": classification_report(tuned_texts, refs),
        }
    if want_nll:
        corpus["perplexity"] = (
            _perplexity_stat(outputs["base"].nll),
            _perplexity_stat(outputs["tuned"].nll),
            len(nll_seqs),
        )
    if decoder is not None:
        result_extra["constrained"] = _constrained_summary(cfg, answers, outputs, refs, sources, facts)
    rows = compare(base_scores, tuned_scores, cfg.parsed_targets(), seed=cfg.train.seed, corpus=corpus)
    order = ec.metric_names()
    rows.sort(key=lambda r: order.index(r.metric) if r.metric in order else len(order))

    out_dir = out_dir or run_dir / "eval"
    want_spans = "hallucination" in ec.metrics
    preds = []
    for i, ex in enumerate(examples):
        p: dict[str, Any] = {
            "id": i,
            "source": ex.source,
            "prompt": ex.messages[-2]["content"] if len(ex.messages) >= 2 else "",
            "reference": refs[i],
            "base": base_texts[i],
            "tuned": tuned_texts[i],
            "scores": {m: {"base": base_scores[m][i], "tuned": tuned_scores[m][i]} for m in tuned_scores},
        }
        if want_nll:
            for which in ("base", "tuned"):
                s, n = outputs[which].nll[i]
                p["scores"].setdefault("ref_nll", {})[which] = s / n if n else None
        if outputs["tuned"].free:
            p["unconstrained"] = {w: outputs[w].free[i].text for w in ("base", "tuned")}
        if facts[i]:
            p["facts"] = facts[i]
        if want_spans:
            p["hallucinated_spans"] = {
                which: [sp.as_dict() for sp in unsupported_spans(text, [*sources[i], refs[i]])]
                for which, text in (("base", base_texts[i]), ("tuned", tuned_texts[i]))
            }
        preds.append(p)
    preds_text = "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in preds)
    # Human review scores rated these very outputs: a re-evaluation with identical predictions keeps them.
    kept_review = None
    old_preds, old_eval = out_dir / "predictions.jsonl", out_dir / "eval.json"
    if old_eval.is_file() and old_preds.is_file() and old_preds.read_text(encoding="utf-8") == preds_text:
        kept_review = read_eval(old_eval).sections.get("review")
    atomic_write_text(out_dir / "predictions.jsonl", preds_text)
    warnings: list[str] = []
    if ec.forgetting_probe:
        forgetting = summarize(
            [g.text for g in outputs["base"].probe],
            [g.text for g in outputs["tuned"].probe],
            perplexity(outputs["base"].probe_nll),
            perplexity(outputs["tuned"].probe_nll),
            ec.forgetting_margin,
        )
        atomic_write_text(
            out_dir / "forgetting.jsonl",
            "".join(json.dumps(it, ensure_ascii=False) + "\n" for it in forgetting.pop("items")),
        )
        result_extra["forgetting"] = forgetting
        warnings += forgetting["warnings"]
    for w in warnings:
        console.print(f"[yellow bold]warning:[/yellow bold] {w}", highlight=False)
    failed = [r.metric for r in rows if r.status == "FAIL"]
    speed = {
        "base": _speed(outputs["base"].gens, outputs["base"].single),
        "tuned": _speed(outputs["tuned"].gens, outputs["tuned"].single),
    }
    result = EvalResult(
        n_examples=len(examples),
        primary_metric=ec.primary,
        metrics=[r.as_dict() for r in rows],
        targets_met=not failed,
        failed_targets=failed,
        warnings=warnings,
        sections={"speed": speed, **result_extra, **({"review": kept_review} if kept_review else {})},
    )
    if not base_pass:
        result = _without_base(result)
    write_eval(out_dir, result)
    return result


BASE_FIELDS = ("base", "delta", "delta_rel", "delta_ci", "p_value", "test", "discordant")


def _without_base(result: EvalResult) -> EvalResult:
    """An evaluation without a base pass: every base figure null, and `base_scored: false` says why."""
    metrics = [{**r, **{k: None for k in BASE_FIELDS if k in r}} for r in result.metrics]
    sections: dict[str, Any] = {"base_scored": False, "speed": {**result.sections["speed"], "base": None}}
    if c := result.sections.get("constrained"):
        sections["constrained"] = {**c, "invalid_share": {**c["invalid_share"], "base": None}}
    return dataclasses.replace(result, metrics=metrics).with_sections(**sections)


def _constrained_summary(
    cfg: RunConfig,
    answers: AnswerSpace,
    outputs: dict[str, PassOutput],
    refs: list[str],
    sources: list[list[str]],
    facts: list[list[str]],
) -> dict[str, Any]:
    """What constraining did: the answer space, the share of outputs outside it with and without the
    constraint, and the label metrics of the unconstrained pass (what a plain generate() would score)."""
    out: dict[str, Any] = {"kind": answers.kind, "answer_space": answers.describe()}

    def invalid(gens: list[Generation]) -> float:
        return round(sum(not is_valid(answers, g.text) for g in gens) / max(len(gens), 1), 4)

    out["invalid_share"] = {w: invalid(outputs[w].gens) for w in ("base", "tuned")}
    if outputs["tuned"].free:
        out["invalid_share_unconstrained"] = {w: invalid(outputs[w].free) for w in ("base", "tuned")}
        label_metrics = [m for m in cfg.eval.metrics if m in ("accuracy", "exact_match")]
        if label_metrics:
            out["unconstrained_scores"] = {
                w: {
                    m: round(statistics.fmean(x for x in v if x is not None), 4) if any(v) else 0.0
                    for m, v in score_all(
                        label_metrics, [], [g.text for g in outputs[w].free], refs, sources, facts
                    ).items()
                }
                for w in ("base", "tuned")
            }
    return out


def _perplexity_stat(parts: list[tuple[float, int]]) -> Callable[[np.ndarray], float]:
    sums = np.array([s for s, _ in parts], dtype=float)
    counts = np.array([n for _, n in parts], dtype=float)

    def stat(idx: np.ndarray) -> float:
        tokens = counts[idx].sum()
        return float(np.exp(sums[idx].sum() / tokens)) if tokens else float("nan")

    return stat
