"""KerasTuner's oracles, made to propose only networks worth training.

Each oracle (random, hyperband, bayesian, grid) is KerasTuner's own with one addition: a proposal is first checked
by `check(values) -> reason | None` (the HyperModel's shape and schedule arithmetic, milliseconds). A failing one is
never turned into a trial: it is recorded with its reason (`rejected`, saved with the oracle's state), marked as
tried so that it is not proposed again, and replaced: by another random draw, by the grid's next combination, or,
for a Gaussian-process proposal, by a random valid point. `max_trials` therefore counts trained trials only.
The oracle also stops proposing once the search's time budget is spent (`time_left`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras_tuner as kt
from keras_tuner.src.engine import trial as trial_module

from app.callbacks import monitor_mode
from app.config import ConfigError, TuneConfig

MAX_REJECTED_IN_A_ROW = 2000


class ValidProposals:
    """Mixin for a KerasTuner Oracle: proposals pass `check` before they become trials."""

    check: Callable[[dict[str, Any]], str | None] = staticmethod(lambda values: None)
    time_left: Callable[[], bool] = staticmethod(lambda: True)

    def _init_valid_proposals(self) -> None:
        self.rejected: list[dict[str, Any]] = []

    def _reject(self, values: dict[str, Any], reason: str) -> None:
        self.rejected.append({"values": {k: v for k, v in values.items() if not k.startswith("tuner/")}, "reason": reason})
        self._tried_so_far.add(self._compute_values_hash(values))

    def _random_values(self) -> dict[str, Any] | None:
        for _ in range(MAX_REJECTED_IN_A_ROW):
            values = super()._random_values()
            if values is None:
                return None
            reason = self.check(self._as_trained(values))
            if reason is None:
                return values
            self._reject(values, reason)
        raise ConfigError(
            f"tune.space: {MAX_REJECTED_IN_A_ROW} proposals in a row were networks not worth training (last: {self.rejected[-1]['reason']}). "
            "Fix: fewer blocks or strides of 1, or a larger data.image_size, or a smaller tune.min_feature_size"
        )

    def _as_trained(self, values: dict[str, Any]) -> dict[str, Any]:
        """The values as the trial will run them (Hyperband adds its round's epochs)."""
        return values

    def _replacement(self, values: dict[str, Any]) -> dict[str, Any] | None:
        """Another proposal in place of an invalid one (a random valid draw unless the oracle knows better)."""
        return self._random_values()

    def populate_space(self, trial_id: str) -> dict[str, Any]:
        if not self.time_left():
            return {"status": trial_module.TrialStatus.STOPPED, "values": None}
        return self._checked(super().populate_space(trial_id))

    def _checked(self, response: dict[str, Any]) -> dict[str, Any]:
        """The oracle's response, with an invalid proposal replaced."""
        values = response.get("values")
        while response.get("status") == trial_module.TrialStatus.RUNNING and values:
            reason = self.check(values)
            if reason is None:
                break
            self._reject(values, reason)
            values = self._replacement(values)
            response = {"status": trial_module.TrialStatus.RUNNING if values else trial_module.TrialStatus.STOPPED, "values": values}
        return response

    def get_state(self) -> dict[str, Any]:
        return {**super().get_state(), "rejected": self.rejected}

    def set_state(self, state: dict[str, Any]) -> None:
        super().set_state(state)
        self.rejected = list(state.get("rejected", []))


class RandomOracle(ValidProposals, kt.oracles.RandomSearchOracle):
    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._init_valid_proposals()


class BayesianOracle(ValidProposals, kt.oracles.BayesianOptimizationOracle):
    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._init_valid_proposals()


class HyperbandOracle(ValidProposals, kt.oracles.HyperbandOracle):
    def __init__(self, max_trials: int | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.max_trials = max_trials  # KerasTuner's Hyperband has no max_trials: create_trial stops at this many
        self._init_valid_proposals()

    def _checked(self, response: dict[str, Any]) -> dict[str, Any]:
        # New brackets draw through _random_values (checked there); a promotion continues a trial already trained.
        return response

    def _random_trial(self, trial_id: str, bracket: dict[str, Any]) -> dict[str, Any]:
        self._round_epochs = self._get_epochs(bracket["bracket_num"], 0)
        return super()._random_trial(trial_id, bracket)

    def _as_trained(self, values: dict[str, Any]) -> dict[str, Any]:
        return {**values, "tuner/epochs": getattr(self, "_round_epochs", self.max_epochs), "tuner/initial_epoch": 0}


class GridOracle(ValidProposals, kt.oracles.GridSearchOracle):
    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._init_valid_proposals()

    def _as_trained(self, values: dict[str, Any]) -> dict[str, Any]:
        """The values as the trial will run them (Hyperband adds its round's epochs)."""
        return values

    def _replacement(self, values: dict[str, Any]) -> dict[str, Any] | None:
        return self._get_next_combination(values)  # the grid walks on past invalid combinations


def make_oracle(tune: TuneConfig, seed: int, max_epochs: int) -> kt.Oracle:
    """The oracle named by tune.tuner, minimising or maximising tune.objective as its name says."""
    objective = kt.Objective(tune.objective, direction=monitor_mode(tune.objective))
    common = {"objective": objective, "seed": seed, "max_retries_per_trial": 1, "max_consecutive_failed_trials": 3}
    if tune.tuner == "random":
        return RandomOracle(max_trials=tune.max_trials, **common)
    if tune.tuner == "bayesian":
        return BayesianOracle(max_trials=tune.max_trials, num_initial_points=tune.initial_points, **common)
    if tune.tuner == "hyperband":
        return HyperbandOracle(max_trials=tune.max_trials, max_epochs=max_epochs, factor=tune.hyperband_factor, **common)
    return GridOracle(max_trials=tune.max_trials, **common)
