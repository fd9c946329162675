"""`SearchTuner`: KerasTuner's BaseTuner running each trial through the toolkit's fit path.

KerasTuner keeps what it is good at: the oracle (proposals, seeds, retries), trial records and the resumable state
in the search directory (`oracle.json`, `trial_*/trial.json`). Each trial then costs what fitting the model costs
and little more: the data were prepared once for the whole search, the best weights stay in memory (no checkpoint
file per epoch), no callbacks are deep-copied and TensorBoard is written once per trial, from its history.
"""

from __future__ import annotations

import gc
import json
import logging
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import keras_tuner as kt

from app.atomic import write_json
from app.config import Config
from app.data import PreparedData
from app.training.callbacks import EpochTimer, TimeLimit
from app.training.fitting import seed_everything
from tuning.compat import base_tuner
from tuning.hypermodels import HYPERBAND_KEYS, ConfigHyperModel
from tuning.stopping import Curve, MedianStop

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"  # per trial: hyperparameters, config facts, metrics, history, seconds
DEADLINE_FILE = "deadline.json"  # when tune.max_minutes runs out, for the workers of a distributed search
WEIGHTS_FILE = "model.weights.h5"  # per trial, Hyperband only: what the next round continues from


def planned_epochs(config: Config) -> int:
    """The epochs a trial's config trains, both stages (a promotion continues from its parent's last)."""
    return config.train.epochs + config.finetune.epochs


