"""Kaggle-style submission files: match a sample_submission.csv exactly, validate, write atomically."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from app.atomic import atomic_write, check_output
from app.data import load_test
from app.inference.evaluation import predicted_labels
from app.inference.prediction import TTASpec, check_members, predict_images
from app.runs import Run
from pipelines.errors import DataError
from pipelines.sources import align_to_ids


def make_submission(
    ids: Sequence[str],
    probs: np.ndarray,
    class_names: Sequence[str],
    *,
    template: pd.DataFrame | None = None,
    multilabel: bool = False,
    threshold: float = 0.5,
) -> pd.DataFrame:
    """A submission frame in the template's shape: its id column and row order, and either one probability
    column per class (in the template's column order) or one label column. Without a template: `id,label`."""
    probs = np.asarray(probs, dtype=np.float64)
    if template is None:
        return pd.DataFrame({"id": list(ids), "label": predicted_labels(probs, class_names, multilabel, threshold)})
    id_column, *value_columns = [str(c) for c in template.columns]
    frame = pd.DataFrame({id_column: template[id_column].astype(str).to_numpy()})
    position = {i: k for k, i in enumerate(ids)}
    missing = [i for i in frame[id_column] if i not in position]
    if missing or len(ids) != len(frame):
        raise DataError(
            f"predictions cover {len(ids)} ids but the sample submission has {len(frame)} rows ({len(missing)} without a prediction, e.g. {missing[:3]})."
        )
    probs = probs[[position[i] for i in frame[id_column]]]
    if set(value_columns) == set(class_names) and len(value_columns) > 1:
        column_of = {name: k for k, name in enumerate(class_names)}
        columns = pd.DataFrame(probs[:, [column_of[c] for c in value_columns]], columns=value_columns)
        frame = pd.concat([frame, columns], axis=1)  # at once: 120 columns one by one fragment the frame
    elif len(value_columns) == 1:
        frame[value_columns[0]] = predicted_labels(probs, class_names, multilabel, threshold)
    else:
        raise DataError(
            f"the sample submission's columns {value_columns[:5]} are neither the model's classes {list(class_names)[:5]} nor a single label column. "
            "Fix: use the sample_submission.csv that goes with this dataset."
        )
    return frame


def validate_submission(frame: pd.DataFrame, template: pd.DataFrame | None = None) -> None:
    """Raise DataError unless the frame is complete: same ids/order/columns as the template, no NaN, probabilities in [0, 1]."""
    if frame.isna().any().any():
        raise DataError("submission has empty values; nothing was written.")
    numeric = frame.select_dtypes(include="number")
    if len(numeric.columns) and ((numeric < 0) | (numeric > 1)).any().any():
        raise DataError("submission has probabilities outside [0, 1]; nothing was written.")
    if template is not None:
        if list(frame.columns) != [str(c) for c in template.columns]:
            raise DataError(f"submission columns {list(frame.columns)[:5]} differ from the sample's {list(template.columns)[:5]}; nothing was written.")
        if len(frame) != len(template) or not (frame.iloc[:, 0].astype(str).to_numpy() == template.iloc[:, 0].astype(str).to_numpy()).all():
            raise DataError("submission ids differ from the sample submission's (count or order); nothing was written.")


def write_submission(frame: pd.DataFrame, path: str | os.PathLike, *, template: pd.DataFrame | None = None, force: bool = False) -> Path:
    """Validate, then write `path` atomically; an existing file is kept unless `force`."""
    validate_submission(frame, template)
    return atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False), force=force)


def read_template(path: str | os.PathLike) -> pd.DataFrame:
    """A sample_submission.csv with every column read as text except the probability columns."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: sample submission not found. Fix: check the path.")
    frame = pd.read_csv(path)
    frame[frame.columns[0]] = pd.read_csv(path, usecols=[0], dtype=str, keep_default_na=False, na_values=[""]).iloc[:, 0]  # an id "NA" is a name
    return frame


def submit(
    members: Run | Sequence[Run],
    output: str | os.PathLike,
    *,
    test: str | None = None,
    images: str | None = None,
    probabilities: bool = False,
    tta: TTASpec = None,
    passes: int | None = None,
    weights: Sequence[float] | None = None,
    force: bool = False,
    verbose: int | str = "auto",
) -> pd.DataFrame:
    """Predict a test set with a trained run, or the weighted average of several (folds, whole runs), optionally
    with test-time augmentation, and write its submission to `output`.

    `test` (default: the run's data.test) is a sample_submission.csv, whose ids, order and columns the file
    then follows exactly, or a folder of images (`id,label`, or one probability column per class with
    `probabilities`). Test images are checked first; a submission needs every row, so none is skipped.
    """
    members = [members] if isinstance(members, Run) else list(members)
    check_members(members)
    run = members[0]
    config = run.config
    check_output(output, force=force)  # before predicting, not after
    test = test or config.data.test
    test_set = load_test(config.data, test, images)
    template = read_template(test) if str(test).lower().endswith(".csv") else None
    if template is not None:
        test_set = align_to_ids(test_set, list(template.iloc[:, 0]), str(test))
    if template is not None:
        strict = [dataclasses.replace(m, config=dataclasses.replace(m.config, data=dataclasses.replace(m.config.data, skip_bad_images=False))) for m in members]
        try:
            test_set, probs = predict_images(strict, test_set, tta=tta, passes=passes, weights=weights, verbose=verbose)
        except DataError as exc:
            raise DataError(f"{exc} (a submission needs every row, so no test image is skipped)") from None
    else:
        test_set, probs = predict_images(members, test_set, tta=tta, passes=passes, weights=weights, verbose=verbose)
    frame = make_submission(test_set.ids, probs, run.class_names, template=template, multilabel=run.multilabel)
    if template is None and probabilities:
        frame = pd.concat([frame[["id"]], pd.DataFrame(probs, columns=list(run.class_names))], axis=1)
    write_submission(frame, output, template=template, force=force)
    return frame
