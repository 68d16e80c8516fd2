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

from flower_demo import core, data, metrics, model_files, report
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


def evaluate_model(
    run: Callable[[np.ndarray], np.ndarray],
    images: np.ndarray | Sequence[ImageLike],
    labels: np.ndarray,
    image_size: int,
) -> dict[str, Any]:
    """Top-1 / top-5 accuracy (metrics.score; top-5 is top-k, fewer with fewer classes) of `run`
    (see predict_probabilities) on `images`: {"top1", "top5", "n", "probabilities"}."""
    probabilities = predict_probabilities(run, images, image_size)
    scores = metrics.score(probabilities, np.asarray(labels))
    return {"top1": scores.top1, "top5": scores.topk, "n": scores.n, "probabilities": probabilities}


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


def save_confusion_matrix(matrix: np.ndarray, path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 10))
    ax.imshow(matrix, cmap="Blues", interpolation="nearest")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parser() -> argparse.ArgumentParser:
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
    return p


def load_split(args: argparse.Namespace) -> data.LabeledImages:
    """The labelled images the arguments name."""
    if args.data_dir:
        return data.load_oxford_folder(args.data_dir, args.split)
    if args.tfds:
        return data.load_tfds(args.tfds, args.split)
    return data.load_image_folder(args.image_folder)[1]


def measure(args: argparse.Namespace) -> tuple[data.LabeledImages, list[str], np.ndarray, str | None]:
    """(the split, the class names, the served probabilities of the models as one, the report page
    or None): everything the command prints, measured."""
    if args.report:
        report.check_out_dir(args.report)
    classifiers = [core.Classifier(model, engine=args.engine) for model in args.model]
    class_names = classifiers[0].metadata["class_names"]
    split = load_split(args)
    if len(split.class_names) != len(class_names):
        raise FlowerDemoError(f"the data has {len(split.class_names)} classes, the model {len(class_names)}")
    probabilities = ensemble_probabilities(classifiers, split.items)
    page = None
    if args.report:  # the probabilities users are served (temperature-scaled if calibrated)
        title = f"Evaluation report: model {' + '.join(Path(m).name for m in args.model)}"
        page = report.write_report(
            args.report, probabilities, split.labels, class_names, split.items, title, split.source
        )
    return split, class_names, probabilities, None if page is None else str(page)


def print_per_class(scores: metrics.Scores, class_names: list[str]) -> None:
    """Each class's accuracy, best first (classes with no images, shown as -, before them)."""
    print("per-class accuracy:")
    ranked = sorted(zip(class_names, scores.per_class), key=lambda t: -np.nan_to_num(t[1], nan=2))
    for name, accuracy in ranked:
        print(f"  {accuracy:6.1%}  {name}" if not np.isnan(accuracy) else f"     -   {name}")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        split, class_names, probabilities, page = measure(args)
    except FlowerDemoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    scores = metrics.score(probabilities, np.asarray(split.labels))
    if args.json:
        summary = {"top1": scores.top1, "top5": scores.topk, "n": scores.n, "expected": split.expected}
        print(json.dumps({**summary, **({"report": page} if page else {})}))
    else:
        print(f"{split.source}: {scores.n} of {split.expected} images found")
        print(f"top-1 {scores.top1:.4f}   top-5 {scores.topk:.4f}")
        print_per_class(scores, class_names)
        if page:
            print(f"report: {page}")
    if args.confusion_matrix:
        save_confusion_matrix(scores.confusion, args.confusion_matrix)
        if not args.json:
            print(f"confusion matrix saved to {args.confusion_matrix}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
