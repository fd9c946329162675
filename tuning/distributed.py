"""A search over several processes or machines, on KerasTuner's own chief/worker engine.

KerasTuner runs a parallel search as one chief, which holds the oracle and answers over gRPC, and workers that run
trials through `OracleClient` (set up from KERASTUNER_TUNER_ID, KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT).
This module keeps that engine (its protocol, its oracle, its trial records) and closes the gaps that make it hang
or lose trials (keras-team/keras-tuner #915, #596, #990):

- Liveness. Every request names its worker (gRPC metadata) and workers send a heartbeat. A worker that exits (local
  workers) or stays silent for `tune.worker_timeout` seconds has its trial released: it runs again on another
  worker once (the oracle's own retry), then is recorded as failed with the reason. KerasTuner's chief waits
  forever for such a trial, and exits only in 20-second steps.
- Once. A report from a worker whose trial was released is ignored, so each trial is recorded once.
- One line for connection problems. A port in use is refused (gRPC binds with SO_REUSEPORT by default, so two
  chiefs would silently share a port). A chief that does not answer within `tune.connect_timeout` seconds is named
  with its address, instead of a client that waits an hour. A worker that loses its chief mid-search waits
  `CHIEF_WAIT_SECONDS` for it, so a chief started again takes up the same search with its workers still running.
"""

from __future__ import annotations

import collections
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import keras_tuner as kt
from keras_tuner.src import protos
from keras_tuner.src.distribute import oracle_chief, oracle_client
from keras_tuner.src.engine import conditions
from keras_tuner.src.engine import trial as trial_module

# KerasTuner 1.4.8 prints the first value of every condition it serialises for gRPC (a debugging print left in
# `conditions.Parent.to_proto`): one line per conditional hyperparameter per request. Silenced for that module only.
conditions.print = lambda *args, **kwargs: None

TUNER_ID_KEY = "imgclf-tuner-id"  # gRPC metadata: which worker sent a request
CHIEF_WAIT_SECONDS = 600.0  # how long a worker's call waits for a chief that went away (a restart) before it gives up
HEARTBEAT_REQUEST = 0  # GetBestTrials(num_trials=0): the heartbeat, cheap for the chief and told apart from real asks


class DistributedError(ValueError):
    """A distributed search that cannot start or go on (address, port, chief out of reach). User-facing."""


