"""A search that earns its minutes: ASHA, hard time budgets, proposals that fit the time left, the median rule."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import keras_tuner as kt
import numpy as np
import pandas as pd
import pytest

from app.config import Config, ConfigError, load_config, to_dict
from tests.conftest import rerun_cli_search, start_cli_search
from tuning import parse_space, search
from tuning.hypermodels import make_hypermodel, scaled_rungs
from tuning.oracles import MAX_UNAFFORDABLE_IN_A_ROW, ASHAOracle, RandomOracle, rung_epochs
from tuning.results import SUMMARY_FILE, TRIALS_FILE
from tuning.space import rung_image_size
from tuning.stopping import MIN_TRIALS, Curve, MedianStop
from tuning.tuner import DEADLINE_FILE, SearchTuner

SMALL_SPACE = ["tune.space.blocks={min: 1, max: 2}", "tune.space.filters=[4, 8]", "tune.space.repeats=1", "tune.space.augment=none"]


def tune_config(base: Config, *overrides: str) -> Config:
    return load_config(overrides=[*SMALL_SPACE, *overrides], base=base)


def stub_tuner(config: Config, oracle: kt.Oracle, folder: Path) -> kt.Oracle:
    """`oracle` in a search directory with the space of `config` declared, as a search sets it up; trials are then
    created and ended by hand with a stub score."""
    SearchTuner(oracle, make_hypermodel(config, parse_space(config), 3, False, 18), folder, data_for=None)
    return oracle


def asha(config: Config, folder: Path, max_trials: int = 9, max_epochs: int = 9, factor: int = 3) -> ASHAOracle:
    oracle = ASHAOracle(max_trials=max_trials, max_epochs=max_epochs, factor=factor, objective=kt.Objective("score", "max"), seed=1)
    return stub_tuner(config, oracle, folder)


def finish(oracle: kt.Oracle, trial: kt.engine.trial.Trial, score: float) -> None:
    oracle.update_trial(trial.trial_id, {"score": score})
    trial.status = "COMPLETED"
    oracle.end_trial(trial)


def network_score(trial: kt.engine.trial.Trial) -> float:
    """A stub score: networks with a larger rate score higher, and every network improves with epochs."""
    values = trial.hyperparameters.values
    return values["learning_rate"] + 0.1 * values["tuner/epochs"]


@pytest.mark.parametrize("low,high,factor,rungs", [(1, 9, 3, [1, 3, 9]), (1, 8, 3, [1, 3, 8]), (2, 2, 3, [2]), (1, 8, 2, [1, 2, 4, 8])])
def test_rungs_grow_by_the_factor_up_to_the_most_epochs(low: int, high: int, factor: int, rungs: list[int]) -> None:
    assert rung_epochs(low, high, factor) == rungs


def test_asha_promotes_from_the_best_third_of_each_rung_to_continue_their_weights(tiny_config: Config, tmp_path: Path) -> None:
    oracle = asha(tune_config(tiny_config), tmp_path)
    trials = []
    while True:
        trial = oracle.create_trial("worker")
        if trial.status != "RUNNING":
            break
        values = trial.hyperparameters.values
        if values["tuner/round"] > 0:  # when promoted, it was among the best third of its rung's finished trials
            rung = [t for t in trials if t.hyperparameters.values["tuner/round"] == values["tuner/round"] - 1]
            ranked = sorted(rung, key=lambda t: -t.score)[: len(rung) // 3]
            assert values["tuner/trial_id"] in {t.trial_id for t in ranked}
        finish(oracle, trial, network_score(trial))
        trials.append(oracle.get_trial(trial.trial_id))
    assert trial.status == "STOPPED"
    by_rung: dict[int, list] = {}
    for t in trials:
        by_rung.setdefault(t.hyperparameters.values["tuner/round"], []).append(t)
    assert len(by_rung[0]) == 9 and sorted(by_rung) == [0, 1, 2]  # max_trials networks; promotions do not count
    for rung in (0, 1):  # in the end, the best third of every rung went on
        best = sorted(by_rung[rung], key=lambda t: -t.score)[: len(by_rung[rung]) // 3]
        assert {t.trial_id for t in best} <= {t.hyperparameters.values["tuner/trial_id"] for t in by_rung[rung + 1]}
    for t in [*by_rung[1], *by_rung[2]]:
        values = t.hyperparameters.values
        parent = oracle.get_trial(values["tuner/trial_id"])
        assert values["learning_rate"] == parent.hyperparameters.values["learning_rate"]  # the same network ...
        assert values["tuner/initial_epoch"] == parent.hyperparameters.values["tuner/epochs"]  # ... continued where it stopped
        assert values["tuner/epochs"] == oracle.rungs[values["tuner/round"]]
    best = oracle.get_best_trials(1)[0]
    assert best.hyperparameters.values["tuner/round"] == 2  # the best is the top rung's
    assert best.score == max(t.score for t in by_rung[2])


def test_asha_never_waits_for_a_rung_to_fill(tiny_config: Config, tmp_path: Path) -> None:
    oracle = asha(tune_config(tiny_config), tmp_path, max_trials=4)
    first, second = oracle.create_trial("a"), oracle.create_trial("b")
    finish(oracle, first, 0.9)
    third = oracle.create_trial("a")  # one trial finished, the other running: no third of rung 0 yet, a new network
    assert third.status == "RUNNING" and third.hyperparameters.values["tuner/round"] == 0
    finish(oracle, second, 0.1)
    finish(oracle, third, 0.5)
    promoted = oracle.create_trial("b")  # three finished at rung 0: the best goes on
    assert promoted.hyperparameters.values["tuner/round"] == 1 and promoted.hyperparameters.values["tuner/trial_id"] == first.trial_id
    last = oracle.create_trial("a")
    assert last.hyperparameters.values["tuner/round"] == 0  # the fourth and last network
    waiting = oracle.create_trial("c")  # every network started, two running: wait for a promotion they may earn
    assert waiting.status == "IDLE"


def test_a_proposal_too_long_for_the_time_left_is_replaced_by_one_that_fits(tiny_config: Config, tmp_path: Path) -> None:
    config = tune_config(tiny_config)
    oracle = stub_tuner(config, RandomOracle(objective=kt.Objective("score", "max"), max_trials=5, seed=3), tmp_path / "a")
    oracle.seconds_left = lambda: 60.0
    oracle.estimate = lambda values: 1e4 * values["learning_rate"]  # a rate above 0.006 would not finish in time
    for _ in range(5):
        trial = oracle.create_trial("w")
        assert trial.status == "RUNNING" and 1e4 * trial.hyperparameters.values["learning_rate"] <= 60.0
        finish(oracle, trial, 0.0)
    assert oracle.skipped_for_time > 0

    stuck = stub_tuner(config, RandomOracle(objective=kt.Objective("score", "max"), max_trials=5, seed=3), tmp_path / "b")
    stuck.seconds_left, stuck.estimate = (lambda: 60.0), (lambda values: 61.0)  # nothing fits: the search ends
    assert stuck.create_trial("w").status == "STOPPED" and stuck.skipped_for_time == MAX_UNAFFORDABLE_IN_A_ROW


class _Model:
    stop_training = False


def test_the_median_rule_stops_a_trial_below_the_finished_trials_median() -> None:
    curves = [[0.5, 0.6, 0.7, 0.7], [0.4, 0.5, 0.6, 0.6], [0.3, 0.55, 0.65, 0.7]]  # medians of the best so far: 0.4, 0.55, 0.65
    rule = MedianStop("val_accuracy", [Curve(c, 4) for c in curves], planned=4)
    assert rule.median_at(1) == pytest.approx(0.4) and rule.median_at(2) == pytest.approx(0.55)
    rule.set_model(_Model())
    rule.on_epoch_end(0, {"val_accuracy": 0.2})  # below, but the first epoch is never judged
    assert rule.stopped_epoch is None
    rule.on_epoch_end(1, {"val_accuracy": 0.5})  # best so far 0.5 < 0.55 at epoch 2: stopped
    assert rule.stopped_epoch == 2 and rule.model.stop_training
    loss_rule = MedianStop("val_loss", [Curve(c, 3) for c in ([1.0, 0.8, 0.8], [1.2, 0.9, 0.9], [1.1, 0.7, 0.7])], planned=3)
    loss_rule.set_model(_Model())
    loss_rule.on_epoch_end(0, {"val_loss": 1.0})
    loss_rule.on_epoch_end(1, {"val_loss": 0.75})  # lower loss than the median 0.8: goes on
    assert loss_rule.stopped_epoch is None
    too_few = MedianStop("val_accuracy", [Curve(c, 4) for c in curves[: MIN_TRIALS - 1]], planned=4)
    assert too_few.median_at(2) is None


def test_the_median_rule_compares_trials_at_the_same_share_of_their_budget_and_never_judges_the_last_epoch() -> None:
    """Under trial_budget compute a network half as costly plans twice the epochs: its epoch 2 of 8 is compared with
    the others' epoch 1 of 4, what they had spent by then, not with their epoch 2."""
    costly = [Curve([0.6, 0.7, 0.7, 0.7], 4), Curve([0.5, 0.8, 0.8, 0.8], 4), Curve([0.4, 0.6, 0.6, 0.6], 4)]
    cut_short = Curve([0.9], 4)  # stopped after 1 of its 4 epochs: it counts until the share it reached
    rule = MedianStop("val_accuracy", [*costly, cut_short], planned=8)
    assert rule.median_at(1) is None  # an eighth of their budget is no whole epoch of theirs
    assert rule.median_at(2) == rule.median_at(3) == pytest.approx(0.55)  # their epoch 1: 0.6, 0.5, 0.4, 0.9
    assert rule.median_at(4) == pytest.approx(0.7)  # their best by epoch 2: 0.7, 0.8, 0.6 (not the cut-short one)
    rule.set_model(_Model())
    for epoch, value in enumerate([0.1, 0.56, 0.3, 0.3]):  # compared by epoch, 0.56 would be stopped at epoch 2 (0.7)
        rule.on_epoch_end(epoch, {"val_accuracy": value})
    assert rule.stopped_epoch == 4
    last = MedianStop("val_accuracy", [Curve([0.9, 0.9], 2)] * 3, planned=2)  # judging the last epoch would save nothing
    last.set_model(_Model())
    last.on_epoch_end(0, {"val_accuracy": 0.1})
    last.on_epoch_end(1, {"val_accuracy": 0.1})
    assert last.stopped_epoch is None


