"""LR range test (Smith 2017; fastai's `lr_find`): train a few hundred steps while the learning rate grows
exponentially, record the loss, and suggest a rate from the longest descent of the smoothed loss (fastai's
`valley`), cross-checked against a tenth of the rate where the loss is lowest."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd

from app.atomic import atomic_write, write_json, write_text
from app.config import Config, dump_config
from app.data import make_datasets, prepare_data
from app.plots import subplots
from app.resumable import CONFIG_FILE, fresh_dir
from app.training.fitting import Stage, build_model, compile_model, plan_stages, seed_everything, set_trainable
from pipelines.errors import OptionError


@dataclass
class LRFinderResult:
    learning_rates: list[float]
    losses: list[float]  # per batch
    smoothed: list[float]  # exponential moving average, bias-corrected
    suggested_lr: float  # in the longest descent of the smoothed loss (fastai's valley)
    min_loss_lr: float  # where the smoothed loss is lowest; a tenth of it is the other usual pick
    stopped_early: bool = False  # the loss diverged before the last step
    notes: list[str] = field(default_factory=list)


def suggest_lr(learning_rates: np.ndarray, smoothed: np.ndarray) -> float:
    """fastai's `valley`: the longest stretch over which the smoothed loss keeps falling (the longest decreasing
    subsequence), and the rate half-way into its first two thirds, where the descent is steady.

    The first tenth of the steps is left out, as fastai does: at tiny rates the loss only wanders, and a slope
    measured there once gave 5e-7 on a curve that fell steadily from 1e-4 to 1e-1 (the steepest-descent pick).
    The last steps are left out too when the loss diverged (the test stopped on them)."""
    losses = np.asarray(smoothed, dtype=float)
    skip = len(losses) // 10
    lrs, losses = np.asarray(learning_rates, dtype=float)[skip:], losses[skip:]
    if len(losses) < 3:
        return float(lrs[int(np.argmin(losses))] / 10)
    longest = np.ones(len(losses), dtype=int)  # longest decreasing run of points ending at i
    for i in range(1, len(losses)):
        earlier = longest[:i][losses[:i] > losses[i]]
        if earlier.size:
            longest[i] = earlier.max() + 1
    end = int(np.argmax(longest))
    start = end - int(longest[end])  # as fastai: the valley's length counts back from its end
    third = (end - start) / 3
    return float(lrs[max(start + int(third) + int(third / 2), 0)])


def find_lr(config: Config, steps: int = 100, start_lr: float = 1e-7, end_lr: float = 1.0, beta: float = 0.98, diverge: float = 4.0) -> LRFinderResult:
    """Range test on the training set of `config`, with the model and optimizer of its first stage."""
    if not 0 < start_lr < end_lr:
        raise OptionError(f"LR finder: need 0 < start_lr < end_lr, got {start_lr} and {end_lr}")
    if steps < 5:
        raise OptionError(f"LR finder: {steps} steps are too few for a range test. Fix: use at least 5 (100-300 is usual).")
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
        raise OptionError(f"LR finder: the loss diverged after {len(lrs)} steps. Fix: lower --start-lr.")
    lr_array, smooth_array = np.array(lrs), np.array(smoothed)
    kept = len(lrs) - 5 if stopped and len(lrs) > 15 else len(lrs)  # the last steps before divergence are its start
    suggested = suggest_lr(lr_array[:kept], smooth_array[:kept])
    min_loss_lr = float(lr_array[int(np.argmin(smooth_array))])
    notes = [] if stopped else ["the loss never diverged: try a larger --end-lr to see the whole curve"]
    if not min_loss_lr / 300 <= suggested <= min_loss_lr:  # valley picks early in the descent: 1/100 of the minimum is usual
        notes.append(f"the suggestion is far from a tenth of the loss minimum ({min_loss_lr / 10:.2g}): look at the plot before choosing")
    return LRFinderResult(lrs, losses, smoothed, suggested, min_loss_lr, stopped, notes)


def plot_lr_finder(result: LRFinderResult, path: str) -> None:
    """Loss (raw and smoothed) against learning rate on a log axis, the suggestion marked."""
    fig, ax = subplots(figsize=(7, 4))
    ax.plot(result.learning_rates, result.losses, alpha=0.3, label="loss per batch")
    ax.plot(result.learning_rates, result.smoothed, label="smoothed")
    ax.axvline(result.suggested_lr, color="red", ls="--", label=f"suggested {result.suggested_lr:.2e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    losses = np.asarray(result.losses + result.smoothed, dtype=float)  # every per-batch loss stays in view
    low, high = float(losses.min()), float(losses.max())
    ax.set_ylim(low - 0.05 * (high - low), high + 0.05 * (high - low))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=100))


def write_lr_finder(config: Config, result: LRFinderResult, **settings: Any) -> Path:
    """A fresh `runs/<timestamp>-lr_finder-<model>/` with config.yaml, lr_finder.csv (rate, loss, smoothed loss per
    step), lr_finder.json (the suggestion, the minimum, notes, and `settings` such as steps) and lr_finder.png."""
    run_dir = fresh_dir(config.output.dir, None, f"lr_finder-{config.model.name}")
    write_text(run_dir / CONFIG_FILE, dump_config(config))
    frame = pd.DataFrame({"learning_rate": result.learning_rates, "loss": result.losses, "smoothed_loss": result.smoothed})
    atomic_write(run_dir / "lr_finder.csv", lambda p: frame.to_csv(p, index=False))
    summary = {k: v for k, v in dataclasses.asdict(result).items() if k not in ("learning_rates", "losses", "smoothed")}
    write_json(run_dir / "lr_finder.json", {**summary, **settings})
    plot_lr_finder(result, str(run_dir / "lr_finder.png"))
    return run_dir


def plot_planned_lr(config: Config, output: str | Path, steps_per_epoch: int | None = None, force: bool = False) -> tuple[list[Stage], int]:
    """Draw the learning rate per step of every stage the config plans, before any training: (the stages, the steps
    per epoch, by default from the size of the configured training set, whose files are listed, not decoded)."""
    from app.atomic import check_output
    from app.data import load_train_val
    from app.plots import plot_lr_schedule

    output = check_output(output, force=force)
    if steps_per_epoch is None:
        train_set, _ = load_train_val(config.data, config.seed)
        steps_per_epoch = math.ceil(len(train_set) / config.data.batch_size)
    stages = plan_stages(config, steps_per_epoch)
    plot_lr_schedule([(s.name, s.lr, s.epochs) for s in stages], steps_per_epoch, Path(output))
    return stages, steps_per_epoch
