"""k-fold cross-validation: one normal training run per fold, then out-of-fold predictions and scores.

    cross_validate(config, folds=5) -> CVResult

The CV directory (`<output.dir>/<timestamp>-cv-<model>/`) holds config.yaml (resolved, with data.folds), fold_1/ ..
fold_K/ (each a run directory written by `train`, whose config has data.fold set, so `imgclf evaluate` re-derives
its fold), oof.csv (every training image once: its fold, label and out-of-fold probabilities) and cv.json (per-fold
scores, their mean and std, and the out-of-fold score), written last. Started again, the same command continues the
newest unfinished CV of the same config: finished folds are kept, an interrupted fold resumes mid-way.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from app import runs
from app.atomic import atomic_write
from app.config import Config, ConfigError, dump_config, load_config
from app.data import load_train_val
from app.inference.evaluation import classification_metrics
from app.inference.prediction import TTASpec, predict_images
from app.resumable import ResumableDir
from app.training.run import VAL_PREDICTIONS_FILE, train
from pipelines.sources import ImageSet

log = logging.getLogger(__name__)
DEFAULT_FOLDS = 5
OOF_FILE = "oof.csv"


@dataclass
class CVResult:
    cv_dir: Path
    folds: int
    per_fold: list[dict[str, Any]]  # each fold's validation scores (its metrics.json "val")
    mean: dict[str, float]
    std: dict[str, float]
    oof: dict[str, float]  # scores of the out-of-fold predictions, all folds together
    resumed: bool

    def metric(self, name: str | None = None) -> str:
        """`name`, checked, or the headline metric: accuracy, or mean column-wise ROC AUC for multi-label."""
        name = name or ("mean_column_auc" if "mean_column_auc" in self.oof else "accuracy")
        if name not in self.oof:
            raise ConfigError(f"metric {name!r} is not among the scores of this cross-validation: {', '.join(k for k in self.oof if k != 'num_images')}")
        return name


def fold_config(cv_config: Config, cv_dir: Path, fold: int) -> Config:
    """The config of fold `fold`: the CV's config with data.fold set, written to cv_dir/fold_<fold>/, resumable."""
    return dataclasses.replace(
        cv_config,
        data=dataclasses.replace(cv_config.data, fold=fold),
        output=dataclasses.replace(cv_config.output, dir=str(cv_dir), name=f"{runs.FOLD_PREFIX}{fold}"),
        train=dataclasses.replace(cv_config.train, resume=True),
    )


def cross_validate(config: Config, folds: int | None = None, restart: bool = False, progress: Callable[[str], None] | None = None) -> CVResult:
    """Train one run per fold of `folds` (default data.folds, else 5) seeded stratified folds, then score the
    out-of-fold predictions. A class with fewer images than folds makes the folds unstratified (with a warning)."""
    say = progress or log.info
    k = folds or config.data.folds or DEFAULT_FOLDS
    if config.data.val:
        raise ConfigError("data.val is set, but cross-validation makes its own validation folds. Fix: set data.val=null (the folds cover data.train)")
    cv_config = dataclasses.replace(config, data=dataclasses.replace(config.data, folds=k, fold=None))
    load_train_val(dataclasses.replace(cv_config.data, fold=1), cv_config.seed)  # bad data: one line, before any directory exists
    started = time.perf_counter()
    with open_cv_dir(cv_config, resume=not restart) as job:
        cv_dir, resumed = job.path, job.resumed
        say(f"{'resuming' if resumed else 'writing'} the cross-validation in {cv_dir} ({k} folds)")
        for fold in range(1, k + 1):
            fold_dir = cv_dir / f"{runs.FOLD_PREFIX}{fold}"
            if (fold_dir / runs.FINISHED_FILE).is_file():
                say(f"fold {fold}/{k}: already trained")
                continue
            if fold_dir.exists() and not (fold_dir / runs.BACKUP_DIR).is_dir():
                shutil.rmtree(fold_dir)  # stopped before its first checkpoint: nothing to resume
            result = train(fold_config(cv_config, cv_dir, fold))
            scores = ", ".join(f"{name}={value:.4f}" for name, value in result.metrics["val"].items() if isinstance(value, float))
            say(f"fold {fold}/{k}: {scores} ({result.metrics['seconds']:.0f} s)")
        oof_images, oof_folds, probs = _collect_oof(cv_config, cv_dir, k)
        per_fold = [json.loads((cv_dir / f"{runs.FOLD_PREFIX}{f}" / runs.FINISHED_FILE).read_text())["val"] for f in range(1, k + 1)]
        oof = classification_metrics(oof_images.labels, probs, oof_images.multilabel)
        names = [n for n, v in per_fold[0].items() if isinstance(v, float)]
        mean = {n: float(np.mean([f[n] for f in per_fold])) for n in names}
        std = {n: float(np.std([f[n] for f in per_fold])) for n in names}
        frame = oof_frame(oof_images, oof_folds, probs)
        atomic_write(cv_dir / OOF_FILE, lambda p: frame.to_csv(p, index=False, float_format="%.6f"))
        job.finish(
            {
                "folds": k,
                "seed": cv_config.seed,
                "per_fold": per_fold,
                "mean": mean,
                "std": std,
                "oof": oof,
                "seconds_this_session": round(time.perf_counter() - started, 1),
                "resumed": resumed,
            }
        )
    return CVResult(cv_dir, k, per_fold, mean, std, oof, resumed)


