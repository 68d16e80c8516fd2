"""The serving core: everything needed to answer a photo, and nothing that needs TensorFlow.

    import flower_demo
    pred = flower_demo.predict("photo.jpg", top_k=5, explain=True)   # Prediction, heatmap included

A model folder holds `metadata.json` (class names, input size, backbone, metrics, calibration)
beside the network in one or both of two forms:
- `model.tflite`: float32, run by LiteRT (`ai_edge_litert`), the default engine. It returns the
  class probabilities, the class activation maps (the last feature map times the classifier's
  kernel, which is Grad-CAM for a global-average-pooled backbone) and the pooled features.
- `model.keras`: the trained Keras model; run when asked (ENGINE_ENV=keras, a `.keras` path) or
  where TensorFlow sees a GPU. Its engine lives in models.py and is imported only then.
Both take RGB pixels 0..255 at the model's input size: the backbone's preprocessing is inside.
Once calibrated, `ood.npz` beside them holds the statistics of the "not one of the classes" rule
(for kNN, the normalised training features), applied to the pooled features of the same pass, and
the reference photos (neighbours.py): the training photos most like the photo come with the answer.

A classifier can also be taught a class it never trained on from a few photos
(`Classifier.teach`, weight imprinting: imprint.py), in memory; a folder written by teach.py holds
such classes too, and the taught classes' probabilities come from the same pooled features.

This module owns the engines, the calibration and "not one of the classes" rule applied at run
time, `Prediction`, `Classifier` (teaching included), `process_image`, `predict` and
`predict_batch`; what a model folder holds (file names, metadata, label maps) is model_files.py's.
Everything else (training, evaluation, calibration fitting, export, the app, the benchmarks)
imports it; it imports only errors.py, images.py, model_files.py, neighbours.py and imprint.py
(and models.py, for the Keras engine, only when that engine is asked for; models.py does not
import this module).
"""

from __future__ import annotations

import copy
import importlib.util
import math
import os
import re
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from flower_demo.errors import FlowerDemoError, first_line
from flower_demo.images import ImageLike, square_uint8
from flower_demo.imprint import (  # l2_normalise: core's callers use it too
    MIN_PHOTOS,
    TAUGHT_KEY,
    Head,
    l2_normalise,
    new_class_name,
    read_head,
    read_taught,
    readable_photos,
)
from flower_demo.model_files import (  # what a model folder holds; core's callers use these names too
    CLASS_MAPS,
    FEATURES,
    MODEL_FILE,
    OOD_FILE,
    PROBABILITIES,
    TFLITE_FILE,
    check_against_metadata,
    load_label_map,
    metadata_path,
    model_dir,
    model_file,
    native_stderr_filtered,
    read_metadata,
    verify_file,
)
from flower_demo.neighbours import DEFAULT_NEIGHBOURS, References, read_references

ENGINE_ENV = "FLOWER_DEMO_ENGINE"  # auto (default), litert or keras
ENGINES = ("auto", "litert", "keras")
THREADS_ENV = "FLOWER_DEMO_THREADS"  # LiteRT interpreter threads; default: every CPU this process may use
# The CPUs a container, a Space or taskset lets this process run on (os.cpu_count() counts the
# host's); os.sched_getaffinity is missing on macOS and Windows.
USABLE_CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
NUM_THREADS = int(os.environ.get(THREADS_ENV) or USABLE_CPUS)
BATCH_SIZE = 32
DEFAULT_TOP_K = 5
LITERT_NOISE = re.compile(r"^INFO: Created TensorFlow Lite XNNPACK delegate")  # printed at every load


# --- calibration applied at run time (fitted by calibrate/) ----------------------------------

CALIBRATION_KEY = "calibration"
# Rules prediction can apply, each with the arrays it reads from OOD_FILE (see known_score).
OOD_RULES: dict[str, tuple[str, ...]] = {
    "max_softmax": (),
    "energy": ("kernel", "bias"),
    "mahalanobis": ("means", "whitening"),
    "knn": ("bank",),
}
LOG_FLOOR = 1e-30  # probabilities are floored here before the log (float32 softmax can underflow to 0)
# kNN rows beyond "bank" (which the reference photos share): the mirror images of taught photos
# (imprint.py), on disk and in memory, and in memory the taught photos themselves (Classifier.teach).
EXTRA_BANK = "extra_bank"


