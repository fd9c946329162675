"""tuning/distributed/: a search over worker processes on KerasTuner's chief/worker engine, with its faults.

The end-to-end cases run real worker processes (`imgclf tune --role worker`) against a chief on 127.0.0.1."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from app.config import Config, dump_config, load_config
from tuning import distributed, search
from tuning.distributed import work
from tuning.results import TRIALS_FILE

REPO = Path(__file__).resolve().parents[1]
SMALL_SPACE = ["tune.space.blocks={min: 1, max: 2}", "tune.space.filters=[4, 8]", "tune.space.repeats=1", "tune.space.augment=none", "train.epochs=1"]


def search_config(base: Config, *overrides: str) -> Config:
    return load_config(overrides=[*SMALL_SPACE, "tune.max_trials=4", *overrides], base=base)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def trials_of(search_dir: Path) -> pd.DataFrame:
    return pd.read_csv(search_dir / TRIALS_FILE, dtype={"trial": str, "continues": str})


class Progress:
    """Collects the chief's lines; `on(pattern, action)` runs action(match) on the first line that matches."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.actions: list[tuple[re.Pattern, object]] = []
        self.pids: dict[str, int] = {}

    def on(self, pattern: str, action) -> None:
        self.actions.append((re.compile(pattern), action))

    def __call__(self, line: str) -> None:
        self.lines.append(line)
        started = re.match(r"(worker\d+): pid (\d+)", line)
        if started:
            self.pids[started[1]] = int(started[2])
        for entry in list(self.actions):
            match = entry[0].search(line)
            if match:
                self.actions.remove(entry)
                entry[1](match)


# -- fast: addresses, ids, cores, connection errors -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:8000", ("127.0.0.1", 8000)), ("node-1.cluster:50051", ("node-1.cluster", 50051)), ("[::1]:9000", ("::1", 9000)),
     ("localhost", None), (":8000", None), ("host:0", None), ("host:port", None), ("host:70000", None)],
)  # fmt: skip
def test_oracle_addresses_parse_or_fail_in_one_line(text: str, expected: tuple[str, int] | None) -> None:
    if expected is None:
        with pytest.raises(distributed.DistributedError, match="HOST:PORT"):
            distributed.parse_address(text)
    else:
        assert distributed.parse_address(text) == expected


def test_worker_ids_never_pass_for_the_chief() -> None:
    assert distributed.check_worker_id("gpu-node.3") == "gpu-node.3"
    for bad in ("chief", "worker-chief-1", "two words", ""):
        with pytest.raises(distributed.DistributedError, match="worker-id"):
            distributed.check_worker_id(bad)
    assert "chief" not in distributed.default_worker_id()  # KerasTuner would take such a worker for the chief


@pytest.mark.parametrize(
    ("workers", "cores", "expected"),
    [
        (0, [0, 1], []),
        (1, [0, 1], [[0, 1]]),
        (2, [0, 1], [[0], [1]]),
        (2, [0, 1, 2, 3, 4], [[0, 1], [2, 3]]),
        (3, [0, 1], [[0], [1], [0]]),
        (4, [2, 5, 6, 7], [[2], [5], [6], [7]]),
    ],
)
def test_local_workers_get_equal_shares_of_the_cores(workers: int, cores: list[int], expected: list[list[int]]) -> None:
    assert distributed.split_cores(workers, cores) == expected


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="CPU affinity is a Linux feature; elsewhere workers share the cores")
def test_local_workers_start_pinned_to_their_share(tmp_path: Path) -> None:
    """Each worker is pinned by the chief as it starts, before its interpreter reaches TensorFlow: every thread
    TensorFlow makes later inherits the share (the workers here find no chief and end)."""
    from tuning.distributed.chief import start_local_workers, stop_local_workers

    local = start_local_workers(2, "127.0.0.1:9", tmp_path / "config.yaml", tmp_path, tmp_path / "logs")
    try:
        shares = [sorted(os.sched_getaffinity(worker.process.pid)) for worker in local]
    finally:
        stop_local_workers(local, grace=5.0)
    assert shares == [worker.cores for worker in local] == distributed.split_cores(2)


