"""Contract tests: one per third-party private name the toolkit uses (app/keras_compat.py, tuning/compat.py). Each
fails, naming the symbol, when an upgrade of Keras or KerasTuner changes it."""

from __future__ import annotations

import inspect
import json
import tomllib
from pathlib import Path

import keras
import keras_tuner as kt
import numpy as np
import pytest

from app import keras_compat
from tuning import compat

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("owner", "name"), list(compat.OVERRIDDEN), ids=[f"{o.__name__}.{n}" for o, n in compat.OVERRIDDEN])
def test_kerastuner_private_methods_keep_their_parameters(owner: type, name: str) -> None:
    method = getattr(owner, name, None)
    assert callable(method), f"KerasTuner's {owner.__name__}.{name} is gone: tuning/ overrides or calls it"
    parameters = tuple(p for p in inspect.signature(method).parameters if p != "self")
    assert parameters == compat.OVERRIDDEN[(owner, name)], f"{owner.__name__}.{name} now takes {parameters}"


def _oracle() -> kt.Oracle:
    return kt.oracles.RandomSearchOracle(objective="val_loss", max_trials=1, seed=0)


@pytest.mark.parametrize("name", compat.ORACLE_ATTRIBUTES)
def test_kerastuner_oracle_attributes(name: str) -> None:
    assert hasattr(_oracle(), name), f"KerasTuner's Oracle no longer has {name}"


def test_kerastuner_retry_queue_and_save_trial(tmp_path: Path) -> None:
    oracle = _oracle()
    oracle._set_project_dir(str(tmp_path), "p")
    assert compat.retry_queue(oracle) == []
    trial = oracle.create_trial("tuner0")
    compat.save_trial(oracle, trial)
    assert (tmp_path / "p" / f"trial_{trial.trial_id}" / "trial.json").is_file()


def test_kerastuner_records_are_written_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """trial.json and oracle.json go through the atomic save_json: a write that dies before its rename leaves the
    previous record whole (KerasTuner's own left the file empty or cut short), and a finished one reloads."""
    from keras_tuner.src.engine import stateful

    for method in (compat.trial_module.Trial.save, stateful.Stateful.save):
        assert "utils.save_json(" in inspect.getsource(method), f"{method.__qualname__} no longer writes through utils.save_json"
    oracle = _oracle()
    oracle._set_project_dir(str(tmp_path), "p")
    trial = oracle.create_trial("tuner0")
    record = tmp_path / "p" / f"trial_{trial.trial_id}" / "trial.json"
    before = record.read_text()
    trial.metrics.register("val_loss")
    trial.metrics.update("val_loss", 0.5)

    def killed(*args: object) -> None:
        raise KeyboardInterrupt("killed before the rename")

    monkeypatch.setattr("os.replace", killed)
    with pytest.raises(KeyboardInterrupt):
        compat.save_trial(oracle, trial)
    monkeypatch.undo()
    assert record.read_text() == before and sorted(p.name for p in record.parent.iterdir()) == ["trial.json"]
    compat.save_trial(oracle, trial)
    oracle.save()
    reloaded = compat.trial_module.Trial.load(str(record))
    assert reloaded.metrics.get_last_value("val_loss") == 0.5 and json.loads((tmp_path / "p" / "oracle.json").read_text())


def test_kerastuner_client_init_sets_what_oracle_client_reads() -> None:
    """What OracleClient.__init__ sets is what the worker's client sets without calling it."""
    source = inspect.getsource(compat.oracle_client.OracleClient.__init__)
    for name in compat.CLIENT_ATTRIBUTES:
        assert f"self.{name} =" in source, f"OracleClient.__init__ no longer sets {name}: tuning.compat.init_client must follow"
    client = object.__new__(compat.oracle_client.OracleClient)
    compat.init_client(client, _oracle(), stub=None, tuner_id="worker0")
    assert all(hasattr(client, name) for name in compat.CLIENT_ATTRIBUTES)


