"""The eval stage's result: what `eval/eval.json` holds, as one type written and read by this module only.

The evaluation (generation, classify, pretrain) builds an EvalResult; the runner, the CLI, the registry,
tune, review and the report read it back with `read_eval`, never by parsing the file themselves.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.io import atomic_write_json

FILE_NAME = "eval.json"
_CORE = ("n_examples", "primary_metric", "metrics", "warnings", "targets_met", "failed_targets")


@dataclass(frozen=True)
class EvalResult:
    n_examples: int
    primary_metric: str
    # One row per metric (eval.compare.MetricRow.as_dict): base, tuned, delta with its CI, test, target, status.
    metrics: list[dict[str, Any]]
    targets_met: bool
    failed_targets: list[str]
    warnings: list[str] = field(default_factory=list)
    # The report's other sections, as each evaluation writes them: speed, constrained, forgetting,
    # classification, perplexity, macro_f1, review, objective, base_scored.
    sections: dict[str, Any] = field(default_factory=dict)

    def row(self, metric: str) -> dict[str, Any] | None:
        return next((r for r in self.metrics if r["metric"] == metric), None)

    def tuned(self) -> dict[str, float]:
        """Each metric's tuned value."""
        return {r["metric"]: float(r["tuned"]) for r in self.metrics if r.get("tuned") is not None}

    def with_sections(self, **sections: Any) -> EvalResult:
        return dataclasses.replace(self, sections={**self.sections, **sections})

    def as_json(self) -> dict[str, Any]:
        return {
            "n_examples": self.n_examples,
            "primary_metric": self.primary_metric,
            "metrics": self.metrics,
            **self.sections,
            "warnings": self.warnings,
            "targets_met": self.targets_met,
            "failed_targets": self.failed_targets,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> EvalResult:
        return cls(
            n_examples=int(d["n_examples"]),
            primary_metric=str(d["primary_metric"]),
            metrics=list(d["metrics"]),
            targets_met=bool(d["targets_met"]),
            failed_targets=list(d.get("failed_targets") or []),
            warnings=list(d.get("warnings") or []),
            sections={k: v for k, v in d.items() if k not in _CORE},
        )


def eval_path(where: Path) -> Path:
    """`where`: an eval folder (run/eval, run/eval_val) or the eval.json itself."""
    return where if where.suffix == ".json" else where / FILE_NAME


def write_eval(out_dir: Path, result: EvalResult) -> None:
    atomic_write_json(out_dir / FILE_NAME, result.as_json())


def read_eval(where: Path) -> EvalResult:
    path = eval_path(where)
    return EvalResult.from_json(json.loads(path.read_text(encoding="utf-8")))


def has_eval(where: Path) -> bool:
    return eval_path(where).is_file()
