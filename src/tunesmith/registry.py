"""Run directories and their manifest.json: what ran, on what, with which result, stage by stage."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from tunesmith import __version__
from tunesmith.config import RunConfig
from tunesmith.io import atomic_write_json, atomic_write_text


def new_run_dir(cfg: RunConfig) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    root = Path(cfg.runs_dir)
    path = root / f"{cfg.name}-{stamp}"
    n = 1
    while path.exists():
        n += 1
        path = root / f"{cfg.name}-{stamp}-{n}"
    path.mkdir(parents=True)
    return path


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


def init_manifest(run_dir: Path, cfg: RunConfig, model_path: str) -> dict[str, Any]:
    dumped = cfg.model_dump(mode="json")
    atomic_write_text(run_dir / "resolved.yaml", yaml.safe_dump(dumped, sort_keys=False, allow_unicode=True))
    d = cfg.data
    manifest: dict[str, Any] = {
        "id": run_dir.name,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": cfg.model,
        "model_path": model_path,
        "method": cfg.method.name,
        "data_hash": files_hash([*d.train, *d.val, *d.test]),
        "code_version": code_version(),
        "samples_in_report": cfg.eval.samples_in_report,
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
    atomic_write_json(run_dir / "manifest.json", manifest)


def mark_stage(run_dir: Path, stage: str, status: str, **extra: Any) -> dict[str, Any]:
    manifest = read_manifest(run_dir)
    manifest["stages"][stage] = {"status": status, "at": datetime.now(UTC).isoformat(timespec="seconds")}
    manifest.update(extra)
    write_manifest(run_dir, manifest)
    return manifest