def test_a_search_hands_the_median_rule_the_epochs_each_trial_planned(tiny_config: Config, tmp_path: Path) -> None:
    config = tune_config(tiny_config, "tune.median_stop=true", "train.epochs=2", "tune.trial_budget=compute", "tune.space.filters=[4, 64]")
    oracle = RandomOracle(objective=kt.Objective("score", "max"), max_trials=5, seed=3)
    tuner = SearchTuner(oracle, make_hypermodel(config, parse_space(config), 3, False, 18), tmp_path, data_for=None)
    monitor = tuner.hypermodel.monitor()
    # complete values, as result.json holds them (KerasTuner fills missing ones at random)
    cheap, costly = (tuner.hyperparameters_of(v).values for v in ({"blocks": 1, "filters_1": 4}, {"blocks": 2, "filters_1": 64, "filters_2": 64}))
    history = [{"epoch": 1, monitor: 0.5}, {"epoch": 2, monitor: 0.6}]
    tuner.finished_results = lambda: [{"hyperparameters": cheap, "history": history}, {"hyperparameters": costly, "history": history}]
    (rule,) = tuner._median_stop(config, kt.HyperParameters())
    own = [tuner.hypermodel.config_for(tuner.hyperparameters_of(values)).train.epochs for values in (cheap, costly)]
    assert [planned for _, planned in rule.curves] == own and own[0] > own[1]  # the cheaper network planned more epochs
    assert rule.monitor == monitor and rule.planned == config.train.epochs
    assert tuner._median_stop(load_config(overrides=["tune.median_stop=false"], base=config), kt.HyperParameters()) == []


