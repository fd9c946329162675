"""Training curves as a PNG (matplotlib, off-screen), and `subplots`, the figure factory every plot here uses."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.figure import Figure

from app.atomic import atomic_write


def subplots(nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] | None = None, **kwargs: Any) -> tuple[Figure, Any]:
    """(figure, axes) like `plt.subplots`, drawn off-screen: a bare `Figure` needs no pyplot backend, so saving a
    plot never switches a notebook's backend nor opens a window, and nothing has to be closed."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def plot_history(history: Mapping[str, Sequence[float]], path: str | os.PathLike) -> None:
    """One panel per metric (loss, accuracy, ...), training and validation curves per epoch."""
    names = [k for k in history if not k.startswith("val_") and k not in ("epoch", "learning_rate", "lr")]
    fig, axes = subplots(1, max(len(names), 1), figsize=(5 * max(len(names), 1), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        epochs = range(1, len(history[name]) + 1)
        ax.plot(epochs, history[name], marker="o", ms=3, label="train")
        if f"val_{name}" in history:
            ax.plot(epochs, history[f"val_{name}"], marker="o", ms=3, label="validation")
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=100))


def plot_lr_schedule(stages: Sequence[tuple[str, Any, int]], steps_per_epoch: int, path: str | os.PathLike) -> None:
    """Learning rate per optimizer step for each (stage name, schedule or number, epochs), stages end to end."""
    from app.training.schedules import lr_values  # app.training.schedules imports keras: only when plotting schedules

    fig, ax = subplots(figsize=(7, 3.6))
    offset = 0
    for name, schedule, epochs in stages:
        steps, values = lr_values(schedule, epochs * steps_per_epoch)
        ax.plot((offset + steps) / steps_per_epoch, values, label=name)
        offset += epochs * steps_per_epoch
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate")
    ax.set_title(f"learning-rate schedule ({steps_per_epoch} steps per epoch)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=100))
