"""Read data files line by line and report every bad line with file, line number, field and reason."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tunesmith.data.formats import Example, RowError, row_to_example

if TYPE_CHECKING:
    from tunesmith.config import ColumnsConfig

MIN_EXAMPLES = 10

FIXES: dict[str, str] = {
    "bad_json": "each line must be one complete JSON object; check quotes, commas and braces",
    "bad_utf8": "save the file as UTF-8",
    "not_an_object": "wrap the line in {...}",
    "unknown_format": "name your columns with data.columns (the message suggests a line), or use "
    "{instruction, input?, output} or {messages: [...]} rows; `tunesmith init FILE` writes the config for you",
    "missing_field": "add the field",
    "empty_content": "remove the example or fill in the text",
    "non_string_content": "content must be a string",
    "unknown_key": "fix its spelling, map it (data.columns) or leave it out (data.columns.ignore)",
    "bad_role": "roles are system (first only), user and assistant",
    "bad_order": "alternate user and assistant turns",
    "bad_message": "each message is an object {role, content}",
    "bad_weight": "weight is 0 or 1, on assistant turns",
    "bad_facts": 'facts is a list of non-empty strings the answer must state, e.g. ["P2", "payroll"]',
    "missing_assistant": "end every example with an assistant answer",
    "too_long": "raise train.max_length or shorten the example; a row or file of many MiB is no example: "
    "check that this is the file you meant",
    "too_few": "fine-tuning needs at least 10 examples; 100+ is better",
    "bad_csv": "every row needs as many cells as the header; quote cells that contain the delimiter",
    "bad_file": "use a readable file of a supported type (JSONL, JSON, CSV/TSV, Parquet, .txt/.md, a datasets folder)",
    "degenerate": "remove the example or fix the answer",
    "template": "use a model whose chat template renders earlier turns unchanged",
    "unknown_label": "every val/test label must also occur in the train split (the classifier has one output per train label)",
    "wrong_kind": "this objective cannot train on these rows; check data.format and the files",
    "conflict": "fix the answers that disagree, or set data.clean.conflicts: keep (list them) or drop (both)",
}


@dataclass(frozen=True)
class DataIssue:
    file: str
    line: int  # 0: the file as a whole
    field: str
    reason: str
    kind: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.field + ' ' if self.field else ''}{self.reason}".rstrip()


class DataError(Exception):
    """All problems found in the data, grouped by kind with a count and the first lines of each."""

    def __init__(self, issues: Sequence[DataIssue], show: int = 5, totals: Mapping[str, int] | None = None):
        """`totals`: the full count per kind when `issues` holds only the first of each kind (large inputs)."""
        self.issues = list(issues)
        by_kind: dict[str, list[DataIssue]] = defaultdict(list)
        for i in self.issues:
            by_kind[i.kind].append(i)
        counts = {kind: max(len(items), (totals or {}).get(kind, 0)) for kind, items in by_kind.items()}
        parts = [f"{sum(counts.values())} problem(s) in the data:"]
        for kind, items in by_kind.items():
            parts.append(f"  {kind} ({counts[kind]}): fix: {FIXES.get(kind, '')}")
            parts += [f"    {i}" for i in items[:show]]
            if counts[kind] > show:
                parts.append(f"    ... and {counts[kind] - show} more")
        super().__init__("\n".join(parts))


def load_examples(
    paths: Sequence[str],
    fmt: str = "auto",
    system_prompt: str | None = None,
    columns: ColumnsConfig | None = None,
) -> tuple[list[Example], list[DataIssue]]:
    """Parse every row of every file (folders: every supported file in them); return the good examples
    and every issue. Nothing is dropped silently. `columns`: your column names (data.columns)."""
    from tunesmith.data.readers import iter_files, iter_rows

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
