"""Pretrained Keras Applications backbones with a classification head, and what each one needs to know.

Every entry records its `preprocess_input`, native input size and block structure (like fastai's model metadata),
so that the pipeline can stay uint8, the backbone's own preprocessing runs inside the model (written with built-in
layers, so a saved model loads in plain Keras), and fine-tuning can unfreeze "the top K blocks" whatever the family.

    model = make_backbone_model("resnet50", input_shape=(224, 224, 3), num_classes=10, weights="imagenet")
    freeze_backbone(model)                      # stage 1: train the head
    unfreeze_model(model, blocks=3)             # stage 2: top 3 residual units trainable, BN stays frozen
"""

from __future__ import annotations

import os
import re
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from keras import layers, ops

from app.config import ConfigError

MIN_SIZE = 32  # Keras Applications without their top accept nothing smaller (Xception: 71)
POOLED = "avg_pool"  # the layer whose output is the backbone's pooled features: the head's input


@dataclass(frozen=True)
class BackboneSpec:
    """What the registry knows about one Keras Applications architecture."""

    name: str  # canonical registry name, e.g. "resnet50v2"
    family: str  # a key of PREPROCESS_MODES: vgg | resnet | resnet_v2 | efficientnet | ... | densenet
    constructor: Callable[..., keras.Model]
    preprocess_input: Callable  # keras.applications.<family>.preprocess_input: float RGB 0-255 in
    native_size: int  # input size the ImageNet weights were trained at
    block_pattern: str  # regex whose group 1, matched on a layer name, names the block the layer belongs to
    min_size: int = MIN_SIZE  # smallest input side the architecture accepts without its top


_APPS = keras.applications
# What each family's preprocess_input does to float RGB 0-255 (keras.applications.imagenet_utils): "caffe" turns it
# into BGR minus the ImageNet mean, "tf" scales it to [-1, 1], "torch" to [0, 1] then standardizes by the ImageNet
# mean and deviation per channel, "none" passes it on (EfficientNets, MobileNetV3 and ConvNeXt rescale inside).
PREPROCESS_MODES = {
    "vgg": "caffe",
    "resnet": "caffe",
    "resnet_v2": "tf",
    "efficientnet": "none",
    "efficientnet_v2": "none",
    "xception": "tf",
    "mobilenet_v2": "tf",
    "mobilenet_v3": "none",
    "convnext": "none",
    "densenet": "torch",
}
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
TORCH_MEAN_RGB = (0.485, 0.456, 0.406)
TORCH_STD_RGB = (0.229, 0.224, 0.225)
_BLOCKS = {
    "vgg": r"^(block\d+)_",
    "resnet": r"^(conv\d+_block\d+)_",
    "resnet_v2": r"^(conv\d+_block\d+)_",
    "efficientnet": r"^(block\d+[a-z])_",
    "efficientnet_v2": r"^(block\d+[a-z])_",
    "xception": r"^(block\d+)_",  # entry flow block1-4, middle flow 5-12, exit flow 13-14
    "mobilenet_v2": r"^(expanded_conv|block_\d+)_",  # inverted residual blocks 0 (expanded_conv) to 16
    "mobilenet_v3": r"^(expanded_conv(?:_\d+)?)_",
    "convnext": r"^convnext\w*?_(stage_\d+_block_\d+)_",
    "densenet": r"^(conv\d+_block\d+)_",  # dense layers; each transition (pool2_conv, ...) stays with the block before
}


def _spec(constructor: Callable, family: str, module: object, size: int, min_size: int = MIN_SIZE) -> BackboneSpec:
    return BackboneSpec(constructor.__name__.lower(), family, constructor, module.preprocess_input, size, _BLOCKS[family], min_size)


