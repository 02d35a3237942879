"""Run directories survive faults: a torn metrics line, a crash inside atomic_dir, a promotion racing an
eval, runs started at the same moment. Each test injects the fault for real (a killed process, parallel
writers) rather than asserting on the code path."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from tunesmith import io, registry
from tunesmith.config import load_config
from tunesmith.data.pipeline import prepare
from tunesmith.metrics_log import MetricsFileError, read_metrics, truncate_metrics
from tunesmith.models import load_model, load_tokenizer
from tunesmith.train import loop

# --------------------------------------------------------------------------------------------------
# metrics.jsonl


def _records(*steps: int) -> str:
    return "".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in steps)


def test_a_torn_last_metrics_line_is_dropped_and_a_damaged_middle_line_named(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text(_records(1, 2, 3) + '{"step": 4, "lo')  # the process died mid-write
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]
    warning = truncate_metrics(path, 2)
    assert warning is not None and "torn last line" in warning and str(path) in warning
    assert path.read_text() == _records(1, 2)
    assert truncate_metrics(path, 2) is None  # nothing torn any more

    path.write_text(_records(1) + "not json\n" + _records(2))
    with pytest.raises(MetricsFileError, match=rf"{path}:2: not a JSON record"):
        truncate_metrics(path, 2)


def test_resume_after_a_torn_metrics_line_warns_and_logs_every_step(
    toy_config: Path, smollm2_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = load_config(toy_config, ["train.max_steps=4", "train.save_every=2", "train.threads=1"])
    tok = load_tokenizer(str(smollm2_dir))
    data = prepare(cfg, tok)
    run_dir = tmp_path / "run"
    real_get_lr = loop.get_lr

    def die_at_step_3(step: int, *args: Any) -> float:
        if step == 3:
            raise KeyboardInterrupt
        return real_get_lr(step, *args)

    monkeypatch.setattr(loop, "get_lr", die_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        loop.train(cfg, data, load_model(cfg.model), tok, run_dir, Console(quiet=True))
    monkeypatch.undo()
    with (run_dir / "metrics.jsonl").open("a") as f:
        f.write('{"step": 4, "loss": 0.')  # what a power loss mid-line leaves

    out = Console(record=True, width=200)
    loop.train(cfg, data, load_model(cfg.model), tok, run_dir, out, resume=True)
    assert "dropped a torn last line" in out.export_text()
    assert [r["step"] for r in read_metrics(run_dir / "metrics.jsonl")] == [1, 2, 3, 4]


# --------------------------------------------------------------------------------------------------
# atomic_dir

_WRITER = """
import os, sys
from pathlib import Path
from tunesmith import io
if sys.argv[2] == "no-exchange":
    io._exchange = lambda a, b: False
    real = os.replace
    calls = []
    def replace_then_die(a, b):
        real(a, b)
        calls.append(1)
        if len(calls) == 1:
            os._exit(9)  # killed between the fallback's two renames
    os.replace = replace_then_die
with io.atomic_dir(Path(sys.argv[1])) as tmp:
    (tmp / "weights.bin").write_bytes(b"new" * 1000)
    if sys.argv[2] == "mid-write":
        (tmp / "config.json").write_text('{"half')
        os._exit(9)  # killed before the new copy is complete
    (tmp / "config.json").write_text("{}")
"""


def _write_in_child(target: Path, mode: str) -> int:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(_WRITER), str(target), mode], check=False)
    return proc.returncode


def _old_copy(target: Path) -> None:
    with io.atomic_dir(target) as tmp:
        (tmp / "weights.bin").write_bytes(b"old")
        (tmp / "config.json").write_text('{"v": 1}')


@pytest.mark.parametrize("mode", ["mid-write", "no-exchange"])
def test_a_process_killed_inside_atomic_dir_leaves_a_whole_copy(tmp_path: Path, mode: str) -> None:
    target = tmp_path / "adapter"
    _old_copy(target)
    assert _write_in_child(target, mode) == 9
    if mode == "mid-write":  # the new copy never replaced the old one
        assert (target / "weights.bin").read_bytes() == b"old"
        assert [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # the killed writer's half copy
    else:  # killed between the two renames: the next writer puts the old copy back first
        assert not target.exists()
        with pytest.raises(RuntimeError), io.atomic_dir(target):
            raise RuntimeError("a writer that fails after the restore")
        assert (target / "weights.bin").read_bytes() == b"old"
    assert (target / "config.json").read_text() == '{"v": 1}'
    assert _write_in_child(target, "complete") == 0
    assert (target / "weights.bin").read_bytes() == b"new" * 1000
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".adapter.old")]
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # removed by the next writer


def test_a_temp_copy_still_being_written_is_kept(tmp_path: Path) -> None:
    """Only a dead writer's temp copy is removed: one of a live process, or of another host, stays."""
    import socket

    target = tmp_path / "adapter"
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f".adapter.{socket.gethostname()}-{alive.pid}-abc.tmp"
        other_host = tmp_path / ".adapter.elsewhere-1-abc.tmp"
        live.mkdir()
        other_host.mkdir()
        _old_copy(target)
        assert live.is_dir() and other_host.is_dir()
    finally:
        alive.kill()
        alive.wait()
    _old_copy(target)
    assert not live.exists() and other_host.is_dir()


