"""app/explain: anatomy (shapes, receptive fields), feature maps, Grad-CAM, the `imgclf explain` command."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from app.cli import main
from app.config import Config, ConvBlock, load_config
from app.explain import anatomy, block_outputs, explain_anatomy, explain_feature_maps, feature_maps, gradcam, last_map_layer
from app.explain.activations import inner_model
from app.models import create_model
from app.models.backbones import find_backbone, get_spec
from app.models.geometry import SpatialOp, propagate
from app.runs import load_run
from app.training.run import train

FAMILIES = ["vgg16", "resnet50", "resnet50v2", "efficientnetb0", "efficientnetv2b0", "xception", "mobilenetv2", "mobilenetv3small"]  # one per family


def _size(name: str, at_least: int) -> int:
    """`at_least` pixels, or the family's smallest input when larger (Xception: 71)."""
    return at_least if name == "baseline_cnn" else max(at_least, get_spec(name).min_size)


def _spatial_sizes(table) -> list[tuple[str, int, int]]:
    """(layer, H by the shape arithmetic, H by Keras) for every layer with a spatial output."""
    rows = table[table["size"].notna()]
    return [(r.layer, int(r.size), int(r.output_shape.strip("()").split(",")[1])) for r in rows.itertuples()]


def test_hand_checked_stacks() -> None:
    # the lecture's example: a 7x7 input, a 3x3 kernel, stride 1, no padding -> 5x5
    assert propagate(7, [SpatialOp("conv", "conv", 3, 1, "valid")])[-1].output_size == 5
    # three 3x3 stride-1 convolutions see 7x7 input pixels (as one 7x7 would)
    layers = propagate(32, [SpatialOp(f"c{i}", "conv", 3, 1) for i in range(3)])
    assert [g.receptive_field for g in layers] == [3, 5, 7] and layers[-1].jump == 1
    inputs = keras.Input((32, 32, 3))
    x = inputs
    for i in range(3):
        x = keras.layers.Conv2D(4, 3, padding="valid", name=f"c{i}")(x)
    table = anatomy(keras.Model(inputs, x))
    assert list(table["receptive_field"].dropna().astype(int)) == [1, 3, 5, 7] and list(table["size"].astype(int)) == [32, 30, 28, 26]


@pytest.mark.parametrize("name,field", [("vgg16", 212), ("resnet50", 483)])
def test_receptive_fields_of_known_networks(name: str, field: int) -> None:
    # published values (Araujo et al., "Computing receptive fields of convolutional neural networks", Distill 2019)
    table = anatomy(create_model(name, input_shape=(32, 32, 3), num_classes=2, weights=None))
    assert int(table["receptive_field"].dropna().max()) == field


@pytest.mark.parametrize("name", ["baseline_cnn", *FAMILIES])
def test_anatomy_shapes_equal_the_models_own(name: str) -> None:
    blocks = [ConvBlock(8, 3, 1, 2, "max"), ConvBlock(16, 5, 2, 1, "avg"), ConvBlock(16, 3, 1, 1, "none")] if name == "baseline_cnn" else None
    size = _size(name, 48)
    model = create_model(name, input_shape=(size, size, 3), num_classes=3, weights=None, **({"blocks": blocks} if blocks else {}))
    table = anatomy(model)
    sizes = _spatial_sizes(table)
    assert len(sizes) > 5 and all(ours == keras_size for _, ours, keras_size in sizes), [s for s in sizes if s[1] != s[2]][:5]
    assert table["params"].sum() == model.count_params()  # every layer once, nested ones included
    first_conv = table[table["kernel"].notna()].iloc[0]
    height, width, channels = first_conv["output_shape"].strip("()").split(", ")[1:]
    assert first_conv.nchw == f"N×{channels}×{height}×{width}"


