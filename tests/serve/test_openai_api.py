"""Acceptance: the official `openai` client against a live `tunesmith serve` (subprocess, loopback, tiny
model, two LoRA runs on one base)."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from helpers import ServerProcess

KEY = "test-key-1"


@pytest.fixture(scope="module")
def server(
    trained_runs: tuple[Path, list[str]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    runs, ids = trained_runs
    serve_dir = tmp_path_factory.mktemp("serve")
    args = [
        *ids,
        "--runs-dir",
        str(runs),
        "--api-key",
        KEY,
        "--max-concurrency",
        "4",
        "--max-body-bytes",
        "65536",
    ]
    with ServerProcess([*args, "--serve-dir", str(serve_dir)], serve_dir / "server.log") as srv:
        yield srv


_clients: list[openai.OpenAI] = []


def client(srv: ServerProcess, key: str = KEY) -> openai.OpenAI:
    c = openai.OpenAI(base_url=srv.url + "/v1", api_key=key, max_retries=0, timeout=120)
    _clients.append(c)
    return c


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _clients:
        _clients.pop().close()


USER = "my refund is broken since monday please help"


def _reference_answer(runs: Path, run_id: str, text: str, max_tokens: int) -> str:
    """Greedy answer of base + that run's adapter, computed here, as eval would."""
    from peft import PeftModel

    from tunesmith.data.tokenize import encode_prompt, stop_token_ids
    from tunesmith.eval.constrain import run_decoder
    from tunesmith.eval.generate import generate
    from tunesmith.models import load_model, load_tokenizer
    from tunesmith.registry import read_manifest

    run = runs / run_id
    tok = load_tokenizer(str(run / "adapter"))
    model = PeftModel.from_pretrained(load_model(read_manifest(run)["model_path"]), str(run / "adapter"))
    msgs: Any = [{"role": "system", "content": "Route the ticket."}, {"role": "user", "content": text}]
    stops = stop_token_ids(tok, model.generation_config)
    # Inside the run's label set, as eval and serve decode a label task (eval.constrain: auto).
    decoder = run_decoder(run, "auto", tok, stops)
    (gen,) = generate(model, tok, [encode_prompt(tok, msgs)], max_tokens, 1, stops, decoder=decoder)
    return gen.text


def test_models_chat_and_two_adapters_by_name(
    server: ServerProcess, trained_runs: tuple[Path, list[str]]
) -> None:
    runs, ids = trained_runs
    c = client(server)
    assert sorted(m.id for m in c.models.list()) == sorted(ids)
    answers = {}
    for run_id in ids:
        r = c.chat.completions.create(
            model=run_id, messages=[{"role": "user", "content": USER}], max_tokens=6
        )
        assert r.id.startswith("chatcmpl-") and r.model == run_id and r.system_fingerprint == run_id
        assert r.choices[0].finish_reason in ("stop", "length")
        assert r.usage is not None and r.usage.prompt_tokens > 5 and 0 < r.usage.completion_tokens <= 6
        answers[run_id] = r.choices[0].message.content or ""
        # Each name is answered by its own adapter: the same tokens as base + that adapter here.
        assert answers[run_id].strip() == _reference_answer(runs, run_id, USER, 6)
    assert answers[ids[0]] != answers[ids[1]]


