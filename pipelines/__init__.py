"""Input pipelines: data sources, image decoding, Albumentations augmentation and tf.data.

This package knows nothing about models. It must be imported before Albumentations so that
Albumentations does not contact the package index at import time.
"""

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