BACKBONES: dict[str, BackboneSpec] = {
    s.name: s
    for s in [
        _spec(_APPS.VGG16, "vgg", _APPS.vgg16, 224),
        _spec(_APPS.VGG19, "vgg", _APPS.vgg19, 224),
        _spec(_APPS.ResNet50, "resnet", _APPS.resnet, 224),
        _spec(_APPS.ResNet101, "resnet", _APPS.resnet, 224),
        _spec(_APPS.ResNet152, "resnet", _APPS.resnet, 224),
        _spec(_APPS.ResNet50V2, "resnet_v2", _APPS.resnet_v2, 224),
        _spec(_APPS.ResNet101V2, "resnet_v2", _APPS.resnet_v2, 224),
        _spec(_APPS.ResNet152V2, "resnet_v2", _APPS.resnet_v2, 224),
        _spec(_APPS.EfficientNetB0, "efficientnet", _APPS.efficientnet, 224),
        _spec(_APPS.EfficientNetB1, "efficientnet", _APPS.efficientnet, 240),
        _spec(_APPS.EfficientNetB2, "efficientnet", _APPS.efficientnet, 260),
        _spec(_APPS.EfficientNetB3, "efficientnet", _APPS.efficientnet, 300),
        _spec(_APPS.EfficientNetB4, "efficientnet", _APPS.efficientnet, 380),
        _spec(_APPS.EfficientNetB5, "efficientnet", _APPS.efficientnet, 456),
        _spec(_APPS.EfficientNetB6, "efficientnet", _APPS.efficientnet, 528),
        _spec(_APPS.EfficientNetB7, "efficientnet", _APPS.efficientnet, 600),
        _spec(_APPS.EfficientNetV2B0, "efficientnet_v2", _APPS.efficientnet_v2, 224),
        _spec(_APPS.EfficientNetV2B1, "efficientnet_v2", _APPS.efficientnet_v2, 240),
        _spec(_APPS.EfficientNetV2B2, "efficientnet_v2", _APPS.efficientnet_v2, 260),
        _spec(_APPS.EfficientNetV2B3, "efficientnet_v2", _APPS.efficientnet_v2, 300),
        _spec(_APPS.EfficientNetV2S, "efficientnet_v2", _APPS.efficientnet_v2, 384),
        _spec(_APPS.EfficientNetV2M, "efficientnet_v2", _APPS.efficientnet_v2, 480),
        _spec(_APPS.EfficientNetV2L, "efficientnet_v2", _APPS.efficientnet_v2, 480),
        _spec(_APPS.Xception, "xception", _APPS.xception, 299, min_size=71),
        _spec(_APPS.MobileNetV2, "mobilenet_v2", _APPS.mobilenet_v2, 224),
        _spec(_APPS.MobileNetV3Small, "mobilenet_v3", _APPS.mobilenet_v3, 224),
        _spec(_APPS.MobileNetV3Large, "mobilenet_v3", _APPS.mobilenet_v3, 224),
        _spec(_APPS.ConvNeXtTiny, "convnext", _APPS.convnext, 224),
        _spec(_APPS.DenseNet121, "densenet", _APPS.densenet, 224),
    ]
}


def canonical_name(name: str) -> str:
    """Registry key for a user-written name: `ResNet50V2`, `resnet50_v2` and `resnet50-v2` all mean `resnet50v2`."""
    return re.sub(r"[\s_-]", "", name).lower()


def get_spec(name: str) -> BackboneSpec:
    key = canonical_name(name)
    if key not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}. Fix: use one of {', '.join(BACKBONES)}")
    return BACKBONES[key]


def preprocess_layers(name: str) -> list[layers.Layer]:
    """The backbone's `preprocess_input` for uint8 RGB images, as built-in Keras layers to apply in order.

    Built-in layers rather than a custom one, so that a saved model loads in any Keras, with nothing of this toolkit
    installed. `Rescaling` casts to float (and does the scaling or the mean); caffe's RGB -> BGR swap is a frozen
    1x1 convolution whose kernel is the channel permutation (exact: each output is one input times 1)."""
    mode = PREPROCESS_MODES[get_spec(name).family]
    if mode == "tf":
        return [layers.Rescaling(1 / 127.5, offset=-1.0, name="preprocess")]
    if mode == "none":
        return [layers.Rescaling(1.0, name="preprocess")]
    if mode == "torch":
        scale = [1 / (255.0 * s) for s in TORCH_STD_RGB]
        return [layers.Rescaling(scale, offset=[-m / s for m, s in zip(TORCH_MEAN_RGB, TORCH_STD_RGB)], name="preprocess")]
    mean_rgb = [-m for m in reversed(CAFFE_MEAN_BGR)]
    to_bgr = layers.Conv2D(3, 1, use_bias=False, trainable=False, name="rgb_to_bgr")
    to_bgr.build((None, None, None, 3))
    to_bgr.kernel.assign(np.eye(3, dtype="float32")[::-1].reshape(1, 1, 3, 3))
    return [layers.Rescaling(1.0, offset=mean_rgb, name="preprocess"), to_bgr]


