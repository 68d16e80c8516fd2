"""What a model folder holds on disk, and the few facts every part of the project shares about it.

A model folder (the shipped one is `weights/`) holds `metadata.json` (class names, input size,
backbone, metrics, calibration) beside `model.tflite` (what the serving core runs) and/or
`model.keras` (the trained Keras model), and, once calibrated, `ood.npz` (the "not one of the
classes" rule's statistics and the reference photos' features) with `thumbnails/` (the reference
photos themselves, neighbours.py). The folder is one unit: metadata.json's "files" records each
model file's size and sha256 (a folder's as one record), loading refuses a file that does not
match (`verify_file`), and every command that writes a folder writes its files beside their places
and renames them in, the metadata last (`Staged`). This module owns those file names, the names of
the served outputs, reading and checking metadata, label maps and the files' hashes, writing a
folder, and loading Keras with its native libraries' start-up lines kept off the terminal and its
start-up objects out of the garbage collector's way (`load_keras_quietly`: the one place Keras is
first imported). It imports neither TensorFlow nor Keras when it loads, and nothing
of the project but errors.py, so that both the serving core (core.py) and the Keras side
(models.py, efficientnet_lite.py) can build on it.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator, Sequence
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
OOD_FILE = "ood.npz"  # the rule's statistics and the reference photos' features, beside the model
THUMBNAILS_DIR = "thumbnails"  # the reference photos, small JPEGs (neighbours.py)
# A model's input size unless told otherwise: the Flowers-102 photos' short side, the shipped
# recipe's input (README). Here, not in models.py, so that train's options need no Keras.
DEFAULT_IMAGE_SIZE = 256
FILES_KEY = "files"  # metadata.json: {file name: {"bytes": size, "sha256": hex}} of its model files
# (a folder's record also has "files", its count; its bytes are its files' total, its sha256 is of
# the lines "NAME SHA256" of its files, sorted by name)
SKIP_VERIFY_ENV = "FLOWER_DEMO_SKIP_VERIFY"  # 1: load a folder's files without checking them (experts)
HASH_CHUNK = 1 << 20
_DIGESTS: dict[tuple, str] = {}  # a file (see _digest_key) -> its sha256: each file hashed once
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


# --- the folder as one unit: each file's size and sha256, written by rename -------------------


def folder_files(folder: Path) -> list[Path]:
    """The files a recorded folder holds, by name (hidden ones, such as a write in progress, aside)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def sha256_of(path: Path) -> str:
    """The file's sha256, hex; a folder's is that of its files' "NAME SHA256" lines."""
    digest = hashlib.sha256()
    if path.is_dir():
        for file in folder_files(path):
            digest.update(f"{file.name} {sha256_of(file)}\n".encode())
        return digest.hexdigest()
    with path.open("rb") as stream:
        while chunk := stream.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def size_of(path: Path) -> int:
    """A file's bytes; a folder's files' total."""
    return sum(p.stat().st_size for p in folder_files(path)) if path.is_dir() else path.stat().st_size


def file_record(path: Path) -> dict[str, Any]:
    """What metadata.json records of one model file or folder ("files"): its size and sha256."""
    record = {"bytes": size_of(path), "sha256": sha256_of(path)}
    return {"files": len(folder_files(path)), **record} if path.is_dir() else record


