"""Model registry: `create_model(name, ...)` builds any registered architecture, `list_models()` names them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras

from app.models.baseline import make_baseline_cnn

_REGISTRY: dict[str, Callable[..., keras.Model]] = {"baseline_cnn": make_baseline_cnn}


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def create_model(name: str, *, input_shape: tuple[int, int, int], num_classes: int, multilabel: bool = False, **kwargs: Any) -> keras.Model:
    """Build model `name` for uint8 images of `input_shape` (normalization happens inside the model)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}. Fix: set model.name to one of {', '.join(list_models())}")
    return _REGISTRY[name](input_shape=input_shape, num_classes=num_classes, multilabel=multilabel, **kwargs)
