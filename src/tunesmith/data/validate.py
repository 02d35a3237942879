"""Read data files line by line and report every bad line with file, line number, field and reason."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tunesmith.data.formats import Example, RowError, row_to_example
from tunesmith.data.issues import DataIssue
from tunesmith.data.readers import iter_files, iter_rows

if TYPE_CHECKING:
    from tunesmith.config import ColumnsConfig

MIN_EXAMPLES = 10


def load_examples(
    paths: Sequence[str],
    fmt: str = "auto",
    system_prompt: str | None = None,
    columns: ColumnsConfig | None = None,
) -> tuple[list[Example], list[DataIssue]]:
    """Parse every row of every file (folders: every supported file in them); return the good examples
    and every issue. Nothing is dropped silently. `columns`: your column names (data.columns)."""
    examples: list[Example] = []
    issues: list[DataIssue] = []
    for p in paths:
        root = Path(p)
        for path in iter_files(root):
            display = str(path.relative_to(root.parent)) if root.is_dir() else path.name
            for raw in iter_rows(path, display):
                if raw.issue is not None:
                    issues.append(raw.issue)
                    continue
                try:
                    source = f"{raw.file}:{raw.line}"
                    examples.append(row_to_example(raw.row, fmt, source, system_prompt, columns))
                except RowError as e:
                    issues.append(DataIssue(raw.file, raw.line, e.field, e.reason, e.kind))
    return examples, issues


def check_count(examples: Sequence[Example], split: str, minimum: int = MIN_EXAMPLES) -> list[DataIssue]:
    if len(examples) < minimum:
        return [
            DataIssue(split, 0, "", f"has {len(examples)} examples; at least {minimum} are needed", "too_few")
        ]
    return []
