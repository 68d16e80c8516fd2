"""Why the model says what it says: heatmaps over the photo.

    from flower_demo.explain import heatmap, overlay
    heat = heatmap("photo.jpg", classifier)        # (size, size) floats in 0..1, from the forward pass
    overlay("photo.jpg", heat).save("why.png")

`heatmap` reads the class activation map that the served model returns beside its probabilities
(core.py, models.serving_model): for a globally average-pooled backbone with a dense head it
equals Grad-CAM (Selvaraju et al., 2017) up to a positive factor, so it needs no gradients, no
second pass and no TensorFlow. `flower_demo.predict(image, explain=True)` gives the same map for
the top class in one call.

`gradcam` is the gradient version, kept for models without class maps and to check the two agree:
it weights each channel of the backbone's last convolutional feature map
(`BACKBONES[name].feature_map`) by the mean gradient of the class logit over it, sums the channels
and keeps the positive part. It needs the Keras model and TensorFlow.

This module owns both, the colour map and the blending.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageOps

from flower_demo import core, model_files
from flower_demo.errors import FlowerDemoError
from flower_demo.images import ImageLike, load_rgb, square_uint8

ALPHA = 0.45  # weight of the heatmap colours in the blend
MAX_OVERLAY_SIDE = 512  # the overlay keeps the photo's own detail up to this many pixels
# A "jet"-like colour map: cold (blue) where the class score does not depend on the pixels, hot
# (red) where it does. (position, (r, g, b)) anchors, interpolated linearly.
COLORMAP = (
    (0.0, (0, 0, 128)),
    (0.125, (0, 0, 255)),
    (0.375, (0, 255, 255)),
    (0.625, (255, 255, 0)),
    (0.875, (255, 0, 0)),
    (1.0, (128, 0, 0)),
)

_GRADCAM: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_KERAS_MODELS: dict = {}  # model folder -> its Keras model, for gradcam on a LiteRT classifier


def _gradcam_graph(model, backbone_name: str) -> Callable:
    """A traced function (pixels (1, s, s, 3), class index or -1) -> (feature-map CAM, class index)."""
    if model in _GRADCAM:
        return _GRADCAM[model]
    import keras
    import tensorflow as tf

    from flower_demo import models

    if keras.config.backend() != "tensorflow":
        raise FlowerDemoError(f"Grad-CAM needs Keras' TensorFlow backend, not {keras.config.backend()!r}")
    if backbone_name not in models.BACKBONES:
        raise FlowerDemoError(f"Grad-CAM needs a keras.applications backbone, not {backbone_name!r}")
    backbone = models.backbone_of(model)
    feature_map = backbone.get_layer(models.BACKBONES[backbone_name].feature_map).output
    to_features = keras.Model(backbone.input, feature_map, name="to_feature_map")
    to_pooled = keras.Model(feature_map, backbone.output, name="feature_map_to_pooled")
    preprocess = model.get_layer("preprocess")
    dropout, classifier = models.head_of(model)
    size = int(model.input_shape[1])

    def run(pixels, class_index):
        features = tf.cast(to_features(preprocess(pixels), training=False), tf.float32)
        with tf.GradientTape() as tape:
            tape.watch(features)
            pooled = dropout(to_pooled(features, training=False), training=False)
            logits = tf.matmul(pooled, classifier.kernel) + classifier.bias  # before the softmax
            index = tf.where(class_index < 0, tf.argmax(logits[0], output_type=tf.int32), class_index)
            score = logits[0, index]
        grads = tape.gradient(score, features)
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)  # one weight per channel
        cam = tf.nn.relu(tf.reduce_sum(features * weights, axis=-1))[0]
        return cam, index

    _GRADCAM[model] = tf.function(
        run,
        input_signature=[
            tf.TensorSpec((1, size, size, 3), tf.float32),
            tf.TensorSpec((), tf.int32),
        ],
        autograph=False,
    )
    return _GRADCAM[model]


def _check_class_index(classifier: core.Classifier, class_index: int | None) -> None:
    if class_index is not None and (
        not isinstance(class_index, (int, np.integer)) or not 0 <= class_index < classifier.num_classes
    ):
        raise FlowerDemoError(
            f"class_index must be an integer from 0 to {classifier.num_classes - 1}, got {class_index!r}"
        )


def heatmap(
    image: ImageLike,
    classifier: core.Classifier | str | os.PathLike | None = None,
    class_index: int | None = None,
) -> np.ndarray:
    """Where the evidence for one class lies in `image`: (size, size) float32 in 0..1, 1 = most.

    It covers the centre square the model sees (`process_image(image)`), at the model's input size.
    `classifier`: a `flower_demo.Classifier`, a model folder, or None for the shipped model.
    `class_index`: 0-based index into the class names (a Prediction's class id minus 1); by
    default the predicted class. A map with no positive evidence is all zeros.
    """
    classifier = core.get_classifier(classifier)
    _check_class_index(classifier, class_index)
    outputs = classifier.run(square_uint8(image, classifier.image_size)[None])
    if model_files.CLASS_MAPS not in outputs:
        raise FlowerDemoError(
            f"this model ({classifier.metadata['backbone']}) returns no class activation maps; use gradcam"
        )
    index = int(np.argmax(outputs[model_files.PROBABILITIES][0])) if class_index is None else int(class_index)
    if index >= outputs[model_files.CLASS_MAPS].shape[-1]:
        raise FlowerDemoError(
            f"{classifier.class_names[index]!r} was taught from photos, not trained: it has no heatmap"
        )
    return core.class_heatmap(outputs[model_files.CLASS_MAPS][0][..., index], classifier.image_size)


def gradcam(
    image: ImageLike,
    classifier: core.Classifier | str | os.PathLike | None = None,
    class_index: int | None = None,
) -> np.ndarray:
    """Grad-CAM of `image` from gradients, with the same conventions as `heatmap` (Keras model and
    TensorFlow needed; the model.keras of the classifier's folder is loaded if it runs on LiteRT)."""
    import tensorflow as tf

    from flower_demo import models

    classifier = core.get_classifier(classifier)
    _check_class_index(classifier, class_index)
    model = getattr(classifier.engine, "model", None)
    if model is None:  # a LiteRT classifier: its folder's model.keras, loaded once
        folder = model_files.model_dir(classifier.engine.path)
        if folder not in _KERAS_MODELS:
            _KERAS_MODELS[folder] = models.load_model(folder)[0]
        model = _KERAS_MODELS[folder]
    size = classifier.image_size
    pixels = square_uint8(image, size)[None].astype(np.float32)
    run = _gradcam_graph(model, str(classifier.metadata["backbone"]))
    cam, _ = run(tf.constant(pixels), tf.constant(-1 if class_index is None else int(class_index), tf.int32))
    return core.class_heatmap(cam.numpy(), size)


def colorize(heatmap: np.ndarray) -> np.ndarray:
    """(h, w) values in 0..1 -> (h, w, 3) uint8 colours of COLORMAP."""
    values = np.clip(np.asarray(heatmap, dtype=np.float32), 0.0, 1.0)
    positions = [p for p, _ in COLORMAP]
    channels = [np.interp(values, positions, [c[i] for _, c in COLORMAP]) for i in range(3)]
    return np.stack(channels, axis=-1).round().astype(np.uint8)


def overlay(image: ImageLike, heatmap: np.ndarray, alpha: float = ALPHA) -> Image.Image:
    """The heatmap's colours blended over the centre square of `image` (the part the model sees).

    The photo keeps its own resolution up to MAX_OVERLAY_SIDE pixels (never below the heatmap's);
    the heatmap is stretched to it.
    """
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if heatmap.ndim != 2 or heatmap.shape[0] != heatmap.shape[1]:
        raise FlowerDemoError(f"heatmap must be a square (size, size) array, got shape {heatmap.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise FlowerDemoError(f"alpha must be in 0..1, got {alpha}")
    photo = load_rgb(image)
    side = max(heatmap.shape[0], min(min(photo.size), MAX_OVERLAY_SIDE))
    photo = ImageOps.fit(photo, (side, side), method=Image.Resampling.BICUBIC)
    heat = Image.fromarray(heatmap).resize((side, side), Image.Resampling.BILINEAR)
    colours = Image.fromarray(colorize(np.asarray(heat)))
    return Image.blend(photo, colours, alpha)


def save_overlay(image: ImageLike, out: str | os.PathLike, heat: np.ndarray) -> os.PathLike | str:
    """`heat` (from `heatmap`, `gradcam` or `Prediction.heatmap`) blended over `image`, written to
    `out` (any format Pillow writes)."""
    try:
        overlay(image, heat).save(out)
    except (OSError, ValueError) as exc:  # unwritable folder, unknown extension
        raise FlowerDemoError(f"cannot write {out}: {exc}") from None
    return out
