"""Staged fine-tuning and resume: frozen stage 1, partial unfreeze in stage 2, one run directory, interruption."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import yaml

from app.cli import main
from app.config import Config, load_config
from app.models.backbones import find_backbone, make_backbone
from app.training.run import train

SIZE = 32
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def vgg_config(tiny_config: Config, weights_file: Path) -> Config:
    return load_config(
        overrides=[
            "model.name=vgg16",
            f"model.weights={weights_file}",
            "train.epochs=2",
            "train.learning_rate=0.001",
            "finetune.epochs=2",
            "finetune.learning_rate=0.0001",
            "finetune.unfreeze_blocks=1",
        ],
        base=tiny_config,
    )


def _backbone_weights(path: Path) -> dict[str, list[np.ndarray]]:
    backbone = find_backbone(keras.saving.load_model(path, safe_mode=True))
    return {layer.name: layer.get_weights() for layer in backbone.layers if layer.weights}


def _reference(weights_file: Path) -> dict[str, list[np.ndarray]]:
    backbone = make_backbone("vgg16", (SIZE, SIZE, 3), weights=weights_file)
    return {layer.name: layer.get_weights() for layer in backbone.layers if layer.weights}


def test_stage_one_trains_only_the_head(vgg_config: Config, weights_file: Path):
    result = train(replace(vgg_config, finetune=replace(vgg_config.finetune, epochs=0)))
    trained, reference = _backbone_weights(result.model_path), _reference(weights_file)
    for name, weights in reference.items():
        for ours, theirs in zip(trained[name], weights, strict=True):
            np.testing.assert_array_equal(ours, theirs)  # frozen: bit-identical to the weights file
    assert result.metrics["stage_epochs"] == {"train": 2}


def test_two_stages_one_run(vgg_config: Config, weights_file: Path):
    config = replace(vgg_config, train=replace(vgg_config.train, early_stopping_patience=0, monitor="val_accuracy"))
    result = train(config)
    history = pd.read_csv(result.run_dir / "history.csv")
    assert list(history["epoch"]) == [1, 2, 3, 4] and list(history["stage"]) == ["train", "train", "finetune", "finetune"]
    assert history["learning_rate"].iloc[2] <= 1e-4 < history["learning_rate"].iloc[0]
    assert result.metrics["stage_epochs"] == {"train": 2, "finetune": 2} and 1 <= result.metrics["best_epoch"] <= 4
    # The best model is from either stage; when it is from stage 2, the unfrozen top block moved and the rest did not.
    trained, reference = _backbone_weights(result.model_path), _reference(weights_file)
    assert all(np.array_equal(a, b) for a, b in zip(trained["block1_conv1"], reference["block1_conv1"], strict=True))
    if result.metrics["best_epoch"] > 2:
        assert not np.array_equal(trained["block5_conv3"][0], reference["block5_conv3"][0])
    assert (result.run_dir / "lr_schedule.png").read_bytes()[:4] == b"\x89PNG"
    assert not (result.run_dir / "backup").exists()


def test_finetune_needs_a_backbone(tiny_config: Config):
    with pytest.raises(ValueError, match="finetune.epochs=2, but model.name=baseline_cnn has no pretrained backbone"):
        train(replace(tiny_config, finetune=replace(tiny_config.finetune, epochs=2)))


def test_unfreeze_depth_larger_than_the_model(vgg_config: Config):
    config = replace(vgg_config, finetune=replace(vgg_config.finetune, unfreeze_blocks=7))
    with pytest.raises(ValueError, match="cannot unfreeze 7 blocks: vgg16 has 6"):
        train(config)


class Interrupt(keras.callbacks.Callback):
    """Simulates Ctrl-C / a killed job in the middle of epoch `epoch` (0-based, counted across stages)."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch, self.current = epoch, -1

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.current == self.epoch and batch == 1:
            raise KeyboardInterrupt


