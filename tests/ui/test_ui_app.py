"""The UI's rules in-process (FastAPI's TestClient, the tiny trained runs): the key (401), loopback names,
CSRF, the config editor's messages against `tunesmith run`'s, promote/rollback, the playground's streams,
the review saved as `review import` saves it, and compare."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from helpers import cli_here, make_label_rows, write_jsonl
from tunesmith.registry import aliases
from tunesmith.serve.app import Settings
from tunesmith.serve.feedback import FeedbackStore
from tunesmith.ui.app import UIConfig, create_app
from tunesmith.ui.jobs import PID_NAME

LOCAL = "http://127.0.0.1"


def _client(runs_dir: Path, **settings: Any) -> TestClient:
    app = create_app(UIConfig(runs_dir, Settings(serve_dir=runs_dir / "serve", **settings)))
    return TestClient(app, base_url=LOCAL)


def _csrf(client: TestClient) -> dict[str, str]:
    return {"X-CSRF-Token": client.app.state.access.csrf_token}  # type: ignore[attr-defined]


@pytest.fixture
def runs_copy(trained_runs: tuple[Path, list[str]], tmp_path: Path) -> tuple[Path, list[str]]:
    """The session's two trained runs, copied: these tests promote, review and roll back."""
    runs, ids = trained_runs
    out = tmp_path / "runs"
    shutil.copytree(runs, out, ignore=shutil.ignore_patterns("registry.sqlite*", "serve"))
    return out, ids


@pytest.fixture
def client(runs_copy: tuple[Path, list[str]]) -> Iterator[TestClient]:
    with _client(runs_copy[0]) as c:
        yield c


def test_a_key_is_needed_for_every_page_when_one_is_set(runs_copy: tuple[Path, list[str]]) -> None:
    runs, ids = runs_copy
    with _client(runs, api_keys=["s3cret"]) as c:
        for path in ("/", f"/runs/{ids[0]}", "/start", "/playground", "/compare", f"/runs/{ids[0]}/report"):
            res = c.get(path)
            assert res.status_code == 401, path
            # The login form, and nothing of the registry (the path asked for is only echoed back to it).
            assert (
                "id=login" in res.text
                and "<table" not in res.text
                and "toy" not in res.text.replace(path, "")
            )
        assert c.get("/", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        # The login form sets an HttpOnly, SameSite=Strict cookie the browser then sends.
        assert c.post("/login", data={"key": "wrong"}, headers=_csrf(c)).status_code == 401
        res = c.post("/login", data={"key": "s3cret"}, headers=_csrf(c))
        cookie = res.headers["set-cookie"].lower()
        assert res.status_code == 204 and "httponly" in cookie and "samesite=strict" in cookie
        assert ids[0] in c.get("/").text
        # With a key, other Host names are served (as `serve --api-key` does).
        assert c.get("/", headers={"Host": "ui.example.org"}).status_code == 200


def test_without_a_key_only_loopback_names_are_answered(client: TestClient) -> None:
    assert client.get("/").status_code == 200
    # A DNS-rebinding page reaches 127.0.0.1 under its own name.
    assert client.get("/", headers={"Host": "attacker.example:7860"}).status_code == 421


def test_a_cross_site_form_post_is_refused(client: TestClient, runs_copy: tuple[Path, list[str]]) -> None:
    runs, ids = runs_copy
    form = {"alias": "production", "force": "on"}
    # What a form on another site sends: no token, its own Origin.
    res = client.post(f"/runs/{ids[0]}/promote", data=form, headers={"Origin": "https://evil.example"})
    assert res.status_code == 403
    # A token from somewhere is still refused from another origin, or from a cross-site fetch.
    for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}, {"Origin": "null"}):
        assert (
            client.post(
                f"/runs/{ids[0]}/promote", data=form, headers={**_csrf(client), **headers}
            ).status_code
            == 403
        )
    assert (
        client.post(f"/runs/{ids[0]}/promote", data=form, headers={"X-CSRF-Token": "guess"}).status_code
        == 403
    )
    assert aliases(runs) == {}  # nothing was promoted
    res = client.post(f"/runs/{ids[0]}/promote", data=form, headers={**_csrf(client), "Origin": LOCAL})
    assert res.status_code == 200 and f"production -&gt; {ids[0]}" in res.text
    assert aliases(runs) == {"production": ids[0]}


