"""Measure a saved model on a labelled split: top-1, top-5, per-class accuracy, confusion matrix.

    python -m flower_demo.evaluate --model weights --data-dir DATA_DIR --split validation --json

It runs through the serving core (core.Classifier), so it measures exactly what `predict` and
the app serve: the same decoding (flower_demo.images), the same engine (LiteRT by default,
`--engine keras` for the Keras model) and the served, calibrated probabilities. Images are
decoded by a thread pool while the engine works on the previous batch.

Several `--model`s are measured as one ensemble: their served probabilities averaged, each model
at its own input size. That is the figure an ensemble teacher gives `train --teachers`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from flower_demo import core, data, model_files, report
from flower_demo.errors import FlowerDemoError
from flower_demo.images import ImageLike

EVAL_BATCH = 64


def predict_probabilities(
    run: Callable[[np.ndarray], np.ndarray],
    images: np.ndarray | Sequence[ImageLike],
    image_size: int,
    batch_size: int = EVAL_BATCH,
) -> np.ndarray:
    """(n, classes) probabilities from `run` (float32 batch -> probabilities, e.g.
    `Classifier.probabilities`) for decoded uint8 images or for items still to be decoded."""
    if isinstance(images, np.ndarray):
        batches = (images[i : i + batch_size] for i in range(0, len(images), batch_size))
    else:
        batches = data.iter_decoded(images, image_size, batch_size)
    outputs = [np.asarray(run(batch.astype("float32"))) for batch in batches]
    return np.concatenate(outputs) if outputs else np.zeros((0, 0), np.float32)


def metrics_from(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    ranked = np.argsort(-probabilities, axis=1)
    top1 = ranked[:, 0] == labels
    top5 = (ranked[:, :5] == labels[:, None]).any(axis=1)
    return {
        "top1": float(top1.mean()),
        "top5": float(top5.mean()),
        "n": int(len(labels)),
        "predicted": ranked[:, 0],
        "probabilities": probabilities,
    }


def evaluate_model(
    run: Callable[[np.ndarray], np.ndarray],
    images: np.ndarray | Sequence[ImageLike],
    labels: np.ndarray,
    image_size: int,
) -> dict[str, Any]:
    """Top-1 / top-5 accuracy of `run` (see predict_probabilities) on `images`."""
    return metrics_from(predict_probabilities(run, images, image_size), np.asarray(labels))


def ensemble_probabilities(classifiers: Sequence[core.Classifier], images: Sequence[ImageLike]) -> np.ndarray:
    """The classifiers' served probabilities averaged over `images`, each decoded at its model's
    input size; they must name the same classes in the same order."""
    names = classifiers[0].metadata["class_names"]
    for other in classifiers[1:]:
        if other.metadata["class_names"] != names:
            raise FlowerDemoError(
                f"the models name different classes: {classifiers[0].engine.path} and {other.engine.path}"
            )
    outputs = [predict_probabilities(c.probabilities, images, c.image_size) for c in classifiers]
    return np.mean(outputs, axis=0)


def per_class_accuracy(predicted: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Accuracy of each class (NaN for a class with no images)."""
    correct = np.bincount(labels, weights=predicted == labels, minlength=num_classes)
    counts = np.bincount(labels, minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return correct / counts


def save_confusion_matrix(
    predicted: np.ndarray, labels: np.ndarray, num_classes: int, path: str | Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.zeros((num_classes, num_classes), dtype=int)
    np.add.at(matrix, (labels, predicted), 1)
    fig, ax = plt.subplots(figsize=(10, 10))
    ax.imshow(matrix, cmap="Blues", interpolation="nearest")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flower_demo.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model",
        nargs="+",
        default=[str(model_files.SHIPPED_MODEL_DIR)],
        help="model folder, model.keras or .tflite file (default: weights/); several are "
        "measured as one ensemble (their probabilities averaged)",
    )
    p.add_argument(
        "--engine",
        choices=core.ENGINES,
        default=None,
        help=f"what runs the model (default: ${core.ENGINE_ENV}, else auto, as for predict)",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--data-dir", help="Flowers-102 folder (jpg/, imagelabels.mat, setid.mat)")
    source.add_argument("--tfds", metavar="NAME", help="tensorflow_datasets name")
    source.add_argument(
        "--image-folder",
        help="class-per-folder tree; evaluates its seeded validation part",
    )
    p.add_argument(
        "--split",
        default="validation",
        help="train, validation or test (tfds: any split string)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object: top1, top5, n, expected",
    )
    p.add_argument("--confusion-matrix", metavar="PNG", help="also save the confusion matrix here")
    p.add_argument("--report", metavar="DIR", help="also write the report of where the model fails into DIR")
    args = p.parse_args(argv)
    try:
        if args.report:
            report.check_out_dir(args.report)
        classifiers = [core.Classifier(model, engine=args.engine) for model in args.model]
        metadata = classifiers[0].metadata
        if args.data_dir:
            split = data.load_oxford_folder(args.data_dir, args.split)
        elif args.tfds:
            split = data.load_tfds(args.tfds, args.split)
        else:
            split = data.load_image_folder(args.image_folder)[1]
        if len(split.class_names) != len(metadata["class_names"]):
            raise FlowerDemoError(
                f"the data has {len(split.class_names)} classes, the model {len(metadata['class_names'])}"
            )
        probabilities = ensemble_probabilities(classifiers, split.items)
        result = metrics_from(probabilities, np.asarray(split.labels))
        if args.report:  # the probabilities users are served (temperature-scaled if calibrated)
            title = f"Evaluation report: model {' + '.join(Path(m).name for m in args.model)}"
            page = report.write_report(
                args.report,
                result["probabilities"],
                split.labels,
                metadata["class_names"],
                split.items,
                title,
                split.source,
            )
            result["report"] = str(page)
    except FlowerDemoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    summary = {
        "top1": result["top1"],
        "top5": result["top5"],
        "n": result["n"],
        "expected": split.expected,
        **({"report": result["report"]} if args.report else {}),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{split.source}: {result['n']} of {split.expected} images found")
        print(f"top-1 {result['top1']:.4f}   top-5 {result['top5']:.4f}")
        per_class = per_class_accuracy(result["predicted"], split.labels, len(split.class_names))
        print("per-class accuracy:")
        for name, acc in sorted(
            zip(metadata["class_names"], per_class),
            key=lambda t: -np.nan_to_num(t[1], nan=2),
        ):
            print(f"  {acc:6.1%}  {name}" if not np.isnan(acc) else f"     -   {name}")
        if args.report:
            print(f"report: {result['report']}")
    if args.confusion_matrix:
        save_confusion_matrix(
            result["predicted"],
            split.labels,
            len(split.class_names),
            args.confusion_matrix,
        )
        if not args.json:
            print(f"confusion matrix saved to {args.confusion_matrix}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
