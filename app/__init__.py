"""Models, training, evaluation, prediction and submissions for image classification (Keras 3).

The public API, stable across releases (the rest moves as the code does):

    from app import load_config, train, predict
    result = train(load_config("finetune", ["data.train=my_images/"]))   # a YAML file or a shipped config's name
    probabilities = predict(result.run_dir, "new_images/")               # a DataFrame: id, one column per class

Names are imported on first use, so that `import app.config` (the CLI's --help) does not start TensorFlow.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Config", "ConfigError", "load_config", "predict", "train"]

_HOMES = {"Config": "app.config", "ConfigError": "app.config", "load_config": "app.config", "train": "app.training.run", "predict": "app.inference.prediction"}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'app' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_HOMES[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
