"""What every way of running a search shares (one process, the chief of a distributed search): the open search
directory with its HyperModel, oracle and tuner, the per-trial reporting, the data prepared once, and the results
written when the search ends."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras_tuner as kt
import pandas as pd

from app.atomic import write_text
from app.config import Config
from app.data import PreparedData, prepare_data
from app.resumable import CONFIG_FILE, ResumableDir
from pipelines.errors import UserError
from tuning import results
from tuning.hypermodels import HYPERBAND_KEYS, make_hypermodel
from tuning.oracles import make_oracle
from tuning.space import SearchSpace
from tuning.tuner import RESULT_FILE, SearchTuner


class SearchError(UserError, ValueError):
    """A search that cannot go on (trials keep failing)."""


def progress_line(tuner: SearchTuner, trial: kt.engine.trial.Trial, total: int, space: kt.HyperParameters, worker: str | None = None) -> str:
    """`[3/10] trial 03  12.3 s  val_accuracy=0.8123  best 0.8450 (trial 01)  filters_1=64 kernel_size_1=5 ...`"""
    objective = tuner.oracle.objective.name
    result_path = tuner.trial_dir(trial.trial_id) / RESULT_FILE
    seconds = json.loads(result_path.read_text()).get("seconds", 0.0) if result_path.is_file() else 0.0
    defaults = {hp.name: hp.default for hp in space.space}
    changed = {k: v for k, v in trial.hyperparameters.values.items() if k not in HYPERBAND_KEYS and trial.hyperparameters.is_active(k) and v != defaults.get(k)}
    shown = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in changed.items()) or "(the config's own values)"
    values = trial.hyperparameters.values
    if "tuner/epochs" in values:
        source = f" of trial {values['tuner/trial_id']}" if values.get("tuner/trial_id") else ""
        first, last = tuner.hypermodel.epoch_span(trial.hyperparameters)
        shown = f"rung {values.get('tuner/round', 0)}: epochs {first}-{last}{source}  " + shown
    score = (
        f"{objective}={trial.score:.4f}"
        if trial.status == "COMPLETED" and trial.score is not None
        else f"{trial.status.lower()}: {(trial.message or '').strip().splitlines()[-1][:120] if trial.message else ''}"
    )
    best = results.best_trial(tuner.oracle)
    best_text = f"best {best.score:.4f} (trial {best.trial_id})" if best is not None else "no best yet"
    number = len(tuner.oracle.end_order)
    where = f" on {worker}" if worker else ""
    return f"[{number}/{total}] trial {trial.trial_id}{where}  {seconds:6.1f} s  {score}  {best_text}  {shown}"


@dataclass
class Session:
    """What the three ways of running a search share: its directory, space, HyperModel and tuner."""

    config: Config
    space: SearchSpace
    seed: int
    search_dir: Path
    resumed: bool
    hypermodel: Any
    tuner: SearchTuner
    names: list[str]
    hparams: results.HParamsLog


def open_session(
    config: Config,
    space: SearchSpace,
    job: ResumableDir,
    counts: tuple[int, bool, int],
    data_for: Callable[[Config], PreparedData],
    progress: Callable[[str], None],
) -> Session:
    """Set up, in the open search directory, the HyperModel, the oracle and the tuner with its per-trial reporting
    (trials.csv, TensorBoard HParams, one progress line). `counts`: classes, multi-label, training images."""
    seed = config.tune.seed if config.tune.seed is not None else config.seed
    search_dir, resumed = job.path, job.resumed
    if resumed:
        progress(f"resuming the search in {search_dir}")
    write_text(search_dir / CONFIG_FILE, job.identity)  # a changed budget is recorded
    hypermodel = make_hypermodel(config, space, *counts)
    oracle = make_oracle(config.tune, seed, config.train.epochs)
    tuner = SearchTuner(oracle, hypermodel, search_dir, data_for, max_seconds=config.tune.max_minutes * 60 if config.tune.max_minutes else None)
    names = results.searched_names(tuner.oracle)
    rungs = ["rung", "rung_epochs"] if config.tune.tuner in ("asha", "hyperband") else []  # each trial's budget, shown beside its values
    hparams = results.HParamsLog(search_dir / results.TENSORBOARD_DIR, [*names, *rungs], [config.tune.objective])
    opened = Session(config, space, seed, search_dir, resumed, hypermodel, tuner, names, hparams)

    def trial_done(tuner: SearchTuner, trial: kt.engine.trial.Trial, worker: str | None = None) -> None:
        results.write_trials(tuner.oracle, hypermodel, search_dir)
        log_hparams(hparams, tuner, trial)
        progress(progress_line(tuner, trial, config.tune.max_trials, tuner.oracle.get_space(), worker))

    tuner.on_trial_done = trial_done
    return opened


def consecutive_failures_error(opened: Session, message: str) -> SearchError:
    results.write_trials(opened.tuner.oracle, opened.hypermodel, opened.search_dir)
    return SearchError(
        f"{opened.config.tune.tuner} search stopped: 3 trials in a row failed, the last with: {message}. See {opened.search_dir / results.TRIALS_FILE}"
    )


def finish_session(
    opened: Session, job: ResumableDir, facts: dict[str, Any], started: float, measure: results.EpochMeasure | None = None
) -> tuple[pd.DataFrame, kt.engine.trial.Trial | None, int]:
    """Write the results of a search that ended: trials.csv, best.yaml (its final run sized at the pace `measure`
    times here, if given), summary.md, plots, and search.json (written last)."""
    tuner, config, search_dir = opened.tuner, opened.config, opened.search_dir
    table = results.write_trials(tuner.oracle, opened.hypermodel, search_dir, measure)
    facts = {
        "tuner": config.tune.tuner,
        "trial_budget": config.tune.trial_budget,
        "seed": opened.seed,
        **facts,
        "image_size": config.data.image_size,
        "seconds": tuner.elapsed(),
        "max_minutes": config.tune.max_minutes,
    }
    results.write_summary(tuner.oracle, table, search_dir, facts)
    results.plot_scores(table, config.tune.objective, search_dir / results.SCORES_PLOT)
    results.plot_hyperparameters(table, config.tune.objective, opened.names, search_dir / results.HYPERPARAMETERS_PLOT)
    best = results.best_trial(tuner.oracle)
    rejected = len(getattr(tuner.oracle, "rejected", []))
    extra = {k: facts[k] for k in ("workers", "oracle_requests", "chief_cpu_seconds", "ignored_reports", "workers_idle_share") if k in facts}
    job.finish(
        {
            "objective": config.tune.objective,
            "best_score": best.score if best else None,
            "best_trial": best.trial_id if best else None,
            "trials": len(table),
            "rejected_proposals": rejected,
            "skipped_for_time": getattr(tuner.oracle, "skipped_for_time", 0),
            "seconds": round(tuner.elapsed(), 1),
            "this_process_seconds": round(time.perf_counter() - started, 1),
            **extra,
        },
    )
    return table, best, rejected


def data_cache() -> tuple[dict[int, PreparedData], Callable[[Config], PreparedData]]:
    prepared: dict[int, PreparedData] = {}

    def data_for(trial_config: Config) -> PreparedData:
        """Prepared once per image size (the only data setting a search changes), then shared by every trial."""
        size = trial_config.data.image_size
        if size not in prepared:
            prepared[size] = prepare_data(trial_config)
        return prepared[size]

    return prepared, data_for


def announce(opened: Session, progress: Callable[[str], None], where: str = "") -> None:
    done = sum(1 for t in opened.tuner.oracle.trials.values() if t.status in ("COMPLETED", "FAILED"))
    tune = opened.config.tune
    progress(
        f"search directory: {opened.search_dir} ({tune.tuner}, {tune.objective}, {done} of {tune.max_trials} trials done, "
        f"searching {', '.join(opened.names) or 'nothing'}){where}"
    )
    if tune.reference_trial and done == 0:
        held = opened.tuner.reference_values() is not None
        said = "the first trial is the config's own network and training" if held else "tune.space does not hold the config's own network: no reference trial"
        progress(said)


def chief_has_no_data(config: Config) -> PreparedData:
    raise AssertionError("the chief of a distributed search trains nothing")


def log_hparams(hparams: results.HParamsLog | None, tuner: SearchTuner, trial: kt.engine.trial.Trial) -> None:
    result_path = tuner.trial_dir(trial.trial_id) / RESULT_FILE
    if hparams is None or not result_path.is_file():
        return
    result = json.loads(result_path.read_text())
    budget = {key: result[key] for key in ("rung", "rung_epochs") if key in result}
    hparams.trial(trial.trial_id, {**result["hyperparameters"], **budget}, result["history"], result["metrics"])
