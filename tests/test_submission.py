"""Submissions: exactly the sample's shape (ids, order, columns), validated, written atomically, never overwritten silently."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import app.inference.submission as submission_module
from app.atomic import OutputExistsError
from app.config import load_config
from app.inference.submission import make_submission, read_template, submit, validate_submission, write_submission
from app.models import create_model
from app.runs import Run
from pipelines.errors import DataError

CLASSES = ["cat", "dog", "fox"]
IDS = ["007", "a", "b"]
PROBS = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.2, 0.5, 0.3]])


def test_default_is_id_label() -> None:
    frame = make_submission(IDS, PROBS, CLASSES)
    assert frame.to_dict("list") == {"id": IDS, "label": ["cat", "fox", "dog"]}


def test_probability_columns_follow_the_template(tmp_path: Path) -> None:
    pd.DataFrame({"id": ["b", "007", "a"], "fox": 0.3, "cat": 0.3, "dog": 0.4}).to_csv(tmp_path / "s.csv", index=False)
    template = read_template(tmp_path / "s.csv")
    frame = make_submission(IDS, PROBS, CLASSES, template=template)
    assert list(frame.columns) == ["id", "fox", "cat", "dog"]
    assert frame["id"].tolist() == ["b", "007", "a"]  # "007" stays text
    np.testing.assert_allclose(frame[["cat", "dog", "fox"]].to_numpy(), PROBS[[2, 0, 1]])
    write_submission(frame, tmp_path / "out.csv", template=template)
    assert pd.read_csv(tmp_path / "out.csv", dtype={"id": str})["id"].tolist() == ["b", "007", "a"]


def test_single_label_column_template(tmp_path: Path) -> None:
    pd.DataFrame({"ImageId": ["a", "b", "007"], "Label": 0}).to_csv(tmp_path / "s.csv", index=False)
    frame = make_submission(IDS, PROBS, CLASSES, template=read_template(tmp_path / "s.csv"))
    assert frame.to_dict("list") == {"ImageId": ["a", "b", "007"], "Label": ["fox", "dog", "cat"]}


def test_multilabel_label_column() -> None:
    frame = make_submission(["x"], np.array([[0.9, 0.1, 0.6]]), CLASSES, multilabel=True)
    assert frame["label"].tolist() == ["cat fox"]


def test_template_mismatch_is_an_error(tmp_path: Path) -> None:
    pd.DataFrame({"id": IDS, "emu": 0.5, "owl": 0.5}).to_csv(tmp_path / "s.csv", index=False)
    with pytest.raises(DataError, match="neither the model's classes"):
        make_submission(IDS, PROBS, CLASSES, template=read_template(tmp_path / "s.csv"))
    pd.DataFrame({"id": IDS + ["zzz"], "label": 0}).to_csv(tmp_path / "s2.csv", index=False)
    with pytest.raises(DataError, match="1 without a prediction"):
        make_submission(IDS, PROBS, CLASSES, template=read_template(tmp_path / "s2.csv"))


@pytest.mark.parametrize(
    "frame,pattern",
    [
        (pd.DataFrame({"id": ["a"], "cat": [np.nan]}), "empty values"),
        (pd.DataFrame({"id": ["a"], "cat": [1.5]}), r"outside \[0, 1\]"),
        (pd.DataFrame({"id": ["a"], "cat": [-0.1]}), r"outside \[0, 1\]"),
    ],
)
def test_validation(tmp_path: Path, frame: pd.DataFrame, pattern: str) -> None:
    with pytest.raises(DataError, match=pattern):
        write_submission(frame, tmp_path / "s.csv")
    assert not (tmp_path / "s.csv").exists()


def test_validation_against_template_order() -> None:
    template = pd.DataFrame({"id": ["a", "b"], "label": 0})
    with pytest.raises(DataError, match="count or order"):
        validate_submission(pd.DataFrame({"id": ["b", "a"], "label": ["x", "y"]}), template)


def test_existing_file_is_kept_without_force(tmp_path: Path) -> None:
    target = tmp_path / "submission.csv"
    target.write_text("precious\n")
    frame = make_submission(IDS, PROBS, CLASSES)
    with pytest.raises(OutputExistsError, match="--force"):
        write_submission(frame, target)
    assert target.read_text() == "precious\n"
    write_submission(frame, target, force=True)
    assert target.read_text().startswith("id,label")
    assert [p.name for p in tmp_path.iterdir()] == ["submission.csv"]  # no temp files left behind


def test_atomic_writes_keep_the_permissions_a_plain_write_gives(tmp_path: Path) -> None:
    from app.atomic import write_text

    old = os.umask(0o022)
    try:
        new_file = write_text(tmp_path / "new.csv", "a\n")
        assert stat.S_IMODE(new_file.stat().st_mode) == 0o644  # 0o666 less the umask, not mkstemp's 0o600
        shared = tmp_path / "shared.csv"
        shared.write_text("old\n")
        shared.chmod(0o664)
        write_text(shared, "new\n")  # --force style replacement keeps the file's own mode
        assert stat.S_IMODE(shared.stat().st_mode) == 0o664 and shared.read_text() == "new\n"
    finally:
        os.umask(old)


def test_an_existing_folder_as_output_is_one_clear_error_even_with_force(tmp_path: Path) -> None:
    from app.atomic import write_text

    with pytest.raises(OutputExistsError, match="is a folder. Fix: give the path of a file"):
        write_text(tmp_path, "a\n", force=True)
    assert tmp_path.is_dir()


def test_predict_refuses_an_existing_output_before_predicting(csv_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(overrides=[f"data.train={csv_dataset / 'train.csv'}", "data.image_size=16", "model.blocks=[[4]]"])
    run = Run(tmp_path, config, create_model("baseline_cnn", input_shape=(16, 16, 3), num_classes=3, blocks=[[4]]), ["cat", "dog", "fox"], False)
    output = tmp_path / "submission.csv"
    output.write_text("mine\n")
    monkeypatch.setattr(submission_module, "predict_images", lambda *a, **k: pytest.fail("predicted before checking the output"))
    with pytest.raises(OutputExistsError, match="already exists"):
        submit(run, output, test=str(csv_dataset / "sample_submission.csv"))
    assert output.read_text() == "mine\n"


def test_template_ids_named_like_missing_values_are_names(tmp_path: Path) -> None:
    (tmp_path / "sample.csv").write_text("id,cat,dog\nNA,0.5,0.5\nnull,0.5,0.5\n")
    assert read_template(tmp_path / "sample.csv")["id"].tolist() == ["NA", "null"]
