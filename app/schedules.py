"""Learning-rate schedules by name (Keras schedule objects, so they serialize into .keras files)."""

from __future__ import annotations

import keras

SCHEDULES = ("constant", "cosine")


def make_schedule(name: str, learning_rate: float, total_steps: int, warmup_steps: int = 0) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """`constant`, or `cosine` decay to 0 over `total_steps`, after a linear warmup of `warmup_steps` from 0."""
    if name == "constant":
        return learning_rate
    if name == "cosine":
        if warmup_steps >= total_steps:
            raise ValueError(f"warmup ({warmup_steps} steps) must be shorter than training ({total_steps} steps). Fix: lower train.warmup_epochs.")
        if warmup_steps > 0:
            return keras.optimizers.schedules.CosineDecay(0.0, total_steps - warmup_steps, warmup_target=learning_rate, warmup_steps=warmup_steps)
        return keras.optimizers.schedules.CosineDecay(learning_rate, total_steps)
    raise ValueError(f"unknown schedule {name!r}. Fix: set train.schedule to one of {', '.join(SCHEDULES)}")
