"""The training recipe as config keys: MixUp, CutMix, weight EMA, progressive resizing, and a run's time limit."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from app.config import Config, ConfigError, load_config
from app.training.mixing import mix_batches
from app.training.optimization import make_loss_and_metrics
from app.training.progressive import ProgressiveResizing, epoch_sizes, phase_sizes
from app.training.run import train

CLASSES = 4


def one_class_per_image(seed: int = 0, side: int = 16) -> tf.data.Dataset:
    """One batch of 4 random images, image i of class i: a mixed label vector names both sources and their weights."""
    images = np.random.default_rng(seed).integers(0, 256, (CLASSES, side, side, 3), dtype=np.uint8)
    return tf.data.Dataset.from_tensors((images, np.arange(CLASSES))), images


def mixed(mixup: float, cutmix: float, seed: int = 7, side: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    dataset, images = one_class_per_image(side=side)
    out_images, labels = next(iter(mix_batches(dataset, CLASSES, False, mixup, cutmix, seed)))
    return images.astype(float), out_images.numpy().astype(float), labels.numpy()


def test_mixup_batches_are_convex_mixtures_with_labels_mixed_alike() -> None:
    images, out, labels = mixed(mixup=0.4, cutmix=0.0)
    assert out.shape == images.shape and np.allclose(labels.sum(axis=1), 1.0)
    for i in range(CLASSES):
        weight = labels[i, i]
        partner = [j for j in range(CLASSES) if j != i and labels[i, j] > 0]
        assert 0.0 < weight <= 1.0 and len(partner) <= 1
        expected = weight * images[i] + (1 - weight) * (images[partner[0]] if partner else images[i])
        assert np.abs(out[i] - expected).max() <= 1.0  # rounded back to uint8
    assert any(labels[i, i] < 0.99 for i in range(CLASSES))  # something was mixed


def test_cutmix_pastes_a_box_and_weighs_labels_by_its_area() -> None:
    side = 64
    images, out, labels = mixed(mixup=0.0, cutmix=1.0, side=side)
    assert any(labels[i, i] < 0.99 for i in range(CLASSES))  # some box was pasted
    for i in range(CLASSES):
        others = [j for j in range(CLASSES) if j != i and labels[i, j] > 0]
        if not others:
            assert np.array_equal(out[i], images[i])
            continue
        (j,) = others
        from_other = np.all(out[i] == images[j], axis=-1) & ~np.all(out[i] == images[i], axis=-1)
        from_own = np.all(out[i] == images[i], axis=-1)
        assert np.all(from_other | from_own)  # every pixel is one image's or the other's
        # Keras weighs the box's exact area; the pixels pasted are the grid's inside it: a row and a column apart at most
        assert labels[i, j] == pytest.approx(from_other.mean(), abs=(2 * side + 1) / side**2)


def test_the_same_seed_mixes_alike_and_multilabel_rows_mix_as_vectors() -> None:
    first, second = mixed(0.4, 1.0, seed=3), mixed(0.4, 1.0, seed=3)
    assert np.array_equal(first[1], second[1]) and np.array_equal(first[2], second[2])
    images = np.zeros((4, 8, 8, 3), dtype=np.uint8)
    rows = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=np.float32)
    _, labels = next(iter(mix_batches(tf.data.Dataset.from_tensors((images, rows)), 3, True, 0.4, 0.0, seed=1)))
    labels = labels.numpy()
    assert labels.shape == rows.shape and labels.min() >= 0 and labels.max() <= 1
    assert not np.array_equal(labels, rows)  # mixed rows, between the multi-hot rows they come from


def test_the_soft_label_loss_takes_class_numbers_and_vectors_alike() -> None:
    loss, (accuracy,) = make_loss_and_metrics(False, label_smoothing=0.1, soft_labels=True)
    probs = tf.constant([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    sparse, onehot = tf.constant([0, 1]), tf.one_hot([0, 1], 3)
    assert float(loss(sparse, probs)) == pytest.approx(float(loss(onehot, probs)))
    reference = keras.losses.CategoricalCrossentropy(label_smoothing=0.1)(onehot, probs)
    assert float(loss(onehot, probs)) == pytest.approx(float(reference))
    accuracy.update_state(onehot, probs)
    assert float(accuracy.result()) == 0.5


class WeightsSeen(keras.callbacks.Callback):
    """The weights after each training step (the raw ones) and at each epoch's end (what the checkpoints see)."""

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[list[np.ndarray]] = []
        self.epoch_ends: list[list[np.ndarray]] = []

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.steps.append([w.numpy().copy() for w in self.model.trainable_weights])

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch_ends.append([w.numpy().copy() for w in self.model.trainable_weights])


