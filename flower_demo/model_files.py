"""What a model folder holds on disk, and the few facts every part of the project shares about it.

A model folder (the shipped one is `weights/`) holds `metadata.json` (class names, input size,
backbone, metrics, calibration) beside `model.tflite` (what the serving core runs) and/or
`model.keras` (the trained Keras model), and `ood.npz` when the stored "not one of the classes"
rule needs statistics. This module owns those file names, the names of the served outputs,
reading and checking metadata and label maps, and keeping native libraries' start-up lines off
the terminal. It imports neither TensorFlow nor Keras, and nothing of the project but errors.py,
so that both the serving core (core.py) and the Keras side (models.py) can build on it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flower_demo.errors import FlowerDemoError

REPO_ROOT = Path(__file__).resolve().parent.parent  # the checkout, when running from one
# An installed wheel carries weights/ and label_map.json as flower_demo/shipped/ (setup.py puts
# them there); a checkout, or an editable install, has no such folder and serves its own.
PACKAGED_MODEL_DIR = Path(__file__).resolve().parent / "shipped"
INSTALLED = PACKAGED_MODEL_DIR.is_dir()
SHIPPED_MODEL_DIR = PACKAGED_MODEL_DIR if INSTALLED else REPO_ROOT / "weights"
SHIPPED_LABEL_MAP = (PACKAGED_MODEL_DIR if INSTALLED else REPO_ROOT) / "label_map.json"
MODEL_FILE = "model.keras"
TFLITE_FILE = "model.tflite"
METADATA_FILE = "metadata.json"
METADATA_VERSION = 1
OOD_FILE = "ood.npz"  # the rule's statistics, beside the model, for the rules that need them
# The names of the exported model's outputs (export.py writes them, both engines return them).
PROBABILITIES, CLASS_MAPS, FEATURES = "probabilities", "class_maps", "features"


# --- metadata and label maps -----------------------------------------------------------------


def model_dir(path: str | os.PathLike | None) -> Path:
    """The folder of a model folder, `.keras` or `.tflite` path; the shipped one for None."""
    path = Path(path) if path is not None else SHIPPED_MODEL_DIR
    return path.parent if path.suffix in (".keras", ".tflite") else path


def model_file(path: str | os.PathLike | None, name: str) -> Path:
    """The network to run for `path`: the `.keras` or `.tflite` file it names, whatever that file
    is called (runs/x/best.keras), else the folder's `name` (MODEL_FILE or TFLITE_FILE)."""
    suffix = Path(name).suffix
    if path is None or Path(path).suffix not in (".keras", ".tflite"):
        return model_dir(path) / name
    if Path(path).suffix != suffix:
        raise FlowerDemoError(f"{path} is not a {suffix} file")
    return Path(path)


def metadata_path(path: str | os.PathLike | None = None) -> Path:
    """Where the metadata of the model folder (or .keras / .tflite file) at `path` lives."""
    return model_dir(path) / METADATA_FILE


def read_json(path: Path, what: str) -> Any:
    """Parsed JSON of `path`, or a FlowerDemoError naming `what` is missing or unreadable."""
    if not path.is_file():
        raise FlowerDemoError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise FlowerDemoError(f"{what} {path} is not valid JSON: {exc}") from None


def read_metadata(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """The metadata of the model folder (or model file) at `path`; the shipped one by default."""
    if path is not None and Path(path).suffix in (".keras", ".tflite") and not Path(path).is_file():
        raise FlowerDemoError(f"model file not found: {path}")
    if not model_dir(path).is_dir():
        raise FlowerDemoError(f"model folder not found: {model_dir(path)}")
    meta_path = metadata_path(path)
    metadata = read_json(meta_path, "model metadata")
    if not isinstance(metadata, dict):
        raise FlowerDemoError(f"model metadata {meta_path} must be a JSON object")
    for key in ("class_names", "image_size", "backbone"):
        if key not in metadata:
            raise FlowerDemoError(f"model metadata {meta_path} lacks {key!r}")
    return metadata


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
    mapping = read_json(path, "label map")
    if not isinstance(mapping, dict):
        raise FlowerDemoError(f"label map {path} must be a JSON object of id -> name")
    expected = {str(i) for i in range(1, num_classes + 1)}
    if set(mapping) != expected:
        raise FlowerDemoError(
            f"label map {path} has {len(mapping)} ids, which do not match the model's "
            f"{num_classes} classes (ids 1..{num_classes})"
        )
    return [str(mapping[str(i)]) for i in range(1, num_classes + 1)]


@contextlib.contextmanager
def native_stderr_filtered(drop: re.Pattern) -> Iterator[None]:
    """Keep lines matching `drop` that native libraries write while the block runs (TensorFlow's
    start-up notices, LiteRT's "Created TensorFlow Lite XNNPACK delegate") off the user's terminal.

    C++ code writes to file descriptor 2 directly, past `sys.stderr`, so the descriptor itself is
    captured in a file for the duration, and every other line (real warnings, errors) written back.
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
                if not drop.search(line):
                    sys.stderr.write(line)
            sys.stderr.flush()
