"""The data stage: read, validate, split, tokenize, and a pre-flight summary, before any model loads."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith.config import RunConfig
from tunesmith.data.formats import Example
from tunesmith.data.split import split_three
from tunesmith.data.tokenize import (
    Encoded,
    TemplateError,
    TooLongError,
    encode_chat,
    render_parity,
    stop_token_ids,
)
from tunesmith.data.validate import DataError, DataIssue, check_count, load_examples
from tunesmith.io import atomic_write_text

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass
class Split:
    examples: list[Example]
    encoded: list[Encoded] = field(default_factory=list)


@dataclass
class PreparedData:
    train: Split
    val: Split
    test: Split
    preflight: dict[str, Any]


def read_splits(cfg: RunConfig) -> tuple[list[Example], list[Example], list[Example]]:
    """Parse all files and split; raise DataError listing every bad line (nothing written anywhere)."""
    d = cfg.data
    issues: list[DataIssue] = []
    train, bad = load_examples(d.train, d.format, d.system_prompt)
    issues += bad
    val, bad = load_examples(d.val, d.format, d.system_prompt)
    issues += bad
    test, bad = load_examples(d.test, d.format, d.system_prompt)
    issues += bad
    if issues:
        raise DataError(issues)
    if not d.val or not d.test:
        rest, v, t = split_three(
            train, val=0.0 if d.val else d.split.val, test=0.0 if d.test else d.split.test, seed=d.split.seed
        )
        train, val, test = rest, (val or v), (test or t)
    issues += check_count(train, "train split")
    if issues:
        raise DataError(issues)
    return train, val, test


def encode_split(
    tok: PreTrainedTokenizerBase, examples: Sequence[Example], max_length: int, stop_ids: Sequence[int]
) -> tuple[list[Encoded], list[DataIssue]]:
    encoded: list[Encoded] = []
    issues: list[DataIssue] = []
    for ex in examples:
        file, _, line = ex.source.rpartition(":")
        if ex.kind != "chat":
            issues.append(
                DataIssue(file, int(line), "", f"is a {ex.kind} row; instruction tuning trains on instruction/chat rows", "wrong_kind")
            )
            continue
        try:
            encoded.append(encode_chat(tok, ex.messages, max_length, stop_ids))
        except TooLongError as e:
            issues.append(DataIssue(file, int(line), "", str(e), "too_long"))
        except TemplateError as e:
            issues.append(DataIssue(file, int(line), "messages", str(e), "template"))
    return encoded, issues


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


def prepare(cfg: RunConfig, tok: PreTrainedTokenizerBase, generation_config: Any = None) -> PreparedData:
    train, val, test = read_splits(cfg)
    stops = stop_token_ids(tok, generation_config)
    issues: list[DataIssue] = []
    splits: dict[str, Split] = {}
    for name, exs in (("train", train), ("val", val), ("test", test)):
        enc, bad = encode_split(tok, exs, cfg.train.max_length, stops)
        issues += bad
        splits[name] = Split(list(exs), enc)
    if issues:
        raise DataError(issues)

    tr = splits["train"].encoded
    total = sum(len(e.input_ids) for e in tr)
    under_loss = sum(e.n_loss for e in tr)
    eos_trained = sum(1 for e in tr if any(t in stops for t, lab in zip(e.input_ids, e.labels, strict=True) if lab == t))
    parity_sample = train[: min(len(train), 200)]
    parity_ok = sum(1 for ex in parity_sample if render_parity(tok, ex.messages))
    preflight: dict[str, Any] = {
        "counts": {k: len(v.examples) for k, v in splits.items()},
        "tokens_per_epoch": total,
        "tokens_under_loss": under_loss,
        "share_under_loss": round(under_loss / max(total, 1), 4),
        "eos_trained_share": round(eos_trained / max(len(tr), 1), 4),
        "template_parity": {"checked": len(parity_sample), "identical": parity_ok},
        "lengths": {k: _lengths_summary([len(e.input_ids) for e in v.encoded]) for k, v in splits.items()},
        "max_length": cfg.train.max_length,
        "stop_token_ids": stops,
    }
    return PreparedData(splits["train"], splits["val"], splits["test"], preflight)


def write_prepared(data: PreparedData, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, split in (("train", data.train), ("val", data.val), ("test", data.test)):
        lines = [json.dumps({"messages": ex.messages, "source": ex.source}, ensure_ascii=False) for ex in split.examples]
        atomic_write_text(out_dir / f"{name}.jsonl", "\n".join(lines) + ("\n" if lines else ""))
    atomic_write_text(out_dir / "preflight.json", json.dumps(data.preflight, indent=2))


def read_prepared_examples(path: Path) -> list[Example]:
    out = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                out.append(Example(messages=row["messages"], source=row["source"]))
    return out
