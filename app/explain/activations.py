"""What a trained model computes inside: the activations of chosen layers, and Grad-CAM heat maps.

Both run through one `inner_model(model, layers)`: image -> the chosen layers' outputs and the features the final
Dense layer reads. A backbone is a nested Keras model whose inner layers the outer graph cannot reach, so the outer
chain is called again over a sub-model of the backbone that also returns those layers (weights shared, nothing
copied). Layer names are the model's own; a backbone's inner layers may be written `<backbone>/<layer>` as in the
anatomy table, or by their bare name.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from app.models.backbones import backbone_blocks, find_backbone
from pipelines.errors import OptionError

HEAD = "predictions"  # the final Dense layer of every model here
POOLING = ("MaxPooling2D", "AveragePooling2D")


def _is_map(layer: keras.layers.Layer) -> bool:
    return len(layer.output.shape) == 4


def _inner_name(model: keras.Model, name: str) -> str:
    backbone = find_backbone(model)
    if backbone is not None and name.startswith(f"{backbone.name}/"):
        return name[len(backbone.name) + 1 :]
    return name


def find_layer(model: keras.Model, name: str) -> keras.layers.Layer:
    """The layer `name` (top-level, or inside the backbone), or a ValueError listing some that exist."""
    inner = _inner_name(model, name)
    for owner in (model, find_backbone(model)):
        if owner is not None and any(layer.name == inner for layer in owner.layers):
            return owner.get_layer(inner)
    maps = [n for n in map_layer_names(model)]
    raise OptionError(
        f"model {model.name!r} has no layer {name!r}; layers with feature maps include: {', '.join(maps[-8:])} (`imgclf explain RUN anatomy` lists all)"
    )


def map_layer_names(model: keras.Model) -> list[str]:
    """Every layer with a spatial (N, H, W, C) output, input to output, backbone layers as `<backbone>/<layer>`."""
    names = []
    for layer in model.layers[1:]:
        if isinstance(layer, keras.Model):
            names += [f"{layer.name}/{inner.name}" for inner in layer.layers[1:] if _is_map(inner)]
        elif _is_map(layer):
            names.append(layer.name)
    return names


def block_outputs(model: keras.Model) -> list[str]:
    """The default layers to look at: the last activation map of each block (before its pooling), input to output.
    Baseline blocks are `block<i>_*`; a backbone's blocks are those of `backbone_blocks` (stem, its blocks, top)."""
    backbone = find_backbone(model)
    if backbone is None:
        groups: dict[str, list[keras.layers.Layer]] = {}
        for layer in model.layers:
            match = re.match(r"^(block\d+)_", layer.name)
            if match and _is_map(layer) and type(layer).__name__ not in POOLING:
                groups.setdefault(match.group(1), []).append(layer)
        return [layers[-1].name for layers in groups.values()]
    names = []
    for _, layers in backbone_blocks(backbone):
        maps = [layer for layer in layers if _is_map(layer) and type(layer).__name__ not in POOLING]
        if maps:
            names.append(f"{backbone.name}/{maps[-1].name}")
    return names


def last_map_layer(model: keras.Model) -> str:
    """Grad-CAM's default layer: the last spatial activation before global pooling (not a pooling layer)."""
    candidates = [n for n in map_layer_names(model) if type(find_layer(model, n)).__name__ not in POOLING]
    if not candidates:
        raise OptionError(f"model {model.name!r} has no layer with a spatial output to explain")
    return candidates[-1]


def inner_model(model: keras.Model, names: Sequence[str]) -> keras.Model:
    """image -> [the output of each layer in `names`, ..., the input of the final Dense layer]."""
    head = model.get_layer(HEAD)
    backbone = find_backbone(model)
    wanted = [_inner_name(model, n) for n in names]
    for name in names:
        find_layer(model, name)  # one clear error for an unknown name
    if backbone is None:
        return keras.Model(model.inputs[0], [model.get_layer(n).output for n in wanted] + [head.input], name=f"{model.name}_inner")
    inside = [n for n in wanted if any(layer.name == n for layer in backbone.layers)]
    sub = (
        None if not inside else keras.Model(backbone.inputs, [backbone.get_layer(n).output for n in inside] + [backbone.output], name=f"{backbone.name}_inner")
    )
    found: dict[str, keras.KerasTensor] = {}
    inputs = keras.Input(shape=model.inputs[0].shape[1:], dtype=model.inputs[0].dtype, name="image")
    x = inputs
    for layer in model.layers[1:]:  # the outer chain: preprocessing, the backbone, the head
        if layer is head:
            break
        if layer is backbone and inside:
            *maps, x = sub(x)
            found.update(zip(inside, maps))
        else:
            x = layer(x)
            found[layer.name] = x
    return keras.Model(inputs, [found[n] for n in wanted] + [x], name=f"{model.name}_inner")


def _logits(model: keras.Model, features: tf.Tensor) -> tf.Tensor:
    head = model.get_layer(HEAD)
    return tf.matmul(tf.cast(features, head.kernel.dtype), head.kernel) + head.bias


def feature_maps(model: keras.Model, image: np.ndarray, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """{layer: its (h, w, channels) activations} for one uint8 (H, W, 3) image; default layers: `block_outputs`."""
    names = list(names) if names else block_outputs(model)
    outputs = inner_model(model, names)(image[None], training=False)
    return {name: np.asarray(out[0]) for name, out in zip(names, outputs[:-1])}


def gradcam(
    model: keras.Model, images: np.ndarray, classes: Sequence[int] | None = None, layer: str | None = None, batch_size: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """(heat maps (N, H, W) in [0, 1] at the images' size, probabilities (N, classes)) for uint8 images (N, H, W, 3).

    Grad-CAM (Selvaraju et al. 2017): the gradient of a class's logit with respect to `layer`'s activations (default:
    the last spatial one), averaged over positions, weighs each channel; their ReLU'd weighted sum is the map. The
    class is each image's entry of `classes`, else its most probable class."""
    name = layer or last_map_layer(model)
    explainer = inner_model(model, [name])
    multilabel = model.get_layer(HEAD).activation.__name__ == "sigmoid"
    maps, probs = [], []
    for start in range(0, len(images), batch_size):
        batch = tf.convert_to_tensor(images[start : start + batch_size])
        with tf.GradientTape() as tape:
            activations, features = explainer(batch, training=False)
            tape.watch(activations)
            logits = _logits(model, features)
            p = tf.sigmoid(logits) if multilabel else tf.nn.softmax(logits)
            chosen = (
                tf.argmax(p, axis=1, output_type=tf.int32) if classes is None else tf.constant(np.asarray(classes[start : start + batch_size], dtype=np.int32))
            )
            score = tf.gather(logits, chosen, axis=1, batch_dims=1)
        grads = tape.gradient(score, activations)
        weights = tf.reduce_mean(tf.cast(grads, tf.float32), axis=(1, 2), keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(weights * tf.cast(activations, tf.float32), axis=-1))
        cam = cam / tf.maximum(tf.reduce_max(cam, axis=(1, 2), keepdims=True), 1e-12)
        maps.append(tf.image.resize(cam[..., None], images.shape[1:3], method="bilinear")[..., 0].numpy())
        probs.append(p.numpy())
    return np.clip(np.concatenate(maps), 0.0, 1.0), np.concatenate(probs).astype(np.float64)


def upsample(activation: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A (h, w) map resized to (H, W), bilinear, for laying over the input image."""
    return tf.image.resize(np.asarray(activation, dtype=np.float32)[..., None], size, method="bilinear")[..., 0].numpy()