@pytest.mark.parametrize("interrupt_at", [2, 4])  # 0-based: mid stage 1 (epoch 3 of 4), mid stage 2 (epoch 5 of 6)
def test_interrupted_run_resumes_with_the_same_command(vgg_config: Config, interrupt_at: int):
    config = replace(
        vgg_config,
        train=replace(vgg_config.train, epochs=4, early_stopping_patience=0),
        finetune=replace(vgg_config.finetune, epochs=2),
    )
    with pytest.raises(KeyboardInterrupt):
        train(config, callbacks=[Interrupt(interrupt_at)])
    (run_dir,) = Path(config.output.dir).iterdir()
    assert not (run_dir / "metrics.json").exists() and (run_dir / "backup").is_dir()
    done_before = len(pd.read_csv(run_dir / "history.csv"))
    assert done_before == interrupt_at

    result = train(config)  # the same config again
    assert result.run_dir == run_dir and result.metrics["resumed"] is True
    history = pd.read_csv(run_dir / "history.csv")
    assert list(history["epoch"]) == [1, 2, 3, 4, 5, 6]
    assert list(history["stage"]) == ["train"] * 4 + ["finetune"] * 2
    assert result.metrics["stage_epochs"] == {"train": 4, "finetune": 2}
    assert json.loads((run_dir / "metrics.json").read_text())["epochs_run"] == 6


class InterruptAfterEpoch(keras.callbacks.Callback):
    """A kill right after epoch `epoch` was saved by BackupAndRestore, before the stage was marked done."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt


def test_a_stage_interrupted_after_its_last_epoch_counts_its_epochs(vgg_config: Config):
    """Resumed, stage 1 has nothing left to run: it still counts its 3 epochs, stage 2 numbers on from there."""
    config = replace(vgg_config, train=replace(vgg_config.train, epochs=3, early_stopping_patience=0), finetune=replace(vgg_config.finetune, epochs=1))
    with pytest.raises(KeyboardInterrupt):
        train(config, callbacks=[InterruptAfterEpoch(2)])  # the last epoch of stage 1 (0-based)
    result = train(config)
    assert result.metrics["stage_epochs"] == {"train": 3, "finetune": 1}
    history = pd.read_csv(result.run_dir / "history.csv")
    assert list(history["epoch"]) == [1, 2, 3, 4] and list(history["stage"]) == ["train"] * 3 + ["finetune"]
    assert result.metrics["stopped"].startswith("ran all 4 planned epochs")


def test_resume_off_starts_fresh(tiny_config: Config):
    config = replace(tiny_config, train=replace(tiny_config.train, resume=False))
    with pytest.raises(KeyboardInterrupt):
        train(config, callbacks=[Interrupt(1)])
    result = train(config)
    assert result.metrics["resumed"] is False and len(list(Path(config.output.dir).iterdir())) == 2


def test_a_different_config_does_not_resume(tiny_config: Config):
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config, callbacks=[Interrupt(1)])
    result = train(replace(tiny_config, seed=7))
    assert result.metrics["resumed"] is False


KILL_AFTER_FIRST_EPOCH = """
import os, signal, sys
import keras
from app.config import load_config
from app.training.run import train

class Kill(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == 1 and batch == 1:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup at all, as when a job is killed

train(load_config(sys.argv[1]), callbacks=[Kill()])
"""


def test_killed_process_resumes_with_the_same_cli_command(folder_dataset: Path, tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data": {"train": str(folder_dataset), "image_size": 32, "batch_size": 4},
                "model": {"blocks": [[8]]},
                "train": {"epochs": 3, "verbose": 0},
                "output": {"dir": str(tmp_path / "runs")},
            }
        )
    )
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_FIRST_EPOCH, str(config)], cwd=REPO, capture_output=True, timeout=300)
    assert killed.returncode == -9
    (run,) = (tmp_path / "runs").iterdir()
    assert len(pd.read_csv(run / "history.csv")) == 1 and (run / ".lock").is_file()  # the dead process's lock is left behind
    assert main(["train", "-c", str(config)]) == 0
    assert list((tmp_path / "runs").iterdir()) == [run]
    assert pd.read_csv(run / "history.csv")["epoch"].tolist() == [1, 2, 3]
    assert json.loads((run / "metrics.json").read_text())["resumed"] is True