def test_promote_and_rollback_from_the_runs_page(
    client: TestClient, runs_copy: tuple[Path, list[str]]
) -> None:
    runs, ids = runs_copy
    page = client.get("/").text
    assert all(f'id="run-{i}"' in page for i in ids) and "base" in page and "95% CI" in page
    for run_id in ids:
        res = client.post(
            f"/runs/{run_id}/promote", data={"alias": "production", "force": "on"}, headers=_csrf(client)
        )
        assert "problem" not in res.text, res.text
    assert aliases(runs) == {"production": ids[1]}
    assert 'id="rollback-production"' in client.get("/").text
    res = client.post("/aliases/production/rollback", headers=_csrf(client))
    assert f"production -&gt; {ids[0]} (was {ids[1]})" in res.text
    assert aliases(runs) == {"production": ids[0]}
    # The registry's refusal is the page's message, not an error page.
    res = client.post("/aliases/production/rollback", headers=_csrf(client))
    assert res.status_code == 200 and "nothing to roll back to" in res.text


def test_over_limit_bodies_get_413(runs_copy: tuple[Path, list[str]]) -> None:
    runs, ids = runs_copy
    with _client(runs, max_body_bytes=100) as c:
        res = c.post(f"/runs/{ids[0]}/promote", data={"alias": "x" * 200}, headers=_csrf(c))
        assert res.status_code == 413


def test_a_bad_config_shows_the_cli_messages_and_starts_nothing(tmp_path: Path, tiny_model_dir: Path) -> None:
    runs = tmp_path / "runs"
    data = write_jsonl(tmp_path / "tickets.jsonl", make_label_rows(40))
    with _client(runs) as c:
        res = c.post(
            f"/start/upload?name=tickets.jsonl&model={tiny_model_dir}",
            content=data.read_bytes(),
            headers=_csrf(c),
        )
        assert res.status_code == 200, res.text
        url = res.json()["url"]
        page = c.get(url).text
        assert 'id="config-ok"' in page
        draft = runs / "ui" / "drafts" / url.rsplit("/", 1)[1]
        cfg = yaml.safe_load((draft / "tunesmith.yaml").read_text())
        assert cfg["model"] == str(tiny_model_dir) and cfg["runs_dir"] == str(runs.resolve())
        cfg["train"]["lr"] = -1
        cfg["train"]["bogus_key"] = 3
        bad = yaml.safe_dump(cfg)
        check = c.post(f"{url}/check", data={"config": bad}, headers=_csrf(c)).text
        (tmp_path / "bad.yaml").write_text(bad)
        cli = cli_here("run", str(tmp_path / "bad.yaml"))
        assert cli.returncode == 2
        cli_lines = [line.strip()[2:] for line in cli.stderr.splitlines() if line.strip().startswith("- ")]
        assert len(cli_lines) == 2 and any("train.lr" in line for line in cli_lines)
        for line in cli_lines:
            assert line.replace("'", "&#39;").replace('"', "&#34;") in check, (line, check)
        started = c.post(f"{url}/run", data={"config": bad}, headers=_csrf(c)).text
        assert 'id="config-problems"' in started
        assert not (draft / PID_NAME).exists() and not (draft / "run.log").exists()
        assert [p.name for p in runs.iterdir()] == ["ui"]  # no run directory, no registry entry
        # An upload that is not data: the init's message, no traceback.
        res = c.post("/start/upload?name=x.jsonl", content=b"\x00\x01 not data", headers=_csrf(c))
        assert res.status_code == 400 and "Traceback" not in res.text


def test_curves_report_and_files_of_a_run(client: TestClient, runs_copy: tuple[Path, list[str]]) -> None:
    _, ids = runs_copy
    page = client.get(f"/runs/{ids[0]}").text
    assert 'id="curves"' in page and 'id="open-report"' in page and 'id="preflight"' in page
    points = client.get(f"/runs/{ids[0]}/metrics.json").json()
    assert (
        points["done"]
        and len(points["points"]) == 4
        and {"loss", "lr", "tokens_per_s"} <= set(points["points"][0])
    )
    later = client.get(f"/runs/{ids[0]}/metrics.json?after=2").json()["points"]
    assert [p["step"] for p in later] == [3, 4]
    assert "id=verdict" in client.get(f"/runs/{ids[0]}/report").text
    assert client.get("/runs/no-such-run").status_code == 404