def log_probabilities(probabilities: np.ndarray) -> np.ndarray:
    """log p in float64, floored so that a softmax that underflowed to 0 stays finite."""
    return np.log(np.maximum(np.asarray(probabilities, dtype=np.float64), LOG_FLOOR))


def apply_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T) along the last axis, which equals softmax(z / T) for the model's logits z."""
    log_p = log_probabilities(probabilities) / temperature
    log_p -= log_p.max(axis=-1, keepdims=True)
    scaled = np.exp(log_p)
    return (scaled / scaled.sum(axis=-1, keepdims=True)).astype(np.float32)


def check_rule(rule: str) -> str:
    if rule not in OOD_RULES:
        raise FlowerDemoError(f"unknown out-of-distribution rule {rule!r}; known: {', '.join(OOD_RULES)}")
    return rule


def known_score(
    calibrated: np.ndarray,
    rule: str,
    features: np.ndarray | None = None,
    statistics: dict[str, np.ndarray] | None = None,
    temperature: float = 1.0,
    k: int = 1,
) -> np.ndarray:
    """Higher = more like the training classes, per row of (n, classes) temperature-scaled
    probabilities and the (n, d) pooled features of the same forward pass; `rule` is one of OOD_RULES:
    - max_softmax: the top calibrated probability;
    - energy: T * logsumexp(z / T) of the logits z = features @ kernel + bias;
    - mahalanobis: minus the smallest squared Mahalanobis distance to a class mean, the shared
      precision stored as a whitening matrix W (W W^T = precision) and the means already whitened;
    - knn: cosine similarity to the k-th nearest training photo (L2-normalised feature bank).
    """
    check_rule(rule)
    if rule == "max_softmax":
        return np.asarray(calibrated).max(axis=-1)
    if features is None:
        raise FlowerDemoError(f"the {rule} rule needs the model's pooled features; this engine returns none")
    stats = statistics or {}
    features = np.asarray(features, dtype=np.float32)
    if rule == "energy":
        z = (features @ stats["kernel"] + stats["bias"]) / temperature
        top = z.max(axis=-1, keepdims=True)
        return temperature * (top + np.log(np.exp(z - top).sum(axis=-1, keepdims=True)))[..., 0]
    if rule == "mahalanobis":
        whitened = features @ stats["whitening"]
        means = stats["means"]
        squared = (whitened**2).sum(axis=-1)[..., None] - 2 * whitened @ means.T + (means**2).sum(axis=-1)
        return -squared.min(axis=-1)
    unit = l2_normalise(features)
    similarity = unit @ stats["bank"].T
    if EXTRA_BANK in stats:
        similarity = np.concatenate([similarity, unit @ stats[EXTRA_BANK].T], axis=-1)
    return -np.partition(-similarity, k - 1, axis=-1)[..., k - 1]


@dataclass(frozen=True)
class Calibration:
    """A fitted temperature and the rule that says whether a photo is one of the known classes,
    with the rule's statistics (read from OOD_FILE; empty for max_softmax)."""

    temperature: float
    ood_rule: str
    ood_threshold: float
    k: int = 1  # neighbours, for the knn rule
    statistics: dict[str, np.ndarray] = field(default_factory=dict, compare=False, repr=False)

    @property
    def feature_dim(self) -> int | None:
        """The pooled-feature size the statistics were fitted on; None for max_softmax."""
        first = {"energy": "kernel", "mahalanobis": "whitening", "knn": "bank"}.get(self.ood_rule)
        if first is None:
            return None
        array = self.statistics[first]
        return int(array.shape[1] if first == "bank" else array.shape[0])

    def probabilities(self, probabilities: np.ndarray) -> np.ndarray:
        """Temperature-scaled probabilities, rows of a (n, classes) or one (classes,) array."""
        return apply_temperature(probabilities, self.temperature)

    def score(self, calibrated: np.ndarray, features: np.ndarray | None = None) -> np.ndarray:
        return known_score(calibrated, self.ood_rule, features, self.statistics, self.temperature, self.k)

    def is_known(self, calibrated: np.ndarray, features: np.ndarray | None = None) -> np.ndarray:
        """True where a photo passes the rule (bool per row), from its temperature-scaled
        probabilities and, for the feature rules, its pooled features."""
        return self.score(calibrated, features) >= self.ood_threshold


