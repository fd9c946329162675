"""The one resumable-directory mechanism (app/resumable.py) that runs, cross-validations and searches use."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.config import ConfigError
from app.resumable import CONFIG_FILE, LOCK_FILE, DirectoryTakenError, ResumableDir, is_locked, lock_owner
from pipelines.errors import DataError

REPO = Path(__file__).resolve().parents[1]


def job(base: Path, identity: str = "a: 1\n", **options) -> ResumableDir:
    return ResumableDir(base, "run", identity, finished_file="done.json", stem="cnn", **options)


def test_a_fresh_directory_holds_its_config_and_is_locked_until_the_block_ends(tmp_path: Path) -> None:
    with job(tmp_path) as opened:
        assert not opened.resumed and opened.path.parent == tmp_path and opened.path.name.endswith("-cnn")
        assert (opened.path / CONFIG_FILE).read_text() == "a: 1\n"
        assert lock_owner(opened.path)["pid"] == os.getpid()
    assert not is_locked(opened.path) and not (opened.path / LOCK_FILE).exists()


def test_released_on_an_exception_too(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), job(tmp_path) as opened:
        raise RuntimeError("boom")
    assert not is_locked(opened.path)


def test_the_newest_unfinished_directory_of_the_same_identity_is_continued(tmp_path: Path) -> None:
    with job(tmp_path, name="old") as old:
        pass
    with job(tmp_path, "a: 2\n", name="other"):
        pass
    time.sleep(0.01)
    with job(tmp_path, name="new") as new:
        pass
    with job(tmp_path) as again:
        assert again.resumed and again.path == new.path
    assert old.path != new.path


def test_a_finished_directory_is_never_reused(tmp_path: Path) -> None:
    with job(tmp_path) as first:
        first.finish({"score": 1.0})
    with job(tmp_path) as second:
        assert not second.resumed and second.path != first.path
    assert json.loads((first.path / "done.json").read_text()) == {"score": 1.0}
    with pytest.raises(DirectoryTakenError, match="run directory already exists, and it has finished"):
        job(tmp_path, name=first.path.name).open()


def test_a_named_directory_of_another_identity_is_refused_in_one_line(tmp_path: Path) -> None:
    with job(tmp_path, name="mine"):
        pass
    with pytest.raises(ConfigError, match=r"mine: run directory already exists, and it was written by a different run\. Fix: choose another output.name"):
        job(tmp_path, "a: 2\n", name="mine").open()


def test_a_run_does_not_continue_a_search_of_the_same_config(tmp_path: Path) -> None:
    with ResumableDir(tmp_path, "search", "a: 1\n", finished_file="search.json"):
        pass
    with job(tmp_path) as opened:
        assert not opened.resumed


def test_without_resume_a_fresh_directory_is_made(tmp_path: Path) -> None:
    with job(tmp_path) as first:
        pass
    with job(tmp_path, resume=False) as second:
        assert not second.resumed and second.path != first.path
    with pytest.raises(DataError, match="already exists"):
        job(tmp_path, name=first.path.name, resume=False).open()


def _hold(base: str, ready: multiprocessing.synchronize.Event, stop: multiprocessing.synchronize.Event) -> None:
    with job(Path(base), name="shared"):
        ready.set()
        stop.wait(30)


def test_a_directory_held_by_a_live_process_is_not_taken(tmp_path: Path) -> None:
    with job(tmp_path, name="shared"):
        pass
    context = multiprocessing.get_context("spawn")
    ready, stop = context.Event(), context.Event()
    holder = context.Process(target=_hold, args=(str(tmp_path), ready, stop))
    holder.start()
    try:
        assert ready.wait(60)
        assert lock_owner(tmp_path / "shared")["pid"] == holder.pid
        with pytest.raises(DirectoryTakenError, match=f"another process is working in it now \\(pid {holder.pid}"):
            job(tmp_path, name="shared").open()
        with job(tmp_path) as other:  # unnamed: the busy one is passed over
            assert not other.resumed
    finally:
        stop.set()
        holder.join(30)
    with job(tmp_path, name="shared") as again:
        assert again.resumed


RACER = """
import sys, time
from pathlib import Path
from app.resumable import ResumableDir
base, start = Path(sys.argv[1]), float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))
try:
    with ResumableDir(base, "run", "a: 1\\n", finished_file="done.json", name="shared") as job:
        print("took", flush=True)
        deadline = time.time() + 120
        while not (base / "release").exists() and time.time() < deadline:  # held until every other racer has tried
            time.sleep(0.05)
except Exception as exc:
    print(type(exc).__name__, flush=True)
"""


def test_processes_racing_for_one_directory_never_both_take_it(tmp_path: Path) -> None:
    """Eight processes released at the same instant on an interrupted directory: exactly one continues it."""
    with job(tmp_path, name="shared"):
        pass
    start = str(time.time() + 5)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    racers = [subprocess.Popen([sys.executable, "-c", RACER, str(tmp_path), start], stdout=subprocess.PIPE, text=True, env=env) for _ in range(8)]
    deadline = time.time() + 120
    while sum(p.poll() is not None for p in racers) < 7 and time.time() < deadline:
        time.sleep(0.1)
    (tmp_path / "release").touch()
    outcomes = sorted(p.communicate(timeout=60)[0].strip() for p in racers)
    assert outcomes == ["DirectoryTakenError"] * 7 + ["took"]


def test_a_killed_owner_leaves_a_stale_lock_that_is_broken(tmp_path: Path) -> None:
    """SIGKILL leaves the lock file behind; the next start sees its process gone and continues the directory."""
    code = (
        f"from pathlib import Path; from app.resumable import ResumableDir; import time\n"
        f"ResumableDir(Path({str(tmp_path)!r}), 'run', 'a: 1\\n', finished_file='done.json', name='killed').open(); print('open', flush=True); time.sleep(60)"
    )
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert process.stdout.readline().strip() == "open"
    assert is_locked(tmp_path / "killed")
    process.send_signal(signal.SIGKILL)
    process.wait(30)
    assert (tmp_path / "killed" / LOCK_FILE).exists() and not is_locked(tmp_path / "killed")
    with job(tmp_path, name="killed") as again:
        assert again.resumed and lock_owner(again.path)["pid"] == os.getpid()


def test_a_reused_pid_does_not_hold_a_lock(tmp_path: Path) -> None:
    """A lock naming a live pid whose start time differs (the pid was reused since) is stale."""
    with job(tmp_path, name="old") as opened:
        pass
    owner = {"pid": os.getpid(), "host": os.uname().nodename, "started": "1"}
    (opened.path / LOCK_FILE).write_text(json.dumps(owner))
    assert not is_locked(opened.path)