def test_playground_streams_base_and_tuned_through_the_engine(
    client: TestClient, runs_copy: tuple[Path, list[str]]
) -> None:
    _, ids = runs_copy
    answers = {}
    for model in ("base", *ids):
        body = {"runs": ids, "model": model, "prompt": "my refund is broken", "max_tokens": 8}
        with client.stream("POST", "/playground/generate", json=body, headers=_csrf(client)) as res:
            assert res.status_code == 200
            answers[model] = "".join(res.iter_text())
    assert all(answers.values()) and len(set(answers.values())) >= 2, (
        answers
    )  # the adapters change the answer
    bad = client.post(
        "/playground/generate",
        json={"runs": ids, "model": "base", "prompt": "x", "max_tokens": 10**6},
        headers=_csrf(client),
    )
    assert bad.status_code == 400 and "max tokens" in bad.text


def test_review_in_the_browser_saves_as_review_import(
    client: TestClient, runs_copy: tuple[Path, list[str]]
) -> None:
    runs, ids = runs_copy
    run = runs / ids[0]
    page = client.get(f"/runs/{ids[0]}/review").text
    row_ids = re.findall(r'<article class="review-row" id="row-([^"]+)"', page)
    assert len(row_ids) >= 2
    bad = client.post(
        f"/runs/{ids[0]}/review",
        data={f"score_A-{row_ids[0]}": "9", f"score_B-{row_ids[0]}": "2"},
        headers=_csrf(client),
    )
    assert 'id="review-problems"' in bad.text and "is not a score from 1 to 5" in bad.text
    assert f"row #{row_ids[0]} (sheet line 2), column score_A" in bad.text  # the page's row, not a CSV line
    form = {f"score_A-{r}": "4" for r in row_ids} | {f"score_B-{r}": "2" for r in row_ids}
    form |= {
        f"correction-{row_ids[0]}": "billing",
        f"comment-{row_ids[0]}": "wrong queue",
        "to_feedback": "on",
    }
    res = client.post(f"/runs/{ids[0]}/review", data=form, headers=_csrf(client))
    assert 'id="review-saved"' in res.text and "1 correction(s) stored" in res.text
    ev = json.loads((run / "eval" / "eval.json").read_text())
    assert ev["review"]["n"] == len(row_ids)
    # The same sheet through the CLI gives the same summary.
    cli = cli_here("review", "import", str(run), str(run / "review" / "sheet-ui.csv"))
    assert (
        cli.returncode == 0 and json.loads((run / "eval" / "eval.json").read_text())["review"] == ev["review"]
    )
    rows = FeedbackStore(runs / "serve").rows()
    assert len(rows) == 1 and rows[0]["correction"] == "billing" and rows[0]["run_id"] == ids[0]


def test_compare_page(client: TestClient, runs_copy: tuple[Path, list[str]]) -> None:
    _, ids = runs_copy
    page = client.get(f"/compare?run={ids[0]}&run={ids[1]}").text
    assert 'id="iterations"' in page and 'id="comparison"' in page
    doc = client.get(f"/compare/page?run={ids[0]}&run={ids[1]}").text
    assert "id=comparison" in doc and doc.count("<code>toy-") >= 2


def test_the_ui_refuses_a_network_address_without_a_key(tmp_path: Path) -> None:
    res = cli_here("ui", "--runs-dir", str(tmp_path / "runs"), "--host", "0.0.0.0")
    assert res.returncode == 1 and "without an API key" in res.stderr.replace("\n", " ")


def test_damaged_files_are_named_on_the_page_not_as_a_traceback(
    client: TestClient, runs_copy: tuple[Path, list[str]]
) -> None:
    runs, ids = runs_copy
    (runs / ids[0] / "eval" / "eval.json").write_text("{not json")
    page = client.get("/")
    assert page.status_code == 200 and "eval.json cannot be read (JSONDecodeError" in page.text
    assert f'id="run-{ids[1]}"' in page.text  # the other runs are still listed
    metrics = runs / ids[1] / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join([lines[0], "garbage", *lines[1:]]) + "\n")
    res = client.get(f"/runs/{ids[1]}/metrics.json")
    assert res.status_code == 500 and "metrics.jsonl:2: not a JSON record" in res.json()["error"]
    assert "Traceback" not in page.text + res.text
