"""The search's final run: the best trial's config (best.yaml) trained as a normal run, with its submission."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.config import Config, ConfigError, load_config
from tuning.search import SearchResult


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
