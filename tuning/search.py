"""`search(config) -> SearchResult`: one architecture / hyperparameter search, resumable, with its results.

The data are read, split and decoded (data.cache) once per search and handed to every trial; trials run through
the same fit path as `imgclf train`. A search directory `<output.dir>/<timestamp>-tune-<model>/` holds the config
(config.yaml), KerasTuner's state (oracle.json, trial_*/), and the results (results.py). Started again with the same
config after any interruption (SIGKILL included), a search continues its newest unfinished directory: finished trials
are kept, the interrupted one is run again. `restart=True` starts a new directory instead.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras_tuner as kt
import pandas as pd
import yaml

from app import runs
from app.atomic import write_json, write_text
from app.config import Config, ConfigError, ConvBlock, dump_config, load_config
from app.data import PreparedData, prepare_data
from app.models.geometry import baseline_geometry, shape_problem
from tuning import results
from tuning.hypermodels import HYPERBAND_KEYS, make_hypermodel
from tuning.oracles import make_oracle
from tuning.space import SearchSpace, parse_space
from tuning.tuner import RESULT_FILE, SearchTuner

log = logging.getLogger(__name__)

FINISHED_FILE = "search.json"  # written last: a search directory without it was interrupted
# Keys a resumed search may change: the budget (to extend a search) and how much it prints.
RESUMABLE_CHANGES = (("tune", "max_trials"), ("tune", "max_minutes"), ("train", "verbose"))


class SearchError(ValueError):
    """A search that cannot go on (trials keep failing). The message is user-facing."""


@dataclass
class SearchResult:
    search_dir: Path
    objective: str
    best_score: float | None
    best_config: Path | None  # best.yaml
    trials: pd.DataFrame
    rejected: int  # proposals skipped without training
    resumed: bool
    prepared: dict[int, PreparedData] = field(default_factory=dict, repr=False)  # the search's data, per image size


def search_identity(config_text: str) -> dict[str, Any]:
    """What makes two searches the same search: the whole config but its budget and verbosity."""
    tree = yaml.safe_load(config_text) or {}
    for section, key in RESUMABLE_CHANGES:
        tree.get(section, {}).pop(key, None)
    return tree


def check_space(config: Config, space: SearchSpace) -> None:
    """Refuse a space in which no network is worth training, before any image is read: the least shrinking
    network it allows (fewest blocks, smallest strides and kernels, no pooling where allowed) must pass."""
    if space.backbone:
        sizes = space["image_size"].candidates() if space["image_size"] else [config.data.image_size]
        if max(sizes) < 32:
            raise ConfigError(f"config key tune.space.image_size: pretrained backbones need 32 pixels at least, and the largest choice is {max(sizes)}")
        return
    base = config.model.blocks

    def least(key: str, index: int) -> Any:
        entry = space[key]
        if entry is None:
            return getattr(base[min(index, len(base) - 1)], key)
        if key == "pool":
            return "none" if "none" in entry.candidates() else entry.candidates()[0]
        return int(min(entry.candidates()))

    count = least("blocks", 0) if space["blocks"] else len(base)
    blocks = [ConvBlock(1, least("kernel_size", i), least("strides", i), least("repeats", i), least("pool", i)) for i in range(count)]
    problem = shape_problem(baseline_geometry(blocks, config.data.image_size), config.tune.min_feature_size)
    if problem:
        raise ConfigError(
            f"tune.space: no network in this space is worth training at data.image_size={config.data.image_size}: even the least shrinking one "
            f"({count} blocks, strides {blocks[0].strides}, kernel {blocks[0].kernel_size}, pool {blocks[0].pool}) fails: {problem}. "
            "Fix: fewer blocks or stride 1 among the choices, a larger data.image_size, or a smaller tune.min_feature_size"
        )


def open_search_dir(config: Config, config_text: str, restart: bool) -> tuple[Path, bool]:
    """(search directory, resumed): the newest unfinished search of this config unless `restart`, else a new one.
    A directory named by output.name that holds another search is refused."""
    base = Path(config.output.dir)
    identity = search_identity(config_text)
    name = config.output.name
    if name and (base / name / runs.CONFIG_FILE).is_file():
        path = base / name
        if search_identity((path / runs.CONFIG_FILE).read_text()) != identity:
            raise ConfigError(
                f"{path}: this search directory was written by a different search (another config or search space). "
                "Fix: choose another output.name, or leave it unset for a new timestamped search"
            )
        if (path / FINISHED_FILE).is_file() or restart:
            done = "has finished" if (path / FINISHED_FILE).is_file() else "exists"
            raise ConfigError(f"{path}: this search {done}, and a new search needs a directory of its own. Fix: choose another output.name")
        if runs.is_locked(path):
            raise ConfigError(f"{path}: another process is running this search now")
        runs.lock_run_dir(path)
        return path, True
    if not restart and base.is_dir() and not name:
        candidates = sorted((p for p in base.iterdir() if (p / runs.CONFIG_FILE).is_file() and (p / "oracle.json").is_file()), key=lambda p: p.stat().st_mtime, reverse=True)
        for path in candidates:
            if not (path / FINISHED_FILE).is_file() and not runs.is_locked(path) and search_identity((path / runs.CONFIG_FILE).read_text()) == identity:
                runs.lock_run_dir(path)
                return path, True
    path = runs.create_run_dir(base, name, f"tune-{config.model.name}")
    runs.lock_run_dir(path)
    return path, False


def _progress_line(tuner: SearchTuner, trial: kt.engine.trial.Trial, total: int, space: kt.HyperParameters) -> str:
    """`trial 03/10  12.3 s  val_accuracy=0.8123  best 0.8450 (trial 01)  filters_1=64 kernel_size_1=5 ...`"""
    objective = tuner.oracle.objective.name
    result_path = tuner.trial_dir(trial.trial_id) / RESULT_FILE
    seconds = json.loads(result_path.read_text()).get("seconds", 0.0) if result_path.is_file() else 0.0
    defaults = {hp.name: hp.default for hp in space.space}
    changed = {k: v for k, v in trial.hyperparameters.values.items() if k not in HYPERBAND_KEYS and trial.hyperparameters.is_active(k) and v != defaults.get(k)}
    shown = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in changed.items()) or "(defaults)"
    if "tuner/epochs" in trial.hyperparameters.values:
        shown = f"epochs {trial.hyperparameters.values['tuner/initial_epoch']}-{trial.hyperparameters.values['tuner/epochs']}  " + shown
    score = f"{objective}={trial.score:.4f}" if trial.status == "COMPLETED" and trial.score is not None else f"{trial.status.lower()}: {(trial.message or '').strip().splitlines()[-1][:120] if trial.message else ''}"
    best = results.best_trial(tuner.oracle)
    best_text = f"best {best.score:.4f} (trial {best.trial_id})" if best is not None else "no best yet"
    number = len(tuner.oracle.end_order)
    return f"[{number}/{total}] trial {trial.trial_id}  {seconds:6.1f} s  {score}  {best_text}  {shown}"


def search(config: Config, restart: bool = False, progress: Callable[[str], None] = print) -> SearchResult:
    """Run (or resume) the search `config.tune` describes; returns where its results are and the best score."""
    started = time.perf_counter()
    space = parse_space(config)  # every mistake in tune: one line, before any image is read
    check_space(config, space)
    seed = config.tune.seed if config.tune.seed is not None else config.seed
    prepared: dict[int, PreparedData] = {}

    def data_for(trial_config: Config) -> PreparedData:
        """Prepared once per image size (the only data setting a search changes), then shared by every trial."""
        size = trial_config.data.image_size
        if size not in prepared:
            prepared[size] = prepare_data(trial_config)
        return prepared[size]

    data = data_for(config)
    config_text = dump_config(config)
    search_dir, resumed = open_search_dir(config, config_text, restart)
    try:
        if not resumed:
            write_text(search_dir / runs.CONFIG_FILE, config_text)
        else:
            progress(f"resuming the search in {search_dir}")
            write_text(search_dir / runs.CONFIG_FILE, config_text)  # a changed budget is recorded
        hypermodel = make_hypermodel(config, space, data.num_classes, data.multilabel, len(data.train))
        oracle = make_oracle(config.tune, seed, config.train.epochs)
        hparams: results.HParamsLog | None = None

        def trial_done(tuner: SearchTuner, trial: kt.engine.trial.Trial) -> None:
            results.write_trials(tuner.oracle, hypermodel, search_dir)
            _log_hparams(hparams, tuner, trial)
            progress(_progress_line(tuner, trial, config.tune.max_trials, tuner.oracle.get_space()))

        tuner = SearchTuner(
            oracle, hypermodel, search_dir, data_for, on_trial_done=trial_done, max_seconds=config.tune.max_minutes * 60 if config.tune.max_minutes else None
        )
        names = results.searched_names(tuner.oracle)
        hparams = results.HParamsLog(search_dir / results.TENSORBOARD_DIR, names, [config.tune.objective])
        done = sum(1 for t in tuner.oracle.trials.values() if t.status in ("COMPLETED", "FAILED"))
        progress(f"search directory: {search_dir} ({config.tune.tuner}, {config.tune.objective}, {done} of {config.tune.max_trials} trials done, searching {', '.join(names) or 'nothing'})")
        try:
            tuner.search()
        except RuntimeError as exc:  # KerasTuner's "Number of consecutive failures exceeded the limit"
            if "consecutive failures" not in str(exc):
                raise
            results.write_trials(tuner.oracle, hypermodel, search_dir)
            last = [line for line in str(exc).strip().splitlines() if line.strip()][-1]
            raise SearchError(f"{config.tune.tuner} search stopped: 3 trials in a row failed, the last with: {last}. See {search_dir / results.TRIALS_FILE}") from None
        table = results.write_trials(tuner.oracle, hypermodel, search_dir)
        facts = {
            "tuner": config.tune.tuner,
            "seed": seed,
            "train_images": len(data.train),
            "val_images": len(data.val),
            "image_size": config.data.image_size,
            "seconds": tuner.elapsed(),
        }
        results.write_summary(tuner.oracle, table, search_dir, facts)
        results.plot_scores(table, config.tune.objective, search_dir / results.SCORES_PLOT)
        results.plot_hyperparameters(table, config.tune.objective, names, search_dir / results.HYPERPARAMETERS_PLOT)
        best = results.best_trial(tuner.oracle)
        rejected = len(getattr(tuner.oracle, "rejected", []))
        write_json(
            search_dir / FINISHED_FILE,
            {
                "objective": config.tune.objective,
                "best_score": best.score if best else None,
                "best_trial": best.trial_id if best else None,
                "trials": len(table),
                "rejected_proposals": rejected,
                "seconds": round(tuner.elapsed(), 1),
                "this_process_seconds": round(time.perf_counter() - started, 1),
            },
        )
    finally:
        runs.release_run_dir(search_dir)
    best_path = search_dir / results.BEST_FILE
    return SearchResult(search_dir, config.tune.objective, best.score if best else None, best_path if best else None, table, rejected, resumed, prepared)


def _log_hparams(hparams: results.HParamsLog | None, tuner: SearchTuner, trial: kt.engine.trial.Trial) -> None:
    result_path = tuner.trial_dir(trial.trial_id) / RESULT_FILE
    if hparams is None or not result_path.is_file():
        return
    result = json.loads(result_path.read_text())
    hparams.trial(trial.trial_id, result["hyperparameters"], result["history"], result["metrics"])


def load_best_config(result: SearchResult) -> Config:
    """The best trial's config (best.yaml), as `imgclf train -c best.yaml` reads it."""
    if result.best_config is None:
        raise ConfigError(f"{result.search_dir}: no trial completed, so there is no best configuration to train")
    return load_config(result.best_config)


@dataclass
class TrainedBest:
    run_dir: Path
    metrics: dict[str, Any]
    submission: Path | None


def train_best(result: SearchResult) -> TrainedBest:
    """Train the best configuration as a normal run (`imgclf train -c best.yaml`), and write its submission.csv
    when data.test is set."""
    from app.inference.submission import submit
    from app.runs import load_run
    from app.training import train

    best = load_best_config(result)
    trained = train(best, data=result.prepared.get(best.data.image_size))  # the images the search decoded
    submission = None
    run = load_run(trained.run_dir)
    if run.config.data.test:
        submission = trained.run_dir / "submission.csv"
        submit(run, submission, verbose=0)
    return TrainedBest(trained.run_dir, trained.metrics, submission)
