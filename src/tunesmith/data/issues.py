"""What is wrong with the data: one issue per bad line (file, line, field, reason, kind), and the error
that groups them with a fix per kind. The bottom of the data layer: readers and validation both use it."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

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
    "no_val": "add data, raise data.split.val, give data.val files, or set train.early_stopping: false",
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