@keras.saving.register_keras_serializable(package="imgclf")
class BackbonePreprocess(layers.Layer):
    """Legacy: models saved before `preprocess_layers` hold this layer. It stays registered so that their runs still
    load here; `portable_model` (app/models/portable.py) replaces it by built-in layers for use elsewhere."""

    def __init__(self, backbone: str, **kwargs):
        super().__init__(**kwargs)
        self.backbone = canonical_name(backbone)
        self._preprocess = get_spec(self.backbone).preprocess_input

    def call(self, images):
        return self._preprocess(ops.cast(images, self.compute_dtype))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "backbone": self.backbone}


def _download_hint(exc: Exception, spec: BackboneSpec) -> str:
    """One line for a failed ImageNet download: which file to put where, or which option to pass instead."""
    match = re.search(r"URL fetch failure on (\S+?):(?:\s|$)", str(exc))  # the URL, not its "https" before "://"
    url = match.group(1) if match else None
    cache = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"
    where = f"download {url} elsewhere and place it in {cache}/ (Keras' cache; KERAS_HOME moves it)" if url else f"place the weights file in {cache}/"
    return (
        f"could not download the ImageNet weights of {spec.name} ({exc}). Fix: {where}, "
        f"or set model.weights to a local weights file (.h5, .weights.h5, .keras), or model.weights=null to train from scratch."
    )


def _weights_error(path: Path, spec: BackboneSpec, detail: str) -> ValueError:
    return ValueError(
        f"{path}: these weights do not fit {spec.name} ({detail}). Fix: pass a weights file saved from a {spec.name} "
        f"backbone (or a model of this toolkit built on {spec.name}), or set model.name to the architecture the file was saved from."
    )


def _load_local_weights(backbone: keras.Model, path: Path, spec: BackboneSpec) -> None:
    """Load a `.h5`/`.weights.h5` file, or the backbone inside a `.keras` model, into `backbone`; check they fit."""
    if not path.is_file():
        raise ConfigError(f"{path}: weights file not found. Fix: set model.weights to an existing file, imagenet, or null.")
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".weights.h5") else path.suffix
    if suffix not in (".h5", ".weights.h5", ".keras"):
        raise ConfigError(f"{path}: unsupported weights file type. Fix: pass a .h5, .weights.h5 or .keras file.")
    if suffix == ".keras":
        saved = keras.saving.load_model(path, compile=False, safe_mode=True)
        inner = find_backbone(saved)  # a model of this toolkit: take its backbone; else the file is a backbone
        source = inner if inner is not None else saved
        ours, theirs = [tuple(w.shape) for w in backbone.weights], [tuple(w.shape) for w in source.weights]
        if ours != theirs:
            raise _weights_error(path, spec, f"it holds {len(theirs)} weight tensors of other shapes than the {len(ours)} expected")
        backbone.set_weights(source.get_weights())
        return
    try:
        with warnings.catch_warnings():  # a mismatch also warns per skipped container; our error says it once
            warnings.simplefilter("ignore", UserWarning)
            backbone.load_weights(str(path))
    except ValueError as exc:
        raise _weights_error(path, spec, str(exc).splitlines()[0]) from None


def size_problem(name: str, height: int, width: int | None = None) -> str | None:
    """Why backbone `name` cannot take inputs of this size, or None: what the build, the config check at load and
    the tuner's proposal check all ask."""
    spec = get_spec(name)
    width = height if width is None else width
    if min(height, width) >= spec.min_size:
        return None
    return (
        f"{spec.name} needs inputs of at least {spec.min_size}x{spec.min_size} pixels, got {height}x{width}. "
        f"Fix: raise data.image_size (its ImageNet weights were trained at {spec.native_size})."
    )


