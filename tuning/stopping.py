"""The median stopping rule (`tune.median_stop`), for random, Bayesian and grid search.

Golovin et al., "Google Vizier" (KDD 2017): a trial whose best score after epoch k is worse than the median of the
best scores that the finished trials had reached by their epoch k is stopped there. It needs no rungs and no
change to the proposals; ASHA and Hyperband judge their trials by rungs instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np

from app.training.callbacks import monitor_mode

MIN_TRIALS = 3  # finished trials that reached epoch k before the rule judges at epoch k
FIRST_EPOCH = 2  # the first epoch judged: the first one is noisy (the model is still being traced and warmed up)


class MedianStop(keras.callbacks.Callback):
    """Stop the trial at the end of an epoch where its best `monitor` so far is worse than the median of `curves`'
    best values by the same epoch (`curves`: one list of per-epoch values per finished trial)."""

    def __init__(self, monitor: str, curves: Sequence[Sequence[float]], first_epoch: int = FIRST_EPOCH):
        super().__init__()
        self.monitor = monitor
        self.minimise = monitor_mode(monitor) == "min"
        self.curves = [np.asarray(c, dtype=float) for c in curves if len(c)]
        self.first_epoch = first_epoch
        self.best: float | None = None
        self.stopped_epoch: int | None = None  # 1-based

    def _best(self, values: np.ndarray) -> float:
        finite = values[np.isfinite(values)]
        if not len(finite):
            return np.inf if self.minimise else -np.inf
        return float(finite.min() if self.minimise else finite.max())

    def median_at(self, epoch: int) -> float | None:
        """The median of the finished trials' best values by `epoch` (1-based), or None with too few of them."""
        reached = [self._best(c[:epoch]) for c in self.curves if len(c) >= epoch]
        return float(np.median(reached)) if len(reached) >= MIN_TRIALS else None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        value = (logs or {}).get(self.monitor)
        if value is not None and np.isfinite(value):
            self.best = float(value) if self.best is None else (min if self.minimise else max)(self.best, float(value))
        if epoch + 1 < self.first_epoch or self.best is None:
            return
        median = self.median_at(epoch + 1)
        if median is not None and (self.best > median if self.minimise else self.best < median):
            self.model.stop_training = True
            self.stopped_epoch = epoch + 1
