"""Explanations of a trained run: feature maps, channel-sum overlays, Grad-CAM and the model's anatomy.

Each function takes a finished run (`app.runs.load_run`) and writes PNG or Markdown files into `<run>/explain/`
(or `out_dir`); `imgclf explain` is a thin face over them, and `imgclf train` calls `explain_examples` at the end
of a run when `output.explain` is true. The arithmetic and the pictures live in the modules beside this one:
anatomy.py (shapes, receptive fields), activations.py (activations, Grad-CAM), pictures.py (PNG files).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.data import evaluation_set, prepare
from app.explain.activations import block_outputs, feature_maps, find_layer, gradcam, last_map_layer
from app.explain.anatomy import ANATOMY_FILE, anatomy, anatomy_markdown, write_anatomy
from app.explain.pictures import plot_channel_sums, plot_channels, plot_heatmaps
from app.inference.prediction import predict_probs
from app.reports import confident_mistakes
from app.runs import Run
from pipelines.batches import decode_all
from pipelines.errors import DataError
from pipelines.sources import ImageSet

EXPLAIN_DIR = "explain"
CHANNEL_SUMS_FILE = "channel_sums.png"
GRADCAM_FILE = "gradcam.png"

__all__ = [
    "ANATOMY_FILE",
    "EXPLAIN_DIR",
    "GradcamResult",
    "anatomy",
    "anatomy_markdown",
    "block_outputs",
    "explain_anatomy",
    "explain_examples",
    "explain_feature_maps",
    "explain_gradcam",
    "feature_maps",
    "gradcam",
    "gradcam_grid",
    "last_map_layer",
    "load_image",
    "write_anatomy",
]


def _out_dir(run: Run, out_dir: str | os.PathLike | None) -> Path:
    path = Path(out_dir) if out_dir else run.path / EXPLAIN_DIR
    path.mkdir(parents=True, exist_ok=True)
    return path


def _file_part(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def load_image(path: str | os.PathLike, size: int) -> np.ndarray:
    """One image as the model sees it: uint8 (size, size, 3), decoded and resized as the cache does."""
    pixels, check = decode_all([str(path)], (size, size))
    if not check.ok[0]:
        raise DataError(check.errors[0])
    return pixels[0]


def explain_anatomy(run: Run, out_dir: str | os.PathLike | None = None) -> Path:
    """`anatomy.md`: the per-layer table of the run's model."""
    return write_anatomy(run.model, _out_dir(run, out_dir))


def explain_feature_maps(run: Run, image_path: str | os.PathLike, layers: Sequence[str] | None = None, out_dir: str | os.PathLike | None = None) -> list[Path]:
    """For one image: `feature_maps_<image>_<layer>.png` (a grid of channels) per layer, and
    `channel_sums_<image>.png` (each layer's channel sum over the input); returns their paths, the channel sums
    last. Default layers: the last activation of each block."""
    out = _out_dir(run, out_dir)
    names = list(layers) if layers else block_outputs(run.model)
    for name in names:
        find_layer(run.model, name)  # an unknown layer: one line before any work
    image = load_image(image_path, run.config.data.image_size)
    maps = feature_maps(run.model, image, names)
    stem = _file_part(Path(image_path).stem)
    written = []
    for name, activation in maps.items():
        path = out / f"feature_maps_{stem}_{_file_part(name)}.png"
        plot_channels(activation, name, path)
        written.append(path)
    sums = out / f"{Path(CHANNEL_SUMS_FILE).stem}_{stem}.png"
    plot_channel_sums(image, maps, sums)
    return [*written, sums]


@dataclass
class GradcamResult:
    path: Path
    shown: int
    layer: str


