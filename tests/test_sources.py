"""Data sources: folder trees, label CSVs, one-hot CSVs, unlabeled test sets, and every bad input the user may bring."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.errors import DataError
from pipelines.sources import align_to_ids, from_csv, from_folder, from_sample_submission, unlabeled_folder
from tests.conftest import CLASSES, make_image


def test_folder_tree(folder_dataset: Path) -> None:
    images = from_folder(folder_dataset)
    assert images.class_names == CLASSES
    assert len(images) == 24 and images.labels.dtype == np.int64
    for path, label in zip(images.paths, images.labels, strict=True):
        assert Path(path).parent.name == CLASSES[label]


def test_folder_accepts_every_extension_and_ignores_other_files(tmp_path: Path) -> None:
    for ext in ("jpg", "JPEG", "png", "bmp", "gif", "webp", "tif"):
        make_image(tmp_path / "a" / f"img.{ext}", (1, 2, 3), size=(8, 8))
    (tmp_path / "a" / "notes.txt").write_text("x")
    (tmp_path / "a" / ".hidden.png").write_bytes(b"")
    images = from_folder(tmp_path)
    assert len(images) == 7


def test_folder_with_given_class_names_keeps_their_order(folder_dataset: Path) -> None:
    images = from_folder(folder_dataset, class_names=("fox", "cat", "dog", "emu"))
    assert images.class_names == ("fox", "cat", "dog", "emu")
    assert {Path(p).parent.name for p, y in zip(images.paths, images.labels, strict=True) if y == 0} == {"fox"}


def test_empty_class_folder(folder_dataset: Path) -> None:
    (folder_dataset / "emu").mkdir()
    with pytest.raises(DataError, match=r"emu: class folder has no images.*Fix"):
        from_folder(folder_dataset)


def test_val_folder_with_unknown_class(folder_dataset: Path) -> None:
    with pytest.raises(DataError, match="not among the training classes"):
        from_folder(folder_dataset, class_names=("cat", "dog"))


def test_csv_single_label(csv_dataset: Path) -> None:
    images = from_csv(csv_dataset / "train.csv", csv_dataset / "train", id_column="id", label_column="label")
    assert images.class_names == CLASSES and len(images) == 24
    assert images.ids[0] == "0000"  # leading zeros kept: ids are text
    assert images.paths[0].endswith("train/0000.jpg")  # extension detected


def test_csv_path_column(tmp_path: Path) -> None:
    make_image(tmp_path / "imgs" / "sub" / "a.png", (1, 1, 1), size=(8, 8))
    pd.DataFrame({"id": ["a"], "file": ["sub/a.png"], "y": ["x"]}).to_csv(tmp_path / "l.csv", index=False)
    images = from_csv(tmp_path / "l.csv", tmp_path / "imgs", label_column="y", path_column="file")
    assert images.paths == (str(tmp_path / "imgs" / "sub" / "a.png"),)


def test_csv_path_column_without_an_id_column(tmp_path: Path) -> None:
    """The paths are the ids then; a missing path column names data.path_column, a missing id column the option."""
    make_image(tmp_path / "imgs" / "sub" / "a.png", (1, 1, 1), size=(8, 8))
    pd.DataFrame({"file": ["sub/a.png"], "y": ["x"]}).to_csv(tmp_path / "l.csv", index=False)
    images = from_csv(tmp_path / "l.csv", tmp_path / "imgs", label_column="y", path_column="file")
    assert images.ids == ("sub/a.png",) and images.paths == (str(tmp_path / "imgs" / "sub" / "a.png"),)
    with pytest.raises(DataError, match=r"no column 'path'.*Fix: set data.path_column to"):
        from_csv(tmp_path / "l.csv", tmp_path / "imgs", label_column="y", path_column="path")
    with pytest.raises(DataError, match=r"no column 'id'.*Fix: set data.id_column \(or data.path_column, for a column of image paths\)"):
        from_csv(tmp_path / "l.csv", tmp_path / "imgs", label_column="y")


def _onehot(tmp_path: Path, rows: list[list[int]]) -> Path:
    names = ["healthy", "multiple_diseases", "rust", "scab"]
    ids = [f"Train_{i}" for i in range(len(rows))]
    for i in ids:
        make_image(tmp_path / "images" / f"{i}.jpg", (5, 5, 5), size=(8, 8))
    frame = pd.DataFrame(rows, columns=names)
    frame.insert(0, "image_id", ids)
    frame.to_csv(tmp_path / "train.csv", index=False)
    return tmp_path / "train.csv"


def test_onehot_multiclass(tmp_path: Path) -> None:
    csv = _onehot(tmp_path, [[1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    images = from_csv(csv, tmp_path / "images", id_column="image_id", label_columns=["healthy", "multiple_diseases", "rust", "scab"])
    assert not images.multilabel and images.labels.tolist() == [0, 2, 3]


def test_onehot_multilabel_detected(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    csv = _onehot(tmp_path, [[1, 0, 0, 0], [0, 0, 1, 1], [0, 0, 0, 0]])
    with caplog.at_level("INFO", logger="pipelines.sources"):
        images = from_csv(csv, tmp_path / "images", id_column="image_id", label_columns=["healthy", "multiple_diseases", "rust", "scab"])
    assert "train.csv: 1 row(s) have several 1s (e.g. line 3): multi-label" in caplog.text  # the switch is said, with where
    assert images.multilabel and images.labels.dtype == np.float32
    assert images.labels.tolist() == [[1, 0, 0, 0], [0, 0, 1, 1], [0, 0, 0, 0]]


def test_onehot_row_without_a_one_in_multiclass(tmp_path: Path) -> None:
    csv = _onehot(tmp_path, [[1, 0, 0, 0], [0, 0, 0, 0]])
    with pytest.raises(DataError, match=r"exactly one 1.*line 3.*multilabel=true"):
        from_csv(csv, tmp_path / "images", id_column="image_id", label_columns=["healthy", "multiple_diseases", "rust", "scab"], multilabel=False)


def test_onehot_non_binary_values(tmp_path: Path) -> None:
    csv = _onehot(tmp_path, [[1, 0, 0, 0], [0, 2, 0, 0]])
    with pytest.raises(DataError, match=r"0 or 1.*line 3"):
        from_csv(csv, tmp_path / "images", id_column="image_id", label_columns=["healthy", "multiple_diseases", "rust", "scab"])


def test_multilabel_tags_column(tmp_path: Path) -> None:
    for i in "ab":
        make_image(tmp_path / f"{i}.png", (1, 1, 1), size=(8, 8))
    pd.DataFrame({"id": ["a", "b"], "tags": ["clear water", "cloudy"]}).to_csv(tmp_path / "t.csv", index=False)
    images = from_csv(tmp_path / "t.csv", tmp_path, label_column="tags", multilabel=True)
    assert images.class_names == ("clear", "cloudy", "water")
    assert images.labels.tolist() == [[1, 0, 1], [0, 1, 0]]


@pytest.mark.parametrize(
    "frame,kwargs,pattern",
    [
        (pd.DataFrame({"image": ["0000"], "label": ["cat"]}), {}, r"no column 'id'; the columns are image, label.*Fix: set data.id_column"),
        (pd.DataFrame({"id": ["0000"], "breed": ["cat"]}), {}, r"no column 'label'.*data.label_column"),
        (pd.DataFrame({"id": ["0000", "0001"], "label": ["cat", None]}), {}, r"empty label.*line 3"),
        (pd.DataFrame({"id": ["0000", "0001"], "label": ["cat", "zebra"]}), {"class_names": CLASSES}, r"unknown label\(s\) zebra at line 3"),
        (pd.DataFrame({"id": ["0000", "0000"], "label": ["cat", "cat"]}), {}, r"duplicate ids 0000"),
        (pd.DataFrame({"id": ["0000", "9999"], "label": ["cat", "cat"]}), {}, r"1 image\(s\) listed in .* are missing: .*9999.jpg \(train.csv line 3\)"),
        (pd.DataFrame({"id": ["0000", "../0001"], "label": ["cat", "cat"]}), {}, r"'../0001.jpg' points outside"),
        (pd.DataFrame({"id": ["0000", "/etc/passwd"], "label": ["cat", "cat"]}), {}, r"points outside"),
    ],
    ids=["no-id-column", "no-label-column", "nan-label", "unknown-label", "duplicate-ids", "missing-image", "dotdot-escape", "absolute-path"],
)
def test_bad_csv(csv_dataset: Path, frame: pd.DataFrame, kwargs: dict, pattern: str) -> None:
    csv = csv_dataset / "train.csv"
    before = csv.read_bytes()
    frame.to_csv(csv, index=False)
    written = csv.read_bytes()
    with pytest.raises(DataError, match=pattern) as info:
        from_csv(csv, csv_dataset / "train", **kwargs)
    assert str(csv) in str(info.value)  # every message names the user's file
    assert csv.read_bytes() == written and written != before  # the user's file is only read


def test_unparseable_csv(tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_bytes(b"")
    with pytest.raises(DataError, match="cannot parse as CSV"):
        from_csv(tmp_path / "x.csv", tmp_path)


def test_unlabeled_folder_and_sample_submission(csv_dataset: Path) -> None:
    folder = unlabeled_folder(csv_dataset / "test")
    assert folder.labels is None and folder.ids == tuple(f"t{k:02d}" for k in range(6))
    sample = from_sample_submission(csv_dataset / "sample_submission.csv", csv_dataset / "test")
    assert sample.ids == tuple(f"t{k:02d}" for k in reversed(range(6)))  # the sample's row order
    assert sample.class_names == CLASSES
    aligned = align_to_ids(folder, list(sample.ids), "sample_submission.csv")
    assert aligned.paths == sample.paths


def test_test_ids_differ_from_sample_submission(csv_dataset: Path) -> None:
    folder = unlabeled_folder(csv_dataset / "test")
    with pytest.raises(DataError, match=r"1 id\(s\) of the submission have no image \(t99\); 1 image\(s\) are not in the submission \(t05\)"):
        align_to_ids(folder, [f"t{k:02d}" for k in range(5)] + ["t99"], "sample_submission.csv")


def test_sample_submission_with_missing_test_image(csv_dataset: Path) -> None:
    (csv_dataset / "test" / "t03.jpg").unlink()
    with pytest.raises(DataError, match=r"missing: .*t03.jpg"):
        from_sample_submission(csv_dataset / "sample_submission.csv", csv_dataset / "test")


def test_test_images_absent_from_the_sample_submission_are_reported(csv_dataset: Path, caplog: pytest.LogCaptureFixture) -> None:
    for name in ("extra1.jpg", "extra2.png"):
        (csv_dataset / "test" / name).write_bytes((csv_dataset / "test" / "t00.jpg").read_bytes())
    (csv_dataset / "test" / "notes.txt").write_text("not an image")
    with caplog.at_level("WARNING", logger="pipelines.sources"):
        sample = from_sample_submission(csv_dataset / "sample_submission.csv", csv_dataset / "test")
    assert len(sample) == 6  # the submission still follows the sample's rows
    (record,) = caplog.records
    assert record.getMessage().startswith("2 image(s) in ") and "not in sample_submission.csv" in record.getMessage()
    assert "extra1.jpg" in record.getMessage() and "extra2.png" in record.getMessage() and "notes.txt" not in record.getMessage()


def test_subset_and_without_keep_labels_aligned(folder_dataset: Path) -> None:
    images = from_folder(folder_dataset)
    part = images.subset([5, 20, 0])
    assert part.paths == (images.paths[5], images.paths[20], images.paths[0])
    assert part.labels.tolist() == [images.labels[5], images.labels[20], images.labels[0]]
    kept = part.without(np.array([True, False, True]), ["x: bad"])
    assert kept.paths == (images.paths[5], images.paths[0]) and kept.skipped == ("x: bad",)


def test_classes_and_ids_named_like_missing_values_are_names(tmp_path: Path) -> None:
    rows = [("NA", "None"), ("null", "NA"), ("n1", "None"), ("n2", "NA")]
    for image_id, _ in rows:
        make_image(tmp_path / "train" / f"{image_id}.png", (100, 100, 100))
    pd.DataFrame(rows, columns=["id", "label"]).to_csv(tmp_path / "train.csv", index=False)
    images = from_csv(tmp_path / "train.csv", tmp_path / "train")
    assert list(images.class_names) == ["NA", "None"] and list(images.ids) == ["NA", "null", "n1", "n2"]
    pd.DataFrame({"id": ["n1", "n2"], "label": ["None", ""]}).to_csv(tmp_path / "empty.csv", index=False)
    with pytest.raises(DataError, match="line 3"):  # an empty cell is still a missing label
        from_csv(tmp_path / "empty.csv", tmp_path / "train")