def _digest_key(path: Path) -> tuple:
    """What changes when a file's bytes may have: a copy can keep mtime, never the change time
    (for a folder, that of each of its files)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    if path.is_dir():
        return key + tuple(_digest_key(p)[1:] for p in folder_files(path))
    return key


def _checked_digest(path: Path) -> str:
    """sha256_of(path), computed once per process for a file that has not changed since."""
    key = _digest_key(path)
    if key not in _DIGESTS:
        _DIGESTS[key] = sha256_of(path)
    return _DIGESTS[key]


def verify_file(
    path: Path, metadata: dict[str, Any], named: bool = False, remedy: str = "restore the folder's files"
) -> None:
    """Refuse, in one line naming the file, a model file that its folder's metadata does not vouch
    for: another size or sha256 than recorded (a file of another model, a truncated copy), or, for
    a file the folder serves by default (`named` False), none recorded at all (a file older than
    the metadata). A file the caller named itself and the metadata does not list is its own
    business. Folders written before hashes existed (no "files") and SKIP_VERIFY_ENV=1 are not
    checked. The size is checked at every load, the sha256 once per process per file."""
    records = metadata.get(FILES_KEY)
    if records is None or os.environ.get(SKIP_VERIFY_ENV) == "1":
        return
    record = records.get(path.name)
    if record is None and named:
        return
    size = size_of(path) if record is not None else None  # a folder's: its files walked once
    if record is None:
        problem = f"is not recorded in {METADATA_FILE}, so it may be a file of an earlier model"
    elif size != (recorded := record.get("bytes")):
        problem = f"does not match {METADATA_FILE} (size differs: {size} bytes, recorded {recorded})"
    elif _checked_digest(path) != record.get("sha256"):
        problem = f"does not match {METADATA_FILE} (sha256 differs)"
    else:
        return
    raise FlowerDemoError(f"{path} {problem}: {remedy} ({SKIP_VERIFY_ENV}=1 skips this check)")


def write_json(path: Path, value: Any) -> None:
    """`value` as indented JSON in `path`, written beside it and renamed over it: a reader sees
    the old file or the new one, never half of one."""
    staged = path.with_name(f".{uuid.uuid4().hex[:8]}.{path.name}")
    try:
        staged.write_text(json.dumps(value, indent=2) + "\n")
        os.replace(staged, path)
    finally:
        staged.unlink(missing_ok=True)


class Staged:
    """New files of a model folder, written beside their final names and made the folder's own by
    `publish`, metadata.json last; a command that fails or is interrupted before that leaves the
    folder as it was (its temporary files are removed on the way out).

        with Staged(folder) as staged:
            np.savez(staged.path(OOD_FILE), **arrays)
            staged.publish(metadata)
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.paths: dict[str, Path] = {}

    def __enter__(self) -> Staged:
        return self

    def __exit__(self, *exc: object) -> None:
        for path in self.paths.values():
            _remove(path)

    def path(self, name: str) -> Path:
        """Where to write the file that becomes `name`: a hidden file in the same folder (so the
        rename replaces in one step), ending as `name` does (Keras and NumPy go by the suffix)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.paths[name] = self.folder / f".{uuid.uuid4().hex[:8]}.{name}"
        return self.paths[name]

    def subfolder(self, name: str) -> Path:
        """Where to write the folder that becomes `name` (THUMBNAILS_DIR): a hidden folder beside it,
        created here, renamed in by `publish` like a file (the old one moved aside first)."""
        path = self.path(name)
        path.mkdir()
        return path

    def publish(self, metadata: dict[str, Any], removed: Sequence[str] = (), fresh: bool = False) -> Path:
        """Rename the staged files into place, delete `removed`, then write `metadata` as the
        folder's metadata.json with "files" recording every model file's size and sha256: the
        staged files', the earlier records of files left alone (none with `fresh`: a new model,
        so nothing else in the folder is its), and, for a folder written before hashes existed,
        the model files it holds. Interrupted between the renames and the metadata, the folder
        is refused at load (its files no longer match), never served mixed."""
        records = {} if fresh else dict(metadata.get(FILES_KEY) or {})
        if not fresh and FILES_KEY not in metadata:
            names = (MODEL_FILE, TFLITE_FILE, OOD_FILE)
            records = {n: file_record(self.folder / n) for n in names if (self.folder / n).is_file()}
        records = {n: r for n, r in records.items() if n not in removed and (self.folder / n).exists()}
        for name, path in self.paths.items():
            records[name] = file_record(path)
        staged, self.paths = self.paths, {}
        for name, path in staged.items():
            target = self.folder / name
            if path.is_dir() and target.exists():  # a folder cannot be renamed over a full one
                aside = self.folder / f".{uuid.uuid4().hex[:8]}.{name}.old"
                os.replace(target, aside)
                self.paths[f"{name}.old"] = aside  # removed on the way out
            os.replace(path, target)
            _DIGESTS[_digest_key(target)] = records[name]["sha256"]  # no need to hash it again
        for name in removed:
            _remove(self.folder / name)
        target = self.folder / METADATA_FILE
        write_json(target, {**metadata, FILES_KEY: dict(sorted(records.items()))})
        return target


def _remove(path: Path) -> None:
    """Delete a file or a folder, if it is there."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


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


# What TensorFlow writes to stderr while it starts, whatever the log level: absl prints every line
# logged before absl::InitializeLog(), and the CUDA probe reports an error on a machine without a GPU.
STARTUP_NOISE = re.compile(
    r"All log messages before absl::InitializeLog|oneDNN custom operations are on|cudart_stub\.cc"
    r"|cpu_feature_guard\.cc|To enable the following instructions|rebuild TensorFlow with the appropriate"
    r"|failed call to cuInit|Unable to register cu(DNN|FFT|BLAS) factory|computation_placer\.cc"
)


def quiet_startup() -> contextlib.AbstractContextManager:
    """Drop TensorFlow's start-up notices from stderr; every other line (real warnings, errors) is kept."""
    return native_stderr_filtered(STARTUP_NOISE)


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Run a large import without Python's cyclic garbage collector, then keep what it made out of
    every later collection. Importing Keras and TensorFlow makes about 900,000 objects that live as
    long as the process; the collector walked them all eight times during the import and again at
    every full collection after it, about a tenth of a short command's CPU time (Gradio's import in
    app.py: an eighth of the app's start-up). gc.freeze() moves the objects that exist now to the
    permanent generation (freed by reference counting as before; the few thousand cycles the import
    left behind are kept, not collected)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


def load_keras_quietly() -> None:
    """Import Keras (and TensorFlow, on its TensorFlow backend) with their start-up notices kept off
    the terminal and the garbage collector paused (collector_paused). Every module that uses Keras
    calls this before `import keras`: whichever of them a command starts from (models.py, or
    efficientnet_lite.py run as `python -m`) imports it first."""
    # TensorFlow's own (tsl) logging: no INFO lines from C++ unless the user asks; warnings and errors stay.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    with quiet_startup(), collector_paused():
        import keras

        if keras.config.backend() == "tensorflow":
            import tensorflow as tf

            tf.config.list_physical_devices()  # the CUDA probe logs here, once
