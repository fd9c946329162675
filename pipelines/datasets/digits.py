"""scikit-learn's bundled handwritten digits (1,797 real 8x8 scans) exported as a Kaggle-style dataset.

Layout under the returned folder:
    train/<id>.png + train.csv (id,label)       labeled training images
    test/<id>.png + sample_submission.csv       unlabeled test images, submission template (id,label)
    test_labels.csv (id,label)                  the test answers, kept aside for scoring
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

VERSION = "v1"
TEST_FRACTION = 0.2
SPLIT_SEED = 0


def default_cache_dir() -> Path:
    """`$IMGCLF_CACHE`, else `$XDG_CACHE_HOME/imgclf`, else `~/.cache/imgclf`."""
    if os.environ.get("IMGCLF_CACHE"):
        return Path(os.environ["IMGCLF_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "imgclf"


def export_digits(cache_dir: str | os.PathLike | None = None) -> Path:
    """Export the digits once (atomically) and return the dataset folder; later calls reuse it."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / f"digits-{VERSION}"
    if (target / "train.csv").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".digits-", dir=root))
    try:
        _write_layout(staging)
        try:
            os.replace(staging, target)
        except OSError:  # another process finished first: keep its copy
            if not (target / "train.csv").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _write_layout(folder: Path) -> None:
    digits = load_digits()
    pixels = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 -> 0..255, grayscale
    labels = digits.target.astype(str)
    ids = np.array([f"{i:04d}" for i in range(len(labels))])
    train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=labels)
    for split, idx in (("train", np.sort(train_idx)), ("test", np.sort(test_idx))):
        (folder / split).mkdir()
        for i in idx:
            Image.fromarray(pixels[i], mode="L").save(folder / split / f"{ids[i]}.png")
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    pd.DataFrame({"id": ids[train_idx], "label": labels[train_idx]}).to_csv(folder / "train.csv", index=False)
    pd.DataFrame({"id": ids[test_idx], "label": labels[test_idx]}).to_csv(folder / "test_labels.csv", index=False)
    pd.DataFrame({"id": ids[test_idx], "label": "0"}).to_csv(folder / "sample_submission.csv", index=False)
