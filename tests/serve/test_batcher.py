"""Continuous batching: rows decoded together get the tokens they would get alone, whether they arrive
together or join a running batch, with one adapter or two mixed in one batch; rows that end, are cancelled
or run out of time leave without disturbing the others."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tunesmith.serve.batcher import Request
from tunesmith.serve.engine import Cancelled, Engine, GenerationTimeout, Sampling, Served

QUESTIONS = [
    "hi",
    "what is the refund policy for a damaged parcel that arrived late?",
    "reset my password",
    "the invoice from march lists a charge twice, once on the 3rd and once on the 5th, please explain",
    "status?",
]


@pytest.fixture(scope="module")
def engine(trained_runs: tuple[Path, list[str]]) -> Any:
    runs, ids = trained_runs
    eng = Engine([runs / ids[0], runs / ids[1]])
    yield eng
    eng.close()


def prompt(served: Served, text: str) -> list[int]:
    tok = served.tokenizer
    ids = tok.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True
    )
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def submit(engine: Engine, served: Served, text: str, max_tokens: int = 12, **kw: Any) -> Request:
    assert engine.batcher is not None
    req = Request(
        served,
        prompt(served, text),
        Sampling(max_tokens=max_tokens),
        time.monotonic() + 60,
        threading.Event(),
        **kw,
    )
    engine.batcher.submit(req)
    return req


def drain(req: Request) -> list[int] | BaseException:
    out: list[int] = []
    while True:
        ev = req.events.get(timeout=60)
        if ev is None:
            return out
        if isinstance(ev, BaseException):
            return ev
        out.append(ev)


def alone(engine: Engine, served: Served, text: str, max_tokens: int = 12) -> list[int] | BaseException:
    return drain(submit(engine, served, text, max_tokens))


def test_rows_decoded_together_get_the_tokens_they_get_alone(engine: Engine) -> None:
    a, b = engine.served.values()
    pairs = [(s, q) for q in QUESTIONS for s in (a, b)]
    expected = [alone(engine, s, q) for s, q in pairs]
    assert any(x != y for x, y in zip(expected[::2], expected[1::2], strict=True)), (
        "the two adapters should answer differently"
    )

    assert engine.batcher is not None
    before = engine.batcher.stats()
    together = [submit(engine, s, q) for s, q in pairs]  # both adapters, five prompt lengths, one batch
    assert [drain(r) for r in together] == expected
    tokens = sum(len(t) for t in expected if isinstance(t, list))
    after = engine.batcher.stats()
    steps = after.steps - before.steps
    # one forward advanced many rows: far fewer decode steps than tokens
    assert steps <= max(len(t) for t in expected if isinstance(t, list))
    assert tokens > 3 * steps
    # /metrics' counters: every prompt prefilled once, every row advanced counted
    assert after.prefill_rows - before.prefill_rows == len(pairs)
    assert after.prefills - before.prefills < len(pairs)  # prompts joined together
    assert after.rows_stepped - before.rows_stepped > 3 * steps
    assert (after.running, after.waiting) == (0, 0)


def test_a_request_joining_a_running_batch_gets_its_own_tokens(engine: Engine) -> None:
    a, b = engine.served.values()
    long_a = alone(engine, a, QUESTIONS[3], max_tokens=40)
    short_b = alone(engine, b, QUESTIONS[1], max_tokens=6)
    first = submit(engine, a, QUESTIONS[3], max_tokens=40)
    head = [first.events.get(timeout=60) for _ in range(3)]  # the batch is running
    second = submit(engine, b, QUESTIONS[1], max_tokens=6)  # joins it, wider prompt, other adapter
    rest = drain(first)
    assert isinstance(rest, list) and head + rest == long_a
    assert drain(second) == short_b


def test_an_abandoned_row_leaves_and_the_batch_goes_on(engine: Engine) -> None:
    a, b = engine.served.values()
    expected = alone(engine, b, QUESTIONS[0], max_tokens=20)
    quitter = submit(engine, a, QUESTIONS[4], max_tokens=200)
    stayer = submit(engine, b, QUESTIONS[0], max_tokens=20)
    quitter.events.get(timeout=60)
    quitter.abandoned = True  # a stop string matched: the reader stops reading
    assert drain(stayer) == expected
    assert engine.batcher is not None
    deadline = time.monotonic() + 10
    while engine.batcher.running_rows and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.batcher.running_rows == 0


def test_cancel_and_deadline_end_a_row_with_their_error(engine: Engine) -> None:
    a, _ = engine.served.values()
    cancelled = submit(engine, a, QUESTIONS[1], max_tokens=500)
    cancelled.events.get(timeout=60)
    cancelled.cancel.set()
    assert isinstance(drain(cancelled), Cancelled)

    late = Request(a, prompt(a, "hi"), Sampling(max_tokens=5), time.monotonic() - 1, threading.Event())
    assert engine.batcher is not None
    engine.batcher.submit(late)
    assert isinstance(drain(late), GenerationTimeout)


def test_the_engine_stream_matches_transformers_generate(engine: Engine) -> None:
    """An independent reference: peft's generate, greedy, for one adapter."""
    import torch

    served = next(iter(engine.served.values()))
    ids = prompt(served, QUESTIONS[1])
    got = list(engine.decode(served, ids, Sampling(max_tokens=10), time.monotonic() + 60, threading.Event()))
    assert engine.batcher is not None
    engine.model.set_adapter(served.adapter)
    engine.batcher._active = served.adapter
    with torch.inference_mode():
        out = engine.model.generate(
            input_ids=torch.tensor([ids]), max_new_tokens=10, do_sample=False, eos_token_id=served.stop_ids
        )
    ref = [t for t in out[0, len(ids) :].tolist()]
    ref = ref[: next((i for i, t in enumerate(ref) if t in served.stop_ids), len(ref))]
    assert got == ref


