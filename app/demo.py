"""The built-in demo: digits exported Kaggle-style -> train -> hold-out evaluation -> submission.csv."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from app.atomic import write_json
from app.config import SHIPPED_CONFIGS, Config, from_dict, load_config
from app.data import load_labeled
from app.inference.evaluation import evaluate_images
from app.inference.submission import submit
from app.runs import load_run
from app.training.run import train
from pipelines.datasets.digits import export_digits

DEMO_AUGMENT = SHIPPED_CONFIGS / "augment" / "digits.yaml"


def demo_config(dataset_dir: Path, overrides: list[str] | None = None) -> Config:
    """The demo's settings: a small CNN on 32x32 digits, trained for up to 30 epochs."""
    base = {
        "data": {
            "train": str(dataset_dir / "train.csv"),
            "train_images": str(dataset_dir / "train"),
            "test": str(dataset_dir / "sample_submission.csv"),
            "test_images": str(dataset_dir / "test"),
            "val_fraction": 0.15,
            "image_size": 32,
            "batch_size": 32,
            "cache": True,
        },
        "augment": {"train": str(DEMO_AUGMENT), "eval": "none"},
        "model": {"dropout": 0.3},  # the default blocks (app.config.DEFAULT_BLOCKS)
        "train": {"epochs": 30, "learning_rate": 0.002, "early_stopping_patience": 8},
        "output": {"dir": "runs", "name": None},
    }
    return load_config(overrides=list(overrides or []), base=from_dict(Config, base))  # --set values checked as train's


@dataclass
class DemoResult:
    run_dir: Path
    holdout: dict[str, float]
    submission: Path


def run_demo(cache_dir: str | Path | None = None, overrides: list[str] | None = None) -> DemoResult:
    """Export the digits (once), train, score the hold-out test labels, and write the run's submission.csv."""
    dataset_dir = export_digits(cache_dir)
    config = demo_config(dataset_dir, overrides)
    result = train(config)
    run = load_run(result.run_dir)
    holdout_set = load_labeled(str(dataset_dir / "test_labels.csv"), str(dataset_dir / "test"), config.data, class_names=run.class_names)
    holdout, _ = evaluate_images(run, holdout_set)
    write_json(result.run_dir / "holdout_metrics.json", holdout)

    submission = result.run_dir / "submission.csv"
    submit(run, submission, verbose=0)  # the sample submission in config.data.test
    return DemoResult(result.run_dir, holdout, submission)
