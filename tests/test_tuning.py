"""tuning/: the search space, shape-valid proposals, every tuner, results a user can act on, resume, bad input."""

from __future__ import annotations

import importlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import keras
import keras_tuner as kt
import numpy as np
import pandas as pd
import pytest

from app.config import Config, ConfigError, ConvBlock, load_config
from app.models import create_model
from app.models.geometry import baseline_geometry
from app.training.run import run_callbacks, train
from tests.conftest import rerun_cli_search, start_cli_search
from tuning import parse_space, search
from tuning.hypermodels import make_hypermodel
from tuning.oracles import BayesianOracle, ValidProposals, default_initial_points, make_oracle
from tuning.results import BEST_FILE, HYPERPARAMETERS_PLOT, SCORES_PLOT, SUMMARY_FILE, TENSORBOARD_DIR, TRIALS_FILE
from tuning.tuner import SearchTuner

# A small space over tiny models: a trial is a second or two on 32 px images.
SMALL_SPACE = [
    "tune.space.blocks={min: 1, max: 2}",
    "tune.space.filters=[4, 8]",
    "tune.space.repeats=1",
    "tune.space.augment=none",
    "train.epochs=1",
]


def tune_config(base: Config, *overrides: str) -> Config:
    return load_config(overrides=[*SMALL_SPACE, *overrides], base=base)


def hypermodel_for(config: Config):
    return make_hypermodel(config, parse_space(config), num_classes=3, multilabel=False, train_images=18)


def test_default_space_builds_on_empty_hyperparameters(tiny_config: Config) -> None:
    hypermodel = hypermodel_for(tiny_config)  # the shipped default space, tiny_config's 32 px images
    hp = kt.HyperParameters()
    model = hypermodel.build(hp)
    assert isinstance(model, keras.Model) and model.optimizer is not None  # compiled, as KerasTuner expects
    assert {"blocks", "filters_1", "kernel_size_1", "strides_1", "learning_rate", "schedule", "optimizer"} <= set(hp.values)
    assert not {"augment", "dropout"} & set(hp.values)  # regularisation is left to the config by default
    assert model.output.shape == (None, 3)


def test_the_shipped_search_config_loads_and_its_space_parses() -> None:
    config = load_config("search")
    space = parse_space(config)
    assert {"blocks", "filters", "kernel_size", "strides", "learning_rate", "schedule"} <= set(space.searched())
    backbone = parse_space(load_config(overrides=["model.name=efficientnetb0", "tune.space.unfreeze_blocks=[1, 2]"], base=config))
    assert "unfreeze_blocks" in backbone.searched() and "filters" not in backbone.searched()  # the block keys do not apply
    assert config.tune.final == {"augment": {"train": "heavy"}}  # the final run's own augmentation ...
    assert load_config(overrides=["tune.final=null"], base=config).tune.final == {}  # ... which null turns off


def test_fixed_values_are_honoured(tiny_config: Config) -> None:
    config = tune_config(tiny_config, "tune.space.kernel_size=5", "tune.space.schedule=cosine")
    hypermodel = hypermodel_for(config)
    hp = kt.HyperParameters()
    hp.Fixed("blocks", 2)
    hp.Fixed("filters_2", 8)
    hp.Fixed("learning_rate", 0.005)
    trial_config = hypermodel.config_for(hp)
    assert [b.filters for b in trial_config.model.blocks][1] == 8 and len(trial_config.model.blocks) == 2
    assert all(b.kernel_size == 5 for b in trial_config.model.blocks)  # --set tune.space.kernel_size=5: fixed for every block
    assert trial_config.train.learning_rate == 0.005 and trial_config.train.schedule.name == "cosine"
    model = hypermodel.build(hp)
    assert model.get_layer("block2_conv1").filters == 8 and model.get_layer("block1_conv1").kernel_size == (5, 5)


def test_null_entries_leave_the_rest_of_the_config_in_charge(tiny_config: Config) -> None:
    config = tune_config(tiny_config, "tune.space.blocks=null", "tune.space.filters=null", "tune.space.learning_rate=null", "train.learning_rate=0.0042")
    trial_config = hypermodel_for(config).config_for(kt.HyperParameters())
    assert [b.filters for b in trial_config.model.blocks] == [8, 16]  # tiny_config's own blocks
    assert trial_config.train.learning_rate == 0.0042


def test_filters_growth_makes_a_pyramid_from_the_first_blocks_filters(tiny_config: Config) -> None:
    config = tune_config(
        tiny_config, "tune.space.blocks=3", "tune.space.filters=[16, 32]", "tune.space.filters_growth=[1.5, 2.0]", "tune.space.label_smoothing=[0.0, 0.1]"
    )
    hypermodel = hypermodel_for(config)
    hp = kt.HyperParameters()
    hp.Fixed("filters_1", 16)
    hp.Fixed("filters_growth", 1.5)
    hp.Fixed("label_smoothing", 0.1)
    trial_config = hypermodel.config_for(hp)
    assert [b.filters for b in trial_config.model.blocks] == [16, 24, 40]  # 16, 24, 36 rounded to a multiple of 8
    assert trial_config.train.label_smoothing == 0.1
    assert not any(name.startswith("filters_") and name not in ("filters_1", "filters_growth") for name in hp.values)  # one width, not one per block
    hp = kt.HyperParameters()
    hp.Fixed("filters_1", 32)
    hp.Fixed("filters_growth", 2.0)
    model = hypermodel.build(hp)
    assert [model.get_layer(f"block{i}_conv1").filters for i in (1, 2, 3)] == [32, 64, 128]


