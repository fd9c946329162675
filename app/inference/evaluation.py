"""Scores from labels and predicted probabilities (scikit-learn metrics, as Kaggle computes them)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, log_loss, roc_auc_score, top_k_accuracy_score

from app.inference.prediction import TTASpec, predict_images
from app.runs import Run
from pipelines.sources import ImageSet

SCORE_NAMES = ("accuracy", "top_3_accuracy", "top_5_accuracy", "macro_f1", "log_loss", "mean_column_auc", "exact_match_accuracy", "micro_f1")


def classification_metrics(labels: np.ndarray, probs: np.ndarray, multilabel: bool = False, threshold: float = 0.5) -> dict[str, float]:
    """Single-label: accuracy, top-3 / top-5 accuracy (with more classes than k), macro F1, log-loss.
    Multi-label: mean column-wise ROC AUC (columns with one class present are left out), micro/macro F1
    at `threshold`, exact-match accuracy, mean binary log-loss."""
    probs = np.asarray(probs, dtype=np.float64)
    num_classes = probs.shape[1]
    if multilabel:
        truth = np.asarray(labels).astype(int)
        predicted = (probs >= threshold).astype(int)
        scorable = [c for c in range(num_classes) if len(np.unique(truth[:, c])) == 2]
        metrics = {
            "mean_column_auc": float(np.mean([roc_auc_score(truth[:, c], probs[:, c]) for c in scorable])) if scorable else float("nan"),
            "exact_match_accuracy": float(accuracy_score(truth, predicted)),
            "micro_f1": float(f1_score(truth, predicted, average="micro", zero_division=0)),
            "macro_f1": float(f1_score(truth, predicted, average="macro", zero_division=0)),
            "log_loss": float(np.mean([log_loss(truth[:, c], probs[:, c], labels=[0, 1]) for c in range(num_classes)])),
        }
    else:
        truth = np.asarray(labels).astype(int)
        probs = probs / probs.sum(axis=1, keepdims=True)  # float32 softmax output sums to 1 only within 1e-7
        predicted = probs.argmax(axis=1)
        classes = list(range(num_classes))
        metrics = {
            "accuracy": float(accuracy_score(truth, predicted)),
            "macro_f1": float(f1_score(truth, predicted, labels=classes, average="macro", zero_division=0)),
            "log_loss": float(log_loss(truth, np.clip(probs, 1e-15, 1.0), labels=classes)),
        }
        for k in (3, 5):
            if num_classes > k:
                metrics[f"top_{k}_accuracy"] = float(top_k_accuracy_score(truth, probs, k=k, labels=classes))
    metrics["num_images"] = int(len(probs))
    return metrics


def predicted_labels(probs: np.ndarray, class_names: Sequence[str], multilabel: bool = False, threshold: float = 0.5) -> list[str]:
    """Class name per row (argmax), or the space-separated names above `threshold` for multi-label."""
    if multilabel:
        return [" ".join(class_names[c] for c in np.flatnonzero(row >= threshold)) for row in probs]
    return [class_names[c] for c in np.asarray(probs).argmax(axis=1)]


def evaluate_images(
    members: Run | Sequence[Run], images: ImageSet, *, tta: TTASpec = None, passes: int | None = None, weights: Sequence[float] | None = None
) -> tuple[dict[str, float], np.ndarray]:
    """Scores and probabilities of a run (or the average of several) on a labeled set, through `predict_images`
    (images checked first per the config; unreadable ones skipped only with data.skip_bad_images)."""
    kept, probs = predict_images(members, images, tta=tta, passes=passes, weights=weights)
    return classification_metrics(kept.labels, probs, kept.multilabel), probs
