"""Model registry: `create_model(name, ...)` builds any registered architecture, `list_models()` names them.

    create_model("baseline_cnn", input_shape=(64, 64, 3), num_classes=10, blocks=[[32, 3, 1], [64, 3, 2]])
    create_model("efficientnetb0", input_shape=(224, 224, 3), num_classes=10, weights="imagenet")

Every model takes uint8 images; normalization (or the backbone's own `preprocess_input`) happens inside it.
"""

from __future__ import annotations

import os
from typing import Any

import keras

from app.config import ConfigError
from app.models.backbones import BACKBONES, canonical_name, make_backbone_model
from app.models.baseline import make_baseline_cnn

BASELINE = "baseline_cnn"


def list_models() -> list[str]:
    """`baseline_cnn`, then the backbones in registry order (VGG, ResNet, ResNetV2, EfficientNet, EfficientNetV2)."""
    return [BASELINE, *BACKBONES]


def is_backbone(name: str) -> bool:
    return canonical_name(name) in BACKBONES


def create_model(
    name: str,
    *,
    input_shape: tuple[int, int, int],
    num_classes: int,
    multilabel: bool = False,
    weights: str | os.PathLike | None = None,
    dropout: float = 0.3,
    blocks: Any = None,
) -> keras.Model:
    """Build model `name` for uint8 images of `input_shape`.

    `weights`: for backbones "imagenet", a local file or None; for the baseline a local file or None.
    `blocks` configures the baseline CNN only."""
    if canonical_name(name) == canonical_name(BASELINE):
        model = make_baseline_cnn(input_shape, num_classes, multilabel, dropout=dropout, **({"blocks": blocks} if blocks is not None else {}))
        if weights not in (None, "imagenet"):
            _load_baseline_weights(model, weights)
        return model
    if is_backbone(name):
        return make_backbone_model(name, input_shape, num_classes, multilabel, weights=weights, dropout=dropout)
    raise ConfigError(f"unknown model {name!r}. Fix: set model.name to one of {', '.join(list_models())}")


def _load_baseline_weights(model: keras.Model, weights: str | os.PathLike) -> None:
    """Warm-start the baseline from a .weights.h5 or .keras file of the same architecture."""
    try:
        if str(weights).endswith(".keras"):
            model.set_weights(keras.saving.load_model(weights, compile=False, safe_mode=True).get_weights())
        else:
            model.load_weights(weights)
    except (ValueError, OSError) as exc:
        raise ConfigError(
            f"{weights}: cannot load these weights into the baseline CNN ({str(exc).splitlines()[0]}). "
            "Fix: pass a file saved from a baseline CNN with the same blocks and classes, or set model.weights=null."
        ) from None