def make_backbone(name: str, input_shape: tuple[int, int, int], weights: str | os.PathLike | None = "imagenet") -> keras.Model:
    """The Keras Applications model `name` without its top, with `weights`: "imagenet", a local file, or None."""
    spec = get_spec(name)
    height, width, channels = input_shape
    problem = size_problem(name, height, width)
    if problem:
        raise ConfigError(problem)
    if channels != 3:
        raise ConfigError(f"{spec.name} takes RGB images (3 channels), got {channels}")
    kwargs = {"include_top": False, "input_shape": tuple(input_shape)}
    if spec.family == "mobilenet_v2":  # it names itself by width and size ("mobilenetv2_1.00_224"); blocks are found by name
        kwargs["name"] = spec.name
    if weights == "imagenet":
        try:
            return spec.constructor(weights="imagenet", **kwargs)
        except Exception as exc:  # Keras raises a bare Exception for a failed download
            if "URL fetch failure" not in str(exc):
                raise
            raise ConfigError(_download_hint(exc, spec)) from None
    backbone = spec.constructor(weights=None, **kwargs)
    if weights is not None:
        _load_local_weights(backbone, Path(weights), spec)
    else:
        _settle_batchnorm(backbone)
    return backbone


def _settle_batchnorm(backbone: keras.Model, momentum: float = 0.9) -> None:
    """From scratch, BN moving statistics at Keras' momentum 0.99 need hundreds of steps to leave their initial
    values, so short runs validate at chance (measured: EfficientNetB0, digits at 32 px, 4 epochs: train accuracy
    0.90, validation 0.10). 0.9 settles within tens of steps, as in the baseline CNN. Pretrained weights keep 0.99."""
    for layer in backbone.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = momentum


def make_backbone_model(
    name: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    multilabel: bool = False,
    weights: str | os.PathLike | None = "imagenet",
    dropout: float = 0.2,
) -> keras.Model:
    """uint8 image -> backbone preprocessing (`preprocess_layers`) -> backbone -> global average pool -> dropout -> dense.

    The backbone is a nested model (its own name, e.g. "resnet50"); the head layers have stable names (`avg_pool`,
    `head_dropout`, `predictions`). No BatchNormalization in the head, as in keras-io's transfer-learning guide:
    standardized features made the dense layer learn fast and predict overconfidently (Xception at 128 px, hold-out
    log-loss 0.470 with it against 0.336 without on hymenoptera, 2.152 against 2.008 on the dog-breed sample:
    benchmarks/README.md). The output layer computes in float32 so the model also trains under a mixed-precision
    policy."""
    spec = get_spec(name)
    backbone = make_backbone(spec.name, input_shape, weights)
    inputs = keras.Input(shape=input_shape, dtype="uint8", name="image")
    x = inputs
    for layer in preprocess_layers(spec.name):
        x = layer(x)
    x = backbone(x)
    x = layers.GlobalAveragePooling2D(name=POOLED)(x)
    x = layers.Dropout(dropout, name="head_dropout")(x)
    outputs = layers.Dense(num_classes, activation="sigmoid" if multilabel else "softmax", dtype="float32", name="predictions")(x)
    return keras.Model(inputs, outputs, name=spec.name)


def split_at_features(model: keras.Model) -> tuple[keras.Model, keras.Model]:
    """(image -> pooled features, pooled features -> prediction): two models over `model`'s own layers, weights
    shared, so that training the head model trains `model`'s head. `whole_model(head)` gives `model` back."""
    pooled = model.get_layer(POOLED)
    extractor = keras.Model(model.inputs, pooled.output, name=f"{model.name}_features")
    features = keras.Input(shape=tuple(pooled.output.shape[1:]), name="features")
    x = features
    for layer in model.layers[model.layers.index(pooled) + 1 :]:  # the head is a chain of layers
        x = layer(x)
    head = keras.Model(features, x, name=f"{model.name}_head")
    head._whole_model = weakref.ref(model)  # a weak reference: Keras would track a model attribute as a sub-layer
    return extractor, head


def whole_model(fitted: keras.Model) -> keras.Model:
    """The image model that a fit trains: `fitted` itself, or the model a head of `split_at_features` belongs to.
    What a callback saves or restores, whichever of the two `fit` was called on."""
    ref = getattr(fitted, "_whole_model", None)
    return fitted if ref is None else ref()