def test_base_rows_decode_with_the_adapters_off_in_the_same_batch(engine: Engine) -> None:
    """The playground's base column: rows of the base model share the batch with adapter rows (peft's
    `__base__`), and get what the model without its adapters generates."""
    import torch

    a, b = engine.served.values()
    base = engine.base(a.run_id)
    assert base is not None and base.decoder is None

    def without_adapters(text: str) -> list[int]:
        ids = prompt(base, text)
        with torch.inference_mode(), engine.model.disable_adapter():
            out = engine.model.generate(
                input_ids=torch.tensor([ids]), max_new_tokens=10, do_sample=False, eos_token_id=base.stop_ids
            )
        new = out[0, len(ids) :].tolist()
        return new[: next((i for i, t in enumerate(new) if t in base.stop_ids), len(new))]

    # a question on which the adapter changes the answer, so the check can tell adapters on from off
    question, ref = next(
        (q, r) for q in QUESTIONS if (r := without_adapters(q)) != alone(engine, b, q, max_tokens=10)
    )
    rows = [submit(engine, s, question, max_tokens=10) for s in (a, base, b)]
    got = [drain(r) for r in rows]
    assert got[1] == ref
    assert got[0] == alone(engine, a, question, max_tokens=10)
    assert got[2] == alone(engine, b, question, max_tokens=10) != ref


SYSTEM = (
    "You are the support desk of Ledgerly. Answer in one short sentence, name the queue the ticket "
    "belongs to, and never promise a refund."
)


def chat(served: Served, text: str) -> list[int]:
    """The prompt as the server encodes a chat with the run's system prompt: a shared beginning."""
    from tunesmith.data.tokenize import encode_prompt

    return list(
        encode_prompt(
            served.tokenizer, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]
        )
    )


