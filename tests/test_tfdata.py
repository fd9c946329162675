"""tf.data pipeline: static uint8 shapes, labels aligned with images, seeded determinism, cache equivalence."""

from __future__ import annotations

from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import tensorflow as tf

from pipelines.augment import build_transform
from pipelines.batches import BatchLoader
from pipelines.errors import ImageReadError
from pipelines.sources import from_folder, unlabeled_folder
from pipelines.tfdata import decode_all, make_dataset
from tests.conftest import COLORS


def _epoch(dataset: tf.data.Dataset) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(x.numpy(), y.numpy()) for x, y in dataset]


def test_shapes_dtypes_and_label_alignment(folder_dataset: Path) -> None:
    images = from_folder(folder_dataset)
    dataset = make_dataset(images, (32, 32), 5, transform=build_transform("light", (32, 32)), shuffle=True, seed=0).dataset
    assert dataset.element_spec[0].shape.as_list() == [None, 32, 32, 3]
    assert dataset.element_spec[0].dtype == tf.uint8
    seen = 0
    for x, y in _epoch(dataset):
        for image, label in zip(x, y, strict=True):
            # each class has its own dominant colour channel: the label must match the pixels it came with
            expected = np.argmax(COLORS[images.class_names[label]])
            assert np.argmax(image.reshape(-1, 3).mean(axis=0)) == expected
        seen += len(x)
    assert seen == len(images)


def test_same_seed_same_batches_new_epoch_new_augmentation(folder_dataset: Path) -> None:
    images = from_folder(folder_dataset)

    def build(seed: int) -> tf.data.Dataset:
        return make_dataset(images, (32, 32), 8, transform=build_transform("heavy", (32, 32)), shuffle=True, seed=seed).dataset

    first = build(1)
    epoch1, epoch2 = _epoch(first), _epoch(first)
    again = build(1)
    for (a, b), (c, d) in zip(epoch1, _epoch(again), strict=True):
        assert np.array_equal(a, c) and np.array_equal(b, d)
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(epoch1, epoch2, strict=True))
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(epoch1, _epoch(build(2)), strict=True))


def test_transforms_of_a_batch_decide_independently() -> None:
    # Two flips of p=0.5 on an image whose four flips all differ: Albumentations' set_random_seed gives each transform
    # its own copy of one stream, and both flips then decided alike on every image. One shared stream: independent.
    image = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    flips = A.Compose([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)])
    loader = BatchLoader(["unused"] * 64, (4, 6), flips, cache=np.repeat(image[None], 64, axis=0))
    batch = loader(np.arange(64), seed=3)
    horizontal = np.array([np.array_equal(x, image[:, ::-1]) or np.array_equal(x, image[::-1, ::-1]) for x in batch])
    vertical = np.array([np.array_equal(x, image[::-1]) or np.array_equal(x, image[::-1, ::-1]) for x in batch])
    assert 16 <= horizontal.sum() <= 48 and 16 <= vertical.sum() <= 48  # each about half of the 64 images
    assert 16 <= (horizontal != vertical).sum() <= 48  # decided apart about half the time, never always together
    assert np.array_equal(batch, loader(np.arange(64), seed=3))  # and still a function of the seed


def test_parallel_calls_do_not_change_the_result(folder_dataset: Path) -> None:
    images = from_folder(folder_dataset)
    kwargs = dict(transform=build_transform("medium", (32, 32)), shuffle=True, seed=5)
    serial = _epoch(make_dataset(images, (32, 32), 4, num_parallel_calls=1, **kwargs).dataset)
    parallel = _epoch(make_dataset(images, (32, 32), 4, num_parallel_calls=4, **kwargs).dataset)
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(serial, parallel, strict=True))


@pytest.mark.parametrize("drop_remainder", [False, True])
@pytest.mark.parametrize("per_call", [2, 3, 7])
def test_batches_per_call_never_changes_the_batches(folder_dataset: Path, per_call: int, drop_remainder: bool) -> None:
    """24 images in batches of 5: several batches per Python call (the last call short, or 7 > the 5 batches of an
    epoch) give the same batches, epoch after epoch, with the same static shapes and the same known length (Keras
    shows progress totals and does not warn that the input ran out of data)."""
    images = from_folder(folder_dataset)
    kwargs = dict(transform=build_transform("heavy", (32, 32)), shuffle=True, seed=3, drop_remainder=drop_remainder)
    one = make_dataset(images, (32, 32), 5, batches_per_call=1, **kwargs)
    several = make_dataset(images, (32, 32), 5, batches_per_call=per_call, **kwargs)
    assert several.dataset.element_spec[0].shape.as_list() == one.dataset.element_spec[0].shape.as_list() == [5 if drop_remainder else None, 32, 32, 3]
    for _ in range(2):
        expected, got = _epoch(one.dataset), _epoch(several.dataset)
        assert [len(x) for x, _ in got] == [5] * 4 + ([] if drop_remainder else [4])
        for (ex, ey), (gx, gy) in zip(expected, got, strict=True):
            np.testing.assert_array_equal(gx, ex)
            np.testing.assert_array_equal(gy, ey)
    assert several.batch_calls.started < one.batch_calls.started
    assert int(several.dataset.cardinality()) == int(one.dataset.cardinality()) == len(got)


