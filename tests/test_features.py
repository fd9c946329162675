"""Stage 1 on cached backbone features: the split model, the features, their batches, reuse, and the run."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

from app.config import Config, ConfigError, load_config
from app.data import prepare_data
from app.models import create_model
from app.models.backbones import find_backbone, make_backbone, split_at_features, whole_model
from app.training import features as features_module
from app.training.features import Features, compute_features, feature_datasets, uses_cached_features
from app.training.run import train

SIZE = 32


@pytest.fixture
def vgg_config(tiny_config: Config, weights_file: Path) -> Config:
    return load_config(overrides=["model.name=vgg16", f"model.weights={weights_file}", "train.feature_views=2", "augment.train=medium"], base=tiny_config)


@pytest.fixture(autouse=True)
def _forget_features():
    features_module.clear_features()
    yield
    features_module.clear_features()


def test_the_split_model_is_the_model_and_trains_its_head():
    model = create_model("vgg16", input_shape=(SIZE, SIZE, 3), num_classes=3, weights=None)
    extractor, head = split_at_features(model)
    x = np.random.default_rng(0).integers(0, 256, (4, SIZE, SIZE, 3), dtype=np.uint8)
    np.testing.assert_allclose(head.predict(extractor.predict(x, verbose=0), verbose=0), model.predict(x, verbose=0), atol=1e-6)
    assert whole_model(head) is model and whole_model(model) is model
    assert {v.path for v in head.weights} < {v.path for v in model.weights}  # the head's weights, not the backbone's
    head.compile("adam", "sparse_categorical_crossentropy")
    before = model.get_layer("predictions").get_weights()[0].copy()
    head.train_on_batch(np.random.default_rng(1).normal(size=(4, extractor.output.shape[-1])), np.arange(4) % 3)
    assert not np.allclose(before, model.get_layer("predictions").get_weights()[0])  # shared layers: the model's head moved


@pytest.mark.parametrize(
    "stage,overrides,replicas,expected",
    [
        ("train", [], 1, True),
        ("finetune", [], 1, False),  # stage 2 trains the backbone: images
        ("train", ["train.cache_features=false"], 1, False),
        ("train", ["train.freeze_backbone=false"], 1, False),
        ("train", [], 2, False),  # several replicas: the features would be this process's alone
        ("train", ["model.name=baseline_cnn"], 1, False),
    ],
)
def test_when_features_are_cached(vgg_config: Config, stage: str, overrides: list[str], replicas: int, expected: bool):
    config = load_config(overrides=overrides, base=vgg_config)
    model = create_model(config.model.name, input_shape=(SIZE, SIZE, 3), num_classes=3, weights=None, blocks=config.model.blocks)
    assert uses_cached_features(model, config, stage, replicas) is expected


def test_feature_views_is_checked_at_load():
    with pytest.raises(ConfigError, match=r"config key train.feature_views: -1 is not allowed; expected a whole number >= 0"):
        load_config(overrides=["train.feature_views=-1"])


def _mean_colour_extractor() -> keras.Model:
    inputs = keras.Input((SIZE, SIZE, 3), dtype="uint8")
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1.0)(inputs)))


def test_features_of_the_plain_image_and_each_view_and_their_reuse(vgg_config: Config):
    data = prepare_data(vgg_config)
    extractor = _mean_colour_extractor()
    features = compute_features(extractor, vgg_config, data, None)
    assert features.train.shape == (len(data.train), 3, 3) and features.val is None
    np.testing.assert_array_equal(features.train_labels, data.train.labels)
    plain = np.stack([np.asarray(keras.utils.load_img(p, target_size=(SIZE, SIZE))).mean(axis=(0, 1)) for p in data.train.paths])
    np.testing.assert_allclose(features.train[:, 0], plain, atol=8)  # view 0: each image itself, in order (area vs bilinear resizing)
    assert not np.allclose(features.train[:, 1], features.train[:, 2])  # each view its own augmentation
    assert compute_features(extractor, vgg_config, data, None) is features  # the same backbone, weights and images: reused
    other = compute_features(extractor, load_config(overrides=["train.feature_views=1"], base=vgg_config), data, None)
    assert other is not features and other.train.shape[1] == 2
    random_weights = load_config(overrides=["model.weights=null"], base=vgg_config)
    assert compute_features(extractor, random_weights, data, None) is not compute_features(extractor, random_weights, data, None)


def test_feature_batches_show_every_image_once_per_epoch_as_one_of_its_views():
    count, views = 10, 3
    table = np.array([[[i, v] for v in range(views)] for i in range(count)], dtype=np.float32)  # feature = (image, view)
    features = Features(table, np.arange(count) % 2, table[:, 0], np.arange(count) % 2, 0.0)
    train, val = feature_datasets(features, batch_size=4, seed=7)
    epochs = [np.concatenate([x.numpy() for x, _ in train]) for _ in range(4)]
    for rows in epochs:
        assert sorted(rows[:, 0].astype(int)) == list(range(count))  # each image once
    labels = np.concatenate([y.numpy() for _, y in train])
    assert len(labels) == count
    picked = np.concatenate([rows[:, 1] for rows in epochs])
    assert set(picked.astype(int)) == set(range(views))  # every view drawn
    assert not all(np.array_equal(epochs[0], e) for e in epochs[1:])  # a new order and views each epoch
    again, _ = feature_datasets(features, batch_size=4, seed=7)
    np.testing.assert_array_equal(np.concatenate([x.numpy() for x, _ in again]), epochs[0])  # a function of the seed
    first_labels = [(x.numpy()[:, 0].astype(int) % 2, y.numpy()) for x, y in again]
    assert all(np.array_equal(a, b) for a, b in first_labels)  # each row keeps its image's label
    assert [len(y) for _, y in val] == [4, 4, 2]


def test_a_run_with_cached_features(vgg_config: Config, weights_file: Path):
    config = load_config(overrides=["train.epochs=3", "finetune.epochs=1", "finetune.unfreeze_blocks=1", "train.early_stopping_patience=0"], base=vgg_config)
    result = train(config)
    history = pd.read_csv(result.run_dir / "history.csv")
    assert list(history["stage"]) == ["train"] * 3 + ["finetune"] and result.metrics["stage_epochs"] == {"train": 3, "finetune": 1}
    assert {"val_loss", "val_accuracy", "loss", "accuracy"} <= set(history.columns) and history["val_loss"].notna().all()
    model = keras.saving.load_model(result.model_path, safe_mode=True)
    assert model.inputs[0].shape == (None, SIZE, SIZE, 3) and find_backbone(model) is not None  # the image model is saved, not the head
    reference = make_backbone("vgg16", (SIZE, SIZE, 3), weights=weights_file)
    backbone = find_backbone(model)
    assert np.array_equal(backbone.get_layer("block1_conv1").get_weights()[0], reference.get_layer("block1_conv1").get_weights()[0])


def test_cached_features_and_the_frozen_backbone_train_the_same_head(vgg_config: Config):
    """Without augmentation and dropout, the head sees the same inputs either way: the same curves, up to float error."""
    base = load_config(overrides=["augment.train=none", "model.dropout=0.0", "train.feature_views=0", "finetune.epochs=0"], base=vgg_config)
    cached = pd.read_csv(train(base).run_dir / "history.csv")
    plain = pd.read_csv(train(replace(base, train=replace(base.train, cache_features=False))).run_dir / "history.csv")
    np.testing.assert_allclose(cached["val_loss"], plain["val_loss"], rtol=1e-3)
    np.testing.assert_allclose(cached["loss"], plain["loss"], rtol=1e-3)


def test_a_search_of_the_head_computes_the_features_once(vgg_config: Config, caplog: pytest.LogCaptureFixture):
    """Trials that share the backbone, its weights, the size and the augmentation train their heads on one set of features."""
    from tuning import search

    config = load_config(
        overrides=["finetune.epochs=0", "train.epochs=1", "tune.max_trials=3", "tune.space.dropout=[0.1, 0.3, 0.5]", "tune.space.optimizer=adam",
                   "tune.space.learning_rate=0.001", "tune.space.schedule=constant", "tune.tuner=grid"],
        base=vgg_config,
    )  # fmt: skip
    with caplog.at_level("INFO", logger="app.training.features"):
        result = search(config, progress=lambda line: None)
    assert list(result.trials["status"]) == ["COMPLETED"] * 3
    messages = [r.getMessage() for r in caplog.records]
    assert sum(m.startswith("backbone features computed") for m in messages) == 1
    assert sum(m.startswith("backbone features: reused") for m in messages) == 2
