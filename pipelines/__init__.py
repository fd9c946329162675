"""Input pipelines: data sources, image decoding, Albumentations augmentation and tf.data.

This package knows nothing about models. It must be imported before Albumentations so that
Albumentations does not contact the package index at import time.
"""

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def __getattr__(name: str):  # `pipelines.make_dataset`, imported on first use (it starts TensorFlow)
    if name == "make_dataset":
        from pipelines.tfdata import make_dataset

        return make_dataset
    raise AttributeError(f"module 'pipelines' has no attribute {name!r}")
