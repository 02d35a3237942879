"""The data stage: read, validate, clean, split, check contamination, tokenize, pre-flight summary.

All of it runs before any model weights load; a hard error stops here with every bad line listed and
nothing written to any run directory.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith.config import RunConfig
from tunesmith.data.answers import FREE, AnswerSpace, infer_answer_space
from tunesmith.data.formats import Example, example_to_row
from tunesmith.data.issues import DataError, DataIssue
from tunesmith.data.stream import build_splits, read_split
from tunesmith.data.tokenize import (
    IGNORE,
    ClassEncoded,
    Encoded,
    EncodedExample,
    PairEncoded,
    TemplateError,
    TooLongError,
    encode_chat,
    encode_pair,
    encode_plain,
    encode_prompt,
    pack_texts,
    reads_plain_text,
    render_parity,
    stop_token_ids,
)
from tunesmith.data.validate import check_count
from tunesmith.io import atomic_write_text

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass
class Split:
    examples: list[Example]
    # sft: one Encoded per example; pretrain: packed blocks (not one per example); dpo: one PairEncoded
    # each; classify: one ClassEncoded each.
    encoded: list[EncodedExample] = field(default_factory=list)


@dataclass
class PreparedData:
    train: Split
    val: Split
    test: Split
    preflight: dict[str, Any]  # the pre-flight report, for people and pages (preflight.json, preflight.html)
    stop_token_ids: list[int]  # the tokens that end an answer, as trained
    class_labels: list[
        str
    ]  # classify: each class id's label (the head's outputs); empty for other objectives

    @classmethod
    def from_preflight(cls, train: Split, val: Split, test: Split, preflight: dict[str, Any]) -> PreparedData:
        """Splits read back (data cache, a run's data/), with the fields their preflight.json recorded."""
        return cls(
            train,
            val,
            test,
            preflight,
            [int(t) for t in preflight["stop_token_ids"]],
            list(preflight.get("class_labels") or []),
        )


def read_class_labels(data_dir: Path) -> list[str]:
    """A run's class labels by class id, from the preflight.json its data stage wrote (empty: no classifier)."""
    preflight = json.loads((data_dir / "preflight.json").read_text(encoding="utf-8"))
    return list(preflight.get("class_labels") or [])


@dataclass
class CleanSplits:
    train: list[Example]
    val: list[Example]
    test: list[Example]
    report: dict[str, Any]


def _src(source: str) -> tuple[str, int]:
    """'file.jsonl:7' -> ('file.jsonl', 7)."""
    file, _, line = source.rpartition(":")
    return file, int(line)


def read_splits(cfg: RunConfig) -> CleanSplits:
    """Parse, validate, clean, split and check contamination (the streaming stage in `stream.py`, through
    a temporary folder), then load the splits. Raises DataError; writes nothing that stays."""
    with tempfile.TemporaryDirectory(prefix="tunesmith-splits-") as tmp:
        files = build_splits(cfg, Path(tmp) / "splits")
        return CleanSplits(files.load("train"), files.load("val"), files.load("test"), files.report)


_KIND_FOR = {"sft": "chat", "pretrain": "text", "dpo": "preference", "classify": "chat"}
_ROWS_FOR = {
    "classify": "labelled rows (text,label CSV, or rows whose answer is the label)",
    "sft": "instruction/chat/classification rows",
    "pretrain": "raw text ({text} rows or .txt/.md files)",
    "dpo": "preference pairs ({prompt, chosen, rejected})",
}


def encode_split(
    tok: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    max_length: int,
    stop_ids: Sequence[int],
    on_overlength: str,
    objective: str = "sft",
    label_index: dict[str, int] | None = None,
) -> tuple[list[Example], list[EncodedExample], list[DataIssue], Counter[str]]:
    """Tokenize one split for `objective` (classify: `label_index` maps each label to its class index)."""
    kept: list[Example] = []
    encoded: list[EncodedExample] = []
    issues: list[DataIssue] = []
    counts: Counter[str] = Counter()
    want = _KIND_FOR[objective]
    # An encoder (classify only) reads `[CLS] text [SEP]`, at most as many tokens as it has positions.
    plain = objective == "classify" and reads_plain_text(tok)
    positions = getattr(tok, "model_max_length", None)
    limit = (
        min(max_length, positions) if plain and isinstance(positions, int) and positions > 0 else max_length
    )
    for ex in examples:
        file, line = _src(ex.source)
        if ex.kind != want:
            issues.append(
                DataIssue(
                    file,
                    line,
                    "",
                    f"is a {ex.kind} row; train.objective {objective} trains on {_ROWS_FOR[objective]}",
                    "wrong_kind",
                )
            )
            continue
        if objective == "pretrain":
            kept.append(ex)  # packed below, across examples
            continue
        if objective == "classify":
            label = class_label(ex)
            if label not in (label_index or {}):
                issues.append(
                    DataIssue(
                        file, line, "label", f"{label!r} does not occur in the train split", "unknown_label"
                    )
                )
                continue
            ids = encode_plain(tok, ex.messages) if plain else encode_prompt(tok, ex.messages)
            if len(ids) > limit:
                counts["overlength"] += 1
                if on_overlength == "error":
                    why = str(TooLongError(len(ids), max_length))
                    if limit < max_length:
                        why = f"is {len(ids)} tokens long, over the encoder's {limit} positions"
                    issues.append(DataIssue(file, line, "", why, "too_long"))
                    continue
                if on_overlength == "drop":
                    counts["overlength_dropped"] += 1
                    continue
                counts["overlength_truncated"] += 1
                # A decoder's head reads the last token kept; an encoder's reads [CLS], its [SEP] stays.
                ids = encode_plain(tok, ex.messages, limit) if plain else ids[:limit]
            kept.append(ex)
            encoded.append(ClassEncoded(ids, (label_index or {})[label]))
            continue
        try:
            if objective == "dpo":
                try:
                    encoded.append(encode_pair(tok, ex, max_length, stop_ids))
                except TooLongError:
                    if on_overlength == "error":
                        raise
                    counts["overlength"] += 1
                    counts["overlength_dropped"] += 1  # cutting a pair would cut the answers it compares
                    continue
                kept.append(ex)
                continue
            enc = encode_chat(tok, ex.messages, max_length, stop_ids)
        except TooLongError as e:
            counts["overlength"] += 1
            if on_overlength == "error":
                issues.append(DataIssue(file, line, "", str(e), "too_long"))
                continue
            if on_overlength == "drop":
                counts["overlength_dropped"] += 1
                continue
            counts["overlength_truncated"] += 1
            full = encode_chat(tok, ex.messages, 10**9, stop_ids)
            enc = Encoded(full.input_ids[:max_length], full.labels[:max_length])
            if enc.n_loss == 0:
                counts["overlength_dropped"] += 1  # nothing left to learn from after the cut
                continue
        except TemplateError as e:
            issues.append(DataIssue(file, line, "messages", str(e), "template"))
            continue
        kept.append(ex)
        encoded.append(enc)
    if objective == "pretrain":
        encoded = [*pack_texts(tok, (ex.text for ex in kept), max_length)]
    return kept, encoded, issues, counts


def class_label(ex: Example) -> str:
    """The class of a labelled example: its `label`, or else its answer."""
    return ex.label if ex.label is not None else ex.reference.strip()


def _flat(encoded: Sequence[EncodedExample]) -> list[Encoded]:
    """Every tokenized sequence of a split: DPO pairs count both sides; a classification example's tokens
    carry no token loss (its loss is on the label)."""
    out: list[Encoded] = []
    for e in encoded:
        if isinstance(e, PairEncoded):
            out += [e.chosen, e.rejected]
        elif isinstance(e, ClassEncoded):
            out.append(Encoded(e.input_ids, [IGNORE] * len(e.input_ids)))
        else:
            out.append(e)
    return out


def _lengths_summary(lengths: Sequence[int]) -> dict[str, float]:
    if not lengths:
        return {"n": 0}
    s = sorted(lengths)
    return {
        "n": len(s),
        "min": s[0],
        "mean": round(sum(s) / len(s), 1),
        "p95": s[min(len(s) - 1, int(0.95 * len(s)))],
        "max": s[-1],
    }


def _input_summary(plain: bool, train: Sequence[Example]) -> dict[str, Any]:
    """How the model reads its input: `chat` (the chat template) or `plain` (an encoder's `[CLS] text
    [SEP]`, which leaves the system prompt out: counted, so the pre-flight can say so)."""
    if not plain:
        return {"format": "chat"}
    with_system = sum(1 for ex in train if any(m["role"] == "system" for m in ex.messages))
    return {"format": "plain", "system_prompt_ignored": with_system}


def prepare(
    cfg: RunConfig,
    tok: PreTrainedTokenizerBase,
    generation_config: Any = None,
    clean: CleanSplits | None = None,
) -> PreparedData:
    """Tokenize the clean splits (`clean`, read here when not given) and compute the pre-flight."""
    cs = read_splits(cfg) if clean is None else clean
    stops = stop_token_ids(tok, generation_config)
    issues: list[DataIssue] = []
    splits: dict[str, Split] = {}
    overlength: dict[str, dict[str, int]] = {}
    class_labels = sorted({class_label(e) for e in cs.train}) if cfg.train.objective == "classify" else []
    label_index = {lab: i for i, lab in enumerate(class_labels)}
    for name, exs in (("train", cs.train), ("val", cs.val), ("test", cs.test)):
        kept, enc, bad, counts = encode_split(
            tok, exs, cfg.train.max_length, stops, cfg.data.on_overlength, cfg.train.objective, label_index
        )
        issues += bad
        splits[name] = Split(kept, enc)
        overlength[name] = dict(counts)
    if issues:
        raise DataError(issues)
    issues += check_count(splits["train"].examples, "train split")
    if cfg.train.early_stopping and not splits["val"].encoded:
        # Config validation saw a val share or val files; after cleaning and splitting none is left.
        where = ", ".join(cfg.data.val) if cfg.data.val else f"data.split.val {cfg.data.split.val}"
        issues.append(
            DataIssue(where, 0, "", "train.early_stopping needs validation examples; none are left", "no_val")
        )
    if issues:
        raise DataError(issues)

    tr = _flat(splits["train"].encoded)
    total = sum(len(e.input_ids) for e in tr)
    under_loss = sum(e.n_loss for e in tr)
    eos_trained = sum(
        1
        for e in tr
        if any(t in stops and lab != IGNORE for t, lab in zip(e.input_ids, e.labels, strict=True))
    )
    plain = cfg.train.objective == "classify" and reads_plain_text(tok)  # an encoder: no chat template
    parity_sample = [] if plain else [ex for ex in splits["train"].examples[:200] if ex.messages]
    parity_ok = sum(1 for ex in parity_sample if render_parity(tok, ex.messages))
    labels = {k: dict(Counter(e.label for e in v.examples if e.label is not None)) for k, v in splits.items()}
    preflight: dict[str, Any] = {
        "counts": {k: len(v.examples) for k, v in splits.items()},
        "tokens_per_epoch": total,
        "tokens_under_loss": under_loss,
        "share_under_loss": round(under_loss / max(total, 1), 4),
        "eos_trained_share": round(eos_trained / max(len(tr), 1), 4),
        "template_parity": {"checked": len(parity_sample), "identical": parity_ok},
        "lengths": {
            k: _lengths_summary([len(e.input_ids) for e in _flat(v.encoded)]) for k, v in splits.items()
        },
        "token_lengths": {k: [len(e.input_ids) for e in _flat(v.encoded)] for k, v in splits.items()},
        "objective": cfg.train.objective,
        "class_labels": class_labels,
        "train_items": len(splits["train"].encoded),
        "max_length": cfg.train.max_length,
        "overlength": overlength,
        "labels": labels if any(labels.values()) else {},
        "stop_token_ids": stops,
        "input": _input_summary(plain, splits["train"].examples),
        "answer_space": _answer_space(cfg, splits["train"].examples).as_dict(),
        **cs.report,
    }
    return PreparedData(splits["train"], splits["val"], splits["test"], preflight, list(stops), class_labels)


def _answer_space(cfg: RunConfig, train: list[Example]) -> AnswerSpace:
    """What the generated answers are (labels, JSON, free text): eval and serve decode inside it."""
    if cfg.train.objective not in ("sft", "dpo"):
        return FREE
    return infer_answer_space([ex.reference for ex in train if ex.kind != "text" and ex.messages])


def write_prepared(data: PreparedData, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, split in (("train", data.train), ("val", data.val), ("test", data.test)):
        lines = [json.dumps(example_to_row(ex), ensure_ascii=False) for ex in split.examples]
        atomic_write_text(out_dir / f"{name}.jsonl", "\n".join(lines) + ("\n" if lines else ""))
    atomic_write_text(out_dir / "preflight.json", json.dumps(data.preflight, indent=2))


def read_prepared_examples(path: Path) -> list[Example]:
    return read_split(path)


__all__ = ["CleanSplits", "PreparedData", "Split", "prepare", "read_splits", "write_prepared"]