def read_ood_statistics(path: Path, rule: str, k: int, num_classes: int) -> dict[str, np.ndarray]:
    """The arrays `rule` needs from `path`, as float32, checked against each other and the class count."""
    if not path.is_file():
        raise FlowerDemoError(f"the {rule} rule's statistics file is missing: {path}")
    try:
        with np.load(path, allow_pickle=False) as stored:
            missing = [name for name in OOD_RULES[rule] if name not in stored.files]
            if missing:
                raise FlowerDemoError(f"{path} lacks the {rule} rule's array {missing[0]!r}")
            names = [
                *OOD_RULES[rule],
                *([EXTRA_BANK] if rule == "knn" and EXTRA_BANK in stored.files else []),
            ]
            stats = {name: np.asarray(stored[name], dtype=np.float32) for name in names}
    except FlowerDemoError:
        raise
    except (OSError, ValueError) as exc:
        raise FlowerDemoError(f"cannot read {path}: {first_line(exc)}") from None
    shapes = {name: array.shape for name, array in stats.items()}
    if rule == "energy":
        kernel = shapes["kernel"]
        ok = len(kernel) == 2 and kernel[1] == num_classes and shapes["bias"] == (num_classes,)
    elif rule == "mahalanobis":
        w, m = shapes["whitening"], shapes["means"]
        ok = len(w) == 2 and len(m) == 2 and 1 <= m[0] <= num_classes and m[1] == w[1]
    else:
        extra = shapes.get(EXTRA_BANK, (0, shapes["bank"][-1]))
        ok = len(shapes["bank"]) == 2 and 1 <= k <= shapes["bank"][0] and extra[1:] == shapes["bank"][1:]
    if not ok or not all(np.isfinite(a).all() for a in stats.values()):
        raise FlowerDemoError(
            f"{path} does not fit the {rule} rule of a {num_classes}-class model (k={k}): shapes {shapes}"
        )
    return stats


def read_calibration(metadata: dict[str, Any], folder: str | os.PathLike | None = None) -> Calibration | None:
    """The calibration stored in a model's metadata (and, for a feature rule, its statistics file in
    the model folder `folder`), checked; None when there is none."""
    stored = metadata.get(CALIBRATION_KEY)
    if stored is None:
        return None
    try:
        calibration = Calibration(
            float(stored["temperature"]),
            str(stored["ood_rule"]),
            float(stored["ood_threshold"]),
            int(stored.get("ood_k", 1)),
        )
    except (TypeError, KeyError, ValueError, AttributeError) as exc:
        raise FlowerDemoError(f"model metadata has a malformed {CALIBRATION_KEY!r} entry ({exc!r})") from None
    if not (math.isfinite(calibration.temperature) and calibration.temperature > 0):
        raise FlowerDemoError(f"calibration temperature must be positive, got {calibration.temperature}")
    check_rule(calibration.ood_rule)
    if not math.isfinite(calibration.ood_threshold):
        raise FlowerDemoError("calibration ood_threshold must be a finite number")
    if not OOD_RULES[calibration.ood_rule]:
        return calibration
    if folder is None:
        raise FlowerDemoError(f"the {calibration.ood_rule} rule needs its model folder to read {OOD_FILE}")
    path = model_dir(folder) / str(stored.get("ood_file", OOD_FILE))
    if path.is_file():
        verify_file(path, metadata, remedy=f"re-run python -m flower_demo.calibrate --model {path.parent}")
    stats = read_ood_statistics(path, calibration.ood_rule, calibration.k, len(metadata["class_names"]))
    return replace(calibration, statistics=stats)


