"""The median stopping rule (`tune.median_stop`), for random, Bayesian and grid search.

Golovin et al., "Google Vizier" (KDD 2017): a trial whose best score after epoch k is worse than the median of the
best scores that the finished trials had reached by their epoch k is stopped there. It needs no rungs and no
change to the proposals; ASHA and Hyperband judge their trials by rungs instead.

Trials are compared at the same share of their own budget, not at the same epoch: under `tune.trial_budget:
compute` a network a quarter as costly plans 4 times the epochs, and its epoch k cost what a quarter of the
reference's did. Compared by epoch, a cheap network would be judged against costly ones that had spent 4 times
its compute by then. Under `epochs` every trial plans the same epochs, and the share is the epoch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import keras
import numpy as np

from app.training.callbacks import monitor_mode

MIN_TRIALS = 3  # finished trials that reached the same share of their budget before the rule judges there
FIRST_EPOCH = 2  # the first epoch judged: the first one is noisy (the model is still being traced and warmed up)


class Curve(NamedTuple):
    """A finished trial's `monitor` after each epoch it trained, and the epochs it had planned (its budget)."""

    values: Sequence[float]
    planned: int


class MedianStop(keras.callbacks.Callback):
    """Stop the trial at the end of an epoch where its best `monitor` so far is worse than the median of the finished
    trials' (`curves`) best values by the same share of their planned epochs (this trial plans `planned`)."""

    def __init__(self, monitor: str, curves: Sequence[Curve], planned: int, first_epoch: int = FIRST_EPOCH):
        super().__init__()
        self.monitor = monitor
        self.minimise = monitor_mode(monitor) == "min"
        self.curves = [(np.asarray(c.values, dtype=float), c.planned) for c in curves if len(c.values)]
        self.planned = planned
        self.first_epoch = first_epoch
        self.best: float | None = None
        self.stopped_epoch: int | None = None  # 1-based

    def _best(self, values: np.ndarray) -> float:
        finite = values[np.isfinite(values)]
        if not len(finite):
            return np.inf if self.minimise else -np.inf
        return float(finite.min() if self.minimise else finite.max())

    def median_at(self, epoch: int) -> float | None:
        """The median of the finished trials' best values by the same share of their budget as `epoch` (1-based) is
        of this trial's, or None with too few of them (a trial counts once it had trained that far)."""
        reached = []
        for values, planned in self.curves:
            theirs = math.floor(epoch * planned / self.planned + 1e-9)  # their epoch that cost no more than ours
            if theirs >= 1 and len(values) >= theirs:
                reached.append(self._best(values[:theirs]))
        return float(np.median(reached)) if len(reached) >= MIN_TRIALS else None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        value = (logs or {}).get(self.monitor)
        if value is not None and np.isfinite(value):
            self.best = float(value) if self.best is None else (min if self.minimise else max)(self.best, float(value))
        if epoch + 1 < self.first_epoch or epoch + 1 >= self.planned or self.best is None:  # stopping at the last saves nothing
            return
        median = self.median_at(epoch + 1)
        if median is not None and (self.best > median if self.minimise else self.best < median):
            self.model.stop_training = True
            self.stopped_epoch = epoch + 1