def _quadrant_images(count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Class 0: horizontal stripes in the top-left quadrant, class 1: vertical ones; noise everywhere else."""
    images = rng.integers(60, 120, (count, 32, 32, 3)).astype(np.uint8)
    labels = np.arange(count) % 2
    stripes = (np.arange(16) // 2 % 2 * 200).astype(np.uint8)
    for image, label in zip(images, labels):
        pattern = np.repeat(stripes[:, None], 16, axis=1) if label == 0 else np.repeat(stripes[None, :], 16, axis=0)
        image[:16, :16] = pattern[..., None]
    return images, labels


def test_gradcam_finds_the_quadrant_that_decides_the_class() -> None:
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x, y = _quadrant_images(256, rng)
    model = create_model(
        "baseline_cnn", input_shape=(32, 32, 3), num_classes=2, blocks=[ConvBlock(8, 3, 1, 1, "max"), ConvBlock(16, 3, 1, 1, "max")], dropout=0.0
    )
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=6, batch_size=32, verbose=0)
    test_x, test_y = _quadrant_images(32, rng)
    assert model.evaluate(test_x, test_y, verbose=0)[1] >= 0.9  # the model learned the task
    heat, probs = gradcam(model, test_x, classes=test_y)
    assert heat.shape == (32, 32, 32) and 0.0 <= heat.min() and heat.max() <= 1.0
    np.testing.assert_allclose(probs, model.predict(test_x, verbose=0), atol=1e-5)
    in_quadrant = heat[:, :16, :16].sum(axis=(1, 2)) / heat.sum(axis=(1, 2))
    assert np.mean(in_quadrant) >= 0.6, in_quadrant


@pytest.mark.parametrize("name", FAMILIES)
def test_gradcam_and_feature_maps_reach_inside_a_backbone(name: str) -> None:
    size = _size(name, 32)
    model = create_model(name, input_shape=(size, size, 3), num_classes=3, weights=None)
    images = np.random.default_rng(0).integers(0, 255, (3, size, size, 3)).astype(np.uint8)
    layer = last_map_layer(model)
    assert layer.startswith(f"{find_backbone(model).name}/")  # inside the nested backbone
    heat, probs = gradcam(model, images)
    assert heat.shape == (3, size, size) and np.isfinite(heat).all()
    np.testing.assert_allclose(probs, model.predict(images, verbose=0), atol=1e-4)
    names = block_outputs(model)  # stem, the family's blocks, top: one map each, all inside the backbone
    assert len(names) >= 4 and all(n.startswith(f"{find_backbone(model).name}/") for n in names)
    maps = feature_maps(model, images[0], names)
    for name_, activation in maps.items():
        expected = inner_model(model, [name_]).outputs[0].shape[-1]
        assert activation.ndim == 3 and activation.shape[-1] == expected


def test_feature_maps_have_each_layers_channels_and_files_are_written(trained_run: Path, tiny_config: Config) -> None:
    run = load_run(trained_run)
    assert block_outputs(run.model) == ["block1_relu2", "block2_relu2"]  # the last activation of each block (two convs each)
    image = next(Path(tiny_config.data.train).rglob("*.png"))
    maps = feature_maps(run.model, np.asarray(Image.open(image).convert("RGB").resize((32, 32))))
    assert [m.shape[-1] for m in maps.values()] == [8, 16]  # tiny_config's filters
    written = explain_feature_maps(run, image)
    assert len(written) == 3 and all(p.stat().st_size > 2000 for p in written)
    assert explain_anatomy(run).read_text().count("| block") >= 6


def test_cli_explain_every_view_and_its_errors(trained_run: Path, tiny_config: Config, capsys: pytest.CaptureFixture[str]) -> None:
    image = str(next(Path(tiny_config.data.train).rglob("*.png")))
    assert main(["explain", str(trained_run), "anatomy"]) == 0
    assert "receptive field" in capsys.readouterr().out
    assert main(["explain", str(trained_run), "gradcam", "--mistakes", "--count", "4"]) == 0
    assert "gradcam.png" in capsys.readouterr().out
    assert main(["explain", str(trained_run), "gradcam", "--class", "dog", "--count", "2"]) == 0
    assert (trained_run / "explain" / "gradcam_dog.png").is_file()
    capsys.readouterr()
    for args, message in [
        (["feature-maps", image, "--layers", "block9_conv1"], "has no layer 'block9_conv1'"),
        (["gradcam", "--class", "wolf"], "--class 'wolf' is not one of this run's classes"),
        (["feature-maps", str(trained_run / "missing.png")], "missing.png"),
    ]:
        assert main(["explain", str(trained_run), *args]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1


def test_train_with_output_explain_writes_the_pictures(tiny_config: Config) -> None:
    result = train(load_config(overrides=["output.explain=true", "train.epochs=1"], base=tiny_config))
    names = {p.name for p in (result.run_dir / "explain").iterdir()}
    assert "anatomy.md" in names and "gradcam.png" in names and any(n.startswith("channel_sums_") for n in names)
