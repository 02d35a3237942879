"""The loop closed end to end, through the CLI: promote -> serve --alias production -> 20 rated and
corrected answers -> feedback export -> a continual run from the served version; and promote/rollback
change which run `serve --alias production` loads."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from helpers import QUEUES, ServerProcess, make_label_rows, write_jsonl
from tunesmith.data.validate import load_examples

KEY = "loop-key"


def tunesmith(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tunesmith.cli", *args], capture_output=True, text=True, timeout=900
    )


def _served_run(srv: ServerProcess) -> str:
    models = httpx.get(srv.url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}).json()["data"]
    return next(m["root"] for m in models if m["id"] == "production")


@pytest.fixture
def runs(trained_runs: tuple[Path, list[str]], tmp_path: Path) -> tuple[Path, list[str]]:
    src, ids = trained_runs
    dst = tmp_path / "runs"
    for rid in ids:
        shutil.copytree(src / rid, dst / rid)
    return dst, ids


def test_serve_feedback_export_continual_run(runs: tuple[Path, list[str]], tmp_path: Path) -> None:
    runs_dir, (run_a, run_b) = runs
    proc = tunesmith("runs", "promote", run_a, "--runs-dir", str(runs_dir))
    assert proc.returncode == 0, proc.stderr
    serve_dir = tmp_path / "serve"
    args = [
        "--alias",
        "production",
        "--runs-dir",
        str(runs_dir),
        "--api-key",
        KEY,
        "--serve-dir",
        str(serve_dir),
    ]
    rows = make_label_rows(20, seed=3)
    rows[0]["instruction"] += " reply to jane.doe@example.com"
    answered: list[str | None] = []
    with ServerProcess(args, tmp_path / "serve.log") as srv:
        assert _served_run(srv) == run_a
        with openai.OpenAI(base_url=srv.url + "/v1", api_key=KEY, max_retries=0) as c:
            for i, row in enumerate(rows):
                r = c.chat.completions.create(
                    model="production",
                    messages=[{"role": "user", "content": row["instruction"]}],
                    max_tokens=4,
                    temperature=1.0,  # sampled: the tiny model's greedy answer is blank, no DPO pair to make
                    seed=i,
                )
                # A label run answers inside its label set: only a wrong label makes a DPO pair.
                answered.append(r.choices[0].message.content)
                fb = httpx.post(
                    srv.url + "/v1/feedback",
                    headers={"Authorization": f"Bearer {KEY}"},
                    json={"id": r.id, "rating": "down" if i % 2 else 2, "correction": row["output"]},
                )
                assert fb.status_code == 200, fb.text
            bad = httpx.post(
                srv.url + "/v1/feedback",
                headers={"Authorization": f"Bearer {KEY}"},
                json={"id": "nope", "rating": "up"},
            )
            assert bad.status_code == 404
            bad = httpx.post(
                srv.url + "/v1/feedback",
                headers={"Authorization": f"Bearer {KEY}"},
                json={"id": r.id, "rating": 9},
            )
            assert bad.status_code == 400

    out = tmp_path / "feedback"
    proc = tunesmith(
        "feedback", "export", "--serve-dir", str(serve_dir), "--out", str(out), "--runs-dir", str(runs_dir)
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    wrong = sum(a != row["output"] for a, row in zip(answered, rows, strict=True))
    assert set(answered) <= set(QUEUES) and wrong > 0
    assert summary["sft"] == 20 and summary["dpo"] == wrong, summary
    meta = json.loads((out / "feedback_set.json").read_text())
    assert meta["id"] == summary["feedback_set"] and meta["runs"] == [run_a]
    # The same loader as any training data: every example parses, with no issue.
    sft, issues = load_examples([str(out / "sft.jsonl")])
    assert not issues and len(sft) == 20 and all(ex.kind == "chat" for ex in sft)
    assert {ex.reference for ex in sft} <= set(QUEUES)
    assert sft[0].messages[0] == {"role": "system", "content": "Route the ticket."}  # the run's system prompt
    dpo, issues = load_examples([str(out / "dpo.jsonl")])
    assert not issues and len(dpo) == wrong and all(ex.kind == "preference" and ex.rejected for ex in dpo)
    stored = (out / "sft.jsonl").read_text() + (out / "dpo.jsonl").read_text()
    assert "jane.doe@example.com" not in stored and "<EMAIL>" in stored
    assert "jane.doe@example.com" not in (serve_dir / "feedback.sqlite").read_bytes().decode(
        "utf-8", "replace"
    )

    # Continual fine-tuning from the served version, on the corrections.
    write_jsonl(tmp_path / "test.jsonl", make_label_rows(12, seed=9))
    cfg = {
        "name": "continual",
        "model": f"run:{run_a}",
        "runs_dir": str(runs_dir),
        "data": {
            "train": str(out / "sft.jsonl"),
            "test": str(tmp_path / "test.jsonl"),
            "split": {"val": 0.1, "test": 0.0},
        },
        "method": {"name": "lora", "r": 8, "alpha": 16},
        "train": {"lr": 5e-3, "max_steps": 2, "batch_size": 4, "max_length": 128, "eval_every": 2},
        "eval": {"metrics": ["accuracy"], "max_new_tokens": 4, "limit": 4},
    }
    (tmp_path / "continual.yaml").write_text(yaml.safe_dump(cfg))
    proc = tunesmith("run", str(tmp_path / "continual.yaml"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    (child,) = [d for d in runs_dir.iterdir() if d.name.startswith("continual-")]
    manifest = json.loads((child / "manifest.json").read_text())
    assert manifest["parent_run"] == run_a
    assert [f["id"] for f in manifest["feedback_sets"]] == [meta["id"]]
    assert manifest["model_path"] == str(runs_dir / run_a / "export" / "merged")
    assert json.loads((runs_dir / run_a / "export" / "merged" / "export.json").read_text())["passed"]
    proc = tunesmith("runs", "ls", "--json", "--runs-dir", str(runs_dir))
    listed = {r["id"]: r for r in map(json.loads, proc.stdout.splitlines())}
    assert listed[child.name]["parent_run"] == run_a and listed[run_a]["aliases"] == ["production"]


def test_promote_then_rollback_changes_what_serve_alias_loads(
    runs: tuple[Path, list[str]], tmp_path: Path
) -> None:
    runs_dir, (run_a, run_b) = runs
    args = [
        "--alias",
        "production",
        "--runs-dir",
        str(runs_dir),
        "--api-key",
        KEY,
        "--serve-dir",
        str(tmp_path / "s"),
    ]
    for rid in (run_a, run_b):
        assert tunesmith("runs", "promote", rid, "--runs-dir", str(runs_dir)).returncode == 0
    with ServerProcess(args, tmp_path / "b.log") as srv:
        assert _served_run(srv) == run_b
    proc = tunesmith("runs", "rollback", "--runs-dir", str(runs_dir))
    assert proc.returncode == 0 and f"production -> {run_a} (was {run_b})" in " ".join(proc.stderr.split())
    with ServerProcess(args, tmp_path / "a.log") as srv:
        assert _served_run(srv) == run_a
    # The registry file is an index only: rebuilt from the manifests, the alias still points at run_a.
    (runs_dir / "registry.sqlite").unlink()
    assert tunesmith("runs", "reindex", "--runs-dir", str(runs_dir)).returncode == 0
    show = tunesmith("runs", "show", run_b, "--runs-dir", str(runs_dir))
    assert [p["action"] for p in json.loads(show.stdout)["promotions"]] == ["promote", "rollback"]
    from tunesmith.registry import resolve_alias

    assert resolve_alias(runs_dir, "production") == run_a
