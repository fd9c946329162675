"""Backbone registry: every entry builds, trains a step, saves and reloads; preprocessing, freezing and weights."""

from __future__ import annotations

import re
from pathlib import Path

import keras
import numpy as np
import pytest

from app.models import create_model, list_models
from app.models.backbones import BACKBONES, backbone_blocks, find_backbone, freeze_backbone, get_spec, make_backbone, unfreeze_model

SIZE = 32  # every family but Xception (71 pixels at least)
# The smallest of each family runs in the default suite; the full registry in the slow one (minutes of CPU).
FAST = ["vgg16", "resnet50", "resnet50v2", "efficientnetb0", "efficientnetv2b0", "xception", "mobilenetv2", "mobilenetv3small"]
ALL = [pytest.param(n, marks=() if n in FAST else pytest.mark.slow) for n in BACKBONES]


def _size(name: str) -> int:
    return max(SIZE, get_spec(name).min_size)


def _batch(n: int = 4, classes: int = 3, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), np.arange(n) % classes


def test_registry_covers_the_issue_list():
    expected = {"vgg16", "vgg19", "resnet50", "resnet101", "resnet152", "resnet50v2", "resnet101v2", "resnet152v2"}
    expected |= {f"efficientnetb{i}" for i in range(8)} | {f"efficientnetv2{v}" for v in ("b0", "b1", "b2", "b3", "s", "m", "l")}
    expected |= {"xception", "mobilenetv2", "mobilenetv3small", "mobilenetv3large", "convnexttiny", "densenet121"}
    assert set(BACKBONES) == expected
    assert list_models()[0] == "baseline_cnn" and set(list_models()[1:]) == expected
    assert (get_spec("xception").native_size, get_spec("xception").min_size) == (299, 71)


@pytest.mark.parametrize("name", ALL)
def test_backbone_builds_trains_saves_reloads(name: str, tmp_path: Path):
    size = _size(name)
    model = create_model(name, input_shape=(size, size, 3), num_classes=3, weights=None)
    assert model.input.dtype == "uint8" and model.output.shape == (None, 3)
    freeze_backbone(model)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x, y = _batch(size=size)
    before = [w.copy() for w in model.get_layer("predictions").get_weights()]
    logs = model.train_on_batch(x, y, return_dict=True)
    assert np.isfinite(logs["loss"])
    # The head learned. Its bias, not its kernel: a frozen random backbone can output all but zeros (MobileNetV2: 1e-13).
    assert not np.allclose(before[1], model.get_layer("predictions").get_weights()[1])
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", [*FAST, "densenet121", "convnexttiny"])  # every preprocessing mode: caffe, tf, torch, none
def test_preprocessing_inside_the_model_is_the_backbones_own(name: str):
    """The model fed uint8 gives the backbone exactly keras.applications.<family>.preprocess_input(float image)."""
    size = _size(name)
    model = create_model(name, input_shape=(size, size, 3), num_classes=2, weights=None)
    backbone = find_backbone(model)
    x, _ = _batch(2, size=size)
    features = keras.Model(model.input, model.get_layer("avg_pool").input)
    expected = backbone(get_spec(name).preprocess_input(x.astype("float32")))
    np.testing.assert_allclose(np.asarray(features(x)), np.asarray(expected), rtol=1e-5, atol=1e-5)


def test_names_are_forgiving():
    assert get_spec("ResNet50V2").name == get_spec("resnet50_v2").name == "resnet50v2"
    assert get_spec("EfficientNetV2-S").name == "efficientnetv2s"


