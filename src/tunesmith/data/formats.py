"""Raw rows -> chat messages. Pure functions: a row in, messages out, or a RowError naming the field."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypedDict

if TYPE_CHECKING:
    from tunesmith.config import ColumnsConfig

Role = Literal["system", "user", "assistant"]
ROLES: tuple[str, ...] = ("system", "user", "assistant")
INSTRUCTION_KEYS = frozenset({"instruction", "input", "output", "system", "facts"})
CHAT_KEYS = frozenset({"messages", "facts"})
TEXT_KEYS = frozenset({"text"})
PREFERENCE_KEYS = frozenset({"prompt", "chosen", "rejected", "system"})
LABEL_KEYS = frozenset({"text", "label"})
FORMATS = ("instruction", "chat", "text", "preference", "classification")
DEFAULT_CLASSIFY_PROMPT = "Classify the text. Answer with the label only."
MESSAGE_KEYS = frozenset({"role", "content", "weight"})


class Message(TypedDict, total=False):
    role: str
    content: str
    weight: float  # 0 excludes an assistant turn from the loss (it still conditions later turns)


@dataclass(frozen=True)
class Example:
    """One training example. `kind` says which objective can use it:
    chat (SFT: instruction, chat and classification rows), text (continued pre-training on raw text),
    preference (DPO: `messages` ends with the chosen answer, `rejected` holds the other one).
    """

    messages: list[Message]
    source: str  # "file.jsonl:LINE", so every later error can point back at the line
    meta: dict[str, Any] = field(default_factory=dict)
    kind: Literal["chat", "text", "preference"] = "chat"
    text: str = ""
    rejected: str = ""
    label: str | None = None

    @property
    def prompt_messages(self) -> list[Message]:
        """Everything before the final assistant turn: what the model sees at inference."""
        return self.messages[:-1]

    @property
    def reference(self) -> str:
        return self.messages[-1]["content"]


class RowError(ValueError):
    """One problem in one row: `field` is a path inside the row (e.g. messages[2].role)."""

    def __init__(self, field: str, reason: str, kind: str):
        super().__init__(f"{field}: {reason}" if field else reason)
        self.field = field
        self.reason = reason
        self.kind = kind


# ShareGPT (`conversations` of {from, value}) is read as chat without any mapping; these are its role names.
SHAREGPT_ROLES = {
    "human": "user",
    "gpt": "assistant",
    "system": "system",
    "user": "user",
    "assistant": "assistant",
}


def apply_columns(row: Any, columns: ColumnsConfig | None) -> Any:
    """A row with your column names turned into the standard ones (`data.columns`), ignored columns left
    out, and ShareGPT conversations turned into `messages`. Pure: the row is not modified."""
    if not isinstance(row, dict):
        return row
    out: dict[str, Any] = {}
    mapping: dict[str, str] = columns.mapping() if columns is not None else {}
    ignore = set(columns.ignore) if columns is not None else set()
    for theirs, ours in mapping.items():
        if theirs not in row:
            raise RowError(theirs, f"is missing (data.columns.{ours} names this column)", "missing_field")
    for key, value in row.items():
        if key in ignore:
            continue
        out[mapping.get(key) or key] = value
    role_key = columns.role if columns is not None else None
    content_key = columns.content if columns is not None else None
    roles: dict[str, str] = dict(columns.roles) if columns is not None else {}
    if "messages" not in out and "conversations" in out and role_key is None:
        # ShareGPT, recognised as it is: {conversations: [{from: human|gpt|system, value}]}
        out["messages"] = out.pop("conversations")
        role_key, content_key, roles = "from", "value", {**SHAREGPT_ROLES, **roles}
    if (role_key or content_key or roles) and isinstance(out.get("messages"), list):
        out["messages"] = [_map_turn(t, role_key, content_key, roles) for t in out["messages"]]
    return out


def _map_turn(turn: Any, role_key: str | None, content_key: str | None, roles: dict[str, str]) -> Any:
    if not isinstance(turn, dict):
        return turn
    out = dict(turn)
    if role_key and role_key in out:
        out["role"] = out.pop(role_key)
    if content_key and content_key in out:
        out["content"] = out.pop(content_key)
    if isinstance(out.get("role"), str) and out["role"] in roles:
        out["role"] = roles[out["role"]]
    return out


def suggest_columns(row: dict[str, Any]) -> str:
    """A `data.columns` line that would map this row's columns (the longest text as the input)."""
    lists = [k for k, v in row.items() if isinstance(v, list) and v and isinstance(v[0], dict)]
    if lists:
        keys = sorted(row[lists[0]][0])
        role = next((k for k in keys if k in ("role", "from", "speaker", "author")), keys[0])
        content = next((k for k in keys if k in ("content", "value", "text", "message")), keys[-1])
        return f"{{messages: {lists[0]}, role: {role}, content: {content}}}"
    texts = sorted(
        (k for k, v in row.items() if isinstance(v, str | int | float) and not isinstance(v, bool)),
        key=lambda k: -len(str(row[k]).split()),
    )
    if len(texts) == 1:
        return f"{{text: {texts[0]}}}"
    if len(texts) == 2:
        return f"{{text: {texts[0]}, label: {texts[1]}}}"
    rest = f", ignore: [{', '.join(texts[2:])}]" if len(texts) > 2 else ""
    return f"{{instruction: {texts[0]}, output: {texts[1]}{rest}}}" if texts else "{...}"


