"""The server's parts in-process: stop strings in a token stream, deadlines (504), stop sequences and
feedback redaction through the app, and the Prometheus text."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tunesmith.config import CleanConfig
from tunesmith.serve.app import Settings, create_app
from tunesmith.serve.engine import Engine, TextStream
from tunesmith.serve.feedback import FeedbackStore, export_feedback
from tunesmith.serve.metrics import Metrics

LOCAL = "http://127.0.0.1"  # without an API key the server answers loopback Host names only


def test_text_stream_holds_back_a_possible_stop_and_cuts_at_it(tokenizer: Any) -> None:
    ids = tokenizer("alpha beta ENDgamma", add_special_tokens=False)["input_ids"]
    stream = TextStream(tokenizer, ["END"])
    sent = ""
    for t in ids:
        sent += stream.push(t)
        if stream.stopped:
            break
    sent += stream.flush()
    assert stream.stopped and sent == "alpha beta " and stream.text == "alpha beta "

    # Without a stop hit, everything held back comes out at the end, and text is never sent twice.
    stream = TextStream(tokenizer, ["beta gamma"])
    pieces = [stream.push(t) for t in tokenizer("alpha beta delta", add_special_tokens=False)["input_ids"]]
    assert "".join(pieces) + stream.flush() == "alpha beta delta" and not stream.stopped


@pytest.fixture(scope="module")
def engine(trained_runs: tuple[Path, list[str]]) -> Engine:
    runs, ids = trained_runs
    return Engine([runs / ids[0]], {"production": ids[0]})


@pytest.fixture
def app_client(engine: Engine, tmp_path: Path) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    with TestClient(create_app(engine, Settings(serve_dir=tmp_path / "serve")), base_url=LOCAL) as c:
        yield c


def test_stop_sequence_and_alias_name(app_client: Any, engine: Engine) -> None:
    body = {"model": "production", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 12}
    full = app_client.post("/v1/chat/completions", json=body).json()
    text = full["choices"][0]["message"]["content"]
    assert full["system_fingerprint"] == engine.names["production"] and len(text) > 3
    stop = text[2:4]
    cut = app_client.post("/v1/chat/completions", json={**body, "stop": stop}).json()["choices"][0]
    assert cut["message"]["content"] == text[: text.index(stop)] and cut["finish_reason"] == "stop"


def test_deadline_gives_504_and_a_stream_error_event(engine: Engine, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    app = create_app(engine, Settings(serve_dir=tmp_path, timeout_s=0.0))
    body = {"model": "production", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 50}
    with TestClient(app, base_url=LOCAL) as c:
        r = c.post("/v1/chat/completions", json=body)
        assert r.status_code == 504 and "request timeout" in r.json()["error"]["message"]
        events = c.post("/v1/chat/completions", json={**body, "stream": True}).text.split("\n\n")
        errors = [json.loads(e[6:]) for e in events if e.startswith("data: {") and '"error"' in e]
        assert errors and errors[0]["error"]["type"] == "timeout_error" and events[-2] == "data: [DONE]"
        assert c.get("/health").json()["in_flight"] == 0


def test_feedback_is_redacted_and_exported_as_sft_and_dpo(app_client: Any, tmp_path: Path) -> None:
    body = {
        "model": "production",
        "messages": [{"role": "user", "content": "card 4111 1111 1111 1111 refund"}],
        "max_tokens": 3,
        "temperature": 1.0,
        "seed": 1,
    }
    rid = app_client.post("/v1/chat/completions", json=body).json()["id"]
    r = app_client.post(
        "/v1/feedback", json={"id": rid, "rating": 1, "correction": "billing, mail bob@example.org"}
    )
    assert r.status_code == 200 and r.json()["status"] == "stored"
    assert app_client.post("/v1/feedback", json={"id": rid, "rating": "meh"}).status_code == 400
    assert app_client.post("/v1/feedback", json={"id": rid, "rating": "up", "choice": 3}).status_code == 400
    serve_dir = tmp_path / "serve"
    (row,) = FeedbackStore(serve_dir).rows()
    assert "4111" not in row["request"] and "<CARD>" in row["request"]
    assert row["correction"] == "billing, mail <EMAIL>"
    result = export_feedback(serve_dir, tmp_path / "fb", clean=CleanConfig())
    assert (result.sft, result.dpo) == (1, 1)
    pair = json.loads((tmp_path / "fb" / "dpo.jsonl").read_text())
    assert pair["chosen"] == "billing, mail <EMAIL>" and pair["system"] == "Route the ticket."


def test_prometheus_text() -> None:
    m = Metrics()
    m.request("/v1/completions", 200, 0.3)
    m.request("/v1/completions", 429, 0.001)
    m.count_tokens("prod", 10, 4)
    text = m.render()
    assert 'tunesmith_requests_total{route="/v1/completions",status="429"} 1' in text
    assert 'tunesmith_request_seconds_bucket{route="/v1/completions",le="0.5"} 2' in text
    assert 'tunesmith_request_seconds_bucket{route="/v1/completions",le="0.05"} 1' in text
    assert 'tunesmith_tokens_total{model="prod",kind="completion"} 4' in text


def test_chat_answers_of_a_label_run_are_labels_and_raw_completions_are_free(app_client: Any) -> None:
    from helpers import QUEUES

    # The toy runs answer with one of four queue names: their pre-flight found a closed label set.
    for content in ("hello", "my payslip is wrong", "zzz qqq"):
        body = {"model": "production", "messages": [{"role": "user", "content": content}], "max_tokens": 12}
        reply = app_client.post("/v1/chat/completions", json=body).json()
        assert reply["choices"][0]["message"]["content"] in QUEUES, reply
    raw = app_client.post(
        "/v1/completions", json={"model": "production", "prompt": "hello", "max_tokens": 12}
    )
    assert raw.json()["choices"][0]["text"] not in QUEUES


def test_eval_reports_the_constrained_pass_and_the_unconstrained_invalid_share(
    trained_runs: tuple[Path, list[str]],
) -> None:
    from helpers import QUEUES

    runs, ids = trained_runs
    run = runs / ids[0]
    ev = json.loads((run / "eval" / "eval.json").read_text())
    c = ev["constrained"]
    assert c["kind"] == "labels" and c["invalid_share"] == {"base": 0.0, "tuned": 0.0}
    # The base model never saw the queue names: left free, it names none of them.
    assert c["invalid_share_unconstrained"]["base"] == 1.0
    assert 0.0 <= c["unconstrained_scores"]["tuned"]["accuracy"] <= 1.0
    preds = [json.loads(line) for line in (run / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert all(p["base"] in QUEUES and p["tuned"] in QUEUES for p in preds)
    assert all(set(p["unconstrained"]) == {"base", "tuned"} for p in preds)
    assert "id=constrained" in (run / "report.html").read_text()
