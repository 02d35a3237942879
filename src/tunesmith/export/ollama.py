"""`export --format ollama`: the GGUF plus a Modelfile whose TEMPLATE renders the very prompt text training
rendered, and whose stop PARAMETERs are the tokens training taught the model to end with.

The most reported failure of fine-tuned models after export is a template or stop-token mismatch: the model
rambles or never stops. Ollama templates are Go `text/template` programs over `.Messages`, not the
tokenizer's Jinja, so the TEMPLATE is derived from the run's own chat template by rendering probe
conversations with it and reading off what each role is wrapped in (`RoleWrapping`). That works for the
templates that wrap each message in fixed text (ChatML, Llama 3, ...); a template that rewrites content or
merges roles (Mistral's system-into-user) is refused with the reason. Either way the result is checked on
the run's own test conversations: in Python always, and through Go's text/template itself (the engine
Ollama runs) when `go` is installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Message = dict[str, str]

# Contents no template produces by itself, so each one's position in a rendering is unambiguous.
_SYS, _U1, _A1, _U2 = "QqSYSTEMqQ", "QqUSER1qQ", "QqASSISTANT1qQ", "QqUSER2qQ"


class TemplateNotPortable(Exception):
    """The chat template is not a fixed wrapping per role; the message says what differed."""


@dataclass(frozen=True)
class RoleWrapping:
    """A chat template read as fixed text around each message."""

    system_open: str  # everything before the system message's content (BOS, header)
    system_close: str
    no_system: str  # what the template renders before the first user turn when there is no system message
    user_open: str
    user_close: str
    assistant_open: str
    assistant_close: str
    generation: str  # the assistant header that asks the model for its answer

    def render(self, messages: Sequence[Message]) -> str:
        """What this wrapping makes of a conversation that ends with a user turn (the serving case)."""
        out = []
        rest = list(messages)
        if rest and rest[0]["role"] == "system":
            out.append(self.system_open + rest.pop(0)["content"] + self.system_close)
        else:
            out.append(self.no_system)
        for m in rest:
            if m["role"] == "user":
                out.append(self.user_open + m["content"] + self.user_close)
            elif m["role"] == "assistant":
                out.append(self.assistant_open + m["content"] + self.assistant_close)
            else:
                raise TemplateNotPortable(f"a {m['role']!r} message after the first turn")
        if rest and rest[-1]["role"] == "user":
            out.append(self.generation)
        return "".join(out)

    def go_template(self) -> str:
        """The same wrapping as an Ollama TEMPLATE (Go text/template over .Messages). One line, no trim
        markers: every newline in it is one the chat template renders."""
        first_is_system = 'and .Messages (eq (index .Messages 0).Role "system")'
        return (
            f"{{{{if {first_is_system}}}}}{_go_text(self.system_open)}{{{{(index .Messages 0).Content}}}}"
            f"{_go_text(self.system_close)}{{{{else}}}}{_go_text(self.no_system)}{{{{end}}}}"
            '{{$last := ""}}{{range .Messages}}'
            f'{{{{if eq .Role "user"}}}}{_go_text(self.user_open)}{{{{.Content}}}}{_go_text(self.user_close)}'
            f'{{{{else if eq .Role "assistant"}}}}{_go_text(self.assistant_open)}{{{{.Content}}}}'
            f"{_go_text(self.assistant_close)}{{{{end}}}}{{{{$last = .Role}}}}{{{{end}}}}"
            f'{{{{if eq $last "user"}}}}{_go_text(self.generation)}{{{{end}}}}'
        )


def _go_text(text: str) -> str:
    """Literal text inside a Go template: `{{` would open an action, so it is written as a string action."""
    return text.replace("{{", '{{"{{"}}')


def _render(tok: Any, messages: Sequence[Message], generation: bool) -> str:
    return str(tok.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=generation))


def _between(text: str, start: str, end: str | None) -> str:
    i = text.index(start) + len(start)
    return text[i:] if end is None else text[i : text.index(end, i)]


def _strip_prefix(text: str, prefix: str, what: str) -> str:
    if not text.startswith(prefix):
        raise TemplateNotPortable(f"{what}: expected {prefix!r} at the start of {text!r}")
    return text[len(prefix) :]


def _strip_suffix(text: str, suffix: str, what: str) -> str:
    if suffix and not text.endswith(suffix):
        raise TemplateNotPortable(f"{what}: expected {suffix!r} at the end of {text!r}")
    return text[: len(text) - len(suffix)] if suffix else text


def read_wrapping(tok: Any) -> RoleWrapping:
    """Read the tokenizer's chat template as fixed text per role, from a few probe renderings; raise
    TemplateNotPortable when the probes disagree with such a reading."""
    system, u1, a1, u2 = (
        {"role": "system", "content": _SYS},
        {"role": "user", "content": _U1},
        {"role": "assistant", "content": _A1},
        {"role": "user", "content": _U2},
    )
    try:
        full = _render(tok, [system, u1, a1, u2], generation=True)
        user_only = _render(tok, [u1], generation=False)
        user_assistant = _render(tok, [u1, a1], generation=False)
    except Exception as e:  # a template's own raise_exception (e.g. roles it does not accept)
        raise TemplateNotPortable(f"the chat template refused a probe conversation: {e}") from e
    for probe in (_SYS, _U1, _A1, _U2):
        if full.count(probe) != 1:
            raise TemplateNotPortable(
                f"a message's content appears {full.count(probe)} times in the rendering"
            )
    user_close = _between(user_only, _U1, None)
    assistant_close = _between(user_assistant, _A1, None)
    user_open = _strip_prefix(_between(full, _A1, _U2), assistant_close, "after an assistant turn")
    assistant_open = _strip_prefix(_between(full, _U1, _A1), user_close, "after a user turn")
    generation = _strip_prefix(_between(full, _U2, None), user_close, "after the last user turn")
    system_close = _strip_suffix(_between(full, _SYS, _U1), user_open, "after the system message")
    wrapping = RoleWrapping(
        system_open=full[: full.index(_SYS)],
        system_close=system_close,
        no_system=_strip_suffix(user_only[: user_only.index(_U1)], user_open, "before a first user turn"),
        user_open=user_open,
        user_close=user_close,
        assistant_open=assistant_open,
        assistant_close=assistant_close,
        generation=generation,
    )
    if wrapping.render([system, u1, a1, u2]) != full:
        raise TemplateNotPortable("the probe conversation renders differently from its per-role reading")
    return wrapping


def modelfile(gguf_name: str, template: str, stops: Sequence[str], system: str | None) -> str:
    """FROM, TEMPLATE, one stop PARAMETER per stop token, and SYSTEM (Ollama sends it as the system message
    of a request that has none: the system prompt the run trained with)."""
    for text, what in ((template, "TEMPLATE"), (system or "", "SYSTEM")):
        if '"""' in text:
            raise TemplateNotPortable(f'the {what} contains """, which a Modelfile cannot quote')
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{template}"""']
    lines += [f"PARAMETER stop {json.dumps(s)}" for s in stops]
    if system:
        lines.append(f'SYSTEM """{system}"""')
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# Rendering with Go's text/template, as Ollama does (template.Execute in ollama/template/template.go:
# system messages joined into .System, consecutive messages of one role merged, all of them in .Messages).

_GO_RENDERER = r"""
package main