def detect_format(row: dict[str, Any]) -> str:
    if "messages" in row:
        return "chat"
    if "instruction" in row or "output" in row:
        return "instruction"
    if "chosen" in row or "rejected" in row:
        return "preference"
    if "label" in row:
        return "classification"
    if "text" in row:
        return "text"
    raise RowError(
        "",
        f"cannot tell the format from columns {sorted(row)}: expected `messages` (chat), `instruction`/`output`, "
        "`prompt`/`chosen`/`rejected` (preference), `text`/`label` (classification) or `text` (raw text); "
        f"map yours in the config, e.g. `data.columns: {suggest_columns(row)}`",
        "unknown_format",
    )


def _text(row: dict[str, Any], key: str, *, required: bool, where: str | None = None) -> str:
    where = where or key
    if key not in row or row[key] is None:
        if required:
            raise RowError(where, "is missing", "missing_field")
        return ""
    value = row[key]
    if not isinstance(value, str):
        raise RowError(where, f"must be a string, got {type(value).__name__}", "non_string_content")
    if required and not value.strip():
        raise RowError(where, "is empty", "empty_content")
    return value


def instruction_to_messages(row: dict[str, Any], system_prompt: str | None = None) -> list[Message]:
    unknown = set(row) - INSTRUCTION_KEYS
    if unknown:
        raise _unknown_key(sorted(unknown)[0], INSTRUCTION_KEYS)
    instruction = _text(row, "instruction", required=True)
    extra = _text(row, "input", required=False)
    output = _text(row, "output", required=True)
    system = _text(row, "system", required=False) or system_prompt
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    msgs: list[Message] = []
    if system:
        msgs.append({"role": "system", "content": system})
    msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    return msgs


def chat_to_messages(row: dict[str, Any], system_prompt: str | None = None) -> list[Message]:
    unknown = set(row) - CHAT_KEYS
    if unknown:
        raise _unknown_key(sorted(unknown)[0], "`messages` and optionally `facts`")
    raw = row.get("messages")
    if not isinstance(raw, list) or not raw:
        raise RowError("messages", "must be a non-empty list", "missing_field")
    msgs: list[Message] = []
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise RowError(where, f"must be an object, got {type(m).__name__}", "bad_message")
        unknown = set(m) - MESSAGE_KEYS
        if unknown:
            raise RowError(
                f"{where}.{sorted(unknown)[0]}",
                f"unknown key (expected {sorted(MESSAGE_KEYS)})",
                "unknown_key",
            )
        role = m.get("role")
        if role not in ROLES:
            hint = f"; map it with data.columns.roles: {{{role}: user}}" if isinstance(role, str) else ""
            raise RowError(f"{where}.role", f"{role!r} is not one of {'/'.join(ROLES)}{hint}", "bad_role")
        if role == "system" and i != 0:
            raise RowError(f"{where}.role", "a system message is only allowed first", "bad_role")
        content = _text(m, "content", required=True, where=f"{where}.content")
        msg: Message = {"role": role, "content": content}
        if "weight" in m:
            w = m["weight"]
            if role != "assistant" or w not in (0, 1):
                raise RowError(
                    f"{where}.weight",
                    "only assistant turns take a weight, and it must be 0 or 1",
                    "bad_weight",
                )
            msg["weight"] = float(w)
        msgs.append(msg)
    if system_prompt and msgs[0]["role"] != "system":
        msgs.insert(0, {"role": "system", "content": system_prompt})
    if msgs[-1]["role"] != "assistant":
        raise RowError(
            "messages", "must end with an assistant turn (the answer to learn)", "missing_assistant"
        )
    trained = [m for m in msgs if m["role"] == "assistant" and m.get("weight", 1.0) > 0]
    if not trained:
        raise RowError(
            "messages", "no assistant turn is under the loss (all have weight 0)", "missing_assistant"
        )
    # Roles must alternate after the optional system message; templates reject anything else at render time.
    turns = msgs[1:] if msgs[0]["role"] == "system" else msgs
    for i, m in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if m["role"] != expected:
            idx = i + (len(msgs) - len(turns))
            raise RowError(
                f"messages[{idx}].role",
                f"expected {expected!r} (turns alternate user/assistant)",
                "bad_order",
            )
    return msgs


