"""What a run's answers are, read from its training answers: a closed set of labels, JSON objects of one
schema, or free text. Eval and serve decode inside the first two (tunesmith.eval.constrain); the pre-flight
says which was found. The rule is the constants below (README, `eval.constrain`).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

# A closed label set: at most this many distinct answers, each of at most LABEL_MAX_WORDS words, and on
# average at least LABEL_MIN_REPEATS training answers per label (a set of mostly unique answers is text).
MAX_LABELS = 512
LABEL_MAX_WORDS = 6
LABEL_MIN_REPEATS = 2.0
# A string field of a JSON answer becomes an `enum` when it takes at most ENUM_MAX_VALUES values and each
# value is seen on average ENUM_MIN_REPEATS times: queue and priority names, not summaries or copied ids.
ENUM_MAX_VALUES = 64
ENUM_MIN_REPEATS = 3.0
# Any other string field gets `maxLength`: this many times its longest training value (in characters), so a
# runaway value (a summary repeating a word) is closed before the token budget cuts the JSON open.
FREE_STRING_SLACK = 1.25

Kind = Literal["labels", "json", "free"]


@dataclass(frozen=True)
class AnswerSpace:
    """What the training answers are: a closed label set, JSON objects of one schema, or free text."""

    kind: Kind
    labels: tuple[str, ...] = ()
    schema: dict[str, Any] = field(default_factory=dict)
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "labels": list(self.labels), "schema": self.schema, "reason": self.reason}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> AnswerSpace:
        if not d:
            return FREE
        return cls(d["kind"], tuple(d.get("labels", ())), dict(d.get("schema") or {}), d.get("reason", ""))

    def describe(self) -> str:
        if self.kind == "labels":
            return f"a closed set of {len(self.labels)} labels ({self.reason})"
        if self.kind == "json":
            props = self.schema.get("properties", {})
            enums = [k for k, v in props.items() if "enum" in v]
            closed = f"; closed-set fields: {', '.join(enums)}" if enums else ""
            return f"JSON objects with keys {', '.join(props)}{closed}"
        return f"free text ({self.reason})" if self.reason else "free text"


FREE = AnswerSpace("free")


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _json_type(values: Sequence[Any]) -> str | None:
    """The one JSON schema type of `values` (ints count as numbers beside floats), or None if mixed."""
    kinds = set()
    for v in values:
        if isinstance(v, bool):
            kinds.add("boolean")
        elif isinstance(v, int):
            kinds.add("integer")
        elif isinstance(v, float):
            kinds.add("number")
        elif isinstance(v, str):
            kinds.add("string")
        elif v is None:
            kinds.add("null")
        elif isinstance(v, list):
            kinds.add("array")
        else:
            kinds.add("object")
    if kinds == {"integer", "number"}:
        return "number"
    return kinds.pop() if len(kinds) == 1 else None


def json_schema(objects: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The schema the answers imply: every key (required when every answer has it), its type, and an
    `enum` for closed-set string fields. None when a key's values mix types (no single schema fits)."""
    keys: list[str] = []
    for obj in objects:
        keys += [k for k in obj if k not in keys]
    props: dict[str, Any] = {}
    for k in keys:
        values = [obj[k] for obj in objects if k in obj]
        kind = _json_type(values)
        if kind is None:
            return None
        prop: dict[str, Any] = {"type": kind}
        if kind == "string":
            distinct = Counter(values)
            if len(distinct) <= ENUM_MAX_VALUES and len(values) / len(distinct) >= ENUM_MIN_REPEATS:
                prop["enum"] = sorted(distinct)
            else:
                prop["maxLength"] = math.ceil(FREE_STRING_SLACK * max(len(v) for v in values))
        props[k] = prop
    required = [k for k in keys if all(k in obj for obj in objects)]
    return {"type": "object", "properties": props, "required": required, "additionalProperties": False}


def infer_answer_space(answers: Sequence[str]) -> AnswerSpace:
    """Labels, JSON or free text, from the training answers (the rule is the module constants)."""
    answers = [a.strip() for a in answers]
    if not answers:
        return FREE
    objects = [_json_object(a) for a in answers]
    if all(o is not None for o in objects):
        schema = json_schema([o for o in objects if o is not None])
        if schema is not None:
            return AnswerSpace("json", schema=schema, reason=f"all {len(answers)} answers are JSON objects")
        return AnswerSpace("free", reason="JSON answers whose fields mix value types")
    distinct = Counter(answers)
    longest = max(len(a.split()) for a in distinct)
    repeats = len(answers) / len(distinct)
    if 2 <= len(distinct) <= MAX_LABELS and longest <= LABEL_MAX_WORDS and repeats >= LABEL_MIN_REPEATS:
        return AnswerSpace(
            "labels",
            labels=tuple(sorted(distinct)),
            reason=f"{len(distinct)} distinct answers of at most {longest} word(s), {repeats:.1f} rows each",
        )
    return AnswerSpace(
        "free", reason=f"{len(distinct)} distinct answers of up to {longest} words, {repeats:.1f} rows each"
    )


def is_valid(space: AnswerSpace, text: str) -> bool:
    """Whether an output lies in the answer space (labels: exactly one of them; json: parses as an object
    with the required keys and enum values)."""
    if space.kind == "labels":
        return text.strip() in space.labels
    if space.kind == "json":
        obj = _json_object(text.strip())
        if obj is None:
            return False
        props = space.schema.get("properties", {})
        if any(k not in obj for k in space.schema.get("required", [])) or any(k not in props for k in obj):
            return False
        return all("enum" not in props[k] or obj[k] in props[k]["enum"] for k in obj)
    return True


__all__ = ["FREE", "AnswerSpace", "infer_answer_space", "is_valid", "json_schema"]
