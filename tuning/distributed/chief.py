"""The chief of a distributed search: KerasTuner's oracle served over gRPC, with worker liveness, and the local worker
processes it starts (each pinned to its share of the cores, started as `python -m tuning.distributed.worker`)."""

from __future__ import annotations

import collections
import os
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

from app.resumable import CONFIG_FILE
from tuning.compat import consecutive_failures, oracle_chief, protos, retry_queue, save_trial, trial_module
from tuning.directory import WORKER_LOGS
from tuning.distributed.protocol import HEARTBEAT_REQUEST, TUNER_ID_KEY, DistributedError
from tuning.session import Session, announce, consecutive_failures_error


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
            except RuntimeError as exc:
                self.failure = consecutive_failures(exc)
                if self.failure is None:
                    raise
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
                if consecutive_failures(exc) is None:
                    raise
                self.failure = reason
            ended = self.oracle.get_trial(trial.trial_id)
            self.on_trial_end(tuner_id, ended)
            return ended

    def fail_unclaimed_retries(self) -> list[str]:
        """Trials waiting for a second run when no worker is left to run them: recorded as failed, with why."""
        with self.lock:
            failed = []
            while retry_queue(self.oracle):
                trial = self.oracle.trials[retry_queue(self.oracle).pop()]
                trial.status = trial_module.TrialStatus.FAILED
                trial.message = (trial.message or "") + "\nno worker was left to run it again"
                self.oracle.end_order.append(trial.trial_id)
                save_trial(self.oracle, trial)
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


def pin(pid: int, cores: list[int]) -> None:
    """Pin a process just started to `cores`: its interpreter is still starting, so every thread TensorFlow creates
    later inherits the affinity (a worker importing `tuning` starts TensorFlow before its own code could pin it)."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(pid, cores)


def start_local_workers(count: int, address: str, config_path: Path, search_dir: Path, log_dir: Path) -> list[LocalWorker]:
    """`count` worker processes (`imgclf tune --role worker`) on this machine, each pinned to its share of the cores
    with TensorFlow's thread pools sized to it, logging to `log_dir/<id>.log`; they exit if this process dies."""
    log_dir.mkdir(parents=True, exist_ok=True)
    started = []
    for index, cores in enumerate(split_cores(count)):
        tuner_id = f"worker{index}"
        threads = str(len(cores))
        env = {**os.environ, "TF_NUM_INTRAOP_THREADS": threads, "TF_NUM_INTEROP_THREADS": "2", "OMP_NUM_THREADS": threads, "PYTHONUNBUFFERED": "1"}
        command = [
            sys.executable,
            "-m",
            "tuning.distributed.worker",
            str(config_path),
            "--oracle",
            address,
            "--worker-id",
            tuner_id,
            "--search-dir",
            str(search_dir),
        ]
        log = log_dir / f"{tuner_id}.log"
        with open(log, "ab") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        pin(process.pid, cores)
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
                    f"all {len(local)} workers stopped before the search finished"
                    + (f" (last: {last})" if last else "")
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


def serve_search(opened: Session, host: str, port: int, workers: int, accept_remote: bool, progress: Callable[[str], None]) -> dict[str, Any]:
    """Be the chief: serve the oracle, start `workers` local worker processes, and follow the search to its end."""
    tuner = opened.tuner
    running: dict[str, float] = {}  # worker -> when its trial started
    busy = [0.0]  # seconds of trials run, summed over workers

    def begun(worker: str, trial: kt.engine.trial.Trial) -> None:
        running[worker] = time.monotonic()
        progress(f"trial {trial.trial_id} started on {worker}")

    def ended(worker: str, trial: kt.engine.trial.Trial) -> None:
        busy[0] += time.monotonic() - running.pop(worker, time.monotonic())
        tuner.save()  # the chief's clock (tune.max_minutes over resumes)
        if trial.status == "INVALID":  # released or failed once: the oracle runs it again
            reason = ((trial.message or "").strip().splitlines() or ["no reason given"])[-1][:160]
            progress(f"trial {trial.trial_id} on {worker} did not finish ({reason}); it will run again")
        else:
            tuner.on_trial_done(tuner, trial, worker)

    servicer = ChiefServicer(tuner.oracle, begun, ended)
    local: list[LocalWorker] = []
    tuner.save()
    tuner.publish_deadline()  # the workers' trials stop at tune.max_minutes too
    server, port = start_server(servicer, host, port)
    address = f"{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    announce(opened, progress, f"; chief at {host}:{port}")
    try:
        local = start_local_workers(workers, address, opened.search_dir / CONFIG_FILE, opened.search_dir, opened.search_dir / WORKER_LOGS)
        for worker in local:
            progress(f"{worker.tuner_id}: pid {worker.process.pid}, cores {','.join(map(str, worker.cores))}, log {worker.log}")
        chief_cpu, serving = time.process_time(), time.monotonic()
        serve(servicer, local, accept_remote, opened.config.tune.worker_timeout, progress)
        chief_cpu, serving = time.process_time() - chief_cpu, time.monotonic() - serving
    finally:
        stop_local_workers(local)
        server.stop(grace=1.0)
    if servicer.failure:
        raise consecutive_failures_error(opened, servicer.failure)
    return {
        "workers": workers,
        "oracle_requests": dict(servicer.requests),
        "chief_cpu_seconds": round(chief_cpu, 2),
        "ignored_reports": servicer.ignored_reports,
        # local workers' time not spent in a trial (starting, preparing data, waiting for a trial): the idle share
        "workers_idle_share": round(1.0 - busy[0] / (workers * serving), 3) if workers and serving > 0 and not accept_remote else None,
    }
