"""Run directories and their manifest.json: what ran, on what, with which result, stage by stage; and an
SQLite index of every manifest under a runs folder (`registry.sqlite`) with promotions per alias.

The manifests are the source of truth: the index is rebuilt from them at any time (`tunesmith runs
reindex`, or automatically when the file is missing), promotion events included, since each promote and
rollback is also written into the manifest of the run it concerns.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from tunesmith import __version__
from tunesmith.config import RunConfig
from tunesmith.eval.result import has_eval, read_eval
from tunesmith.io import atomic_write_json, atomic_write_text, sqlite_write


def new_run_dir(cfg: RunConfig) -> Path:
    """A new, empty run folder named after the config and the time. Two runs started in the same second
    (tune workers, a script) each get their own: mkdir is the atomic claim, a taken name gets a suffix."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    root = Path(cfg.runs_dir)
    root.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        path = root / (f"{cfg.name}-{stamp}" if n == 1 else f"{cfg.name}-{stamp}-{n}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise RuntimeError(f"{root}: 10,000 runs named {cfg.name!r} started in one second")


def files_hash(paths: Sequence[str]) -> str:
    """Content hash of every data file (folders: each supported file in them), in a stable order."""
    from tunesmith.data.readers import iter_files

    h = hashlib.sha256()
    for root in sorted(paths):
        for path in iter_files(Path(root)):
            h.update(path.name.encode())
            with path.open("rb") as f:
                while block := f.read(1 << 20):
                    h.update(block)
    return h.hexdigest()


def code_version() -> str:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
        return f"{__version__}+g{sha}"
    except (OSError, subprocess.CalledProcessError):
        return __version__


def model_revision(model_path: str) -> str:
    """Which weights a run started from. A hub snapshot folder names its commit; any other local folder
    gets a fingerprint: sha256 of config.json and, per weight file, its size and first and last MiB
    (hashing whole multi-GB files on every run is not worth it). A hub id not on disk: `unresolved`."""
    path = Path(model_path)
    if not path.is_dir():
        return "unresolved"
    if path.parent.name == "snapshots":
        return path.name
    h = hashlib.sha256()
    h.update((path / "config.json").read_bytes() if (path / "config.json").is_file() else b"")
    for f in sorted([*path.glob("*.safetensors"), *path.glob("*.bin"), *path.glob("*.gguf")]):
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with f.open("rb") as fh:
            h.update(fh.read(1 << 20))
            if size > 1 << 20:
                fh.seek(max(size - (1 << 20), 1 << 20))
                h.update(fh.read())
    return "fp-" + h.hexdigest()[:16]


def feedback_sets(paths: Sequence[str]) -> list[dict[str, Any]]:
    """The feedback sets (`tunesmith feedback export`) among a run's data files: each export folder holds a
    feedback_set.json that names it, the runs it was collected from and its counts."""
    found: dict[str, dict[str, Any]] = {}
    for p in paths:
        path = Path(p)
        meta = (path if path.is_dir() else path.parent) / "feedback_set.json"
        if meta.is_file():
            info = json.loads(meta.read_text(encoding="utf-8"))
            found[info["id"]] = {**info, "path": str(meta.parent)}
    return list(found.values())


def init_manifest(run_dir: Path, cfg: RunConfig, model_path: str) -> dict[str, Any]:
    dumped = cfg.model_dump(mode="json")
    atomic_write_text(run_dir / "resolved.yaml", yaml.safe_dump(dumped, sort_keys=False, allow_unicode=True))
    d = cfg.data
    manifest: dict[str, Any] = {
        "id": run_dir.name,
        "name": cfg.name,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": cfg.model,
        "model_path": model_path,
        "base_revision": model_revision(model_path),
        "method": cfg.method.name,
        "data_hash": files_hash([*d.train, *d.val, *d.test]),
        "code_version": code_version(),
        "samples_in_report": cfg.eval.samples_in_report,
        # Continual fine-tuning (`model: run:ID`) starts from a registered run: its lineage.
        "parent_run": cfg.model.removeprefix("run:") if cfg.model.startswith("run:") else None,
        "feedback_sets": feedback_sets([*d.train, *d.val, *d.test]),
        "config": dumped,
        "stages": {},
    }
    write_manifest(run_dir, manifest)
    return manifest


def read_manifest(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no manifest.json)")
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def write_manifest(run_dir: Path, manifest: dict[str, Any]) -> None:
    """Write a whole new manifest (atomically), then index it in the runs folder's registry."""
    with connect(run_dir.parent) as db:
        atomic_write_json(run_dir / "manifest.json", manifest)
        _index(db, run_dir, manifest)


def edit_manifest(run_dir: Path, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Read, change and write the manifest inside the registry's write lock, so two processes editing one
    run (an `eval` finishing while `runs promote` records a promotion) cannot lose each other's change."""
    with connect(run_dir.parent) as db:
        manifest = read_manifest(run_dir)
        change(manifest)
        atomic_write_json(run_dir / "manifest.json", manifest)
        _index(db, run_dir, manifest)
    return manifest


def update_manifest(run_dir: Path, **fields: Any) -> dict[str, Any]:
    """Set top-level manifest fields (e.g. `tune`, a trial's tag) and index the run again."""
    return edit_manifest(run_dir, lambda manifest: manifest.update(fields))


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def hash_tree(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder`, by path relative to it."""
    return {str(p.relative_to(folder)): file_sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def mark_stage(
    run_dir: Path, stage: str, status: str, merge: dict[str, dict[str, Any]] | None = None, **extra: Any
) -> dict[str, Any]:
    """Record a stage's status. `extra`: top-level fields, set as given; `merge`: dict fields (artifacts,
    exports) updated key by key inside the registry lock, so entries other writers made are kept."""
    fields: dict[str, Any] = dict(extra)
    merged = {key: dict(values) for key, values in (merge or {}).items()}
    if stage == "train" and status == "done":
        # What training wrote, hashed now (outside the lock: it reads every weight file): an export later
        # proves it starts from these exact bytes.
        artifacts = merged.setdefault("artifacts", {})
        for name in ("adapter", "model"):
            if (run_dir / name).is_dir():
                artifacts[name] = {"path": name, "sha256": hash_tree(run_dir / name)}
    if stage == "eval" and status == "done" and has_eval(run_dir / "eval"):
        ev = read_eval(run_dir / "eval")
        fields["metrics"] = {
            r["metric"]: {k: r[k] for k in ("base", "tuned", "delta", "status") if k in r} for r in ev.metrics
        }
        fields["primary_metric"] = ev.primary_metric
        fields["targets_met"] = ev.targets_met

    def change(manifest: dict[str, Any]) -> None:
        manifest["stages"][stage] = {"status": status, "at": datetime.now(UTC).isoformat(timespec="seconds")}
        manifest.update(fields)
        for key, values in merged.items():
            manifest.setdefault(key, {}).update(values)

    return edit_manifest(run_dir, change)


# --------------------------------------------------------------------------------------------------
# The SQLite index

DB_NAME = "registry.sqlite"
STAGE_ORDER = ("data", "train", "eval", "export")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    name TEXT, created TEXT, stage TEXT, method TEXT,
    base_model TEXT, base_revision TEXT, data_hash TEXT, code_version TEXT,
    parent_run TEXT, primary_metric TEXT, primary_value REAL, targets_met INTEGER,
    path TEXT NOT NULL, manifest_mtime_ns INTEGER NOT NULL, manifest TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS alias_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    alias TEXT NOT NULL, action TEXT NOT NULL, run_id TEXT NOT NULL, at TEXT NOT NULL
);
"""


class RegistryError(Exception):
    """A registry request that cannot be done (unknown run, nothing to roll back to), with the reason."""


def db_path(runs_dir: str | Path) -> Path:
    return Path(runs_dir) / DB_NAME


@contextmanager
def connect(runs_dir: str | Path) -> Iterator[sqlite3.Connection]:
    """One write transaction (BEGIN IMMEDIATE: writers queue on the file lock instead of failing halfway);
    committed on success, rolled back on any exception."""
    Path(runs_dir).mkdir(parents=True, exist_ok=True)
    fresh = not db_path(runs_dir).is_file()
    with sqlite_write(db_path(runs_dir), setup=_SCHEMA) as db:
        if fresh:
            # A registry file that did not exist: index whatever run directories are already there.
            _fill(db, Path(runs_dir))
        yield db


def _stage(manifest: dict[str, Any]) -> str:
    stages = manifest.get("stages", {})
    if stages.get("train", {}).get("status") == "pruned":  # a tune trial stopped at a val evaluation
        return "pruned"
    done = [s for s in STAGE_ORDER if stages.get(s, {}).get("status") == "done"]
    return done[-1] if done else "created"


def _index(db: sqlite3.Connection, run_dir: Path, manifest: dict[str, Any]) -> None:
    primary = manifest.get("primary_metric")
    value = (manifest.get("metrics") or {}).get(primary, {}).get("tuned") if primary else None
    targets = manifest.get("targets_met")
    mtime = (run_dir / "manifest.json").stat().st_mtime_ns
    db.execute(
        "INSERT OR REPLACE INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (
            manifest["id"],
            manifest.get("name") or manifest["id"],
            manifest.get("created"),
            _stage(manifest),
            manifest.get("method"),
            manifest.get("model"),
            manifest.get("base_revision"),
            manifest.get("data_hash"),
            manifest.get("code_version"),
            manifest.get("parent_run"),
            primary,
            value,
            None if targets is None else int(bool(targets)),
            str(run_dir.resolve()),
            mtime,
            json.dumps(manifest, ensure_ascii=False),
        ),
    )


def _fill(db: sqlite3.Connection, runs_dir: Path) -> None:
    """Index every manifest under runs_dir and replay their promotion events in time order."""
    events: list[tuple[str, str, str, str]] = []
    for manifest_path in sorted(runs_dir.glob("*/manifest.json")):
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        _index(db, manifest_path.parent, manifest)
        events += [(e["at"], e["alias"], e["action"], manifest["id"]) for e in manifest.get("promotions", [])]
    db.execute("DELETE FROM alias_events")
    for at, alias, action, run_id in sorted(events):
        db.execute(
            "INSERT INTO alias_events (alias, action, run_id, at) VALUES (?,?,?,?)",
            (alias, action, run_id, at),
        )


def rebuild(runs_dir: str | Path) -> Path:
    """Rebuild registry.sqlite from the manifests alone, into a temp file renamed over the old one."""
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{DB_NAME}.", suffix=".tmp", dir=runs_dir)
    os.close(fd)
    try:
        db = sqlite3.connect(tmp, isolation_level=None)
        try:
            db.executescript(_SCHEMA)
            db.execute("BEGIN")
            _fill(db, runs_dir)
            db.execute("COMMIT")
        finally:
            db.close()
        os.replace(tmp, db_path(runs_dir))
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return db_path(runs_dir)


def sync(runs_dir: str | Path) -> None:
    """Index manifests written since their last indexing (or by hand), drop runs whose folder is gone."""
    runs_dir = Path(runs_dir)
    with connect(runs_dir) as db:
        known = {
            r["id"]: (r["path"], r["manifest_mtime_ns"])
            for r in db.execute("SELECT id, path, manifest_mtime_ns FROM runs")
        }
        on_disk = set()
        for manifest_path in runs_dir.glob("*/manifest.json"):
            rid = manifest_path.parent.name
            on_disk.add(rid)
            if known.get(rid, ("", -1))[1] != manifest_path.stat().st_mtime_ns:
                _index(db, manifest_path.parent, json.loads(manifest_path.read_text(encoding="utf-8")))
        for rid in set(known) - on_disk:
            db.execute("DELETE FROM runs WHERE id = ?", (rid,))


@dataclass(frozen=True)
class RunRow:
    id: str
    name: str
    created: str
    stage: str
    method: str
    base_model: str
    primary_metric: str | None
    primary_value: float | None
    targets_met: bool | None
    parent_run: str | None
    path: Path
    manifest: dict[str, Any]


def _row(r: sqlite3.Row) -> RunRow:
    return RunRow(
        id=r["id"],
        name=r["name"],
        created=r["created"] or "",
        stage=r["stage"],
        method=r["method"] or "",
        base_model=r["base_model"] or "",
        primary_metric=r["primary_metric"],
        primary_value=r["primary_value"],
        targets_met=None if r["targets_met"] is None else bool(r["targets_met"]),
        parent_run=r["parent_run"],
        path=Path(r["path"]),
        manifest=json.loads(r["manifest"]),
    )


def list_runs(runs_dir: str | Path) -> list[RunRow]:
    sync(runs_dir)
    with connect(runs_dir) as db:
        return [_row(r) for r in db.execute("SELECT * FROM runs ORDER BY created, id")]


def get_run(runs_dir: str | Path, run_id: str) -> RunRow:
    sync(runs_dir)
    with connect(runs_dir) as db:
        r = db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if r is None:
            close = [x["id"] for x in db.execute("SELECT id FROM runs WHERE id LIKE ?", (f"%{run_id}%",))]
            hint = f"; did you mean {', '.join(close[:3])}?" if close else "; `tunesmith runs ls` lists them"
            raise RegistryError(f"no run {run_id!r} in {Path(runs_dir)}{hint}")
        return _row(r)


def _alias_stack(db: sqlite3.Connection, alias: str) -> list[str]:
    """Replay an alias's history: promote pushes a run, rollback pops back to the previous one."""
    stack: list[str] = []
    for e in db.execute("SELECT action, run_id FROM alias_events WHERE alias = ? ORDER BY at, seq", (alias,)):
        if e["action"] == "promote":
            if not stack or stack[-1] != e["run_id"]:
                stack.append(e["run_id"])
        elif stack:
            stack.pop()
    return stack


def _next_at(db: sqlite3.Connection) -> str:
    """Event time, strictly after the last one so replaying manifests (sorted by time) keeps the order."""
    now = datetime.now(UTC)
    last = db.execute("SELECT MAX(at) FROM alias_events").fetchone()[0]
    if last is not None:
        now = max(now, datetime.fromisoformat(last) + timedelta(microseconds=1))
    return now.isoformat(timespec="microseconds")


def _record_event(db: sqlite3.Connection, run_path: Path, alias: str, action: str, run_id: str) -> None:
    at = _next_at(db)
    db.execute(
        "INSERT INTO alias_events (alias, action, run_id, at) VALUES (?,?,?,?)", (alias, action, run_id, at)
    )
    # Inside the transaction: if the manifest cannot be written, the event is rolled back too.
    manifest = read_manifest(run_path)
    manifest.setdefault("promotions", []).append({"alias": alias, "action": action, "at": at})
    atomic_write_json(run_path / "manifest.json", manifest)
    _index(db, run_path, manifest)


def promote(runs_dir: str | Path, run_id: str, alias: str = "production", force: bool = False) -> RunRow:
    """Point `alias` at a run. It must have trained weights; a run that missed a target needs `force`."""
    run = get_run(runs_dir, run_id)
    if run.manifest.get("stages", {}).get("train", {}).get("status") != "done":
        raise RegistryError(f"run {run_id} has no trained weights (stage: {run.stage}); train it first")
    if run.targets_met is False and not force:
        raise RegistryError(f"run {run_id} missed its targets; promote it anyway with --force")
    with connect(runs_dir) as db:
        _record_event(db, run.path, alias, "promote", run.id)
    return run


def rollback(runs_dir: str | Path, alias: str = "production") -> tuple[str, str]:
    """Point `alias` back at the run promoted before the current one; returns (from, to)."""
    sync(runs_dir)
    with connect(runs_dir) as db:
        stack = _alias_stack(db, alias)
        if len(stack) < 2:
            raise RegistryError(
                f"alias {alias!r} has {'no' if not stack else 'only one'} promoted run; nothing to roll back to"
            )
        current = stack[-1]
        row = db.execute("SELECT path FROM runs WHERE id = ?", (current,)).fetchone()
        if row is None:
            raise RegistryError(f"run {current} of alias {alias!r} is no longer in {runs_dir}")
        _record_event(db, Path(row["path"]), alias, "rollback", current)
        return current, stack[-2]


def resolve_alias(runs_dir: str | Path, alias: str) -> str:
    sync(runs_dir)
    with connect(runs_dir) as db:
        stack = _alias_stack(db, alias)
    if not stack:
        raise RegistryError(f"alias {alias!r} points at no run; `tunesmith runs promote RUN --alias {alias}`")
    return stack[-1]


def alias_history(runs_dir: str | Path, alias: str | None = None) -> list[dict[str, str]]:
    sync(runs_dir)
    with connect(runs_dir) as db:
        q = "SELECT alias, action, run_id, at FROM alias_events"
        rows = db.execute(
            q + (" WHERE alias = ?" if alias else "") + " ORDER BY at, seq", (alias,) if alias else ()
        )
        return [dict(r) for r in rows]


def aliases(runs_dir: str | Path) -> dict[str, str]:
    """alias -> run it points at now."""
    sync(runs_dir)
    with connect(runs_dir) as db:
        names = [r[0] for r in db.execute("SELECT DISTINCT alias FROM alias_events")]
        out = {a: s[-1] for a in names if (s := _alias_stack(db, a))}
    return out


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): d}


def compare_runs(a: RunRow, b: RunRow) -> dict[str, Any]:
    """What differs between two runs: config keys, lineage, and every metric side by side."""
    ca, cb = _flat(a.manifest.get("config", {})), _flat(b.manifest.get("config", {}))
    config = {k: (ca.get(k), cb.get(k)) for k in sorted(set(ca) | set(cb)) if ca.get(k) != cb.get(k)}
    facts = {}
    for key in ("model", "base_revision", "method", "data_hash", "code_version", "parent_run"):
        facts[key] = (a.manifest.get(key), b.manifest.get(key))
    ma, mb = a.manifest.get("metrics") or {}, b.manifest.get("metrics") or {}
    metrics = {
        m: ((ma.get(m) or {}).get("tuned"), (mb.get(m) or {}).get("tuned")) for m in sorted(set(ma) | set(mb))
    }
    return {"a": a.id, "b": b.id, "facts": facts, "config": config, "metrics": metrics}