def test_an_asha_search_records_rungs_and_its_best_yaml_trains_the_most_epochs(tiny_config: Config) -> None:
    config = tune_config(tiny_config, "tune.tuner=asha", "tune.max_trials=3", "train.epochs=3", "tune.reduction_factor=3", "tune.trial_budget=epochs")
    lines: list[str] = []
    result = search(config, progress=lines.append)
    table = result.trials
    assert sorted(table["rung"]) == [0, 0, 0, 1] and (table["status"] == "COMPLETED").all()
    promoted = table[table["rung"] == 1].iloc[0]
    assert promoted["epochs"] == 3 and str(int(promoted["continues"])) in set(table["trial"].astype(str))
    assert load_config(result.best_config).train.epochs == 3
    assert "best trial" in result.best_config.read_text() and any("rung 1: epochs 1-3" in line for line in lines)
    summary = (result.search_dir / SUMMARY_FILE).read_text()
    assert "trials per rung (epochs 1, 3): rung 0: 3, rung 1: 1" in summary
    trial = promoted["trial"]
    assert json.loads((result.search_dir / f"trial_{trial}" / "result.json").read_text())["rung_epochs"] == 3
    events = b"".join(p.read_bytes() for p in (result.search_dir / "tensorboard" / f"trial_{trial}").glob("events.out.tfevents.*"))
    assert b"rung_epochs" in events  # TensorBoard's HParams show each trial's budget