# --- engines ---------------------------------------------------------------------------------
# An engine is a callable: float32 (n, size, size, 3) pixels -> {PROBABILITIES: (n, classes),
# CLASS_MAPS: (n, h, w, classes) or absent, FEATURES: (n, d) or absent}, with attributes
# `name`, `path`, `image_size`, `num_classes`, `outputs` (the names it returns) and `device`
# (where it computes, in words).


def _interpreter_class() -> Callable[..., Any]:
    """LiteRT's Interpreter; TensorFlow's deprecated one, with a notice, where LiteRT has no wheel."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter
    except ImportError:
        pass
    try:
        import tensorflow as tf
    except ImportError:
        raise FlowerDemoError(
            "cannot run a .tflite model: install ai-edge-litert (pip install -r requirements.txt)"
        ) from None
    print(
        "notice: ai-edge-litert is not installed; running the .tflite model with TensorFlow", file=sys.stderr
    )
    return tf.lite.Interpreter


class LiteRTEngine:
    """An exported `.tflite` classifier (batch 1) run by LiteRT, one image per invoke.

    The interpreter is not thread-safe, so calls are serialised by a lock; XNNPACK uses
    `num_threads` cores for each image.
    """

    name = "litert"

    def __init__(self, path: str | os.PathLike, num_threads: int = NUM_THREADS) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FlowerDemoError(f"model file not found: {self.path}")
        try:
            with native_stderr_filtered(LITERT_NOISE):
                self.interpreter = _interpreter_class()(model_path=str(self.path), num_threads=num_threads)
                self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise FlowerDemoError(f"cannot load TFLite model {self.path}: {first_line(exc)}") from None
        inputs, outputs = self._signature()
        if len(inputs) != 1:
            raise FlowerDemoError(f"{self.path} must take one input, it takes {len(inputs)}")
        (self._input,) = inputs.values()
        self._outputs = {name: detail["index"] for name, detail in outputs.items()}
        self._shapes = {name: tuple(detail["shape"][1:]) for name, detail in outputs.items()}
        self.outputs = frozenset(outputs)
        shape = self._input["shape"]
        if len(shape) != 4 or shape[0] != 1 or shape[1] != shape[2] or shape[3] != 3:
            raise FlowerDemoError(f"{self.path} does not take (1, size, size, 3) images: input shape {shape}")
        if PROBABILITIES not in outputs or self._input["dtype"] != np.float32:
            raise FlowerDemoError(f"{self.path} must take float32 images and return {PROBABILITIES!r}")
        self.image_size = int(shape[1])
        self.num_classes = int(outputs[PROBABILITIES]["shape"][-1])
        self.device = f"CPU (LiteRT, {num_threads} threads)"
        self._lock = threading.Lock()

    def _signature(self) -> tuple[dict[str, dict], dict[str, dict]]:
        """Input and output details by name: from the file's signature (written by export.py), or,
        for a single-output file without one, its only output taken as the probabilities."""
        if self.interpreter.get_signature_list():
            runner = self.interpreter.get_signature_runner()
            return runner.get_input_details(), runner.get_output_details()
        inputs = {d["name"]: d for d in self.interpreter.get_input_details()}
        outputs = self.interpreter.get_output_details()
        if len(outputs) != 1:
            raise FlowerDemoError(f"{self.path} has {len(outputs)} unnamed outputs; re-export it")
        return inputs, {PROBABILITIES: outputs[0]}

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        batch = np.asarray(batch, dtype=np.float32)
        results: dict[str, list[np.ndarray]] = {name: [] for name in self._outputs}
        with self._lock:
            for image in batch:
                self.interpreter.set_tensor(self._input["index"], image[None])
                self.interpreter.invoke()
                for name, index in self._outputs.items():
                    results[name].append(self.interpreter.get_tensor(index)[0])
        return {
            name: np.stack(r) if r else np.zeros((0, *self._shapes[name]), np.float32)
            for name, r in results.items()
        }


def tensorflow_sees_gpu() -> bool:
    """Whether TensorFlow is installed and sees a GPU; TensorFlow is imported only on a machine
    with an NVIDIA driver, so a CPU-only machine never pays its start-up."""
    if importlib.util.find_spec("tensorflow") is None or not Path("/proc/driver/nvidia/version").exists():
        return False
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def choose_engine(path: str | os.PathLike | None, engine: str | None = None) -> str:
    """ "litert" or "keras" for the model at `path`, by what is asked (argument, then ENGINE_ENV),
    the file named, what the folder holds, and whether TensorFlow sees a GPU."""
    engine = engine or os.environ.get(ENGINE_ENV) or "auto"
    if engine not in ENGINES:
        raise FlowerDemoError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    suffix = Path(path).suffix if path is not None else ""
    if suffix == ".tflite":
        if engine == "keras":
            raise FlowerDemoError(f"the keras engine needs a model.keras, not {path}")
        return "litert"
    if suffix == ".keras":
        if engine == "litert":
            raise FlowerDemoError(f"the litert engine needs a model.tflite, not {path}")
        return "keras"
    if engine != "auto":
        return engine
    folder = model_dir(path)
    has_tflite, has_keras = (folder / TFLITE_FILE).is_file(), (folder / MODEL_FILE).is_file()
    if has_keras and (not has_tflite or tensorflow_sees_gpu()):
        return "keras"
    return "litert"


def open_engine(path: str | os.PathLike | None, engine: str | None = None) -> Any:
    """The engine that runs the model at `path` (a folder, .tflite or .keras file)."""
    chosen = choose_engine(path, engine)
    folder = model_dir(path)
    if chosen == "keras":
        from flower_demo.models import KerasEngine  # TensorFlow/Keras: only when asked for

        return KerasEngine(model_file(path, MODEL_FILE))
    tflite = model_file(path, TFLITE_FILE)  # a .tflite of any name is served as itself
    if not tflite.is_file() and not folder.is_dir():
        raise FlowerDemoError(f"model folder not found: {folder}")
    if tflite.is_file() and metadata_path(folder).is_file():  # a stale or foreign file is refused
        fix = f"re-export it (python -m flower_demo.export --model {folder}) or use {ENGINE_ENV}=keras"
        verify_file(tflite, read_metadata(folder), named=tflite.name != TFLITE_FILE, remedy=fix)
    return LiteRTEngine(tflite)


# --- predictions -----------------------------------------------------------------------------


def process_image(image: ImageLike, image_size: int | None = None) -> np.ndarray:
    """The array the model takes for one image: (size, size, 3) float32 RGB in 0..255.

    `image_size` defaults to the shipped model's input size, read from its metadata.
    """
    if image_size is None:
        image_size = int(read_metadata()["image_size"])
    return square_uint8(image, image_size).astype(np.float32)


@dataclass
class Prediction:
    """Top-K classes of one image, best first, as plain Python types (JSON-ready)."""

    class_ids: list[int]  # label ids, 1-based as in label_map.json
    class_names: list[str]
    probabilities: list[float]
    is_known: bool = True  # False: the calibration's rule says it is none of the model's classes
    # The training photos of the top class most like this one, best first: {"class_name",
    # "similarity" (cosine, 0..1), "image" (its thumbnail's path)}. Empty when not asked for or
    # the model folder holds no reference photos.
    neighbours: list[dict[str, Any]] = field(default_factory=list)
    # For a photo the rule turns away (not is_known), the training photos of any class most like
    # it, the same way: they show why it was turned away. Empty otherwise.
    closest: list[dict[str, Any]] = field(default_factory=list)
    # With explain=True: where the top class's evidence lies, (size, size) float32 in 0..1 over
    # the centre square the model saw; not part of as_dict().
    heatmap: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def evidence(self) -> list[dict[str, Any]]:
        """The reference photos to show beside this answer: of the top class for a photo the rule
        keeps, of any class for one it turns away (they show why)."""
        return self.neighbours if self.is_known else self.closest

    @property
    def top1(self) -> tuple[str, float]:
        return self.class_names[0], self.probabilities[0]

    def as_dict(self) -> dict[str, Any]:
        record = asdict(self)
        del record["heatmap"]
        return record


def class_heatmap(class_map: np.ndarray, size: int) -> np.ndarray:
    """One class's activation map (h, w), positive part, scaled to 0..1 and resized to (size, size).

    For a global-average-pooled backbone and a dense head this is Grad-CAM: the gradient of the
    class logit with respect to each channel is the channel's dense weight divided by h * w.
    """
    positive = np.maximum(np.asarray(class_map, dtype=np.float32), 0.0)
    resized = np.asarray(Image.fromarray(positive, mode="F").resize((size, size), Image.Resampling.BILINEAR))
    top = float(resized.max())
    return (resized / top if top > 0 else np.zeros_like(resized)).astype(np.float32)


class Classifier:
    """A loaded model with its metadata, class names and calibration; load once, call many times."""

    def __init__(
        self,
        model_path: str | os.PathLike | None = None,
        category_names: str | os.PathLike | None = None,
        engine: str | None = None,
    ) -> None:
        self.metadata = read_metadata(model_path)
        self.folder = model_dir(model_path)
        self.engine = open_engine(model_path, engine)
        taught = taught_names(self.metadata)
        check_against_metadata(
            self.engine.path, self.engine.num_classes + len(taught), self.engine.image_size, self.metadata
        )
        self.calibration = read_calibration(self.metadata, self.folder)
        self.image_size = int(self.metadata["image_size"])
        self.num_classes = len(self.metadata["class_names"])
        knn_bank = self.calibration.statistics.get("bank") if self.calibration else None
        self.references: References | None = read_references(
            self.folder, self.metadata, self.num_classes, knn_bank
        )
        # Classes taught after training (imprint.py): their columns, and the trained head they widen.
        self.taught = read_taught(self.folder / OOD_FILE, taught)
        self._head: Head | None = None
        if taught:
            self.head()
        self.class_names = (
            load_label_map(category_names, self.num_classes)
            if category_names is not None
            else list(self.metadata["class_names"])
        )
        warm = self.engine(np.zeros((1, self.image_size, self.image_size, 3), np.float32))  # warm up now
        self.check_calibration(warm.get(FEATURES))

    def check_calibration(self, features: np.ndarray | None) -> None:
        """A feature rule's statistics must fit the pooled features this engine returns."""
        want = None if self.calibration is None else self.calibration.feature_dim
        if want is None:
            return
        if features is None:
            raise FlowerDemoError(
                f"the {self.calibration.ood_rule} rule needs pooled features, which {self.engine.path} "
                "does not return; re-export it (python -m flower_demo.export)"
            )
        if features.shape[-1] != want:
            raise FlowerDemoError(
                f"{OOD_FILE} was fitted on {want}-d features but {self.engine.path} returns "
                f"{features.shape[-1]}-d ones; re-run python -m flower_demo.calibrate"
            )

    @property
    def explains(self) -> bool:
        """Whether the engine returns class activation maps (a keras.applications backbone)."""
        return CLASS_MAPS in self.engine.outputs

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """The engine's outputs for a batch of process_image arrays, probabilities widened to the
        taught classes (if any) and calibrated."""
        return self.answer(self.engine(np.asarray(batch, dtype=np.float32)))

    def answer(self, raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The engine's raw outputs of a batch as this classifier answers them: probabilities
        widened to the taught classes (if any), then calibrated."""
        outputs = dict(raw)
        if self.taught.names and len(outputs[PROBABILITIES]):
            outputs[PROBABILITIES] = self.taught.probabilities(
                outputs[PROBABILITIES], outputs[FEATURES], self.head()
            )
        if self.calibration is not None and len(outputs[PROBABILITIES]):
            outputs[PROBABILITIES] = self.calibration.probabilities(outputs[PROBABILITIES])
        return outputs

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """(n, classes) probabilities for a batch of process_image outputs (temperature-scaled
        when the model is calibrated)."""
        return np.asarray(self.run(batch)[PROBABILITIES])

    def head(self) -> Head:
        """The trained classifier's kernel and bias (from OOD_FILE) with its classes' mean features
        (from the reference photos' bank): what imprinting a new class builds on."""
        if self._head is None:
            if self.references is None:
                raise FlowerDemoError(
                    f"{self.folder} holds no features of its training photos, which teaching needs: "
                    f"calibrate it first (python -m flower_demo.calibrate --model {self.folder})"
                )
            bank = self.references.bank  # the rows on disk (rows taught in memory follow as `extra`)
            self._head = read_head(self.folder / OOD_FILE, bank, self.references.labels[: len(bank)])
        return self._head

    def teach(self, name: str, photos: Sequence[ImageLike], min_photos: int = MIN_PHOTOS) -> Classifier:
        """A new classifier that also knows the class `name`, imprinted from `photos` (imprint.py);
        this one is left unchanged, and nothing is written. Each photo counts with its mirror
        image (a flower seen from the other side): both shape the new column and join the kNN
        rule's bank, so that photos like them are accepted; the photos themselves join the
        reference photos shown beside answers.
        Refusals (imprint.py's checks) are one-line FlowerDemoErrors."""
        rule = self.calibration.ood_rule if self.calibration else None
        name = new_class_name(name, self.class_names, rule)
        pixels = readable_photos(photos, self.image_size, min_photos)
        head = self.head()
        views = np.concatenate([pixels, pixels[:, :, ::-1]])  # each photo and its mirror image
        features = self.engine(views.astype(np.float32)).get(FEATURES)
        if features is None:
            raise FlowerDemoError(f"{self.engine.path} returns no pooled features; re-export it")
        rows = l2_normalise(features)  # the photos' rows, then their mirror images'
        head.check_like_training(
            np.array([self.references.similarity(row).max() for row in rows[: len(pixels)]])
        )
        taught = copy.copy(self)
        taught.taught = self.taught.with_class(name, *head.imprint(features))
        taught.class_names = [*self.class_names, name]
        taught.num_classes = self.num_classes + 1
        if rule == "knn":  # the photos and their mirror images join the rule's bank, in memory
            stats = self.calibration.statistics
            extra = rows if EXTRA_BANK not in stats else np.concatenate([stats[EXTRA_BANK], rows])
            taught.calibration = replace(self.calibration, statistics={**stats, EXTRA_BANK: extra})
        taught.references = self.references.with_rows(rows[: len(pixels)], self.num_classes, list(pixels))
        return taught

    def check_top_k(self, top_k: int | None) -> int:
        """`top_k` if it is a valid class count; None means DEFAULT_TOP_K (or all, if fewer)."""
        if top_k is None:
            return min(DEFAULT_TOP_K, self.num_classes)
        if not isinstance(top_k, (int, np.integer)) or not 1 <= top_k <= self.num_classes:
            raise FlowerDemoError(f"top_k must be an integer from 1 to {self.num_classes}, got {top_k!r}")
        return int(top_k)

    def top_k(
        self,
        probabilities: np.ndarray,
        k: int,
        class_maps: np.ndarray | None = None,
        features: np.ndarray | None = None,
        neighbours: int = 0,
    ) -> Prediction:
        """The best `k` classes of one image's probabilities, the calibration's verdict (a feature
        rule needs the image's pooled features), given the image's class maps, the heatmap of the
        best class, and given its features, its `neighbours` nearest reference photos of the best
        class (and of any class, when the rule turns it away)."""
        best = np.argsort(-probabilities)[:k]
        known = self.calibration is None or bool(self.calibration.is_known(probabilities, features))
        nearest, closest = [], []
        if neighbours and self.references is not None and features is not None:
            nearest = self.references.nearest(features, self.class_names, int(best[0]), neighbours)
            if not known:  # turned away: the nearest of any class too
                closest = self.references.nearest(features, self.class_names, None, neighbours)
        return Prediction(
            class_ids=[int(i) + 1 for i in best],
            class_names=[self.class_names[i] for i in best],
            probabilities=[float(probabilities[i]) for i in best],
            is_known=known,
            neighbours=nearest,
            closest=closest,
            # a taught class has no activation map (imprint.py): no heatmap for it
            heatmap=None
            if class_maps is None or best[0] >= class_maps.shape[-1]
            else class_heatmap(class_maps[..., best[0]], self.image_size),
        )

    def check_neighbours(self, neighbours: int | None) -> int:
        """`neighbours` if it is a valid count (0: none); None means DEFAULT_NEIGHBOURS."""
        if neighbours is None:
            return DEFAULT_NEIGHBOURS
        if not isinstance(neighbours, (int, np.integer)) or isinstance(neighbours, bool) or neighbours < 0:
            raise FlowerDemoError(f"neighbours must be a whole number from 0 up, got {neighbours!r}")
        return int(neighbours)

    def predictions(
        self, pixels: np.ndarray, k: int, explain: bool = False, neighbours: int = 0
    ) -> list[Prediction]:
        """Predictions for a batch of process_image arrays (with heatmaps if `explain`, and
        `neighbours` reference photos each)."""
        outputs = self.run(pixels)
        maps = outputs.get(CLASS_MAPS) if explain else None
        if explain and maps is None:
            raise FlowerDemoError(
                f"this model ({self.metadata['backbone']}) returns no class activation maps; "
                "use flower_demo.explain.gradcam"
            )
        features = outputs.get(FEATURES)
        return [
            self.top_k(
                row,
                k,
                None if maps is None else maps[i],
                None if features is None else features[i],
                neighbours,
            )
            for i, row in enumerate(outputs[PROBABILITIES])
        ]


def taught_names(metadata: dict[str, Any]) -> list[str]:
    """The classes a model folder was taught after training (teach.py), in order: the last
    names of its class_names."""
    taught = metadata.get(TAUGHT_KEY) or {}
    names = [str(c.get("name")) for c in taught.get("classes", []) if isinstance(c, dict)]
    if names and list(metadata["class_names"])[-len(names) :] != names:
        raise FlowerDemoError(f"model metadata's {TAUGHT_KEY!r} classes are not the last of its class_names")
    return names


_shipped: Classifier | None = None
_shipped_lock = threading.Lock()  # threads that ask for the shipped model at once load it once


def get_classifier(model: Classifier | str | os.PathLike | None) -> Classifier:
    """The given Classifier, one loaded from a path, or the shipped model (loaded once)."""
    global _shipped
    if isinstance(model, Classifier):
        return model
    if model is not None:
        return Classifier(model)
    with _shipped_lock:
        if _shipped is None:
            _shipped = Classifier()
    return _shipped


def predict(
    image: ImageLike,
    model: Classifier | str | os.PathLike | None = None,
    top_k: int | None = None,
    explain: bool = False,
    neighbours: int | None = None,
) -> Prediction:
    """Top-K classes of one image (path, bytes, PIL image or array) and its `neighbours` nearest
    reference photos (DEFAULT_NEIGHBOURS; 0: none); with `explain`, the heatmap of the best class
    too. All from the same forward pass."""
    classifier = get_classifier(model)
    k, n = classifier.check_top_k(top_k), classifier.check_neighbours(neighbours)
    pixels = square_uint8(image, classifier.image_size)[None]
    return classifier.predictions(pixels, k, explain, n)[0]


def predict_batch(
    images: Sequence[ImageLike],
    model: Classifier | str | os.PathLike | None = None,
    top_k: int | None = None,
    batch_size: int = BATCH_SIZE,
    skip_errors: bool = False,
    explain: bool = False,
    neighbours: int | None = None,
) -> list[Prediction | FlowerDemoError]:
    """Top-K classes of many images, run through the model `batch_size` at a time.

    A bad image raises FlowerDemoError, or with `skip_errors` takes that error's place in the list.
    """
    classifier = get_classifier(model)
    k, n = classifier.check_top_k(top_k), classifier.check_neighbours(neighbours)
    results: list[Prediction | FlowerDemoError] = []
    for start in range(0, len(images), batch_size):
        decoded: list[np.ndarray | FlowerDemoError] = []
        for image in images[start : start + batch_size]:
            try:
                decoded.append(square_uint8(image, classifier.image_size))
            except FlowerDemoError as exc:
                if not skip_errors:
                    raise
                decoded.append(exc)
        good = [d for d in decoded if isinstance(d, np.ndarray)]
        answers = iter(classifier.predictions(np.stack(good), k, explain, n) if good else [])
        results += [next(answers) if isinstance(d, np.ndarray) else d for d in decoded]
    return results
