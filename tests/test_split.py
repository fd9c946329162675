"""Splits: seeded, stratified, cope with singleton classes, k-fold covers every image once."""

from __future__ import annotations

import numpy as np

from pipelines.split import kfold_splits, train_val_split


def test_stratified_and_seeded() -> None:
    labels = np.repeat(np.arange(4), [40, 20, 20, 20])
    train, val = train_val_split(labels, 0.25, seed=3)
    assert len(val) == 25 and len(set(train) & set(val)) == 0 and len(train) + len(val) == 100
    assert np.bincount(labels[val]).tolist() == [10, 5, 5, 5]
    again = train_val_split(labels, 0.25, seed=3)
    assert np.array_equal(again[1], val)
    assert not np.array_equal(train_val_split(labels, 0.25, seed=4)[1], val)


def test_singleton_classes_stay_in_training() -> None:
    labels = np.array([0] * 10 + [1] * 10 + [2])  # class 2 has one image (like the rarest dog breeds)
    train, val = train_val_split(labels, 0.2, seed=0)
    assert 20 in train and 20 not in val
    assert set(labels[val]) == {0, 1}


def test_too_few_validation_images_for_stratification_falls_back() -> None:
    labels = np.repeat(np.arange(10), 2)
    train, val = train_val_split(labels, 0.1, seed=0)  # 2 validation images for 10 classes
    assert len(val) == 2 and len(train) == 18


def test_multilabel_split_keeps_rows_whole() -> None:
    labels = np.array([[1, 0], [0, 1], [1, 1], [0, 0]] * 10, dtype=np.float32)
    train, val = train_val_split(labels, 0.25, seed=0)
    assert len(val) == 10 and sorted(np.concatenate([train, val]).tolist()) == list(range(40))


def test_kfold_covers_every_image_once() -> None:
    labels = np.repeat(np.arange(3), 10)
    folds = kfold_splits(labels, 5, seed=0)
    assert len(folds) == 5
    vals = np.concatenate([v for _, v in folds])
    assert sorted(vals.tolist()) == list(range(30))
    for train, val in folds:
        assert np.bincount(labels[val]).tolist() == [2, 2, 2]
        assert not set(train) & set(val)


def test_kfold_with_rare_classes_is_unstratified_but_complete() -> None:
    labels = np.array([0] * 10 + [1])
    folds = kfold_splits(labels, 3, seed=0)
    assert sorted(np.concatenate([v for _, v in folds]).tolist()) == list(range(11))
