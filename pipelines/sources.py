"""Data sources: a folder per class, a Kaggle-style CSV (label column or one-hot columns), or an unlabeled test set.

Every source returns an `ImageSet` (paths, labels, class names, ids) and validates it up front, so that a
wrong column or a missing file is reported before any training starts, with the file, the row and the fix.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.errors import DataError
from pipelines.images import IMAGE_EXTENSIONS, is_image_file

_MAX_LISTED = 3  # how many offending rows/files an error message quotes
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageSet:
    """Image files with their labels.

    `labels` is None for an unlabeled (test) set, an int64 vector of class indices for single-label data,
    or a float32 (N, num_classes) 0/1 matrix for multi-label data.
    """

    paths: tuple[str, ...]
    ids: tuple[str, ...]
    class_names: tuple[str, ...]
    labels: np.ndarray | None = None
    multilabel: bool = False
    skipped: tuple[str, ...] = field(default=())  # messages about files left out (see without())

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def labeled(self) -> bool:
        return self.labels is not None

    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageSet:
        """The images at `indices`, in that order."""
        idx = np.asarray(indices, dtype=np.int64)
        return ImageSet(
            paths=tuple(self.paths[i] for i in idx),
            ids=tuple(self.ids[i] for i in idx),
            class_names=self.class_names,
            labels=None if self.labels is None else self.labels[idx],
            multilabel=self.multilabel,
            skipped=self.skipped,
        )

    def without(self, keep: np.ndarray, reasons: Sequence[str]) -> ImageSet:
        """Drop the images where `keep` is False, remembering why (reported to the user)."""
        kept = self.subset(np.flatnonzero(keep))
        return ImageSet(kept.paths, kept.ids, kept.class_names, kept.labels, kept.multilabel, self.skipped + tuple(reasons))


def _listing(items: Sequence[str]) -> str:
    shown = ", ".join(str(i) for i in items[:_MAX_LISTED])
    return shown + (f" (and {len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else "")


def _image_files(folder: Path) -> list[Path]:
    """Image files below `folder` (recursively), sorted, hidden files excluded."""
    files = [p for p in folder.rglob("*") if p.is_file() and is_image_file(p) and not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    return sorted(files)


def _check_unique_ids(ids: Sequence[str], where: str) -> None:
    dupes = sorted(i for i, n in Counter(ids).items() if n > 1)
    if dupes:
        raise DataError(f"{where}: duplicate ids {_listing(dupes)}. Fix: each image id must appear once.")


def from_folder(root: str | os.PathLike, class_names: Sequence[str] | None = None) -> ImageSet:
    """A folder-per-class tree `root/<class>/<image>`; class names are the sorted sub-folder names.

    Pass `class_names` (e.g. from the training set) to read a validation folder with the same class order.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder. Fix: point data.train at a folder of <class>/<image> sub-folders or a CSV file.")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise DataError(f"{root}: no class sub-folders. Fix: arrange images as {root}/<class name>/<image>, or use data.test for a folder of unlabeled images.")
    names = tuple(class_names) if class_names is not None else tuple(found)
    unknown = [c for c in found if c not in names]
    if unknown:
        raise DataError(f"{root}: class folders {_listing(unknown)} are not among the training classes {_listing(list(names))}. Fix: rename or remove them.")
    paths: list[str] = []
    labels: list[int] = []
    for index, name in enumerate(names):
        folder = root / name
        files = _image_files(folder) if folder.is_dir() else []
        if not files and name in found:
            raise DataError(f"{folder}: class folder has no images (looked for {', '.join(IMAGE_EXTENSIONS)}). Fix: add images or remove the folder.")
        paths += [str(f) for f in files]
        labels += [index] * len(files)
    ids = [str(Path(p).relative_to(root).with_suffix("")) for p in paths]
    return ImageSet(tuple(paths), tuple(ids), names, np.asarray(labels, dtype=np.int64))


