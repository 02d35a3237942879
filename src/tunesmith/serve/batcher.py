"""Continuous batching: the sequences of all admitted requests decode together, one token each per step.

One thread owns the model. Between two decode steps it lets waiting requests join (their prompts prefilled
in one left-padded forward, their KV cache left-padded to the running batch's width and stacked under it)
and drops the rows that ended (a stop token, max_tokens, the deadline, a cancel, or a reader that stopped
reading because a stop string matched), trimming the cache columns no remaining row attends to. Each row
keeps its own position ids, sampling generator, stop tokens and answer-space constraint, so a row's tokens
are the ones it would get decoding alone (a test holds batched greedy output to sequential output).

Why not transformers' own continuous batching (`generate_batch` / `ContinuousBatchingManager`, 5.24): it
takes one generation config for every request and has no per-request adapter, while this server's requests
differ in adapter, sampling, stop tokens and constraint. The dynamic cache of a plain forward does all that.

Shared prompt prefixes: requests to one run mostly begin alike (the run's system prompt, the chat template
around it), so the KV of a prefix two recent prompts shared is computed once, per adapter, and a later
prompt that begins with it prefills only the rest (its cache starts as the prefix's, the rest's left padding
sits between the two: a hole in the attention mask). Only the prompt tokens after the prefix cost compute.

Adapters: rows of different LoRA adapters of one base, and rows of the base itself (`BASE`: the playground's
base column), share a batch through peft's mixed-adapter forward (`adapter_names=`, one name per row). peft
refuses that for DoRA, and IA3 has no such path, so those rows batch per adapter, the batches stepping in
turn, a batch of base rows with the adapters disabled while it steps. A model whose cache is not plain full attention (sliding
windows, recurrent state) cannot have rows stacked this way: each request then decodes as its own batch of
one, and requests still take turns step by step.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from tunesmith.serve.engine import Sampling, Served

log = logging.getLogger("tunesmith.serve")

DONE = None  # the last event of a request that ended normally (a stop token or max_tokens)
BASE = "__base__"  # a row's adapter name for the base model, adapters off (peft's own name for it)


class GenerationTimeout(Exception):
    pass


class Cancelled(Exception):
    pass


@dataclass(eq=False)
class Request:
    """One sequence to decode. Its events are generated token ids, then DONE or an exception."""

    served: Served
    prompt: list[int]
    sampling: Sampling
    deadline: float
    cancel: threading.Event
    events: queue.SimpleQueue[int | BaseException | None] = field(default_factory=queue.SimpleQueue)
    # Set by the reader when it stops reading (a stop string matched): the row is dropped at the next step.
    abandoned: bool = False


@dataclass(frozen=True)
class BatchStats:
    running: int  # rows decoding now
    waiting: int  # requests submitted and not yet in a batch
    steps: int  # decode forwards so far
    rows_stepped: int  # rows those forwards advanced
    prefills: int  # prefill forwards so far
    prefill_rows: int  # prompts they prefilled
    prefill_tokens: int  # prompt tokens they prefilled
    prefix_tokens: int  # prompt tokens a cached shared prefix spared from prefilling
    prefill_seconds: float  # time in prefill forwards
    decode_seconds: float  # time in decode forwards


@dataclass(eq=False)
class _Row:
    req: Request
    pos: int  # tokens in the sequence so far: the next token's position id
    constraint: Any  # the answer-space processor, or None
    gen: Any  # the sampling generator, or None for greedy
    generated: list[int] = field(default_factory=list)
    logits: torch.Tensor | None = None  # the next token's logits, once a forward gave them
    next_id: int | None = None  # the token picked from `logits`, fed at the next step


MIN_PREFIX = 16  # tokens: a shorter shared prefix saves less than keeping it costs


@dataclass(eq=False)
class _Prefix:
    """The KV of a prompt prefix under one adapter: per layer (keys, values), batch 1."""

    adapter: str | None
    ids: tuple[int, ...]
    layers: list[tuple[torch.Tensor, torch.Tensor]]


class _Prefixes:
    """Prefixes recent prompts shared, per adapter, the least recently used dropped past `max_bytes` of KV
    (a 2,000-token prefix of a 7B model in fp16 holds about 1 GB)."""

    def __init__(self, max_bytes: int, recent: int = 8):
        self.max_bytes = max_bytes
        self.entries: OrderedDict[tuple[str | None, tuple[int, ...]], _Prefix] = OrderedDict()
        self.recent: dict[str | None, deque[list[int]]] = {}
        self._recent_len = recent
        self._bytes = 0
        self._per_token: float | None = None  # KV bytes per cached token, known after the first prefix
        self.hit_tokens = 0  # prompt tokens whose prefill a cached prefix saved

    def match(self, adapter: str | None, prompt: list[int]) -> _Prefix | None:
        """The longest cached prefix of `prompt` (leaving at least its last token to prefill)."""
        best = None
        for (name, ids), entry in self.entries.items():
            longer = best is None or len(ids) > len(best.ids)
            if name == adapter and len(ids) < len(prompt) and longer and tuple(prompt[: len(ids)]) == ids:
                best = entry
        if best is not None:
            self.entries.move_to_end((adapter, best.ids))
        return best

    def shared(self, adapter: str | None, prompt: list[int]) -> tuple[int, ...] | None:
        """The longest prefix `prompt` shares with a recent prompt of the adapter, if worth keeping (and
        small enough to keep); the prompt then counts as recent."""
        recent = self.recent.setdefault(adapter, deque(maxlen=self._recent_len))
        longest = max((common_prefix_len(prompt, other) for other in recent), default=0)
        recent.append(prompt)
        longest = min(longest, len(prompt) - 1)
        if longest < MIN_PREFIX or (self._per_token and longest * self._per_token > self.max_bytes):
            return None
        return tuple(prompt[:longest])

    def add(self, entry: _Prefix) -> None:
        size = _nbytes(entry)
        self._per_token = size / len(entry.ids)
        if size > self.max_bytes:
            return
        self.entries[(entry.adapter, entry.ids)] = entry
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, dropped = self.entries.popitem(last=False)
            self._bytes -= _nbytes(dropped)


def _nbytes(entry: _Prefix) -> int:
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in entry.layers)


def common_prefix_len(a: list[int], b: list[int]) -> int:
    """How many leading tokens `a` and `b` share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


