"""Models that leave the toolkit: plain-Keras loading with nothing of it imported, and every export format's parity."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

from app import cli
from app.atomic import OutputExistsError
from app.config import load_config
from app.data import evaluation_set
from app.inference.export import FORMATS, check_export, export_run, load_exported, read_metadata
from app.models import create_model
from app.models.backbones import BackbonePreprocess, find_backbone, get_spec
from app.models.portable import portable_model
from app.runs import Run, load_run
from app.training.run import train
from tests.conftest import multilabel_config

PLAIN_KERAS = textwrap.dedent(
    """
    import json, sys
    import keras, numpy as np
    out = {}
    for path, batch in json.loads(sys.argv[1]).items():
        model = keras.saving.load_model(path, safe_mode=True)
        out[path] = np.asarray(model.predict(np.load(batch), verbose=0)).tolist()
    toolkit = sorted(m for m in sys.modules if m.split(".")[0] in ("app", "pipelines", "tuning"))
    print(json.dumps({"probs": out, "toolkit_modules": toolkit}))
    """
)


def plain_keras_predict(models: dict[Path, np.ndarray], tmp_path: Path) -> dict[Path, np.ndarray]:
    """Load each `.keras` file in a fresh Python that imports only Keras, and predict its batch there; no module of
    this toolkit may have been imported by loading (Keras imports nothing it was not told of)."""
    batches = {}
    for i, (path, batch) in enumerate(models.items()):
        np.save(tmp_path / f"batch{i}.npy", batch)
        batches[str(path)] = str(tmp_path / f"batch{i}.npy")
    done = subprocess.run(
        [sys.executable, "-c", PLAIN_KERAS, json.dumps(batches)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
        env={"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", str(tmp_path)), "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["toolkit_modules"] == []
    return {Path(p): np.asarray(v) for p, v in result["probs"].items()}


def _batch(n: int = 3, size: int = 32) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_a_runs_model_loads_in_plain_keras(trained_run: Path, tmp_path: Path) -> None:
    """model.keras as train writes it: no optimizer, schedule or loss of this toolkit inside, same probabilities."""
    run = load_run(trained_run)
    assert not run.model.compiled  # the checkpoint holds the inference model
    x = _batch()
    got = plain_keras_predict({trained_run / "model.keras": x}, tmp_path)
    np.testing.assert_allclose(got[trained_run / "model.keras"], run.model.predict(x, verbose=0), atol=1e-6)


FAMILIES = [
    "vgg16",
    "resnet50",
    "resnet50v2",
    "efficientnetb0",
    "efficientnetv2b0",
    "xception",
    "mobilenetv2",
    "mobilenetv3small",
    "convnexttiny",
    "densenet121",
]


@pytest.mark.slow
def test_every_backbone_family_loads_in_plain_keras(tmp_path: Path) -> None:
    saved, expected = {}, {}
    for name in FAMILIES:
        size = max(32, get_spec(name).min_size)
        x = _batch(2, size)
        model = create_model(name, input_shape=(size, size, 3), num_classes=3, weights=None)
        path = tmp_path / f"{name}.keras"
        portable_model(model).save(path)
        saved[path], expected[path] = x, model.predict(x, verbose=0)
    got = plain_keras_predict(saved, tmp_path)
    for path in saved:
        np.testing.assert_allclose(got[path], expected[path], atol=1e-5, err_msg=path.name)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet50", "efficientnetb0", "xception"])
def test_backbone_exports_run_in_their_engines(name: str, tmp_path: Path) -> None:
    """EfficientNet's Normalization constants once became extra ONNX inputs that onnxruntime refused; the caffe
    families carry the channel-swap convolution. Every engine gives the model's probabilities."""
    size = max(32, get_spec(name).min_size)
    config = load_config(overrides=[f"model.name={name}", f"data.image_size={size}", "model.weights=null"])
    model = create_model(name, input_shape=(size, size, 3), num_classes=3, weights=None)
    run = Run(tmp_path, config, model, ["a", "b", "c"], False)
    x = _batch(4, size)
    expected = model.predict(x, verbose=0)
    for fmt in ("saved_model", "tflite", "onnx"):
        got = load_exported(export_run(run, fmt))(x)
        np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=fmt)


