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
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import keras_tuner as kt
import pandas as pd
import yaml

from app import runs
from app.atomic import write_json, write_text
from app.config import Config, ConfigError, ConvBlock, dump_config, load_config
from app.data import PreparedData, load_train_val, prepare_data
from app.models.backbones import get_spec
from app.models.geometry import baseline_geometry, shape_problem
from tuning import distributed, results
from tuning.hypermodels import HYPERBAND_KEYS, make_hypermodel
from tuning.oracles import make_oracle
from tuning.space import SearchSpace, parse_space
from tuning.tuner import RESULT_FILE, SearchTuner

log = logging.getLogger(__name__)

WORKER_LOGS = "workers"  # the search directory's folder of worker logs (distributed search)
FINISHED_FILE = "search.json"  # written last: a search directory without it was interrupted
# Keys a resumed search may change: the budget (to extend a search), how long workers are waited for, and how much it prints.
RESUMABLE_CHANGES = (("tune", "max_trials"), ("tune", "max_minutes"), ("tune", "worker_timeout"), ("tune", "connect_timeout"), ("train", "verbose"))


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
        names = space["backbone"].candidates() if space["backbone"] else [config.model.name]
        smallest = min(get_spec(name).min_size for name in names)
        if max(sizes) < smallest:
            raise ConfigError(
                f"config key tune.space.image_size: {', '.join(names)} need{'s' if len(names) == 1 else ''} {smallest} pixels at least, "
                f"and the largest choice is {max(sizes)}"
            )
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


def _progress_line(tuner: SearchTuner, trial: kt.engine.trial.Trial, total: int, space: kt.HyperParameters, worker: str | None = None) -> str:
    """`[3/10] trial 03  12.3 s  val_accuracy=0.8123  best 0.8450 (trial 01)  filters_1=64 kernel_size_1=5 ...`"""
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
    where = f" on {worker}" if worker else ""
    return f"[{number}/{total}] trial {trial.trial_id}{where}  {seconds:6.1f} s  {score}  {best_text}  {shown}"


@dataclass
class _Search:
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


def _open_search(
    config: Config, space: SearchSpace, restart: bool, counts: tuple[int, bool, int], data_for: Callable[[Config], PreparedData], progress: Callable[[str], None]
) -> _Search:
    """Open (or resume) the search directory and set up the HyperModel, the oracle and the tuner with its per-trial
    reporting (trials.csv, TensorBoard HParams, one progress line). `counts`: classes, multi-label, training images."""
    seed = config.tune.seed if config.tune.seed is not None else config.seed
    config_text = dump_config(config)
    search_dir, resumed = open_search_dir(config, config_text, restart)
    try:
        if resumed:
            progress(f"resuming the search in {search_dir}")
        write_text(search_dir / runs.CONFIG_FILE, config_text)  # a changed budget is recorded
        hypermodel = make_hypermodel(config, space, *counts)
        oracle = make_oracle(config.tune, seed, config.train.epochs)
        tuner = SearchTuner(oracle, hypermodel, search_dir, data_for, max_seconds=config.tune.max_minutes * 60 if config.tune.max_minutes else None)
        names = results.searched_names(tuner.oracle)
        hparams = results.HParamsLog(search_dir / results.TENSORBOARD_DIR, names, [config.tune.objective])
    except BaseException:
        runs.release_run_dir(search_dir)
        raise
    opened = _Search(config, space, seed, search_dir, resumed, hypermodel, tuner, names, hparams)

    def trial_done(tuner: SearchTuner, trial: kt.engine.trial.Trial, worker: str | None = None) -> None:
        results.write_trials(tuner.oracle, hypermodel, search_dir)
        _log_hparams(hparams, tuner, trial)
        progress(_progress_line(tuner, trial, config.tune.max_trials, tuner.oracle.get_space(), worker))

    tuner.on_trial_done = trial_done
    return opened


def _consecutive_failures(opened: _Search, message: str) -> SearchError:
    results.write_trials(opened.tuner.oracle, opened.hypermodel, opened.search_dir)
    return SearchError(f"{opened.config.tune.tuner} search stopped: 3 trials in a row failed, the last with: {message}. See {opened.search_dir / results.TRIALS_FILE}")


def _finish(opened: _Search, facts: dict[str, Any], started: float) -> tuple[pd.DataFrame, kt.engine.trial.Trial | None, int]:
    """Write the results of a search that ended: trials.csv, summary.md, plots, and search.json (written last)."""
    tuner, config, search_dir = opened.tuner, opened.config, opened.search_dir
    table = results.write_trials(tuner.oracle, opened.hypermodel, search_dir)
    facts = {"tuner": config.tune.tuner, "seed": opened.seed, **facts, "image_size": config.data.image_size, "seconds": tuner.elapsed()}
    results.write_summary(tuner.oracle, table, search_dir, facts)
    results.plot_scores(table, config.tune.objective, search_dir / results.SCORES_PLOT)
    results.plot_hyperparameters(table, config.tune.objective, opened.names, search_dir / results.HYPERPARAMETERS_PLOT)
    best = results.best_trial(tuner.oracle)
    rejected = len(getattr(tuner.oracle, "rejected", []))
    extra = {k: facts[k] for k in ("workers", "oracle_requests", "chief_cpu_seconds", "ignored_reports") if k in facts}
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
            **extra,
        },
    )
    return table, best, rejected


