"""Classification metrics (outputs are labels) from scikit-learn, plus the fast macro-F1 the bootstrap needs.

Labels are compared after `label_key` (trimmed, lower-cased, trailing full stop dropped, as `accuracy`).
The label set is the set of reference labels; an output that is none of them counts as the extra class
`(other)`: it is a wrong prediction for every label (a false negative of the true one) and is a row of the
confusion matrix, but it is not averaged into the macro scores as a label of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tunesmith.eval.metrics import normalize

OTHER = "(other)"


def label_key(text: str) -> str:
    return normalize(text).lower().rstrip(".")


def encode(preds: Sequence[str], refs: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
    """(labels, y_true, y_pred): outputs outside the reference label set become OTHER."""
    y_true = [label_key(r) for r in refs]
    labels = sorted(set(y_true))
    known = set(labels)
    y_pred = [k if (k := label_key(p)) in known else OTHER for p in preds]
    return labels, y_true, y_pred


def classification_report(preds: Sequence[str], refs: Sequence[str]) -> dict[str, Any]:
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    labels, y_true, y_pred = encode(preds, refs)
    out: dict[str, Any] = {"labels": labels, "n": len(y_true)}
    if not y_true:
        return out
    out["accuracy"] = float(accuracy_score(y_true, y_pred))
    for avg in ("macro", "micro"):
        p, r, f, _ = precision_recall_fscore_support(
            y_true, y_pred, labels=labels, average=avg, zero_division=0
        )
        out[f"{avg}_precision"], out[f"{avg}_recall"], out[f"{avg}_f1"] = float(p), float(r), float(f)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=None, zero_division=0)
    out["per_label"] = {
        lab: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
        for i, lab in enumerate(labels)
    }
    cm_labels = labels + ([OTHER] if OTHER in y_pred else [])
    out["confusion_labels"] = cm_labels  # rows: reference, columns: output
    out["confusion"] = confusion_matrix(y_true, y_pred, labels=cm_labels).tolist()
    return out


def macro_f1_stat(preds: Sequence[str], refs: Sequence[str]) -> Callable[[np.ndarray], float]:
    """idx -> macro F1 of the examples at `idx` (with repeats): a bincount, so 1000 resamples take
    milliseconds; equal to scikit-learn's f1_score(average="macro", labels=..., zero_division=0)."""
    labels, y_true, y_pred = encode(preds, refs)
    k = len(labels)
    code = {lab: i for i, lab in enumerate(labels)}
    t = np.array([code[y] for y in y_true], dtype=np.int64)
    p = np.array([code.get(y, k) for y in y_pred], dtype=np.int64)

    def stat(idx: np.ndarray) -> float:
        if k == 0:
            return float("nan")
        cm = np.bincount(t[idx] * (k + 1) + p[idx], minlength=k * (k + 1)).reshape(k, k + 1)
        tp = np.diag(cm[:, :k]).astype(float)
        fn = cm.sum(axis=1) - tp
        fp = cm[:, :k].sum(axis=0) - tp
        denom = 2 * tp + fp + fn
        f1 = np.divide(2 * tp, denom, out=np.zeros(k), where=denom > 0)
        return float(f1.mean())

    return stat