def open_cv_dir(cv_config: Config, resume: bool) -> ResumableDir:
    """The newest unfinished CV directory of the very same config (with `resume`), else a fresh one (a `with` block)."""
    return ResumableDir(
        cv_config.output.dir,
        "cv",
        dump_config(cv_config),
        finished_file=runs.CV_FILE,
        stem=f"cv-{cv_config.model.name}",
        name=cv_config.output.name,
        resume=resume,
    )


def fold_val_sets(cv_config: Config, folds: int) -> list[ImageSet]:
    """Each fold's validation images, re-derived from the config and seed (as its run saw them)."""
    return [load_train_val(dataclasses.replace(cv_config.data, folds=folds, fold=f), cv_config.seed)[1] for f in range(1, folds + 1)]


def _collect_oof(cv_config: Config, cv_dir: Path, k: int) -> tuple[ImageSet, np.ndarray, np.ndarray]:
    """(every image once, its fold, its out-of-fold probabilities) from the folds' val_predictions.csv; images a
    fold skipped as unreadable (data.skip_bad_images) are left out."""
    parts, fold_of, probs = [], [], []
    for fold, val in enumerate(fold_val_sets(cv_config, k), start=1):
        table = pd.read_csv(cv_dir / f"{runs.FOLD_PREFIX}{fold}" / VAL_PREDICTIONS_FILE, dtype={"id": str}, keep_default_na=False)
        row_of = {i: r for r, i in enumerate(table["id"])}
        keep = [i for i, image_id in enumerate(val.ids) if image_id in row_of]
        val = val.subset(keep)
        parts.append(val)
        fold_of += [fold] * len(val)
        probs.append(table[list(val.class_names)].to_numpy(dtype=np.float64)[[row_of[i] for i in val.ids]])
    first = parts[0]
    images = ImageSet(
        paths=sum((p.paths for p in parts), ()),
        ids=sum((p.ids for p in parts), ()),
        class_names=first.class_names,
        labels=np.concatenate([p.labels for p in parts]),
        multilabel=first.multilabel,
    )
    return images, np.asarray(fold_of), np.concatenate(probs)


def oof_frame(images: ImageSet, folds: Sequence[int], probs: np.ndarray) -> pd.DataFrame:
    """oof.csv: id, fold, label (class name; multi-label: names joined by spaces), one probability column per class."""
    names = images.class_names
    if images.multilabel:
        labels = [" ".join(names[c] for c in np.flatnonzero(row)) for row in images.labels]
    else:
        labels = [names[int(c)] for c in images.labels]
    frame = pd.DataFrame({"id": list(images.ids), "fold": list(folds), "label": labels})
    return pd.concat([frame, pd.DataFrame(probs, columns=list(names))], axis=1)


def oof_scores(cv_dir: str | Path, tta: TTASpec = None, passes: int | None = None) -> dict[str, float]:
    """The out-of-fold scores of a finished CV, predicted again by each fold's model on its own fold (with `tta`):
    what test-time augmentation buys, measured on images no model trained on."""
    cv_dir = Path(cv_dir)
    cv_config = load_config(cv_dir / runs.CONFIG_FILE, check_files=False)  # a finished CV, maybe from another machine
    members = runs.load_runs([cv_dir])
    labels, probs, multilabel = [], [], False
    for run, val in zip(members, fold_val_sets(cv_config, len(members))):
        kept, p = predict_images(run, val, tta=tta, passes=passes)
        labels.append(kept.labels)
        probs.append(p)
        multilabel = kept.multilabel
    return classification_metrics(np.concatenate(labels), np.concatenate(probs), multilabel)


def tta_gain(cv_dir: str | Path, tta: TTASpec, passes: int | None = None) -> tuple[str, dict[str, float], dict[str, float]]:
    """(the headline metric, out-of-fold scores without TTA, with `tta`): what test-time augmentation buys on a
    finished CV, on images no fold model trained on."""
    plain, with_tta = oof_scores(cv_dir, tta="none"), oof_scores(cv_dir, tta=tta, passes=passes)
    return ("mean_column_auc" if "mean_column_auc" in plain else "accuracy"), plain, with_tta
