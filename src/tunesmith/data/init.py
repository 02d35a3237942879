"""`tunesmith init DATA`: read the data a user has, tell what it is, write a commented config for it.

Detection, in order: rows that are already a known layout (instruction, chat including ShareGPT and
OpenAI fine-tuning rows, classification, preference, raw text) need no mapping; otherwise the columns are
profiled (words per value, distinct values, names) and mapped: a list of turns is chat, a short column
with few distinct values is a label, the longest text column is the input, a one-word column with a new
value on every row is an id (left out). Sibling files of a `*train*` file (`test`, `val`, `valid`,
`validation`, `dev`, same suffix, same folder) become data.test / data.val, so a published benchmark split
is evaluated as published. The answers decide the metrics: labels -> accuracy + classification, JSON
objects -> json_valid + field_accuracy over the keys most answers have, free text -> token_f1 + rouge_l.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.config import COLUMN_FIELDS, ColumnsConfig
from tunesmith.data.formats import Example, RowError, apply_columns, detect_format, row_to_example
from tunesmith.data.readers import iter_files, iter_rows

PROFILE_ROWS = 50_000  # rows read to profile the data; enough for every statistic below
SIBLING_NAMES = {"test": ("test",), "val": ("val", "valid", "validation", "dev")}
_ANSWER_HINTS = ("output", "answer", "response", "completion", "target", "reply", "summary", "label")
_QUESTION_HINTS = (
    "instruction",
    "question",
    "prompt",
    "query",
    "input",
    "request",
    "text",
    "message",
    "ticket",
)
# Columns named like these, or holding uuid/hash-like values on every row, are identifiers, not data.
_ID_NAME = re.compile(r"^(id|uuid|guid|idx|index|key|row|_id|row_id|sample_id)$|(_id|Id|ID)$")
_ID_VALUE = re.compile(r"^[0-9a-fA-F-]{8,}$")
_PREFERENCE = {
    "prompt": ("prompt", "question", "instruction", "query", "input"),
    "chosen": ("chosen", "preferred", "better", "accepted"),
    "rejected": ("rejected", "dispreferred", "worse"),
}
_USER_ROLES = ("human", "user", "customer", "client", "prompter", "question")
_ASSISTANT_ROLES = ("gpt", "assistant", "bot", "model", "agent", "chatgpt", "ai", "answer")


class InitError(Exception):
    """The data cannot be read or understood well enough to write a config, with what to do."""


@dataclass(frozen=True)
class ColumnStats:
    name: str
    present: int  # rows with a value
    distinct: int
    mean_words: float
    kind: str  # text | number | turns | other

    id_like_values: bool = False  # every value looks like a uuid or a hash

    def is_id(self, rows: int) -> bool:
        """A new one-word value on (nearly) every row, named like an id or shaped like one: an identifier,
        not data to learn from."""
        unique = self.kind in ("text", "number") and self.distinct >= 0.98 * rows and self.mean_words <= 1.0
        return unique and (bool(_ID_NAME.search(self.name)) or self.id_like_values)

    def is_label(self, rows: int) -> bool:
        """Short values from a small closed set."""
        few = self.distinct <= max(2, min(2000, rows // 5))
        return self.kind in ("text", "number") and few and self.mean_words <= 4 and self.distinct >= 2


@dataclass
class DataProfile:
    """What `init` found in the data."""

    files: list[str]
    rows: int
    columns: list[ColumnStats]
    layout: str  # instruction | chat | classification | preference | text
    mapping: ColumnsConfig
    answers: str  # label | json | text | none
    labels: list[str] = field(default_factory=list)
    json_fields: list[str] = field(default_factory=list)
    closed_fields: list[str] = field(default_factory=list)  # JSON fields with a small set of values
    answer_words: float = 0.0
    val: list[str] = field(default_factory=list)
    test: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ read
def _read_rows(paths: Sequence[str]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for p in paths:
        root = Path(p)
        if not root.exists():
            raise InitError(f"{p}: no such file or folder")
        for path in iter_files(root):
            for raw in iter_rows(path):
                if raw.issue is not None:
                    raise InitError(f"{raw.issue}; fix: the file must be readable before a config is written")
                if isinstance(raw.row, dict):
                    rows.append(raw.row)
                if len(rows) >= PROFILE_ROWS:
                    return rows
    if not rows:
        raise InitError(
            f"{', '.join(paths)}: no rows found (supported: JSONL, JSON, CSV/TSV, Parquet, .txt/.md)"
        )
    return rows


def _words(value: Any) -> int:
    return len(str(value).split())


def profile_columns(rows: Sequence[dict[str, Any]]) -> list[ColumnStats]:
    names: list[str] = []
    for r in rows:
        names += [k for k in r if k not in names]
    stats = []
    for name in names:
        values = [r[name] for r in rows if r.get(name) not in (None, "")]
        kinds = Counter(_kind(v) for v in values)
        kind = kinds.most_common(1)[0][0] if kinds else "other"
        hashable = [json.dumps(v, sort_keys=True) if not isinstance(v, str) else v for v in values]
        words = [_words(v) for v in values if kind in ("text", "number")]
        id_like = bool(values) and all(_ID_VALUE.match(str(v)) for v in values)
        mean = sum(words) / max(len(words), 1)
        stats.append(ColumnStats(name, len(values), len(set(hashable)), mean, kind, id_like))
    return stats


def _kind(v: Any) -> str:
    if isinstance(v, bool):
        return "other"
    if isinstance(v, int | float):
        return "number"
    if isinstance(v, str):
        return "text"
    if isinstance(v, list) and v and all(isinstance(t, dict) for t in v):
        return "turns"
    return "other"


# ---------------------------------------------------------------------------------------------- layout
def _known_layout(rows: Sequence[dict[str, Any]]) -> str | None:
    """The layout when rows already use the standard names (ShareGPT and OpenAI rows included)."""
    try:
        kinds = Counter(detect_format(apply_columns(r, None)) for r in rows[:200])
    except RowError:
        return None
    return kinds.most_common(1)[0][0]


def _named(stats: Sequence[ColumnStats], hints: Sequence[str]) -> ColumnStats | None:
    for hint in hints:
        for s in stats:
            if s.name.lower() == hint:
                return s
    for hint in hints:
        for s in stats:
            if hint in s.name.lower():
                return s
    return None


def _turn_keys(rows: Sequence[dict[str, Any]], column: str) -> tuple[str, str, dict[str, str]]:
    """(role key, content key, role names -> user/assistant/system) of a column of turns."""
    turns = [t for r in rows[:500] for t in (r.get(column) or []) if isinstance(t, dict)]
    keys = Counter(k for t in turns for k in t)
    text_keys = [k for k, _ in keys.most_common() if all(isinstance(t.get(k, ""), str) for t in turns)]
    role = next((k for k in ("role", "from", "speaker", "author", "sender") if k in keys), None)
    content = next((k for k in ("content", "value", "text", "message", "utterance") if k in keys), None)
    if role is None or content is None:
        by_distinct = sorted(text_keys, key=lambda k: len({t.get(k) for t in turns}))
        if len(by_distinct) < 2:
            raise InitError(f"column {column!r} holds turns without a role and a text key ({sorted(keys)})")
        role, content = role or by_distinct[0], content or by_distinct[-1]
    names: dict[str, str] = {}
    for value in sorted({str(t.get(role)) for t in turns}):
        low = value.lower()
        if low in ("user", "assistant", "system"):
            if low != value:
                names[value] = low
        elif any(h in low for h in _USER_ROLES):
            names[value] = "user"
        elif any(h in low for h in _ASSISTANT_ROLES):
            names[value] = "assistant"
    return role, content, names


def guess_mapping(rows: Sequence[dict[str, Any]], stats: Sequence[ColumnStats]) -> tuple[str, ColumnsConfig]:
    """(layout, columns) for rows that do not use the standard names."""
    n = len(rows)
    ids = [s.name for s in stats if s.is_id(n)]
    usable = [s for s in stats if s.name not in ids]
    turns = [s for s in usable if s.kind == "turns"]
    if turns:
        role, content, names = _turn_keys(rows, turns[0].name)
        rest = [s.name for s in usable if s is not turns[0]]
        columns = ColumnsConfig.model_validate(
            {
                "messages": turns[0].name,
                "role": role,
                "content": content,
                "roles": names,
                "ignore": ids + rest,
            }
        )
        return "chat", columns
    texts = [s for s in usable if s.kind in ("text", "number")]
    pref = {f: _named(texts, hints) for f, hints in _PREFERENCE.items()}
    if pref["chosen"] and pref["rejected"] and pref["prompt"]:
        picked = {f: s.name for f, s in pref.items() if s is not None}
        rest = [s.name for s in usable if s.name not in picked.values()]
        return "preference", ColumnsConfig(**picked, ignore=ids + rest)
    labels = sorted((s for s in texts if s.is_label(n)), key=lambda s: (s.distinct, s.mean_words))
    inputs = sorted((s for s in texts if not s.is_label(n)), key=lambda s: -s.mean_words)
    if labels and inputs:
        used = {labels[0].name, inputs[0].name}
        rest = [s.name for s in usable if s.name not in used]
        return "classification", ColumnsConfig(text=inputs[0].name, label=labels[0].name, ignore=ids + rest)
    if len(inputs) >= 2:
        answer = _answer_column(rows, stats, inputs)
        question = _named([s for s in inputs if s is not answer], _QUESTION_HINTS) or next(
            s for s in stats if s in inputs and s is not answer
        )
        used = {answer.name, question.name}
        rest = [s.name for s in usable if s.name not in used]
        return "instruction", ColumnsConfig(instruction=question.name, output=answer.name, ignore=ids + rest)
    if len(inputs) == 1:
        rest = [s.name for s in usable if s is not inputs[0]]
        return "text", ColumnsConfig(text=inputs[0].name, ignore=ids + rest)
    seen = ", ".join(f"{s.name} ({s.kind})" for s in stats)
    raise InitError(
        f"cannot tell which columns hold the text and the answer (columns: {seen}); map them in data.columns"
    )


def _answer_column(
    rows: Sequence[dict[str, Any]], stats: Sequence[ColumnStats], inputs: Sequence[ColumnStats]
) -> ColumnStats:
    """By name (output, answer, response, ...), then by content (the column of JSON objects), then the
    column that comes second among the question's name hints or, failing those, in the file."""
    named = _named(inputs, _ANSWER_HINTS)
    if named is not None:
        return named
    for s in inputs:
        values = [v for r in rows[:200] if isinstance(v := r.get(s.name), str)]
        if values and sum(_json_object(v) is not None for v in values) >= 0.9 * len(values):
            return s
    question = _named(inputs, _QUESTION_HINTS)
    ordered = [s for s in stats if s in inputs]
    return next(s for s in ordered if s is not question) if question else ordered[1]


