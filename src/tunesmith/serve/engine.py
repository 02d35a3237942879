"""One base model in memory, the adapters of several runs on it, and a continuously batched decoder.

Generation requests decode together (tunesmith.serve.batcher): a request joins the running batch between
two decode steps and leaves it when it ends, rows of different LoRA adapters of one base share a batch, and
streaming, stop strings, cancellation and the per-request deadline are checked between two tokens. The
concurrency limit in front (app.py) turns excess load into quick 429s instead of an unbounded queue. Chat
answers of a run whose training answers are a closed set (labels, JSON of one schema) are decoded inside
it, as eval decodes them (tunesmith.eval.constrain); raw-text completions are not.

A classifier (`train.objective: classify`, on a decoder or a BERT-family encoder) is served alone, with its
head: a chat completion's answer is one of its labels, the argmax of one forward pass (sampled from the
label probabilities when a temperature is given), so a run that `tune` chose as a classifier deploys too.
Its requests take turns under a lock: one forward each, nothing to batch across steps.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith.config import CleanConfig
from tunesmith.serve.batcher import (
    BASE,
    DONE,
    Batcher,
    Cancelled,
    GenerationTimeout,
    Request,
    pick_token,
    sampling_generator,
)

if TYPE_CHECKING:
    from tunesmith.eval.constrain import Decoder

SERVABLE = frozenset({"lora", "dora", "ia3", "full"})


class ServeError(Exception):
    """Runs that cannot be served together (or at all), with the reason."""


# Re-exported: the errors a decode ends with, raised where the batcher thread reports them.
__all__ = ["Cancelled", "Engine", "GenerationTimeout", "Sampling", "ServeError", "Served", "TextStream"]


@dataclass
class Served:
    """A model name clients can request: a run (by id, or by an alias pointing at it)."""

    run_id: str
    run_dir: Path
    adapter: str | None  # peft adapter name; None: the model itself (a full fine-tune)
    tokenizer: Any
    stop_ids: list[int]
    system_prompt: str | None
    clean: CleanConfig
    aliases: list[str] = field(default_factory=list)
    # The run's answer space (labels, a JSON schema) when eval.constrain is auto: chat answers stay in it.
    decoder: Decoder | None = None
    labels: tuple[str, ...] = ()  # a classifier's labels, by class id; empty for a generator
    plain_text: bool = False  # an encoder reads the prompt as plain text, without a chat template

    @property
    def classifier(self) -> bool:
        return bool(self.labels)


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None
    constrain: bool = False  # chat completions of a run whose answers are a closed set decode inside it


class Engine:
    def __init__(
        self,
        run_dirs: Sequence[Path],
        aliases: dict[str, str] | None = None,
        device: str | None = None,
        max_batch: int = 32,
        prefix_cache: bool = True,
    ):
        import torch

        from tunesmith.config import load_run_config
        from tunesmith.models import load_model, load_tokenizer
        from tunesmith.registry import read_manifest
        from tunesmith.train.methods import output_dir_name

        if not run_dirs:
            raise ServeError("nothing to serve: name runs or an alias")
        runs = []
        for d in run_dirs:
            d = Path(d).resolve()
            cfg, manifest = load_run_config(d), read_manifest(d)
            if cfg.method.name not in SERVABLE:
                raise ServeError(
                    f"run {d.name}: method {cfg.method.name!r} is not served here (served: {', '.join(sorted(SERVABLE))}); "
                    "export it with `tunesmith export RUN --format adapter` and serve it with peft or vLLM"
                )
            saved = d / output_dir_name(cfg.method)
            if not saved.is_dir():
                raise ServeError(f"run {d.name} has no trained weights ({saved}); train it first")
            runs.append((d, cfg, manifest, saved))
        bases = {m["model_path"] for _, _, m, _ in runs}
        classifiers = [d.name for d, c, _, _ in runs if c.train.objective == "classify"]
        if classifiers and len(runs) > 1:
            raise ServeError(
                f"a classifier ({classifiers[0]}, train.objective classify) has its own head and labels: "
                "serve it alone"
            )
        full = [d.name for d, c, _, _ in runs if c.method.name == "full"]
        if full and len(runs) > 1:
            raise ServeError(f"a full fine-tune ({full[0]}) has its own weights: serve it alone")
        if len(bases) > 1:
            raise ServeError(
                f"adapters share one base model in memory; these runs have several: {sorted(bases)}"
            )
        peft_types = {c.method.name == "ia3" for _, c, _, _ in runs}
        if len(peft_types) > 1:
            raise ServeError(
                "LoRA and IA3 adapters cannot be active on one peft model; serve them separately"
            )

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model: Any
        self.lock = threading.Lock()
        self.served: dict[str, Served] = {}
        if classifiers:
            from tunesmith.runner import load_trained

            d, cfg, manifest, _ = runs[0]
            self.model, _ = load_trained(d, cfg, manifest)
            self.model = self.model.to(self.device)
            names: list[str | None] = [None]  # an adapter of a classifier is its only one: always active
        elif full:
            d, cfg, manifest, saved = runs[0]
            full_model: Any = load_model(str(saved))
            self.model = full_model.to(self.device)
            names = [None]
        else:
            from tunesmith.train.methods import load_adapter

            base = load_model(next(iter(bases)))
            adapter_names = [f"run{i}" for i in range(len(runs))]
            model = load_adapter(base, runs[0][3], adapter_name=adapter_names[0])
            for name, (_, _, _, saved) in zip(adapter_names[1:], runs[1:], strict=True):
                model.load_adapter(str(saved), adapter_name=name)
            names = [*adapter_names]
            self.model = model.to(self.device)
        self.model.eval()
        self.base_path = next(iter(bases))
        self.context = int(getattr(self.model.config, "max_position_embeddings", 2048))
        from tunesmith.data.tokenize import reads_plain_text, stop_token_ids
        from tunesmith.eval.constrain import run_decoder

        for adapter, (d, cfg, manifest, saved) in zip(names, runs, strict=True):
            tok = load_tokenizer(str(saved))  # the tokenizer and chat template training used
            if cfg.train.objective == "classify":
                self.served[manifest["id"]] = Served(
                    run_id=manifest["id"],
                    run_dir=d,
                    adapter=adapter,
                    tokenizer=tok,
                    stop_ids=[],
                    system_prompt=cfg.data.system_prompt,
                    clean=cfg.data.clean,
                    labels=tuple(_class_labels(d)),
                    plain_text=reads_plain_text(tok),
                )
                continue
            stops = stop_token_ids(tok, getattr(self.model, "generation_config", None))
            self.served[manifest["id"]] = Served(
                run_id=manifest["id"],
                run_dir=d,
                adapter=adapter,
                tokenizer=tok,
                stop_ids=stops,
                system_prompt=cfg.data.system_prompt,
                clean=cfg.data.clean,
                decoder=run_decoder(d, cfg.eval.constrain, tok, stops),
            )
        for alias, run_id in (aliases or {}).items():
            if run_id not in self.served:
                raise ServeError(f"alias {alias!r} points at {run_id}, which is not among the served runs")
            self.served[run_id].aliases.append(alias)
        self.names = {**{a: r for a, r in (aliases or {}).items()}, **{r: r for r in self.served}}
        self.created = int(time.time())
        # Generators decode in the batcher's thread; a classifier answers in one forward, under `lock`.
        self.batcher: Batcher | None = None
        if not classifiers:
            self.batcher = Batcher(
                self.model,
                self.device,
                max_rows=max_batch,
                # peft mixes LoRA adapters (and the base) in one batch (`adapter_names=`), not DoRA or IA3.
                mixed_adapters=all(c.method.name == "lora" for _, c, _, _ in runs),
                prefix_cache=prefix_cache,
            )

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()

    def base(self, run_id: str) -> Served | None:
        """The base model, as what `run_id` was trained from: its tokenizer and system prompt, no adapter and
        no answer constraint (the playground's base column). None beside a full fine-tune or a classifier."""
        run = self.served[run_id]
        if run.adapter is None or run.classifier:
            return None
        return dataclasses.replace(run, run_id="base", adapter=BASE, decoder=None, aliases=[])

    def lookup(self, name: str) -> Served | None:
        run_id = self.names.get(name)
        return self.served[run_id] if run_id else None

    def decode(
        self,
        served: Served,
        prompt_ids: list[int],
        sampling: Sampling,
        deadline: float,
        cancel: threading.Event,
    ) -> Generator[int, None, None]:
        """Yield generated token ids until a stop token, max_tokens, the deadline or a cancel; the tokens
        come from the running batch. Closing the iterator early (a stop string matched) frees the row."""
        if self.batcher is None:
            raise ServeError(f"{served.run_id} is a classifier: it answers with a label, not tokens")
        req = Request(served, prompt_ids, sampling, deadline, cancel)
        self.batcher.submit(req)
        try:
            while True:
                # The batcher answers every request by its deadline; the margin only guards against a
                # decoding thread that died, so a reader never waits forever.
                try:
                    event = req.events.get(timeout=max(0.0, deadline - time.monotonic()) + 30.0)
                except queue.Empty:
                    raise GenerationTimeout() from None
                if event is DONE:
                    return
                if isinstance(event, BaseException):
                    raise event
                yield event
        finally:
            req.abandoned = True

    def classify(self, served: Served, prompt_ids: list[int], sampling: Sampling) -> str:
        """A classifier's label for the prompt: the most likely one, or one drawn from the label
        probabilities (temperature, top_p, seed as for tokens). Call with self.lock held."""
        import torch

        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([prompt_ids], device=self.device))
        logits = out.logits[0].float().cpu()
        return served.labels[pick_token(logits, sampling, sampling_generator(sampling))]


