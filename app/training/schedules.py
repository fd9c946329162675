"""Learning-rate schedules by name: Keras schedule objects (registered, so they serialize into `.keras` files).

With `lr` the configured learning rate, `e` the (fractional) epoch and `T` the training epochs after warmup:

    constant           lr
    step               lr * decay_rate ** floor(e / decay_epochs)             (defaults: 0.1, every T/3 epochs)
    exponential        lr * decay_rate ** (e / decay_epochs)                  (defaults: 0.5 per T/3 epochs)
    cosine             min_lr + (lr - min_lr) * (1 + cos(pi * e / T)) / 2     (Keras CosineDecay)
    cosine_restarts    cosine over decay_epochs, restarts cycle_mul x longer, peaks x cycle_decay (SGDR)
    one_cycle          cosine up from lr/div_factor to lr over pct_start of training, then down to
                       lr/div_factor/final_div_factor (Smith; PyTorch OneCycleLR)
    polynomial         (lr - min_lr) * (1 - e / T) ** power + min_lr          (Keras PolynomialDecay)
    ramp_sustain_step  linear ramp from warmup_lr over warmup_epochs, lr for sustain_epochs, then
                       (lr - min_lr) * decay_rate ** k + min_lr at whole epoch k after that (Kaggle TPU kernels)
    plateau            lr, multiplied by decay_rate after `patience` epochs without improvement (ReduceLROnPlateau)

Every schedule but one_cycle and plateau takes a linear warmup from `warmup_lr` over `warmup_epochs` first
(cosine through Keras' own `CosineDecay(warmup_target, warmup_steps)`).
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from app.config import ConfigError, ScheduleConfig

SCHEDULES = ("constant", "step", "exponential", "cosine", "cosine_restarts", "one_cycle", "polynomial", "ramp_sustain_step", "plateau")
Schedule = keras.optimizers.schedules.LearningRateSchedule


DEFAULT_DECAY_RATE = {"step": 0.1, "exponential": 0.5, "ramp_sustain_step": 0.8, "plateau": 0.1}


@keras.saving.register_keras_serializable(package="imgclf")
class LinearWarmup(Schedule):
    """Linear from `warmup_lr` to `target_lr` over `warmup_steps`, then `after` evaluated from step 0 again."""

    def __init__(self, after: Schedule | float, warmup_steps: int, warmup_lr: float, target_lr: float):
        self.after = after
        self.warmup_steps = int(warmup_steps)
        self.warmup_lr = float(warmup_lr)
        self.target_lr = float(target_lr)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warm = self.warmup_lr + (self.target_lr - self.warmup_lr) * step / self.warmup_steps
        later = self.after(ops.maximum(step - self.warmup_steps, 0.0)) if callable(self.after) else ops.convert_to_tensor(self.after, "float32")
        return ops.where(step < self.warmup_steps, warm, ops.cast(later, "float32"))

    def get_config(self) -> dict:
        after = keras.optimizers.schedules.serialize(self.after) if callable(self.after) else self.after
        return {"after": after, "warmup_steps": self.warmup_steps, "warmup_lr": self.warmup_lr, "target_lr": self.target_lr}

    @classmethod
    def from_config(cls, config: dict) -> LinearWarmup:
        config = dict(config)
        if isinstance(config["after"], dict):
            config["after"] = keras.optimizers.schedules.deserialize(config["after"])
        return cls(**config)


@keras.saving.register_keras_serializable(package="imgclf")
class OneCycle(Schedule):
    """Smith's one-cycle policy with cosine annealing (as PyTorch's OneCycleLR, two phases)."""

    def __init__(self, max_lr: float, total_steps: int, pct_start: float = 0.3, div_factor: float = 25.0, final_div_factor: float = 1e4):
        self.max_lr = float(max_lr)
        self.total_steps = int(total_steps)
        self.pct_start = float(pct_start)
        self.div_factor = float(div_factor)
        self.final_div_factor = float(final_div_factor)

    def __call__(self, step):
        step = ops.minimum(ops.cast(step, "float32"), float(self.total_steps))
        start = self.max_lr / self.div_factor
        end = start / self.final_div_factor
        rise = max(self.pct_start * self.total_steps, 1.0)
        fall = max(self.total_steps - rise, 1.0)

        def anneal(a, b, pct):
            return b + (a - b) / 2.0 * (1.0 + ops.cos(math.pi * ops.clip(pct, 0.0, 1.0)))

        return ops.where(step < rise, anneal(start, self.max_lr, step / rise), anneal(self.max_lr, end, (step - rise) / fall))

    def get_config(self) -> dict:
        return {k: getattr(self, k) for k in ("max_lr", "total_steps", "pct_start", "div_factor", "final_div_factor")}


@keras.saving.register_keras_serializable(package="imgclf")
class RampSustainStep(Schedule):
    """ "Ramp-up, sustain, step-down": the `lrfn` of many Kaggle Keras kernels, evaluated per whole epoch."""

    def __init__(self, start_lr: float, max_lr: float, min_lr: float, ramp_epochs: float, sustain_epochs: float, decay_rate: float, steps_per_epoch: int):
        self.start_lr = float(start_lr)
        self.max_lr = float(max_lr)
        self.min_lr = float(min_lr)
        self.ramp_epochs = float(ramp_epochs)
        self.sustain_epochs = float(sustain_epochs)
        self.decay_rate = float(decay_rate)
        self.steps_per_epoch = int(steps_per_epoch)

    def __call__(self, step):
        epoch = ops.floor(ops.cast(step, "float32") / self.steps_per_epoch)
        ramp = self.start_lr + (self.max_lr - self.start_lr) * epoch / max(self.ramp_epochs, 1e-12)
        decayed = (self.max_lr - self.min_lr) * ops.power(self.decay_rate, ops.maximum(epoch - self.ramp_epochs - self.sustain_epochs, 0.0)) + self.min_lr
        return ops.where(epoch < self.ramp_epochs, ramp, ops.where(epoch < self.ramp_epochs + self.sustain_epochs, self.max_lr, decayed))

    def get_config(self) -> dict:
        return {k: getattr(self, k) for k in ("start_lr", "max_lr", "min_lr", "ramp_epochs", "sustain_epochs", "decay_rate", "steps_per_epoch")}


def make_schedule(options: ScheduleConfig, learning_rate: float, epochs: int, steps_per_epoch: int) -> float | Schedule:
    """The schedule `options.name` for `epochs` epochs of `steps_per_epoch` optimizer steps, peaking at `learning_rate`.

    Returns a plain float for `constant` and `plateau` (so Keras' ReduceLROnPlateau can change it)."""
    o = options
    if o.name not in SCHEDULES:
        raise ConfigError(f"unknown schedule {o.name!r}. Fix: set the schedule name to one of {', '.join(SCHEDULES)}")
    if learning_rate <= 0 or epochs < 1 or steps_per_epoch < 1:
        raise ConfigError(f"schedule {o.name}: need learning_rate > 0 and at least one epoch of one step (got {learning_rate}, {epochs}, {steps_per_epoch})")
    total = epochs * steps_per_epoch
    warmup = int(round(o.warmup_epochs * steps_per_epoch))
    if o.warmup_epochs < 0 or (warmup >= total and o.warmup_epochs > 0):
        raise ConfigError(
            f"schedule {o.name}: warmup of {o.warmup_epochs:g} epochs is not shorter than the {epochs} epochs of training. "
            f"Fix: lower schedule.warmup_epochs below {epochs}, or train longer."
        )
    if warmup and o.name in ("one_cycle", "plateau"):
        raise ConfigError(f"schedule {o.name} has no separate warmup (one_cycle rises over pct_start). Fix: set schedule.warmup_epochs=0.")
    rate = o.decay_rate if o.decay_rate is not None else DEFAULT_DECAY_RATE.get(o.name)
    decay_epochs = o.decay_epochs if o.decay_epochs is not None else max(epochs - o.warmup_epochs, 1) / 3
    if decay_epochs <= 0:
        raise ConfigError(f"schedule {o.name}: decay_epochs must be > 0 (got {decay_epochs})")
    after = total - warmup  # steps left once warmup is over
    S = keras.optimizers.schedules
    if o.name in ("constant", "plateau"):
        schedule: float | Schedule = learning_rate
    elif o.name == "step":
        schedule = S.ExponentialDecay(learning_rate, max(int(round(decay_epochs * steps_per_epoch)), 1), rate, staircase=True)
    elif o.name == "exponential":
        schedule = S.ExponentialDecay(learning_rate, max(int(round(decay_epochs * steps_per_epoch)), 1), rate)
    elif o.name == "cosine":
        alpha = o.min_lr / learning_rate
        if warmup:  # Keras' own warmup: linear from initial_learning_rate to warmup_target, then cosine
            return S.CosineDecay(o.warmup_lr, after, alpha=alpha, warmup_target=learning_rate, warmup_steps=warmup)
        return S.CosineDecay(learning_rate, total, alpha=alpha)
    elif o.name == "cosine_restarts":
        first = max(int(round(decay_epochs * steps_per_epoch)), 1)
        schedule = S.CosineDecayRestarts(learning_rate, first, t_mul=o.cycle_mul, m_mul=o.cycle_decay, alpha=o.min_lr / learning_rate)
    elif o.name == "one_cycle":
        return OneCycle(learning_rate, total, o.pct_start, o.div_factor, o.final_div_factor)
    elif o.name == "polynomial":
        schedule = S.PolynomialDecay(learning_rate, after, end_learning_rate=o.min_lr, power=o.power)
    else:  # ramp_sustain_step: its ramp is the warmup
        return RampSustainStep(o.warmup_lr, learning_rate, o.min_lr, o.warmup_epochs, o.sustain_epochs, rate, steps_per_epoch)
    if warmup:
        return LinearWarmup(schedule, warmup, o.warmup_lr, learning_rate)
    return schedule


def lr_values(schedule: float | Schedule, steps: int, points: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """(steps, learning rates) at up to `points` evenly spaced steps of 0 .. steps-1, for plots and tests."""
    at = np.unique(np.linspace(0, steps - 1, min(steps, points)).round().astype(int))
    if not callable(schedule):
        return at, np.full(len(at), float(schedule))
    return at, np.array([float(schedule(int(s))) for s in at])