def test_a_busy_port_is_one_line_before_anything_is_written(tiny_config: Config, tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as holder:
        port = holder.getsockname()[1]
        with pytest.raises(
            distributed.DistributedError, match=f"cannot listen on 127.0.0.1:{port}.*port is in use|cannot listen on 127.0.0.1:{port}.*holds the port"
        ):
            search(search_config(tiny_config), oracle=f"127.0.0.1:{port}")
        assert not (tmp_path / "runs").exists()
        # gRPC itself binds with SO_REUSEPORT unless told not to: its server must refuse the port too.
        with pytest.raises(distributed.DistributedError, match="port is in use"):
            distributed.start_server(distributed.ChiefServicer(oracle=None), "127.0.0.1", port)


def test_an_unreachable_chief_is_one_line_naming_its_address(tiny_config: Config) -> None:
    port = free_port()
    started = time.monotonic()
    with pytest.raises(distributed.DistributedError, match=f"cannot reach the search's chief at 127.0.0.1:{port} within 1 s"):
        work(search_config(tiny_config, "tune.connect_timeout=1"), f"127.0.0.1:{port}", "w1")
    assert time.monotonic() - started < 15  # not KerasTuner's hour-long wait


def test_the_cli_refuses_mixed_roles_with_exit_code_2(tiny_config: Config, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from app.cli import main

    config = tmp_path / "search.yaml"
    config.write_text(dump_config(search_config(tiny_config)))
    for argv, message in [
        (["--role", "worker"], "needs --oracle"),
        (["--oracle", "127.0.0.1:1"], "needs --role chief"),
        (["--role", "worker", "--oracle", "127.0.0.1:1", "--workers", "2"], "chief's options"),
        (["--worker-id", "w1"], "use it with --role worker"),
    ]:
        assert main(["tune", "-c", str(config), *argv]) == 2
        assert message in capsys.readouterr().err


# -- end to end: real worker processes ------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_chief_and_two_local_workers_finish_a_search_with_every_trial_once(tiny_config: Config) -> None:
    progress = Progress()
    result = search(search_config(tiny_config), workers=2, progress=progress)
    table = trials_of(result.search_dir)
    assert sorted(table["trial"]) == ["0", "1", "2", "3"] and (table["status"] == "COMPLETED").all()
    assert set(table["worker"]) <= {"worker0", "worker1"}
    assert sum(line.startswith("[") and "/4] trial" in line for line in progress.lines) == 4  # one line per trial, from the chief
    finished = (result.search_dir / "search.json").read_text()
    assert '"workers": 2' in finished and '"EndTrial": 4' in finished and '"ignored_reports": 0' in finished
    for log in (result.search_dir / "workers").glob("*.log"):
        assert "libtensorflow" not in log.name and "Traceback" not in log.read_text()


@pytest.mark.slow
def test_a_worker_killed_mid_trial_does_not_stop_the_search(tiny_config: Config) -> None:
    progress = Progress()
    killed: dict[str, str] = {}

    def kill(match: re.Match) -> None:
        killed.update(trial=match[1], worker=match[2])
        os.kill(progress.pids[match[2]], signal.SIGKILL)

    progress.on(r"trial (\d+) started on (worker\d)", kill)
    result = search(search_config(tiny_config), workers=2, progress=progress)
    table = trials_of(result.search_dir).set_index("trial")
    assert sorted(table.index) == ["0", "1", "2", "3"] and (table["status"] == "COMPLETED").all()  # the killed trial ran again
    other = "worker1" if killed["worker"] == "worker0" else "worker0"
    assert table.loc[killed["trial"], "worker"] == other
    assert any(f"{killed['worker']} stopped (killed by SIGKILL)" in line for line in progress.lines)
    assert any(f"trial {killed['trial']} on {killed['worker']} did not finish" in line for line in progress.lines)


@pytest.mark.slow
def test_a_killed_chief_started_again_resumes_with_finished_trials_kept(tiny_config: Config, tmp_path: Path) -> None:
    config_path = tmp_path / "search.yaml"
    config_path.write_text(dump_config(search_config(tiny_config, "tune.max_trials=5", "tune.worker_timeout=8")))
    command = [sys.executable, "-m", "app", "tune", "-c", str(config_path), "--workers", "2"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    chief = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
    lines = []
    for line in chief.stdout:
        lines.append(line)
        if line.startswith("[1/5]"):
            break
    chief.kill()
    chief.wait()
    search_dir = Path(re.search(r"search directory: (\S+)", "".join(lines))[1])
    pids = [int(pid) for pid in re.findall(r"worker\d: pid (\d+)", "".join(lines))]
    finished = trials_of(search_dir).query("status == 'COMPLETED'")["trial"].tolist()
    stamps = {trial: (search_dir / f"trial_{trial}" / "result.json").stat().st_mtime_ns for trial in finished}
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text() for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert time.monotonic() < deadline, "the workers of a killed chief must stop on their own"

    again = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert f"resuming the search in {search_dir}" in again.stdout
    table = trials_of(search_dir)
    assert sorted(table["trial"]) == ["0", "1", "2", "3", "4"] and (table["status"] == "COMPLETED").all()
    for trial, stamp in stamps.items():  # finished before the kill: never trained again
        assert (search_dir / f"trial_{trial}" / "result.json").stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_cluster_roles_a_silent_worker_loses_its_trial_to_another(tiny_config: Config, tmp_path: Path) -> None:
    """--role chief / --role worker as on a cluster: the chief knows its workers only by their requests and
    heartbeats. One is killed mid-trial; after tune.worker_timeout its trial runs on the other."""
    port = free_port()
    config = search_config(tiny_config, "tune.worker_timeout=4")
    config_path = tmp_path / "search.yaml"
    config_path.write_text(dump_config(config))
    progress = Progress()
    workers: dict[str, subprocess.Popen] = {}
    killed: dict[str, str] = {}

    def kill(match: re.Match) -> None:
        killed.update(trial=match[1], worker=match[2])
        workers[match[2]].kill()

    progress.on(r"trial (\d+) started on (w[12])", kill)
    outcome: dict[str, object] = {}
    chief = threading.Thread(target=lambda: outcome.update(result=search(config, oracle=f"127.0.0.1:{port}", progress=progress)))
    chief.start()
    try:
        for worker_id in ("w1", "w2"):
            command = [
                sys.executable,
                "-m",
                "app",
                "tune",
                "-c",
                str(config_path),
                "--role",
                "worker",
                "--oracle",
                f"127.0.0.1:{port}",
                "--worker-id",
                worker_id,
            ]
            workers[worker_id] = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO)
        chief.join(timeout=240)
        assert not chief.is_alive(), "\n".join(progress.lines)
    finally:
        for process in workers.values():
            process.kill()
    table = trials_of(outcome["result"].search_dir).set_index("trial")
    assert sorted(table.index) == ["0", "1", "2", "3"] and (table["status"] == "COMPLETED").all()
    other = "w2" if killed["worker"] == "w1" else "w1"
    assert table.loc[killed["trial"], "worker"] == other
    assert any(f"{killed['worker']}: no word for 4 s" in line for line in progress.lines)


@pytest.mark.slow
def test_ctrl_c_stops_the_chief_and_its_workers(tiny_config: Config, tmp_path: Path) -> None:
    """Ctrl-C at a terminal: SIGINT to the whole process group. Every process ends, and the search resumes later."""
    config_path = tmp_path / "search.yaml"
    config_path.write_text(dump_config(search_config(tiny_config, "tune.max_trials=50", "train.epochs=3")))
    # SIGINT back to its default first: a job started in the background by a shell without job control (CI, say)
    # inherits it ignored, and Python then installs no KeyboardInterrupt handler.
    chief = subprocess.Popen([sys.executable, "-m", "app", "tune", "-c", str(config_path), "--workers", "2"], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    lines = []
    for line in chief.stdout:
        lines.append(line)
        if line.startswith("[1/50]"):
            break
    os.killpg(chief.pid, signal.SIGINT)
    rest, _ = chief.communicate(timeout=60)
    assert chief.returncode == 130, rest[-2000:]
    assert "interrupted" in rest and "Traceback" not in rest
    pids = [int(pid) for pid in re.findall(r"worker\d: pid (\d+)", "".join(lines))]
    assert len(pids) == 2
    time.sleep(1)
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text()]


@pytest.mark.slow
def test_asha_with_two_local_workers_promotes_and_reports_their_idle_share(tiny_config: Config) -> None:
    # rungs in plain epochs: the compute budget's own epochs are test_search_budget's
    overrides = ["tune.tuner=asha", "tune.max_trials=6", "train.epochs=3", "tune.reduction_factor=3", "tune.trial_budget=epochs", "tune.final_minutes=0.5"]
    result = search(search_config(tiny_config, *overrides), workers=2, progress=Progress())
    table = trials_of(result.search_dir)
    assert (table["status"] == "COMPLETED").all() and (table["rung"] == 0).sum() == 6 and (table["rung"] == 1).sum() >= 2
    for row in table[table["rung"] == 1].itertuples():  # each promotion continued a finished network of rung 0
        assert row.continues in set(table.loc[table["rung"] == 0, "trial"]) and row.epochs == 3
    finished = json.loads((result.search_dir / "search.json").read_text())
    assert 0.0 <= finished["workers_idle_share"] < 1.0
    # the final run trains here, on all the cores: best.yaml is sized at the pace the chief timed, not a worker's
    assert "timed here" in result.best_config.read_text().splitlines()[1] and result.prepared  # the images timed: the final run's


@pytest.mark.slow
def test_the_workers_trials_stop_at_the_searchs_time_limit(tiny_config: Config) -> None:
    config = search_config(tiny_config, "train.epochs=500", "train.early_stopping_patience=0", "tune.trial_budget=epochs", "tune.max_minutes=0.4")
    started = time.monotonic()
    result = search(config, workers=2, progress=Progress())
    took = time.monotonic() - started
    table = trials_of(result.search_dir)
    assert len(table) >= 1 and (table["stopped"] == "time limit").all() and (table["epochs"] < 500).all()
    assert took < 120  # 24 s of budget, then one epoch of a tiny network (500 epochs would take many minutes)
