"""A model for phones: export to TensorFlow Lite, run the exported file, and measure it.

    python -m flower_demo.export --format tflite --quantize int8 --model weights --out runs/tflite \\
        --data-dir ../shared/data/oxford_flowers102 --measure

`--quantize`: none (float32), float16 (weights stored as float16, about half the size) or int8
(weights and activations int8, calibrated on REPRESENTATIVE images: the fixture photos and their
mirror images, plus REPRESENTATIVE_TRAIN training images when `--data-dir` is given). Input and
output stay float32 in every case, and since preprocessing is a layer inside the Keras model the
file takes the same input: RGB pixels 0..255, shape (1, size, size, 3); it returns the class
probabilities. Into `--out` go `model_<quantize>.tflite` and a copy of the model's metadata.json
that names it under "exports", so `Classifier("OUT/model_int8.tflite")` (and the predict command
line's `--model`) runs it, with the same class names and calibration.

`--measure` prints the file's size, its batch-1 CPU latency (p50) beside the Keras model's, and
with `--data-dir` the validation top-1 of both and how often they agree.

This module owns the conversion, `TFLiteModel` (the runtime predict.py uses for .tflite files:
`tf.lite.Interpreter`, still present in TensorFlow 2.21) and those measurements.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from flower_demo import models
from flower_demo.errors import FlowerDemoError, first_line
from flower_demo.images import ImageLike, list_images, square_uint8

FORMATS = ("tflite",)
QUANTIZE = ("none", "float16", "int8")
FIXTURE_PHOTOS = models.REPO_ROOT / "tests" / "fixtures" / "flowers"
REPRESENTATIVE_TRAIN = 96  # training images added to the int8 calibration set with --data-dir
REPRESENTATIVE_SEED = 0
WARMUP = 5
REPEATS = 50
EXPORTS_KEY = "exports"
NUM_THREADS = os.cpu_count() or 1  # interpreter threads; TensorFlow uses every core too


def tflite_file_name(quantize: str) -> str:
    return f"model_{'float32' if quantize == 'none' else quantize}.tflite"


# --- running an exported file ----------------------------------------------------------------


class TFLiteModel:
    """An exported .tflite classifier as a function: (n, size, size, 3) float32 pixels -> (n, classes).

    The interpreter runs one image at a time (the file's batch size is 1) and is not thread-safe,
    so calls are serialised by a lock.
    """

    def __init__(self, path: str | os.PathLike, num_threads: int | None = NUM_THREADS) -> None:
        import tensorflow as tf

        self.path = Path(path)
        if not self.path.is_file():
            raise FlowerDemoError(f"model file not found: {self.path}")
        try:
            with warnings.catch_warnings():  # "deprecated, use ai_edge_litert": it still works in 2.21
                warnings.simplefilter("ignore")
                self.interpreter = tf.lite.Interpreter(model_path=str(self.path), num_threads=num_threads)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            reason = first_line(exc)
            raise FlowerDemoError(f"cannot load TFLite model {self.path}: {reason}") from None
        (self._input,) = self.interpreter.get_input_details()
        (self._output,) = self.interpreter.get_output_details()
        shape = self._input["shape"]
        if len(shape) != 4 or shape[0] != 1 or shape[1] != shape[2] or shape[3] != 3:
            raise FlowerDemoError(f"{self.path} does not take (1, size, size, 3) images: input shape {shape}")
        if self._input["dtype"] != np.float32 or self._output["dtype"] != np.float32:
            raise FlowerDemoError(
                f"{self.path} must take and return float32 (exported by flower_demo.export)"
            )
        self.image_size = int(shape[1])
        self.num_outputs = int(self._output["shape"][-1])
        self._lock = threading.Lock()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch, dtype=np.float32)
        out = np.empty((len(batch), self.num_outputs), dtype=np.float32)
        with self._lock:
            for i, image in enumerate(batch):
                self.interpreter.set_tensor(self._input["index"], image[None])
                self.interpreter.invoke()
                out[i] = self.interpreter.get_tensor(self._output["index"])[0]
        return out


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
    """The TFLite flatbuffer of `model` (batch 1, float32 pixels 0..255 in, probabilities out)."""
    import tensorflow as tf

    if quantize not in QUANTIZE:
        raise FlowerDemoError(f"unknown quantization {quantize!r}; choose one of {', '.join(QUANTIZE)}")
    if quantize == "int8" and not representative:
        raise FlowerDemoError("int8 quantization needs representative images")
    signature = [tf.TensorSpec((1, size, size, 3), tf.float32, name="image")]
    # Through a SavedModel: converting a Keras 3 model's concrete function directly leaves its
    # weights as variables (VAR_HANDLE ops) instead of constants in the file.
    with tempfile.TemporaryDirectory(prefix="flower_demo_export_") as saved:
        try:
            with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Keras prints the signature, the converter warns
                model.export(saved, format="tf_saved_model", input_signature=signature, verbose=False)
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


def export_tflite(
    model_path: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    quantize: str = "none",
    data_dir: str | os.PathLike | None = None,
) -> Path:
    """Write OUT/model_<quantize>.tflite and OUT/metadata.json (the model's, naming the file)."""
    import tensorflow as tf

    if quantize not in QUANTIZE:
        raise FlowerDemoError(f"unknown quantization {quantize!r}; choose one of {', '.join(QUANTIZE)}")
    source = models.metadata_path(model_path).parent
    out_dir = Path(out_dir)
    if out_dir.resolve() == source.resolve():
        raise FlowerDemoError(f"--out must be another folder than the model's own ({source})")
    model, metadata = models.load_model(model_path)
    size = int(metadata["image_size"])
    representative = representative_items(data_dir) if quantize == "int8" else None
    blob = convert(model, size, quantize, representative)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / tflite_file_name(quantize)
    target.write_bytes(blob)

    exports: dict[str, Any] = {}
    previous = out_dir / models.METADATA_FILE
    if previous.is_file():  # keep the entries of earlier exports of the same trained model
        try:
            old = json.loads(previous.read_text())
            if (
                old.get("created") == metadata.get("created")
                and old.get("class_names") == metadata["class_names"]
            ):
                exports = {n: e for n, e in old.get(EXPORTS_KEY, {}).items() if (out_dir / n).is_file()}
        except (OSError, ValueError):
            pass
    exports[target.name] = {
        "format": "tflite",
        "quantize": quantize,
        "source": str(source),
        "bytes": len(blob),
        "representative_images": 2 * len(representative) if representative else None,
        "tensorflow": tf.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    previous.write_text(json.dumps({**metadata, EXPORTS_KEY: exports}, indent=2) + "\n")
    return target


# --- measuring -------------------------------------------------------------------------------


def _p50_ms(calls: list[float]) -> float:
    return 1000.0 * statistics.median(calls)


def latency(
    tflite: TFLiteModel, keras_forward: Any, image: np.ndarray, repeats: int = REPEATS
) -> dict[str, float]:
    """Batch-1 p50 latency (ms) of both on the same preprocessed image, taking turns call by call
    so background load hits both alike."""
    x = image[None].astype(np.float32)
    for _ in range(WARMUP):
        tflite(x)
        np.asarray(keras_forward(x))
    times: dict[str, list[float]] = {"tflite": [], "keras": []}
    for _ in range(repeats):
        for name, run in (("tflite", tflite), ("keras", lambda v: np.asarray(keras_forward(v)))):
            start = time.perf_counter()
            run(x)
            times[name].append(time.perf_counter() - start)
    return {f"{name}_p50_ms": _p50_ms(t) for name, t in times.items()}


def validation_agreement(
    tflite: TFLiteModel, model: Any, metadata: dict[str, Any], data_dir: str | os.PathLike
) -> dict[str, Any]:
    """Validation top-1 of the TFLite file and of the Keras model, on the same decoded images."""
    from flower_demo import calibrate, data

    split = data.load_oxford_folder(data_dir, "validation")
    forward = models.compiled_forward(model)
    lite, full = [], []
    for batch in data.iter_decoded(split.items, tflite.image_size, 32):
        pixels = batch.astype(np.float32)
        lite.append(tflite(pixels))
        full.append(np.asarray(forward(pixels)))
    lite_p, full_p = np.concatenate(lite), np.concatenate(full)
    labels = np.asarray(split.labels)
    result = {
        "n": int(len(labels)),
        "tflite_top1": float((lite_p.argmax(1) == labels).mean()),
        "keras_top1": float((full_p.argmax(1) == labels).mean()),
        "top1_agreement": float((lite_p.argmax(1) == full_p.argmax(1)).mean()),
        "max_abs_probability_difference": float(np.abs(lite_p - full_p).max()),
    }
    rule = calibrate.read_calibration(metadata)
    if rule is not None:
        result["tflite_kept_flowers"] = float(rule.is_known(rule.probabilities(lite_p)).mean())
        result["keras_kept_flowers"] = float(rule.is_known(rule.probabilities(full_p)).mean())
    return result


def measure(
    tflite_path: Path, model_path: str | os.PathLike | None, data_dir: str | None, repeats: int = REPEATS
) -> dict[str, Any]:
    model, metadata = models.load_model(model_path)
    tflite = TFLiteModel(tflite_path)
    photo = next(iter(list_images(FIXTURE_PHOTOS)), None) if FIXTURE_PHOTOS.is_dir() else None
    image = (
        square_uint8(photo, tflite.image_size)
        if photo is not None
        else np.random.default_rng(0).uniform(0, 255, (tflite.image_size, tflite.image_size, 3))
    )
    keras_file = models.metadata_path(model_path).parent / models.MODEL_FILE
    result: dict[str, Any] = {
        "file": str(tflite_path),
        "tflite_mb": tflite_path.stat().st_size / 1e6,
        "keras_mb": keras_file.stat().st_size / 1e6,
        "threads": NUM_THREADS,
        **latency(tflite, models.compiled_forward(model), image, repeats),
        "load_average": os.getloadavg()[0],
    }
    if data_dir is not None:
        result.update(validation_agreement(tflite, model, metadata, data_dir))
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
    p.add_argument("--format", choices=FORMATS, default="tflite", help="export format (default tflite)")
    p.add_argument("--quantize", choices=QUANTIZE, default="none", help="weight/activation precision")
    p.add_argument("--model", default=str(models.SHIPPED_MODEL_DIR), help="model folder or .keras file")
    p.add_argument("--out", required=True, help="folder for the .tflite file and its metadata.json")
    p.add_argument(
        "--data-dir",
        default=None,
        help="Flowers-102 folder: training images for int8 calibration, validation for --measure",
    )
    p.add_argument("--measure", action="store_true", help="size, latency and (with --data-dir) top-1")
    p.add_argument("--repeats", type=int, default=REPEATS, help="timed calls per latency figure")
    p.add_argument("--json", action="store_true", help="print the measurement as JSON")
    args = p.parse_args(argv)
    try:
        started = time.perf_counter()
        target = export_tflite(args.model, args.out, args.quantize, args.data_dir)
        print(
            f"wrote {target} ({target.stat().st_size / 1e6:.2f} MB) in {time.perf_counter() - started:.0f} s"
        )
        if args.measure:
            result = measure(target, args.model, args.data_dir, args.repeats)
            print(json.dumps(result) if args.json else format_measurement(result))
    except FlowerDemoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