def test_ema_weights_are_the_ones_validated_and_saved(tiny_config: Config) -> None:
    momentum = 0.6
    config = load_config(overrides=[f"train.ema={momentum}", "train.epochs=1", "output.tensorboard=false"], base=tiny_config)
    seen = WeightsSeen()
    result = train(config, callbacks=[seen])
    average = seen.steps[0]
    for step in seen.steps[1:]:  # Keras' EMA: the first step copies, then m * average + (1 - m) * weights
        average = [momentum * a + (1 - momentum) * w for a, w in zip(average, step)]
    at_end = seen.epoch_ends[-1]
    assert all(np.allclose(a, e, atol=1e-5) for a, e in zip(average, at_end))  # the epoch ends with the average ...
    assert not all(np.allclose(r, e, atol=1e-5) for r, e in zip(seen.steps[-1], at_end))  # ... which is not the raw weights
    saved = keras.saving.load_model(result.model_path)
    assert all(np.allclose(s.numpy(), e, atol=1e-6) for s, e in zip(saved.trainable_weights, at_end))  # and it is saved


@pytest.mark.parametrize("start,final,phases,sizes", [(32, 64, 3, [32, 48, 64]), (16, 64, 4, [16, 32, 48, 64]), (24, 32, 2, [24, 32]), (8, 30, 3, [8, 20, 30])])
def test_progressive_sizes_are_evenly_spaced_and_end_at_full_size(start: int, final: int, phases: int, sizes: list[int]) -> None:
    assert phase_sizes(start, final, phases) == sizes


@pytest.mark.parametrize("epochs", [1, 2, 3, 7, 8, 30])
def test_every_stage_ends_its_progressive_schedule_at_full_size(epochs: int) -> None:
    sizes = epoch_sizes(epochs, [32, 48, 64])
    assert len(sizes) == epochs and sizes[-1] == 64 and sizes == sorted(sizes)
    if epochs >= 3:
        assert set(sizes) == {32, 48, 64} and max(sizes.count(s) for s in set(sizes)) - min(sizes.count(s) for s in set(sizes)) <= 1


def test_progressive_resizing_trains_small_then_full_and_saves_a_full_size_model(tiny_config: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(overrides=["train.progressive_from=16", "train.progressive_phases=2", "train.epochs=4"], base=tiny_config)
    resizing = ProgressiveResizing(config, stage_epochs=4)
    images = np.zeros((2, 32, 32, 3), dtype=np.uint8)
    batches = resizing.resize(tf.data.Dataset.from_tensors((images, np.zeros(2))))
    shapes = []
    for size in (16, 32):
        resizing.size.assign(size)
        shapes.append(tuple(next(iter(batches))[0].shape))
    assert shapes == [(2, 16, 16, 3), (2, 32, 32, 3)]

    made: list[ProgressiveResizing] = []
    original = ProgressiveResizing.__init__

    def remember(self: ProgressiveResizing, *args: object, **kwargs: object) -> None:
        original(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(ProgressiveResizing, "__init__", remember)
    result = train(config)
    assert [r.seen for r in made] == [[16, 16, 32, 32]]  # the size each epoch trained at
    model = keras.saving.load_model(result.model_path)
    assert model.input_shape == (None, 32, 32, 3)
    with pytest.raises(ValueError, match="incompatible"):  # the input check is back once the sizes stop varying
        model.predict(np.zeros((1, 16, 16, 3), dtype=np.uint8), verbose=0)


def test_a_run_stops_at_its_time_limit_after_a_whole_epoch(tiny_config: Config) -> None:
    config = load_config(overrides=["train.max_minutes=1e-6", "train.epochs=5"], base=tiny_config)
    result = train(config)
    assert result.metrics["epochs_run"] == 1  # the limit passed during the first epoch, which still ran to its end
    assert "time limit (train.max_minutes=1e-06)" in result.metrics["stopped"]
    assert json.loads((result.run_dir / "metrics.json").read_text())["stopped"] == result.metrics["stopped"]


def test_a_recipe_run_trains_and_scores(tiny_config: Config) -> None:
    config = load_config(overrides=["train.mixup=0.2", "train.cutmix=1.0", "train.ema=0.9", "train.progressive_from=16", "train.epochs=3"], base=tiny_config)
    result = train(config)
    assert result.metrics["epochs_run"] == 3 and np.isfinite(result.metrics["val"]["log_loss"])


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.mixup=-0.1", "config key train.mixup: -0.1 is not allowed"),
        ("train.ema=1.0", "config key train.ema: 1.0 is not allowed; expected a momentum in (0, 1)"),
        ("train.progressive_from=32", "config key train.progressive_from: 32 must be smaller than data.image_size (32)"),
        ("train.progressive_phases=1", "config key train.progressive_phases: 1 is not allowed"),
        ("train.max_minutes=0", "config key train.max_minutes: 0.0 is not allowed"),
    ],
)
def test_bad_recipe_values_are_one_line_at_load(tiny_config: Config, override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(overrides=[override], base=tiny_config)


def test_progressive_resizing_of_a_frozen_backbone_on_cached_features_is_refused(tiny_config: Config) -> None:
    with pytest.raises(ConfigError, match="train.progressive_from: stage 1 of a frozen backbone trains on features"):
        load_config(overrides=["model.name=mobilenetv3small", "data.image_size=64", "train.progressive_from=32"], base=tiny_config)
