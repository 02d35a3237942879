"""Hostile or careless clients, one test per finding: a many-turn chat cannot freeze the server, a client
that goes away stops its generation, a web page cannot reach a key-less server, sampling values the decoder
cannot compute are refused, a template's refusal is the client's error, a 500 hides the internals, /health
names nothing when keys are set, options that would be ignored are refused, keys come from the environment
whole, and the feedback store runs in WAL mode and counts a failed write."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers import ServerProcess
from tunesmith.serve.app import INTERNAL_ERROR, Settings, create_app
from tunesmith.serve.engine import Engine
from tunesmith.serve.server import api_keys

LOCAL = "http://127.0.0.1"
CHAT = "/v1/chat/completions"


def _chat(model: str, text: str = "my refund is broken", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 4, **extra}


@pytest.fixture(scope="module")
def engine(trained_runs: tuple[Path, list[str]]) -> Engine:
    """An engine of its own: tests here change its tokenizer's template and its decoder."""
    runs, ids = trained_runs
    return Engine([runs / ids[0]], {"m": ids[0]})


@pytest.fixture
def app(engine: Engine, tmp_path: Path) -> Any:
    return create_app(engine, Settings(serve_dir=tmp_path / "serve"))


@pytest.fixture
def client(app: Any) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    with TestClient(app, base_url=LOCAL) as c:
        yield c


