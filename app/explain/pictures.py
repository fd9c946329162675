"""The explanation pictures: channel grids, channel-sum overlays and Grad-CAM overlays, as PNG files."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib import colormaps

from app.atomic import atomic_write
from app.explain.activations import upsample
from app.plots import subplots

OVERLAY_ALPHA = 0.7  # the opacity of the hottest pixels; cold ones leave the image as it is


def _normalised(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    return (values - low) / (high - low) if high > low else np.zeros_like(values, dtype=np.float32)


def overlay(ax, image: np.ndarray, heat: np.ndarray) -> None:
    """`image` with `heat` (values in [0, 1], same height and width) laid over it in the jet colours, each pixel as
    opaque as it is hot: the image stays readable where the map is cold."""
    ax.imshow(image)
    colours = colormaps["jet"](np.clip(heat, 0.0, 1.0))
    colours[..., 3] = OVERLAY_ALPHA * np.clip(heat, 0.0, 1.0)
    ax.imshow(colours)


def _save(fig, path: str | os.PathLike, dpi: int = 100, title_inches: float = 0.0) -> None:
    """Lay out (leaving `title_inches` at the top for a suptitle) and write the PNG atomically."""
    fig.tight_layout(rect=(0.0, 0.0, 1.0, 1.0 - title_inches / fig.get_figheight()))
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=dpi))


def plot_channels(activation: np.ndarray, layer: str, path: str | os.PathLike, max_channels: int = 32) -> int:
    """A grid of one layer's channels (h, w, c), the most active first (by mean activation), each scaled to its own
    range; returns how many channels it shows."""
    channels = activation.shape[-1]
    order = np.argsort(-activation.reshape(-1, channels).mean(axis=0), kind="stable")[:max_channels]
    cols = min(8, len(order))
    rows = math.ceil(len(order) / cols)
    fig, axes = subplots(rows, cols, figsize=(1.5 * cols, 1.5 * rows + 0.5), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, c in zip(axes.flat, order):
        ax.imshow(activation[..., c], cmap="viridis", interpolation="nearest")
        ax.set_title(f"ch {c}", fontsize=7)
    h, w = activation.shape[:2]
    shown = f"the {len(order)} most active of {channels} channels" if len(order) < channels else f"all {channels} channels"
    fig.suptitle(f"{layer}: {h}×{w}, {shown}", fontsize=10)
    _save(fig, path, title_inches=0.3)
    return len(order)


def plot_channel_sums(image: np.ndarray, maps: Mapping[str, np.ndarray], path: str | os.PathLike) -> None:
    """The input, then for each layer the sum over its channels, upsampled and laid over the input ("where the
    network looks" at that depth)."""
    cols = len(maps) + 1
    fig, axes = subplots(1, cols, figsize=(2.6 * cols, 3.0), squeeze=False)
    axes[0][0].imshow(image)
    axes[0][0].set_title(f"input {image.shape[0]}×{image.shape[1]}", fontsize=8)
    for ax, (name, activation) in zip(axes[0][1:], maps.items()):
        overlay(ax, image, _normalised(upsample(activation.sum(axis=-1), image.shape[:2])))
        ax.set_title(f"{name.split('/')[-1]}\n{activation.shape[0]}×{activation.shape[1]}×{activation.shape[2]} summed", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    _save(fig, path)


def plot_heatmaps(images: np.ndarray, heatmaps: np.ndarray, titles: Sequence[str], path: str | os.PathLike, suptitle: str) -> None:
    """Each image with its heat map (values in [0, 1]) laid over it, in a grid of up to 4 columns."""
    count = max(1, len(images))
    cols = min(4, count)
    rows = math.ceil(count / cols)
    fig, axes = subplots(rows, cols, figsize=(3.0 * cols, 3.5 * rows + 0.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    if not len(images):
        axes[0][0].text(0.5, 0.5, "no images to show", ha="center", va="center", fontsize=11)
    for ax, image, heat, title in zip(axes.flat, images, heatmaps, titles):
        overlay(ax, image, heat)
        ax.set_title(title, fontsize=8)
    fig.suptitle(suptitle, fontsize=10)
    _save(fig, path, title_inches=0.2 * (suptitle.count("\n") + 1) + 0.1)
