"""Slow end-to-end runs: the demo itself, and the real photo datasets in ../shared/data (skipped when absent)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from app.cli import main
from app.config import load_config
from app.demo import run_demo
from app.training.run import train
from tests.conftest import require_shared

pytestmark = pytest.mark.slow


def test_demo_reaches_98_percent_and_writes_a_valid_submission(tmp_path: Path) -> None:
    result = run_demo(tmp_path / "cache", [f"output.dir={tmp_path / 'runs'}", "train.verbose=0"])
    assert result.holdout["accuracy"] >= 0.98 and result.holdout["num_images"] == 360
    submission = pd.read_csv(result.submission, dtype=str)
    sample = pd.read_csv(tmp_path / "cache" / "digits-v1" / "sample_submission.csv", dtype=str)
    assert submission["id"].tolist() == sample["id"].tolist() and list(submission.columns) == ["id", "label"]
    truth = pd.read_csv(tmp_path / "cache" / "digits-v1" / "test_labels.csv", dtype=str)
    assert (submission["label"] == truth["label"]).mean() == pytest.approx(result.holdout["accuracy"])


def _overrides(tmp_path: Path, *extra: str) -> list[str]:
    return ["data.image_size=48", "data.batch_size=32", "model.blocks=[[16, 3, 1], [32, 3, 1]]", "train.epochs=2", "train.verbose=0", f"output.dir={tmp_path}", *extra]


def test_hymenoptera_folders_with_given_validation_set(tmp_path: Path) -> None:
    root = require_shared("hymenoptera")
    config = load_config(overrides=_overrides(tmp_path, f"data.train={root / 'train'}", f"data.val={root / 'val'}", "augment.train=medium"))
    result = train(config)
    assert result.metrics["train_images"] == 245 and result.metrics["val_images"] == 153
    assert result.metrics["val"]["accuracy"] > 0.4


def test_dog_breed_csv_to_probability_submission(tmp_path: Path) -> None:
    root = require_shared("dog-breed")
    config = load_config(
        overrides=_overrides(tmp_path, f"data.train={root / 'labels.csv'}", "data.label_column=breed", f"data.test={root / 'sample_submission.csv'}", "train.epochs=1")
    )
    result = train(config)
    assert json.loads((result.run_dir / "class_names.json").read_text())["class_names"][:2] == ["affenpinscher", "afghan_hound"]
    assert result.metrics["train_images"] + result.metrics["val_images"] == 1000
    assert main(["predict", str(result.run_dir)]) == 0
    submission = pd.read_csv(result.run_dir / "submission.csv")
    sample = pd.read_csv(root / "sample_submission.csv")
    assert list(submission.columns) == list(sample.columns) and submission["id"].tolist() == sample["id"].tolist()
    assert ((submission.iloc[:, 1:].sum(axis=1) - 1).abs() < 1e-3).all()


def test_flowers_with_cache(tmp_path: Path) -> None:
    root = require_shared("flowers")
    result = train(load_config(overrides=_overrides(tmp_path, f"data.train={root}", "data.cache=true", "data.image_size=32", "train.epochs=8")))
    assert result.metrics["train_images"] + result.metrics["val_images"] == 4317
    assert result.metrics["val"]["accuracy"] > 0.45  # 5 classes: well above the 0.24 of the largest class


def test_finetune_config_on_real_photos(tmp_path: Path) -> None:
    """configs/finetune.yaml as shipped, on hymenoptera, with a local weights file standing in for ImageNet's."""
    from app.models.backbones import make_backbone

    root = require_shared("hymenoptera")
    weights = tmp_path / "b0.weights.h5"
    make_backbone("efficientnetb0", (64, 64, 3), weights=None).save_weights(weights)
    overrides = [f"data.train={root / 'train'}", f"data.val={root / 'val'}", "data.image_size=64", f"model.weights={weights}"]
    overrides += ["train.epochs=2", "finetune.epochs=1", "train.verbose=0", f"output.dir={tmp_path / 'runs'}"]
    config = load_config(Path(__file__).resolve().parents[1] / "configs" / "finetune.yaml", overrides)
    result = train(config)
    assert result.metrics["stage_epochs"] == {"train": 2, "finetune": 1}
    assert pd.read_csv(result.run_dir / "per_class.csv")["class"].tolist() == ["ants", "bees"]
    assert main(["evaluate", str(result.run_dir), "--data", str(root / "val")]) == 0