def decode_all(engine: Engine, jobs: list[tuple[Served, str]], together: bool) -> list[Any]:
    assert engine.batcher is not None
    reqs = []
    out = []
    for served, text in jobs:
        req = Request(
            served, chat(served, text), Sampling(max_tokens=12), time.monotonic() + 60, threading.Event()
        )
        engine.batcher.submit(req)
        if together:
            reqs.append(req)
        else:
            out.append(drain(req))
    return [drain(r) for r in reqs] if together else out


def test_a_shared_system_prompt_is_prefilled_once_and_answers_do_not_change(
    engine: Engine, trained_runs: tuple[Path, list[str]]
) -> None:
    """Prompts that begin with one system prompt reuse its cached KV (per adapter, base rows too) and
    prefill only the rest; every row still gets the tokens of a server that prefills each prompt whole."""
    runs, ids = trained_runs
    plain = Engine([runs / ids[0], runs / ids[1]], prefix_cache=False)
    try:
        a, b = engine.served.values()
        base = engine.base(a.run_id)
        assert base is not None
        jobs = [(s, q) for q in QUESTIONS for s in (a, b, base)]
        pa, pb = plain.served.values()
        pbase = plain.base(pa.run_id)
        assert pbase is not None
        swap = {a.run_id: pa, b.run_id: pb}
        expected = decode_all(plain, [(swap.get(s.run_id, pbase), q) for s, q in jobs], together=False)
        assert plain.batcher is not None and plain.batcher.stats().prefix_tokens == 0

        assert engine.batcher is not None
        before = engine.batcher.stats()
        assert decode_all(engine, jobs[:3], together=False) == expected[:3]  # one at a time: prefixes made
        assert decode_all(engine, jobs, together=True) == expected  # all at once: one prefill after them
        after = engine.batcher.stats()
        x, y = chat(a, "x"), chat(a, "y")
        system = next(i for i, (s, t) in enumerate(zip(x, y, strict=True)) if s != t)  # the shared beginning
        assert after.prefix_tokens - before.prefix_tokens >= system * len(jobs)
        prompt_tokens = sum(len(chat(s, q)) for s, q in [*jobs[:3], *jobs])
        assert after.prefill_tokens - before.prefill_tokens <= prompt_tokens - system * len(jobs)
    finally:
        plain.close()


def test_the_prefix_cache_keeps_at_most_its_byte_budget() -> None:
    """Least recently used prefixes go first; one bigger than the whole budget is never kept, and a later
    prompt sharing that much is not offered as a prefix at all (it would only be computed and dropped)."""
    import torch

    from tunesmith.serve.batcher import MIN_PREFIX, _Prefix, _Prefixes

    def entry(first: int, n: int) -> _Prefix:  # 2 layers of keys and values, 8 float32 bytes a token each
        ids = tuple(range(first, first + n))
        return _Prefix("a", ids, [(torch.zeros(1, 1, n, 1), torch.zeros(1, 1, n, 1)) for _ in range(2)])

    per_token = 2 * 2 * 4
    cache = _Prefixes(max_bytes=50 * per_token)
    one, two, three = entry(0, 20), entry(100, 20), entry(200, 20)
    cache.add(one)
    cache.add(two)
    assert cache.match("a", [*one.ids, 7]) is one  # now the most recently used
    cache.add(three)  # 60 tokens > 50: the least recently used (two) goes
    assert cache.match("a", [*two.ids, 7]) is None and cache.match("a", [*three.ids, 7]) is three
    assert cache.match("b", [*one.ids, 7]) is None  # another adapter's KV differs
    cache.add(entry(300, 60))  # alone over the budget: not kept, nothing else dropped
    assert cache.match("a", [*one.ids, 7]) is one and cache.match("a", [*three.ids, 7]) is three
    long_a, long_b = [*range(500, 560), 1], [*range(500, 560), 2]
    assert cache.shared("a", long_a) is None  # nothing recent yet
    assert cache.shared("a", long_b) is None  # 60 shared tokens would not fit
    assert cache.shared("a", [*range(500, 500 + MIN_PREFIX + 1), 3]) == tuple(
        range(500, 500 + MIN_PREFIX + 1)
    )