@pytest.fixture(scope="module")
def server(trained_runs: tuple[Path, list[str]], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real `tunesmith serve` without a key, on loopback (uvicorn: disconnects are real)."""
    runs, ids = trained_runs
    serve_dir = tmp_path_factory.mktemp("serve-hostile")
    args = [ids[0], "--runs-dir", str(runs), "--serve-dir", str(serve_dir), "--max-concurrency", "2"]
    with ServerProcess(args, serve_dir / "server.log") as srv:
        yield srv


# ------------------------------------------------------------------------------------ a real server


def test_many_turns_are_refused_before_encoding_and_health_answers(server: Any) -> None:
    """6,000 short alternating turns (~250 KB): a 400 at once, and /health answers within 1 s meanwhile."""
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"t{i}"} for i in range(6000)]
    turns[-1] = {"role": "user", "content": "last"}
    body = {"model": "x", "messages": turns, "max_tokens": 1}
    result: dict[str, Any] = {}

    def post() -> None:
        t = time.monotonic()
        model = httpx.get(server.url + "/v1/models", timeout=10).json()["data"][0]["id"]
        r = httpx.post(server.url + CHAT, json={**body, "model": model}, timeout=60)
        result.update(status=r.status_code, text=r.text, seconds=time.monotonic() - t)

    worker = threading.Thread(target=post)
    worker.start()
    health = []
    while worker.is_alive() or not health:
        t = time.monotonic()
        r = httpx.get(server.url + "/health", timeout=5)
        health.append((r.status_code, time.monotonic() - t))
        time.sleep(0.05)
    worker.join()
    assert result["status"] == 400 and "at most 256 per request" in result["text"]
    assert result["seconds"] < 10
    assert all(code == 200 and s < 1.0 for code, s in health), health


def test_a_client_that_goes_away_stops_its_generation(server: Any) -> None:
    """A non-streaming completion of ~600 tokens, its client gone after 0.5 s: the server's in-flight count
    drops within 1.5 s, well before the generation would have ended (measured first, uncut)."""
    body = {"model": "", "prompt": "zebra quantum lantern", "max_tokens": 600, "temperature": 1.0, "seed": 7}
    body["model"] = httpx.get(server.url + "/v1/models", timeout=10).json()["data"][0]["id"]
    t = time.monotonic()
    full = httpx.post(server.url + "/v1/completions", json=body, timeout=120).json()
    uncut_s = time.monotonic() - t
    assert full["usage"]["completion_tokens"] > 300, full["usage"]  # long enough to tell a cut from an end
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/completions", json=body, timeout=0.5)
    gone = time.monotonic()
    while httpx.get(server.url + "/health", timeout=5).json()["in_flight"] and time.monotonic() - gone < 30:
        time.sleep(0.05)
    stopped_after = time.monotonic() - gone
    assert stopped_after < min(1.5, uncut_s / 2), (stopped_after, uncut_s)


# ------------------------------------------------------------------------------------ in process


def test_without_a_key_only_loopback_hosts_and_json_bodies(app: Any, tmp_path: Path, engine: Engine) -> None:
    from fastapi.testclient import TestClient

    with TestClient(app, base_url="http://attacker.example") as c:  # what DNS rebinding sends
        r = c.get("/v1/models")
        assert r.status_code == 421 and "loopback names only" in r.json()["error"]["message"]
    with TestClient(app, base_url="http://localhost:8000") as c:
        assert c.get("/v1/models").status_code == 200
        # A cross-site form or no-cors fetch: text/plain, no preflight. Refused before it is read.
        r = c.post(
            "/v1/feedback", content=b'{"id": "x", "rating": "down"}', headers={"content-type": "text/plain"}
        )
        assert r.status_code == 415
    keyed = create_app(engine, Settings(serve_dir=tmp_path / "k", api_keys=["k1"]))
    with TestClient(keyed, base_url="http://tunesmith.internal") as c:  # with a key, the key decides
        assert c.get("/v1/models", headers={"Authorization": "Bearer k1"}).status_code == 200
        assert c.get("/health").json() == {"status": "ok"}  # no key needed, so it names nothing


def test_sampling_values_out_of_range(client: Any) -> None:
    greedy = client.post(CHAT, json=_chat("m")).json()["choices"][0]["message"]["content"]
    tiny = client.post(CHAT, json=_chat("m", temperature=1e-40))
    assert tiny.status_code == 200 and tiny.json()["choices"][0]["message"]["content"] == greedy
    r = client.post(CHAT, json=_chat("m", temperature=1.0, seed=2**64))
    assert r.status_code == 400 and r.json()["error"]["param"] == "seed"
    assert client.post(CHAT, json=_chat("m", temperature=1.0, seed=2**63 - 1, n=2)).status_code == 200
    r = client.post(CHAT, json=_chat("m", n=3))  # greedy: three identical answers
    assert r.status_code == 400 and "identical answers" in r.json()["error"]["message"]


def test_ignored_options_are_refused_unless_neutral(client: Any) -> None:
    for extra in (
        {"response_format": {"type": "json_object"}},
        {"presence_penalty": 0.5},
        {"frequency_penalty": 1},
    ):
        r = client.post(CHAT, json=_chat("m", **extra))
        assert r.status_code == 400 and "not supported" in r.json()["error"]["message"], extra
    neutral = {"response_format": {"type": "text"}, "presence_penalty": 0, "frequency_penalty": 0.0}
    assert client.post(CHAT, json=_chat("m", **neutral)).status_code == 200


def test_a_template_that_refuses_the_messages_is_a_400(client: Any, engine: Engine) -> None:
    tok = engine.served[engine.names["m"]].tokenizer
    saved = tok.chat_template
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system turns') }}"
        "{% endif %}{{ m['content'] }}{% endfor %}"
    )
    try:
        body = _chat("m")
        body["messages"].insert(0, {"role": "system", "content": "be brief"})
        r = client.post(CHAT, json=body)
    finally:
        tok.chat_template = saved
    assert r.status_code == 400 and "no system turns" in r.json()["error"]["message"]


def test_a_500_says_nothing_of_the_internals(
    client: Any, engine: Engine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("secret detail /srv/models/weights.bin")

    monkeypatch.setattr(engine, "decode", broken)
    with caplog.at_level(logging.ERROR, logger="tunesmith.serve"):
        r = client.post(CHAT, json=_chat("m"))
        stream = client.post(CHAT, json=_chat("m", stream=True)).text
    assert r.status_code == 500 and r.json()["error"]["message"] == INTERNAL_ERROR
    assert "secret" not in r.text and "secret" not in stream and INTERNAL_ERROR in stream
    assert "secret detail" in caplog.text  # the operator still sees it


def test_feedback_store_is_wal_and_a_failed_write_is_counted(
    client: Any, app: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store = app.state.store
    with sqlite3.connect(store.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"

    def full_disk(*_: Any, **__: Any) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(store, "record_response", full_disk)
    with caplog.at_level(logging.ERROR, logger="tunesmith.serve"):
        r = client.post(CHAT, json=_chat("m"))
    assert r.status_code == 200  # the answer was generated; only its record is missing
    assert "tunesmith_feedback_write_failures_total 1" in client.get("/metrics").text
    assert "could not record response" in caplog.text
    fb = client.post("/v1/feedback", json={"id": r.json()["id"], "rating": "down"})
    assert fb.status_code == 404  # said plainly, not stored as if it had been


def test_api_keys_from_the_environment_are_one_string() -> None:
    assert api_keys(None, "correct horse battery staple") == ["correct horse battery staple"]
    assert api_keys(None, "key-one, key-two") == ["key-one", "key-two"]
    assert api_keys(["from-flag"], "from-env") == ["from-flag"]
    assert api_keys(None, None) == [] and api_keys([""], " , ") == []
