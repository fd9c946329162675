"""Seeded, stratified train/validation splits and k-fold splits over an ImageSet's labels."""

from __future__ import annotations

import logging

import numpy as np
from sklearn.model_selection import KFold, StratifiedKFold, train_test_split

log = logging.getLogger(__name__)
_WARNED: set[tuple[int, int, int]] = set()


def stratify_key(labels: np.ndarray) -> np.ndarray:
    """One stratum per class (single-label) or per label combination (multi-label)."""
    if labels.ndim == 1:
        return labels
    return np.array(["".join("1" if v else "0" for v in row) for row in labels.astype(bool)])


def train_val_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val), stratified by class where every class can be split.

    Classes with a single image stay in training (they cannot be in both); if stratification is impossible
    (fewer validation images than classes, say), the split falls back to a seeded random split with a warning.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    n = len(labels)
    key = stratify_key(labels)
    values, counts = np.unique(key, return_counts=True)
    singles = np.isin(key, values[counts < 2])
    pool = np.flatnonzero(~singles)
    try:
        train, val = train_test_split(pool, test_size=val_fraction * n / max(len(pool), 1), random_state=seed, stratify=key[pool])
    except ValueError as exc:
        log.warning("stratified split impossible (%s); using a random split", exc)
        train, val = train_test_split(np.arange(n), test_size=val_fraction, random_state=seed)
        return np.sort(train), np.sort(val)
    if singles.any():
        log.info("%d image(s) of classes with one image kept in training", int(singles.sum()))
    return np.sort(np.concatenate([train, np.flatnonzero(singles)])), np.sort(val)


def kfold_splits(labels: np.ndarray, n_splits: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """`n_splits` (train, val) index pairs covering every image once as validation; stratified when possible."""
    key = stratify_key(labels)
    _, counts = np.unique(key, return_counts=True)
    if counts.min() >= n_splits:
        folds = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(np.zeros(len(key)), key)
    else:
        if (n_splits, seed, len(key)) not in _WARNED:  # once: every fold of a cross-validation re-derives the folds
            _WARNED.add((n_splits, seed, len(key)))
            log.warning("some classes have fewer than %d images, so the %d folds cannot be stratified: plain seeded k-fold instead", n_splits, n_splits)
        folds = KFold(n_splits=n_splits, shuffle=True, random_state=seed).split(np.zeros(len(key)))
    return [(np.sort(t), np.sort(v)) for t, v in folds]
