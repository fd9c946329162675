"""Predict class probabilities for an ImageSet with a trained model."""

from __future__ import annotations

import keras
import numpy as np

from app.config import Config
from app.data import make_tf_dataset
from pipelines.sources import ImageSet
from pipelines.tfdata import abandon_dataset


def predict_probs(model: keras.Model, images: ImageSet, config: Config, cache: np.ndarray | None = None, verbose: int | str = "auto") -> np.ndarray:
    """(N, num_classes) probabilities in the set's order, with the eval augmentation; Keras shows a progress bar."""
    dataset = make_tf_dataset(images, config.data, config.augment.eval, training=False, seed=config.seed, cache=cache)
    try:
        probs = model.predict(dataset, verbose=verbose)
    except BaseException:
        abandon_dataset(dataset)  # an unreadable image mid-way: no batch left in flight (see abandon_dataset)
        raise
    if len(probs) != len(images):
        raise RuntimeError(f"predicted {len(probs)} rows for {len(images)} images")
    return np.asarray(probs, dtype=np.float64)