def test_compute_budget_gives_cheaper_networks_more_epochs(tiny_config: Config) -> None:
    from tuning.hypermodels import MAX_EPOCH_FACTOR, compute_epochs

    config = tune_config(tiny_config, "train.epochs=2", "tune.space.blocks=2", "tune.space.repeats=1", "tune.space.kernel_size=3")
    hypermodel = hypermodel_for(config)  # tiny_config's own blocks (8, 16 filters, two convs each) are the reference

    def epochs(filters: int, strides: int) -> int:
        hp = kt.HyperParameters()
        for i in (1, 2):
            hp.Fixed(f"filters_{i}", filters)
            hp.Fixed(f"strides_{i}", strides)
        return hypermodel.config_for(hp).train.epochs

    cheap, costly = epochs(4, 2), epochs(32, 1)  # ~0.1 and ~1.9 times the reference's multiply-accumulates
    assert cheap > 2 and costly == 1
    assert cheap <= MAX_EPOCH_FACTOR * 2
    assert compute_epochs(4, 100, 100) == 4  # the reference's own cost: train.epochs
    assert compute_epochs(4, 100, 10_000) == 1 and compute_epochs(4, 100, 1) == 4 * MAX_EPOCH_FACTOR
    fixed = load_config(overrides=["tune.trial_budget=epochs"], base=config)
    hp = kt.HyperParameters()
    hp.Fixed("filters_1", 4)
    assert hypermodel_for(fixed).config_for(hp).train.epochs == 2  # every trial: train.epochs
    hp = kt.HyperParameters()
    hp.Fixed("filters_1", 4)
    assert hypermodel.config_for(hp, for_training=True).train.epochs == 2  # the final run is not scaled


def test_final_minutes_sizes_the_final_run_at_the_trials_pace() -> None:
    from tuning.hypermodels import final_run_epochs

    # 4 epochs: the first traced (6 s), then 3 s each; 8 s outside the epochs: 20 s in all
    assert final_run_epochs(1.0, 20.0, [6.0, 3.0, 3.0, 3.0]) == (17, 3.0)  # (60 s - 8 s fixed) // 3 s
    assert final_run_epochs(0.01, 20.0, [6.0, 3.0]) == (1, 3.0)  # at least one epoch


@pytest.mark.parametrize(
    ("trial_cost", "final_cost", "epochs"),
    [
        (1.0, float, 17),  # the same epochs as the trial's: 52 s of 3 s epochs
        (1.0, lambda n: 4.0 * n, 4),  # twice the image size: epochs four times as costly
        (0.25, float, 4),  # the trial at half the size (asha's first rung): the same
        (1.0, lambda n: 0.6 * n, 28),  # progressive resizing: cheaper epochs, more of them
        (1.0, lambda n: 1.0 * n + (5.0 if n > 10 else 0.0), 12),  # a cost that jumps: the most epochs that still fit
    ],
)
def test_final_minutes_weighs_what_the_final_runs_epochs_cost(trial_cost: float, final_cost: Any, epochs: int) -> None:
    from tuning.hypermodels import final_run_epochs

    assert final_run_epochs(1.0, 20.0, [6.0, 3.0, 3.0, 3.0], trial_cost, final_cost) == (epochs, 3.0)


@pytest.mark.parametrize(
    ("here", "epochs", "said"),
    [
        (None, 17, "(measured in that trial)"),  # 52 s of 3 s epochs
        (lambda config: 1.5, 37, "timed here before the final run: 0.50 of the pace that trial measured"),  # twice as fast here: fixed costs and epochs halve
        (lambda config: None, 17, "measured in that trial; not timed here (two stages, cached features or several devices)"),  # best.yaml says why
    ],
)
def test_best_yaml_is_sized_at_the_pace_measured_where_the_final_run_trains(tiny_config: Config, tmp_path: Path, here: Any, epochs: int, said: str) -> None:
    from types import SimpleNamespace

    from tuning.results import _final_epochs

    config = tune_config(tiny_config, "tune.final_minutes=1")
    hypermodel = make_hypermodel(config, parse_space(config), 3, False, 18)
    hp = kt.HyperParameters()
    hypermodel.declare_hyperparameters(hp)
    result = tmp_path / "result.json"  # 4 epochs: the first traced (6 s), then 3 s each; 8 s outside the epochs
    result.write_text(json.dumps({"epoch_seconds": [6.0, 3.0, 3.0, 3.0], "seconds": 20.0, "epoch_cost": hypermodel.epoch_cost(hypermodel.config_for(hp))}))
    planned, header = _final_epochs(hypermodel, SimpleNamespace(hyperparameters=hp), result, here)
    assert planned == epochs and said in header and header.startswith(f"# train.epochs {epochs}: about tune.final_minutes=1")


