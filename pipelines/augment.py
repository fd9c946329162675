"""Albumentations pipelines: named presets, or any pipeline saved with Albumentations' own serialization.

Every pipeline ends at the model's input size, so the tf.data pipeline can batch its output.
"""

from __future__ import annotations

import os
from pathlib import Path

import pipelines  # noqa: F401  (sets NO_ALBUMENTATIONS_UPDATE before the import below)

# isort: split

import albumentations as A
import cv2
import numpy as np

from pipelines.errors import DataError

Size = tuple[int, int]


def _none(size: Size) -> list[A.BasicTransform]:
    return [A.Resize(*size, interpolation=cv2.INTER_AREA)]


def _light(size: Size) -> list[A.BasicTransform]:
    return [A.Resize(*size, interpolation=cv2.INTER_AREA), A.HorizontalFlip(p=0.5)]


def _medium(size: Size) -> list[A.BasicTransform]:
    return [
        A.RandomResizedCrop(size=size, scale=(0.6, 1.0), interpolation=cv2.INTER_AREA),
        A.HorizontalFlip(p=0.5),
        A.Affine(rotate=(-15, 15), translate_percent=(-0.05, 0.05), border_mode=cv2.BORDER_REFLECT_101, p=0.5),
        A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
    ]


def _heavy(size: Size) -> list[A.BasicTransform]:
    return [
        A.RandomResizedCrop(size=size, scale=(0.35, 1.0), interpolation=cv2.INTER_AREA),
        A.HorizontalFlip(p=0.5),
        A.Affine(rotate=(-30, 30), translate_percent=(-0.1, 0.1), shear=(-10, 10), border_mode=cv2.BORDER_REFLECT_101, p=0.7),
        A.RandomBrightnessContrast(brightness_limit=0.3, contrast_limit=0.3, p=0.7),
        A.HueSaturationValue(hue_shift_limit=10, sat_shift_limit=25, val_shift_limit=15, p=0.5),
        A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.GaussNoise(std_range=(0.02, 0.08))], p=0.3),
        A.CoarseDropout(num_holes_range=(1, 4), hole_height_range=(0.05, 0.2), hole_width_range=(0.05, 0.2), p=0.5),
    ]


PRESETS = {"none": _none, "light": _light, "medium": _medium, "heavy": _heavy}


def build_transform(spec: str, image_size: Size) -> A.Compose:
    """A preset name (`none`, `light`, `medium`, `heavy`) or the path of a YAML/JSON file written by
    `A.save` / `A.to_dict`. A file's pipeline is followed by a resize to `image_size` when it may end at
    another size (a no-op when it already ends there)."""
    image_size = (int(image_size[0]), int(image_size[1]))
    if spec in PRESETS:
        return A.Compose(PRESETS[spec](image_size))
    path = Path(spec)
    if path.suffix.lower() not in (".yaml", ".yml", ".json"):
        raise DataError(f"unknown augmentation {spec!r}. Fix: use one of {', '.join(PRESETS)} or the path of a .yaml/.json file saved by albumentations.save.")
    loaded = load_transform(path)
    return A.Compose([loaded, A.Resize(*image_size, interpolation=cv2.INTER_AREA)])


def load_transform(path: str | os.PathLike) -> A.BaseCompose:
    """Read an Albumentations pipeline saved with `A.save` (YAML or JSON)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: augmentation file not found. Fix: check augment.train / augment.eval in the config.")
    data_format = "json" if path.suffix.lower() == ".json" else "yaml"
    try:
        loaded = A.load(str(path), data_format=data_format)
    except Exception as exc:  # Albumentations raises KeyError/ValueError/TypeError for bad entries
        raise DataError(
            f"{path}: not a valid Albumentations pipeline ({type(exc).__name__}: {exc}). "
            "Fix: write it with albumentations.save(transform, path, data_format='yaml'), see app/configs/augment/."
        ) from None
    return loaded


def save_transform(transform: A.BaseCompose, path: str | os.PathLike) -> None:
    """Write the pipeline as YAML that `build_transform` reads back (the run directory keeps one)."""
    A.save(transform, str(path), data_format="yaml")


# Test-time augmentation: transforms applied to the model-sized image (after the eval pipeline), each keeping
# its size. Pass 0 of a TTA prediction is always the plain image; passes 1.. apply the TTA pipeline, seeded per pass.
def _tta_flip(size: Size) -> list[A.BasicTransform]:
    return [A.HorizontalFlip(p=1.0)]


def _tta_flip_crops(size: Size) -> list[A.BasicTransform]:
    return [A.HorizontalFlip(p=0.5), A.RandomResizedCrop(size=size, scale=(0.75, 1.0), ratio=(0.9, 1.1), interpolation=cv2.INTER_AREA)]


TTA_PRESETS = {"none": (lambda size: [], 1), "flip": (_tta_flip, 2), "flip+crops": (_tta_flip_crops, 4)}  # pipeline, default passes
TTA_FILE_PASSES = 4


def build_tta(spec: str | A.BaseCompose, image_size: Size, passes: int | None = None) -> list[A.BaseCompose | None]:
    """The transforms of a TTA prediction, one per pass: None (the plain image) first, then the TTA pipeline for
    each further pass. `spec` is a TTA preset (`none`, `flip`, `flip+crops`), the path of a pipeline saved with
    `A.save`, or an Albumentations pipeline. `passes` counts the plain pass (default: the preset's, 4 for a file).
    A pipeline that changes the image size is refused: the batches must keep the model's input size."""
    image_size = (int(image_size[0]), int(image_size[1]))
    if isinstance(spec, A.BaseCompose):
        transform, default = spec, TTA_FILE_PASSES
    elif spec in TTA_PRESETS:
        make, default = TTA_PRESETS[spec]
        transform = A.Compose(make(image_size))
    elif Path(spec).suffix.lower() in (".yaml", ".yml", ".json"):
        transform, default = A.Compose([load_transform(spec)]), TTA_FILE_PASSES
    else:
        raise DataError(
            f"unknown test-time augmentation {spec!r}. Fix: use one of {', '.join(TTA_PRESETS)} or the path of a .yaml/.json file saved by albumentations.save."
        )
    passes = default if passes is None else passes
    if passes < 1:
        raise DataError(f"TTA passes {passes}: expected a whole number >= 1 (1: the plain image only)")
    probe = np.zeros((*image_size, 3), dtype=np.uint8)
    shape = transform(image=probe)["image"].shape
    if shape != probe.shape:
        raise DataError(
            f"test-time augmentation {spec if isinstance(spec, str) else 'pipeline'} turns a {image_size[0]}x{image_size[1]} image into "
            f"{shape[0]}x{shape[1]}. Fix: keep the size (flips, or RandomResizedCrop / Resize to the model's input size)."
        )
    return [None] + [transform] * (passes - 1)