@pytest.mark.parametrize("factor,own", [(1.0, [1, 3, 9]), (2.0, [2, 6, 18]), (4.0, [4, 12, 36]), (0.5, [1, 2, 4]), (0.1, [1, 2, 3])])
def test_asha_rungs_in_a_networks_own_epochs_scale_and_always_grow(factor: float, own: list[int]) -> None:
    assert scaled_rungs([1, 3, 9], factor) == own


def test_asha_under_a_compute_budget_gives_a_cheaper_network_more_epochs_and_promotions_continue_them(tiny_config: Config) -> None:
    config = tune_config(tiny_config, "tune.tuner=asha", "tune.max_trials=3", "train.epochs=3", "tune.trial_budget=compute")
    lines: list[str] = []
    result = search(config, progress=lines.append)
    hypermodel = make_hypermodel(config, parse_space(config), 3, False, 18)
    oracle = ASHAOracle(max_trials=3, max_epochs=3, objective=kt.Objective("val_accuracy", "max"))
    tuner = SearchTuner(oracle, hypermodel, result.search_dir, data_for=None)  # reloads the finished search
    table = result.trials.set_index(result.trials["trial"].astype(int))
    for trial_id, trial in tuner.oracle.trials.items():
        hp = trial.hyperparameters
        own = scaled_rungs([1, 3], hypermodel.epoch_factor(to_dict(hypermodel.config_for(hp))))
        rung = hp.values["tuner/round"]
        assert hypermodel.epoch_span(hp) == ((own[0] if rung else 0), own[rung])
        assert table.loc[int(trial_id), "epochs"] == own[rung]  # what it trained (no early stop at 3 epochs and up)
    factors = {hypermodel.epoch_factor(to_dict(hypermodel.config_for(t.hyperparameters))) for t in tuner.oracle.trials.values()}
    assert max(factors) > 1  # the space's networks are cheaper than the config's own: they got more epochs
    promoted = table[table["rung"] == 1].iloc[0]
    parent = table.loc[int(promoted["continues"])]
    assert any(f"rung 1: epochs {int(parent['epochs'])}-{int(promoted['epochs'])} of trial" in line for line in lines)
    assert "each network's own in proportion to its cost" in (result.search_dir / SUMMARY_FILE).read_text()