@dataclass(eq=False)
class _Batch:
    """Rows decoding together: one KV cache, left-padded, and its attention mask (1 where a row has a token)."""

    rows: list[_Row] = field(default_factory=list)
    cache: Any = None
    mask: torch.Tensor | None = None


class Batcher:
    """The decoding thread. `submit` a Request and read its `events`."""

    def __init__(
        self,
        model: Any,
        device: str,
        max_rows: int = 32,
        mixed_adapters: bool = False,
        prefix_cache: bool = True,
    ):
        """`mixed_adapters`: the model's adapters are all LoRA, so rows of any of them (and BASE rows) may
        share a batch through peft's `adapter_names=`. `prefix_cache`: reuse the KV of prompt prefixes
        that requests share (off: every prompt is prefilled whole)."""
        self.model, self.device, self.max_rows = model, device, max_rows
        self.mixed = mixed_adapters
        self.config = _text_config(model)
        self.stackable = _stackable(self.config)
        # the prefix cache may hold KV up to a quarter of the weights' bytes
        budget = sum(p.numel() * p.element_size() for p in model.parameters()) // 4
        self.prefixes = _Prefixes(budget) if prefix_cache and self.stackable else None
        self._inbox: queue.SimpleQueue[Request | None] = queue.SimpleQueue()
        self._waiting: deque[Request] = deque()
        self._batches: dict[Any, _Batch] = {}
        self._solo = itertools.count()  # batch keys of requests that decode alone (unstackable caches)
        self._active: str | None = None  # the adapter set on the model last
        self.steps = 0  # decode forwards run (for tests and metrics)
        self.rows_stepped = 0  # rows those forwards advanced: rows_stepped / steps is the mean batch
        self.prefills = 0  # prefill forwards run
        self.prefill_rows = 0  # prompts they prefilled: prefill_rows / prefills is the mean join
        self.prefill_tokens = 0  # prompt tokens prefilled
        self.prefill_seconds = self.decode_seconds = 0.0  # time in those forwards
        self._thread = threading.Thread(target=self._loop, daemon=True, name="tunesmith-batcher")
        self._thread.start()

    def submit(self, req: Request) -> None:
        self._inbox.put(req)

    def close(self) -> None:
        self._inbox.put(None)
        self._thread.join(timeout=5)

    @property
    def running_rows(self) -> int:
        # list() copies the values in one step under the GIL: /metrics reads this from another thread
        return sum(len(b.rows) for b in list(self._batches.values()))

    def stats(self) -> BatchStats:
        """Counters for /metrics (read without a lock: each is one int written by the decoding thread)."""
        return BatchStats(
            running=self.running_rows,
            waiting=len(self._waiting) + self._inbox.qsize(),
            steps=self.steps,
            rows_stepped=self.rows_stepped,
            prefills=self.prefills,
            prefill_rows=self.prefill_rows,
            prefill_tokens=self.prefill_tokens,
            prefix_tokens=self.prefixes.hit_tokens if self.prefixes is not None else 0,
            prefill_seconds=self.prefill_seconds,
            decode_seconds=self.decode_seconds,
        )

    # -- the loop -----------------------------------------------------------------------------------

    def _loop(self) -> None:
        import torch

        with torch.inference_mode():
            while self._receive():
                self._admit()
                for key, batch in list(self._batches.items()):
                    try:
                        self._advance(batch)
                    except Exception as e:  # the batch's rows fail (a 500 each); the thread lives on
                        log.exception("decoding step failed for %d rows", len(batch.rows))
                        for row in batch.rows:
                            row.req.events.put(e)
                        batch.rows = []
                    if not batch.rows:
                        del self._batches[key]

    def _receive(self) -> bool:
        """Move submitted requests to the waiting line; block while there is nothing to do. False: closed."""
        block = not self._batches and not self._waiting
        while True:
            try:
                req = self._inbox.get(block=block)
            except queue.Empty:
                return True
            if req is None:
                return False
            self._waiting.append(req)
            block = False

    def _admit(self) -> None:
        """Waiting requests join a batch while rows are free; those that ended while waiting are answered."""
        joining: dict[Any, list[Request]] = {}
        free = self.max_rows - self.running_rows
        for _ in range(len(self._waiting)):
            req = self._waiting.popleft()
            if (err := _ended(req)) is not None:
                req.events.put(err)
            elif free > 0:
                joining.setdefault(self._key(req), []).append(req)
                free -= 1
            else:
                self._waiting.append(req)
        for key, reqs in joining.items():
            batch = self._batches.get(key) or _Batch()
            try:
                self._join(batch, reqs)
            except Exception as e:
                log.exception("prefill failed for %d requests", len(reqs))
                for req in reqs:
                    req.events.put(e)
                continue
            self._batches[key] = batch

    def _key(self, req: Request) -> Any:
        if not self.stackable:
            return ("solo", next(self._solo))
        return "mixed" if self.mixed else req.served.adapter

    def _advance(self, batch: _Batch) -> None:
        """Pick each row's next token from its logits, end the rows that are done, run one forward."""
        for row in batch.rows:
            self._choose(row)
        ended = [r for r in batch.rows if r.next_id is None]
        if ended:
            self._drop(batch, ended)
        if batch.rows:
            self._step(batch)

    def _choose(self, row: _Row) -> None:
        """Set row.next_id and send it, or end the row (next_id None) with DONE or its error."""
        import torch

        row.next_id = None
        req = row.req
        if (err := _ended(req)) is not None:
            req.events.put(err)
            return
        if req.abandoned or row.logits is None:
            return
        logits = row.logits
        allowed = row.constraint.allowed(row.generated) if row.constraint is not None else ()
        if len(allowed):  # a list, or a tensor of ids (JSON): never tested for truth
            keep = torch.full_like(logits, -torch.inf)
            keep[allowed] = 0.0
            logits = logits + keep
        nxt = pick_token(logits, req.sampling, row.gen)
        if nxt in req.served.stop_ids:
            req.events.put(DONE)
            return
        row.generated.append(nxt)
        row.next_id = nxt
        req.events.put(nxt)
        if len(row.generated) >= req.sampling.max_tokens:  # no forward for a token nobody will read
            req.events.put(DONE)
            row.next_id = None

    # -- the model --------------------------------------------------------------------------------

    def _join(self, batch: _Batch, reqs: list[Request]) -> None:
        """Prefill the newcomers and stack their caches under the batch's: those that begin with a cached
        prefix in one left-padded forward after the prefix all of them have, the others in another."""
        found = [(r, self._prefix_of(r)) for r in reqs]
        cached = [(r, p) for r, p in found if p is not None]
        groups: list[tuple[list[Request], list[_Prefix]]] = []
        if len(cached) < len(found):
            groups.append(([r for r, p in found if p is None], []))
        if cached:
            groups.append(([r for r, _ in cached], [p for _, p in cached]))
        for group, prefixes in groups:
            cache, mask, logits = self._prefill(group, prefixes)
            rows = [
                _Row(
                    req=r,
                    pos=len(r.prompt),
                    constraint=r.served.decoder.processor(0)
                    if r.served.decoder is not None and r.sampling.constrain
                    else None,
                    gen=sampling_generator(r.sampling),
                    logits=logits[i],
                )
                for i, r in enumerate(group)
            ]
            if batch.cache is None:
                batch.cache, batch.mask = cache, mask
            else:
                assert batch.mask is not None
                batch.mask = _stack(batch.cache, batch.mask, cache, mask)
            batch.rows += rows

    def _prefix_of(self, req: Request) -> _Prefix | None:
        """The longest cached prefix the request's prompt begins with. A new one is computed when the
        prompt shares at least MIN_PREFIX more tokens with a recent prompt of its adapter than the cached
        one covers (so prompts that merely share a first word do not each add a prefix)."""
        if self.prefixes is None:
            return None
        adapter = req.served.adapter
        shared = self.prefixes.shared(adapter, req.prompt)
        found = self.prefixes.match(adapter, req.prompt)
        if shared is not None and len(shared) >= (len(found.ids) if found else 0) + MIN_PREFIX:
            found = self._compute_prefix(adapter, shared)
            self.prefixes.add(found)
        return found

    def _compute_prefix(self, adapter: str | None, ids: tuple[int, ...]) -> _Prefix:
        import torch
        from transformers import DynamicCache

        cache: Any = DynamicCache(config=self.config)
        mask = torch.ones((1, len(ids)), dtype=torch.long)
        self._forward([adapter], torch.tensor([ids]), mask, torch.arange(len(ids))[None], cache)
        return _Prefix(adapter, ids, [(layer.keys, layer.values) for layer in cache.layers])

    def _prefill(
        self, reqs: list[Request], prefixes: list[_Prefix]
    ) -> tuple[Any, torch.Tensor, torch.Tensor]:
        """One forward over the prompts, left-padded, after the prefix every one of `prefixes` (one per
        request, or none) covers: a prefix's KV holds for any shorter prefix of it, since a position's keys
        and values depend only on the tokens up to it. The cache starts as those prefixes' KV, so a row's
        mask is the prefix's ones, its padding, then its own tokens. Returns the cache, the mask and each
        row's next-token logits."""
        import torch
        from transformers import DynamicCache

        shared = min((len(p.ids) for p in prefixes), default=0)
        rest = [r.prompt[shared:] for r in reqs]
        width = max(len(x) for x in rest)
        ids = torch.zeros((len(reqs), width), dtype=torch.long)
        mask = torch.zeros((len(reqs), shared + width), dtype=torch.long)
        mask[:, :shared] = 1
        for i, x in enumerate(rest):
            ids[i, width - len(x) :] = torch.tensor(x)
            mask[i, shared + width - len(x) :] = 1
        positions = (mask.cumsum(1) - 1).clamp(min=0)[:, shared:]
        cache = DynamicCache(config=self.config)
        if prefixes:
            for i in range(len(prefixes[0].layers)):
                keys = torch.cat([p.layers[i][0][..., :shared, :] for p in prefixes])
                values = torch.cat([p.layers[i][1][..., :shared, :] for p in prefixes])
                cache.update(keys, values, i)
            assert self.prefixes is not None
            self.prefixes.hit_tokens += shared * len(reqs)
        start = time.perf_counter()
        logits = self._forward([r.served.adapter for r in reqs], ids, mask, positions, cache)
        self.prefill_seconds += time.perf_counter() - start
        self.prefills += 1
        self.prefill_rows += len(reqs)
        self.prefill_tokens += sum(len(x) for x in rest)
        return cache, mask, logits

    def _step(self, batch: _Batch) -> None:
        """One decode forward: every row's picked token in, every row's next logits out."""
        import torch

        assert batch.mask is not None
        ids = torch.tensor([[r.next_id] for r in batch.rows], dtype=torch.long)
        positions = torch.tensor([[r.pos] for r in batch.rows], dtype=torch.long)
        batch.mask = torch.cat([batch.mask, torch.ones((len(batch.rows), 1), dtype=torch.long)], dim=1)
        start = time.perf_counter()
        logits = self._forward(
            [r.req.served.adapter for r in batch.rows], ids, batch.mask, positions, batch.cache
        )
        self.decode_seconds += time.perf_counter() - start
        for row, row_logits in zip(batch.rows, logits, strict=True):
            row.logits, row.pos = row_logits, row.pos + 1
        self.steps += 1
        self.rows_stepped += len(batch.rows)

    def _forward(
        self,
        adapters: list[str | None],
        ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: Any,
    ) -> torch.Tensor:
        """The last position's logits per row (float32, on the CPU), the rows' adapters applied."""
        from contextlib import nullcontext

        extra: dict[str, Any] = {}
        adapters_off: Any = nullcontext()
        names = set(adapters)
        if len(names) > 1 or names == {BASE} and self.mixed:
            # a mixed LoRA batch: peft routes each row through its own adapter, or none for BASE
            extra["adapter_names"] = [a or BASE for a in adapters]
        elif names == {BASE}:
            adapters_off = self.model.disable_adapter()  # DoRA / IA3: a batch of base rows alone
        elif (name := adapters[0]) is not None and name != self._active:
            self.model.set_adapter(name)  # model-wide state, and only this thread decodes
            self._active = name
        with adapters_off:
            out = self.model(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                position_ids=positions.to(self.device),
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
                **extra,
            )
        return out.logits[:, -1].float().cpu()

    def _drop(self, batch: _Batch, ended: list[_Row]) -> None:
        """Remove ended rows from the batch and its cache; trim the columns only padding is left in."""
        import torch

        keep = [i for i, r in enumerate(batch.rows) if r not in ended]
        batch.rows = [batch.rows[i] for i in keep]
        if not keep:
            batch.cache = batch.mask = None
            return
        assert batch.mask is not None
        batch.cache.batch_select_indices(torch.tensor(keep, device=self.device))
        mask = batch.mask[keep]
        lead = int((mask.sum(0) > 0).long().argmax())  # the first column some row still attends to
        if lead:
            for layer in batch.cache.layers:
                layer.keys, layer.values = layer.keys[..., lead:, :], layer.values[..., lead:, :]
            mask = mask[:, lead:]
        batch.mask = mask


