"""Atomic file writes: a reader never sees a half-written file (temp file in the same folder + rename);
and how many CPUs this process may use."""

from __future__ import annotations

import ctypes
import errno
import glob
import json
import os
import re
import shutil
import socket
import sqlite3
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()
_DIR_MODE = 0o777 & ~_umask()


def _temp_prefix(path: Path) -> str:
    """The name start of `path`'s temp copies: it names the writer (host and process), so a later writer
    can tell a leftover of a killed process from a copy still being written (`remove_stale_temps`)."""
    return f".{path.name}.{socket.gethostname()}-{os.getpid()}-"


def remove_stale_temps(path: Path) -> list[Path]:
    """Delete the temp copies of `path` that a process on this host left when it was killed mid-write (a
    SIGKILL, the OOM killer, a power cut: no `finally` ran). A temp of a live process, or of another host
    (a shared folder), is kept. Returns what was removed."""
    pattern = re.compile(re.escape(f".{path.name}.{socket.gethostname()}-") + r"(\d+)-.*\.tmp")
    removed = []
    for p in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        m = pattern.fullmatch(p.name)
        if m is None or _pid_alive(int(m.group(1))):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.chmod(tmp, _FILE_MODE)  # mkstemp makes 0600; a plain open() would honour the umask
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def fsync_dir(path: str | Path) -> None:
    """Make a folder's entries (a rename, a new file) survive a power loss, not only the files' bytes."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(folder)


_RENAME_EXCHANGE = 2  # linux/fs.h


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where the OS or the file
    system cannot, so the caller falls back to two renames."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:  # glibc < 2.28, musl
        return False
    at_fdcwd = -100
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, f"renameat2({a}, {b}, RENAME_EXCHANGE): {os.strerror(err)}")


def _restore_interrupted(path: Path) -> None:
    """A process that died between the fallback's two renames left `path` missing and its old copy under
    `.NAME.old`: put the old copy back before anything else reads or replaces it."""
    old = path.with_name(f".{path.name}.old")
    if old.exists() and not path.exists():
        os.replace(old, path)
    elif old.exists():
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temp folder beside `path`; on success it replaces `path`, durably and atomically.

    Every file and the folder are fsynced before the swap, so after a crash `path` holds either the whole
    old copy or the whole new one, never a part. An existing `path` is swapped with the new folder in one
    step (renameat2 RENAME_EXCHANGE) and deleted only after the new copy is in place; where the OS cannot
    swap, two renames are used and an interrupted pair is undone by the next call (`_restore_interrupted`).
    The temp copy a killed writer left is deleted by the next call too (`remove_stale_temps`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _restore_interrupted(path)
    remove_stale_temps(path)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent))
    try:
        os.chmod(tmp, _DIR_MODE)  # mkdtemp makes 0700; the final folder should look like any other
        yield tmp
        _fsync_tree(tmp)
        if not path.exists():
            os.replace(tmp, path)
        elif _exchange(tmp, path):
            shutil.rmtree(tmp)  # now the old copy
        else:
            old = path.with_name(f".{path.name}.old")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def sqlite_write(path: str | Path, setup: str | None = None) -> Iterator[sqlite3.Connection]:
    """One SQLite write transaction: `setup` (a schema script, which commits by itself) first, then BEGIN
    IMMEDIATE (writers queue on the file lock instead of failing halfway); committed on success, rolled
    back on any exception."""
    db = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        db.row_factory = sqlite3.Row
        if setup:
            db.executescript(setup)
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
    finally:
        db.close()


def usable_cpus() -> int:
    """CPUs this process may run on: honours taskset and cgroup pinning, which os.cpu_count() ignores."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_threads() -> int:
    """torch's CPU threads when `train.threads` is unset: OMP_NUM_THREADS when set (a job scheduler's, or a
    user's, share of the machine; torch itself reads it), else every usable CPU."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(env) if env.isdigit() and int(env) > 0 else usable_cpus()