@pytest.mark.parametrize("name", ["vgg16", "resnet50v2"])
def test_a_model_saved_with_the_legacy_preprocess_layer_becomes_portable(name: str) -> None:
    """Runs written before the built-in preprocessing hold BackbonePreprocess: the export replaces it, same outputs."""
    current = create_model(name, input_shape=(32, 32, 3), num_classes=2, weights=None)
    inputs = keras.Input((32, 32, 3), dtype="uint8", name="image")
    legacy = keras.Model(
        inputs,
        current.get_layer("predictions")(
            current.get_layer("head_dropout")(current.get_layer("avg_pool")(find_backbone(current)(BackbonePreprocess(name, name="preprocess")(inputs))))
        ),
        name=current.name,
    )
    portable = portable_model(legacy)
    assert not any(isinstance(layer, BackbonePreprocess) for layer in portable.layers)
    x = _batch(2)
    np.testing.assert_allclose(portable.predict(x, verbose=0), legacy.predict(x, verbose=0), atol=1e-6)
    reference = find_backbone(current)(get_spec(name).preprocess_input(x.astype("float32")))
    features = x
    for layer in portable.layers[1:]:  # the built-in preprocessing, then the backbone
        if layer.name == "avg_pool":
            break
        features = layer(features)
    np.testing.assert_allclose(np.asarray(features), np.asarray(reference), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_matches_the_runs_own_probabilities(trained_run: Path, fmt: str) -> None:
    run = load_run(trained_run)
    exported = export_run(run, fmt)
    assert exported.path == trained_run / "export" / {"keras": "model.keras", "saved_model": "saved_model", "tflite": "model.tflite", "onnx": "model.onnx"}[fmt]
    assert exported.size_bytes > 1000
    meta = read_metadata(exported.path)
    assert meta["class_names"] == run.class_names and meta["image_size"] == 32 and meta["label_mode"] == "single_label"
    assert meta["input"]["dtype"] == "uint8" and meta["format"] == fmt
    images = evaluation_set(run.config, run.class_names)
    check = check_export(exported, run, images)
    assert check.images == len(images) > 0
    assert check.ok and check.max_abs_diff < 1e-4 and check.same_top_class == 1.0


def test_a_check_fails_when_the_export_differs(trained_run: Path) -> None:
    """The parity check can fail: an export of another model (weights changed after exporting) is caught."""
    run = load_run(trained_run)
    exported = export_run(run, "keras")
    head = run.model.get_layer("predictions")
    head.set_weights([w + np.random.default_rng(0).normal(0, 1, w.shape) for w in head.get_weights()])  # not a shift: softmax ignores those
    check = check_export(exported, run, evaluation_set(run.config, run.class_names))
    assert not check.ok and check.max_abs_diff > 1e-3


def test_a_multilabel_run_exports_sigmoid_probabilities(tmp_path: Path) -> None:
    config = multilabel_config(tmp_path, 16)
    run = load_run(train(config).run_dir)
    exported = export_run(run, "saved_model")
    assert read_metadata(exported.path)["label_mode"] == "multi_label"
    probs = load_exported(exported)(_batch(4, 16))
    assert probs.shape == (4, 2) and not np.allclose(probs.sum(1), 1.0)  # independent sigmoids, not a softmax
    assert check_export(exported, run, evaluation_set(run.config, run.class_names)).ok


def test_an_existing_export_is_never_replaced_without_force(trained_run: Path) -> None:
    run = load_run(trained_run)
    first = export_run(run, "tflite")
    before = first.path.read_bytes()
    with pytest.raises(OutputExistsError, match="already exists.*--force"):
        export_run(run, "tflite")
    assert first.path.read_bytes() == before
    export_run(run, "saved_model")
    with pytest.raises(OutputExistsError):
        export_run(run, "saved_model")
    again = export_run(run, "saved_model", force=True)
    assert (again.path / "saved_model.pb").is_file()
    assert not [p for p in again.path.parent.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_cli_export_with_check(trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.export.FORMATS == FORMATS  # the CLI lists them without importing TensorFlow
    out = tmp_path / "served"
    assert cli.main(["export", str(trained_run), "--format", "saved_model", "--output", str(out), "--check", "--count", "4"]) == 0
    printed = capsys.readouterr().out
    assert f"saved_model: {out}" in printed and "parity on 4 images" in printed and ": ok" in printed
    assert (out / "saved_model.pb").is_file() and (tmp_path / "served.json").is_file()


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--format", "keras", "tflite", "--output", "x.keras"], "--output names one export"),
        (["--format", "keras", "--output", "model.h5"], "must end in .keras"),
        (["--count", "0", "--check"], "--count 0"),
    ],
)
def test_cli_export_bad_options_are_one_line(trained_run: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["export", str(trained_run), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_onnx_without_its_packages_is_one_clear_error(trained_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # import tf2onnx now raises ImportError
    with pytest.raises(ValueError, match=r"needs the package tf2onnx.*pip install 'imgclf\[export\]'"):
        export_run(load_run(trained_run), "onnx")
    assert not (trained_run / "export" / "model.onnx").exists()