def test_the_pace_probe_times_a_one_device_network_of_one_stage_and_declines_others(tiny_config: Config) -> None:
    from app.data import prepare_data
    from app.training.pace import PROBE_MAX_EPOCHS, measure_epoch_seconds, probe_config

    data = prepare_data(tiny_config)
    seconds = measure_epoch_seconds(tiny_config, data, batches=1)
    assert seconds is not None and 0 < seconds < 60
    probe = probe_config(load_config(overrides=["train.progressive_from=16", "train.schedule={name: cosine, warmup_epochs: 5}"], base=tiny_config))
    assert (probe.train.epochs, probe.train.progressive_from, probe.train.schedule.name, probe.data.image_size) == (PROBE_MAX_EPOCHS, None, "constant", 32)
    two_stages = load_config(overrides=["model.name=mobilenetv3small", "model.weights=null", "finetune.epochs=1"], base=tiny_config)
    several_devices = load_config(overrides=["train.distribute=mirrored"], base=tiny_config)
    assert measure_epoch_seconds(two_stages, data) is None and measure_epoch_seconds(several_devices, data) is None


def test_the_pace_probe_scales_up_batches_not_what_an_epoch_spends_once(tiny_config: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe fits 2 batches of each epoch's 18, timing epochs until they add up to PROBE_SECONDS (the pace swings
    from second to second). A second more per batch adds a second per batch of the whole epoch; a second more in the
    run's epoch-end callbacks (backup, checkpoint), once an epoch whatever its batches, adds one second."""
    from app.data import prepare_data
    from app.training import pace

    config = load_config(overrides=["data.batch_size=1"], base=tiny_config)
    data = prepare_data(config)
    steps = data.steps_per_epoch(1)
    assert (steps, len(data.val)) == (18, 6)
    plain = pace.measure_epoch_seconds(config, data, batches=2)
    ends: list[int] = []
    slow_end = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: (ends.append(epoch), time.sleep(0.5)))
    slow_batch = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: time.sleep(0.1))
    monkeypatch.setattr(pace, "PROBE_SECONDS", 2.0)
    monkeypatch.setattr(pace, "run_callbacks", lambda *args: [*run_callbacks(*args), slow_end])
    with_slow_end = pace.measure_epoch_seconds(config, data, batches=2)
    assert 3 <= len(ends) <= 5  # the first, then 0.5 s or more each until 2 s: 4 at most (2 at least)
    assert 0.3 < with_slow_end - plain < 1.0  # once an epoch: scaled with the batches it would add 4.5 s
    monkeypatch.setattr(pace, "run_callbacks", lambda *args: [*run_callbacks(*args), slow_batch])
    assert 1.4 < pace.measure_epoch_seconds(config, data, batches=2) - plain < 2.6  # 18 batches of 0.1 s more


def test_schedule_knobs_are_conditional_on_their_schedule(tiny_config: Config) -> None:
    config = tune_config(tiny_config, "tune.space.schedule=[constant, step]", "tune.space.schedule_knobs={step: {decay_rate: [0.2, 0.5]}}")
    hypermodel = hypermodel_for(config)
    hp = kt.HyperParameters()
    hp.Fixed("schedule", "step")
    hp.Fixed("step_decay_rate", 0.5)
    assert hypermodel.config_for(hp).train.schedule.decay_rate == 0.5
    hp = kt.HyperParameters()
    hp.Fixed("schedule", "constant")
    hypermodel.config_for(hp)
    assert not hp.is_active("step_decay_rate")


@pytest.mark.parametrize(
    "blocks,size",
    [
        ([ConvBlock(8, 3, 1, 2, "max"), ConvBlock(8, 5, 2, 1, "avg"), ConvBlock(4, 3, 1, 1, "none")], 32),
        ([ConvBlock(4, 3, 2, 1, "max")] * 4, 16),  # pooling left out once the map is 1 pixel
        ([ConvBlock(4, 7, 3, 1, "max"), ConvBlock(4, 3, 2, 2, "max")], 45),
    ],
)
def test_shape_arithmetic_matches_the_models_own_shapes(blocks: list[ConvBlock], size: int) -> None:
    model = create_model("baseline_cnn", input_shape=(size, size, 3), num_classes=2, blocks=blocks)
    geometry = baseline_geometry(blocks, size)
    spatial = [layer for layer in model.layers if isinstance(layer, (keras.layers.Conv2D, keras.layers.MaxPooling2D, keras.layers.AveragePooling2D))]
    assert [g.name for g in geometry.layers] == [layer.name for layer in spatial]
    assert [g.output_size for g in geometry.layers] == [layer.output.shape[1] for layer in spatial]
    assert geometry.feature_size == model.get_layer("gap").input.shape[1]