def _data_cache() -> tuple[dict[int, PreparedData], Callable[[Config], PreparedData]]:
    prepared: dict[int, PreparedData] = {}

    def data_for(trial_config: Config) -> PreparedData:
        """Prepared once per image size (the only data setting a search changes), then shared by every trial."""
        size = trial_config.data.image_size
        if size not in prepared:
            prepared[size] = prepare_data(trial_config)
        return prepared[size]

    return prepared, data_for


def search(config: Config, restart: bool = False, progress: Callable[[str], None] = print, workers: int = 0, oracle: str | None = None) -> SearchResult:
    """Run (or resume) the search `config.tune` describes; returns where its results are and the best score.

    In this process by default. With `workers`, trials run in that many worker processes on this machine, each on
    its share of the cores, and this process is the chief (KerasTuner's distributed mode, tuning/distributed.py).
    With `oracle` ("HOST:PORT"), this process is the chief at that address, which workers on other machines join
    (`work`), besides its own `workers` if any."""
    started = time.perf_counter()
    space = parse_space(config)  # every mistake in tune: one line, before any image is read
    check_space(config, space)
    prepared, data_for = _data_cache()
    if workers or oracle:
        if workers < 0:
            raise ConfigError(f"--workers {workers}: give a number of worker processes, 1 or more")
        host, port = distributed.parse_address(oracle) if oracle else ("127.0.0.1", 0)
        distributed.check_port(host, port)
        train_set, val_set = load_train_val(config.data, config.seed)  # the chief lists the images; the workers decode them
        opened = _open_search(config, space, restart, (train_set.num_classes, train_set.multilabel, len(train_set)), _chief_has_no_data, progress)
        facts = _serve(opened, host, port, workers, accept_remote=oracle is not None, progress=progress)
        facts.update(train_images=len(train_set), val_images=len(val_set))
    else:
        data = data_for(config)
        opened = _open_search(config, space, restart, (data.num_classes, data.multilabel, len(data.train)), data_for, progress)
        facts = {"train_images": len(data.train), "val_images": len(data.val)}
        try:
            _announce(opened, progress)
            try:
                opened.tuner.search()
            except RuntimeError as exc:  # KerasTuner's "Number of consecutive failures exceeded the limit"
                if "consecutive failures" not in str(exc):
                    raise
                raise _consecutive_failures(opened, [line for line in str(exc).strip().splitlines() if line.strip()][-1]) from None
        except BaseException:
            runs.release_run_dir(opened.search_dir)
            raise
    try:
        table, best, rejected = _finish(opened, facts, started)
    finally:
        runs.release_run_dir(opened.search_dir)
    best_path = opened.search_dir / results.BEST_FILE
    return SearchResult(opened.search_dir, config.tune.objective, best.score if best else None, best_path if best else None, table, rejected, opened.resumed, prepared)


def _announce(opened: _Search, progress: Callable[[str], None], where: str = "") -> None:
    done = sum(1 for t in opened.tuner.oracle.trials.values() if t.status in ("COMPLETED", "FAILED"))
    tune = opened.config.tune
    progress(f"search directory: {opened.search_dir} ({tune.tuner}, {tune.objective}, {done} of {tune.max_trials} trials done, searching {', '.join(opened.names) or 'nothing'}){where}")


def _chief_has_no_data(config: Config) -> PreparedData:
    raise AssertionError("the chief of a distributed search trains nothing")