import (
	"encoding/json"
	"os"
	"strings"
	"text/template"
)

type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type Request struct {
	Template      string      `json:"template"`
	Conversations [][]Message `json:"conversations"`
}

func collate(msgs []Message) (string, []*Message) {
	var system []string
	var out []*Message
	for i := range msgs {
		m := msgs[i]
		if m.Role == "system" {
			system = append(system, m.Content)
		}
		if len(out) > 0 && out[len(out)-1].Role == m.Role {
			out[len(out)-1].Content += "\n\n" + m.Content
		} else {
			out = append(out, &m)
		}
	}
	return strings.Join(system, "\n\n"), out
}

func main() {
	var req Request
	if err := json.NewDecoder(os.Stdin).Decode(&req); err != nil {
		panic(err)
	}
	tmpl := template.Must(template.New("").Parse(req.Template))
	rendered := []string{}
	for _, conv := range req.Conversations {
		system, messages := collate(conv)
		var b strings.Builder
		data := map[string]any{"System": system, "Messages": messages, "Response": ""}
		if err := tmpl.Execute(&b, data); err != nil {
			panic(err)
		}
		rendered = append(rendered, b.String())
	}
	json.NewEncoder(os.Stdout).Encode(rendered)
}
"""


def go_available() -> bool:
    return shutil.which("go") is not None


def render_with_go(template: str, conversations: Sequence[Sequence[Message]]) -> list[str]:
    """Each conversation through Go's text/template with Ollama's data (one `go run` for all of them)."""
    with tempfile.TemporaryDirectory(prefix="tunesmith-go-") as tmp:
        src = Path(tmp) / "render.go"
        src.write_text(_GO_RENDERER, encoding="utf-8")
        env = {
            **os.environ,
            "GOCACHE": os.environ.get("GOCACHE") or str(Path(tmp) / "cache"),
            "GO111MODULE": "off",
        }
        proc = subprocess.run(
            ["go", "run", str(src)],
            input=json.dumps({"template": template, "conversations": [list(c) for c in conversations]}),
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
            check=False,
        )
    if proc.returncode != 0:
        raise RuntimeError(f"rendering the TEMPLATE with Go failed:\n{proc.stderr[-2000:]}")
    return list(json.loads(proc.stdout))


def check_template(
    tok: Any, wrapping: RoleWrapping, conversations: Sequence[Sequence[Message]]
) -> dict[str, Any]:
    """The run's conversations rendered by its chat template vs the wrapping in Python and, with `go`
    installed, vs the Modelfile TEMPLATE run through Go's text/template."""
    expected = [_render(tok, c, generation=True) for c in conversations]
    python = [wrapping.render(c) for c in conversations]
    report: dict[str, Any] = {
        "conversations": len(conversations),
        "python_identical": sum(a == b for a, b in zip(expected, python, strict=True)),
    }
    if go_available():
        go = render_with_go(wrapping.go_template(), conversations)
        report["go_identical"] = sum(a == b for a, b in zip(expected, go, strict=True))
        mismatch = next((i for i, (a, b) in enumerate(zip(expected, go, strict=True)) if a != b), None)
        if mismatch is not None:
            report["first_go_mismatch"] = {"expected": expected[mismatch], "rendered": go[mismatch]}
    else:
        report["go_identical"] = None
        report["go_skipped"] = (
            "go is not installed: the TEMPLATE was checked in Python only (apt-get install golang-go)"
        )
    return report