def _class_labels(run_dir: Path) -> list[str]:
    """The labels a classifier run trained, by class id (its pre-flight's `class_labels`)."""
    from tunesmith.data.pipeline import read_class_labels

    labels = read_class_labels(run_dir / "data")
    if not labels:
        raise ServeError(
            f"run {run_dir.name} is a classifier without labels in its pre-flight: train it again"
        )
    return [str(lab) for lab in labels]


class TextStream:
    """Token ids in, text out, safe to send: holds back an incomplete UTF-8 character and any tail that
    may be the start of a stop string; ends the text at the first stop string."""

    def __init__(self, tok: Any, stops: Sequence[str]):
        self.tok = tok
        self.stops = [s for s in stops if s]
        self.ids: list[int] = []
        self.sent = 0
        self.stopped = False
        self.text = ""

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self.tok.decode(self.ids, skip_special_tokens=True)
        for s in self.stops:
            i = text.find(s, max(0, self.sent - len(s)))
            if i >= 0:
                self.stopped = True
                self.text = text[:i]
                out = text[self.sent : i] if i > self.sent else ""
                self.sent = max(self.sent, i)
                return out
        self.text = text
        end = len(text)
        if text.endswith("\ufffd"):
            end -= 1
        for s in self.stops:
            for k in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:k]):
                    end = min(end, len(text) - k)
                    break
        out = text[self.sent : end] if end > self.sent else ""
        self.sent = max(self.sent, end)
        return out

    def flush(self) -> str:
        out = self.text[self.sent :] if not self.stopped else ""
        self.sent = len(self.text)
        return out