def _serve(opened: _Search, host: str, port: int, workers: int, accept_remote: bool, progress: Callable[[str], None]) -> dict[str, Any]:
    """Be the chief: serve the oracle, start `workers` local worker processes, and follow the search to its end."""
    tuner = opened.tuner

    def begun(worker: str, trial: kt.engine.trial.Trial) -> None:
        progress(f"trial {trial.trial_id} started on {worker}")

    def ended(worker: str, trial: kt.engine.trial.Trial) -> None:
        tuner.save()  # the chief's clock (tune.max_minutes over resumes)
        if trial.status == "INVALID":  # released or failed once: the oracle runs it again
            reason = ((trial.message or "").strip().splitlines() or ["no reason given"])[-1][:160]
            progress(f"trial {trial.trial_id} on {worker} did not finish ({reason}); it will run again")
        else:
            tuner.on_trial_done(tuner, trial, worker)

    servicer = distributed.ChiefServicer(tuner.oracle, begun, ended)
    local: list[distributed.LocalWorker] = []
    try:
        tuner.save()
        server, port = distributed.start_server(servicer, host, port)
        address = f"{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
        _announce(opened, progress, f"; chief at {host}:{port}")
        try:
            local = distributed.start_local_workers(workers, address, opened.search_dir / runs.CONFIG_FILE, opened.search_dir, opened.search_dir / WORKER_LOGS)
            for worker in local:
                progress(f"{worker.tuner_id}: pid {worker.process.pid}, cores {','.join(map(str, worker.cores))}, log {worker.log}")
            chief_cpu = time.process_time()
            distributed.serve(servicer, local, accept_remote, opened.config.tune.worker_timeout, progress)
            chief_cpu = time.process_time() - chief_cpu
        finally:
            distributed.stop_local_workers(local)
            server.stop(grace=1.0)
    except BaseException:
        runs.release_run_dir(opened.search_dir)
        raise
    if servicer.failure:
        runs.release_run_dir(opened.search_dir)
        raise _consecutive_failures(opened, servicer.failure)
    return {"workers": workers, "oracle_requests": dict(servicer.requests), "chief_cpu_seconds": round(chief_cpu, 2), "ignored_reports": servicer.ignored_reports}


def find_running_search(config: Config) -> Path:
    """The search directory a worker joins: output.dir/output.name, else the newest unfinished search of this config."""
    base = Path(config.output.dir)
    identity = search_identity(dump_config(config))
    candidates = [base / config.output.name] if config.output.name else sorted((p for p in base.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True) if base.is_dir() else []
    for path in candidates:
        if (path / runs.CONFIG_FILE).is_file() and not (path / FINISHED_FILE).is_file() and search_identity((path / runs.CONFIG_FILE).read_text()) == identity:
            return path
    raise distributed.DistributedError(
        f"no unfinished search of this config under {base}/. Fix: start the chief first (imgclf tune -c FILE --role chief --oracle HOST:PORT) "
        "with the same config and --set values, and give every machine the same output.dir (a shared folder) and data paths"
    )


def work(
    config: Config,
    oracle: str,
    worker_id: str | None = None,
    search_dir: Path | None = None,
    exit_with_parent: bool = False,
    progress: Callable[[str], None] = print,
) -> int:
    """Be a worker of the search whose chief is at `oracle` ("HOST:PORT"): run the trials it hands out until it says
    stop. The data are prepared once, here, as in a search in one process. Returns the number of trials run."""
    host, port = distributed.parse_address(oracle)
    tuner_id = distributed.check_worker_id(worker_id) if worker_id else distributed.default_worker_id()
    space = parse_space(config)
    tune = config.tune
    channel = distributed.connect(oracle, tuner_id, distributed.CHIEF_WAIT_SECONDS, tune.connect_timeout)
    search_dir = Path(search_dir) if search_dir else find_running_search(config)
    distributed.set_worker_environment(tuner_id, host, port)
    _, data_for = _data_cache()
    data = data_for(config)
    hypermodel = make_hypermodel(config, space, data.num_classes, data.multilabel, len(data.train))
    local_oracle = make_oracle(tune, tune.seed if tune.seed is not None else config.seed, config.train.epochs)
    tuner = SearchTuner(local_oracle, hypermodel, search_dir, data_for)
    tuner.oracle = distributed.WorkerOracle(local_oracle, channel, tuner_id)
    ran = 0

    def count(tuner: SearchTuner, trial: kt.engine.trial.Trial) -> None:
        nonlocal ran
        ran += 1
        progress(f"{tuner_id}: trial {trial.trial_id} {trial.status.lower()}")

    tuner.on_trial_done = count
    heartbeat = distributed.Heartbeat(channel, min(10.0, tune.worker_timeout / 4), parent=os.getppid() if exit_with_parent else None)
    heartbeat.start()
    progress(f"{tuner_id}: pid {os.getpid()}, {len(data.train)} training images, joined the search at {oracle} in {search_dir}")
    try:
        tuner.search()
    except grpc.RpcError as exc:
        raise distributed.DistributedError(
            f"{tuner_id} lost the search's chief at {oracle} ({exc.code().name}: {exc.details()}). "
            "Fix: start the chief again with the same command (the search resumes), then this worker"
        ) from None
    finally:
        heartbeat.stop()
    progress(f"{tuner_id}: the search is over ({ran} trials run here)")
    return ran


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
    from app.training.run import train

    best = load_best_config(result)
    trained = train(best, data=result.prepared.get(best.data.image_size))  # the images the search decoded
    submission = None
    run = load_run(trained.run_dir)
    if run.config.data.test:
        submission = trained.run_dir / "submission.csv"
        submit(run, submission, verbose=0)
    return TrainedBest(trained.run_dir, trained.metrics, submission)