def test_kerastuner_consecutive_failures_message_is_recognised(tmp_path: Path) -> None:
    """The oracle's own error, raised by its own code, is recognised (and nothing else is)."""
    oracle = kt.oracles.RandomSearchOracle(objective="val_loss", max_trials=5, seed=0, max_consecutive_failed_trials=1)
    oracle._set_project_dir(str(tmp_path), "p")
    trial = oracle.create_trial("tuner0")
    trial.status = "FAILED"
    trial.message = "Traceback ...\nValueError: the last trial's error"
    with pytest.raises(RuntimeError) as raised:
        oracle.end_trial(trial)
    assert compat.consecutive_failures(raised.value) == "ValueError: the last trial's error"
    assert compat.consecutive_failures(RuntimeError("something else")) is None


def test_kerastuner_condition_print_is_silenced(capsys: pytest.CaptureFixture[str]) -> None:
    hp = kt.HyperParameters()
    hp.Choice("a", [1, 2])
    with hp.conditional_scope("a", [1]):
        hp.Int("b", 1, 2)
    hp.to_proto()
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    ("module", "version", "ok"),
    [
        (keras_compat, "3.15.1", True),
        (keras_compat, "3.16.0", False),
        (keras_compat, "3.14.0", False),
        (compat, "1.4.8", True),
        (compat, "1.4.7", False),
        (compat, "1.5.0", False),
    ],
)
def test_version_guards(module: object, version: str, ok: bool) -> None:
    problem = module.version_problem(version)
    assert (problem is None) == ok and (ok or "Fix: pip install" in problem)


def test_the_installed_versions_pass_their_guards_and_match_pyproject() -> None:
    assert keras_compat.version_problem() is None and compat.version_problem() is None
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert "keras>=3.15,<3.16" in dependencies and "keras-tuner>=1.4.8,<1.5" in dependencies


def test_keras_backup_and_restore_sets_the_resumed_epoch(tmp_path: Path) -> None:
    """`model._initial_epoch`: where BackupAndRestore resumed a fit, read by the staged fit path."""
    x, y = np.zeros((4, 2), "float32"), np.zeros((4, 1), "float32")

    def model() -> keras.Model:
        built = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        built.compile("sgd", "mse")
        return built

    class StopAfterTwo(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            if epoch == 1:
                raise KeyboardInterrupt

    backup = keras.callbacks.BackupAndRestore(str(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        model().fit(x, y, epochs=5, verbose=0, callbacks=[backup, StopAfterTwo()])
    resumed = model()
    keras_compat.reset_initial_epoch(resumed)
    assert keras_compat.resumed_epoch(resumed) is None
    resumed.fit(x, y, epochs=5, verbose=0, callbacks=[keras.callbacks.BackupAndRestore(str(tmp_path))])
    assert keras_compat.resumed_epoch(resumed) == 2


def test_keras_trainer_internals_the_distributed_fix_replaces() -> None:
    from keras.src.backend.tensorflow import trainer as tf_trainer

    for name in ("reduce_per_replica", "_collective_all_reduce_multi_worker", "_is_per_replica_instance"):
        assert callable(getattr(tf_trainer, name, None)), f"keras.src.backend.tensorflow.trainer.{name} is gone"
    assert tuple(inspect.signature(tf_trainer.reduce_per_replica).parameters) == ("values", "strategy", "reduction")
    build = tf_trainer.TensorFlowTrainer._maybe_symbolic_build
    assert tuple(inspect.signature(build).parameters)[1:] == ("iterator", "data_batch")
    keras_compat.fix_distributed_fit()
    assert tf_trainer.TensorFlowTrainer._imgclf_distributed_fit_fixed


def test_keras_onnx_patch_is_there() -> None:
    from keras.src.export import onnx

    assert callable(onnx.patch_tf2onnx), "keras.src.export.onnx.patch_tf2onnx is gone: app.keras_compat.patch_tf2onnx"