def test_asha_rungs_may_grow_the_image_size_and_continue_the_weights(tiny_config: Config) -> None:
    config = tune_config(tiny_config, "tune.tuner=asha", "tune.max_trials=3", "train.epochs=3", "tune.first_rung_scale=0.5")
    result = search(config, progress=lambda line: None)
    table = result.trials.set_index("rung")
    assert list(table.loc[0, "image_size"]) == [16, 16, 16] and table.loc[1, "image_size"] == 32
    assert load_config(result.best_config).data.image_size == 32  # the final run trains at full size


@pytest.mark.parametrize("epochs,scale,sizes", [(9, 0.5, [32, 48, 64]), (3, 0.5, [32, 64]), (27, 0.25, [16, 32, 48, 64]), (1, 0.5, [64]), (9, 1.0, [64] * 3)])
def test_rung_image_sizes_grow_evenly_to_full_size(epochs: int, scale: float, sizes: list[int]) -> None:
    config = load_config(overrides=["data.image_size=64", f"train.epochs={epochs}", "tune.tuner=asha", f"tune.first_rung_scale={scale}"])
    assert [rung_image_size(config, rung) for rung in range(len(sizes))] == sizes


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["tune.first_rung_scale=0.5"], "tune.first_rung_scale: rungs are asha's"),
        (["tune.tuner=asha", "tune.first_rung_scale=0"], "tune.first_rung_scale: 0.0 must be a share of data.image_size in (0, 1]"),
        (["tune.tuner=asha", "tune.min_epochs=5", "train.epochs=3"], "tune.min_epochs: 5 must be in 1..train.epochs (3)"),
    ],
)
def test_bad_asha_settings_are_one_line(tiny_config: Config, overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_space(tune_config(tiny_config, *overrides))


def test_a_trial_running_at_the_search_deadline_stops_at_its_epochs_end(tiny_config: Config) -> None:
    config = tune_config(
        tiny_config, "tune.max_trials=3", "train.epochs=200", "train.early_stopping_patience=0", "tune.trial_budget=epochs", "tune.max_minutes=0.05"
    )
    started = time.monotonic()
    result = search(config, progress=lambda line: None)
    took = time.monotonic() - started
    table = pd.read_csv(result.search_dir / TRIALS_FILE)
    assert len(table) == 1 and table.loc[0, "stopped"] == "time limit" and table.loc[0, "epochs"] < 200
    assert took < 120  # 3 s of budget and one epoch of a tiny network, not 200 epochs
    assert json.loads((result.search_dir / DEADLINE_FILE).read_text())["ends_at"] > 0
    assert "1 trial(s) stopped by the time limit" in (result.search_dir / SUMMARY_FILE).read_text()


def test_the_estimate_is_the_measured_pace_times_a_trials_epochs_and_cost(tiny_config: Config) -> None:
    config = tune_config(tiny_config, "tune.max_trials=1", "train.epochs=2", "tune.trial_budget=epochs", "tune.space.blocks=1", "tune.space.filters=4")
    result = search(config, progress=lambda line: None)
    hypermodel = make_hypermodel(config, parse_space(config), 3, False, 18)
    oracle = RandomOracle(objective=kt.Objective("val_accuracy", "max"), max_trials=1)
    tuner = SearchTuner(oracle, hypermodel, result.search_dir, data_for=None)  # reloads the finished search
    measured = json.loads((result.search_dir / "trial_0" / "result.json").read_text())
    fixed = measured["seconds"] - sum(measured["epoch_seconds"])
    pace = measured["epoch_seconds"][1]  # the first epoch also traces: the pace is taken from the others
    values = dict(tuner.oracle.get_trial("0").hyperparameters.values)
    assert tuner.estimated_seconds(values) == pytest.approx(fixed + 2 * pace)
    assert tuner.estimated_seconds({**values, "tuner/epochs": 8}) == pytest.approx(fixed + 8 * pace)
    wider = hypermodel.config_for(tuner.hyperparameters_of({**values, "filters_1": 8}))
    ratio = hypermodel.epoch_cost(wider) / measured["epoch_cost"]
    assert ratio > 1 and tuner.estimated_seconds({**values, "filters_1": 8}) == pytest.approx(fixed + 2 * pace * ratio)


def test_recipe_keys_map_onto_the_trials_config(tiny_config: Config) -> None:
    config = tune_config(tiny_config, "tune.space.mixup=[0.0, 0.2]", "tune.space.ema=[0.0, 0.99]", "tune.space.progressive_from=[0, 16]")
    hypermodel = make_hypermodel(config, parse_space(config), 3, False, 18)
    hp = kt.HyperParameters()
    hypermodel.declare_hyperparameters(hp)
    for values, expected in [((0.0, 0.0, 0), (0.0, None, None)), ((0.2, 0.99, 16), (0.2, 0.99, 16))]:
        hp.values.update(dict(zip(("mixup", "ema", "progressive_from"), values)))
        train = hypermodel.config_for(hp).train
        assert (train.mixup, train.ema, train.progressive_from) == expected


def test_final_minutes_is_the_final_runs_time_limit(tiny_config: Config) -> None:
    config = tune_config(tiny_config, "tune.final_minutes=3")
    hypermodel = make_hypermodel(config, parse_space(config), 3, False, 18)
    hp = kt.HyperParameters()
    hypermodel.declare_hyperparameters(hp)
    assert hypermodel.config_for(hp, for_training=True, final_epochs=7).train.max_minutes == 3
    assert hypermodel.config_for(hp).train.max_minutes is None  # trials are held by tune.max_minutes instead
    assert np.isclose(load_config(overrides=["tune.final_minutes=3"]).tune.final_minutes, 3)


@pytest.mark.slow
def test_a_killed_asha_search_resumes_its_promotion(tiny_config: Config, tmp_path: Path) -> None:
    """SIGKILL during the first promotion; the same command again runs it again and finishes the search."""
    out = tmp_path / "runs"
    settings = [*SMALL_SPACE, "train.epochs=30", "tune.min_epochs=1", "tune.reduction_factor=30", "tune.tuner=asha", "tune.max_trials=30"]
    process = start_cli_search(tiny_config.data.train, out, *settings)
    deadline = time.monotonic() + 300
    promotion = None
    while time.monotonic() < deadline and process.poll() is None and promotion is None:
        for path in out.glob("*-tune-*/trial_*/trial.json"):
            values = json.loads(path.read_text())["hyperparameters"]["values"]
            if values.get("tuner/round") == 1 and not (path.parent / "result.json").exists():
                promotion = path.parent
        time.sleep(0.1)
    assert promotion is not None, "the search did not reach its first promotion"
    # killed at once: its 29 more epochs of 6 images can end within a second (a fixed wait here raced with them)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    folder = promotion.parent
    assert not (folder / "search.json").exists() and not (promotion / "result.json").exists()
    before = {p.parent.name: p.stat().st_mtime_ns for p in folder.glob("trial_*/result.json")}

    done = rerun_cli_search(tiny_config.data.train, out, *settings, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming the search" in done.stdout
    assert all((folder / name / "result.json").stat().st_mtime_ns == mtime for name, mtime in before.items())  # not trained again
    table = pd.read_csv(folder / TRIALS_FILE)
    assert (table["status"] == "COMPLETED").all() and (table["rung"] == 0).sum() == 30 and (table["rung"] == 1).sum() >= 1
    assert (promotion / "result.json").is_file()  # the killed promotion ran again, in its own trial
