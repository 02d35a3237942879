"""The Start page's work: a data file (uploaded or picked on this machine) -> the `tunesmith init` config ->
checked as the user edits it -> the plan -> `tunesmith run` as a subprocess.

Everything lives in RUNS_DIR/ui/drafts/<draft-id>/ (the data file, tunesmith.yaml, run.log), so a run
started here is an ordinary run: the config is a file the CLI can run again, and the run directory is the
one `tunesmith run` writes, in the same registry. The subprocess gets its own session, so it keeps training
when the UI stops.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console

from tunesmith.config import ConfigError, load_config
from tunesmith.data.issues import DataError
from tunesmith.io import atomic_write_text
from tunesmith.models import ModelError

CONFIG_NAME = "tunesmith.yaml"
LOG_NAME = "run.log"
PID_NAME = "run.pid"
DEFAULT_MODEL = "builtin:smollm2-135m-instruct"
# The line `tunesmith run` prints once the run directory exists (runner._start_run).
_RUN_DIR_LINE = re.compile(r"run directory: (\S+)")
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


class StartError(Exception):
    """A data file or config the Start page cannot use, with the reason (shown on the page)."""


@dataclass(frozen=True)
class Draft:
    id: str
    folder: Path

    @property
    def config(self) -> Path:
        return self.folder / CONFIG_NAME

    @property
    def log(self) -> Path:
        return self.folder / LOG_NAME


@dataclass(frozen=True)
class ConfigCheck:
    ok: bool
    problems: list[str]  # the CLI's lines (`train.lr: must be > 0 ...`), one per problem


@dataclass(frozen=True)
class JobState:
    started: bool
    running: bool
    run_id: str | None  # once `tunesmith run` has made the run directory
    log_tail: str
    exit_code: int | None = None  # known for a run this UI process started, once it has ended


def drafts_dir(runs_dir: Path) -> Path:
    return runs_dir / "ui" / "drafts"


def _new_draft(runs_dir: Path) -> Draft:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S-%f")
    folder = drafts_dir(runs_dir) / stamp
    folder.mkdir(parents=True)
    return Draft(stamp, folder)


def get_draft(runs_dir: Path, draft_id: str) -> Draft:
    if not re.fullmatch(r"[0-9-]+", draft_id) or not (drafts_dir(runs_dir) / draft_id).is_dir():
        raise StartError(f"no draft {draft_id!r}")
    return Draft(draft_id, drafts_dir(runs_dir) / draft_id)


def safe_file_name(name: str) -> str:
    """The uploaded file's name without any folder part or unusual characters (it becomes a path)."""
    base = _SAFE_NAME.sub("-", Path(name.replace("\\", "/")).name).strip("-.")
    if not base:
        raise StartError("the uploaded file has no usable name")
    return base


def draft_from_upload(runs_dir: Path, name: str, content: bytes) -> tuple[Draft, Path]:
    if not content:
        raise StartError("the uploaded file is empty")
    draft = _new_draft(runs_dir)
    path = draft.folder / safe_file_name(name)
    path.write_bytes(content)
    return draft, path


def draft_from_path(runs_dir: Path, path_text: str) -> tuple[Draft, Path]:
    path = Path(path_text.strip()).expanduser()
    if not path.exists():
        raise StartError(f"{path} does not exist on this machine")
    return _new_draft(runs_dir), path.resolve()


def _context_length(model_path: str) -> int:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path)
    return int(getattr(config, "max_position_embeddings", 2048) or 2048)


def write_initial_config(draft: Draft, data: Path, model: str, runs_dir: Path) -> str:
    """`tunesmith init` on the data file, its runs_dir pointed at this UI's registry; returns the text."""
    from tunesmith.data.init import InitError, write_config
    from tunesmith.models import load_tokenizer, resolve_model

    try:
        model_path = resolve_model(model)
        write_config(
            [str(data)], draft.config, model, load_tokenizer(model_path), _context_length(model_path)
        )
    except (InitError, DataError, ModelError) as e:
        raise StartError(str(e)) from e
    text = draft.config.read_text(encoding="utf-8")
    # An absolute runs_dir: the run lands in the registry this UI shows, also when the CLI runs the file.
    text = re.sub(r"(?m)^runs_dir: .*$", f"runs_dir: {runs_dir.resolve()}", text, count=1)
    atomic_write_text(draft.config, text)
    return text


