"""Serving a classifier (`train.objective: classify`): on a decoder with a LoRA adapter and on a BERT-family
encoder, a chat completion answers the label eval predicted for the same prompt; raw completions and
serving it beside another run are refused with the reason."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import make_label_rows, write_jsonl
from tunesmith.serve.app import Settings, create_app
from tunesmith.serve.engine import Engine, ServeError

LABELS = {"access", "billing", "mobile", "payroll"}


def _train(root: Path, model: Path, method: str) -> Path:
    from rich.console import Console

    from tunesmith.config import validate_config
    from tunesmith.runner import run_all

    write_jsonl(root / "data.jsonl", make_label_rows(120))
    raw = {
        "name": f"clf-{method}",
        "model": str(model),
        "runs_dir": str(root / "runs"),
        "data": {"train": "data.jsonl", "system_prompt": "Route the ticket."},
        "method": {"name": method},
        "train": {
            "objective": "classify",
            "max_steps": 8,
            "lr": 5e-3,
            "head_lr": 5e-3,
            "batch_size": 8,
            "max_length": 64,
            "eval_every": 8,
            "threads": 1,
        },
        "eval": {"metrics": ["accuracy"], "batch_size": 16},
    }
    return run_all(validate_config(raw, base_dir=root), Console(quiet=True)).run_dir


@pytest.fixture(scope="module", params=["decoder-lora", "encoder-full"])
def classifier_run(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
) -> Path:
    if request.param == "decoder-lora":
        return _train(tmp_path_factory.mktemp("clf-dec"), tiny_model_dir, "lora")
    bert: Path = request.getfixturevalue("tiny_bert_dir")
    return _train(tmp_path_factory.mktemp("clf-enc"), bert, "full")


@pytest.fixture(scope="module")
def client(classifier_run: Path) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    engine = Engine([classifier_run], {"router": classifier_run.name})
    serve_dir = classifier_run.parent.parent / f"serve-{classifier_run.name}"
    with TestClient(create_app(engine, Settings(serve_dir=serve_dir)), base_url="http://127.0.0.1") as c:
        yield c


def _predictions(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "eval" / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def test_chat_answers_the_label_eval_predicted(client: Any, classifier_run: Path) -> None:
    """Each test prompt, sent as a chat message, gets eval's tuned prediction (where eval's top label is
    clear of the next by 1e-4, so that batch padding cannot swap a near tie)."""
    checked = 0
    for p in _predictions(classifier_run)[:12]:
        probs = sorted(p["tuned_probabilities"].values(), reverse=True)
        if probs[0] - probs[1] < 1e-4:
            continue
        body = {"model": "router", "messages": [{"role": "user", "content": p["prompt"]}]}
        r = client.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        assert choice["message"]["content"] == p["tuned"] and choice["finish_reason"] == "stop"
        checked += 1
    assert checked >= 6


def test_sampled_labels_stay_labels_and_streams_carry_one(client: Any) -> None:
    body = {
        "model": "router",
        "messages": [{"role": "user", "content": "my password is broken again"}],
        "n": 4,
        "temperature": 2.0,
        "seed": 3,
        "max_tokens": 1,  # a label is answered whole whatever max_tokens says
    }
    r = client.post("/v1/chat/completions", json=body).json()
    assert {c["message"]["content"] for c in r["choices"]} <= LABELS and r["usage"]["completion_tokens"] >= 4
    events = client.post("/v1/chat/completions", json={**body, "n": 1, "stream": True}).text.split("\n\n")
    deltas = [
        json.loads(e[6:])["choices"][0]["delta"].get("content") for e in events if e.startswith("data: {")
    ]
    assert [d for d in deltas if d] and "".join(d for d in deltas if d) in LABELS
    assert events[-2] == "data: [DONE]"


def test_raw_completions_and_company_are_refused(
    client: Any, classifier_run: Path, trained_runs: Any
) -> None:
    r = client.post("/v1/completions", json={"model": "router", "prompt": "hello"})
    assert r.status_code == 400 and "is a classifier" in r.json()["error"]["message"]
    runs, ids = trained_runs
    with pytest.raises(ServeError, match="has its own head and labels: serve it alone"):
        Engine([classifier_run, runs / ids[0]])
