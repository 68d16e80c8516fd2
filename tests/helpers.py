"""Plain helpers shared by the tests (fixtures live in conftest.py)."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # `python tests/test_browser.py` puts only tests/ there
    sys.path.insert(0, str(REPO_ROOT))

# A free local port for the app, from where the benchmarks take theirs (re-exported for the tests).
from benchmarks.serving import free_port  # noqa: E402, F401

FIXTURE_FLOWERS = REPO_ROOT / "tests" / "fixtures" / "flowers"
EXAMPLE_PHOTOS = sorted((REPO_ROOT / "examples").glob("[0-9][0-9][0-9]_*.jpg"))  # the page's own examples
NON_FLOWER = REPO_ROOT / "tests" / "fixtures" / "non_flowers" / "cat.jpg"  # rejected by the shipped model
TRAINED_IMAGE_SIZE = 224  # the smallest input of a trained model here; smaller ones are debug models
TINY_SIZE = 32  # the smallest input keras.applications accepts
TINY_CLASSES = ["alpha flower", "beta flower", "gamma flower"]
TINY_COLOURS = dict(zip(TINY_CLASSES, [(220, 40, 40), (40, 200, 40), (40, 40, 220)]))  # one per class


def fixture_photos() -> list[Path]:
    """tests/fixtures/flowers/NNN_slug.jpg, NNN = 1-based label id."""
    return sorted(FIXTURE_FLOWERS.glob("[0-9][0-9][0-9]_*.jpg"))


def label_id(photo: Path) -> int:
    return int(photo.name[:3])


def honest_labels(probabilities: np.ndarray, seed: int) -> np.ndarray:
    """A label drawn from each row's own probabilities: answers exactly as sure as they are right."""
    draws = np.random.default_rng(seed).random(len(probabilities))[:, None]
    return (draws > np.cumsum(probabilities, axis=1)).sum(axis=1)


def save_solid(path: Path, color, size=(40, 40), noise: float = 0.0, seed: int = 0) -> Path:
    """An RGB image of one colour (plus optional Gaussian noise), saved by Pillow."""
    pixels = np.broadcast_to(np.asarray(color, dtype=np.float64), (size[1], size[0], 3))
    if noise:
        pixels = pixels + np.random.default_rng(seed).normal(0, noise, pixels.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
    return path


def make_class_tree(root: Path, classes: dict[str, tuple], per_class: int, size: int = 40) -> Path:
    """root/CLASS/NN.png: `per_class` noisy solid-colour images per class."""
    for c, (name, color) in enumerate(classes.items()):
        for i in range(per_class):
            save_solid(root / name / f"{i:02d}.png", color, (size, size), noise=20, seed=100 * c + i)
    return root


def save_tiny_model(folder: Path, weights: Path, size: int, class_names: list[str], seed: int) -> Path:
    """A saved, untrained MobileNetV2 classifier (model.keras and metadata.json, no .tflite) with
    these classes and input size, built on the tests' small MobileNetV2 weights."""
    import keras

    from flower_demo import models

    keras.utils.set_random_seed(seed)
    model = models.create_model("mobilenet_v2", len(class_names), size, str(weights))
    metadata = {"class_names": class_names, "image_size": size, "backbone": "mobilenet_v2"}
    models.save_model(model, folder, metadata)
    return folder


def constant_model(folder: Path, weights: Path, class_names: list[str], answer: str) -> Path:
    """A saved model that answers `answer` at about 99.9% for every photo (zero kernel, biased
    classifier): what it scores, or what a student learns from it, is known without running it."""
    from flower_demo import models

    model = models.create_model("mobilenet_v2", len(class_names), TINY_SIZE, str(weights))
    kernel, _ = model.get_layer("classifier").get_weights()
    bias = np.zeros(len(class_names), "float32")
    bias[class_names.index(answer)] = 8.0
    model.get_layer("classifier").set_weights([np.zeros_like(kernel), bias])
    metadata = {"class_names": class_names, "image_size": TINY_SIZE, "backbone": "mobilenet_v2"}
    models.save_model(model, folder, metadata)
    return folder


def metadata_only(model_dir: Path, folder: Path) -> Path:
    """`folder` holding only `model_dir`'s metadata.json, no model file: what a command that checks
    a model by its metadata before loading it says about it, it says without loading anything."""
    from flower_demo.model_files import METADATA_FILE

    folder.mkdir()
    shutil.copy(model_dir / METADATA_FILE, folder / METADATA_FILE)
    return folder


def is_trained(metadata: dict) -> bool:
    """Only a trained model can be held to naming species right; the tests' debug models are not."""
    trained = "metrics" in metadata or "estimate" in metadata
    return trained and metadata["image_size"] >= TRAINED_IMAGE_SIZE


def load_app() -> ModuleType:
    """Import app.py (which loads the model), or skip when there is no model to serve."""
    if not os.environ.get("FLOWER_DEMO_MODEL") and not (REPO_ROOT / "weights" / "model.keras").is_file():
        pytest.skip("no model to serve: weights/model.keras is missing and FLOWER_DEMO_MODEL is unset")
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    return importlib.import_module("app")


def run_module(
    module: str, *args: object, cwd: Path = REPO_ROOT, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS...` the way users run our commands (stdout a pipe, not a terminal),
    from the repository root or from `cwd` with the repository's package importable, with `env`'s
    variables set (KERAS_BACKEND=jax, say)."""
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {}), "PYTHONPATH": path},
    )


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def flowers102_folder(root: Path) -> Path:
    """Flowers-102's layout (jpg/, imagelabels.mat, setid.mat) holding real photos of known species."""
    from scipy.io import savemat  # a training dependency: imported by the tests that need it

    (root / "jpg").mkdir(parents=True)
    examples = sorted((REPO_ROOT / "examples").glob("[0-9][0-9][0-9]_*.jpg"))
    splits = {"trnid": examples, "valid": fixture_photos(), "tstid": fixture_photos()}
    labels, ids = [], {}
    for split, photos in splits.items():
        ids[split] = []
        for photo in photos:
            labels.append(label_id(photo))
            ids[split].append(len(labels))
            shutil.copy(photo, root / "jpg" / f"image_{len(labels):05d}.jpg")
    savemat(root / "imagelabels.mat", {"labels": np.array([labels])})
    savemat(root / "setid.mat", {k: np.array([v]) for k, v in ids.items()})
    return root