def check_config(draft: Draft, text: str) -> ConfigCheck:
    """Validate the editor's text exactly as `tunesmith run` loads a file (same loader, same messages). It
    is checked in a file next to the config, so relative data paths resolve as they will when it runs."""
    # Its own name per check: the editor's check and the Plan or Run button may post at the same moment.
    probe = draft.folder / f".check-{uuid.uuid4().hex}.yaml"
    atomic_write_text(probe, text)
    try:
        load_config(probe)
    except ConfigError as e:
        return ConfigCheck(False, [str(i) for i in e.issues])
    finally:
        probe.unlink(missing_ok=True)
    return ConfigCheck(True, [])


def save_config(draft: Draft, text: str) -> ConfigCheck:
    """Check the text; write it as the draft's config only when it is valid."""
    result = check_config(draft, text)
    if result.ok:
        atomic_write_text(draft.config, text)
    return result


def plan_text(draft: Draft) -> str:
    """What `tunesmith init` prints after the config: the pre-flight summary, the recipe and the plan
    (memory, time) on this machine, as plain text. StartError for data the checks refuse."""
    from tunesmith.runner import check_data, plan_on_this_machine, resolve_recipe

    out = Console(file=io.StringIO(), width=110, record=True, color_system=None)
    try:
        cfg = load_config(draft.config)
        model_path, _, prepared = check_data(cfg, out)
        plan_on_this_machine(resolve_recipe(cfg, model_path, prepared, out), model_path, prepared, out)
    except ConfigError as e:
        raise StartError("\n".join(str(i) for i in e.issues)) from e
    except (DataError, ModelError) as e:
        raise StartError(str(e)) from e
    return out.export_text()


# The runs this UI process started: polled so they are reaped (no zombies) and their exit is known.
_children: dict[int, subprocess.Popen[bytes]] = {}


def start_run(draft: Draft) -> int:
    """`tunesmith run CONFIG` in its own session, output to the draft's run.log; returns its pid."""
    try:
        # The claim: O_EXCL makes a second click (or a second tab) fail here instead of starting twice.
        claim = os.open(draft.folder / PID_NAME, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        raise StartError(
            "this draft has started its run already; start a new one from the Start page"
        ) from None
    os.close(claim)
    try:
        proc = _spawn(draft)
    except OSError:
        (draft.folder / PID_NAME).unlink()  # nothing started: the draft may try again
        raise
    _children[proc.pid] = proc
    atomic_write_text(draft.folder / PID_NAME, str(proc.pid))
    return proc.pid


def _spawn(draft: Draft) -> subprocess.Popen[bytes]:
    with draft.log.open("w", encoding="utf-8") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "tunesmith.cli", "run", str(draft.config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=draft.folder,
            start_new_session=True,
            # Wide: the `run directory: PATH` line must not wrap (it names the run to this page).
            env={**os.environ, "COLUMNS": "1000"},
        )


def _alive(pid: int) -> bool:
    if pid in _children:
        return _children[pid].poll() is None
    try:
        os.kill(pid, 0)  # a run started by an earlier UI process: does it still exist?
    except OSError:
        return False
    return True


def job_state(draft: Draft, tail_lines: int = 25) -> JobState:
    pid_file = draft.folder / PID_NAME
    pid_text = pid_file.read_text().strip() if pid_file.is_file() else ""
    if not pid_text.isdigit():  # not started, or claimed a moment ago and not yet running
        return JobState(pid_file.is_file(), pid_file.is_file(), None, "")
    pid = int(pid_text)
    running = _alive(pid)
    log = draft.log.read_text(encoding="utf-8", errors="replace") if draft.log.is_file() else ""
    found = _RUN_DIR_LINE.search(log)
    return JobState(
        started=True,
        running=running,
        run_id=Path(found.group(1)).name if found else None,
        log_tail="\n".join(log.splitlines()[-tail_lines:]),
        exit_code=_children[pid].returncode if pid in _children and not running else None,
    )
