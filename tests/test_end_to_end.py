"""Slow end-to-end runs: the demo itself, and the real photo datasets in ../shared/data (skipped when absent)."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

from app.cli import main
from app.config import load_config
from app.demo import run_demo
from app.training.run import train
from tests.conftest import require_shared, require_xception_weights

pytestmark = pytest.mark.slow


def test_demo_reaches_98_percent_and_writes_a_valid_submission(tmp_path: Path) -> None:
    result = run_demo(tmp_path / "cache", [f"output.dir={tmp_path / 'runs'}", "train.verbose=0"])
    assert result.holdout["accuracy"] >= 0.98 and result.holdout["num_images"] == 360
    submission = pd.read_csv(result.submission, dtype=str)
    sample = pd.read_csv(tmp_path / "cache" / "digits-v1" / "sample_submission.csv", dtype=str)
    assert submission["id"].tolist() == sample["id"].tolist() and list(submission.columns) == ["id", "label"]
    truth = pd.read_csv(tmp_path / "cache" / "digits-v1" / "test_labels.csv", dtype=str)
    assert (submission["label"] == truth["label"]).mean() == pytest.approx(result.holdout["accuracy"])


def _overrides(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "data.image_size=48",
        "data.batch_size=32",
        "model.blocks=[[16, 3, 1], [32, 3, 1]]",
        "train.epochs=2",
        "train.verbose=0",
        f"output.dir={tmp_path}",
        *extra,
    ]


def test_hymenoptera_folders_with_given_validation_set(tmp_path: Path) -> None:
    root = require_shared("hymenoptera")
    config = load_config(overrides=_overrides(tmp_path, f"data.train={root / 'train'}", f"data.val={root / 'val'}", "augment.train=medium"))
    result = train(config)
    assert result.metrics["train_images"] == 245 and result.metrics["val_images"] == 153
    assert result.metrics["val"]["accuracy"] > 0.4


def test_dog_breed_csv_to_probability_submission(tmp_path: Path) -> None:
    root = require_shared("dog-breed")
    config = load_config(
        overrides=_overrides(
            tmp_path, f"data.train={root / 'labels.csv'}", "data.label_column=breed", f"data.test={root / 'sample_submission.csv'}", "train.epochs=1"
        )
    )
    result = train(config)
    assert json.loads((result.run_dir / "class_names.json").read_text())["class_names"][:2] == ["affenpinscher", "afghan_hound"]
    assert result.metrics["train_images"] + result.metrics["val_images"] == 1000
    assert main(["predict", str(result.run_dir)]) == 0
    submission = pd.read_csv(result.run_dir / "submission.csv")
    sample = pd.read_csv(root / "sample_submission.csv")
    assert list(submission.columns) == list(sample.columns) and submission["id"].tolist() == sample["id"].tolist()
    assert ((submission.iloc[:, 1:].sum(axis=1) - 1).abs() < 1e-3).all()


def test_flowers_with_cache(tmp_path: Path) -> None:
    root = require_shared("flowers")
    result = train(load_config(overrides=_overrides(tmp_path, f"data.train={root}", "data.cache=true", "data.image_size=32", "train.epochs=8")))
    assert result.metrics["train_images"] + result.metrics["val_images"] == 4317
    assert result.metrics["val"]["accuracy"] > 0.45  # 5 classes: well above the 0.24 of the largest class


def test_finetune_config_on_real_photos(tmp_path: Path) -> None:
    """configs/finetune.yaml as shipped, with Keras' real Xception ImageNet weights, on hymenoptera at 128 px: three
    head epochs on cached features reach 0.80 (random weights: about 0.5, so this fails if the weights are silently not
    loaded) and leave every backbone weight and BatchNormalization statistic as loaded; stage 2 changes exactly the
    weights of the unfrozen blocks' layers, BatchNormalization excepted."""
    from app.models.backbones import backbone_blocks, find_backbone, make_backbone, whole_model

    weights = require_xception_weights()
    root = require_shared("hymenoptera")
    snapshots: list[list[list[np.ndarray]]] = []  # the backbone's weights, layer by layer, at the end of each stage

    class Snapshot(keras.callbacks.Callback):
        def on_train_end(self, logs: dict | None = None) -> None:
            backbone = find_backbone(whole_model(self.model))
            snapshots.append([[w.numpy().copy() for w in layer.weights] for layer in backbone.layers])

    overrides = [f"data.train={root / 'train'}", f"data.val={root / 'val'}", "data.image_size=128", f"model.weights={weights}", "train.epochs=3"]
    overrides += ["train.feature_views=1", "train.early_stopping_patience=0", "finetune.epochs=1", "finetune.unfreeze_blocks=2", "train.verbose=0"]
    overrides += [f"output.dir={tmp_path / 'runs'}", "output.tensorboard=false"]
    config = load_config("finetune", overrides)
    assert config.model.name == "xception" and config.train.cache_features
    result = train(config, callbacks=[Snapshot()])
    history = pd.read_csv(result.run_dir / "history.csv")
    assert list(history["stage"]) == ["train"] * 3 + ["finetune"] and len(snapshots) == 2
    assert history["val_accuracy"].iloc[2] >= 0.80, history
    loaded = make_backbone("xception", (128, 128, 3), weights=weights)
    unfrozen = {id(layer) for _, group in backbone_blocks(loaded)[-2:] for layer in group if not isinstance(layer, keras.layers.BatchNormalization)}
    moved = 0
    for index, layer in enumerate(loaded.layers):  # the same architecture: layers in the same order (auto-generated names differ)
        reference = layer.get_weights()
        assert all(np.array_equal(a, b) for a, b in zip(snapshots[0][index], reference, strict=True)), layer.name  # stage 1: as loaded
        same = [np.array_equal(a, b) for a, b in zip(snapshots[1][index], reference, strict=True)]
        assert all(same) if id(layer) not in unfrozen else not any(same), layer.name  # stage 2: the top two blocks, BN excepted
        moved += bool(reference) and id(layer) in unfrozen
    assert moved >= 4  # block13 and block14: two separable convolutions each, and block13's shortcut convolution
    assert pd.read_csv(result.run_dir / "per_class.csv")["class"].tolist() == ["ants", "bees"]
    assert main(["evaluate", str(result.run_dir), "--data", str(root / "val")]) == 0


def test_cached_features_agree_with_the_frozen_backbone_on_real_photos(tmp_path: Path) -> None:
    """Stage 1 on hymenoptera at 128 px with the real Xception weights, three epochs, on cached features (the plain
    image and one augmented view) and on the frozen backbone run each epoch: the same validation accuracy within 0.05
    (8 of 153 images)."""
    weights = require_xception_weights()
    root = require_shared("hymenoptera")
    scores = {}
    for cached in (True, False):
        overrides = [f"data.train={root / 'train'}", f"data.val={root / 'val'}", "data.image_size=128", f"model.weights={weights}", "train.epochs=3"]
        overrides += ["train.feature_views=1", "train.early_stopping_patience=0", "finetune.epochs=0", "train.verbose=0", f"train.cache_features={cached}"]
        overrides += [f"output.dir={tmp_path / str(cached)}", "output.tensorboard=false"]
        result = train(load_config("finetune", overrides))
        scores[cached] = result.metrics["val"]["accuracy"]
    assert scores[True] >= 0.80 and abs(scores[True] - scores[False]) <= 0.05, scores
