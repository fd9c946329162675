"""What the chief and its workers agree on: the address, worker names, request metadata, and the errors users see."""

from __future__ import annotations

import os
import re
import socket

from pipelines.errors import UserError

TUNER_ID_KEY = "imgclf-tuner-id"  # gRPC metadata: which worker sent a request
CHIEF_WAIT_SECONDS = 600.0  # how long a worker's call waits for a chief that went away (a restart) before it gives up
HEARTBEAT_REQUEST = 0  # GetBestTrials(num_trials=0): the heartbeat, cheap for the chief and told apart from real asks


class DistributedError(UserError, ValueError):
    """A distributed search that cannot start or go on (address, port, chief out of reach)."""


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