@pytest.mark.parametrize(
    "name,first,last,count",
    [
        ("vgg16", "stem", "block5", 6),
        ("resnet50", "stem", "conv5_block3", 17),  # stem + 16 residual units
        ("resnet50v2", "stem", "top", 18),
        ("efficientnetb0", "stem", "top", 18),  # stem + 16 MBConv blocks + top
        ("xception", "stem", "block14", 15),  # the input, then blocks 1-14 (each residual shortcut with its block)
        ("mobilenetv2", "stem", "top", 19),  # stem + expanded_conv + block_1..16 + top
        ("mobilenetv3small", "stem", "top", 13),  # stem + expanded_conv + expanded_conv_1..10 + top
        ("convnexttiny", "stem", "top", 20),  # stem + 3, 3, 9, 3 blocks per stage + the final LayerNormalization
        ("densenet121", "stem", "top", 60),  # stem + 6, 12, 24, 16 dense layers + the final BN and ReLU
    ],
)
def test_block_structure(name: str, first: str, last: str, count: int):
    size = _size(name)
    blocks = backbone_blocks(make_backbone(name, (size, size, 3), weights=None))
    assert blocks[0][0] == first and blocks[-1][0] == last and len(blocks) == count
    backbone = make_backbone(name, (size, size, 3), weights=None)
    assert sum(len(layers) for _, layers in backbone_blocks(backbone)) == len(backbone.layers)


def _trainable_layer_names(model: keras.Model) -> set[str]:
    return {layer.name for layer in find_backbone(model).layers if layer.trainable and layer.weights}


@pytest.mark.parametrize("name", ["resnet50", "efficientnetb0"])
def test_freeze_then_unfreeze_top_blocks(name: str):
    model = create_model(name, input_shape=(SIZE, SIZE, 3), num_classes=3, weights=None)
    backbone = find_backbone(model)
    head_vars = {v.path for layer in model.layers if layer is not backbone for v in layer.trainable_weights}

    freeze_backbone(model)
    assert {v.path for v in model.trainable_weights} == head_vars  # only the head trains

    top2 = backbone_blocks(backbone)[-2:]
    expected = {layer.name for _, layers in top2 for layer in layers if layer.weights and not isinstance(layer, keras.layers.BatchNormalization)}
    unfrozen = unfreeze_model(model, blocks=2)
    assert set(unfrozen) == expected == _trainable_layer_names(model)
    assert all(not layer.trainable for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization))
    backbone_vars = {v.path for layer in backbone.layers if layer.name in expected for v in layer.weights}
    assert {v.path for v in model.trainable_weights} == head_vars | backbone_vars


def test_unfreeze_layers_and_all():
    model = create_model("vgg16", input_shape=(SIZE, SIZE, 3), num_classes=3, weights=None)
    assert unfreeze_model(model, num_layers=4) == ["block5_conv1", "block5_conv2", "block5_conv3"]  # + block5_pool, no weights
    assert len(unfreeze_model(model)) == 13  # every conv layer


def test_bn_stays_in_inference_mode_when_unfrozen():
    """A frozen BatchNormalization layer uses its moving statistics even in training mode, and does not update them."""
    model = create_model("resnet50", input_shape=(SIZE, SIZE, 3), num_classes=3, weights=None)
    unfreeze_model(model)
    bn = find_backbone(model).get_layer("conv1_bn")
    mean = bn.moving_mean.numpy().copy()
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    model.train_on_batch(*_batch())
    np.testing.assert_array_equal(bn.moving_mean.numpy(), mean)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"blocks": 99}, r"cannot unfreeze 99 blocks: resnet50 has 17 \(stem, conv2_block1, \.\.\., conv5_block3\)"),
        ({"num_layers": 10_000}, r"cannot unfreeze 10000 layers: resnet50 has 175"),
        ({"blocks": 0}, "between 1 and 17"),
        ({"blocks": 1, "num_layers": 1}, "not both"),
    ],
)
def test_unfreeze_depth_errors(kwargs: dict, message: str):
    model = create_model("resnet50", input_shape=(SIZE, SIZE, 3), num_classes=3, weights=None)
    with pytest.raises(ValueError, match=message):
        unfreeze_model(model, **kwargs)


def test_unfreeze_baseline_is_a_clear_error():
    model = create_model("baseline_cnn", input_shape=(SIZE, SIZE, 3), num_classes=3, blocks=[[4]])
    with pytest.raises(ValueError, match="no pretrained backbone"):
        unfreeze_model(model)


def test_unknown_backbone_lists_valid_ones():
    with pytest.raises(ValueError, match=r"unknown model 'resnet9'.*baseline_cnn, vgg16, vgg19, resnet50"):
        create_model("resnet9", input_shape=(SIZE, SIZE, 3), num_classes=2)