def unlabeled_folder(root: str | os.PathLike) -> ImageSet:
    """Every image below `root` (recursively), id = file name without extension (Kaggle test-set style)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder. Fix: point data.test at a folder of images or a sample_submission.csv.")
    files = _image_files(root)
    if not files:
        raise DataError(f"{root}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)}). Fix: check the folder.")
    ids = [str(f.relative_to(root).with_suffix("")) for f in files]
    _check_unique_ids(ids, str(root))
    return ImageSet(tuple(str(f) for f in files), tuple(ids), ())


def safe_image_path(image_dir: Path, name: str, where: str) -> Path:
    """`image_dir / name`, refusing names that are absolute or climb out of `image_dir`."""
    candidate = Path(name)
    resolved_dir = image_dir.resolve()
    if candidate.is_absolute() or not (resolved_dir / candidate).resolve().is_relative_to(resolved_dir):
        raise DataError(f"{where}: image name {name!r} points outside {image_dir}. Fix: use a path relative to the image folder.")
    return image_dir / candidate


def _read_csv(csv: Path, str_columns: Sequence[str] | None) -> pd.DataFrame:
    """Read a CSV, keeping `str_columns` (all columns when None) as text."""
    if not csv.is_file():
        raise DataError(f"{csv}: no such file. Fix: check the path in the config (data.train / data.val / data.test).")
    try:
        # Ids and labels stay text: "007" must not become 7, and a class or id named "None", "NA" or "null" is a
        # name, not a missing value: only an empty cell is missing.
        return pd.read_csv(csv, dtype=str if str_columns is None else {c: str for c in str_columns}, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{csv}: cannot parse as CSV ({exc}). Fix: save it as a comma-separated UTF-8 file with a header row.") from None


def _require_columns(frame: pd.DataFrame, columns: Sequence[str], csv: Path, option: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(
            f"{csv}: no column {_listing([repr(c) for c in missing])}; the columns are {', '.join(map(str, frame.columns[:20]))}. "
            f"Fix: set {option} to the right column name."
        )


def _rows(mask: np.ndarray) -> list[str]:
    """1-based line numbers in the CSV file (the header is line 1)."""
    return [f"line {i + 2}" for i in np.flatnonzero(mask)]


def _resolve_paths(frame: pd.DataFrame, csv: Path, image_dir: Path, id_column: str, path_column: str | None, extension: str | None) -> list[str]:
    """Image paths for each row: from `path_column`, else `<image_dir>/<id><extension>` (extension detected if unset)."""
    column = path_column or id_column
    names = frame[column].tolist()
    if not image_dir.is_dir():
        raise DataError(f"{image_dir}: image folder not found (for {csv}). Fix: set data.train_images / data.test_images to the folder holding the images.")
    if path_column is None and extension is None and names and not is_image_file(names[0]):
        extension = _detect_extension(image_dir, names[:50], csv)
    suffix = "" if path_column or extension is None else (extension if extension.startswith(".") else "." + extension)
    paths = [safe_image_path(image_dir, f"{name}{suffix}", f"{csv} line {row + 2}") for row, name in enumerate(names)]
    missing = [f"{p} ({csv.name} line {row + 2})" for row, p in enumerate(paths) if not p.is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} image(s) listed in {csv} are missing: {_listing(missing)}. "
            "Fix: restore the files, remove their rows, or set data.extension / the image folder."
        )
    return [str(p) for p in paths]


def _detect_extension(image_dir: Path, ids: Sequence[str], csv: Path) -> str:
    """The extension of the first of `ids` found on disk (one missing file must not hide the others' extension)."""
    for image_id in ids:
        for ext in IMAGE_EXTENSIONS + tuple(e.upper() for e in IMAGE_EXTENSIONS):
            if (image_dir / f"{image_id}{ext}").is_file():
                return ext
    raise DataError(
        f"{csv}: no image for ids {_listing(list(ids))} in {image_dir} with any of {', '.join(IMAGE_EXTENSIONS)}. "
        "Fix: set data.extension, or the image folder (data.train_images / data.test_images)."
    )


def from_csv(
    csv: str | os.PathLike,
    image_dir: str | os.PathLike | None = None,
    *,
    id_column: str = "id",
    label_column: str | None = "label",
    label_columns: Sequence[str] | None = None,
    path_column: str | None = None,
    extension: str | None = None,
    class_names: Sequence[str] | None = None,
    multilabel: bool | None = None,
    label_separator: str = " ",
) -> ImageSet:
    """A labeled CSV: one label column (`id,breed`) or one 0/1 column per class (`image_id,healthy,rust,...`).

    Images are `<image_dir>/<id><extension>` (extension detected when unset) or come from `path_column`, which
    then also gives the ids when the CSV has no `id_column`.
    With `label_columns`, rows with exactly one 1 are multi-class; rows with several 1s make the set
    multi-label (force either with `multilabel`). With one label column and `multilabel=True`, labels are
    split on `label_separator` (Kaggle "tags" style). `class_names` fixes the class order (e.g. the training
    set's when reading a validation CSV); a label outside it is an error.
    """
    csv = Path(csv)
    image_dir = Path(image_dir) if image_dir is not None else csv.parent
    onehot = bool(label_columns)
    if not onehot and not label_column:
        raise DataError(f"{csv}: no label column configured. Fix: set data.label_column, or data.label_columns for one-hot CSVs.")
    text_columns = [id_column] + ([path_column] if path_column else []) + ([] if onehot else [label_column])  # type: ignore[list-item]
    frame = _read_csv(csv, text_columns)
    if path_column:
        _require_columns(frame, [path_column], csv, "data.path_column")
        if id_column not in frame.columns:  # the paths name the images: they are the ids
            id_column = path_column
    else:
        _require_columns(frame, [id_column], csv, "data.id_column (or data.path_column, for a column of image paths)")
    _require_columns(frame, list(label_columns) if onehot else [label_column], csv, "data.label_columns" if onehot else "data.label_column")  # type: ignore[list-item]
    if len(frame) == 0:
        raise DataError(f"{csv}: no rows. Fix: add one row per image.")
    if frame[id_column].isna().any():
        raise DataError(f"{csv}: empty id at {_listing(_rows(frame[id_column].isna().to_numpy()))}. Fix: fill in or remove those rows.")
    ids = frame[id_column].astype(str).tolist()
    _check_unique_ids(ids, str(csv))

    if onehot:
        labels, names, multilabel = _onehot_labels(frame, list(label_columns), csv, class_names, multilabel)  # type: ignore[arg-type]
    else:
        labels, names, multilabel = _column_labels(frame, label_column, csv, class_names, bool(multilabel), label_separator)  # type: ignore[arg-type]
    paths = _resolve_paths(frame, csv, image_dir, id_column, path_column, extension)
    return ImageSet(tuple(paths), tuple(ids), names, labels, multilabel)


def _column_labels(
    frame: pd.DataFrame, column: str, csv: Path, class_names: Sequence[str] | None, multilabel: bool, separator: str
) -> tuple[np.ndarray, tuple[str, ...], bool]:
    values = frame[column]
    if values.isna().any() or (values.astype(str).str.strip() == "").any():
        empty = values.isna().to_numpy() | (values.astype(str).str.strip() == "").to_numpy()
        raise DataError(f"{csv}: empty label in column {column!r} at {_listing(_rows(empty))}. Fix: fill in the label or remove those rows.")
    texts = values.astype(str).str.strip()
    per_row = [t.split(separator) if multilabel else [t] for t in texts]
    names = tuple(class_names) if class_names is not None else tuple(sorted({n for row in per_row for n in row if n}))
    index = {n: i for i, n in enumerate(names)}
    unknown_rows = np.array([any(n and n not in index for n in row) for row in per_row])
    if unknown_rows.any():
        bad = sorted({n for row in per_row for n in row if n and n not in index})
        raise DataError(
            f"{csv}: unknown label(s) {_listing(bad)} at {_listing(_rows(unknown_rows))}; the classes are {_listing(list(names))}. "
            "Fix: correct the labels or train on a set that has these classes."
        )
    if multilabel:
        labels = np.zeros((len(per_row), len(names)), dtype=np.float32)
        for r, row in enumerate(per_row):
            labels[r, [index[n] for n in row if n]] = 1.0
        return labels, names, True
    return np.asarray([index[row[0]] for row in per_row], dtype=np.int64), names, False


def _onehot_labels(
    frame: pd.DataFrame, columns: list[str], csv: Path, class_names: Sequence[str] | None, multilabel: bool | None
) -> tuple[np.ndarray, tuple[str, ...], bool]:
    if class_names is not None and list(class_names) != columns:
        raise DataError(f"{csv}: label columns {columns} differ from the training classes {list(class_names)}. Fix: use the same columns in the same order.")
    block = frame[columns].apply(pd.to_numeric, errors="coerce")
    bad = ~(block.isin([0, 1]).all(axis=1)).to_numpy()
    if bad.any():
        raise DataError(f"{csv}: one-hot columns must hold 0 or 1; see {_listing(_rows(bad))}. Fix: correct those values.")
    labels = block.to_numpy(dtype=np.float32)
    sums = labels.sum(axis=1)
    if multilabel is None:
        multilabel = bool((sums != 1).any() and (sums > 1).any())
        if multilabel:
            log.info(
                "%s: %d row(s) have several 1s (e.g. %s): multi-label (sigmoid per class). Set data.multilabel to choose.",
                csv.name,
                int((sums > 1).sum()),
                _listing(_rows(sums > 1)),
            )
    if not multilabel:
        wrong = sums != 1
        if wrong.any():
            raise DataError(
                f"{csv}: multi-class rows need exactly one 1 among {_listing(columns)}; {_listing(_rows(wrong))} have {int(sums[wrong][0])}. "
                "Fix: correct those rows, or set data.multilabel=true if an image may have several (or no) labels."
            )
        return labels.argmax(axis=1).astype(np.int64), tuple(columns), False
    return labels, tuple(columns), True


def from_sample_submission(csv: str | os.PathLike, image_dir: str | os.PathLike, *, id_column: str | None = None, extension: str | None = None) -> ImageSet:
    """The unlabeled test set named by a Kaggle `sample_submission.csv`, in its row order.

    The id column defaults to the first column; `class_names` are the remaining columns when there are
    several (one probability column per class), else empty.
    """
    csv = Path(csv)
    frame = _read_csv(csv, None)
    if frame.shape[1] < 1:
        raise DataError(f"{csv}: no columns. Fix: use the competition's sample_submission.csv.")
    id_column = id_column or str(frame.columns[0])
    _require_columns(frame, [id_column], csv, "data.id_column")
    if frame[id_column].isna().any():
        raise DataError(f"{csv}: empty id at {_listing(_rows(frame[id_column].isna().to_numpy()))}. Fix: fill in or remove those rows.")
    ids = frame[id_column].tolist()
    _check_unique_ids(ids, str(csv))
    paths = _resolve_paths(frame, csv, Path(image_dir), id_column, None, extension)
    listed = {os.path.normcase(os.path.abspath(p)) for p in paths}
    extra = sorted(f.name for f in Path(image_dir).iterdir() if is_image_file(f) and os.path.normcase(os.path.abspath(f)) not in listed)
    if extra:  # the submission follows the CSV's rows (what the competition scores); the user should still know
        log.warning("%d image(s) in %s are not in %s and are not predicted: %s", len(extra), image_dir, csv.name, _listing(extra))
    others = tuple(str(c) for c in frame.columns if c != id_column)
    return ImageSet(tuple(paths), tuple(ids), others if len(others) > 1 else ())


def align_to_ids(images: ImageSet, ids: Sequence[str], where: str) -> ImageSet:
    """Reorder `images` to follow `ids` exactly (e.g. a sample submission's rows); any difference is an error."""
    position = {i: k for k, i in enumerate(images.ids)}
    missing = [i for i in ids if i not in position]
    extra = sorted(set(images.ids) - set(ids))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} id(s) of the submission have no image ({_listing(missing)})")
        if extra:
            parts.append(f"{len(extra)} image(s) are not in the submission ({_listing(extra)})")
        raise DataError(f"{where}: test images and submission ids differ: {'; '.join(parts)}. Fix: use the matching test folder and sample_submission.csv.")
    return images.subset([position[i] for i in ids])
