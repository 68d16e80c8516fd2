"""The model: a small backbone registry, the classifier built on it, and how it is saved and loaded.

A saved model is a folder with two files:
- `model.keras`: takes RGB pixels 0..255 at its input size, returns class probabilities. The
  backbone's own preprocessing is a layer inside it, so serving can never disagree with training.
- `metadata.json`: class names, input size, backbone, data, metrics and training settings, and
  once `python -m flower_demo.calibrate` has run, a "calibration" entry (see calibrate.py).
`load_model` checks that the two (and a label map, when given) agree. An exported `.tflite` file
has its own copy of metadata.json beside it (see export.py).

Every module that uses TensorFlow imports this one before it (directly or through the package), so
TensorFlow's start-up notices are kept out of the command lines' output here, once: see
`quiet_startup`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import tempfile
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flower_demo.errors import FlowerDemoError, first_line

# TensorFlow's own (tsl) logging: no INFO lines from C++ unless the user asks; warnings and errors stay.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
# What TensorFlow writes to stderr while it starts, whatever the log level: absl prints every line
# logged before absl::InitializeLog(), and the CUDA probe reports an error on a machine without a GPU.
STARTUP_NOISE = re.compile(
    r"All log messages before absl::InitializeLog|oneDNN custom operations are on|cudart_stub\.cc"
    r"|cpu_feature_guard\.cc|To enable the following instructions|rebuild TensorFlow with the appropriate"
    r"|failed call to cuInit|Unable to register cu(DNN|FFT|BLAS) factory|computation_placer\.cc"
)


@contextlib.contextmanager
def quiet_startup() -> Iterator[None]:
    """Drop TensorFlow's start-up notices from stderr; every other line (real warnings, errors) is kept.

    C++ logging writes to file descriptor 2 directly, past `sys.stderr`, so the descriptor itself is
    captured while TensorFlow loads and finds its devices, and replayed without the known notices.
    """
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all (a detached process): nothing to keep quiet
        yield
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines(keepends=True):
                if not STARTUP_NOISE.search(line):
                    sys.stderr.write(line)
            sys.stderr.flush()


with quiet_startup():
    import keras

    if keras.config.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.list_physical_devices()  # the CUDA probe logs here, once


def progress_verbosity() -> int:
    """Keras `verbose`: 1 (a live progress bar) on a terminal, 2 (one plain line per epoch) in a log."""
    return 1 if sys.stdout.isatty() else 2


REPO_ROOT = Path(__file__).resolve().parent.parent
SHIPPED_MODEL_DIR = REPO_ROOT / "weights"
SHIPPED_LABEL_MAP = REPO_ROOT / "label_map.json"
MODEL_FILE = "model.keras"
METADATA_FILE = "metadata.json"
METADATA_VERSION = 1


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
    model.name = "backbone"
    model.trainable = False
    return model


def create_model(
    backbone: str,
    num_classes: int,
    image_size: int = 224,
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
    """
    if model not in _FORWARD:
        if keras.config.backend() != "tensorflow":
            _FORWARD[model] = model.predict_on_batch
            return _FORWARD[model]
        import tensorflow as tf

        size = model.input_shape[1]
        spec = tf.TensorSpec((None, size, size, 3), tf.float32)
        _FORWARD[model] = tf.function(
            lambda x: model(x, training=False), input_signature=[spec], autograph=False
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


def backbone_of(model: keras.Model) -> keras.Layer:
    return model.get_layer("backbone")


def head_of(model: keras.Model) -> list[keras.Layer]:
    return [model.get_layer("dropout"), model.get_layer("classifier")]


# --- saving and loading ---------------------------------------------------------------------


def save_model(model: keras.Model, folder: str | os.PathLike, metadata: dict[str, Any]) -> Path:
    """Write `model.keras` and `metadata.json` into `folder` (created if needed)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / MODEL_FILE)
    metadata = {"format_version": METADATA_VERSION, **metadata}
    (folder / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    return folder


def _model_dir(path: str | os.PathLike | None) -> Path:
    path = Path(path) if path is not None else SHIPPED_MODEL_DIR
    return path.parent if path.suffix in (".keras", ".tflite") else path


def metadata_path(path: str | os.PathLike | None = None) -> Path:
    """Where the metadata of the model folder (or .keras / exported .tflite file) at `path` lives."""
    return _model_dir(path) / METADATA_FILE


def _read_json(path: Path, what: str) -> Any:
    """Parsed JSON of `path`, or a FlowerDemoError naming `what` is missing or unreadable."""
    if not path.is_file():
        raise FlowerDemoError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise FlowerDemoError(f"{what} {path} is not valid JSON: {exc}") from None


def read_metadata(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """The metadata of the model folder (or .keras file) at `path`; the shipped one by default."""
    meta_path = metadata_path(path)
    metadata = _read_json(meta_path, "model metadata")
    for key in ("class_names", "image_size", "backbone"):
        if key not in metadata:
            raise FlowerDemoError(f"model metadata {meta_path} lacks {key!r}")
    return metadata


def load_model(
    path: str | os.PathLike | None = None,
) -> tuple[keras.Model, dict[str, Any]]:
    """Load a saved model folder (or its .keras file) and check it against its metadata."""
    folder = _model_dir(path)
    model_path = folder / MODEL_FILE
    if not model_path.is_file():
        raise FlowerDemoError(f"model file not found: {model_path}")
    metadata = read_metadata(folder)
    try:
        model = keras.saving.load_model(model_path, compile=False)
    except Exception as exc:  # Keras raises many types for a broken file
        reason = first_line(exc)
        raise FlowerDemoError(f"cannot load model {model_path}: {reason}") from None
    check_against_metadata(model_path, int(model.output_shape[-1]), model.input_shape[1], metadata)
    return model, metadata


def check_against_metadata(model_path: Path, outputs: int, size: int, metadata: dict[str, Any]) -> None:
    """A model's output count and input size must be what its metadata says."""
    if outputs != len(metadata["class_names"]):
        raise FlowerDemoError(
            f"model {model_path} has {outputs} outputs but its metadata names "
            f"{len(metadata['class_names'])} classes"
        )
    if size != metadata["image_size"]:
        raise FlowerDemoError(
            f"model {model_path} takes {size}px images but its metadata says {metadata['image_size']}px"
        )


def label_map_from_names(class_names: list[str]) -> dict[str, str]:
    """Label ids are 1-based, as in Flowers-102's own `imagelabels.mat`."""
    return {str(i + 1): name for i, name in enumerate(class_names)}


def load_label_map(path: str | os.PathLike, num_classes: int) -> list[str]:
    """Class names from a JSON label map {"1": name, ...}; its ids must be exactly 1..num_classes."""
    path = Path(path)
    mapping = _read_json(path, "label map")
    if not isinstance(mapping, dict):
        raise FlowerDemoError(f"label map {path} must be a JSON object of id -> name")
    expected = {str(i) for i in range(1, num_classes + 1)}
    if set(mapping) != expected:
        raise FlowerDemoError(
            f"label map {path} has {len(mapping)} ids, which do not match the model's "
            f"{num_classes} classes (ids 1..{num_classes})"
        )
    return [str(mapping[str(i)]) for i in range(1, num_classes + 1)]
