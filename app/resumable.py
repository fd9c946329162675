"""Resumable directories: the one mechanism behind runs, cross-validations and searches.

A job writes into `<base>/<timestamp>-<kind>/` (or `<base>/<name>/`). Started again with the same identity after any
interruption (SIGKILL included), it continues the newest unfinished directory of that identity instead; a finished
one (its finish marker written) is never reused. While a process works in a directory, the directory holds a lock
file taken atomically (`O_EXCL`) with the owner's pid, host and start time; a lock whose process is gone is stale
and is broken under an advisory file lock, so that two processes can never both take a directory.

    with ResumableDir(base, "cv", config_text, finished_file="cv.json", stem="cv-xception") as job:
        ...  # job.path, job.resumed
        job.finish({"score": 0.9})  # the marker, written last and atomically
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from app.atomic import write_json, write_text
from app.config import ConfigError
from pipelines.errors import DataError

CONFIG_FILE = "config.yaml"  # the identity of every resumable directory is read from its config
JOB_FILE = ".job"  # what kind of job wrote the directory (run, cv, search): one kind never continues another's
LOCK_FILE = ".lock"  # {"pid", "host", "started"} of the process working in the directory
_GUARD_FILE = ".lock.guard"  # flock'ed while a lock is checked and taken: the kernel releases it when its holder dies


class DirectoryTakenError(ConfigError, DataError):
    """The directory named by output.name cannot be used by this job (a config value the user can change)."""


def fresh_dir(base: str | os.PathLike, name: str | None, stem: str) -> Path:
    """`base/name` (default: timestamp + stem), created here; an existing directory is never reused."""
    base = Path(base)
    base.mkdir(parents=True, exist_ok=True)
    stem = name or f"{time.strftime('%Y%m%d-%H%M%S')}-{stem}"
    for attempt in range(100):
        path = base / (stem if attempt == 0 else f"{stem}-{attempt}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            if name:
                raise DirectoryTakenError(f"{path}: already exists. Fix: choose another output.name, or leave it unset for a fresh timestamped one.") from None
    raise DataError(f"{base}: could not create a fresh directory for {stem!r}")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (Linux), so that a reused pid is not mistaken for the lock's owner."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _owner_alive(owner: dict[str, Any]) -> bool:
    """Whether the process that wrote a lock still runs. A lock from another host is assumed live: it cannot be checked."""
    if owner.get("host") != socket.gethostname():
        return True
    pid = owner.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return owner.get("started") is None or owner.get("started") == _process_start(pid)


def lock_owner(path: Path) -> dict[str, Any] | None:
    """The live owner of the directory's lock, or None when it is free (no lock, or a stale one)."""
    try:
        text = (path / LOCK_FILE).read_text()
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        owner = json.loads(text)
    except json.JSONDecodeError:  # cut short (a full disk): its writer never held the directory
        return None
    return owner if isinstance(owner, dict) and _owner_alive(owner) else None


def is_locked(path: Path) -> bool:
    """A live process is working in this directory."""
    return lock_owner(path) is not None


def try_lock(path: Path) -> bool:
    """Take the directory's lock for this process; False if a live process holds it. A stale lock is broken."""
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": _process_start(os.getpid())}
    with open(path / _GUARD_FILE, "a") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)  # one checker at a time; released by close, or by the kernel on death
        if is_locked(path):
            return False
        (path / LOCK_FILE).unlink(missing_ok=True)  # stale: its process is gone
        fd = os.open(path / LOCK_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "w") as lock:
            json.dump(me, lock)
    return True


def unlock(path: Path) -> None:
    """Release the lock if this process holds it (a lock another process took is left alone)."""
    owner = lock_owner(path)
    if owner is not None and owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
        (path / LOCK_FILE).unlink(missing_ok=True)


class ResumableDir:
    """A job's directory: the newest unfinished one of the same identity (with `resume`), else a fresh one; locked
    while the `with` block runs, released on every exit path.

    `job` is the kind of job ("run", "cv", "search"); `stem` ends the default name (`<timestamp>-<stem>`).
    `identity` is the job's config text, written to config.yaml of a fresh directory; `key` maps a config text to what must match (default: all of it).
    `usable(path)` says whether an unfinished directory holds anything to continue (a run: its backup folder).
    A directory named by `name` is that one or none: one that cannot be continued is refused in one line."""

    def __init__(
        self,
        base: str | os.PathLike,
        job: str,
        identity: str,
        *,
        finished_file: str,
        stem: str | None = None,
        name: str | None = None,
        resume: bool = True,
        key: Callable[[str], Any] = lambda text: text,
        usable: Callable[[Path], bool] = lambda path: True,
    ) -> None:
        self.base, self.job, self.stem, self.identity, self.finished_file = Path(base), job, stem or job, identity, finished_file
        self.name, self.resume, self.key, self.usable = name, resume, key, usable
        self.path: Path | None = None
        self.resumed = False

    def problem(self, path: Path, check_lock: bool = True) -> str | None:
        """Why `path` cannot be continued by this job, or None."""
        if not (path / CONFIG_FILE).is_file() or not self.usable(path):
            return "it holds nothing to continue"
        if _read(path / JOB_FILE) != self.job:
            return f"it was written by another kind of job than a {self.job}"
        if self.key((path / CONFIG_FILE).read_text()) != self.key(self.identity):
            return f"it was written by a different {self.job}"
        if (path / self.finished_file).is_file():
            return f"it has finished (a new {self.job} needs a directory of its own)"
        owner = lock_owner(path) if check_lock else None
        if owner is not None:
            return f"another process is working in it now (pid {owner.get('pid')} on {owner.get('host')})"
        return None

    def candidates(self) -> list[Path]:
        """The directories this job could continue, newest first (the named one only, when a name is given)."""
        if self.name:
            return [self.base / self.name]
        if not self.base.is_dir():
            return []
        return sorted((p for p in self.base.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)

    def find(self, check_lock: bool = True) -> Path | None:
        """The newest directory this job can continue (without taking it), or None."""
        return next((p for p in self.candidates() if p.is_dir() and self.problem(p, check_lock) is None), None)

    def open(self) -> Path:
        """Take the directory: continue one (with `resume`) or create a fresh one; lock it."""
        if self.resume and self.name and (self.base / self.name).exists():
            path = self.base / self.name
            problem = self.problem(path)
            if problem is None and not try_lock(path):
                problem = self.problem(path) or "another process took it just now"
            if problem:
                raise DirectoryTakenError(
                    f"{path}: {self.job} directory already exists, and {problem}. Fix: choose another output.name, or leave it unset for a fresh one"
                )
            self.path, self.resumed = path, True
            return path
        if self.resume:
            for path in self.candidates():
                if path.is_dir() and self.problem(path) is None and try_lock(path):
                    self.path, self.resumed = path, True
                    return path
        path = fresh_dir(self.base, self.name, self.stem)
        try_lock(path)
        write_text(path / CONFIG_FILE, self.identity)
        write_text(path / JOB_FILE, self.job)
        self.path, self.resumed = path, False
        return path

    def finish(self, payload: dict[str, Any]) -> Path:
        """Write the finish marker (atomically, last): the directory will never be continued again."""
        assert self.path is not None, "finish() outside the with block"
        return write_json(self.path / self.finished_file, payload)

    def release(self) -> None:
        if self.path is not None:
            unlock(self.path)

    def __enter__(self) -> ResumableDir:
        self.open()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()