class _History(EpochTimer):
    """Every epoch's logs and wall time, kept for result.json and TensorBoard (the times size a final run)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, float]] = []

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        super().on_epoch_end(epoch, logs)
        self.rows.append({"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}})


class SearchTuner(base_tuner.BaseTuner):
    """Runs trials of `hypermodel` proposed by `oracle` in `search_dir`, on data prepared by `data_for(config)`."""

    def __init__(
        self,
        oracle: kt.Oracle,
        hypermodel: ConfigHyperModel,
        search_dir: Path,
        data_for: Callable[[Config], PreparedData],
        on_trial_done: Callable[[SearchTuner, kt.engine.trial.Trial], None] | None = None,
        max_seconds: float | None = None,
    ):
        self.search_dir = Path(search_dir)
        self.data_for = data_for
        self.on_trial_done = on_trial_done
        self.max_seconds = max_seconds
        self.seconds_before = 0.0  # search time spent before this process (resumed searches)
        self._started = time.perf_counter()
        super().__init__(oracle, hypermodel, directory=str(self.search_dir.parent), project_name=self.search_dir.name)
        oracle.verbose = 0  # one line per trial is printed by on_trial_done instead of KerasTuner's tables
        oracle.check = self._check
        oracle.seconds_left = self.seconds_left
        oracle.estimate = self.estimated_seconds
        if hypermodel.base.tune.reference_trial:
            oracle.reference = self.reference_values
        self._results: dict[str, dict[str, Any]] = {}  # result.json of finished trials, read once

    # -- state -------------------------------------------------------------------------------------------
    def elapsed(self) -> float:
        return self.seconds_before + time.perf_counter() - self._started

    def seconds_left(self) -> float | None:
        """Seconds of tune.max_minutes left, or None without a limit."""
        ends_at = self.ends_at()
        return None if ends_at is None else ends_at - time.time()

    def ends_at(self) -> float | None:
        """When the search's time is up (a `time.time()` instant), or None without a limit. The process that keeps
        the clock (one process, or the chief) knows it and publishes it in the search directory; a worker reads it."""
        if self.max_seconds is not None:
            return time.time() + self.max_seconds - self.elapsed()
        path = self.search_dir / DEADLINE_FILE
        try:
            ends_at = json.loads(path.read_text())["ends_at"] if path.is_file() else None
        except (ValueError, KeyError, OSError):  # being replaced this instant: the next epoch reads it again
            return None
        return None if ends_at is None else float(ends_at)

    def publish_deadline(self) -> None:
        """Write when the search's time is up, for the workers' trials to stop there too (None: no limit)."""
        write_json(self.search_dir / DEADLINE_FILE, {"ends_at": self.ends_at() if self.max_seconds is not None else None})

    def get_state(self) -> dict[str, Any]:
        return {"seconds": round(self.elapsed(), 1)}

    def set_state(self, state: dict[str, Any]) -> None:
        self.seconds_before = float(state.get("seconds", 0.0))

    def _populate_initial_space(self) -> None:
        """Declare the space, with every conditional branch made active once, by mapping hyperparameters to a
        config: no model is built (KerasTuner would build one per branch)."""
        hp = self.oracle.get_space()
        self.hypermodel.declare_hyperparameters(hp)
        self.oracle.update_space(hp)
        seen: list[Any] = []
        while True:
            pending = [scope for scope in hp.inactive_scopes if scope not in seen]
            if not pending:
                break
            seen.append(pending[0])
            hp = self.oracle.get_space()
            for condition in pending[0]:
                hp.values[condition.name] = condition.values[0]
            hp.ensure_active_values()
            self.hypermodel.declare_hyperparameters(hp)
            self.oracle.update_space(hp)

    def hyperparameters_of(self, values: dict[str, Any]) -> kt.HyperParameters:
        hp = self.oracle.get_space()
        hp.values = dict(values)
        hp.ensure_active_values()
        return hp

    def reference_values(self) -> dict[str, Any] | None:
        """The config's own network and training as a trial's values, or None when the space does not hold them."""
        return self.hypermodel.reference_values(self.oracle.get_space())

    def _check(self, values: dict[str, Any]) -> str | None:
        return self.hypermodel.problem(self.hyperparameters_of(values))

    def trial_dir(self, trial_id: str) -> Path:
        return Path(self.get_trial_dir(trial_id))

    # -- trials --------------------------------------------------------------------------------------------
    def run_trial(self, trial: kt.engine.trial.Trial, *args: Any, **kwargs: Any) -> dict[str, float]:
        started = time.perf_counter()
        hp = trial.hyperparameters
        config = self.hypermodel.config_for(hp)
        keras.backend.clear_session(free_memory=False)  # the last trial's graphs and layer names go ...
        gc.collect()  # ... and its model, in a collection that only scans what was made since the search began
        seed_everything(config.seed, config.train.deterministic)  # each trial starts from the same seed: comparable
        try:
            data = self.data_for(config)
        except ValueError as exc:  # DataError, ConfigError: the user's to fix, not a failed trial to retry
            raise kt.errors.FatalValueError(str(exc)) from None
        model = self.hypermodel.build(hp)
        if "tuner/trial_id" in hp.values:  # Hyperband: continue the trial this one was promoted from
            model.load_weights(self.trial_dir(hp.values["tuner/trial_id"]) / WEIGHTS_FILE)
        history = _History()
        time_limit = TimeLimit(self.ends_at)
        median = self._median_stop(config, hp)
        results = self.hypermodel.fit(hp, model, data, callbacks=[history, *median], time_limit=time_limit)
        stopped = "time limit" if time_limit.stopped_epoch else ("median rule" if median and median[0].stopped_epoch else None)
        if "tuner/epochs" in hp.values:
            model.save_weights(self.trial_dir(trial.trial_id) / WEIGHTS_FILE)
        facts = {
            "params": int(model.count_params()),
            "image_size": config.data.image_size,
            **self.hypermodel.geometry_facts(config),
            "seconds": round(time.perf_counter() - started, 2),
            "epoch_cost": self.hypermodel.epoch_cost(config),
            "stopped": stopped,
        }
        if "tuner/round" in hp.values:  # asha, hyperband: the rung, and the epochs it trains up to
            facts.update(rung=int(hp.values["tuner/round"]), rung_epochs=config.train.epochs)  # the network's own epochs
        if self._is_worker():  # a distributed search: which worker ran it
            facts["worker"] = self.tuner_id
        values = {k: v for k, v in hp.values.items() if k not in HYPERBAND_KEYS and hp.is_active(k)}
        write_json(
            self.trial_dir(trial.trial_id) / RESULT_FILE,
            {"trial": trial.trial_id, "hyperparameters": values, **facts, "metrics": results, "history": history.rows, "epoch_seconds": history.seconds},
        )
        del model
        return results

    # -- what finished trials measured -----------------------------------------------------------------------
    def finished_results(self) -> list[dict[str, Any]]:
        """result.json of every completed trial (read once each)."""
        for trial_id, trial in self.oracle.trials.items():
            path = self.trial_dir(trial_id) / RESULT_FILE
            if trial_id not in self._results and trial.status == "COMPLETED" and path.is_file():
                self._results[trial_id] = json.loads(path.read_text())
        return [self._results[t] for t in sorted(self._results)]

    def estimated_seconds(self, values: dict[str, Any]) -> float | None:
        """What a trial of `values` would take: its epochs times its epoch cost times the seconds per unit of cost
        measured by finished trials (median), plus their median fixed time (building, tracing, evaluation). None
        before any trial has finished."""
        done = [r for r in self.finished_results() if r.get("epoch_cost") and r.get("epoch_seconds")]
        if not done:
            return None
        pace = statistics.median(statistics.median(r["epoch_seconds"][1:] or r["epoch_seconds"]) / r["epoch_cost"] for r in done)
        fixed = statistics.median(max(0.0, r["seconds"] - sum(r["epoch_seconds"])) for r in done)
        hp = self.hyperparameters_of(values)
        config = self.hypermodel.config_for(hp)
        epochs = planned_epochs(config) - self.hypermodel.epoch_span(hp)[0]
        return fixed + epochs * pace * self.hypermodel.epoch_cost(config)

    def _median_stop(self, config: Config, hp: kt.HyperParameters) -> list[MedianStop]:
        """tune.median_stop (not for asha and hyperband, whose rungs already stop the worse trials): the callback,
        which compares this trial with the finished ones at the same share of their planned epochs."""
        if not config.tune.median_stop or "tuner/epochs" in hp.values:
            return []
        monitor = self.hypermodel.monitor()
        curves = []
        for r in self.finished_results():
            planned = planned_epochs(self.hypermodel.config_for(self.hyperparameters_of(r["hyperparameters"])))
            curves.append(Curve([row[monitor] for row in r["history"] if monitor in row], planned))
        return [MedianStop(monitor, curves, planned_epochs(config))]

    def on_trial_end(self, trial: kt.engine.trial.Trial) -> None:
        super().on_trial_end(trial)  # the oracle records the score and saves its state
        if self.on_trial_done is not None:
            self.on_trial_done(self, self.oracle.get_trial(trial.trial_id))

    def on_search_begin(self) -> None:
        self.save()  # the tuner's state exists from the start: a search killed in its first trial resumes too
        if not self._is_worker():
            self.publish_deadline()
        # Everything alive now (TensorFlow, Keras, the prepared images) lives through the search: moving it out of
        # the collector's sight makes the collection between trials cost milliseconds instead of ~0.3 s.
        gc.collect()
        gc.freeze()

    def on_search_end(self) -> None:
        gc.unfreeze()
