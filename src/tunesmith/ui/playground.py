"""The Playground: one prompt to the base model and to tuned runs, each answer streamed, through the serve
engine (tunesmith.serve.engine: the same adapters, chat template, stop tokens and closed answer sets that
`tunesmith serve` uses).

One engine is kept loaded, for the set of runs last asked for; asking for another set loads that one in its
place (one base model in memory at a time). The columns decode together, in the engine's running batch
(the base column as rows with the adapters off), as concurrent `serve` requests do.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from tunesmith.serve.app import Settings
from tunesmith.serve.engine import Cancelled, Engine, GenerationTimeout, Sampling, Served, TextStream

BASE = "base"
log = logging.getLogger("tunesmith.ui")


class PlaygroundError(Exception):
    """A request the playground refuses (unknown model, runs that cannot be served together, a busy
    server), with the reason shown in the column."""


@dataclass(frozen=True)
class Ask:
    runs: tuple[str, ...]  # the tuned runs of this comparison (the engine to load)
    model: str  # BASE or one of `runs`: this column
    prompt: str
    max_tokens: int
    temperature: float


class Playground:
    def __init__(self, settings: Settings):
        self.settings = settings
        self._engine: Engine | None = None
        self._loaded: tuple[str, ...] = ()
        self._load_lock = threading.Lock()
        self._admitted = threading.BoundedSemaphore(settings.max_concurrency)

    def engine(self, run_dirs: list[Path]) -> Engine:
        """The engine for exactly these runs, loaded on first use (ServeError when they do not go together)."""
        key = tuple(d.name for d in run_dirs)
        with self._load_lock:
            if self._engine is None or self._loaded != key:
                self._release()  # the previous model goes before the next one loads
                self._engine = Engine(run_dirs)
                self._loaded = key
            return self._engine

    def _release(self) -> None:
        # An engine that runs a decoding thread of its own (serve's continuous batcher) has `close`.
        close = getattr(self._engine, "close", None)
        if close is not None:
            close()
        self._engine = None

    def check(self, ask: Ask) -> None:
        """The limits `serve` applies to a request, before any model work."""
        if not ask.runs:
            raise PlaygroundError("pick at least one tuned run")
        if ask.model != BASE and ask.model not in ask.runs:
            raise PlaygroundError(f"{ask.model!r} is not one of the runs of this comparison")
        if not ask.prompt.strip():
            raise PlaygroundError("the prompt is empty")
        if len(ask.prompt) > self.settings.max_prompt_chars:
            raise PlaygroundError(f"the prompt is over {self.settings.max_prompt_chars:,} characters")
        if not 1 <= ask.max_tokens <= self.settings.default_max_tokens:
            raise PlaygroundError(f"max tokens must be 1-{self.settings.default_max_tokens}")
        if not 0.0 <= ask.temperature <= 2.0:
            raise PlaygroundError("temperature must be 0-2")

    def stream(self, engine: Engine, ask: Ask) -> AsyncIterator[str]:
        """The column's answer, piece by piece. What can be refused is refused here, before the response
        starts (PlaygroundError); a busy server (`max_concurrency` answers being generated, serve's 429)
        and serve's deadline are said inside the stream, which has started by then."""
        served = _column(engine, ask)
        prompt = _encode(served, ask.prompt)
        context = min(engine.context, self.settings.max_context or engine.context)
        if len(prompt) + ask.max_tokens > context:
            raise PlaygroundError(
                f"prompt ({len(prompt)} tokens) + max tokens is over the context ({context})"
            )
        sampling = Sampling(
            ask.max_tokens, ask.temperature, constrain=served.decoder is not None and ask.model != BASE
        )
        return self._generate(engine, served, prompt, sampling)

    async def _generate(
        self,
        engine: Engine,
        served: Served,
        prompt: list[int],
        sampling: Sampling,
    ) -> AsyncIterator[str]:
        """The column's tokens are read on a thread of its own (they come from the engine's batcher); the
        pieces reach the response through a queue. A
        client that goes away ends the stream here, which cancels the decode between two tokens."""
        if not self._admitted.acquire(blocking=False):
            yield "[busy: too many answers are being generated; try again]"
            return
        pieces: queue.Queue[str | None] = queue.Queue()
        cancel = threading.Event()
        worker = threading.Thread(
            target=self._decode,
            args=(engine, served, prompt, sampling, cancel, pieces),
            daemon=True,
            name="tunesmith-ui-decode",
        )
        worker.start()
        try:
            while (piece := await asyncio.to_thread(pieces.get)) is not None:
                yield piece
        finally:
            cancel.set()

    def _decode(
        self,
        engine: Engine,
        served: Served,
        prompt: list[int],
        sampling: Sampling,
        cancel: threading.Event,
        pieces: queue.Queue[str | None],
    ) -> None:
        deadline = time.monotonic() + self.settings.timeout_s
        text = TextStream(served.tokenizer, [])
        try:
            for token in engine.decode(served, prompt, sampling, deadline, cancel):
                if piece := text.push(token):
                    pieces.put(piece)
            if piece := text.flush():
                pieces.put(piece)
        except GenerationTimeout:
            pieces.put(f"\n[stopped: the answer took over {self.settings.timeout_s:.0f} s]")
        except Cancelled:
            pass
        except Exception:  # the column says so; the traceback goes to the server log, not to the page
            log.exception("playground generation failed for %s", served.run_id)
            pieces.put("\n[stopped: generation failed (the server log has the details)]")
        finally:
            self._admitted.release()
            pieces.put(None)


def _column(engine: Engine, ask: Ask) -> Served:
    """What to decode for the column: a run as served, or the base (the first run's tokenizer and system
    prompt, no adapter)."""
    if ask.model != BASE:
        served = engine.lookup(ask.model)
        if served is None:
            raise PlaygroundError(f"{ask.model} is not loaded")
        if served.classifier:
            raise PlaygroundError(f"{ask.model} is a classifier: ask it through `tunesmith serve`")
        return served
    base = engine.base(ask.runs[0])
    if base is None:
        raise PlaygroundError("the base model is not available beside a full fine-tune or a classifier")
    return base


def _encode(served: Served, prompt: str) -> list[int]:
    from tunesmith.data.tokenize import encode_prompt

    messages = [{"role": "user", "content": prompt}]
    if served.system_prompt:
        messages.insert(0, {"role": "system", "content": served.system_prompt})
    return encode_prompt(served.tokenizer, messages)  # type: ignore[arg-type]
