"""LR range test (Smith 2017; fastai's `lr_find`): train a few hundred steps while the learning rate grows
exponentially, record the loss, and suggest the rate where the smoothed loss falls fastest."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from app.atomic import atomic_write
from app.config import Config
from app.data import make_datasets, prepare_data
from app.fitting import build_model, compile_model, plan_stages, seed_everything, set_trainable
from app.plots import subplots


@dataclass
class LRFinderResult:
    learning_rates: list[float]
    losses: list[float]  # per batch
    smoothed: list[float]  # exponential moving average, bias-corrected
    suggested_lr: float  # steepest descent of the smoothed loss (before its minimum)
    min_loss_lr: float  # where the smoothed loss is lowest; a tenth of it is the other usual pick
    stopped_early: bool = False  # the loss diverged before the last step
    notes: list[str] = field(default_factory=list)


def suggest_lr(learning_rates: np.ndarray, smoothed: np.ndarray) -> float:
    """The rate at the steepest negative slope of loss vs log(rate), searched up to the loss minimum."""
    end = int(np.argmin(smoothed)) + 1
    skip = min(max(1, end // 10), max(end - 2, 0))  # the first steps are noise
    lrs, losses = np.log10(learning_rates[skip:end]), smoothed[skip:end]
    if len(lrs) < 3:
        return float(learning_rates[max(end - 1, 0)] / 10)
    return float(10 ** lrs[int(np.argmin(np.gradient(losses, lrs)))])


def find_lr(config: Config, steps: int = 100, start_lr: float = 1e-7, end_lr: float = 1.0, beta: float = 0.98, diverge: float = 4.0) -> LRFinderResult:
    """Range test on the training set of `config`, with the model and optimizer of its first stage."""
    if not 0 < start_lr < end_lr:
        raise ValueError(f"LR finder: need 0 < start_lr < end_lr, got {start_lr} and {end_lr}")
    if steps < 5:
        raise ValueError(f"LR finder: {steps} steps are too few for a range test. Fix: use at least 5 (100-300 is usual).")
    seed_everything(config.seed, config.train.deterministic)
    data = prepare_data(config, with_val=False)
    model = build_model(config, data.num_classes, data.multilabel)
    set_trainable(model, plan_stages(config, data.steps_per_epoch(config.data.batch_size))[0], config)
    schedule = keras.optimizers.schedules.ExponentialDecay(start_lr, steps, end_lr / start_lr)  # start * (end/start)^(step/steps)
    compile_model(model, config, schedule, data.multilabel)
    with make_datasets(config, data) as datasets:
        return _range_test(model, schedule, datasets.train.repeat(), data.class_weight, steps, beta, diverge)


def _range_test(model: keras.Model, schedule: Any, dataset: Any, weights: dict[int, float] | None, steps: int, beta: float, diverge: float) -> LRFinderResult:
    """Train batch by batch, recording the loss at each rate, until `steps` or divergence."""
    lrs, losses, smoothed = [], [], []
    average, best, stopped = 0.0, math.inf, False
    for step, (x, y) in enumerate(dataset.take(steps)):
        lr = float(schedule(step))
        loss = float(model.train_on_batch(x, y, class_weight=weights, return_dict=True)["loss"])
        if not math.isfinite(loss):
            stopped = True
            break
        average = beta * average + (1 - beta) * loss
        value = average / (1 - beta ** (step + 1))
        lrs.append(lr)
        losses.append(loss)
        smoothed.append(value)
        best = min(best, value)
        if step > 5 and value > diverge * best:
            stopped = True
            break
    if len(lrs) < 3:
        raise ValueError(f"LR finder: the loss diverged after {len(lrs)} steps. Fix: lower --start-lr.")
    lr_array, smooth_array = np.array(lrs), np.array(smoothed)
    notes = [] if stopped else ["the loss never diverged: try a larger --end-lr to see the whole curve"]
    return LRFinderResult(lrs, losses, smoothed, suggest_lr(lr_array, smooth_array), float(lr_array[int(np.argmin(smooth_array))]), stopped, notes)


def plot_lr_finder(result: LRFinderResult, path: str) -> None:
    """Loss (raw and smoothed) against learning rate on a log axis, the suggestion marked."""
    fig, ax = subplots(figsize=(7, 4))
    ax.plot(result.learning_rates, result.losses, alpha=0.3, label="loss per batch")
    ax.plot(result.learning_rates, result.smoothed, label="smoothed")
    ax.axvline(result.suggested_lr, color="red", ls="--", label=f"suggested {result.suggested_lr:.2e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    top = np.percentile(result.smoothed, 95) * 1.5
    ax.set_ylim(min(result.smoothed) * 0.9, top if np.isfinite(top) else None)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=100))