def test_atomic_dir_swaps_in_one_step_where_the_os_can(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("a")
    (b / "x").write_text("b")
    if not io._exchange(a, b):
        pytest.skip("this file system has no RENAME_EXCHANGE (the two-rename fallback is tested above)")
    assert (a / "x").read_text() == "b" and (b / "x").read_text() == "a"


# --------------------------------------------------------------------------------------------------
# The registry under concurrency


_RACER = """
import sys
from pathlib import Path
from tunesmith import registry
runs, n = Path(sys.argv[2]), int(sys.argv[3])
for i in range(n):
    if sys.argv[1] == "eval":
        registry.mark_stage(runs / "toy-a", "eval", "done", eval_round=i)
    else:
        registry.promote(runs, "toy-a", alias=f"alias-{i}")
"""


def test_a_promotion_racing_an_eval_is_never_lost(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    (runs / "toy-a").mkdir(parents=True)
    manifest = {
        "id": "toy-a",
        "name": "toy",
        "created": "2026-01-01T00:00:00+00:00",
        "method": "lora",
        "stages": {"train": {"status": "done"}},
        "targets_met": True,
    }
    registry.write_manifest(runs / "toy-a", manifest)
    procs = [
        subprocess.Popen([sys.executable, "-c", textwrap.dedent(_RACER), role, str(runs), "40"])
        for role in ("eval", "promote")
    ]
    assert [p.wait(180) for p in procs] == [0, 0]
    manifest = registry.read_manifest(runs / "toy-a")
    assert len(manifest["promotions"]) == 40 and manifest["eval_round"] == 39
    registry.rebuild(runs)  # from the manifests alone, promotions included
    assert registry.aliases(runs) == {f"alias-{i}": "toy-a" for i in range(40)}


def test_runs_started_in_the_same_second_get_their_own_folders(
    toy_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = load_config(toy_config)
    frozen = datetime(2026, 12, 5, 12, 0, 0, tzinfo=UTC)

    class Frozen(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> datetime:  # type: ignore[override]
            return frozen

    monkeypatch.setattr(registry, "datetime", Frozen)
    barrier = threading.Barrier(8)
    made: list[Path] = []

    def start() -> None:
        barrier.wait()
        made.append(registry.new_run_dir(cfg))

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({p.name for p in made}) == 8
    assert all(p.is_dir() and not any(p.iterdir()) for p in made)
    assert sorted(p.name for p in made)[0] == f"{cfg.name}-20261205-120000"


def test_a_run_base_is_not_merged_by_a_read_only_command(tmp_path: Path) -> None:
    """`model: run:ID` on an adapter run without a merged export: resolving it (what `data check` and `plan`
    do) writes nothing and says how to make it; the stages that train make it (runner.resolve_base)."""
    from tunesmith.models import RunNotMerged, resolve_model

    runs = tmp_path / "runs"
    (runs / "toy-a" / "adapter").mkdir(parents=True)
    registry.write_manifest(runs / "toy-a", {"id": "toy-a", "name": "toy", "method": "lora", "stages": {}})
    before = sorted(p.relative_to(runs) for p in runs.rglob("*"))
    with pytest.raises(RunNotMerged, match="export .*toy-a --format merged"):
        resolve_model("run:toy-a", runs)
    assert sorted(p.relative_to(runs) for p in runs.rglob("*")) == before