def explain_gradcam(
    run: Run,
    data: str | None = None,
    images_dir: str | None = None,
    mistakes: bool = False,
    class_name: str | None = None,
    count: int = 16,
    layer: str | None = None,
    out_dir: str | os.PathLike | None = None,
) -> GradcamResult:
    """`gradcam.png`: Grad-CAM over `count` images of a labeled set (default: the run's validation split), each
    titled with its true and predicted labels and the probability. `mistakes`: the most confident errors (the
    report's selection); `class_name`: the heat maps of that class, on images of that class."""
    config = run.config
    if class_name is not None and class_name not in run.class_names:
        raise DataError(f"--class {class_name!r} is not one of this run's classes: {', '.join(run.class_names)}")
    layer = layer or last_map_layer(run.model)
    find_layer(run.model, layer)
    images = evaluation_set(config, run.class_names, data, images_dir)
    images, cache = prepare(images, config.data)
    return gradcam_grid(run, images, cache, data or "validation split", mistakes, class_name, count, layer, out_dir)


def gradcam_grid(
    run: Run,
    images: ImageSet,
    cache: np.ndarray | None,
    source: str,
    mistakes: bool = False,
    class_name: str | None = None,
    count: int = 16,
    layer: str | None = None,
    out_dir: str | os.PathLike | None = None,
) -> GradcamResult:
    """`explain_gradcam` on a set already prepared (`app.data.prepare`: checked, and decoded when cached)."""
    config = run.config
    target = run.class_names.index(class_name) if class_name is not None else None
    layer = layer or last_map_layer(run.model)
    picks = _pick(run, images, cache, mistakes, target, count)
    pixels = cache[picks] if cache is not None else decode_all([images.paths[i] for i in picks], (config.data.image_size,) * 2)[0]
    classes = None if target is None else [target] * len(picks)
    heatmaps, probs = gradcam(run.model, pixels, classes, layer) if len(picks) else (np.zeros((0, *pixels.shape[1:3])), np.zeros((0, len(run.class_names))))
    titles = [_title(run, images, i, p) for i, p in zip(picks, probs)]
    what = f"class {class_name}" if class_name else "the predicted class"
    chosen = "most confident mistakes" if mistakes else "images"
    path = _out_dir(run, out_dir) / (f"gradcam_{_file_part(class_name)}.png" if class_name else GRADCAM_FILE)
    plot_heatmaps(pixels, heatmaps, titles, path, f"Grad-CAM of {what} at {layer}\n{len(picks)} {chosen} of {Path(source).name}")
    return GradcamResult(path, len(picks), layer)


def _pick(run: Run, images: ImageSet, cache: np.ndarray | None, mistakes: bool, target: int | None, count: int) -> list[int]:
    labels = np.asarray(images.labels)
    candidates = np.arange(len(images))
    if target is not None:
        candidates = np.flatnonzero(labels[:, target] > 0.5) if images.multilabel else np.flatnonzero(labels == target)
    if not mistakes:
        return [int(i) for i in candidates[:count]]
    probs = predict_probs(run.model, images, run.config, cache=cache, verbose=0)
    allowed = set(candidates.tolist())
    return [i for i, *_ in confident_mistakes(images, probs, len(images)) if i in allowed][:count]


def _title(run: Run, images: ImageSet, index: int, probs: np.ndarray) -> str:
    names = run.class_names
    if images.multilabel:
        truth = " ".join(names[c] for c in np.flatnonzero(np.asarray(images.labels[index]) > 0.5)) or "(none)"
        top = int(np.argmax(probs))
        return f"{Path(images.paths[index]).name}\ntrue: {truth}\ntop: {names[top]} ({probs[top]:.2f})"
    predicted = int(np.argmax(probs))
    return f"{Path(images.paths[index]).name}\ntrue: {names[int(images.labels[index])]}\npred: {names[predicted]} ({probs[predicted]:.2f})"


def explain_examples(run: Run, val: ImageSet, val_cache: np.ndarray | None, count: int = 8) -> list[Path]:
    """What `output.explain: true` adds to a run: anatomy.md, the feature maps and channel sums of the first
    validation image, and Grad-CAM over the first `count` validation images (the prepared validation set)."""
    written = [explain_anatomy(run)]
    if len(val):
        written += explain_feature_maps(run, val.paths[0])
        written.append(gradcam_grid(run, val, val_cache, "validation split", count=count).path)
    return written
