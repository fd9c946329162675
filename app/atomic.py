"""Atomic file outputs: write beside the target, then rename, so a crash never leaves half a file."""

from __future__ import annotations

import json
import os
import stat
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipelines.errors import UserError


class OutputExistsError(UserError, FileExistsError):
    """The output file exists and overwriting was not asked for."""


_UMASK_LOCK = threading.Lock()


def plain_write_mode(path: Path) -> int:
    """The permissions a plain `open(path, "w")` would leave: an existing file keeps its own, a new one gets
    0o666 less the process umask (the temporary file of an atomic write starts at 0o600 instead)."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        with _UMASK_LOCK:  # os.umask can only be read by setting it
            umask = os.umask(0o022)
            os.umask(umask)
        return 0o666 & ~umask


def check_output(path: str | os.PathLike, *, force: bool = False) -> Path:
    """Raise the error `atomic_write` would, before any work is spent on the output: a folder is never replaced by a
    file, and an existing file only with `force`."""
    path = Path(path)
    if path.is_dir():
        raise OutputExistsError(f"{path}: is a folder. Fix: give the path of a file to write, e.g. {path / 'submission.csv'}")
    if not force and path.exists():
        raise OutputExistsError(f"{path}: already exists. Fix: choose another output path, or pass --force to overwrite it.")
    return path


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None], *, force: bool = True) -> Path:
    """Call `write(tmp_path)` then rename onto `path`. With `force=False` an existing file is never replaced."""
    path = check_output(path, force=force)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, plain_write_mode(path))
        if not force:
            # Refuse to replace a file that appeared meanwhile (os.link fails if the target exists).
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise OutputExistsError(f"{path}: already exists. Fix: choose another output path, or pass --force to overwrite it.") from None
            except OSError:  # file systems without hard links
                os.replace(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_text(path: str | os.PathLike, text: str, *, force: bool = True) -> Path:
    return atomic_write(path, lambda p: p.write_text(text), force=force)


def write_json(path: str | os.PathLike, data: Any, *, force: bool = True) -> Path:
    return write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n", force=force)
