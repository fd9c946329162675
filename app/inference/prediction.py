"""The one prediction path: (models, image set, config, TTA) -> probabilities.

`predict_probs` runs one model over prepared images, averaging test-time augmentation passes; `predict_images`
prepares a set once per data setting and averages several runs (the folds of a cross-validation, whole runs),
each predicting with its own config (image size, eval augmentation). Evaluation, reports, submissions, the demo,
training's final report and ensembles all end here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import albumentations as A
import keras
import numpy as np
import pandas as pd

from app.config import Config
from app.data import load_test, make_tf_dataset, prepare
from app.runs import Run, load_runs
from pipelines.augment import build_transform, build_tta
from pipelines.errors import DataError
from pipelines.sources import ImageSet

TTASpec = str | A.BaseCompose | None


def tta_transforms(config: Config, tta: TTASpec = None, passes: int | None = None) -> list[A.BaseCompose]:
    """The eval pipeline of each TTA pass: the plain eval pipeline, then (per further pass) it followed by the TTA
    pipeline. `tta` / `passes` default to the config's augment.tta / augment.tta_passes (none: one plain pass)."""
    size = (config.data.image_size, config.data.image_size)
    plain = build_transform(config.augment.eval, size)
    tta = config.augment.tta if tta is None else tta
    if tta is None:
        return [plain]
    passes = config.augment.tta_passes if passes is None else passes
    return [plain if extra is None else A.Compose([plain, extra]) for extra in build_tta(tta, size, passes)]


def predict_probs(
    model: keras.Model,
    images: ImageSet,
    config: Config,
    cache: np.ndarray | None = None,
    verbose: int | str = "auto",
    tta: TTASpec = None,
    passes: int | None = None,
) -> np.ndarray:
    """(N, num_classes) probabilities in the set's order, with the eval augmentation, averaged over the TTA passes
    (`tta_transforms`); pass k is seeded with config.seed + k, so a prediction is repeatable."""
    total: np.ndarray | None = None
    transforms = tta_transforms(config, tta, passes)
    for k, transform in enumerate(transforms):
        with make_tf_dataset(images, config.data, transform, training=False, seed=config.seed + k, cache=cache) as pipeline:
            probs = model.predict(pipeline.dataset, verbose=verbose)  # an unreadable image mid-way: its DataError
        if len(probs) != len(images):
            raise RuntimeError(f"predicted {len(probs)} rows for {len(images)} images")
        probs = np.asarray(probs, dtype=np.float64)
        total = probs if total is None else total + probs
    assert total is not None
    return total / len(transforms)


def check_members(members: Sequence[Run]) -> None:
    """Runs averaged together must predict the same classes, in the same order, with the same label mode."""
    if not members:
        raise DataError("no model to predict with. Fix: give at least one run (or cross-validation) directory.")
    first = members[0]
    for run in members[1:]:
        if run.class_names != first.class_names or run.multilabel != first.multilabel:
            what = "label mode (multi-label or not)" if run.class_names == first.class_names else "class list"
            raise DataError(
                f"{run.path} and {first.path} have a different {what} ({len(run.class_names)} vs {len(first.class_names)} classes): "
                "their probabilities cannot be averaged. Fix: ensemble runs trained on the same classes."
            )


def ensemble_weights(members: Sequence[Run], weights: Sequence[float] | None) -> np.ndarray:
    """Normalised weights, equal by default."""
    if weights is None:
        return np.full(len(members), 1.0 / len(members))
    w = np.asarray(weights, dtype=np.float64)
    if len(w) != len(members) or (w < 0).any() or w.sum() <= 0:
        raise DataError(f"weights {list(weights)}: expected {len(members)} non-negative numbers (one per model), not all 0")
    return w / w.sum()


def predict_images(
    members: Run | Sequence[Run],
    images: ImageSet,
    *,
    tta: TTASpec = None,
    passes: int | None = None,
    weights: Sequence[float] | None = None,
    verbose: int | str = 0,
) -> tuple[ImageSet, np.ndarray]:
    """(the images predicted, their probabilities): the weighted mean of every run's TTA-averaged probabilities.

    Each run's images are checked or decoded per its data settings (once per distinct setting); unreadable ones
    stop with their name, or, with data.skip_bad_images, are left out of the returned set."""
    members = [members] if isinstance(members, Run) else list(members)
    check_members(members)
    w = ensemble_weights(members, weights)
    prepared: dict[tuple, tuple[ImageSet, np.ndarray | None]] = {}
    total: np.ndarray | None = None
    kept: ImageSet | None = None
    for run, weight in zip(members, w):
        cfg = run.config.data
        key = (cfg.image_size, cfg.cache, cfg.check_images, cfg.skip_bad_images)
        if key not in prepared:
            prepared[key] = prepare(images, cfg)
        these, cache = prepared[key]
        if kept is not None and these.ids != kept.ids:
            raise DataError(f"{run.path}: its data settings leave out other images than the first model's. Fix: use the same data.skip_bad_images")
        kept = these
        probs = predict_probs(run.model, these, run.config, cache=cache, verbose=verbose, tta=tta, passes=passes)
        total = weight * probs if total is None else total + weight * probs
    assert kept is not None and total is not None
    return kept, total


def predict(
    runs: str | os.PathLike | Sequence[str | os.PathLike],
    test: str | os.PathLike,
    *,
    tta: TTASpec = None,
    passes: int | None = None,
    weights: Sequence[float] | None = None,
) -> pd.DataFrame:
    """Probabilities for a folder of images (or a sample_submission.csv's images): one row per image, `id` then one
    column per class, from a run directory, a cross-validation directory (all its folds), or several averaged."""
    members = load_runs([runs] if isinstance(runs, (str, os.PathLike)) else list(runs))
    images = load_test(members[0].config.data, str(test))
    kept, probs = predict_images(members, images, tta=tta, passes=passes, weights=weights)
    frame = pd.DataFrame(probs, columns=members[0].class_names)
    frame.insert(0, "id", kept.ids)
    return frame