def _ended(req: Request) -> BaseException | None:
    if req.cancel.is_set():
        return Cancelled()
    if time.monotonic() > req.deadline:
        return GenerationTimeout()
    return None


def _stack(into: Any, into_mask: torch.Tensor, new: Any, new_mask: torch.Tensor) -> torch.Tensor:
    """Stack cache `new` under cache `into` (in place), both left-padded to the wider one; the stacked mask."""
    import torch
    import torch.nn.functional as F

    width = max(into_mask.shape[1], new_mask.shape[1])

    def left_pad(x: torch.Tensor, dim_from_end: int) -> torch.Tensor:
        short = width - x.shape[-dim_from_end]
        return F.pad(x, (0, 0) * (dim_from_end - 1) + (short, 0)) if short else x

    for a, b in zip(into.layers, new.layers, strict=True):
        a.keys = torch.cat([left_pad(a.keys, 2), left_pad(b.keys, 2)], dim=0)
        a.values = torch.cat([left_pad(a.values, 2), left_pad(b.values, 2)], dim=0)
    return torch.cat([left_pad(into_mask, 1), left_pad(new_mask, 1)], dim=0)


def _text_config(model: Any) -> Any:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.config.get_text_config(decoder=True)


def _stackable(config: Any) -> bool:
    """Whether the model's cache is plain full attention in every layer: rows can then be left-padded and
    stacked. Sliding-window or recurrent layers keep state that padding would corrupt."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    probe = DynamicCache(config=config)
    return bool(probe.layers) and all(type(layer) is DynamicLayer for layer in probe.layers)


def sampling_generator(sampling: Sampling) -> Any:
    """The random generator of a sampled request (None for greedy): seeded by the request, or by the clock."""
    if sampling.temperature <= 0:
        return None
    import torch

    gen = torch.Generator(device="cpu")
    # A request's seed is at most 2^63 - 1; the n-th choice adds n, so wrap into the generator's range.
    seed = sampling.seed % (1 << 63) if sampling.seed is not None else int(time.time_ns() % (1 << 62))
    gen.manual_seed(seed)
    return gen


def pick_token(logits: Any, s: Sampling, gen: Any) -> int:
    import torch

    if s.temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / s.temperature, dim=-1)
    if s.top_p < 1.0:
        sorted_p, idx = probs.sort(descending=True)
        keep = sorted_p.cumsum(0) - sorted_p < s.top_p  # the smallest set whose mass reaches top_p
        probs = torch.zeros_like(probs).scatter(0, idx[keep], sorted_p[keep])
    return int(torch.multinomial(probs, 1, generator=gen))
