"""train(config): a run directory with every promised file; same seed -> same metrics; multi-label; bad images."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import keras
import pandas as pd
import pytest
import yaml

from app.config import Config, load_config
from app.training.run import train
from pipelines.errors import DataError
from tests.conftest import multilabel_config

RUN_FILES = {"config.yaml", "model.keras", "history.csv", "metrics.json", "class_names.json", "curves.png", "augment_train.yaml", "augment_eval.yaml"}


def test_run_directory_contents(tiny_config: Config) -> None:
    result = train(tiny_config)
    assert RUN_FILES <= {p.name for p in result.run_dir.iterdir()}
    assert yaml.safe_load((result.run_dir / "config.yaml").read_text())["data"]["train"] == tiny_config.data.train
    assert json.loads((result.run_dir / "class_names.json").read_text()) == {"class_names": ["cat", "dog", "fox"], "multilabel": False}
    history = pd.read_csv(result.run_dir / "history.csv")
    assert len(history) == 2 and {"loss", "val_loss", "accuracy", "val_accuracy"} <= set(history.columns)
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["val_images"] == 6 and metrics["train_images"] == 18 and 0 <= metrics["val"]["accuracy"] <= 1
    assert (result.run_dir / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert metrics["stopped"] == f"ran all 2 planned epochs; the best epoch by val_loss, {metrics['best_epoch']}, is kept"
    model = keras.saving.load_model(result.model_path, safe_mode=True)
    assert model.input_shape == (None, 32, 32, 3)
    tags = _tensorboard_tags(result.run_dir / "tensorboard")
    assert {"epoch_loss", "epoch_accuracy", "epoch_learning_rate", "augmented training batch"} <= tags["train"]
    assert {"epoch_loss", "epoch_accuracy"} <= tags["validation"]


def _tensorboard_tags(folder: Path) -> dict[str, set[str]]:
    """{run: summary tags} from the event files TensorBoard reads."""
    import tensorflow as tf

    tags: dict[str, set[str]] = {}
    for events in folder.glob("*/events.out.tfevents.*"):
        for record in tf.data.TFRecordDataset(str(events)):
            event = tf.compat.v1.Event.FromString(record.numpy())
            tags.setdefault(events.parent.name, set()).update(value.tag for value in event.summary.value)
    return tags


def test_tensorboard_logs_can_be_turned_off(tiny_config: Config) -> None:
    result = train(replace(tiny_config, output=replace(tiny_config.output, tensorboard=False), train=replace(tiny_config.train, epochs=1)))
    assert not (result.run_dir / "tensorboard").exists()


def test_same_seed_same_metrics(tiny_config: Config, tmp_path: Path) -> None:
    first = train(replace(tiny_config, output=replace(tiny_config.output, name="a")))
    second = train(replace(tiny_config, output=replace(tiny_config.output, name="b")))
    assert first.history == second.history
    assert first.metrics["val"] == second.metrics["val"]


def test_learns_an_easy_task(tiny_config: Config) -> None:
    config = replace(tiny_config, train=replace(tiny_config.train, epochs=12, learning_rate=0.01, early_stopping_patience=0))
    result = train(config)
    assert result.metrics["val"]["accuracy"] == 1.0  # classes differ by colour: a working pipeline + model gets this right


@pytest.mark.parametrize("start,initial_epoch,expected", [(None, 0, 10), (None, 20, 30), (3, 20, 23), (0, 0, 0)])
def test_early_stopping_waits_half_the_stage_by_default(start: int | None, initial_epoch: int, expected: int) -> None:
    from app.config import ScheduleConfig
    from app.training.fitting import Stage, standard_callbacks

    config = load_config(overrides=["train.early_stopping_patience=4"] + ([f"train.early_stopping_start={start}"] if start is not None else []))
    stage = Stage("train", 20, 1e-3, ScheduleConfig(), 1e-3)
    (stopper,) = standard_callbacks(config, stage, initial_epoch)
    assert isinstance(stopper, keras.callbacks.EarlyStopping) and stopper.patience == 4
    assert stopper.start_from_epoch == expected  # epochs numbered across stages: a second stage starts at 20


def test_the_run_says_why_it_stopped(tiny_config: Config) -> None:
    """A model that does not learn (a rate of 1e-12), watched from the first epoch with patience 1: the validation
    accuracy of 6 images cannot rise five times in a row, so early stopping ends the run, and metrics.json says so."""
    options = replace(tiny_config.train, epochs=6, learning_rate=1e-12, monitor="val_accuracy", early_stopping_patience=1, early_stopping_start=0)
    result = train(replace(tiny_config, augment=replace(tiny_config.augment, train="none"), model=replace(tiny_config.model, dropout=0.0), train=options))
    ran = result.metrics["epochs_run"]
    assert ran < 6 and result.metrics["stopped"].startswith(f"early stopping in stage 'train' after epoch {ran} ({ran} of its 6): val_accuracy")


def test_run_name_is_never_reused(tiny_config: Config) -> None:
    config = replace(tiny_config, output=replace(tiny_config.output, name="fixed"), train=replace(tiny_config.train, epochs=1))
    train(config)
    with pytest.raises(DataError, match="run directory already exists"):
        train(config)


def test_multilabel_csv(tmp_path: Path) -> None:
    config = multilabel_config(tmp_path, 24)
    result = train(config)
    assert json.loads((result.run_dir / "class_names.json").read_text())["multilabel"] is True
    assert {"mean_column_auc", "micro_f1", "exact_match_accuracy"} <= set(result.metrics["val"])


def _corrupt(folder_dataset: Path) -> Path:
    bad = folder_dataset / "dog" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return bad


def test_bad_image_stops_with_its_name(tiny_config: Config, folder_dataset: Path) -> None:
    bad = _corrupt(folder_dataset)
    with pytest.raises(DataError, match=f"{bad}.*skip_bad_images"):
        train(tiny_config)
    runs = Path(tiny_config.output.dir)
    assert not runs.exists() or not any(runs.iterdir())  # nothing written before the data was checked


@pytest.mark.parametrize("cache", [False, True])
def test_bad_image_skipped_and_reported(tiny_config: Config, folder_dataset: Path, cache: bool) -> None:
    bad = _corrupt(folder_dataset)
    config = replace(tiny_config, data=replace(tiny_config.data, skip_bad_images=True, cache=cache), train=replace(tiny_config.train, epochs=1))
    result = train(config)
    assert len(result.metrics["skipped_images"]) == 1 and str(bad) in result.metrics["skipped_images"][0]
    assert result.metrics["train_images"] + result.metrics["val_images"] == 24


@pytest.mark.parametrize("augment,message", [("fancy", "unknown augmentation 'fancy'"), ("BAD_YAML", "not a valid Albumentations pipeline")])
def test_a_bad_augmentation_fails_before_the_run_folder_exists(tiny_config: Config, tmp_path: Path, augment: str, message: str) -> None:
    if augment == "BAD_YAML":
        augment = str(tmp_path / "aug.yaml")
        Path(augment).write_text("transform: {__class_fullname__: NoSuchTransform}\n")
    with pytest.raises(DataError, match=message):
        train(replace(tiny_config, augment=replace(tiny_config.augment, train=augment)))
    runs = Path(tiny_config.output.dir)
    assert not runs.exists() or not any(runs.iterdir())  # no unfinished run folder left behind


def test_a_class_whose_images_are_all_unreadable_is_one_clear_error(tiny_config: Config, folder_dataset: Path) -> None:
    for image in (folder_dataset / "dog").iterdir():
        image.write_bytes(b"")  # zero-byte files: every dog image
    config = replace(tiny_config, data=replace(tiny_config.data, skip_bad_images=True))
    with pytest.raises(DataError, match=r"class 'dog' has no readable training image left \(6 unreadable image\(s\) skipped.*Fix: replace"):
        train(config)
    runs = Path(tiny_config.output.dir)
    assert not runs.exists() or not any(runs.iterdir())