def test_default_batches_per_call_amortizes_small_batches_only() -> None:
    from pipelines.tfdata import MAX_BATCHES_PER_CALL, default_batches_per_call

    assert default_batches_per_call(64, (32, 32), 50_000, parallel=2) == 10  # ~2 MiB of 32 px images per call
    assert default_batches_per_call(64, (224, 224), 50_000, parallel=2) == 1
    assert default_batches_per_call(8, (16, 16), 10**6, parallel=2) == MAX_BATCHES_PER_CALL
    assert default_batches_per_call(64, (32, 32), 2_000, parallel=16) == 1  # an epoch of 32 batches keeps 16 calls busy
    assert default_batches_per_call(64, (32, 32), 10, parallel=1) == 1


def test_cache_gives_the_same_images_as_decoding(folder_dataset: Path) -> None:
    images = from_folder(folder_dataset)
    cache, check = decode_all(images.paths, (32, 32))
    assert check.num_bad == 0 and cache.shape == (len(images), 32, 32, 3)
    plain = _epoch(make_dataset(images, (32, 32), 6, transform=build_transform("none", (32, 32))).dataset)
    cached = _epoch(make_dataset(images, (32, 32), 6, transform=build_transform("none", (32, 32)), cache=cache).dataset)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(plain, cached, strict=True))


def test_unlabeled_set_yields_images_only_in_order(csv_dataset: Path) -> None:
    images = unlabeled_folder(csv_dataset / "test")
    dataset = make_dataset(images, (16, 16), 4, transform=build_transform("none", (16, 16)), drop_remainder=False).dataset
    batches = [x.numpy() for x in dataset]
    assert [len(b) for b in batches] == [4, 2]


def test_augmentation_with_wrong_output_size_is_a_clear_error(folder_dataset: Path) -> None:
    import albumentations as A

    images = from_folder(folder_dataset)
    dataset = make_dataset(images, (32, 32), 4, transform=A.Compose([A.Resize(20, 20)])).dataset
    with pytest.raises(Exception, match="end the augmentation pipeline at the model's input size"):
        next(iter(dataset))


def test_drop_remainder_gives_static_batch_size(folder_dataset: Path) -> None:
    images = from_folder(folder_dataset)
    dataset = make_dataset(images, (32, 32), 5, transform=build_transform("none", (32, 32)), drop_remainder=True).dataset
    assert dataset.element_spec[0].shape.as_list() == [5, 32, 32, 3]
    assert sum(1 for _ in dataset) == len(images) // 5


def test_bad_arguments(folder_dataset: Path) -> None:
    images = from_folder(folder_dataset)
    with pytest.raises(ValueError, match="batch_size"):
        make_dataset(images, (32, 32), 0)
    with pytest.raises(ValueError, match="cache holds 2 images"):
        make_dataset(images, (32, 32), 4, cache=np.zeros((2, 32, 32, 3), np.uint8))


def test_abandoning_a_dataset_stops_its_batch_calls_and_waits_for_them(folder_dataset: Path) -> None:
    images = from_folder(folder_dataset)
    broken = images.subset(range(len(images)))
    Path(broken.paths[5]).write_bytes(b"")  # the second batch of 4 holds an empty file
    pipeline = make_dataset(broken, (16, 16), 4)
    with pytest.raises(tf.errors.InvalidArgumentError, match="empty"):
        _epoch(pipeline.dataset)
    calls = pipeline.batch_calls
    assert not calls.stopped and calls(np.array([0, 1]), np.array(0)).any()  # an error alone never blanks a batch
    pipeline.abandon()
    assert calls.stopped and calls.running == 0
    assert not calls(np.array([0, 1]), np.array(0)).any()  # abandoned: calls return at once, without decoding


def test_a_pipeline_used_with_with_raises_the_images_own_error(folder_dataset: Path) -> None:
    """An image failing mid-epoch reaches the reader wrapped in TensorFlow's error; the `with` block gives it back as
    the DataError the batch raised (what the CLI prints in one line), and leaves no batch call running."""
    images = from_folder(folder_dataset)
    broken = images.subset(range(len(images)))
    Path(broken.paths[5]).write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"_\d\.png: the file is empty") as raised, make_dataset(broken, (16, 16), 4) as pipeline:
        _epoch(pipeline.dataset)
    assert isinstance(raised.value.__cause__, tf.errors.InvalidArgumentError)
    assert pipeline.batch_calls.stopped and pipeline.batch_calls.running == 0 and pipeline.user_error is raised.value