def _extra_keys(rows: Sequence[dict[str, Any]], layout: str) -> list[str]:
    """Columns of a known layout that its rows cannot carry (ids, metadata): left out with `ignore`."""
    allowed = {
        "instruction": {"instruction", "input", "output", "system", "facts"},
        "chat": {"messages", "facts", "conversations"},
        "classification": {"text", "label"},
        "preference": {"prompt", "chosen", "rejected", "system"},
        "text": {"text"},
    }[layout]
    extra: list[str] = []
    for r in rows[:1000]:
        extra += [k for k in r if k not in allowed and k not in extra]
    return extra


# --------------------------------------------------------------------------------------------- answers
def _examples(rows: Sequence[dict[str, Any]], columns: ColumnsConfig) -> list[Example]:
    out = []
    for i, r in enumerate(rows):
        try:
            out.append(row_to_example(r, "auto", f"row:{i + 1}", None, columns))
        except RowError:
            continue  # `data check` reports every bad row with its line; a profile only needs the good ones
    return out


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        v = json.loads(text)
    except (json.JSONDecodeError, ValueError):
        return None
    return v if isinstance(v, dict) else None


def profile_answers(examples: Sequence[Example], profile: DataProfile) -> None:
    """Fill in what the answers are: a label set, JSON objects (their fields), or free text."""
    if profile.layout == "text" or not examples:
        profile.answers = "none"
        return
    answers = [e.label if e.label is not None else e.reference for e in examples]
    profile.answer_words = sum(_words(a) for a in answers) / len(answers)
    objects = [o for o in (_json_object(a) for a in answers) if o is not None]
    distinct = Counter(answers)
    if len(objects) >= 0.9 * len(answers):
        keys = Counter(k for o in objects for k in o)
        profile.answers = "json"
        profile.json_fields = [k for k, c in keys.most_common() if c >= 0.8 * len(objects)]
        for k in profile.json_fields:
            values = Counter(json.dumps(o.get(k), sort_keys=True) for o in objects)
            if len(values) <= max(2, min(50, len(objects) // 10)):
                profile.closed_fields.append(k)
    elif profile.layout == "classification" or (
        len(distinct) <= max(2, min(2000, len(answers) // 5)) and profile.answer_words <= 4
    ):
        profile.answers = "label"
        profile.labels = sorted(distinct)
    else:
        profile.answers = "text"


# --------------------------------------------------------------------------------------------- siblings
def sibling_files(path: Path) -> dict[str, list[str]]:
    """data.val / data.test next to a single `*train*` file: same folder, `train` replaced in the name."""
    found: dict[str, list[str]] = {"val": [], "test": []}
    if not path.is_file() or "train" not in path.stem.lower():
        return found
    for split, names in SIBLING_NAMES.items():
        for name in names:
            stem = re.sub("train", name, path.stem, flags=re.IGNORECASE)
            candidate = path.with_name(stem + path.suffix)
            if candidate.is_file():
                found[split].append(str(candidate))
                break
    return found


# ------------------------------------------------------------------------------------------------ whole
def inspect(paths: Sequence[str]) -> DataProfile:
    """Read the data files and tell what they hold (no model, no tokenizer)."""
    rows = _read_rows(paths)
    stats = profile_columns(rows)
    known = _known_layout(rows)
    if known is not None:
        layout = known
        extra = _extra_keys(rows, layout)
        columns = ColumnsConfig(ignore=extra)
    else:
        layout, columns = guess_mapping(rows, stats)
    profile = DataProfile([str(p) for p in paths], len(rows), stats, layout, columns, "none")
    if len(rows) >= PROFILE_ROWS:
        profile.notes.append(f"profiled the first {PROFILE_ROWS:,} rows")
    profile_answers(_examples(rows, columns), profile)
    if len(paths) == 1:
        siblings = sibling_files(Path(paths[0]))
        profile.val, profile.test = siblings["val"], siblings["test"]
    return profile


def token_lengths(profile: DataProfile, rows_limit: int, tok: Any) -> tuple[int, int]:
    """(p99 tokens per training example, p99 tokens per answer) over up to `rows_limit` rows."""
    from tunesmith.data.tokenize import encode_prompt, render

    rows = _read_rows(profile.files)[:rows_limit]
    examples = _examples(rows, profile.mapping)
    totals: list[int] = []
    answers: list[int] = []
    for ex in examples:
        if ex.kind == "text":
            totals.append(len(tok(ex.text)["input_ids"]))
            continue
        full = len(tok(render(tok, ex.messages, False), add_special_tokens=False)["input_ids"])
        prompt = len(encode_prompt(tok, ex.prompt_messages))
        totals.append(full)
        answers.append(max(1, full - prompt))
    return _p99(totals), _p99(answers)


def _p99(values: list[int]) -> int:
    if not values:
        return 0
    s = sorted(values)
    return s[min(len(s) - 1, math.ceil(0.99 * len(s)) - 1)]


def _round_up(x: int, step: int) -> int:
    return max(step, -(-x // step) * step)


# ------------------------------------------------------------------------------------------------ write
def _yaml(v: Any) -> str:
    return json.dumps(v, ensure_ascii=False)


def _columns_block(c: ColumnsConfig) -> list[str]:
    if c.is_default:
        return []
    lines = ["  columns:"]
    for f in (*COLUMN_FIELDS, "role", "content"):
        if getattr(c, f) is not None:
            lines.append(f"    {f}: {_yaml(getattr(c, f))}")
    if c.roles:
        lines.append(f"    roles: {{{', '.join(f'{_yaml(k)}: {v}' for k, v in c.roles.items())}}}")
    if c.ignore:
        lines.append(f"    ignore: {_yaml(c.ignore)}  # ids and metadata: not part of any example")
    return lines


def _eval_block(p: DataProfile, max_new_tokens: int) -> tuple[list[str], list[str]]:
    """(eval lines, targets lines)."""
    if p.answers == "label":
        metrics, primary, target = ["accuracy", "classification"], "accuracy", "accuracy"
    elif p.answers == "json":
        metrics = ["json_valid", "field_accuracy", "exact_match"]
        primary = f"field_accuracy.{p.closed_fields[0]}" if p.closed_fields else "json_valid"
        target = primary
    elif p.answers == "text":
        metrics, primary, target = ["token_f1", "rouge_l", "exact_match"], "token_f1", "token_f1"
    else:
        metrics, primary, target = ["perplexity"], "perplexity", "perplexity"
    lines = ["eval:", f"  metrics: {_yaml(metrics)}"]
    if p.answers == "json":
        lines.append(f"  json_fields: {_yaml(p.json_fields)}")
    lines += [f"  primary_metric: {primary}", f"  max_new_tokens: {max_new_tokens}"]
    op = "<=" if target == "perplexity" else ">="
    example = "20.0" if target == "perplexity" else "0.90"
    targets = [
        "# What good enough means for you: `tunesmith run` exits 1 when a target is missed. Fill in, e.g.",
        f'#   {target}: "{op} {example}"',
        "targets: {}",
    ]
    return lines, targets


_GENERIC_STEMS = ("train", "training", "data", "dataset", "all", "full")


def _run_name(path: Path) -> str:
    """The file's name, or its folder's when the file is called `train.csv` or the like."""
    stem = path.stem if path.is_file() else path.name
    if re.sub(r"[^a-z]", "", stem.lower()) in _GENERIC_STEMS:
        stem = path.resolve().parent.name or stem
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-") or "run"


def render_config(p: DataProfile, config_dir: Path, model: str, max_length: int, max_new_tokens: int) -> str:
    """The config text, with comments that say what was detected and why each value is there."""

    def rel(path: str) -> str:
        try:
            return str(Path(path).resolve().relative_to(config_dir.resolve()))
        except ValueError:
            return str(Path(path).resolve())

    objective = {"classification": "classify", "preference": "dpo", "text": "pretrain"}.get(p.layout, "sft")
    answer_note = {
        "label": f"labels: {len(p.labels)} distinct ({', '.join(p.labels[:6])}{', ...' if len(p.labels) > 6 else ''})",
        "json": f"JSON objects with fields {', '.join(p.json_fields)}"
        + (f" (closed sets: {', '.join(p.closed_fields)})" if p.closed_fields else ""),
        "text": f"free text, {p.answer_words:.0f} words on average",
        "none": "raw text (continued pre-training)",
    }[p.answers]
    lines = [
        f"# Written by `tunesmith init` from {', '.join(rel(f) for f in p.files)}: {p.rows:,} rows, "
        f"{p.layout} rows; answers: {answer_note}.",
        "# Every key is documented in README.md (Configuration reference); `tunesmith run` validates it.",
        f"name: {_yaml(_run_name(Path(p.files[0])))}",
        f"model: {_yaml(model)}",
        *(
            [
                "# Labels can also train an encoder: `model: builtin:all-minilm-l6-v2` (BERT, 22.7 M weights,",
                "# plain text in, no chat template; method full, lora, dora or ia3): fast on a CPU.",
            ]
            if objective == "classify"
            else []
        ),
        "runs_dir: runs",
        "",
        "data:",
        f"  train: {_yaml([rel(f) for f in p.files] if len(p.files) > 1 else rel(p.files[0]))}",
    ]
    if p.val:
        lines.append(f"  val: {_yaml(rel(p.val[0]))}  # found next to the train file")
    if p.test:
        lines.append(f"  test: {_yaml(rel(p.test[0]))}  # found next to the train file: evaluated as given")
    if not (p.val and p.test):
        lines.append(
            "  split: {val: 0.05, test: 0.2, seed: 0}  # cut from the train file where no file was found"
        )
    lines += _columns_block(p.mapping)
    lines += [
        "",
        "method:",
        "  name: lora",
        "",
        "train:",
        f"  objective: {objective}",
        f"  max_length: {max_length}  # the longest 1% of examples, rounded up (tokens)",
        "  # lr, batch_size, epochs and eval_every are derived from the data (train.recipe: auto; printed",
        "  # at the start of the run); set any of them here to fix it.",
        "",
    ]
    eval_lines, targets = _eval_block(p, max_new_tokens)
    lines += [*eval_lines, "", *targets]
    return "\n".join(lines) + "\n"


def write_config(
    paths: Sequence[str], out: Path, model: str, tok: Any, context: int, force: bool = False
) -> tuple[DataProfile, Path]:
    """Inspect `paths`, write the config to `out` atomically, and return what was found."""
    import yaml

    from tunesmith.config import validate_config
    from tunesmith.io import atomic_write_text

    if out.exists() and not force:
        raise InitError(f"{out} exists; pass --force to overwrite it, or --out another path")
    profile = inspect(paths)
    total, answer = token_lengths(profile, 2000, tok)
    max_length = min(context, _round_up(int(total * 1.1) + 8, 64)) if total else min(context, 1024)
    max_new = min(1024, _round_up(int(answer * 1.25) + 4, 8)) if answer else 64
    text = render_config(profile, out.parent, model, max_length, max_new)
    # What is written must load: validated before the file exists, so a bug here never leaves a bad file.
    validate_config(yaml.safe_load(text), base_dir=out.parent)
    atomic_write_text(out, text)
    return profile, out
