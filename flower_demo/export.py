"""Export a trained model to TensorFlow Lite, the file the serving core runs, and measure it.

    python -m flower_demo.export --model runs/NAME                  # runs/NAME/model.tflite (float32)
    python -m flower_demo.export --quantize int8 --model weights --out runs/tflite \\
        --data-dir DATA_DIR --measure

Without `--out` the float32 file is written into the model folder itself as `model.tflite`, where
the core (core.py) finds and runs it by default; `train` does this at the end of every run.
With `--out`, `--quantize` picks none (float32), float16 (weights stored as float16, about half
the size) or int8 (weights and activations int8, calibrated on REPRESENTATIVE images: the fixture
photos and their mirror images, plus REPRESENTATIVE_TRAIN training images when `--data-dir` is
given), and OUT gets `model_<quantize>.tflite` with a copy of the metadata that names it, so
`Classifier("OUT/model_int8.tflite")` (and the predict command line's `--model`) runs it.
Every file takes RGB pixels 0..255, shape (1, size, size, 3) float32 (preprocessing is inside),
and returns the outputs of `models.serving_model`: probabilities, class activation maps (where
the backbone has a feature map) and pooled features.

`--measure` prints the file's size, its batch-1 CPU latency (p50) beside the Keras model's, and
with `--data-dir` the validation top-1 of both and how often they agree.

This module owns the conversion, those measurements and the timing helper the benchmarks share;
Keras and TensorFlow are imported only by the functions that need them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from flower_demo import core, model_files
from flower_demo.errors import FlowerDemoError, exit_status, first_line
from flower_demo.images import ImageLike, list_images, square_uint8

FORMATS = ("tflite",)
QUANTIZE = ("none", "float16", "int8")
FIXTURE_PHOTOS = model_files.REPO_ROOT / "tests" / "fixtures" / "flowers"
REPRESENTATIVE_TRAIN = 96  # training images added to the int8 calibration set with --data-dir
REPRESENTATIVE_SEED = 0
WARMUP = 5
REPEATS = 50
EXPORTS_KEY = "exports"
SOURCE_SHA256 = "model_sha256"  # an export's record: the sha256 of the .keras file it was converted from
# What the converter logs on every run (absl INFO and WARNING lines: "Ignored output_format", the
# SavedModel it reads back); its errors (E lines) still reach the terminal.
CONVERTER_NOISE = re.compile(r"^[IW]\d{4} ")


def tflite_file_name(quantize: str) -> str:
    return f"model_{'float32' if quantize == 'none' else quantize}.tflite"


# --- exporting -------------------------------------------------------------------------------


def representative_items(data_dir: str | os.PathLike | None = None) -> list[ImageLike]:
    """Photos for int8 calibration: the fixture flowers, plus seeded training images if given."""
    items: list[ImageLike] = list(list_images(FIXTURE_PHOTOS)) if FIXTURE_PHOTOS.is_dir() else []
    if data_dir is not None:
        from flower_demo import data

        train = data.load_oxford_folder(data_dir, "train")
        rng = np.random.default_rng(REPRESENTATIVE_SEED)
        picked = rng.choice(len(train), size=min(REPRESENTATIVE_TRAIN, len(train)), replace=False)
        items += [train.items[i] for i in sorted(picked)]
    if not items:
        raise FlowerDemoError(
            f"int8 needs representative photos: {FIXTURE_PHOTOS} is absent, give --data-dir"
        )
    return items


def _representative_dataset(items: list[ImageLike], size: int):
    def generate() -> Iterator[list[np.ndarray]]:
        for item in items:
            pixels = square_uint8(item, size).astype(np.float32)
            yield [pixels[None]]
            yield [pixels[None, :, ::-1]]  # the mirror image: twice the views for free

    return generate


def convert(model: Any, size: int, quantize: str, representative: list[ImageLike] | None = None) -> bytes:
    """The TFLite flatbuffer of `models.serving_model(model)` (batch 1, float32 pixels 0..255 in)."""
    from flower_demo import models  # first: Keras and TensorFlow load quietly, and only when needed

    import tensorflow as tf  # isort: skip

    if quantize not in QUANTIZE:
        raise FlowerDemoError(f"unknown quantization {quantize!r}; choose one of {', '.join(QUANTIZE)}")
    if quantize == "int8" and not representative:
        raise FlowerDemoError("int8 quantization needs representative images")
    signature = [tf.TensorSpec((1, size, size, 3), tf.float32, name="image")]
    with tempfile.TemporaryDirectory(prefix="flower_demo_export_") as saved:
        try:
            with (
                contextlib.redirect_stdout(sys.stderr),
                warnings.catch_warnings(),
                model_files.native_stderr_filtered(CONVERTER_NOISE),
            ):
                warnings.simplefilter("ignore")  # the converter warns
                save_serving_function(models.serving_model(model), signature, saved)
                converter = tf.lite.TFLiteConverter.from_saved_model(saved)
                if quantize == "float16":
                    converter.optimizations = [tf.lite.Optimize.DEFAULT]
                    converter.target_spec.supported_types = [tf.float16]
                elif quantize == "int8":
                    converter.optimizations = [tf.lite.Optimize.DEFAULT]
                    converter.representative_dataset = _representative_dataset(representative, size)
                    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
                    converter.inference_input_type = tf.float32
                    converter.inference_output_type = tf.float32
                return converter.convert()
        except FlowerDemoError:
            raise  # a representative photo that cannot be decoded
        except Exception as exc:  # the converter raises ConverterError, RuntimeError, ValueError ...
            reason = first_line(exc)
            raise FlowerDemoError(f"TFLite conversion failed: {reason}") from None


def save_serving_function(serving: Any, signature: list[Any], folder: str) -> None:
    """Save `serving`'s forward pass as a SavedModel of one function that holds the Keras weights
    as constants (what the converter makes of variables anyway).

    Only the function: a whole Keras model (`Model.export`) also saves its layer graph, which
    takes twice as long to write and is not converted. The weights are read once and traced in
    as constants (keras.StatelessScope): a SavedModel of variables also writes a checkpoint and
    the functions that save and restore it, and the converter loads it twice: 3.5 to 4 s more CPU
    time per conversion on a 2-core machine, for files that answer the same to the bit. Variables
    that are not Keras' (a TF-Hub module's) stay variables and are saved with the function;
    without them the file would keep VAR_HANDLE ops, which answer NaN.
    """
    import keras
    import tensorflow as tf

    weights = [(variable, variable.numpy()) for variable in serving.variables]

    def forward(image: Any) -> Any:
        with keras.StatelessScope(state_mapping=[(v, tf.constant(value)) for v, value in weights]):
            return serving(image, training=False)

    concrete = tf.function(forward, input_signature=signature, autograph=False).get_concrete_function()
    holder = tf.Module()
    holder.captured = list(concrete.variables)  # a TF-Hub module's; none for a Keras backbone
    tf.saved_model.save(holder, folder, signatures=concrete)


def export_tflite(
    model_path: str | os.PathLike | None,
    out_dir: str | os.PathLike | None = None,
    quantize: str = "none",
    data_dir: str | os.PathLike | None = None,
    force: bool = False,
) -> Path:
    """Write the model folder's own `model.tflite` (float32, `out_dir` None), or
    OUT/model_<quantize>.tflite with OUT/metadata.json (the model's, naming the file). The folder's
    own file is left as it is when it is already the export of this model.keras (up_to_date), unless
    `force`: the conversion is deterministic, so doing it again would write the same bytes."""
    if quantize not in QUANTIZE:
        raise FlowerDemoError(f"unknown quantization {quantize!r}; choose one of {', '.join(QUANTIZE)}")
    source = model_files.model_dir(model_path)
    if in_place(model_path, out_dir):
        out_dir = None
    if out_dir is None and quantize != "none":
        raise FlowerDemoError("a quantized file goes into another folder: give --out")
    keras_file = model_files.model_file(model_path, model_files.MODEL_FILE)
    if not keras_file.is_file():  # said before TensorFlow's seconds of start-up
        raise FlowerDemoError(f"model file not found: {keras_file}")
    if not force and (existing := current_export(model_path, out_dir, quantize)):
        return existing
    from flower_demo import models  # first: Keras and TensorFlow load quietly, and only when needed

    import keras  # isort: skip

    if keras.config.backend() != "tensorflow":  # said before the model is loaded
        raise FlowerDemoError(
            "TFLite conversion needs Keras' TensorFlow backend: run it with KERAS_BACKEND=tensorflow "
            "(model.keras reads the same on every backend)"
        )
    model, metadata = models.load_model(model_path)
    size = int(metadata["image_size"])
    representative = representative_items(data_dir) if quantize == "int8" else None
    blob = convert(model, size, quantize, representative)
    folder = source if out_dir is None else Path(out_dir)
    name = model_files.TFLITE_FILE if out_dir is None else tflite_file_name(quantize)
    exports, files = (
        (metadata.get(EXPORTS_KEY, {}), None) if out_dir is None else earlier_exports(folder, metadata)
    )
    exports = {**exports, name: export_record(blob, quantize, source, keras_file, representative)}
    ood = source / model_files.OOD_FILE
    with model_files.Staged(folder) as staged:  # the new files first, the metadata naming them last
        staged.path(name).write_bytes(blob)
        if out_dir is not None and ood.is_file():  # the stored rule's statistics, checked before copied
            model_files.verify_file(
                ood, metadata, remedy=f"re-run python -m flower_demo.calibrate --model {source}"
            )
            shutil.copy2(ood, staged.path(model_files.OOD_FILE))
        removed = [model_files.OOD_FILE] if out_dir is not None and not ood.is_file() else []
        base = metadata if files is None else {**metadata, model_files.FILES_KEY: files}
        staged.publish({**base, EXPORTS_KEY: exports}, removed=removed)
    return folder / name


def export_record(
    blob: bytes, quantize: str, source: Path, keras_file: Path, representative: list[ImageLike] | None
) -> dict:
    """What metadata.json says of one export: enough to tell later which model.keras it came from."""
    import tensorflow as tf  # already loaded by the conversion

    return {
        "format": "tflite",
        "quantize": quantize,
        "source": source.resolve().name,  # the model folder's name: where it sat is no provenance
        "bytes": len(blob),
        SOURCE_SHA256: model_files.sha256_of(keras_file),
        "representative_images": 2 * len(representative) if representative else None,
        "tensorflow": tf.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def in_place(model_path: str | os.PathLike | None, out_dir: str | os.PathLike | None) -> bool:
    """Whether an export goes into the model folder itself: no out folder, or that very folder."""
    return out_dir is None or Path(out_dir).resolve() == model_files.model_dir(model_path).resolve()


def current_export(
    model_path: str | os.PathLike | None, out_dir: str | os.PathLike | None, quantize: str
) -> Path | None:
    """The folder's own model.tflite when exporting would write it again unchanged (up_to_date),
    else None (a quantized or out-of-folder export is always written)."""
    if quantize != "none" or not in_place(model_path, out_dir):
        return None
    folder = model_files.model_dir(model_path)
    keras_file = model_files.model_file(model_path, model_files.MODEL_FILE)
    return folder / model_files.TFLITE_FILE if up_to_date(folder, keras_file) else None


def up_to_date(folder: Path, keras_file: Path) -> bool:
    """Whether the folder's model.tflite is the export of `keras_file` as it is now: recorded in the
    folder's metadata (its size and sha256 checked) as converted from a file with this sha256."""
    target = folder / model_files.TFLITE_FILE
    if not (target.is_file() and keras_file.is_file()):
        return False
    try:
        metadata = model_files.read_metadata(folder)
        record = metadata.get(EXPORTS_KEY, {}).get(model_files.TFLITE_FILE, {})
        model_files.verify_file(target, metadata)
    except FlowerDemoError:  # no metadata, or a changed or unrecorded model.tflite: convert again
        return False
    if SOURCE_SHA256 not in record:
        return False
    return record[SOURCE_SHA256] == model_files.sha256_of(keras_file)


def earlier_exports(folder: Path, metadata: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The exports of the same trained model already in the out folder `folder`, and their file
    records, kept beside a new one; none when the folder holds another model's."""
    previous = folder / model_files.METADATA_FILE
    try:
        old = json.loads(previous.read_text()) if previous.is_file() else {}
    except (OSError, ValueError):
        return {}, {}
    if old.get("created") != metadata.get("created") or old.get("class_names") != metadata["class_names"]:
        return {}, {}
    exports = {n: e for n, e in old.get(EXPORTS_KEY, {}).items() if (folder / n).is_file()}
    return exports, {n: r for n, r in (old.get(model_files.FILES_KEY) or {}).items() if n in exports}


# --- measuring -------------------------------------------------------------------------------


def time_interleaved(
    runs: dict[str, Callable[[], Any]], repeats: int = REPEATS, warmup: int = WARMUP
) -> dict[str, np.ndarray]:
    """Seconds per call of each of `runs`, taking turns call by call so that background load hits
    every one alike; `warmup` untimed calls each first (tracing, caches, allocator)."""
    for run in runs.values():
        for _ in range(warmup):
            run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: np.asarray(t) for name, t in times.items()}


def latency(lite: Any, keras_engine: Any, image: np.ndarray, repeats: int = REPEATS) -> dict[str, float]:
    """Batch-1 p50 latency (ms) of both engines on the same preprocessed image."""
    x = image[None].astype(np.float32)
    times = time_interleaved({"tflite": lambda: lite(x), "keras": lambda: keras_engine(x)}, repeats)
    return {f"{name}_p50_ms": 1000.0 * float(np.median(t)) for name, t in times.items()}


def validation_agreement(lite: Any, keras_engine: Any, data_dir: str | os.PathLike) -> dict[str, Any]:
    """How often the TFLite file and the Keras model give the same top-1 on the same decoded
    validation images, and each one's top-1 accuracy where the model names every class of the data."""
    from flower_demo import data, metrics

    split = data.load_oxford_folder(data_dir, "validation")
    lite_p, full_p, lite_f, full_f = [], [], [], []
    for batch in data.iter_decoded(split.items, lite.image_size, 32):
        pixels = batch.astype(np.float32)
        lite_out, full_out = lite(pixels), keras_engine(pixels)
        lite_p.append(lite_out[model_files.PROBABILITIES])
        full_p.append(full_out[model_files.PROBABILITIES])
        lite_f.append(lite_out.get(model_files.FEATURES))
        full_f.append(full_out.get(model_files.FEATURES))
    lite_probs, full_probs = np.concatenate(lite_p), np.concatenate(full_p)
    lite_feats = None if lite_f[0] is None else np.concatenate(lite_f)
    full_feats = None if full_f[0] is None else np.concatenate(full_f)
    lite_top1, full_top1 = lite_probs.argmax(1), full_probs.argmax(1)
    result: dict[str, Any] = {
        "n": int(len(split.labels)),
        "top1_agreement": float((lite_top1 == full_top1).mean()),
        "max_abs_probability_difference": float(np.abs(lite_probs - full_probs).max()),
    }
    names = keras_engine.metadata["class_names"]
    if set(split.class_names) <= set(names):  # accuracy needs the data's labels as the model's columns
        labels = metrics.class_columns(names, split.class_names, f"model {keras_engine.path}", "the data")
        result["tflite_top1"] = float((lite_top1 == labels[split.labels]).mean())
        result["keras_top1"] = float((full_top1 == labels[split.labels]).mean())
    rule = core.read_calibration(keras_engine.metadata, keras_engine.path)
    if rule is not None:
        lite_known = rule.is_known(rule.probabilities(lite_probs), lite_feats)
        result["tflite_kept_flowers"] = float(lite_known.mean())
        result["keras_kept_flowers"] = float(rule.is_known(rule.probabilities(full_probs), full_feats).mean())
    return result


def measure(
    tflite_path: Path, model_path: str | os.PathLike | None, data_dir: str | None, repeats: int = REPEATS
) -> dict[str, Any]:
    from flower_demo import models

    keras_engine = models.KerasEngine(model_files.model_dir(model_path))
    lite = core.LiteRTEngine(tflite_path)
    photo = next(iter(list_images(FIXTURE_PHOTOS)), None) if FIXTURE_PHOTOS.is_dir() else None
    image = (
        square_uint8(photo, lite.image_size)
        if photo is not None
        else np.random.default_rng(0).uniform(0, 255, (lite.image_size, lite.image_size, 3))
    )
    result: dict[str, Any] = {
        "file": str(tflite_path),
        "tflite_mb": tflite_path.stat().st_size / 1e6,
        "keras_mb": keras_engine.path.stat().st_size / 1e6,
        "threads": core.NUM_THREADS,
        **latency(lite, keras_engine, image, repeats),
        "load_average": os.getloadavg()[0],
    }
    if data_dir is not None:
        result.update(validation_agreement(lite, keras_engine, data_dir))
    return result


def format_measurement(m: dict[str, Any]) -> str:
    lines = [
        f"{m['file']}: {m['tflite_mb']:.2f} MB (model.keras {m['keras_mb']:.2f} MB)",
        f"batch-1 CPU latency p50: TFLite {m['tflite_p50_ms']:.1f} ms, Keras {m['keras_p50_ms']:.1f} ms "
        f"({m['threads']} threads, load average {m['load_average']:.1f})",
    ]
    if "tflite_top1" in m:
        lines.append(
            f"validation top-1 ({m['n']} images): TFLite {m['tflite_top1']:.4f}, "
            f"Keras {m['keras_top1']:.4f}; "
            f"same top-1 on {m['top1_agreement']:.1%}; largest probability difference "
            f"{m['max_abs_probability_difference']:.4f}"
        )
    if "tflite_kept_flowers" in m:
        lines.append(
            f"validation flowers kept by the stored rule: TFLite {m['tflite_kept_flowers']:.1%}, "
            f"Keras {m['keras_kept_flowers']:.1%}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m flower_demo.export",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--format", choices=FORMATS, default="tflite", help="export format (default: tflite)")
    p.add_argument(
        "--quantize", choices=QUANTIZE, default="none", help="weight/activation precision (default: none)"
    )
    p.add_argument(
        "--model",
        default=str(model_files.SHIPPED_MODEL_DIR),
        help="model folder or .keras file (default: weights/)",
    )
    p.add_argument(
        "--out",
        default=None,
        help="folder for model_<quantize>.tflite and its metadata.json "
        "(default: model.tflite in the model folder itself, float32 only)",
    )
    p.add_argument(
        "--data-dir",
        default=None,
        help="Flowers-102 folder: training images for int8 calibration, validation for --measure",
    )
    p.add_argument("--measure", action="store_true", help="size, latency and (with --data-dir) top-1")
    p.add_argument(
        "--repeats", type=int, default=REPEATS, help=f"timed calls per latency figure (default: {REPEATS})"
    )
    p.add_argument("--json", action="store_true", help="print the measurement as JSON")
    p.add_argument(
        "--force",
        action="store_true",
        help="convert even when the folder's model.tflite is already the export of its model.keras",
    )
    args = p.parse_args(argv)

    def work() -> None:
        started = time.perf_counter()
        existing = None if args.force else current_export(args.model, args.out, args.quantize)
        if existing:
            keras_name = model_files.model_file(args.model, model_files.MODEL_FILE).name
            print(f"{existing} is up to date: the export of this {keras_name} (--force converts again)")
            target = existing
        else:  # checked just now: converting is what is left to do
            target = export_tflite(args.model, args.out, args.quantize, args.data_dir, force=True)
            seconds = time.perf_counter() - started
            print(f"wrote {target} ({target.stat().st_size / 1e6:.2f} MB) in {seconds:.0f} s")
        if args.measure:
            result = measure(target, args.model, args.data_dir, args.repeats)
            print(json.dumps(result) if args.json else format_measurement(result))

    return exit_status(work)


if __name__ == "__main__":
    sys.exit(main())
