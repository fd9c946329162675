"""Baseline CNN: built exactly from its block list, uint8 input normalized inside, saves and reloads safely."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from app.models import create_model, list_models
from app.models.baseline import ConvBlock


def test_blocks_become_layers_with_those_arguments() -> None:
    blocks = [{"filters": 8, "kernel_size": 5, "strides": 2, "repeats": 1, "pool": "avg"}, [16, 3, 1], {"filters": 4, "pool": "none"}]
    model = create_model("baseline_cnn", input_shape=(32, 32, 3), num_classes=3, blocks=blocks)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [(c.filters, c.kernel_size, c.strides) for c in convs] == [
        (8, (5, 5), (2, 2)),
        (16, (3, 3), (1, 1)),
        (16, (3, 3), (1, 1)),
        (4, (3, 3), (1, 1)),
        (4, (3, 3), (1, 1)),
    ]
    pools = [type(layer).__name__ for layer in model.layers if "Pooling2D" in type(layer).__name__ and "Global" not in type(layer).__name__]
    assert pools == ["AveragePooling2D", "MaxPooling2D"]
    assert sum(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers) == 5
    assert model.input.dtype == "uint8" and model.output.shape == (None, 3)


def test_softmax_and_sigmoid_heads() -> None:
    images = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    single = create_model("baseline_cnn", input_shape=(16, 16, 3), num_classes=4, blocks=[[4]])
    np.testing.assert_allclose(single.predict(images, verbose=0).sum(axis=1), 1.0, rtol=1e-5)
    multi = create_model("baseline_cnn", input_shape=(16, 16, 3), num_classes=4, multilabel=True, blocks=[[4]])
    assert multi.get_layer("predictions").activation.__name__ == "sigmoid"


def test_save_and_reload_with_safe_mode(tmp_path: Path) -> None:
    model = create_model("baseline_cnn", input_shape=(16, 16, 3), num_classes=2, blocks=[[4, 3, 1]])
    images = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    model.save(tmp_path / "m.keras")
    reloaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    np.testing.assert_allclose(model.predict(images, verbose=0), reloaded.predict(images, verbose=0), rtol=1e-6)


def test_pooling_stops_at_one_pixel() -> None:
    model = create_model("baseline_cnn", input_shape=(4, 4, 3), num_classes=2, blocks=[[4], [4], [4], [4]])
    assert model.output.shape == (None, 2)


@pytest.mark.parametrize(
    "spec,pattern",
    [({"filters": 0}, ">= 1"), ({"filters": 8, "pool": "mean"}, "pool must be"), ({"filter": 8}, "unknown key"), ("32", "expected")],
)
def test_bad_blocks(spec: object, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        ConvBlock.parse(spec)  # type: ignore[arg-type]


def test_registry() -> None:
    assert "baseline_cnn" in list_models()
    with pytest.raises(ValueError, match="unknown model 'resnet9'.*baseline_cnn"):
        create_model("resnet9", input_shape=(8, 8, 3), num_classes=2)
