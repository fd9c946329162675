"""`search(config) -> SearchResult`: one architecture / hyperparameter search, resumable, with its results.

The data are read, split and decoded (data.cache) once per search and handed to every trial; trials run through
the same fit path as `imgclf train`. A search directory `<output.dir>/<timestamp>-tune-<model>/` holds the config
(config.yaml), KerasTuner's state (oracle.json, trial_*/), and the results (results.py). Started again with the same
config after any interruption (SIGKILL included), a search continues its newest unfinished directory: finished trials
are kept, the interrupted one is run again. `restart=True` starts a new directory instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from app.config import Config, ConfigError, ConvBlock, dump_config
from app.data import PreparedData, load_train_val
from app.models.backbones import get_spec
from app.models.geometry import baseline_geometry, shape_problem
from app.training.pace import measure_epoch_seconds
from tuning import results
from tuning.compat import consecutive_failures
from tuning.directory import open_search_dir
from tuning.distributed.chief import check_port, serve_search
from tuning.distributed.protocol import parse_address
from tuning.session import SearchError, announce, chief_has_no_data, consecutive_failures_error, data_cache, finish_session, open_session
from tuning.space import SearchSpace, parse_space, rung_image_size

__all__ = ["SearchError", "SearchResult", "check_space", "search"]


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
    size = rung_image_size(config, 0)  # asha's first rung may be smaller
    problem = shape_problem(baseline_geometry(blocks, size), config.tune.min_feature_size)
    if problem:
        raise ConfigError(
            f"tune.space: no network in this space is worth training at {size} px: even the least shrinking one "
            f"({count} blocks, strides {blocks[0].strides}, kernel {blocks[0].kernel_size}, pool {blocks[0].pool}) fails: {problem}. "
            "Fix: fewer blocks or stride 1 among the choices, a larger data.image_size, or a smaller tune.min_feature_size"
        )


def search(config: Config, restart: bool = False, progress: Callable[[str], None] = print, workers: int = 0, oracle: str | None = None) -> SearchResult:
    """Run (or resume) the search `config.tune` describes; returns where its results are and the best score.

    In this process by default. With `workers`, trials run in that many worker processes on this machine, each on
    its share of the cores, and this process is the chief (KerasTuner's distributed mode, tuning/distributed/).
    With `oracle` ("HOST:PORT"), this process is the chief at that address, which workers on other machines join
    (tuning.distributed.worker.work), besides its own `workers` if any."""
    started = time.perf_counter()
    space = parse_space(config)  # every mistake in tune: one line, before any image is read
    check_space(config, space)
    prepared, data_for = data_cache()
    if workers or oracle:
        if workers < 0:
            raise ConfigError(f"--workers {workers}: give a number of worker processes, 1 or more")
        host, port = parse_address(oracle) if oracle else ("127.0.0.1", 0)
        check_port(host, port)
        train_set, val_set = load_train_val(config.data, config.seed)  # the chief lists the images; the workers decode them
        counts, facts = (train_set.num_classes, train_set.multilabel, len(train_set)), {"train_images": len(train_set), "val_images": len(val_set)}
    else:
        data = data_for(config)
        counts, facts = (data.num_classes, data.multilabel, len(data.train)), {"train_images": len(data.train), "val_images": len(data.val)}
    with open_search_dir(config, dump_config(config), restart) as job:
        if workers or oracle:
            opened = open_session(config, space, job, counts, chief_has_no_data, progress)
            facts.update(serve_search(opened, host, port, workers, accept_remote=oracle is not None, progress=progress))
        else:
            opened = open_session(config, space, job, counts, data_for, progress)
            announce(opened, progress)
            try:
                opened.tuner.search()
            except RuntimeError as exc:
                last_error = consecutive_failures(exc)
                if last_error is None:
                    raise
                raise consecutive_failures_error(opened, last_error) from None
        table, best, rejected = finish_session(opened, job, facts, started, _final_run_pace(config, data_for, progress))
    best_path = opened.search_dir / results.BEST_FILE
    return SearchResult(
        opened.search_dir, config.tune.objective, best.score if best else None, best_path if best else None, table, rejected, opened.resumed, prepared
    )


def _final_run_pace(config: Config, data_for: Callable[[Config], PreparedData], progress: Callable[[str], None]) -> results.EpochMeasure | None:
    """With tune.final_minutes: what times the best config's epochs in this process, where the final run trains, as
    it will train (tune.final's settings, full image size, all of this process's cores), just before best.yaml is
    written. The best trial's own pace, measured minutes before with the trials' settings (after `--workers`, on a
    worker's share of the cores), planned final runs well short or long of their minutes (benchmarks/README.md,
    "Search"). The images it decodes (a distributed search's chief has none yet) are the final run's."""
    if config.tune.final_minutes is None:
        return None

    def measure(best: Config) -> float | None:
        seconds = measure_epoch_seconds(best, data_for(best))
        timed = f"timed here: {seconds:.1f} s per epoch" if seconds is not None else "its trial's (this config is not timed here)"
        progress(f"the final run's pace: {timed}")
        return seconds

    return measure