def find_backbone(model: keras.Model) -> keras.Model | None:
    """The nested backbone model inside `model`, or None for a model without one (the baseline CNN)."""
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    return nested[0] if len(nested) == 1 else None


def describe_blocks(name: str) -> tuple[str, list[tuple[str, int]]]:
    """(canonical name, [(block, number of layers)]) of a registered backbone, built at its native size without
    weights: what finetune.unfreeze_blocks counts (`imgclf models --blocks NAME`)."""
    spec = get_spec(name)
    backbone = make_backbone(spec.name, (spec.native_size, spec.native_size, 3), weights=None)
    return spec.name, [(block, len(layers)) for block, layers in backbone_blocks(backbone)]


def backbone_blocks(backbone: keras.Model) -> list[tuple[str, list[keras.layers.Layer]]]:
    """The backbone's layers grouped into named blocks, input to output: `stem`, the architecture's own blocks
    (VGG `block3`, ResNet `conv4_block2`, EfficientNet `block5c`), then `top` for the layers after the last block.
    A layer between two blocks that matches neither stays with the block before it."""
    spec = BACKBONES.get(canonical_name(backbone.name))
    pattern = re.compile(spec.block_pattern if spec else r"^(block\d+[a-z]?|conv\d+_block\d+)_")
    matches = [pattern.match(layer.name) for layer in backbone.layers]
    last_block = max((i for i, m in enumerate(matches) if m), default=-1)
    groups: list[tuple[str, list[keras.layers.Layer]]] = [("stem", [])]
    for i, (layer, match) in enumerate(zip(backbone.layers, matches)):
        name = match.group(1) if match else ("top" if i > last_block >= 0 else groups[-1][0])
        if name != groups[-1][0]:
            groups.append((name, []))
        groups[-1][1].append(layer)
    return [g for g in groups if g[1]]


def freeze_backbone(model: keras.Model) -> None:
    """Stage 1: the whole backbone frozen (BN in inference mode); only the head trains."""
    backbone = find_backbone(model)
    if backbone is None:
        raise ConfigError(f"model {model.name!r} has no pretrained backbone to freeze")
    backbone.trainable = False


def unfreeze_model(model: keras.Model, blocks: int | None = None, num_layers: int | None = None) -> list[str]:
    """Stage 2: make the top `blocks` blocks, or the top `num_layers` layers, of the backbone trainable (all when both
    are None). BatchNormalization layers stay frozen, so they keep running in inference mode with their ImageNet
    statistics (the keras.io fine-tuning recipe). Returns the names of the layers made trainable."""
    backbone = find_backbone(model)
    if backbone is None:
        raise ConfigError(f"model {model.name!r} has no pretrained backbone to unfreeze. Fix: set finetune.epochs=0 for the baseline CNN.")
    if blocks is not None and num_layers is not None:
        raise ConfigError("set finetune.unfreeze_blocks or finetune.unfreeze_layers, not both")
    all_layers = backbone.layers
    if blocks is not None:
        groups = backbone_blocks(backbone)
        if not 1 <= blocks <= len(groups):
            raise ConfigError(
                f"cannot unfreeze {blocks} blocks: {backbone.name} has {len(groups)} ({groups[0][0]}, {groups[1][0]}, ..., {groups[-1][0]}). "
                f"Fix: set finetune.unfreeze_blocks between 1 and {len(groups)}, or leave it unset to unfreeze everything."
            )
        selected = [layer for _, group in groups[-blocks:] for layer in group]
    elif num_layers is not None:
        if not 1 <= num_layers <= len(all_layers):
            raise ConfigError(
                f"cannot unfreeze {num_layers} layers: {backbone.name} has {len(all_layers)}. "
                f"Fix: set finetune.unfreeze_layers between 1 and {len(all_layers)}, or leave it unset to unfreeze everything."
            )
        selected = all_layers[-num_layers:]
    else:
        selected = all_layers
    chosen = {id(layer) for layer in selected}
    backbone.trainable = True
    unfrozen = []
    for layer in all_layers:
        layer.trainable = id(layer) in chosen and not isinstance(layer, layers.BatchNormalization)
        if layer.trainable and layer.weights:
            unfrozen.append(layer.name)
    return unfrozen
