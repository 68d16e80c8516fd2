"""Speed, memory and agreement of the serving path, measured on whatever machine runs this, against
the targets of issue 11 (set for a 2-core CPU machine).

    python -m benchmarks.bench [--model weights] [--json] [--skip-app] [--skip-train] [--data-dir DIR]

The reference is LiteRT's bare forward pass: the model folder's model.tflite run by
core.LiteRTEngine on an already preprocessed (1, S, S, 3) float32 array. Against it, one run measures:
- `predict(path, classifier)` from a JPEG on the same engine, and with explain=True (p50/p95, ratio);
- the reference photos of an answer (Prediction.neighbours): the search of the model's bank of
  training features on the pooled features the forward pass returned, of the top species and of
  any species, per photo (predict's figure above includes it);
- `python -m flower_demo.predict photo.jpg` (and with --explain) as users run it: wall time from
  process start to exit, peak RSS, and whether TensorFlow got imported;
- `python app.py` until its first /predict answer, then APP_REQUESTS requests and the resident
  memory of its process tree;
- evaluation throughput through the core, decoding included, beside decoding alone and the engine
  alone on the same images;
- the Keras engine (models.KerasEngine, TensorFlow) beside LiteRT: bare forward, top-1 agreement on
  the Flowers-102 validation photos, and the forward pass's class activation map against the
  gradient Grad-CAM on the photos;
- training seconds per epoch of both stages on a small subset, along train.py's own functions,
  stage 2 from the model's own cut (`--fine-tune-from` another);
- the machine and its load average before and after.
Photos are the test fixtures (tests/fixtures/flowers), repeated as needed. Latencies that are
compared take turns call by call (export.time_interleaved, the timing helper of export's --measure
too), so background load hits them alike. The parts that need no TensorFlow run first, before
anything imports it.

This file is the command line; measure.py measures, tables.py checks the targets and writes the
table, serving.py starts and stops the app.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from benchmarks import measure, tables
from flower_demo import core, data, export, model_files
from flower_demo.errors import FlowerDemoError, skip_last_collection
from flower_demo.images import list_images


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--model", default=str(model_files.SHIPPED_MODEL_DIR), help="model folder (model.tflite, model.keras)"
    )
    p.add_argument(
        "--data-dir",
        default=None,
        help="Flowers-102 folder for the LiteRT/Keras agreement "
        f"(default: {measure.DEFAULT_DATA_DIR} if present)",
    )
    p.add_argument("--images", default=str(export.FIXTURE_PHOTOS), help="folder of JPEG photos to use")
    p.add_argument("--repeats", type=int, default=export.REPEATS, help="timed calls per latency figure")
    p.add_argument("--cli-runs", type=int, default=measure.CLI_RUNS, help="timed runs of each command line")
    p.add_argument("--eval-images", type=int, default=measure.EVAL_IMAGES, help="images per throughput round")
    p.add_argument(
        "--app-requests", type=int, default=measure.APP_REQUESTS, help="/predict requests to the app"
    )
    p.add_argument(
        "--train-images", type=int, default=measure.TRAIN_IMAGES, help="size of the training subset"
    )
    p.add_argument(
        "--fine-tune-from",
        default=None,
        help="time stage 2 from this backbone layer (default: the model's own cut, else the registry's)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--skip-cli", action="store_true", help="do not run the predict command line")
    p.add_argument("--skip-app", action="store_true", help="do not start the app")
    p.add_argument("--skip-keras", action="store_true", help="no Keras figures (no TensorFlow import)")
    p.add_argument("--skip-train", action="store_true", help="do not measure training")
    args = p.parse_args(argv)
    counts = ("repeats", "cli_runs", "eval_images", "app_requests", "train_images")
    if any(getattr(args, name) < 1 for name in counts):
        p.error("--repeats, --cli-runs, --eval-images, --app-requests and --train-images must be at least 1")
    return args


def check_inputs(args: argparse.Namespace) -> tuple[Path, list[Path], Path | None]:
    """The model folder, the photos and the Flowers-102 folder (or None), checked before anything
    is measured."""
    folder = model_files.model_dir(args.model).resolve()
    if not folder.is_dir():
        raise FlowerDemoError(f"model folder not found: {folder}")
    model_files.read_metadata(folder)
    if not (folder / model_files.TFLITE_FILE).is_file():
        raise FlowerDemoError(
            f"no {model_files.TFLITE_FILE} in {folder}: "
            f"write it with python -m flower_demo.export --model {folder}"
        )
    if not Path(args.images).is_dir():
        raise FlowerDemoError(f"photo folder not found: {args.images}")
    photos = [p for p in list_images(args.images) if p.suffix.lower() in (".jpg", ".jpeg")]
    if not photos:
        raise FlowerDemoError(f"no JPEG photos in {args.images}")
    data_dir = Path(args.data_dir) if args.data_dir else measure.DEFAULT_DATA_DIR
    if args.data_dir is None and not data_dir.is_dir():
        data_dir = None  # the default is optional; a folder given on purpose is not
    elif not args.skip_keras:
        data.load_oxford_folder(data_dir, "validation")  # raises a one-line error now, not later
    return folder, photos, data_dir


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every part not skipped, in the order that keeps TensorFlow out of the LiteRT figures."""
    folder, photos, data_dir = check_inputs(args)
    before = measure.load_average()
    measure.log(f"load average before: {before}")
    classifier = core.Classifier(folder, engine="litert")
    has_keras = (folder / model_files.MODEL_FILE).is_file()
    results: dict[str, Any] = {
        "machine": measure.machine_info(),
        "model": measure.model_info(classifier, folder),
        "settings": {
            "repeats": args.repeats,
            "warmup": export.WARMUP,
            "photos": len(photos),
            **{
                name: getattr(args, name)
                for name in ("cli_runs", "eval_images", "app_requests", "train_images")
            },
        },
    }
    # The parts that need no Keras first: no TensorFlow work runs beside them.
    results |= measure.bench_latency(classifier, photos, args.repeats)
    results["neighbours"] = measure.bench_neighbours(classifier, photos, args.repeats)
    results["eval"] = measure.bench_eval(classifier, photos, args.eval_images)
    skip = {name: {"skipped": f"--skip-{name}"} for name in ("cli", "app", "train")}
    results["cli"] = skip["cli"] if args.skip_cli else measure.bench_cli(folder, photos[0], args.cli_runs)
    results["app"] = skip["app"] if args.skip_app else measure.bench_app(folder, photos[0], args.app_requests)
    if args.skip_keras or not has_keras:
        why = "--skip-keras" if args.skip_keras else f"no {model_files.MODEL_FILE} in {folder}"
        results |= {name: {"skipped": why} for name in ("keras_forward", "agreement", "cam")}
    else:
        results |= measure.bench_keras(classifier, folder, photos, args.repeats, data_dir)
    results["training"] = (
        skip["train"]
        if args.skip_train
        else measure.bench_training(classifier.metadata, photos, args.train_images, args.fine_tune_from)
    )
    results["load_average"] = measure.load_figures(before, measure.load_average())
    results["targets"] = tables.check_targets(results)
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    skip_last_collection()  # the Keras and training rows load TensorFlow (errors.exit_status)
    try:
        results = run(args)
    except FlowerDemoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(results, indent=2) if args.json else tables.format_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