def test_input_too_small():
    with pytest.raises(ValueError, match=r"efficientnetb0 needs inputs of at least 32x32 pixels, got 16x16.*data.image_size"):
        create_model("efficientnetb0", input_shape=(16, 16, 3), num_classes=2, weights=None)
    with pytest.raises(ValueError, match=r"xception needs inputs of at least 71x71 pixels, got 64x64.*trained at 299"):
        create_model("xception", input_shape=(64, 64, 3), num_classes=2, weights=None)


@pytest.mark.parametrize("suffix", [".weights.h5", ".keras"])
def test_local_weights_file_is_loaded(tmp_path: Path, suffix: str):
    source = make_backbone("resnet50", (SIZE, SIZE, 3), weights=None)
    path = tmp_path / f"resnet50{suffix}"
    source.save_weights(path) if suffix == ".weights.h5" else source.save(path)
    model = create_model("resnet50", input_shape=(SIZE, SIZE, 3), num_classes=2, weights=str(path))
    for ours, theirs in zip(find_backbone(model).get_weights(), source.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, theirs)


def test_weights_of_a_trained_toolkit_model_start_a_new_one(tmp_path: Path):
    """A `.keras` model of this toolkit (other classes) gives its backbone to a new model."""
    trained = create_model("vgg16", input_shape=(SIZE, SIZE, 3), num_classes=5, weights=None)
    trained.save(tmp_path / "trained.keras")
    model = create_model("vgg16", input_shape=(SIZE, SIZE, 3), num_classes=2, weights=str(tmp_path / "trained.keras"))
    np.testing.assert_array_equal(find_backbone(model).get_weights()[0], find_backbone(trained).get_weights()[0])


@pytest.mark.parametrize(
    ("saved", "target", "suffix"), [("resnet50", "vgg16", ".weights.h5"), ("vgg16", "vgg19", ".weights.h5"), ("vgg16", "resnet50", ".keras")]
)
def test_weights_for_another_architecture(tmp_path: Path, saved: str, target: str, suffix: str):
    source = make_backbone(saved, (SIZE, SIZE, 3), weights=None)
    path = tmp_path / f"{saved}{suffix}"
    source.save_weights(path) if suffix == ".weights.h5" else source.save(path)
    with pytest.raises(ValueError, match=rf"{path}: these weights do not fit {target} .*Fix: pass a weights file saved from a {target}"):
        create_model(target, input_shape=(SIZE, SIZE, 3), num_classes=2, weights=str(path))


def test_missing_weights_file(tmp_path: Path):
    with pytest.raises(ValueError, match="weights file not found"):
        create_model("vgg16", input_shape=(SIZE, SIZE, 3), num_classes=2, weights=str(tmp_path / "nope.h5"))


def test_imagenet_download_failure_says_where_to_put_the_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """No network here: Keras' download fails with a raw URL error; we name the file, the cache folder and the options."""
    import keras.src.utils.file_utils as file_utils

    url = "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"

    def offline(*args, **kwargs):
        raise Exception(f"URL fetch failure on {url}: None -- [Errno -2] Name or service not known")

    monkeypatch.setattr(file_utils, "get_file", offline)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    with pytest.raises(
        ValueError,
        match=rf"could not download the ImageNet weights of vgg16.*Fix: download {re.escape(url)} "
        rf"elsewhere and place it in {tmp_path}/keras/models/.*model.weights=null",
    ):
        create_model("vgg16", input_shape=(SIZE, SIZE, 3), num_classes=2, weights="imagenet")


def test_batchnorm_momentum_from_scratch_and_pretrained(tmp_path: Path):
    """From scratch BN settles fast (0.9); loaded weights keep the architecture's own 0.99."""
    scratch = make_backbone("efficientnetb0", (SIZE, SIZE, 3), weights=None)
    assert {layer.momentum for layer in scratch.layers if isinstance(layer, keras.layers.BatchNormalization)} == {0.9}
    scratch.save_weights(tmp_path / "b0.weights.h5")
    loaded = make_backbone("efficientnetb0", (SIZE, SIZE, 3), weights=tmp_path / "b0.weights.h5")
    assert {layer.momentum for layer in loaded.layers if isinstance(layer, keras.layers.BatchNormalization)} == {0.99}
