"""Augmentation: one invariant over every preset (uint8 at the model's size, whatever the input), and YAML pipelines."""

from __future__ import annotations

from pathlib import Path

import albumentations as A
import numpy as np
import pytest

from app.config import SHIPPED_CONFIGS
from pipelines.augment import PRESETS, build_transform, save_transform
from pipelines.errors import DataError

REPO = Path(__file__).resolve().parents[1]
INPUT_SHAPES = [(32, 32, 3), (17, 45, 3), (300, 200, 3)]


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("shape", INPUT_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_presets_end_at_model_size_as_uint8(preset: str, shape: tuple[int, int, int]) -> None:
    transform = build_transform(preset, (24, 28))
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    for seed in range(5):
        transform.set_random_seed(seed)
        out = transform(image=image)["image"]
        assert out.shape == (24, 28, 3) and out.dtype == np.uint8


def test_same_seed_same_output() -> None:
    transform = build_transform("heavy", (32, 32))
    image = np.random.default_rng(1).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    transform.set_random_seed(7)
    first = transform(image=image)["image"]
    transform.set_random_seed(7)
    assert np.array_equal(first, transform(image=image)["image"])


def test_yaml_round_trip_matches_the_original(tmp_path: Path) -> None:
    original = build_transform("medium", (32, 32))
    save_transform(original, tmp_path / "aug.yaml")
    loaded = build_transform(str(tmp_path / "aug.yaml"), (32, 32))
    image = np.random.default_rng(2).integers(0, 256, (50, 40, 3), dtype=np.uint8)
    original.set_random_seed(11)
    loaded.set_random_seed(11)
    assert np.array_equal(original(image=image)["image"], loaded(image=image)["image"])


def test_yaml_pipeline_not_ending_at_model_size_is_resized(tmp_path: Path) -> None:
    A.save(A.Compose([A.HorizontalFlip(p=1.0)]), str(tmp_path / "flip.yaml"), data_format="yaml")
    transform = build_transform(str(tmp_path / "flip.yaml"), (16, 16))
    out = transform(image=np.zeros((40, 30, 3), np.uint8))["image"]
    assert out.shape == (16, 16, 3)


def test_shipped_digits_pipeline_loads() -> None:
    transform = build_transform(str(SHIPPED_CONFIGS / "augment" / "digits.yaml"), (32, 32))
    names = [type(t).__name__ for t in transform.transforms[0].transforms]
    assert names == ["Resize", "Affine"]


@pytest.mark.parametrize("spec,pattern", [("mediumm", "unknown augmentation 'mediumm'"), ("missing.yaml", "augmentation file not found")])
def test_bad_specs(spec: str, pattern: str) -> None:
    with pytest.raises(DataError, match=pattern):
        build_transform(spec, (8, 8))


def test_invalid_yaml_pipeline(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("transform:\n  __class_fullname__: NoSuchTransform\n")
    with pytest.raises(DataError, match="not a valid Albumentations pipeline"):
        build_transform(str(tmp_path / "bad.yaml"), (8, 8))
