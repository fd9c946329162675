"""A search over several processes or machines, on KerasTuner's own chief/worker engine.

KerasTuner runs a parallel search as one chief, which holds the oracle and answers over gRPC, and workers that run
trials through `OracleClient`. This package keeps that engine (its protocol, its oracle, its trial records) and
closes the gaps that make it hang or lose trials (keras-team/keras-tuner #915, #596, #990):

- Liveness. Every request names its worker (gRPC metadata) and workers send a heartbeat. A worker that exits (local
  workers) or stays silent for `tune.worker_timeout` seconds has its trial released: it runs again on another
  worker once (the oracle's own retry), then is recorded as failed with the reason. KerasTuner's chief waits
  forever for such a trial, and exits only in 20-second steps.
- Once. A report from a worker whose trial was released is ignored, so each trial is recorded once.
- One line for connection problems. A port in use is refused (gRPC binds with SO_REUSEPORT by default, so two
  chiefs would silently share a port). A chief that does not answer within `tune.connect_timeout` seconds is named
  with its address, instead of a client that waits an hour. A worker that loses its chief mid-search waits
  `CHIEF_WAIT_SECONDS` for it, so a chief started again takes up the same search with its workers still running.

protocol.py (addresses, worker names, errors), chief.py (the servicer, local worker processes, the chief's loop),
worker.py (the client, heartbeat and `work`; `python -m tuning.distributed.worker` for a local chief's workers).
"""

from tuning.distributed.chief import ChiefServicer, check_port, serve_search, split_cores, start_server
from tuning.distributed.protocol import DistributedError, check_worker_id, default_worker_id, parse_address
from tuning.distributed.worker import connect, work

__all__ = [
    "ChiefServicer",
    "DistributedError",
    "check_port",
    "check_worker_id",
    "connect",
    "default_worker_id",
    "parse_address",
    "serve_search",
    "split_cores",
    "start_server",
    "work",
]