def row_facts(row: dict[str, Any]) -> list[str]:
    """The optional `facts` of an instruction or chat row: strings the answer must state (scored by the
    `facts` eval metric, never trained on)."""
    facts = row.get("facts")
    if facts is None:
        return []
    if not isinstance(facts, list):
        raise RowError("facts", f"must be a list of strings, got {type(facts).__name__}", "bad_facts")
    for i, f in enumerate(facts):
        if not isinstance(f, str) or not f.strip():
            raise RowError(f"facts[{i}]", "must be a non-empty string", "bad_facts")
    return [f.strip() for f in facts]


def _unknown_key(key: str, allowed: frozenset[str] | str) -> RowError:
    expected = allowed if isinstance(allowed, str) else str(sorted(allowed))
    return RowError(
        key,
        f"unknown key (expected {expected}); map it to a field with data.columns, or leave it out with "
        f"data.columns.ignore: [{key}]",
        "unknown_key",
    )


def _only(row: dict[str, Any], allowed: frozenset[str]) -> None:
    unknown = set(row) - allowed
    if unknown:
        raise _unknown_key(sorted(unknown)[0], allowed)


def row_to_messages(row: Any, fmt: str, system_prompt: str | None = None) -> list[Message]:
    """Instruction and chat rows as messages (the SFT formats)."""
    if not isinstance(row, dict):
        raise RowError("", f"each line must be a JSON object, got {type(row).__name__}", "not_an_object")
    kind = detect_format(row) if fmt == "auto" else fmt
    if kind == "chat":
        return chat_to_messages(row, system_prompt)
    if kind == "instruction":
        return instruction_to_messages(row, system_prompt)
    raise RowError("", f"a {kind} row has no chat messages", "unknown_format")


def row_to_example(
    row: Any, fmt: str, source: str, system_prompt: str | None = None, columns: ColumnsConfig | None = None
) -> Example:
    """Any supported row (your column names mapped by `columns`) -> Example, or RowError naming the field."""
    row = apply_columns(row, columns)
    if not isinstance(row, dict):
        raise RowError("", f"each row must be an object, got {type(row).__name__}", "not_an_object")
    kind = detect_format(row) if fmt == "auto" else fmt
    if kind in ("chat", "instruction"):
        messages = row_to_messages(row, kind, system_prompt)
        facts = row_facts(row)
        return Example(messages, source, meta={"facts": facts} if facts else {})
    if kind == "text":
        _only(row, TEXT_KEYS)
        return Example([], source, kind="text", text=_text(row, "text", required=True))
    if kind == "classification":
        _only(row, LABEL_KEYS)
        text = _text(row, "text", required=True)
        label = row.get("label")
        if isinstance(label, int | float) and not isinstance(label, bool):
            label = str(label)
        label = _text({"label": label}, "label", required=True)
        msgs: list[Message] = [
            {"role": "system", "content": system_prompt or DEFAULT_CLASSIFY_PROMPT},
            {"role": "user", "content": text},
            {"role": "assistant", "content": label.strip()},
        ]
        return Example(msgs, source, label=label.strip())
    if kind == "preference":
        _only(row, PREFERENCE_KEYS)
        prompt = _text(row, "prompt", required=True)
        chosen = _text(row, "chosen", required=True)
        rejected = _text(row, "rejected", required=True)
        if chosen.strip() == rejected.strip():
            raise RowError(
                "rejected",
                "is identical to `chosen`; a preference pair needs two different answers",
                "degenerate",
            )
        system = _text(row, "system", required=False) or system_prompt
        pref: list[Message] = [{"role": "system", "content": system}] if system else []
        pref += [{"role": "user", "content": prompt}, {"role": "assistant", "content": chosen}]
        return Example(pref, source, kind="preference", rejected=rejected)
    raise RowError("", f"unknown format {kind!r} (one of {', '.join(FORMATS)})", "unknown_format")


def example_to_row(ex: Example) -> dict[str, Any]:
    """The prepared-split form of an example (one JSONL line); `example_from_row` reads it back."""
    row: dict[str, Any] = {"source": ex.source}
    if ex.kind != "chat":
        row["kind"] = ex.kind
    if ex.messages:
        row["messages"] = ex.messages
    if ex.text:
        row["text"] = ex.text
    if ex.rejected:
        row["rejected"] = ex.rejected
    if ex.label is not None:
        row["label"] = ex.label
    if ex.meta:
        row["meta"] = ex.meta
    return row


def example_from_row(row: dict[str, Any]) -> Example:
    return Example(
        messages=row.get("messages", []),
        source=row["source"],
        meta=row.get("meta", {}),
        kind=row.get("kind", "chat"),
        text=row.get("text", ""),
        rejected=row.get("rejected", ""),
        label=row.get("label"),
    )
