"""Prepared data cached by content: a re-run with the same data, data settings, tokenizer and data-stage code
loads the prepared splits instead of reading, cleaning and tokenizing again.

The key covers everything the prepared data depends on and nothing it does not: the bytes of every data
file (not their paths or timestamps, so a copied or touched file still hits), the `data` section and
`train.max_length`, the tokenizer's files and generation config (chat template, stop tokens), and the source
of the data-stage code itself (an upgrade that changes cleaning invalidates old entries). Entries live
under `$TUNESMITH_HOME/prepared/<key>/` and are written atomically, so a crash never leaves a half entry that
a later run would trust.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tunesmith.config import RunConfig
from tunesmith.data.tokenize import ClassEncoded, Encoded, EncodedExample, PairEncoded
from tunesmith.io import atomic_dir

if TYPE_CHECKING:
    from tunesmith.data.pipeline import PreparedData

_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "generation_config.json",
)
_SPLITS = ("train", "val", "test")


def _hash_file(h: Any, path: Path) -> None:
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)


def cache_key(cfg: RunConfig, model_path: str) -> str:
    from tunesmith import __version__
    from tunesmith.data.readers import iter_files

    h = hashlib.sha256()
    d = cfg.data
    for name, paths in (
        ("train", d.train),
        ("val", d.val),
        ("test", d.test),
        ("extra", d.contamination.extra_eval_files),
    ):
        h.update(f"[{name}]".encode())
        for root in paths:
            for path in iter_files(Path(root)):
                # A `datasets` folder is one input: every file in it counts.
                for part in sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]:
                    h.update(str(part.relative_to(path.parent)).encode() + b"\0")
                    _hash_file(h, part)
    settings = d.model_dump(mode="json", exclude={"train", "val", "test"})
    settings["contamination"].pop("extra_eval_files", None)
    h.update(
        json.dumps(
            {"data": settings, "max_length": cfg.train.max_length, "objective": cfg.train.objective},
            sort_keys=True,
        ).encode()
    )
    model_dir = Path(model_path)
    for name in _TOKENIZER_FILES:
        if (model_dir / name).is_file():
            h.update(name.encode() + b"\0")
            _hash_file(h, model_dir / name)
    h.update(model_path.encode() if not model_dir.is_dir() else b"")
    h.update(__version__.encode())
    for src in sorted((Path(__file__).parent).glob("*.py")):
        _hash_file(h, src)
    return h.hexdigest()[:24]


def cache_dir(key: str) -> Path:
    """`$TUNESMITH_PREPARED_DIR/<key>` if set (tests point it at a temporary folder), else
    `$TUNESMITH_HOME/prepared/<key>`."""
    import os

    from tunesmith.models import tunesmith_home

    root = os.environ.get("TUNESMITH_PREPARED_DIR")
    return (Path(root) if root else tunesmith_home() / "prepared") / key


def save(data: PreparedData, key: str) -> Path:
    from tunesmith.data.pipeline import write_prepared

    target = cache_dir(key)
    with atomic_dir(target) as tmp:
        write_prepared(data, tmp)
        arrays: dict[str, np.ndarray] = {}
        for name in _SPLITS:
            items = getattr(data, name).encoded
            pairs = bool(items) and hasattr(items[0], "chosen")
            classes = bool(items) and hasattr(items[0], "label_id")
            arrays[f"{name}_pairs"] = np.array(pairs)
            arrays[f"{name}_class"] = np.array([e.label_id for e in items] if classes else [], dtype=np.int64)
            if classes:
                items = [Encoded(e.input_ids, [-100] * len(e.input_ids)) for e in items]
            enc = [s for p in items for s in (p.chosen, p.rejected)] if pairs else items
            lengths = np.array([len(e.input_ids) for e in enc], dtype=np.int64)
            arrays[f"{name}_lengths"] = lengths
            flat_ids = [t for e in enc for t in e.input_ids]
            flat_labels = [t for e in enc for t in e.labels]
            arrays[f"{name}_input_ids"] = np.array(flat_ids, dtype=np.int64)
            arrays[f"{name}_labels"] = np.array(flat_labels, dtype=np.int64)
        np.savez(tmp / "encoded.npz", **arrays)  # type: ignore[arg-type]
    return target


def load(key: str) -> PreparedData | None:
    """The cached prepared data, or None when there is no complete entry for `key`."""
    from tunesmith.data.pipeline import PreparedData, Split
    from tunesmith.data.stream import read_split

    target = cache_dir(key)
    if not (target / "encoded.npz").is_file() or not (target / "preflight.json").is_file():
        return None
    preflight = json.loads((target / "preflight.json").read_text(encoding="utf-8"))
    splits = {}
    with np.load(target / "encoded.npz") as z:
        for name in _SPLITS:
            examples = read_split(target / f"{name}.jsonl")
            bounds = np.concatenate([[0], np.cumsum(z[f"{name}_lengths"])]).tolist()
            ids, labels = z[f"{name}_input_ids"].tolist(), z[f"{name}_labels"].tolist()
            flat = [Encoded(ids[a:b], labels[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
            encoded: list[EncodedExample] = list(flat)
            if bool(z[f"{name}_pairs"]):
                encoded = [PairEncoded(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]
            elif f"{name}_class" in z and len(z[f"{name}_class"]):
                encoded = [
                    ClassEncoded(e.input_ids, int(c)) for e, c in zip(flat, z[f"{name}_class"], strict=True)
                ]
            splits[name] = Split(examples, encoded)
    preflight["cache"] = {"hit": True, "key": key, "dir": str(target)}
    return PreparedData.from_preflight(splits["train"], splits["val"], splits["test"], preflight)


__all__ = ["cache_dir", "cache_key", "load", "save"]