def test_streaming_chat_equals_the_whole_answer(
    server: ServerProcess, trained_runs: tuple[Path, list[str]]
) -> None:
    _, ids = trained_runs
    c = client(server)
    msgs: Any = [{"role": "system", "content": "Route the ticket."}, {"role": "user", "content": USER}]
    whole = c.chat.completions.create(model=ids[1], messages=msgs, max_tokens=8)
    chunks = list(
        c.chat.completions.create(
            model=ids[1], messages=msgs, max_tokens=8, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finish = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finish == [whole.choices[0].finish_reason]
    assert (
        chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    )  # type: ignore[union-attr]


def test_completions_plain_and_streaming(server: ServerProcess, trained_runs: tuple[Path, list[str]]) -> None:
    _, ids = trained_runs
    c = client(server)
    r = c.completions.create(model=ids[0], prompt="Ticket: password reset", max_tokens=5)
    assert r.object == "text_completion" and isinstance(r.choices[0].text, str)
    assert r.usage is not None and r.usage.completion_tokens <= 5
    streamed = "".join(
        ch.choices[0].text
        for ch in c.completions.create(
            model=ids[0], prompt="Ticket: password reset", max_tokens=5, stream=True
        )
        if ch.choices
    )
    assert streamed == r.choices[0].text
    two = c.completions.create(model=ids[0], prompt="Ticket:", max_tokens=3, n=2, temperature=1.0, seed=7)
    assert [ch.index for ch in two.choices] == [0, 1]


def test_refusals(server: ServerProcess, trained_runs: tuple[Path, list[str]]) -> None:
    _, ids = trained_runs
    msg: Any = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.AuthenticationError):
        client(server, "wrong-key").chat.completions.create(model=ids[0], messages=msg, max_tokens=2)
    assert httpx.get(server.url + "/v1/models").status_code == 401
    assert httpx.get(server.url + "/metrics").status_code == 401
    assert httpx.get(server.url + "/health").status_code == 200  # no key needed
    c = client(server)
    with pytest.raises(openai.APIStatusError) as e:
        c.chat.completions.create(
            model=ids[0], messages=[{"role": "user", "content": "x" * 70_000}], max_tokens=2
        )
    assert e.value.status_code == 413
    with pytest.raises(openai.BadRequestError, match="maximum context length is 1024 tokens"):
        c.chat.completions.create(model=ids[0], messages=msg, max_tokens=2000)
    with pytest.raises(openai.BadRequestError, match="n=9 is over"):
        c.chat.completions.create(model=ids[0], messages=msg, max_tokens=2, n=9)
    with pytest.raises(openai.BadRequestError, match="stop sequences"):
        c.chat.completions.create(model=ids[0], messages=msg, max_tokens=2, stop=["a", "b", "c", "d", "e"])
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        c.chat.completions.create(model="/etc/passwd", messages=msg, max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="not supported"):
        c.chat.completions.create(
            model=ids[0], messages=msg, max_tokens=2, tools=[{"type": "function", "function": {"name": "f"}}]
        )


def test_twenty_concurrent_clients_over_a_limit_of_four(
    server: ServerProcess, trained_runs: tuple[Path, list[str]]
) -> None:
    _, ids = trained_runs
    statuses: list[int | str] = []
    barrier = threading.Barrier(20)
    lock = threading.Lock()

    def one(i: int) -> None:
        c = client(server)
        barrier.wait()
        try:
            c.chat.completions.create(
                model=ids[i % 2], messages=[{"role": "user", "content": f"{USER} {i}"}], max_tokens=64
            )
            status: int | str = 200
        except openai.APIStatusError as e:
            status = e.status_code
        except Exception as e:  # anything else (connection reset, timeout) is a failure of the test
            status = repr(e)
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    counts = Counter(statuses)
    assert set(counts) <= {200, 429}, counts
    assert counts[429] >= 1 and counts[200] >= 4 and sum(counts.values()) == 20, counts
    # With keys set, /health (open to all) names nothing; the in-flight gauge is in /metrics.
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    metrics = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    assert f'tunesmith_requests_total{{route="/v1/chat/completions",status="429"}} {counts[429]}' in metrics
    assert f'tunesmith_tokens_total{{model="{ids[0]}",kind="completion"}}' in metrics
    assert "tunesmith_request_seconds_bucket" in metrics and "tunesmith_requests_in_flight 0" in metrics
    # the running batch: idle now, and its counters moved
    assert "tunesmith_batch_rows 0" in metrics and "tunesmith_batch_waiting 0" in metrics
    rows = {
        k: float(v) for k, v in (ln.split() for ln in metrics.splitlines() if ln.startswith("tunesmith_pre"))
    }
    assert rows["tunesmith_prefill_rows_total"] >= counts[200]


def test_an_unknown_heap_is_refused_before_anything_loads(tmp_path: Path) -> None:
    from helpers import cli_here

    res = cli_here("serve", "--heap", "tiny", "--runs-dir", str(tmp_path))
    assert res.returncode == 1 and "use fast or compact" in res.stderr
