"""KerasTuner's private internals the toolkit relies on, in one place, behind a version guard.

KerasTuner 1.4 exposes no public seam for what the toolkit changes: its distributed engine (chief servicer, client,
protocol buffers), the trial records, and a few methods of its tuner and oracles that are overridden or called.
Every such name is imported or listed here, and tests/test_compat.py checks each one (existence and signature):
an upgrade that changes one fails there, loudly. pyproject bounds KerasTuner to the tested minor version.
"""

from __future__ import annotations

import json

import keras_tuner as kt
from keras_tuner.src import protos
from keras_tuner.src import utils as kt_utils
from keras_tuner.src.distribute import oracle_chief, oracle_client
from keras_tuner.src.engine import base_tuner, conditions
from keras_tuner.src.engine import trial as trial_module

from app.atomic import write_text

__all__ = ["base_tuner", "oracle_chief", "oracle_client", "protos", "trial_module"]

TESTED = ((1, 4, 8), (1, 5))  # [lowest, highest) KerasTuner versions whose internals the contract tests check

# Private methods the toolkit's subclasses override or call, by KerasTuner class: the contract tests check that each
# still exists with these parameters (self excluded).
OVERRIDDEN = {
    (base_tuner.BaseTuner, "_populate_initial_space"): (),
    (kt.oracles.RandomSearchOracle, "_random_values"): (),
    (kt.Oracle, "_random_values"): (),  # ASHAOracle draws its new networks with the base oracle's own
    (kt.oracles.BayesianOptimizationOracle, "_random_populate_space"): (),
    (kt.oracles.BayesianOptimizationOracle, "_vectorize_trials"): (),
    (kt.oracles.BayesianOptimizationOracle, "_vector_to_values"): ("vector",),
    (kt.oracles.HyperbandOracle, "_random_trial"): ("trial_id", "bracket"),
    (kt.Oracle, "_save_trial"): ("trial",),
}
# Private attributes read or changed: an oracle's retry queue (trials to run again), the order trials ended in, the
# trials in flight per tuner, and what `OracleClient.__init__` sets (the worker's client is built without it).
ORACLE_ATTRIBUTES = ("_retry_queue", "end_order", "ongoing_trials", "tuner_ids", "trials")
CLIENT_ATTRIBUTES = ("_oracle", "stub", "tuner_id", "multi_worker", "should_report")
CONSECUTIVE_FAILURES = "consecutive failures"  # in KerasTuner's RuntimeError when too many trials failed in a row


def version_problem(version: str = kt.__version__) -> str | None:
    """Why this KerasTuner is outside the tested range, or None."""
    parts = tuple(int(part) for part in version.split(".")[:3] if part.isdigit())
    if TESTED[0] <= parts < TESTED[1]:
        return None
    return (
        f"KerasTuner {version} is installed, but imgclf relies on internals of KerasTuner 1.4.8 (tuning/compat.py). Fix: pip install 'keras-tuner>=1.4.8,<1.5'"
    )


def check_version() -> None:
    problem = version_problem()
    if problem:
        raise ImportError(problem)


check_version()

# KerasTuner 1.4.8 prints the first value of every condition it serialises for gRPC (a debugging print left in
# `conditions.Parent.to_proto`): one line per conditional hyperparameter per request. Silenced for that module only.
conditions.print = lambda *args, **kwargs: None


def save_json_atomically(path: str, obj: object) -> str:
    """KerasTuner's `utils.save_json`, written beside the file and renamed onto it: its own opens the file and writes
    in place, so a search killed mid-write left a trial.json or oracle.json that is empty or cut short, and the same
    command could not resume (and a reader could see half a record)."""
    text = json.dumps(obj)
    write_text(path, text)
    return text


# Every KerasTuner record (trial.json, oracle.json, tuner0.json) goes through `utils.save_json`, looked up on the
# module at each call (Stateful.save, Trial.save): replaced here, once, for all of them.
kt_utils.save_json = save_json_atomically


def consecutive_failures(exc: BaseException) -> str | None:
    """The last line of KerasTuner's "Number of consecutive failures exceeded the limit" error (the last trial's
    error), or None when `exc` is another error: the one place that reads that message."""
    if not isinstance(exc, RuntimeError) or CONSECUTIVE_FAILURES not in str(exc):
        return None
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1] if lines else str(exc)


def retry_queue(oracle: kt.Oracle) -> list[str]:
    """The ids of trials the oracle will run again (each failed or released trial runs once more)."""
    return oracle._retry_queue


def save_trial(oracle: kt.Oracle, trial: trial_module.Trial) -> None:
    """Write a trial's record (trial.json) after the toolkit changed it outside the oracle's own methods."""
    oracle._save_trial(trial)


def init_client(client: oracle_client.OracleClient, oracle: kt.Oracle, stub: object, tuner_id: str) -> None:
    """What `OracleClient.__init__` sets, set without it: its __init__ reads the KERASTUNER_* environment and opens a
    channel of its own, while the toolkit's worker brings a channel that names it and bounds each call."""
    client._oracle = oracle
    client.stub = stub
    client.tuner_id = tuner_id
    client.multi_worker = False
    client.should_report = True
