"""A worker of a distributed search: runs the trials the chief hands out until it says stop.

Started by a local chief as `python -m tuning.distributed.worker CONFIG --oracle HOST:PORT --worker-id ID
--search-dir DIR` (pinned to its cores by the chief, ending with its parent), or by a user on another machine as
`imgclf tune -c CONFIG --role worker --oracle HOST:PORT`."""

from __future__ import annotations

import argparse
import collections
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import keras_tuner as kt

from app.config import Config
from tuning.compat import init_client, oracle_client, protos, trial_module
from tuning.directory import find_running_search
from tuning.distributed.protocol import CHIEF_WAIT_SECONDS, HEARTBEAT_REQUEST, TUNER_ID_KEY, DistributedError, check_worker_id, default_worker_id, parse_address
from tuning.hypermodels import make_hypermodel
from tuning.oracles import make_oracle
from tuning.session import data_cache
from tuning.space import parse_space
from tuning.tuner import SearchTuner


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
        init_client(self, oracle, protos.get_service_grpc().OracleStub(channel), tuner_id)
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


def work(
    config: Config,
    oracle: str,
    worker_id: str | None = None,
    search_dir: Path | None = None,
    exit_with_parent: bool = False,
    progress: Callable[[str], None] = print,
) -> int:
    """Be a worker of the search whose chief is at `oracle` ("HOST:PORT"): run the trials it hands out until it says
    stop. The data are prepared once, here, as in a search in one process. Returns the number of trials run."""
    host, port = parse_address(oracle)
    tuner_id = check_worker_id(worker_id) if worker_id else default_worker_id()
    space = parse_space(config)
    tune = config.tune
    channel = connect(oracle, tuner_id, CHIEF_WAIT_SECONDS, tune.connect_timeout)
    search_dir = Path(search_dir) if search_dir else find_running_search(config)
    set_worker_environment(tuner_id, host, port)
    _, data_for = data_cache()
    data = data_for(config)
    hypermodel = make_hypermodel(config, space, data.num_classes, data.multilabel, len(data.train))
    local_oracle = make_oracle(tune, tune.seed if tune.seed is not None else config.seed, config.train.epochs)
    tuner = SearchTuner(local_oracle, hypermodel, search_dir, data_for)
    tuner.oracle = WorkerOracle(local_oracle, channel, tuner_id)
    ran = 0

    def count(tuner: SearchTuner, trial: kt.engine.trial.Trial) -> None:
        nonlocal ran
        ran += 1
        progress(f"{tuner_id}: trial {trial.trial_id} {trial.status.lower()}")

    tuner.on_trial_done = count
    heartbeat = Heartbeat(channel, min(10.0, tune.worker_timeout / 4), parent=os.getppid() if exit_with_parent else None)
    heartbeat.start()
    progress(f"{tuner_id}: pid {os.getpid()}, {len(data.train)} training images, joined the search at {oracle} in {search_dir}")
    try:
        tuner.search()
    except grpc.RpcError as exc:
        raise DistributedError(
            f"{tuner_id} lost the search's chief at {oracle} ({exc.code().name}: {exc.details()}). "
            "Fix: start the chief again with the same command (the search resumes), then this worker"
        ) from None
    finally:
        heartbeat.stop()
    progress(f"{tuner_id}: the search is over ({ran} trials run here)")
    return ran


def main(argv: list[str] | None = None) -> int:
    """`python -m tuning.distributed.worker CONFIG --oracle HOST:PORT --worker-id ID --search-dir DIR`: a worker
    that a local chief starts (tuning.distributed.chief.start_local_workers, which pins it to its cores at start),
    ending when its parent does. Its errors are one line on its log, as `imgclf tune --role worker` prints them."""
    parser = argparse.ArgumentParser(prog="python -m tuning.distributed.worker", description=main.__doc__)
    parser.add_argument("config", help="the search directory's config.yaml")
    parser.add_argument("--oracle", required=True, metavar="HOST:PORT")
    parser.add_argument("--worker-id", required=True)
    parser.add_argument("--search-dir", required=True)
    args = parser.parse_args(argv)
    from app.config import load_config
    from pipelines.errors import UserError

    try:
        work(load_config(args.config), args.oracle, args.worker_id, Path(args.search_dir), exit_with_parent=True)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
