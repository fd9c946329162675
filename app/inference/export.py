"""Models that leave the toolkit: a run's model exported as `.keras`, SavedModel, LiteRT (`.tflite`) or ONNX, with the
class names beside it, and a parity check of each export against the run's own predictions.

Every export takes what the run's pipeline feeds its model, uint8 RGB images of the run's size (N, H, W, 3), and
returns probabilities (softmax, or sigmoid for a multi-label run) in the order of `class_names` in the JSON file
written beside it (`<export>.json`). Resizing to that size (and `augment.eval`, when a run sets one) is the caller's
part, as in `imgclf predict`.

    exported = export_run(load_run("runs/20260101-baseline_cnn"), "saved_model")
    check = check_export(exported, run, images)      # max |probability difference| against the run's model

The SavedModel serves with TensorFlow's standard `serving_default` signature (input `image`, output `output_0`).
LiteRT uses the converter inside TensorFlow; ONNX (input `image`, output `probabilities`) needs the optional extra
`pip install 'imgclf[export]'` (tf2onnx, onnxruntime).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from app import keras_compat
from app.atomic import OutputExistsError, atomic_write, write_json
from app.data import evaluation_set, make_tf_dataset
from app.inference.prediction import predict_probs
from app.models.portable import portable_model
from app.runs import Run
from pipelines.errors import DataError, OptionError
from pipelines.sources import ImageSet

FORMATS = ("keras", "saved_model", "tflite", "onnx")
DEFAULT_NAMES = {"keras": "model.keras", "saved_model": "saved_model", "tflite": "model.tflite", "onnx": "model.onnx"}
TOLERANCE = 1e-4  # largest |probability difference| a parity check accepts: float32 arithmetic in another order
EXTRA_HINT = "Fix: pip install 'imgclf[export]' (tf2onnx, onnxruntime), or choose --format keras, saved_model or tflite."


@dataclass(frozen=True)
class Exported:
    """An exported model: its path (a file, or a folder for saved_model), format and metadata file."""

    path: Path
    format: str
    metadata_path: Path

    @property
    def size_bytes(self) -> int:
        if self.path.is_dir():
            return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())
        return self.path.stat().st_size


@dataclass(frozen=True)
class ParityCheck:
    """The exported model's probabilities against the run's own (`predict_probs`) on the same images."""

    format: str
    images: int
    max_abs_diff: float
    tolerance: float
    same_top_class: float  # fraction of images whose most probable class agrees

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance


def metadata_path(path: Path) -> Path:
    """`model.tflite` -> `model.tflite.json`: one metadata file per export, even with several in one folder."""
    return path.with_name(path.name + ".json")


def export_metadata(run: Run, fmt: str) -> dict[str, Any]:
    """What a consumer of the exported model needs: class order, input, output and where it came from."""
    size = run.config.data.image_size
    return {
        "format": fmt,
        "class_names": list(run.class_names),
        "label_mode": "multi_label" if run.multilabel else "single_label",
        "input": {"name": "image", "dtype": "uint8", "shape": [None, size, size, 3], "channels": "RGB, 0-255, resized to image_size"},
        "image_size": size,
        "output": "sigmoid probabilities, one per class" if run.multilabel else "softmax probabilities, one per class",
        "eval_transform": run.config.augment.eval,
        "run": str(run.path),
        "model": run.config.model.name,
    }


def export_run(run: Run, fmt: str = "keras", output: str | os.PathLike | None = None, *, force: bool = False) -> Exported:
    """Write the run's inference model in `fmt` to `output` (default: `<run>/export/<model.keras | saved_model |
    model.tflite | model.onnx>`) and its metadata beside it. Nothing existing is replaced unless `force`; the
    export appears whole or not at all (written beside, then renamed)."""
    if fmt not in FORMATS:
        raise OptionError(f"unknown export format {fmt!r}. Fix: use one of {', '.join(FORMATS)}")
    path = Path(output) if output else run.path / "export" / DEFAULT_NAMES[fmt]
    if fmt == "keras" and path.suffix != ".keras":
        raise OptionError(f"{path}: a Keras model file must end in .keras. Fix: pass --output {path.with_suffix('.keras')}")
    for target in (path, metadata_path(path)):
        if target.exists() and not force:
            raise OutputExistsError(f"{target}: already exists. Fix: choose another --output, or pass --force to replace it.")
    if fmt == "onnx":
        _require_onnx()
    model = portable_model(run.model)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = model.inputs[0]
    signature = [keras.InputSpec(shape=(None, *image.shape[1:]), dtype=image.dtype, name="image")]  # any batch size
    with _quiet_export():
        if fmt == "keras":
            atomic_write(path, lambda tmp: model.save(tmp))
        elif fmt == "saved_model":
            _atomic_folder(path, lambda tmp: model.export(str(tmp), format="tf_saved_model", verbose=False, input_signature=signature))
        elif fmt == "tflite":
            atomic_write(path, lambda tmp: model.export(str(tmp), format="litert", verbose=False, input_signature=signature))
        else:
            atomic_write(path, lambda tmp: _export_onnx(model, tmp))
    write_json(metadata_path(path), export_metadata(run, fmt))
    return Exported(path, fmt, metadata_path(path))


def _atomic_folder(path: Path, write: Callable[[Path], None]) -> None:
    """`write(tmp_folder)` beside `path`, then rename it onto `path` (an existing one, already allowed, goes last)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        target = tmp / path.name
        write(target)
        if path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _export_onnx(model: keras.Model, path: Path) -> None:
    """tf2onnx on the model's graph with every variable and captured tensor frozen into a constant.

    Keras' own `export(format="onnx")` hands tf2onnx the unfrozen function: the constants that EfficientNet's
    `Normalization` layer captures then become extra inputs of the ONNX graph, which onnxruntime refuses to run
    without ("Required inputs ... normalization/Sub/y:0 are missing"). Frozen, every family converts; the graph's
    input and output are renamed `image` and `probabilities`."""
    import tensorflow as tf
    import tf2onnx
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    keras_compat.patch_tf2onnx()
    logging.getLogger("tf2onnx").setLevel(logging.WARNING)  # its INFO lines (versions, optimizer passes) are not the user's
    image = model.inputs[0]
    spec = tf.TensorSpec((None, *image.shape[1:]), image.dtype, name="image")
    frozen = convert_variables_to_constants_v2(tf.function(lambda x: model(x, training=False)).get_concrete_function(spec))
    inputs, outputs = [t.name for t in frozen.inputs], [t.name for t in frozen.outputs]
    proto, _ = tf2onnx.convert.from_graph_def(frozen.graph.as_graph_def(), input_names=inputs, output_names=outputs, opset=17)
    renames = {inputs[0]: "image", outputs[0]: "probabilities"}
    for value in [*proto.graph.input, *proto.graph.output]:
        value.name = renames.get(value.name, value.name)
    for node in proto.graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    path.write_bytes(proto.SerializeToString())


def _require_onnx() -> None:
    for module in ("tf2onnx", "onnxruntime"):
        try:
            __import__(module)
        except ImportError:
            raise DataError(f"ONNX export needs the package {module}, which is not installed. {EXTRA_HINT}") from None


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """The converters' deprecation chatter (tf2onnx on NumPy, the TFLite interpreter's future) is not the user's."""
    import tensorflow as tf

    tf_logger, level = tf.get_logger(), tf.get_logger().level
    tf_logger.setLevel("ERROR")  # convert_variables_to_constants_v2 warns that it is a TF1 API
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
            yield
    finally:
        tf_logger.setLevel(level)


def load_exported(exported: Exported) -> Callable[[np.ndarray], np.ndarray]:
    """A function from a uint8 batch (N, H, W, 3) to probabilities, running the export in the engine it is for:
    Keras, TensorFlow's SavedModel signature, the LiteRT interpreter, or onnxruntime."""
    path = str(exported.path)
    if exported.format == "keras":
        model = keras.saving.load_model(path, safe_mode=True)
        return lambda batch: np.asarray(model.predict_on_batch(batch))
    if exported.format == "saved_model":
        import tensorflow as tf

        serve = tf.saved_model.load(path).signatures["serving_default"]
        return lambda batch: next(iter(serve(image=tf.constant(batch)).values())).numpy()
    if exported.format == "tflite":
        interpreter = _tflite_interpreter(path)

        def run_tflite(batch: np.ndarray) -> np.ndarray:
            given, wanted = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
            interpreter.resize_tensor_input(given["index"], batch.shape)
            interpreter.allocate_tensors()
            interpreter.set_tensor(given["index"], batch)
            interpreter.invoke()
            return np.array(interpreter.get_tensor(wanted["index"]))

        return run_tflite
    _require_onnx()
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda batch: session.run(None, {name: batch})[0]


def _tflite_interpreter(path: str) -> Any:
    """The LiteRT interpreter (`ai_edge_litert`) where installed, else the one TensorFlow still ships."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        with _quiet_export():
            return tf.lite.Interpreter(model_path=path)
    return Interpreter(model_path=path)


def check_export(exported: Exported, run: Run, images: ImageSet, tolerance: float = TOLERANCE) -> ParityCheck:
    """Run the export on `images` as the run's pipeline prepares them, and compare with the run's own
    probabilities (`predict_probs`, the path of `imgclf predict`)."""
    if len(images) == 0:
        raise DataError("no images to check the export on. Fix: pass --data with a folder or CSV of images.")
    expected = predict_probs(run.model, images, run.config, verbose=0)
    predict = load_exported(exported)
    with make_tf_dataset(images, run.config.data, run.config.augment.eval, training=False, seed=run.config.seed) as batches, _quiet_export():
        got = np.concatenate([predict(np.asarray(batch[0] if isinstance(batch, tuple) else batch)) for batch in batches.dataset.as_numpy_iterator()])
    if got.shape != expected.shape:
        raise RuntimeError(f"{exported.path}: the export gave probabilities of shape {got.shape}, the run {expected.shape}")
    same_top = float(np.mean(got.argmax(1) == expected.argmax(1)))
    return ParityCheck(exported.format, len(images), float(np.max(np.abs(got - expected))), tolerance, same_top)


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata written beside an export (pass the export's own path)."""
    return json.loads(metadata_path(Path(path)).read_text())


def export_formats(
    run: Run,
    formats: Sequence[str],
    output: str | os.PathLike | None = None,
    *,
    force: bool = False,
    check: bool = False,
    data: str | None = None,
    images: str | None = None,
    count: int = 64,
) -> Iterator[tuple[Exported, ParityCheck | None]]:
    """Export `run` in each format in turn, each with its parity check on `count` labeled images (`data`, default the
    run's validation split) when `check`: yielded as they are done, so that a caller can report each at once."""
    checked = None
    if check:
        labeled = evaluation_set(run.config, run.class_names, data, images)
        checked = labeled.subset(range(min(count, len(labeled))))
    for fmt in formats:
        exported = export_run(run, fmt, output, force=force)
        yield exported, (check_export(exported, run, checked) if checked is not None else None)
