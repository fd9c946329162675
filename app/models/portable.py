"""The model as plain Keras can load it: what a run saves, and what `imgclf export` starts from."""

from __future__ import annotations

import keras

from app.models.backbones import BackbonePreprocess, get_spec, preprocess_layers


def portable_model(model: keras.Model) -> keras.Model:
    """An uncompiled model over the same layers (no optimizer, loss or learning-rate schedule, which would need this
    toolkit's registered classes to load), loadable with `keras.saving.load_model` in a Python that has never
    imported this toolkit. Weights are shared, not copied.

    A model saved by an earlier version holds the custom `BackbonePreprocess` layer: it is replaced by the
    equivalent built-in layers (`preprocess_layers`); such models are a straight chain of layers after it."""
    legacy = [i for i, layer in enumerate(model.layers) if isinstance(layer, BackbonePreprocess)]
    if not legacy:
        return keras.Model(model.inputs, model.outputs, name=model.name)
    image = model.inputs[0]
    inputs = keras.Input(shape=tuple(image.shape[1:]), dtype=image.dtype, name=model.layers[0].name)
    x = inputs
    for layer in preprocess_layers(get_spec(model.layers[legacy[0]].backbone).name) + model.layers[legacy[0] + 1 :]:
        x = layer(x)
    return keras.Model(inputs, x, name=model.name)
