"""The SQLite registry: indexing manifests, promote/rollback history, rebuild from manifests alone."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from tunesmith import registry
from tunesmith.registry import RegistryError


def _fake_run(
    runs: Path,
    run_id: str,
    tuned: float,
    targets_met: bool = True,
    created: str = "2026-01-01T00:00:00+00:00",
) -> Path:
    d = runs / run_id
    d.mkdir(parents=True)
    manifest = {
        "id": run_id,
        "name": "toy",
        "created": created,
        "model": "builtin:smollm2-135m-instruct",
        "base_revision": "fp-abc",
        "method": "lora",
        "data_hash": "d" * 64,
        "code_version": "0.1.0",
        "parent_run": None,
        "config": {"train": {"lr": tuned}, "method": {"name": "lora"}},
        "stages": {"data": {"status": "done"}, "train": {"status": "done"}, "eval": {"status": "done"}},
        "metrics": {"accuracy": {"base": 0.1, "tuned": tuned, "delta": tuned - 0.1}},
        "primary_metric": "accuracy",
        "targets_met": targets_met,
    }
    registry.write_manifest(d, manifest)
    return d


def test_index_promote_rollback_and_rebuild(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for i, v in enumerate((0.5, 0.7, 0.9)):
        _fake_run(runs, f"toy-{i}", v, created=f"2026-01-0{i + 1}T00:00:00+00:00")
    rows = registry.list_runs(runs)
    assert [r.id for r in rows] == ["toy-0", "toy-1", "toy-2"]
    assert rows[2].stage == "eval" and rows[2].primary_value == pytest.approx(0.9)

    with pytest.raises(RegistryError, match="points at no run"):
        registry.resolve_alias(runs, "production")
    for rid in ("toy-0", "toy-1", "toy-2"):
        registry.promote(runs, rid)
    assert registry.resolve_alias(runs, "production") == "toy-2"
    assert registry.rollback(runs) == ("toy-2", "toy-1")
    assert registry.resolve_alias(runs, "production") == "toy-1"
    registry.promote(runs, "toy-0", alias="staging")
    assert registry.aliases(runs) == {"production": "toy-1", "staging": "toy-0"}
    # History is kept: every promote and the rollback, in order, in the index and in the manifests.
    history = [(e["action"], e["run_id"]) for e in registry.alias_history(runs, "production")]
    assert history == [
        ("promote", "toy-0"),
        ("promote", "toy-1"),
        ("promote", "toy-2"),
        ("rollback", "toy-2"),
    ]
    assert [p["action"] for p in registry.read_manifest(runs / "toy-2")["promotions"]] == [
        "promote",
        "rollback",
    ]

    # The SQLite file is only an index: delete it, rebuild from manifests, same state.
    registry.db_path(runs).unlink()
    assert registry.aliases(runs) == {"production": "toy-1", "staging": "toy-0"}
    registry.rebuild(runs)
    assert registry.resolve_alias(runs, "production") == "toy-1"
    assert registry.rollback(runs) == ("toy-1", "toy-0")
    with pytest.raises(RegistryError, match="only one promoted run"):
        registry.rollback(runs)


def test_show_compare_and_refusals(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    _fake_run(runs, "toy-a", 0.5)
    _fake_run(runs, "toy-b", 0.8, targets_met=False)
    diff = registry.compare_runs(registry.get_run(runs, "toy-a"), registry.get_run(runs, "toy-b"))
    assert diff["config"] == {"train.lr": (0.5, 0.8)}
    assert diff["metrics"]["accuracy"] == (0.5, 0.8)
    with pytest.raises(RegistryError, match="missed its targets"):
        registry.promote(runs, "toy-b")
    registry.promote(runs, "toy-b", force=True)
    with pytest.raises(RegistryError, match="did you mean toy-a"):
        registry.get_run(runs, "toy-")
    # A manifest edited or added by hand is picked up on the next read.
    manifest = registry.read_manifest(runs / "toy-a")
    manifest["code_version"] = "edited"
    (runs / "toy-a" / "manifest.json").write_text(json.dumps(manifest))
    assert registry.get_run(runs, "toy-a").manifest["code_version"] == "edited"


def test_failed_write_leaves_no_half_event(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs = tmp_path / "runs"
    _fake_run(runs, "toy-a", 0.5)

    def boom(*_: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(registry, "atomic_write_json", boom)
    with pytest.raises(OSError, match="disk full"):
        registry.promote(runs, "toy-a")
    with sqlite3.connect(registry.db_path(runs)) as db:
        assert db.execute("SELECT COUNT(*) FROM alias_events").fetchone()[0] == 0
    assert "promotions" not in registry.read_manifest(runs / "toy-a")