def parse_address(text: str) -> tuple[str, int]:
    """`HOST:PORT` -> (host, port), or one line saying what is wrong."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DistributedError(f"--oracle {text!r}: give the chief's address as HOST:PORT, for example 10.0.0.1:8000")
    return host.strip("[]"), int(port)


def check_worker_id(worker_id: str) -> str:
    """KerasTuner treats any tuner id containing "chief" as the chief: refuse such a worker id."""
    if "chief" in worker_id or not re.fullmatch(r"[\w.@-]+", worker_id):
        raise DistributedError(f"--worker-id {worker_id!r}: use letters, digits and . _ @ - only, without the word 'chief' (KerasTuner reserves it)")
    return worker_id


def default_worker_id() -> str:
    """`worker-<host>-<pid>`: unique on a cluster; the host name cleared of "chief" (see check_worker_id)."""
    host = re.sub(r"[^\w.-]", "-", socket.gethostname()).replace("chief", "chf")
    return f"worker-{host}-{os.getpid()}"


# -- the chief ---------------------------------------------------------------------------------------------------


class ChiefServicer(oracle_chief.OracleServicer):
    """KerasTuner's oracle service, with each request's worker recorded and late reports of released trials ignored.

    The gRPC server runs one request at a time; `lock` also keeps the chief's liveness checks out of a request."""

    def __init__(
        self,
        oracle: kt.Oracle,
        on_trial_begin: Callable[[str, trial_module.Trial], None] = lambda tuner_id, trial: None,
        on_trial_end: Callable[[str, trial_module.Trial], None] = lambda tuner_id, trial: None,
    ):
        super().__init__(oracle)
        self.lock = threading.RLock()
        self.on_trial_begin = on_trial_begin
        self.on_trial_end = on_trial_end
        self.last_seen: dict[str, float] = {}
        self.requests: collections.Counter[str] = collections.Counter()
        self.ignored_reports = 0
        self.failure: str | None = None  # the oracle's "consecutive failures" stop: no new trial is handed out

    def _seen(self, name: str, context: grpc.ServicerContext) -> str:
        tuner_id = dict(context.invocation_metadata()).get(TUNER_ID_KEY, "?")
        self.last_seen[tuner_id] = time.monotonic()
        self.requests[name] += 1
        return tuner_id

    def _assigned(self, tuner_id: str, trial_id: str) -> bool:
        trial = self.oracle.ongoing_trials.get(tuner_id)
        return trial is not None and trial.trial_id == trial_id

    def GetSpace(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self.lock:
            self._seen("GetSpace", context)
            return super().GetSpace(request, context)

    def UpdateSpace(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self.lock:
            self._seen("UpdateSpace", context)
            return super().UpdateSpace(request, context)

    def CreateTrial(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self.lock:
            tuner_id = self._seen("CreateTrial", context)
            trial = self.oracle.create_trial(tuner_id) if self.failure is None else None
            if trial is not None and trial.status == trial_module.TrialStatus.STOPPED and self.oracle.ongoing_trials:
                # The budget is spent, but a trial in flight elsewhere may yet fail and need another run: this
                # worker waits (KerasTuner stops it now, and a trial released later would find no one to run it).
                self.oracle.tuner_ids.add(tuner_id)
                trial = trial_module.Trial(self.oracle.get_space(), trial_id="wait", status=trial_module.TrialStatus.IDLE)
            elif trial is None or trial.status == trial_module.TrialStatus.STOPPED:
                self.stop_triggered = True
                self.oracle.tuner_ids.discard(tuner_id)
                trial = trial_module.Trial(self.oracle.get_space(), trial_id="stop", status=trial_module.TrialStatus.STOPPED)
            elif trial.status == trial_module.TrialStatus.RUNNING:
                self.on_trial_begin(tuner_id, trial)
            return protos.get_service().CreateTrialResponse(trial=trial.to_proto())

    def UpdateTrial(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self.lock:
            tuner_id = self._seen("UpdateTrial", context)
            if not self._assigned(tuner_id, request.trial_id):
                self.ignored_reports += 1
                return protos.get_service().UpdateTrialResponse(trial=self.oracle.get_trial(request.trial_id).to_proto())
            return super().UpdateTrial(request, context)

    def EndTrial(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self.lock:
            tuner_id = self._seen("EndTrial", context)
            if not self._assigned(tuner_id, request.trial.trial_id):
                self.ignored_reports += 1
                return protos.get_service().EndTrialResponse()
            try:
                super().EndTrial(request, context)
            except RuntimeError as exc:  # the oracle's "Number of consecutive failures exceeded the limit"
                if "consecutive failures" not in str(exc):
                    raise
                self.failure = [line for line in str(exc).strip().splitlines() if line.strip()][-1]
            self.on_trial_end(tuner_id, self.oracle.get_trial(request.trial.trial_id))
            return protos.get_service().EndTrialResponse()

    def GetTrial(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self.lock:
            self._seen("GetTrial", context)
            return super().GetTrial(request, context)

    def GetBestTrials(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self.lock:
            self._seen("heartbeat" if request.num_trials == HEARTBEAT_REQUEST else "GetBestTrials", context)
            return super().GetBestTrials(request, context)

    def release(self, tuner_id: str, reason: str) -> trial_module.Trial | None:
        """Forget a worker that is gone; its trial, if any, goes back to the oracle (run again once, then failed)."""
        with self.lock:
            self.oracle.tuner_ids.discard(tuner_id)
            self.last_seen.pop(tuner_id, None)
            trial = self.oracle.ongoing_trials.get(tuner_id)
            if trial is None:
                return None
            trial.status = trial_module.TrialStatus.INVALID
            trial.message = reason
            try:
                self.oracle.end_trial(trial)
            except RuntimeError as exc:
                if "consecutive failures" not in str(exc):
                    raise
                self.failure = reason
            ended = self.oracle.get_trial(trial.trial_id)
            self.on_trial_end(tuner_id, ended)
            return ended

    def fail_unclaimed_retries(self) -> list[str]:
        """Trials waiting for a second run when no worker is left to run them: recorded as failed, with why."""
        with self.lock:
            failed = []
            while self.oracle._retry_queue:
                trial = self.oracle.trials[self.oracle._retry_queue.pop()]
                trial.status = trial_module.TrialStatus.FAILED
                trial.message = (trial.message or "") + "\nno worker was left to run it again"
                self.oracle.end_order.append(trial.trial_id)
                self.oracle._save_trial(trial)
                failed.append(trial.trial_id)
            self.oracle.save()
            return failed

    def finished(self, live: set[str] | None) -> bool:
        """The budget is spent (or the search failed), no trial is in flight, and every live worker was told to stop.
        `live`: the workers known to be alive (local processes), or None to trust the heartbeats alone."""
        with self.lock:
            if not (self.stop_triggered or self.failure) or self.oracle.ongoing_trials:
                return False
            waiting = set(self.oracle.tuner_ids) if live is None else set(self.oracle.tuner_ids) & live
            return not waiting


def start_server(servicer: ChiefServicer, host: str, port: int) -> tuple[grpc.Server, int]:
    """Serve `servicer` on host:port (port 0: a free one); returns the server and its port. A port in use is one line."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1), options=[("grpc.so_reuseport", 0)])
    protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError:
        bound = 0
    if not bound:
        raise DistributedError(
            f"cannot listen on {host}:{port}: the port is in use (another search's chief?) or the address is not this machine's. "
            "Fix: choose another port in --oracle HOST:PORT, or stop the process that holds it"
        )
    server.start()
    return server, bound


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


@dataclass
class LocalWorker:
    """One worker process this chief started, with its log file."""

    tuner_id: str
    process: subprocess.Popen
    log: Path
    cores: list[int] = field(default_factory=list)

    def last_line(self) -> str:
        if not self.log.is_file():
            return ""
        lines = [line.strip() for line in self.log.read_text(errors="replace").splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("error:")]
        return (errors or lines or [""])[-1][:300]


def check_port(host: str, port: int) -> None:
    """Refuse a port that is in use before anything is written (the gRPC server checks again when it binds)."""
    if port == 0:
        return
    try:
        with socket.create_server((host, port), reuse_port=False):
            pass
    except OSError as exc:
        raise DistributedError(
            f"cannot listen on {host}:{port} ({exc.strerror}): another search's chief, or another program, holds the port, or the address is not "
            "this machine's. Fix: choose another port in --oracle HOST:PORT, or stop the process that holds it"
        ) from None


def split_cores(workers: int, cores: list[int] | None = None) -> list[list[int]]:
    """The cores each of `workers` local processes is pinned to: an equal share of this process's cores (several
    workers share a core when there are more workers than cores)."""
    cores = sorted(cores if cores is not None else (os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)))
    if workers <= 0:
        return []
    if workers >= len(cores):
        return [[cores[i % len(cores)]] for i in range(workers)]
    share = len(cores) // workers
    return [cores[i * share : (i + 1) * share] for i in range(workers)]


def start_local_workers(count: int, address: str, config_path: Path, search_dir: Path, log_dir: Path) -> list[LocalWorker]:
    """`count` worker processes (`imgclf tune --role worker`) on this machine, each pinned to its share of the cores
    with TensorFlow's thread pools sized to it, logging to `log_dir/<id>.log`; they exit if this process dies."""
    log_dir.mkdir(parents=True, exist_ok=True)
    started = []
    for index, cores in enumerate(split_cores(count)):
        tuner_id = f"worker{index}"
        threads = str(len(cores))
        env = {**os.environ, "TF_NUM_INTRAOP_THREADS": threads, "TF_NUM_INTEROP_THREADS": "2", "OMP_NUM_THREADS": threads, "PYTHONUNBUFFERED": "1"}
        command = [sys.executable, "-m", "app", "tune", "-c", str(config_path), "--role", "worker", "--oracle", address,
                   "--worker-id", tuner_id, "--search-dir", str(search_dir), "--cores", ",".join(map(str, cores)), "--exit-with-parent"]  # fmt: skip
        log = log_dir / f"{tuner_id}.log"
        with open(log, "ab") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        started.append(LocalWorker(tuner_id, process, log, cores))
    return started


def serve(
    servicer: ChiefServicer,
    local: list[LocalWorker],
    accept_remote: bool,
    worker_timeout: float,
    progress: Callable[[str], None],
    poll_seconds: float = 0.2,
) -> None:
    """Run the chief until the search is finished: release the trials of workers that exited or went silent, and
    stop when no trial is in flight and every live worker was told to stop. Without remote workers, a search whose
    local workers all stopped ends with one line naming the last worker's error."""
    started = time.monotonic()
    alive = {worker.tuner_id: worker for worker in local}
    while True:
        for tuner_id, worker in list(alive.items()):
            code = worker.process.poll()
            if code is None:
                continue
            del alive[tuner_id]
            if code == 0:
                servicer.release(tuner_id, f"{tuner_id} ended")
                continue
            reason = f"{tuner_id} stopped ({describe_exit(code)}) during this trial"
            trial = servicer.release(tuner_id, reason)
            detail = f": {worker.last_line()}" if worker.last_line() else ""
            progress(f"{tuner_id} stopped ({describe_exit(code)}){detail}" + (f"; trial {trial.trial_id} goes back to the search" if trial else ""))
        now = time.monotonic()
        with servicer.lock:
            watched = set(servicer.oracle.tuner_ids) | set(servicer.oracle.ongoing_trials)
        for tuner_id in watched - set(alive):  # remote workers (and trials a chief started again found in flight)
            if now - servicer.last_seen.get(tuner_id, started) > worker_timeout:
                trial = servicer.release(tuner_id, f"no word from {tuner_id} for {worker_timeout:.0f} s (tune.worker_timeout)")
                progress(f"{tuner_id}: no word for {worker_timeout:.0f} s" + (f"; trial {trial.trial_id} goes back to the search" if trial else ""))
        if servicer.finished(set(alive) if not accept_remote else None):
            break
        if local and not alive and not accept_remote:
            failed = servicer.fail_unclaimed_retries()
            with servicer.lock:
                unfinished = bool(servicer.oracle.ongoing_trials) or not (servicer.stop_triggered or servicer.failure)
            if unfinished or failed:
                last = next((w.last_line() for w in reversed(local) if w.last_line()), "")
                raise DistributedError(
                    f"all {len(local)} workers stopped before the search finished" + (f" (last: {last})" if last else "")
                    + ". Their logs are in the search directory's workers/; the same command resumes the search"
                )
            break
        time.sleep(poll_seconds)
    if servicer.fail_unclaimed_retries():
        progress("trials that lost their worker and found no other were recorded as failed")


def stop_local_workers(local: list[LocalWorker], grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds, for every worker still running."""
    for worker in local:
        if worker.process.poll() is None:
            worker.process.terminate()
    deadline = time.monotonic() + grace
    for worker in local:
        try:
            worker.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            worker.process.kill()
            worker.process.wait()


# -- a worker ----------------------------------------------------------------------------------------------------


class _CallDetails(
    collections.namedtuple("_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")), grpc.ClientCallDetails
):
    pass


class _WorkerCalls(grpc.UnaryUnaryClientInterceptor):
    """Every request of a worker carries its id, and waits for the chief at most `timeout` seconds."""

    def __init__(self, tuner_id: str, timeout: float):
        self.tuner_id = tuner_id
        self.timeout = timeout

    def intercept_unary_unary(self, continuation: Callable, details: grpc.ClientCallDetails, request: Any) -> Any:
        metadata = [*(details.metadata or []), (TUNER_ID_KEY, self.tuner_id)]
        timeout = min(details.timeout, self.timeout) if details.timeout else self.timeout
        return continuation(_CallDetails(details.method, timeout, metadata, details.credentials, True, details.compression), request)


def connect(address: str, tuner_id: str, timeout: float, connect_timeout: float) -> grpc.Channel:
    """A channel to the chief, checked to answer within `connect_timeout` seconds (else one line)."""
    channel = grpc.insecure_channel(address)
    try:
        grpc.channel_ready_future(channel).result(timeout=connect_timeout)
    except grpc.FutureTimeoutError:
        channel.close()
        raise DistributedError(
            f"cannot reach the search's chief at {address} within {connect_timeout:.0f} s (tune.connect_timeout). "
            f"Fix: start it first (imgclf tune -c FILE --role chief --oracle {address}), and check the address and that the port is open"
        ) from None
    return grpc.intercept_channel(channel, _WorkerCalls(tuner_id, timeout))


class WorkerOracle(oracle_client.OracleClient):
    """KerasTuner's OracleClient over a channel that names this worker and bounds how long a call waits."""

    def __init__(self, oracle: kt.Oracle, channel: grpc.Channel, tuner_id: str, wait_seconds: float = 1.0):
        self._oracle = oracle
        self.stub = protos.get_service_grpc().OracleStub(channel)
        self.tuner_id = tuner_id
        self.multi_worker = False
        self.should_report = True
        self.wait_seconds = wait_seconds

    def create_trial(self, tuner_id: str) -> trial_module.Trial:
        trial = super().create_trial(tuner_id)
        if trial.status == trial_module.TrialStatus.IDLE:  # KerasTuner's tuner asks again at once: not in a busy loop
            time.sleep(self.wait_seconds)
        return trial


class Heartbeat(threading.Thread):
    """Tells the chief every `interval` seconds that this worker is alive; with `parent`, ends this process when
    the process that started it is gone (a local worker outliving a killed chief would hold its trial)."""

    def __init__(self, channel: grpc.Channel, interval: float, parent: int | None = None):
        super().__init__(daemon=True, name="imgclf-heartbeat")
        self.stub = protos.get_service_grpc().OracleStub(channel)
        self.interval = interval
        self.parent = parent
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            if self.parent is not None and os.getppid() != self.parent:
                os._exit(3)
            try:
                self.stub.GetBestTrials(protos.get_service().GetBestTrialsRequest(num_trials=HEARTBEAT_REQUEST), timeout=self.interval)
            except grpc.RpcError:
                pass  # the chief is away (restarting?): the trial's own calls wait for it

    def stop(self) -> None:
        self.stopped.set()


def set_worker_environment(tuner_id: str, host: str, port: int) -> None:
    """KerasTuner's own switches: with them, a tuner of this process is a worker of the chief at host:port."""
    os.environ["KERASTUNER_TUNER_ID"] = tuner_id
    os.environ["KERASTUNER_ORACLE_IP"] = host
    os.environ["KERASTUNER_ORACLE_PORT"] = str(port)
