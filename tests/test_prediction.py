"""The one prediction path: test-time augmentation, ensembles of runs, one decode rule for cache and files."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pytest
from PIL import Image

from app.config import Config, load_config
from app.data import load_test, load_train_val, make_tf_dataset
from app.inference.prediction import predict_images, predict_probs
from app.models import create_model
from app.runs import Run
from pipelines.augment import build_tta
from pipelines.errors import DataError
from pipelines.sources import unlabeled_folder
from pipelines.tfdata import decode_all


def tiny_run(config: Config, path: Path, seed: int = 0, class_names: tuple[str, ...] = ("cat", "dog", "fox"), multilabel: bool = False) -> Run:
    """An untrained (random, seeded) tiny model: prediction does not need a trained one."""
    import keras

    keras.utils.set_random_seed(seed)
    size = config.data.image_size
    model = create_model("baseline_cnn", input_shape=(size, size, 3), num_classes=len(class_names), blocks=[[4, 3, 1], [8, 3, 1]])
    return Run(path, config, model, list(class_names), multilabel)


@pytest.fixture
def images(tiny_config: Config):
    return load_train_val(tiny_config.data, tiny_config.seed)[0]


def test_identity_tta_changes_nothing(tiny_config: Config, images, tmp_path: Path) -> None:
    run = tiny_run(tiny_config, tmp_path)
    plain = predict_probs(run.model, images, tiny_config, verbose=0)
    same = predict_probs(run.model, images, tiny_config, verbose=0, tta="none", passes=3)
    np.testing.assert_allclose(same, plain, rtol=0, atol=1e-12)


def test_flip_tta_averages_the_plain_and_the_mirrored_image(tiny_config: Config, images, tmp_path: Path) -> None:
    run = tiny_run(tiny_config, tmp_path)
    plain = predict_probs(run.model, images, tiny_config, verbose=0)
    mirror = dataclasses.replace(
        tiny_config,
        augment=dataclasses.replace(
            tiny_config.augment, eval=str(_saved(tmp_path, A.Compose([A.Resize(32, 32, interpolation=cv2.INTER_AREA), A.HorizontalFlip(p=1.0)])))
        ),
    )
    mirrored = predict_probs(run.model, images, mirror, verbose=0)
    assert np.abs(mirrored - plain).max() > 1e-4, "a random network is not mirror-symmetric: the check below must be able to fail"
    flipped = predict_probs(run.model, images, tiny_config, verbose=0, tta="flip")
    np.testing.assert_allclose(flipped, (plain + mirrored) / 2, atol=1e-6)


def test_random_tta_is_repeatable(tiny_config: Config, images, tmp_path: Path) -> None:
    run = tiny_run(tiny_config, tmp_path)
    first = predict_probs(run.model, images, tiny_config, verbose=0, tta="flip+crops", passes=3)
    again = predict_probs(run.model, images, tiny_config, verbose=0, tta="flip+crops", passes=3)
    np.testing.assert_array_equal(first, again)


def test_tta_from_the_config(tiny_config: Config, images, tmp_path: Path) -> None:
    run = tiny_run(tiny_config, tmp_path)
    configured = dataclasses.replace(tiny_config, augment=dataclasses.replace(tiny_config.augment, tta="flip"))
    np.testing.assert_array_equal(predict_probs(run.model, images, configured, verbose=0), predict_probs(run.model, images, tiny_config, verbose=0, tta="flip"))


@pytest.mark.parametrize(
    "spec, message",
    [
        (A.Compose([A.CenterCrop(16, 16)]), "turns a 32x32 image into 16x16"),
        ("mirror", "unknown test-time augmentation 'mirror'"),
    ],
)
def test_a_bad_tta_is_one_clear_error(spec, message: str) -> None:
    with pytest.raises(DataError, match=message):
        build_tta(spec, (32, 32))


def test_tta_passes_must_be_positive() -> None:
    with pytest.raises(DataError, match="passes 0"):
        build_tta("flip", (32, 32), passes=0)
    with pytest.raises(ValueError, match="augment.tta_passes"):
        load_config(overrides=["augment.tta_passes=0"])


def test_two_copies_of_one_model_average_to_the_model(tiny_config: Config, images, tmp_path: Path) -> None:
    run = tiny_run(tiny_config, tmp_path)
    copy = dataclasses.replace(run, path=tmp_path / "copy")
    _, alone = predict_images(run, images)
    _, pair = predict_images([run, copy], images)
    np.testing.assert_allclose(pair, alone, atol=1e-12)


def test_weights_choose_the_mix(tiny_config: Config, images, tmp_path: Path) -> None:
    first, second = tiny_run(tiny_config, tmp_path / "a", seed=1), tiny_run(tiny_config, tmp_path / "b", seed=2)
    _, p1 = predict_images(first, images)
    _, p2 = predict_images(second, images)
    _, mixed = predict_images([first, second], images, weights=[3, 1])
    np.testing.assert_allclose(mixed, 0.75 * p1 + 0.25 * p2, atol=1e-12)
    with pytest.raises(DataError, match="expected 2 non-negative numbers"):
        predict_images([first, second], images, weights=[1])


def test_models_of_other_classes_are_refused(tiny_config: Config, images, tmp_path: Path) -> None:
    run = tiny_run(tiny_config, tmp_path / "a")
    other = tiny_run(tiny_config, tmp_path / "b", class_names=("cat", "dog", "owl"))
    with pytest.raises(DataError, match="different class list"):
        predict_images([run, other], images)
    multi = tiny_run(tiny_config, tmp_path / "c", multilabel=True)
    with pytest.raises(DataError, match="different label mode"):
        predict_images([run, multi], images)


def test_members_with_other_image_sizes_each_predict_at_their_own(tiny_config: Config, images, tmp_path: Path) -> None:
    small = dataclasses.replace(tiny_config, data=dataclasses.replace(tiny_config.data, image_size=24))
    a, b = tiny_run(tiny_config, tmp_path / "a"), tiny_run(small, tmp_path / "b")
    _, both = predict_images([a, b], images)
    np.testing.assert_allclose(both, (predict_images(a, images)[1] + predict_images(b, images)[1]) / 2, atol=1e-12)


def test_cache_and_files_give_the_same_pixels(tmp_path: Path) -> None:
    """One decode rule: a large JPEG (decoded at reduced size) reaches the model identically with or without the cache."""
    rng = np.random.default_rng(0)
    for k in range(3):
        pixels = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
        Image.fromarray(pixels).resize((640, 480)).save(tmp_path / f"big{k}.jpg", quality=90)
    images = unlabeled_folder(tmp_path)
    config = load_config(overrides=["data.image_size=48"])
    cache, _ = decode_all(images.paths, (48, 48))
    from_files = np.concatenate([b.numpy() for b in make_tf_dataset(images, config.data, "none", training=False, seed=0).dataset])
    from_cache = np.concatenate([b.numpy() for b in make_tf_dataset(images, config.data, "none", training=False, seed=0, cache=cache).dataset])
    np.testing.assert_array_equal(from_cache, from_files)


def test_another_sample_submission_reads_the_test_folder_beside_it(csv_dataset: Path, tmp_path: Path) -> None:
    """data.test_images belongs to data.test: `predict --test other.csv` reads other.csv's own test/ folder."""
    other = tmp_path / "other"
    (other / "test").mkdir(parents=True)
    for name in ("t00.jpg", "t01.jpg"):
        (other / "test" / name).write_bytes((csv_dataset / "test" / name).read_bytes())
    (other / "sample_submission.csv").write_text("id,cat,dog,fox\nt00,0,0,0\nt01,0,0,0\n")
    config = load_config(overrides=[f"data.test={csv_dataset / 'sample_submission.csv'}", f"data.test_images={csv_dataset / 'test'}"])
    test = load_test(config.data, str(other / "sample_submission.csv"))
    assert [Path(p).parent for p in test.paths] == [other / "test"] * 2
    assert Path(load_test(config.data).paths[0]).parent == csv_dataset / "test"


def _saved(tmp_path: Path, transform: A.BaseCompose) -> Path:
    path = tmp_path / "mirror.yaml"
    A.save(transform, str(path), data_format="yaml")
    return path
