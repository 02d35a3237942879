"""Read data files line by line and report every bad line with file, line number, field and reason."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.data.formats import Example, RowError, row_to_messages

MIN_EXAMPLES = 10

FIXES: dict[str, str] = {
    "bad_json": "each line must be one complete JSON object; check quotes, commas and braces",
    "bad_utf8": "save the file as UTF-8",
    "not_an_object": "wrap the line in {...}",
    "unknown_format": "use {instruction, input?, output} or {messages: [...]}, or set data.format",
    "missing_field": "add the field",
    "empty_content": "remove the example or fill in the text",
    "non_string_content": "content must be a string",
    "unknown_key": "remove the key or fix its spelling",
    "bad_role": "roles are system (first only), user and assistant",
    "bad_order": "alternate user and assistant turns",
    "bad_message": "each message is an object {role, content}",
    "bad_weight": "weight is 0 or 1, on assistant turns",
    "missing_assistant": "end every example with an assistant answer",
    "too_long": "raise train.max_length or shorten the example",
    "too_few": "fine-tuning needs at least 10 examples; 100+ is better",
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

    def __init__(self, issues: Sequence[DataIssue], show: int = 5):
        self.issues = list(issues)
        by_kind: dict[str, list[DataIssue]] = defaultdict(list)
        for i in self.issues:
            by_kind[i.kind].append(i)
        parts = [f"{len(self.issues)} problem(s) in the data:"]
        for kind, items in by_kind.items():
            parts.append(f"  {kind} ({len(items)}): fix: {FIXES.get(kind, '')}")
            parts += [f"    {i}" for i in items[:show]]
            if len(items) > show:
                parts.append(f"    ... and {len(items) - show} more")
        super().__init__("\n".join(parts))


def iter_jsonl(path: Path) -> Iterator[tuple[int, Any | DataIssue]]:
    """Yield (line number, parsed row) or (line number, DataIssue); blank lines are skipped."""
    name = path.name
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield lineno, DataIssue(name, lineno, "", f"is not valid UTF-8 (byte {e.start})", "bad_utf8")
                continue
            if not text.strip():
                continue
            try:
                yield lineno, json.loads(text.rstrip("\r\n"))
            except json.JSONDecodeError as e:
                yield lineno, DataIssue(name, lineno, "", f"is not valid JSON: {e.msg} at column {e.colno}", "bad_json")


def load_examples(
    paths: Sequence[str], fmt: str = "auto", system_prompt: str | None = None
) -> tuple[list[Example], list[DataIssue]]:
    """Parse every line of every file; return the good examples and every issue (nothing is dropped silently)."""
    examples: list[Example] = []
    issues: list[DataIssue] = []
    for p in paths:
        path = Path(p)
        if path.suffix not in (".jsonl", ".json"):
            issues.append(DataIssue(path.name, 0, "", f"unsupported file type {path.suffix!r} (JSONL expected)", "bad_json"))
            continue
        for lineno, row in iter_jsonl(path):
            if isinstance(row, DataIssue):
                issues.append(row)
                continue
            try:
                msgs = row_to_messages(row, fmt, system_prompt)
            except RowError as e:
                issues.append(DataIssue(path.name, lineno, e.field, e.reason, e.kind))
                continue
            examples.append(Example(messages=msgs, source=f"{path.name}:{lineno}"))
    return examples, issues


def check_count(examples: Sequence[Example], split: str, minimum: int = MIN_EXAMPLES) -> list[DataIssue]:
    if len(examples) < minimum:
        return [DataIssue(split, 0, "", f"has {len(examples)} examples; at least {minimum} are needed", "too_few")]
    return []
