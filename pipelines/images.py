"""Decode image files into 8-bit RGB arrays, whatever their mode, bit depth or EXIF orientation."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipelines.errors import ImageReadError
from pipelines.progress import progress

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")

# Transparent pixels are composited onto this colour (white, as most viewers show them).
ALPHA_BACKGROUND = (255, 255, 255)

_SKIP_HINT = "replace or delete the file, or set data.skip_bad_images=true to skip unreadable images"


def is_image_file(path: str | os.PathLike) -> bool:
    """True when the file name has one of the supported image extensions (case-insensitive)."""
    return os.path.splitext(os.fspath(path))[1].lower() in IMAGE_EXTENSIONS


def read_image(path: str | os.PathLike, size_hint: int | None = None) -> np.ndarray:
    """Read an image file as a (H, W, 3) uint8 RGB array.

    EXIF orientation is applied; grayscale, palette, CMYK, RGBA (composited on white) and 16-bit
    images are converted to 8-bit RGB. `size_hint` lets JPEG decoding skip resolution the pipeline
    would throw away (the result is never smaller than `size_hint` on either side).
    """
    path = os.fspath(path)
    try:
        if os.path.getsize(path) == 0:
            raise ImageReadError(f"{path}: the file is empty (0 bytes). Fix: {_SKIP_HINT}.")
        with Image.open(path) as im:
            if size_hint is not None and im.format == "JPEG":
                im.draft("RGB", (size_hint, size_hint))
            im.load()
            return to_rgb_uint8(ImageOps.exif_transpose(im))
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError(f"{path}: file not found. Fix: restore the file or remove it from the dataset.") from None
    except UnidentifiedImageError:
        raise ImageReadError(f"{path}: not an image file that Pillow can read. Fix: {_SKIP_HINT}.") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageReadError(f"{path}: cannot decode image ({exc}). Fix: {_SKIP_HINT}.") from None


def to_rgb_uint8(im: Image.Image) -> np.ndarray:
    """Convert a loaded PIL image of any mode to a contiguous (H, W, 3) uint8 RGB array."""
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        gray = _to_8bit(np.asarray(im), im.mode)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info)
    if has_alpha:
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (255,))
        im = Image.alpha_composite(background, rgba)
    return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))


def _to_8bit(values: np.ndarray, mode: str) -> np.ndarray:
    """Scale 16-bit (or 32-bit integer / float) single-channel data to 0..255."""
    if mode == "F":
        values = values.astype(np.float64)
        scale = 255.0 if np.nanmax(values, initial=0.0) <= 1.0 else 1.0
        return np.clip(np.nan_to_num(values) * scale, 0, 255).round().astype(np.uint8)
    # 16-bit PNG/TIFF data arrives as I;16* or as 32-bit "I"; both hold 0..65535.
    return np.clip(values.astype(np.float64) / 257.0, 0, 255).round().astype(np.uint8)


@dataclass(frozen=True)
class ImageCheck:
    """Result of checking a list of image files: which decode, and why the others do not."""

    ok: np.ndarray  # bool mask, one per path
    errors: tuple[str, ...]  # one message per unreadable file

    @property
    def num_bad(self) -> int:
        return int((~self.ok).sum())


def check_images(paths: Sequence[str], size_hint: int | None = None, workers: int | None = None) -> ImageCheck:
    """Fully decode every image (in parallel threads) to find missing, empty, truncated or non-image files."""

    def check(path: str) -> str | None:
        try:
            read_image(path, size_hint)
        except ImageReadError as exc:
            return str(exc)
        return None

    with ThreadPoolExecutor(max_workers=workers or min(8, (os.cpu_count() or 1) + 1)) as pool:
        results = list(progress(pool.map(check, paths), len(paths), "checking images"))
    ok = np.array([r is None for r in results], dtype=bool)
    return ImageCheck(ok=ok, errors=tuple(r for r in results if r is not None))
