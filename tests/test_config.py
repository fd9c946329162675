"""Config: YAML + overrides into typed dataclasses, unknown keys and wrong types rejected, round trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config import Config, ConfigError, ConvBlock, dump_config, load_config


def test_defaults_file_and_overrides(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("data:\n  train: images/\n  image_size: 96\ntrain:\n  epochs: 3\n")
    config = load_config(tmp_path / "c.yaml", ["train.epochs=7", "train.learning_rate=1e-4", "model.blocks=[[8, 3, 2]]", "data.val=null"])
    assert config.data.train == "images/" and config.data.image_size == 96
    assert config.train.epochs == 7 and config.train.learning_rate == pytest.approx(1e-4)
    assert config.model.blocks == [ConvBlock(8, 3, 2)] and config.data.val is None  # typed at load
    assert config.data.batch_size == Config().data.batch_size  # untouched default


def test_dump_round_trips(tmp_path: Path) -> None:
    config = load_config(overrides=["data.label_columns=[a, b]", "seed=3"])
    (tmp_path / "saved.yaml").write_text(dump_config(config))
    assert load_config(tmp_path / "saved.yaml") == config


@pytest.mark.parametrize(
    "override,pattern",
    [
        ("train.epoch=3", r"unknown config key train.epoch; valid keys here: .*epochs"),
        ("train.epochs=three", r"train.epochs: 'three' is not a int"),
        ("data.cache=3", r"data.cache: 3 is not a bool"),
        ("trainepochs", "is not key=value"),
        ("data.train=[unclosed", "not valid YAML"),
        ("nosuch.key=1", "unknown config key nosuch"),
    ],
)
def test_bad_overrides(override: str, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        load_config(overrides=[override])


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "none.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(tmp_path / "list.yaml")


def test_shipped_example_config_is_valid() -> None:
    config = load_config("example")
    assert config.model.name == "baseline_cnn"


@pytest.mark.parametrize(
    "override,pattern",
    [
        ("model.blocks=[]", r"model.blocks is empty: the baseline CNN needs at least one block"),
        ('model.blocks=[{filters: "32"}]', r"model.blocks\[0\].filters: '32' is not a int"),
        ("model.blocks=[{kernel_size: 3}]", r"model.blocks\[0\]: filters is required"),
        ("model.blocks=[[16], [0]]", r"model.blocks\[1\]: conv block .*filters must be a whole number >= 1"),
        ("model.blocks=[{filters: 8, pool: sum}]", r"pool must be one of max, avg, none"),
        ("model.blocks=[[8, 3, 1, 2]]", r"expected \{filters, kernel_size, strides\}"),
    ],
)
def test_blocks_are_typed_and_checked_at_load(override: str, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        load_config(overrides=[override])


def test_blocks_round_trip_through_the_saved_config(tmp_path: Path) -> None:
    config = load_config(overrides=["model.blocks=[[8, 5, 2], {filters: 16, repeats: 1, pool: avg}]"])
    assert config.model.blocks == [ConvBlock(8, 5, 2), ConvBlock(16, repeats=1, pool="avg")]
    (tmp_path / "saved.yaml").write_text(dump_config(config))
    assert load_config(tmp_path / "saved.yaml") == config


@pytest.mark.parametrize(
    "override,pattern",
    [
        ("data.batch_size=0", r"data.batch_size: 0 is not allowed; expected a whole number >= 1"),
        ("data.batch_size=-4", r"data.batch_size: -4 is not allowed"),
        ("data.image_size=0", r"data.image_size: 0 is not allowed; expected a whole number of pixels >= 8"),
        ("data.image_size=-32", r"data.image_size: -32 is not allowed"),
        ("data.val_fraction=1.5", r"data.val_fraction: 1.5 is not allowed; expected a fraction in \[0, 1\)"),
        ("data.workers=-1", r"data.workers: -1 is not allowed"),
        ("train.epochs=0", r"train.epochs: 0 is not allowed"),
        ("train.learning_rate=0", r"train.learning_rate: 0.0 is not allowed; expected a number > 0"),
        ("train.label_smoothing=1", r"train.label_smoothing: 1.0 is not allowed"),
        ("train.early_stopping_patience=-1", r"train.early_stopping_patience: -1 is not allowed"),
        ("train.monitor=val_nonsense", r"train.monitor: 'val_nonsense' is not one of val_loss, val_accuracy"),
        ("train.verbose=3", r"train.verbose: 3 is not allowed"),
        ("finetune.epochs=-1", r"finetune.epochs: -1 is not allowed"),
        ("finetune.unfreeze_blocks=0", r"finetune.unfreeze_blocks: 0 is not allowed"),
    ],
)
def test_numeric_options_are_checked_at_load(override: str, pattern: str) -> None:
    # each was a traceback (ZeroDivisionError, a Keras shape message, a KeyError after a whole epoch) or a misleading line
    with pytest.raises(ConfigError, match=pattern):
        load_config(overrides=[override])


def test_cli_bad_numeric_option_is_one_line_before_any_work(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from app.cli import main

    assert main(["train", "--set", f"output.dir={tmp_path / 'runs'}", "--set", "data.batch_size=0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: config key data.batch_size: 0 is not allowed; expected a whole number >= 1 (e.g. 32)"
    assert not (tmp_path / "runs").exists()
