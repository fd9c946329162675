"""Training options: optimizers, label smoothing, class weights, plateau, mixed precision, MirroredStrategy, LR finder."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

from app.cli import main
from app.config import Config, ScheduleConfig, load_config
from app.data import class_weights
from app.models import create_model
from app.training.fitting import compile_model
from app.training.lr_finder import find_lr, suggest_lr
from app.training.optimization import SparseCategoricalCrossentropySmoothed, make_optimizer
from app.training.run import train

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name,cls", [("adam", keras.optimizers.Adam), ("adamw", keras.optimizers.AdamW), ("sgd", keras.optimizers.SGD)])
def test_optimizers(name: str, cls: type):
    optimizer = make_optimizer(name, 0.01, weight_decay=None if name == "adamw" else 1e-4, momentum=0.9)
    assert type(optimizer) is cls and optimizer.weight_decay == pytest.approx(0.004 if name == "adamw" else 1e-4)
    if name == "sgd":
        assert optimizer.momentum == 0.9 and optimizer.nesterov


def test_biases_and_bn_are_not_weight_decayed():
    model = create_model("baseline_cnn", input_shape=(16, 16, 3), num_classes=2, blocks=[[4]])
    optimizer = make_optimizer("adamw", 0.1, weight_decay=0.5)
    optimizer.build(model.trainable_variables)
    decayed = {v.name for v in model.trainable_variables if optimizer._use_weight_decay(v)}
    assert "kernel" in decayed and not decayed & {"bias", "gamma", "beta"}


def test_unknown_optimizer():
    with pytest.raises(ValueError, match="unknown optimizer 'adamax'.*adam, adamw, sgd"):
        make_optimizer("adamax", 0.1)


def test_label_smoothing_loss_equals_keras_categorical_with_smoothing():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(5), size=8).astype("float32")
    labels = rng.integers(0, 5, 8)
    ours = SparseCategoricalCrossentropySmoothed(0.1)(labels, probs)
    reference = keras.losses.CategoricalCrossentropy(label_smoothing=0.1)(np.eye(5)[labels], probs)
    assert float(ours) == pytest.approx(float(reference), rel=1e-6)
    restored = keras.losses.deserialize(keras.losses.serialize(SparseCategoricalCrossentropySmoothed(0.2)))
    assert restored.label_smoothing == 0.2


def test_class_weights():
    labels = np.array([0] * 6 + [1] * 2)
    assert class_weights(labels, ["a", "b"], "balanced") == pytest.approx({0: 8 / (2 * 6), 1: 8 / (2 * 2)})
    assert class_weights(labels, ["a", "b"], {"b": 3.0}) == {0: 1.0, 1: 3.0}
    assert class_weights(labels, ["a", "b"], None) is None
    with pytest.raises(ValueError, match=r"unknown class\(es\) \['c'\]. Fix: use the class names a, b"):
        class_weights(labels, ["a", "b"], {"c": 2.0})
    with pytest.raises(ValueError, match="single-label data only"):
        class_weights(np.zeros((4, 2)), ["a", "b"], "balanced", multilabel=True)


def test_train_with_adamw_smoothing_and_class_weights(tiny_config: Config):
    config = load_config(
        overrides=["train.optimizer=adamw", "train.label_smoothing=0.1", "train.class_weight=balanced", "train.schedule=one_cycle"], base=tiny_config
    )
    result = train(config)
    assert np.isfinite(result.history["loss"]).all()
    reloaded = keras.saving.load_model(result.model_path, safe_mode=True)
    assert not reloaded.compiled  # the saved model is the inference model: no custom loss or schedule to deserialize
    model = create_model("baseline_cnn", input_shape=(32, 32, 3), num_classes=3, blocks=[[4]])
    compile_model(model, config, 1e-3, multilabel=False)
    assert isinstance(model.loss, SparseCategoricalCrossentropySmoothed)  # what train compiled with


def test_plateau_schedule_reduces_the_rate(tiny_config: Config):
    config = load_config(
        overrides=[
            "augment.train=none",
            "model.dropout=0.0",
            "train.learning_rate=1e-7",  # nothing improves by min_delta: a plateau from the first epoch
            "train.monitor=accuracy",
            "train.epochs=3",
            "train.schedule={name: plateau, patience: 1, decay_rate: 0.5}",
        ],
        base=tiny_config,
    )
    history = pd.read_csv(train(config).run_dir / "history.csv")
    assert history["learning_rate"].iloc[0] == pytest.approx(1e-7) and history["learning_rate"].iloc[-1] == pytest.approx(5e-8)


def test_reduce_on_plateau_with_a_schedule_is_a_clear_error(tiny_config: Config):
    with pytest.raises(ValueError, match="ReduceLROnPlateau cannot change a learning rate that follows the 'cosine' schedule. Fix"):
        train(tiny_config, callbacks=[keras.callbacks.ReduceLROnPlateau()])


def test_mixed_precision_on_cpu_is_a_note(tiny_config: Config, caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.WARNING):
        result = train(replace(tiny_config, train=replace(tiny_config.train, mixed_precision=True, epochs=1)))
    assert "no GPU visible" in caplog.text and result.metrics["precision_policy"] == "float32"
    assert keras.mixed_precision.global_policy().name == "float32"


def test_head_outputs_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = create_model("efficientnetb0", input_shape=(32, 32, 3), num_classes=3, weights=None)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.get_layer("avg_pool").compute_dtype == "float16" and model.output.dtype == "float32"


MIRRORED = """
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from app.config import load_config
from app.training.run import train
config = load_config(overrides=sys.argv[1:])
print(json.dumps(train(config).metrics))
"""


def test_mirrored_strategy_on_two_logical_cpus(folder_dataset: Path, tmp_path: Path):
    overrides = [f"data.train={folder_dataset}", "data.image_size=32", "data.batch_size=4", "model.blocks=[[8]]"]
    overrides += ["train.epochs=2", "train.verbose=0", "train.distribute=mirrored", f"output.dir={tmp_path}"]
    done = subprocess.run([sys.executable, "-c", MIRRORED, *overrides], check=False, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads(done.stdout.strip().splitlines()[-1])
    assert metrics["replicas"] == 2 and metrics["epochs_run"] == 2 and np.isfinite(metrics["val"]["log_loss"])


MULTIWORKER = """
import json, os, socket, sys
sock = socket.socket(); sock.bind(("localhost", 0)); port = sock.getsockname()[1]; sock.close()
os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": [f"localhost:{port}"]}, "task": {"type": "worker", "index": 0}})
from app.config import load_config
from app.training.run import train
print(json.dumps(train(load_config(overrides=sys.argv[1:])).metrics))
"""


def test_multiworker_strategy_from_tf_config(folder_dataset: Path, tmp_path: Path):
    """A one-worker cluster in TF_CONFIG: the same code path as several machines, each running this command."""
    overrides = [f"data.train={folder_dataset}", "data.image_size=32", "data.batch_size=4", "model.blocks=[[8]]"]
    overrides += ["train.epochs=2", "train.verbose=0", "train.distribute=multiworker", f"output.dir={tmp_path}"]
    done = subprocess.run([sys.executable, "-c", MULTIWORKER, *overrides], check=False, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["epochs_run"] == 2


def test_a_time_limit_is_refused_with_several_workers(folder_dataset: Path, tmp_path: Path):
    """Each worker would stop at its own clock's epoch, and the others would wait for it forever."""
    overrides = [f"data.train={folder_dataset}", "data.image_size=32", "train.distribute=multiworker", "train.max_minutes=5", f"output.dir={tmp_path}"]
    done = subprocess.run([sys.executable, "-c", MULTIWORKER, *overrides], check=False, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "config key train.max_minutes: not with several workers (multiworker)" in done.stderr
    assert not list(tmp_path.glob("*/model.keras"))  # refused before training


TWO_WORKERS = """
import json, os, sys
index, ports, weights_path = int(sys.argv[1]), sys.argv[2].split(","), sys.argv[3]
if len(ports) > 1:
    os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]}, "task": {"type": "worker", "index": index}})
import keras, numpy as np
from app.config import load_config
from app.training.run import train

class SaveWeights(keras.callbacks.Callback):
    def on_train_end(self, logs=None):
        np.savez(weights_path, *self.model.get_weights())

result = train(load_config(overrides=sys.argv[4:]), callbacks=[SaveWeights()])
print(json.dumps({"run_dir": str(result.run_dir), "history": result.history}))
"""


@pytest.mark.slow
def test_two_workers_on_loopback_train_as_one_process_on_the_same_batches(folder_dataset: Path, tmp_path: Path):
    """train.distribute=multiworker with two processes on 127.0.0.1: the same weights as one process on the same
    global batches (augmentation on; dropout off, since each replica draws its own mask), and only the chief writes."""
    ports = [str(port) for port in _free_ports(2)]
    overrides = [f"data.train={folder_dataset}", "data.image_size=32", "data.batch_size=8", "data.val_fraction=0.33", "model.blocks=[[8], [16]]"]
    overrides += ["model.dropout=0", "train.epochs=2", "train.verbose=0"]

    def start(index: int, cluster: list[str], out: Path) -> subprocess.Popen:
        command = [
            sys.executable,
            "-c",
            TWO_WORKERS,
            str(index),
            ",".join(cluster),
            str(tmp_path / f"weights{index}-{len(cluster)}.npz"),
            *overrides,
            f"output.dir={out}",
        ]
        return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    workers = [start(index, ports, tmp_path / "two") for index in (0, 1)]
    outputs = [worker.communicate(timeout=300) for worker in workers]
    for worker, (_, err) in zip(workers, outputs):
        assert worker.returncode == 0, err[-3000:]
    alone = start(0, ["single"], tmp_path / "one")
    out, err = alone.communicate(timeout=300)
    assert alone.returncode == 0, err[-3000:]

    chief, other = (json.loads(out.strip().splitlines()[-1]) for out, _ in outputs)
    single = json.loads(out.strip().splitlines()[-1])
    assert [p.name for p in (tmp_path / "two").iterdir()] == [Path(chief["run_dir"]).name]  # the chief alone writes the run
    assert not Path(other["run_dir"]).exists()  # the other worker's scratch folder is gone
    assert chief["history"]["loss"] == other["history"]["loss"]  # the logs are reduced over both workers
    np.testing.assert_allclose(chief["history"]["loss"], single["history"]["loss"], rtol=1e-4)
    weights = [np.load(tmp_path / f"weights{index}-{n}.npz") for index, n in ((0, 2), (1, 2), (0, 1))]
    for name in weights[0].files:
        np.testing.assert_array_equal(weights[0][name], weights[1][name])  # the replicas stay in step
        np.testing.assert_allclose(weights[0][name], weights[2][name], atol=1e-4)  # and take one process's steps


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


@pytest.mark.parametrize(
    "mode,tf_config,message",
    [
        ("multiworker", None, "needs TF_CONFIG describing the cluster"),
        ("auto", "{not json", "TF_CONFIG is not valid JSON"),
        ("tpu", None, "unknown train.distribute='tpu'"),
    ],
)
def test_strategy_errors(monkeypatch: pytest.MonkeyPatch, mode: str, tf_config: str | None, message: str):
    from app.devices import make_strategy

    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(ValueError, match=message):
        make_strategy(mode)


def test_lr_finder_on_a_tiny_problem(tiny_config: Config):
    result = find_lr(tiny_config, steps=40, start_lr=1e-5, end_lr=10.0)
    assert 1e-5 <= result.suggested_lr <= 10.0 and np.isfinite(result.suggested_lr)
    assert len(result.losses) == len(result.learning_rates) >= 3
    assert np.all(np.diff(result.learning_rates) > 0)


def _smoothed(losses: np.ndarray, beta: float = 0.98) -> np.ndarray:
    """The LR finder's bias-corrected moving average."""
    average, out = 0.0, []
    for step, loss in enumerate(losses):
        average = beta * average + (1 - beta) * loss
        out.append(average / (1 - beta ** (step + 1)))
    return np.array(out)


def test_suggest_lr_lies_in_the_long_descent():
    lrs = np.logspace(-6, 0, 61)
    losses = 2.0 - np.tanh((np.log10(lrs) + 3) * 2)  # falls from 1e-4 to 1e-2, steepest at 1e-3
    losses[-5:] += np.linspace(0, 4, 5)  # then divergence
    assert 3e-4 <= suggest_lr(lrs, losses) <= 3e-3


def test_suggest_lr_is_not_fooled_by_the_noisy_first_steps():
    """The shape reported on real photos (flowers at 32 px, a two-class set at 64 px, 100 steps from 1e-7 to 1): the
    loss wanders at tiny rates, falls steadily from 1e-4 to 1e-1, is lowest near 0.5, then diverges. The
    steepest-descent pick once landed at 4e-7 to 6e-7 on such curves."""
    lrs = 1e-7 * (1e7 ** (np.arange(100) / 100))
    x = np.log10(lrs)
    clean = 1.61 - 0.9 / (1 + np.exp(-(x + 2.5) * 2.2)) + np.where(x > -0.3, (x + 0.3) * 8, 0)
    for seed in range(5):
        raw = clean + np.random.default_rng(seed).normal(0, 0.1, 100)
        raw[:10] += 0.5  # the first batches' losses are high: the smoothed loss falls fast at rates that teach nothing
        smoothed = _smoothed(raw)
        assert lrs[int(np.argmin(smoothed))] == pytest.approx(0.5, rel=0.1)
        assert 1e-4 <= suggest_lr(lrs, smoothed) <= 1e-1  # the steepest-descent pick: 4.3e-7 to 5e-7 on these


def test_cli_find_lr_and_plot_lr(tiny_config: Config, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    (tmp_path / "c.yaml").write_text(json.dumps({"data": {"train": tiny_config.data.train, "image_size": 32, "batch_size": 8}, "model": {"blocks": [[8]]}}))
    base = ["-c", str(tmp_path / "c.yaml"), "--set", f"output.dir={tmp_path / 'runs'}"]
    assert main(["find-lr", *base, "--steps", "20", "--start-lr", "1e-5", "--end-lr", "1"]) == 0
    assert "suggested learning rate:" in capsys.readouterr().out
    (run,) = (tmp_path / "runs").iterdir()
    assert {"config.yaml", "lr_finder.csv", "lr_finder.png", "lr_finder.json"} <= {p.name for p in run.iterdir()}

    png = tmp_path / "lr.png"
    assert main(["plot-lr", *base, "--set", "train.schedule={name: cosine, warmup_epochs: 1}", "--output", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG" and "3 steps per epoch" in capsys.readouterr().out  # 18 images / 8
    assert main(["plot-lr", *base, "--output", str(png)]) == 2  # exists: needs --force
    assert main(["plot-lr", *base, "--set", "train.schedule.warmup_epochs=30", "--output", str(png), "--force"]) == 2
    assert "warmup of 30 epochs is not shorter than the 30 epochs of training" in capsys.readouterr().err


@pytest.mark.parametrize(
    "override,message",
    [
        ("model.name=resnet9", "model.name: 'resnet9' is not a registered model (`imgclf models` lists 30); did you mean 'resnet50'?"),
        ("train.schedule=cosine_annealing", "train.schedule: 'cosine_annealing' is not one of constant, step"),
        ("train.distribute=tpu", "train.distribute: 'tpu' is not one of auto, none, mirrored, multiworker"),
        ("model.name=vgg16,data.image_size=16", "vgg16 needs inputs of at least 32x32 pixels, got 16x16"),
        ("train.schedule.warmup_epochs=40", "warmup of 40 epochs is not shorter than the 30 epochs of training"),
        ("model.name=vgg16,finetune.epochs=1,finetune.unfreeze_blocks=9", "cannot unfreeze 9 blocks: vgg16 has 6"),
        ("model.name=vgg16,model.weights=imagenet", "could not download the ImageNet weights of vgg16"),  # offline, see below
        ("train.class_weight={wolf: 2}", "train.class_weight names unknown class(es) ['wolf']"),
    ],
)
def test_cli_bad_options_are_one_line(
    tiny_config: Config, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, override: str, message: str
):
    import keras.src.utils.file_utils as file_utils

    def offline(fname, origin, *args, **kwargs):  # as Keras fails without network, whether or not this machine has one
        raise Exception(f"URL fetch failure on {origin}: None -- [Errno -2] Name or service not known")

    monkeypatch.setattr(file_utils, "get_file", offline)
    args = ["train", "--set", f"data.train={tiny_config.data.train}", "--set", f"output.dir={tmp_path}", "--set", "model.weights=null"]
    args += [a for item in override.split(",") for a in ("--set", item)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_schedule_shorthand_and_overrides():
    config = load_config(overrides=["train.schedule=step", "train.schedule.decay_epochs=3"])
    assert config.train.schedule == ScheduleConfig(name="step", decay_epochs=3)
    config = load_config(overrides=["train.schedule={name: cosine, warmup_epochs: 2}", "train.schedule=polynomial"])
    assert config.train.schedule.name == "polynomial" and config.train.schedule.warmup_epochs == 2
    assert load_config(overrides=["train.class_weight={cat: 2}"]).train.class_weight == {"cat": 2.0}