def test_receptive_field_of_a_hand_checked_stack() -> None:
    three_convs = baseline_geometry([ConvBlock(4, 3, 1, 3, "none")], 32)
    assert three_convs.receptive_field == 7  # three 3x3 stride-1 convolutions
    conv_then_pool = baseline_geometry([ConvBlock(4, 3, 1, 1, "max"), ConvBlock(4, 3, 1, 1, "none")], 32)
    assert conv_then_pool.receptive_field == 3 + 1 + 2 * 2  # 3, pool adds 1, then a 3x3 at jump 2 adds 4


def test_invalid_networks_are_skipped_without_a_fit(tiny_config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # At 16 px, up to 4 blocks of stride 1 or 2, each pooling: most proposals shrink the map below 2 pixels.
    config = tune_config(
        tiny_config,
        "data.image_size=16",
        "tune.space.blocks={min: 2, max: 4}",
        "tune.space.strides=[1, 2]",
        "tune.space.kernel_size=[3, 5]",
        "tune.max_trials=3",
    )
    fitted: list[int] = []
    real_fit = keras.Model.fit

    def counting_fit(model, *args, **kwargs):
        fitted.append(model.get_layer("gap").input.shape[1])
        return real_fit(model, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "fit", counting_fit)
    result = search(config, progress=lambda line: None)
    assert result.rejected > 0  # there were invalid proposals ...
    assert len(fitted) == 3 == len(result.trials)  # ... none of them was fitted: max_trials counts trained trials
    assert min(fitted) >= config.tune.min_feature_size
    summary = (result.search_dir / SUMMARY_FILE).read_text()
    assert f"{result.rejected} proposals skipped" in summary
    assert "below min_feature_size=2" in summary or "is larger than its" in summary


def test_a_search_writes_every_result_and_its_best_yaml_trains(tiny_config: Config, tmp_path: Path) -> None:
    lines: list[str] = []
    config = tune_config(
        tiny_config, "tune.max_trials=2", "tune.objective=macro_f1", "tune.final_epochs=3", "tune.final.augment.train=heavy", "tune.final.model.dropout=0.5"
    )
    assert config.augment.train != "heavy" and config.model.dropout != 0.5  # the trials' settings
    result = search(config, progress=lines.append)
    folder = result.search_dir
    for name in (TRIALS_FILE, BEST_FILE, SUMMARY_FILE, SCORES_PLOT, HYPERPARAMETERS_PLOT, "config.yaml", "search.json"):
        assert (folder / name).is_file(), name
    assert list((folder / TENSORBOARD_DIR).glob("events.out.tfevents.*"))  # the HParams config
    assert len(list((folder / TENSORBOARD_DIR).glob("trial_*/events.out.tfevents.*"))) == 2
    trials = pd.read_csv(folder / TRIALS_FILE)
    assert list(trials["status"]) == ["COMPLETED", "COMPLETED"]
    assert {"macro_f1", "blocks", "filters_1", "learning_rate", "params", "feature_size", "receptive_field", "seconds", "epochs"} <= set(trials.columns)
    assert (trials["params"] > 0).all() and (trials["receptive_field"] >= 3).all()
    assert result.best_score == pytest.approx(trials["macro_f1"].max())  # the metrics.json field, maximised
    assert sum(line.startswith("[") and "trial" in line for line in lines) == 2  # one progress line per trial
    assert "tune.space does not hold the config's own network: no reference trial" in lines  # repeats=1 fixed; 2 in model.blocks

    best = load_config(result.best_config)
    assert best.train.epochs == 3  # tune.final_epochs: trials ran 1 epoch, the final run trains 3
    assert best.augment.train == "heavy" and best.model.dropout == 0.5  # tune.final: the final run's own settings ...
    assert "# augment.train=heavy: the final run's own setting (tune.final)" in result.best_config.read_text().splitlines()  # ... said in its header
    best_row = trials.loc[trials["macro_f1"].idxmax()]
    assert len(best.model.blocks) == best_row["blocks"] and best.model.blocks[0].filters == best_row["filters_1"]
    trained = train(load_config(overrides=[f"output.dir={tmp_path / 'best'}"], base=best))
    assert (trained.run_dir / "model.keras").is_file() and trained.metrics["val"]["num_images"] == 6


# tune.space holding tiny_config's own network (two blocks of 8 and 16 filters, 3x3, stride 1, 2 convolutions each)
HOLDS_THE_CONFIG = ["tune.space.repeats=[1, 2]", "tune.space.filters=[8, 16]", "tune.space.filters_growth=[1.5, 2.0]", "tune.space.augment=null"]


def first_trials(config: Config, folder: Path, count: int) -> tuple[list[dict[str, Any]], SearchTuner]:
    """The values of the first `count` trials the oracle of `config` proposes (nothing trained)."""
    tuner = SearchTuner(make_oracle(config.tune, seed=0, max_epochs=2), hypermodel_for(config), folder, data_for=None)  # seed 0: 0, not none
    return [tuner.oracle.create_trial(f"tuner{i}").hyperparameters.values for i in range(count)], tuner


@pytest.mark.parametrize("name", ["random", "asha", "bayesian", "hyperband", "grid"])
def test_the_first_trial_is_the_configs_own_network(tiny_config: Config, tmp_path: Path, name: str) -> None:
    config = tune_config(tiny_config, *HOLDS_THE_CONFIG, f"tune.tuner={name}")
    (first,), tuner = first_trials(config, tmp_path / "search", 1)
    trial = tuner.hypermodel.config_for(tuner.hyperparameters_of(first))
    assert trial.model.blocks == config.model.blocks and trial.augment == config.augment
    assert trial.train.optimizer == config.train.optimizer and trial.train.learning_rate == config.train.learning_rate
    assert trial.train.schedule == config.train.schedule


def test_the_reference_trial_comes_once_before_the_same_random_draws(tiny_config: Config, tmp_path: Path) -> None:
    config = tune_config(tiny_config, *HOLDS_THE_CONFIG)
    with_it, tuner = first_trials(config, tmp_path / "on", 4)
    without, _ = first_trials(load_config(overrides=["tune.reference_trial=false"], base=config), tmp_path / "off", 3)
    assert with_it[0] == tuner.reference_values() and with_it[1:] == without  # the same random draws after it (KerasTuner reads seed 0 as none)
    assert with_it[0] not in without
    saved = tmp_path / "on" / "oracle.json"
    assert json.loads(saved.read_text())["reference_offered"]
    assert first_trials(config, tmp_path / "on", 1)[1].oracle.reference_offered  # a resumed search does not offer it again ...
    saved.write_text(json.dumps({k: v for k, v in json.loads(saved.read_text()).items() if k != "reference_offered"}))
    assert first_trials(config, tmp_path / "on", 1)[1].oracle.reference_offered  # ... nor does one saved before the key existed
    not_held = hypermodel_for(tune_config(tiny_config))  # repeats=1 fixed, while model.blocks has 2 convolutions each
    assert not_held.reference_values(tuner.oracle.get_space()) is None


def test_seed_zero_is_a_seed(tiny_config: Config, tmp_path: Path) -> None:
    """KerasTuner reads seed 0 as none and draws a seed of its own: a search seeded 0 must propose alike every time."""
    config = tune_config(tiny_config, "tune.reference_trial=false")
    assert first_trials(config, tmp_path / "a", 3)[0] == first_trials(config, tmp_path / "b", 3)[0]


def test_a_search_starts_from_the_configs_own_network(tiny_config: Config) -> None:
    lines: list[str] = []
    config = tune_config(tiny_config, *HOLDS_THE_CONFIG, "tune.max_trials=2")
    result = search(config, progress=lines.append)
    first = result.trials.iloc[0]
    assert (first["blocks"], first["filters_1"], first["repeats_1"], first["learning_rate"]) == (2, 8, 2, config.train.learning_rate)
    assert "the first trial is the config's own network and training" in lines
    assert "(the config's own values)" in next(line for line in lines if line.startswith("[1/2]"))


def test_best_yaml_trains_for_final_minutes_at_the_pace_timed_before_the_final_run(tiny_config: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    timed: list[Config] = []

    def twice_the_trials_pace(config: Config, data: Any) -> float:  # the probe (tested on its own), stubbed to a known pace
        timed.append(config)
        trial = json.loads(next(config_dir.glob("*-tune-*/trial_*/result.json")).read_text())
        return float(np.median(trial["epoch_seconds"][1:])) / 2

    overrides = ["tune.max_trials=1", "train.epochs=3", "tune.trial_budget=epochs", "tune.final_minutes=0.5", "tune.final={augment: {train: light}}"]
    config = tune_config(tiny_config, *overrides)
    config_dir = Path(config.output.dir)
    monkeypatch.setattr(importlib.import_module("tuning.search"), "measure_epoch_seconds", twice_the_trials_pace)  # the module, not tuning.search()
    result = search(config, progress=lambda line: None)
    trial = json.loads(next(result.search_dir.glob("trial_*/result.json")).read_text())
    assert len(trial["epoch_seconds"]) == 3
    pace = float(np.median(trial["epoch_seconds"][1:])) / 2  # here, twice as fast: epochs and fixed costs
    fixed = trial["seconds"] / 2 - pace * 3
    assert load_config(result.best_config).train.epochs == max(1, int((30 - fixed) // pace))
    header = result.best_config.read_text().splitlines()[1]  # best.yaml says why it trains that long
    assert "tune.final_minutes=0.5" in header and "timed here before the final run: 0.50 of the pace that trial measured" in header
    assert [c.augment.train for c in timed] == ["light"]  # the final run's config was timed, as it will train


def test_best_yaml_with_progressive_resizing_fits_more_of_its_cheaper_epochs(tiny_config: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.import_module("tuning.search"), "measure_epoch_seconds", lambda config, data: None)  # the trial's pace: cost alone
    overrides = ["tune.max_trials=1", "train.epochs=3", "tune.trial_budget=epochs", "tune.final_minutes=0.5"]
    result = search(tune_config(tiny_config, *overrides, "tune.final={train: {progressive_from: 16}}"), progress=lambda line: None)
    trial = json.loads(next(result.search_dir.glob("trial_*/result.json")).read_text())
    pace = float(np.median(trial["epoch_seconds"][1:]))
    at_full_size = max(1, int((30 - (trial["seconds"] - pace * 3)) // pace))
    best = load_config(result.best_config)
    assert best.train.progressive_from == 16 and at_full_size < best.train.epochs <= at_full_size / 0.5  # 16, 24, 32 px
    header = result.best_config.read_text().splitlines()[1]
    ratio = float(header.split("this run's epochs cost ")[1].split()[0])  # a third each at 16, 24, 32 px: about 0.6
    assert 0.55 < ratio < 0.7 and best.train.epochs == pytest.approx(at_full_size / ratio, rel=0.03, abs=2)


class KerasTunerAcquisition(ValidProposals, kt.oracles.BayesianOptimizationOracle):
    """KerasTuner's own acquisition step (the best point, checked only afterwards): the behaviour BayesianOracle replaces."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._init_valid_proposals()


def stub_search(config: Config, oracle: kt.Oracle, trials: int, tmp_path: Path) -> tuple[list[dict], list[int]]:
    """Proposals of `oracle` with a stub score instead of training, and the count of proposals rejected so far after
    each. The score grows with the blocks of stride 2: it draws the search to the edge where networks shrink to nothing."""
    hypermodel = hypermodel_for(config)
    tuner = SearchTuner(oracle, hypermodel, tmp_path / "stub-search", data_for=None)  # declares the space, as a search does
    proposed, rejected = [], []
    for _ in range(trials):
        trial = oracle.create_trial("stub")
        values = dict(trial.hyperparameters.values)
        assert hypermodel.problem(tuner.hyperparameters_of(values)) is None  # every trial is a network worth training
        proposed.append(values)
        rejected.append(len(oracle.rejected))
        strided = sum(values.get(f"strides_{i}") == 2 for i in range(1, 5))
        oracle.update_trial(trial.trial_id, {"val_accuracy": 0.1 * strided + 0.05 * values["blocks"] - 0.2 * abs(np.log10(values["learning_rate"] / 2e-3))})
        trial.status = "COMPLETED"
        oracle.end_trial(trial)
    return proposed, rejected


def test_bayesian_proposals_are_networks_worth_training(tiny_config: Config, tmp_path: Path) -> None:
    # At 16 px, 2 to 4 blocks of stride 1 or 2: most networks of this space shrink below 2 pixels.
    config = tune_config(
        tiny_config,
        "data.image_size=16",
        "tune.space.blocks={min: 2, max: 4}",
        "tune.space.strides=[1, 2]",
        "tune.space.kernel_size=[3, 5]",
        "tune.space.filters=8",
        "tune.space.schedule=constant",
        "tune.space.optimizer=adam",
    )
    options = {"objective": kt.Objective("val_accuracy", "max"), "max_trials": 9, "num_initial_points": 3, "seed": 2}
    proposed, rejected = stub_search(config, BayesianOracle(**options), 9, tmp_path / "ours")
    assert rejected[2] > 0  # the random first trials met invalid networks (and drew again) ...
    assert rejected[-1] == rejected[2]  # ... the Gaussian process proposed only valid ones
    assert len({json.dumps(v, sort_keys=True) for v in proposed}) == len(proposed)  # and none twice
    _, theirs = stub_search(config, KerasTunerAcquisition(**options), 9, tmp_path / "keras-tuner")
    assert theirs[-1] > theirs[2]  # KerasTuner's acquisition alone proposed invalid networks in this space


@pytest.mark.parametrize("max_trials,searched,expected", [(20, 22, 6), (100, 22, 33), (300, 22, 66), (5, 22, 3), (30, 2, 6), (3, 1, 3)])
def test_default_initial_points_leave_trials_to_the_gaussian_process(max_trials: int, searched: int, expected: int) -> None:
    assert default_initial_points(max_trials, searched) == expected


def test_bayesian_default_initial_points_follow_max_trials(tiny_config: Config) -> None:
    oracle = make_oracle(tune_config(tiny_config, "tune.tuner=bayesian", "tune.max_trials=30").tune, seed=0, max_epochs=1)
    space = kt.HyperParameters()
    for i in range(20):
        space.Choice(f"h{i}", [1, 2])
    oracle.update_space(space)
    assert oracle.initial_points() == default_initial_points(30, 20) == 10  # KerasTuner's own rule: 60, all 30 trials


@pytest.mark.parametrize("tuner", ["hyperband", "bayesian", "grid"])
def test_every_tuner_runs_a_small_search(tiny_config: Config, tuner: str) -> None:
    overrides = [f"tune.tuner={tuner}", "tune.max_trials=3"]
    if tuner == "hyperband":
        overrides += ["train.epochs=2", "tune.reduction_factor=2"]
    if tuner == "bayesian":
        overrides += ["tune.initial_points=2"]
    if tuner == "grid":  # a grid of 2 x 2 = 4 networks, blocks fixed
        overrides += [
            "tune.space.blocks=1",
            "tune.space.kernel_size=[3, 5]",
            "tune.space.strides=1",
            "tune.space.dropout=0.2",
            "tune.space.optimizer=adam",
            "tune.space.learning_rate=0.003",
            "tune.space.schedule=constant",
        ]
    config = tune_config(tiny_config, *overrides)
    result = search(config, progress=lambda line: None)
    assert len(result.trials) == 3 and (result.trials["status"] == "COMPLETED").all()
    assert load_config(result.best_config).train.epochs == config.train.epochs  # hyperband: its max_epochs, not a round's
    if tuner == "grid":
        combos = {(r.filters_1, r.kernel_size_1) for r in result.trials.itertuples()}
        assert len(combos) == 3  # the grid never repeats a network
    if tuner == "hyperband":  # factor 2 over 2 epochs: 1-epoch trials, then the best promoted to 2 epochs
        assert sorted(result.trials["epochs"]) == [1, 1, 2]


def test_the_same_seed_proposes_the_same_trials(tiny_config: Config, tmp_path: Path) -> None:
    def proposals(name: str, seed: int) -> list[dict]:
        config = tune_config(tiny_config, "tune.max_trials=3", f"tune.seed={seed}", f"output.dir={tmp_path / name}")
        table = search(config, progress=lambda line: None).trials
        return table[["blocks", "filters_1", "kernel_size_1", "strides_1", "learning_rate", "schedule"]].to_dict("records")

    first = proposals("a", 7)
    assert first == proposals("b", 7)
    assert first != proposals("c", 8)


@pytest.mark.parametrize(
    "override,message",
    [
        ("tune.tuner=genetic", "tune.tuner: 'genetic' is not one of random, asha, hyperband, bayesian, grid"),
        ("tune.objective=val_top1", "tune.objective: 'val_top1' is not one of val_loss"),
        ("tune.space.blocks={min: 4, max: 2}", "tune.space.blocks: min 4 is larger than max 2"),
        ("tune.space.filters=[]", "tune.space.filters: the list of choices is empty"),
        ("tune.space.schedule=[cosine, warp]", "unknown schedule 'warp'"),
        ("tune.space.optimizer=rmsprop", "unknown optimizer 'rmsprop'"),
        ("tune.space.dropout={min: 0, max: 0.5, sampling: log}", "log sampling needs min > 0"),
        ("tune.space.learning_rate=[0.01, 0]", "tune.space.learning_rate: 0.0 must be > 0"),
        ("tune.space.schedule_knobs={cosine: {warmup: [1]}}", "unknown knob 'warmup'"),
        ("tune.space.kernel_size=[3, fast]", "'fast' is not a int"),
        ("tune.max_trials=0", "tune.max_trials: 0 must be >= 1"),
        ("tune.final_minutes=5;tune.final_epochs=30", "tune.final_epochs and tune.final_minutes both size the final run"),
        ("tune.space.filters_growth=[0.5, 2]", "would shrink the network"),
        ("tune.trial_budget=minutes", "tune.trial_budget: 'minutes' is not one of compute, epochs"),
        ("tune.final.data.image_size=48", "tune.final.data: the final run keeps the search's images"),
        ("tune.final.train.epochs=50", "tune.final.train.epochs: the final run's length is tune.final_epochs or tune.final_minutes"),
        ("tune.final.augment.trian=heavy", "tune.final: unknown config key augment.trian"),
        # 6 blocks of stride 2 at 32 px: every network shrinks to nothing
        ("tune.space.blocks=6;tune.space.strides=2", "no network in this space is worth training"),
    ],
)
def test_a_bad_space_is_one_error_before_any_training(tiny_config: Config, tmp_path: Path, override: str, message: str) -> None:
    config = tune_config(tiny_config, *override.split(";"))
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("{", r"\{")):
        search(config, progress=lambda line: None)
    assert not (tmp_path / "runs").exists()  # nothing was written


def test_cli_tune_bad_space_exit_code_2(tiny_config: Config, capsys: pytest.CaptureFixture[str]) -> None:
    from app.cli import main

    code = main(["tune", "--set", f"data.train={tiny_config.data.train}", "--set", "tune.space.blocks={min: 5, max: 1}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "min 5 is larger than max 1" in err and len(err.splitlines()) == 1


def test_a_named_search_directory_of_another_search_is_refused(tiny_config: Config) -> None:
    config = tune_config(tiny_config, "tune.max_trials=1", "output.name=mysearch")
    search(config, progress=lambda line: None)
    changed = load_config(overrides=["tune.space.filters=[16]"], base=config)
    with pytest.raises(ConfigError, match="written by a different search"):
        search(changed, progress=lambda line: None)


def test_a_killed_search_resumes_without_redoing_finished_trials(tiny_config: Config, tmp_path: Path) -> None:
    """SIGKILL in the middle of the second trial; the same command again finishes the search from there."""
    out = tmp_path / "runs"
    settings = [*SMALL_SPACE, "data.val_fraction=0.25", "train.epochs=6", "tune.max_trials=3", "tune.space.filters=[16, 32]"]
    process = start_cli_search(tiny_config.data.train, out, *settings)
    deadline = time.monotonic() + 240
    first_result = None
    while time.monotonic() < deadline and process.poll() is None:
        found = list(out.glob("*-tune-*/trial_0/result.json"))
        if found and list(out.glob("*-tune-*/trial_1/trial.json")):
            first_result = found[0]
            time.sleep(1.0)  # well inside trial 1 (6 epochs)
            break
        time.sleep(0.1)
    assert first_result is not None, "the search did not reach its second trial"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    folder = first_result.parents[1]
    assert not (folder / "search.json").exists() and not (folder / "trial_1" / "result.json").exists()  # killed mid-trial
    first_written = first_result.stat().st_mtime_ns

    done = rerun_cli_search(tiny_config.data.train, out, *settings, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"search directory: {folder}" in done.stdout and "resuming the search" in done.stdout
    assert first_result.stat().st_mtime_ns == first_written  # trial 0 was not trained again
    trials = pd.read_csv(folder / TRIALS_FILE)
    assert sorted(trials["trial"]) == [0, 1, 2] and (trials["status"] == "COMPLETED").all()  # each trial once, the killed one rerun
    assert (folder / "search.json").is_file()


def test_a_time_budget_stops_the_search(tiny_config: Config, capsys: pytest.CaptureFixture[str]) -> None:
    from app.cli import main

    # a budget spent before the first trial: no trial starts, and the results say so instead of failing
    config = tune_config(tiny_config, "tune.max_trials=5", "tune.max_minutes=1e-9")
    result = search(config, progress=lambda line: None)
    assert len(result.trials) == 0 and result.best_config is None
    assert "No trial completed" in (result.search_dir / SUMMARY_FILE).read_text() and (result.search_dir / "search.json").is_file()
    code = main(["tune", "--set", f"data.train={tiny_config.data.train}", "--set", "tune.max_minutes=1e-9", "--set", f"output.dir={config.output.dir}"])
    assert code == 1 and "no trial completed" in capsys.readouterr().out


def test_backbone_space_maps_onto_the_backbone_config(tiny_config: Config) -> None:
    config = tune_config(
        tiny_config,
        "model.name=efficientnetb0",
        "model.weights=null",
        "finetune.epochs=1",
        "tune.space.backbone=[efficientnetb0, resnet50v2, xception]",
        "tune.space.unfreeze_blocks=[1, 2]",
        "tune.space.finetune_learning_rate={min: 0.00001, max: 0.001, sampling: log}",
        "tune.space.image_size=[16, 32, 64]",
    )
    hypermodel = hypermodel_for(config)
    assert type(hypermodel).__name__ == "BackboneHyperModel"
    hp = kt.HyperParameters()
    hp.Fixed("backbone", "resnet50v2")
    hp.Fixed("unfreeze_blocks", 2)
    hp.Fixed("image_size", 32)
    trial_config = hypermodel.config_for(hp)
    assert (trial_config.model.name, trial_config.finetune.unfreeze_blocks, trial_config.data.image_size) == ("resnet50v2", 2, 32)
    assert "filters_1" not in hp.values  # the baseline's block hyperparameters are not part of a backbone search
    small = kt.HyperParameters()
    small.Fixed("image_size", 16)
    assert "needs inputs of at least 32x32 pixels, got 16x16" in hypermodel.problem(small)  # rejected before any build
    for size, problem in ((64, "xception needs inputs of at least 71x71 pixels, got 64x64"), (32, None)):
        hp = kt.HyperParameters()
        hp.Fixed("backbone", "xception" if problem else "resnet50v2")
        hp.Fixed("image_size", size)
        assert (problem in hypermodel.problem(hp)) if problem else hypermodel.problem(hp) is None  # each backbone's own smallest


def test_a_backbone_search_trains_two_stages(tiny_config: Config) -> None:
    config = tune_config(
        tiny_config,
        "model.name=efficientnetb0",
        "model.weights=null",
        "finetune.epochs=1",
        "tune.space.unfreeze_blocks=[1, 2]",
        "tune.space.finetune_learning_rate=[0.0001, 0.001]",
        "tune.max_trials=1",
    )
    result = search(config, progress=lambda line: None)
    row = result.trials.iloc[0]
    assert row["status"] == "COMPLETED" and row["epochs"] == 2  # one epoch of the head, one fine-tuning
    assert load_config(result.best_config).model.name == "efficientnetb0"
