"""k-fold cross-validation: folds from the config, one run per fold, out-of-fold scores, resume, ensembles of folds."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import app.training.crossval as crossval
from app.cli import main
from app.config import Config, ConfigError, load_config
from app.data import load_train_val
from app.inference.evaluation import classification_metrics
from app.training.crossval import cross_validate
from pipelines.errors import DataError


def with_folds(config: Config, folds: int | None, fold: int | None) -> Config:
    return dataclasses.replace(config, data=dataclasses.replace(config.data, folds=folds, fold=fold))


def test_folds_cover_every_image_once_and_keep_class_ratios(tiny_config: Config) -> None:
    everything = load_train_val(dataclasses.replace(tiny_config.data, val_fraction=0.5), tiny_config.seed)
    all_ids = set(everything[0].ids) | set(everything[1].ids)
    seen: list[str] = []
    for fold in range(1, 5):
        train, val = load_train_val(with_folds(tiny_config, 4, fold).data, tiny_config.seed)
        assert not set(train.ids) & set(val.ids)
        assert set(train.ids) | set(val.ids) == all_ids
        assert np.bincount(val.labels, minlength=3).tolist() == [2, 2, 2]  # 8 images per class, 4 folds
        seen += val.ids
    assert sorted(seen) == sorted(all_ids)


def test_fold_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="data.fold"):
        load_config(overrides=["data.folds=3", "data.fold=4"])
    with pytest.raises(ConfigError, match="data.fold"):
        load_config(overrides=["data.fold=1"])
    with pytest.raises(ConfigError, match="data.val and data.folds"):
        load_config(overrides=["data.folds=3", "data.val=somewhere"])
    with pytest.raises(ConfigError, match="data.folds"):
        load_config(overrides=["data.folds=1"])


def test_folds_without_a_fold_is_one_clear_error(tiny_config: Config) -> None:
    with pytest.raises(DataError, match="set data.fold"):
        load_train_val(with_folds(tiny_config, 3, None).data, tiny_config.seed)


@pytest.fixture
def cv_config(csv_dataset: Path, tmp_path: Path) -> Config:
    return load_config(
        overrides=[
            f"data.train={csv_dataset / 'train.csv'}",
            f"data.test={csv_dataset / 'sample_submission.csv'}",
            "data.image_size=16",
            "data.batch_size=8",
            "model.blocks=[[4, 3, 1]]",
            "train.epochs=1",
            "train.verbose=0",
            "output.tensorboard=false",
            f"output.dir={tmp_path / 'runs'}",
        ]
    )


def test_cross_validation_writes_folds_oof_and_scores(cv_config: Config) -> None:
    result = cross_validate(cv_config, folds=3)
    assert [p.name for p in sorted(result.cv_dir.glob("fold_*"))] == ["fold_1", "fold_2", "fold_3"]
    assert load_config(result.cv_dir / "fold_2" / "config.yaml").data.fold == 2
    oof = pd.read_csv(result.cv_dir / "oof.csv", dtype={"id": str})
    assert len(oof) == 24 and oof["id"].is_unique and sorted(oof["fold"].unique()) == [1, 2, 3]
    names = ["cat", "dog", "fox"]
    labels = np.array([names.index(n) for n in oof["label"]])
    expected = classification_metrics(labels, oof[names].to_numpy(), multilabel=False)
    saved = json.loads((result.cv_dir / "cv.json").read_text())
    for metric in ("accuracy", "log_loss", "macro_f1"):
        assert saved["oof"][metric] == pytest.approx(expected[metric], abs=1e-9)
        assert saved["mean"][metric] == pytest.approx(np.mean([f[metric] for f in saved["per_fold"]]))
    # a fold's own validation file is its part of the OOF predictions
    fold2 = pd.read_csv(result.cv_dir / "fold_2" / "val_predictions.csv", dtype={"id": str}).set_index("id")
    part = oof[oof["fold"] == 2].set_index("id")
    np.testing.assert_allclose(part[names].to_numpy(), fold2.loc[part.index, names].to_numpy())


def test_a_killed_cross_validation_resumes_at_the_unfinished_fold(cv_config: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    real_train = crossval.train
    trained: list[int] = []

    def train_then_die(config: Config, *args, **kwargs):
        if config.data.fold == 2:
            raise KeyboardInterrupt  # killed during fold 2
        trained.append(config.data.fold)
        return real_train(config, *args, **kwargs)

    monkeypatch.setattr(crossval, "train", train_then_die)
    with pytest.raises(KeyboardInterrupt):
        cross_validate(cv_config, folds=3)
    assert trained == [1]

    def count(config: Config, *args, **kwargs):
        trained.append(config.data.fold)
        return real_train(config, *args, **kwargs)

    monkeypatch.setattr(crossval, "train", count)
    result = cross_validate(cv_config, folds=3)
    assert trained == [1, 2, 3] and result.resumed
    assert len(list(result.cv_dir.parent.iterdir())) == 1  # the same CV directory, not a second one
    fresh = cross_validate(cv_config, folds=3, restart=False)  # finished: a new cross-validation
    assert fresh.cv_dir != result.cv_dir and not fresh.resumed


def test_cli_cv_then_an_ensemble_submission_with_tta(cv_config: Config, csv_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config_file = tmp_path / "cv.yaml"
    from app.config import dump_config

    config_file.write_text(dump_config(cv_config))
    assert main(["cv", "-c", str(config_file), "--folds", "2", "--metric", "log_loss"]) == 0
    out = capsys.readouterr().out
    assert "out-of-fold" in out and "fold 2: log_loss" in out
    cv_dir = Path(out.split("cross-validation directory: ")[1].splitlines()[0])
    submission = tmp_path / "submission.csv"
    assert main(["predict", str(cv_dir), "--tta", "flip", "--output", str(submission)]) == 0
    out = capsys.readouterr().out
    assert "the mean of 2 models" in out and "without TTA" in out and "with flip" in out
    frame = pd.read_csv(submission, dtype={"id": str})
    template = pd.read_csv(csv_dataset / "sample_submission.csv", dtype={"id": str})
    assert list(frame.columns) == list(template.columns) and list(frame["id"]) == list(template["id"])
    np.testing.assert_allclose(frame[["cat", "dog", "fox"]].sum(axis=1), 1.0, atol=1e-5)
    # evaluate re-derives a fold's own validation split from its config
    assert main(["evaluate", str(cv_dir / "fold_1")]) == 0
    assert json.loads((cv_dir / "fold_1" / "evaluation-val" / "metrics.json").read_text())["num_images"] == 12
    assert main(["evaluate", str(cv_dir)]) == 2  # several models need a --data set none trained on
    assert "pass --data" in capsys.readouterr().err
    assert main(["evaluate", str(cv_dir), "--data", str(csv_dataset / "train.csv"), "--tta", "flip"]) == 0  # the fold ensemble, with TTA
    saved = json.loads((cv_dir / "evaluation-train" / "metrics.json").read_text())
    assert saved["num_images"] == 24 and saved["tta"] == "flip"


def test_bad_cv_input_is_one_line_before_any_directory(cv_config: Config, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["cv", "--metric", "auc"]) == 2
    assert "--metric auc: not a score" in capsys.readouterr().err
    assert main(["cv", "--set", f"output.dir={tmp_path / 'runs'}"]) == 2  # no data.train
    assert "no training data configured" in capsys.readouterr().err
    assert main(["cv", "--set", f"data.train={tmp_path}", "--set", "data.val=elsewhere"]) == 2
    assert "cross-validation makes its own validation folds" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_an_unfinished_cross_validation_cannot_predict(
    cv_config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    real_train = crossval.train

    def stop_at_fold_2(config: Config, *args, **kwargs):
        if config.data.fold == 2:
            raise KeyboardInterrupt
        return real_train(config, *args, **kwargs)

    monkeypatch.setattr(crossval, "train", stop_at_fold_2)
    with pytest.raises(KeyboardInterrupt):
        cross_validate(cv_config, folds=2)
    cv_dir = next((tmp_path / "runs").iterdir())
    assert main(["predict", str(cv_dir), "--output", str(tmp_path / "s.csv")]) == 2
    assert "not finished (1 fold(s) trained" in capsys.readouterr().err


@pytest.mark.slow
def test_multilabel_one_hot_csv_from_real_photos_through_cv_and_a_tta_submission(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Plant Pathology 2020 style (image_id + one 0/1 column per label, some rows with two), made from real photos."""
    from tests.conftest import require_shared

    flowers = require_shared("flowers")
    flags = {"daisy": (1, 0), "dandelion": (1, 1), "sunflower": (0, 1), "tulip": (0, 0)}  # (yellow, tall): dandelions are both
    rows, test_ids = [], []
    for name, (yellow, tall) in flags.items():
        for k, photo in enumerate(sorted((flowers / name).iterdir())[:20]):
            image_id = f"{name}_{k}"
            folder = "test" if k >= 16 else "train"
            (tmp_path / folder).mkdir(exist_ok=True)
            shutil.copyfile(photo, tmp_path / folder / f"{image_id}.jpg")  # a copy: image paths may not lead outside the folder
            (test_ids if folder == "test" else rows).append(image_id if folder == "test" else (image_id, yellow, tall))
    pd.DataFrame(rows, columns=["image_id", "yellow", "tall"]).to_csv(tmp_path / "train.csv", index=False)
    pd.DataFrame({"image_id": test_ids, "yellow": 0.5, "tall": 0.5}).to_csv(tmp_path / "sample_submission.csv", index=False)
    config = tmp_path / "multi.yaml"
    config.write_text(
        f"data: {{train: {tmp_path / 'train.csv'}, test: {tmp_path / 'sample_submission.csv'}, "
        f"id_column: image_id, label_columns: [yellow, tall], image_size: 32, batch_size: 16}}\n"
        f"model: {{blocks: [[8, 3, 1], [16, 3, 1]]}}\ntrain: {{epochs: 2, verbose: 0}}\noutput: {{dir: {tmp_path / 'runs'}, tensorboard: false}}\n"
    )
    assert main(["cv", "-c", str(config), "--folds", "2"]) == 0
    out = capsys.readouterr().out
    assert "mean_column_auc" in out
    cv_dir = Path(out.split("cross-validation directory: ")[1].splitlines()[0])
    summary = json.loads((cv_dir / "cv.json").read_text())
    assert 0 <= summary["oof"]["mean_column_auc"] <= 1 and summary["oof"]["num_images"] == 64
    oof = pd.read_csv(cv_dir / "oof.csv")
    assert (oof["label"].fillna("").str.split().str.len() == 2).sum() == 16  # the dandelions carry both labels
    submission = tmp_path / "submission.csv"
    assert main(["predict", str(cv_dir), "--tta", "flip", "--output", str(submission)]) == 0
    frame = pd.read_csv(submission)
    assert list(frame.columns) == ["image_id", "yellow", "tall"] and list(frame["image_id"]) == test_ids
    assert ((frame[["yellow", "tall"]] >= 0) & (frame[["yellow", "tall"]] <= 1)).all().all()
