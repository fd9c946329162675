"""Decoding: every image mode, bit depth and orientation ends as (H, W, 3) uint8 RGB; bad files get a clear error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.errors import ImageReadError
from pipelines.images import check_images, read_image


def _gray16(path: Path) -> tuple[Path, np.ndarray]:
    values = np.full((6, 5), 65535 // 2, dtype=np.uint16)
    Image.fromarray(values).save(path)
    return path, np.full((6, 5, 3), 128, np.uint8)


def _rgba_transparent(path: Path) -> tuple[Path, np.ndarray]:
    pixels = np.zeros((6, 5, 4), np.uint8)
    pixels[..., 0] = 255  # red, but fully transparent: composited on white
    Image.fromarray(pixels, "RGBA").save(path)
    return path, np.full((6, 5, 3), 255, np.uint8)


def _rgba_opaque(path: Path) -> tuple[Path, np.ndarray]:
    pixels = np.zeros((6, 5, 4), np.uint8)
    pixels[..., 2] = 200
    pixels[..., 3] = 255
    Image.fromarray(pixels, "RGBA").save(path)
    return path, np.dstack([np.zeros((6, 5)), np.zeros((6, 5)), np.full((6, 5), 200)]).astype(np.uint8)


def _gray8(path: Path) -> tuple[Path, np.ndarray]:
    Image.fromarray(np.full((6, 5), 77, np.uint8), "L").save(path)
    return path, np.full((6, 5, 3), 77, np.uint8)


def _palette(path: Path) -> tuple[Path, np.ndarray]:
    Image.new("RGB", (5, 6), (10, 200, 30)).convert("P", palette=Image.Palette.ADAPTIVE).save(path)
    return path, np.tile(np.array([10, 200, 30], np.uint8), (6, 5, 1))


def _binary(path: Path) -> tuple[Path, np.ndarray]:
    Image.new("1", (5, 6), 1).save(path)
    return path, np.full((6, 5, 3), 255, np.uint8)


def _cmyk(path: Path) -> tuple[Path, np.ndarray]:
    Image.new("CMYK", (5, 6), (0, 0, 0, 0)).save(path)
    return path, np.full((6, 5, 3), 255, np.uint8)


def _exif_rotated(path: Path) -> tuple[Path, np.ndarray]:
    pixels = np.zeros((6, 5, 3), np.uint8)
    pixels[0, :] = 255  # white top row in storage order
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    image.save(path, exif=exif.tobytes())
    expected = np.rot90(pixels, k=-1)  # displayed: 5 rows x 6 columns, white right-hand column
    return path, expected


CASES = {
    "gray16.png": _gray16,
    "rgba_transparent.png": _rgba_transparent,
    "rgba_opaque.png": _rgba_opaque,
    "gray8.png": _gray8,
    "palette.gif": _palette,
    "palette.png": _palette,
    "binary.bmp": _binary,
    "cmyk.tif": _cmyk,
    "rotated.png": _exif_rotated,
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_mode_becomes_rgb_uint8(tmp_path: Path, name: str) -> None:
    path, expected = CASES[name](tmp_path / name)
    image = read_image(path)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert image.shape == expected.shape
    np.testing.assert_allclose(image.astype(int), expected.astype(int), atol=2)


def test_jpeg_size_hint_keeps_at_least_the_hinted_size(tmp_path: Path) -> None:
    Image.new("RGB", (400, 300), (1, 2, 3)).save(tmp_path / "big.jpg")
    image = read_image(tmp_path / "big.jpg", size_hint=64)
    assert min(image.shape[:2]) >= 64 and image.shape[0] < 300


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _truncated(path: Path) -> None:
    Image.new("RGB", (64, 64), (9, 9, 9)).save(path, format="JPEG")
    path.write_bytes(path.read_bytes()[:200])


def _text(path: Path) -> None:
    path.write_text("not an image")


@pytest.mark.parametrize("maker,reason", [(_empty, "empty"), (_truncated, "cannot decode"), (_text, "not an image")])
def test_bad_files_name_the_file_and_the_fix(tmp_path: Path, maker, reason: str) -> None:
    path = tmp_path / "bad.jpg"
    maker(path)
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    message = str(info.value)
    assert str(path) in message and reason in message and "skip_bad_images" in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="file not found"):
        read_image(tmp_path / "nope.png")


def test_check_images_reports_each_bad_file(tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    Image.new("RGB", (8, 8)).save(good)
    _empty(tmp_path / "empty.png")
    _text(tmp_path / "text.png")
    result = check_images([str(good), str(tmp_path / "empty.png"), str(tmp_path / "text.png")])
    assert result.ok.tolist() == [True, False, False]
    assert result.num_bad == 2 and "empty.png" in result.errors[0] and "text.png" in result.errors[1]


def test_progress_is_one_log_line_off_a_terminal(caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    from pipelines.progress import PROGRESS_MIN_ITEMS, progress

    with caplog.at_level("INFO", logger="pipelines.progress"):
        assert list(progress(iter(range(10)), 10, "small")) == list(range(10))  # below the threshold: silent
        items = list(progress(iter(range(PROGRESS_MIN_ITEMS)), PROGRESS_MIN_ITEMS, "checking images"))
    assert items == list(range(PROGRESS_MIN_ITEMS))
    assert [r.getMessage().split(" in ")[0] for r in caplog.records] == [f"checking images: {PROGRESS_MIN_ITEMS} images"]
    assert capsys.readouterr().err == ""  # pytest's captured stderr is not a terminal: no bar
