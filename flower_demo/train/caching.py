"""What a run computes once and trains on many times: the decoded images, the frozen bottom's
activations of each view (view 0 the photo as it is, the others augmented), the frozen top's
pooled features for stage 1, and the teachers' probabilities of the same views.

Each array is saved in the run folder's cache/ beside a key of everything it depends on
(`cache_key`), so `--resume` reuses it and a changed setting never does.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from flower_demo import models  # first: it keeps TensorFlow's start-up notices off the terminal

# isort: split
import keras

CACHE_BATCH = 32


def cache_key(*depends_on: Any) -> str:
    """A digest of everything the cached arrays depend on (JSON-serialisable values)."""
    return hashlib.sha256(json.dumps(list(depends_on)).encode()).hexdigest()


def cached(path: Path, key: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """np.load(path) if it was made with the same `key`, else compute() and save it there."""
    key_file = path.with_suffix(".key")
    if path.exists() and key_file.exists() and key_file.read_text() == key:
        return np.load(path, mmap_mode="r")
    return save_cached(path, key, compute())


def save_cached(path: Path, key: str, array: np.ndarray) -> np.ndarray:
    """Save `array` where `cached` finds it (the key last: a half-written file is never reused)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array)
    path.with_suffix(".key").write_text(key)
    return array


def activation_steps(bottom: keras.Model, augmenter: keras.Model) -> tuple[Callable, Callable]:
    """(augment, forward): a float32 pixel batch -> augmented pixels, and pixels -> `bottom`'s
    activations, each one compiled step (apart, so that teachers see the same augmented pixels).
    On TensorFlow each is traced once, for batches of any length: the last, shorter batch would
    otherwise trace it again. The forward step is the serving core's (models.compiled_forward)."""
    augment = lambda batch: augmenter(batch, training=True)
    if keras.config.backend() == "tensorflow":  # one traced graph, not op by op
        import tensorflow as tf

        spec = tf.TensorSpec((None, *bottom.input_shape[1:]), tf.float32)
        augment = tf.function(augment, input_signature=[spec], autograph=False)
    # other Keras backends (e.g. JAX on a GPU): Keras compiles the layers' calls itself
    return augment, models.compiled_forward(bottom)


def cache_activations(
    bottom: keras.Model,
    steps: tuple[Callable, Callable],
    images: np.ndarray,
    n_views: int,
    progress: bool = True,
    teacher: Callable | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """(n_views, n, ...) float16 activations of `images`, view 0 plain, the others augmented; and
    with a `teacher` (distill.load_teachers), its (n_views, n, classes) probabilities of the same
    views."""
    augment, forward = steps
    out = np.empty((n_views, len(images), *bottom.output_shape[1:]), dtype="float16")
    soft = None
    verbose = models.progress_verbosity() if progress else 0
    bar = keras.utils.Progbar(n_views * len(images), unit_name="image", verbose=verbose)
    for v in range(n_views):
        for i in range(0, len(images), CACHE_BATCH):
            batch = images[i : i + CACHE_BATCH].astype("float32")
            pixels = augment(batch) if v > 0 else batch
            out[v, i : i + len(batch)] = np.asarray(forward(pixels))
            if teacher is not None:
                probabilities = teacher(pixels)
                if soft is None:
                    soft = np.empty((n_views, len(images), probabilities.shape[-1]), dtype="float16")
                soft[v, i : i + len(batch)] = probabilities
            bar.add(len(batch))
    return out, soft


def pooled_features(top: keras.Model, acts: np.ndarray) -> np.ndarray:
    """The frozen top's pooled features of cached activations, for stage 1."""
    return np.asarray(top.predict(np.asarray(acts, "float32"), batch_size=128, verbose=0))
