"""How well a model did on a labeled set, as files: per_class.csv, confusion_matrix.png and mistakes.png
(a grid of the most confident mistakes). Metrics come from scikit-learn (app.inference.evaluation)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import ConfusionMatrixDisplay, multilabel_confusion_matrix, precision_recall_fscore_support, roc_auc_score

from app.atomic import atomic_write
from app.inference.evaluation import classification_metrics
from app.plots import subplots
from pipelines.errors import ImageReadError
from pipelines.images import read_image
from pipelines.sources import ImageSet

log = logging.getLogger(__name__)
REPORT_FILES = ("per_class.csv", "confusion_matrix.png", "mistakes.png")


def per_class_table(images: ImageSet, probs: np.ndarray, threshold: float = 0.5) -> pd.DataFrame:
    """Precision, recall, F1 and support per class (multi-label: at `threshold`, plus each column's ROC AUC)."""
    n = len(images.class_names)
    truth = np.asarray(images.labels).astype(int)
    if images.multilabel:
        predicted = (probs >= threshold).astype(int)
        precision, recall, f1, support = precision_recall_fscore_support(truth, predicted, zero_division=0)
        auc = [roc_auc_score(truth[:, c], probs[:, c]) if len(np.unique(truth[:, c])) == 2 else np.nan for c in range(n)]
        return pd.DataFrame({"class": images.class_names, "precision": precision, "recall": recall, "f1": f1, "roc_auc": auc, "support": support})
    predicted = probs.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(truth, predicted, labels=list(range(n)), zero_division=0)
    return pd.DataFrame({"class": images.class_names, "precision": precision, "recall": recall, "f1": f1, "support": support})


def plot_confusion_matrix(images: ImageSet, probs: np.ndarray, path: str | os.PathLike, threshold: float = 0.5) -> None:
    """Row-normalised confusion matrix (counts written in the cells up to 20 classes); multi-label: one 2x2 matrix per class."""
    names = list(images.class_names)
    truth = np.asarray(images.labels).astype(int)
    if images.multilabel:
        matrices = multilabel_confusion_matrix(truth, (probs >= threshold).astype(int))
        shown = min(len(names), 24)
        cols = min(shown, 6)
        fig, axes = subplots((shown + cols - 1) // cols, cols, figsize=(2.4 * cols, 2.4 * ((shown + cols - 1) // cols)), squeeze=False)
        for ax, name, matrix in zip(axes.flat, names, matrices):
            ConfusionMatrixDisplay(matrix, display_labels=["no", "yes"]).plot(ax=ax, colorbar=False)
            ax.set_title(name, fontsize=9)
        for ax in list(axes.flat)[shown:]:
            ax.axis("off")
        fig.suptitle("per-class confusion (rows: truth)" + (f", first {shown} of {len(names)} classes" if shown < len(names) else ""))
    else:
        side = min(max(6.0, 0.35 * len(names)), 40.0)
        fig, ax = subplots(figsize=(side, side))
        ConfusionMatrixDisplay.from_predictions(
            truth,
            probs.argmax(axis=1),
            labels=list(range(len(names))),
            display_labels=names,
            normalize="true",
            include_values=len(names) <= 20,
            values_format=".2f",
            xticks_rotation="vertical",
            ax=ax,
            colorbar=len(names) <= 20,
        )
        ax.set_title("confusion matrix (rows: truth, normalised)")
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=100))


def confident_mistakes(images: ImageSet, probs: np.ndarray, count: int = 16, threshold: float = 0.5) -> list[tuple[int, str, str, float]]:
    """(index, truth, prediction, confidence) of the `count` mistakes made with the highest confidence."""
    names = images.class_names
    if images.multilabel:
        truth = np.asarray(images.labels).astype(int)
        wrong = (probs >= threshold).astype(int) != truth
        error = np.where(wrong, np.abs(probs - truth), 0.0).max(axis=1)
        order = [i for i in np.argsort(-error, kind="stable") if error[i] > 0][:count]
        label = lambda row: " ".join(names[c] for c in np.flatnonzero(row)) or "(none)"  # noqa: E731
        return [(int(i), label(truth[i]), label(probs[i] >= threshold), float(error[i])) for i in order]
    predicted = probs.argmax(axis=1)
    confidence = probs.max(axis=1)
    wrong = np.flatnonzero(predicted != np.asarray(images.labels))
    order = wrong[np.argsort(-confidence[wrong], kind="stable")][:count]
    return [(int(i), names[int(images.labels[i])], names[int(predicted[i])], float(confidence[i])) for i in order]


def plot_mistakes(images: ImageSet, probs: np.ndarray, path: str | os.PathLike, count: int = 16) -> int:
    """A grid of the most confident mistakes (image, truth, prediction, confidence); returns how many it shows."""
    mistakes = confident_mistakes(images, probs, count)
    cols = 4
    rows = max(1, (len(mistakes) + cols - 1) // cols)
    fig, axes = subplots(rows, cols, figsize=(3.2 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    if not mistakes:
        axes[0][0].text(0, 0.5, "no mistakes on this set", fontsize=12)
    for ax, (index, truth, predicted, confidence) in zip(axes.flat, mistakes):
        try:
            ax.imshow(read_image(images.paths[index], size_hint=160))
        except ImageReadError:
            ax.text(0.5, 0.5, "unreadable", ha="center")
        ax.set_title(f"{Path(images.paths[index]).name}\ntrue: {truth}\npred: {predicted} ({confidence:.2f})", fontsize=8)
    fig.suptitle("most confident mistakes")
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=80))
    return len(mistakes)


def write_report(out_dir: str | os.PathLike, images: ImageSet, probs: np.ndarray) -> dict[str, Any]:
    """Write per_class.csv, confusion_matrix.png and mistakes.png to `out_dir`; return the set's metrics."""
    out_dir = Path(out_dir)
    probs = np.asarray(probs, dtype=np.float64)
    table = per_class_table(images, probs)
    atomic_write(out_dir / "per_class.csv", lambda p: table.to_csv(p, index=False, float_format="%.4f"))
    plot_confusion_matrix(images, probs, out_dir / "confusion_matrix.png")
    plot_mistakes(images, probs, out_dir / "mistakes.png")
    return classification_metrics(images.labels, probs, images.multilabel)


def write_evaluation(
    out_dir: str | os.PathLike, members: Any, images: ImageSet, source: str, *, tta: Any = None, passes: int | None = None, force: bool = False
) -> dict[str, Any]:
    """Score a run (or the average of several runs) on a labeled set and write metrics.json plus the report files to
    `out_dir` (a new folder, or an existing one only with `force`). Predictions: app.inference.prediction."""
    from app.atomic import OutputExistsError, write_json
    from app.inference.prediction import predict_images

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise OutputExistsError(f"{out_dir}: already holds an evaluation. Fix: pass --output to another folder, or --force to replace it.")
    images, probs = predict_images(members, images, tta=tta, passes=passes)  # checks the images; may leave bad ones out (data.skip_bad_images)
    metrics = write_report(out_dir, images, probs)
    write_json(out_dir / "metrics.json", {"data": source, **({"tta": str(tta)} if tta else {}), **metrics})
    return metrics
