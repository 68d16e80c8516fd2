"""Measure a saved model on a labelled split: top-1, top-5, per-class accuracy, confusion matrix.

    python -m flower_demo.evaluate --model weights --data-dir DATA_DIR --split test --json

It runs through the serving core (core.Classifier), so it measures exactly what `predict` and
the app serve: the same decoding (flower_demo.images), the same engine (LiteRT by default,
`--engine keras` for the Keras model) and the served, calibrated probabilities. Images are
decoded by a thread pool while the engine works on the previous batch.

Several `--model`s are measured as one ensemble: their served probabilities averaged, each model
at its own input size. That is the figure an ensemble teacher gives `train --teachers`.

Models meet the data by class name (metrics.class_columns): a model may list the classes in
another order or know more of them (an answer naming one the data lacks is wrong); a class it
does not know is a one-line error. A model scored on photos its metadata says it trained on (an
official split of the data set its "data" record names, or the same class-per-folder tree cut
another way) is named in a one-line warning on stderr, and `--json` says "trained_on_scored": its
figures there measure what it learnt, not its accuracy on new photos.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from flower_demo import core, data, metrics, model_files, report
from flower_demo.errors import exit_status
from flower_demo.images import ImageLike

EVAL_BATCH = 64
# The validation part of a class-per-folder tree that --image-folder scores: cut as train cuts it
# by default (--val-fraction, --seed), so a model trained on the tree that way never saw it.
FOLDER_SPLIT = {"val_fraction": 0.2, "seed": 0}
FLOWERS102 = "oxford_flowers102"  # a --data-dir folder's data set, by its tensorflow_datasets name


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
    input size, in the first one's class order: they must name the same classes, in any order."""
    columns = metrics.ensemble_columns(
        [c.metadata["class_names"] for c in classifiers], [f"model {c.engine.path}" for c in classifiers]
    )
    outputs = [
        predict_probabilities(c.probabilities, images, c.image_size)[:, order]
        for c, order in zip(classifiers, columns)
    ]
    return np.mean(outputs, axis=0)


def split_names(splits: Any) -> set[str]:
    """Official split names without tfds slices ("train[:80%]" is part of train), from a list or
    a comma-separated string."""
    pieces = splits.split(",") if isinstance(splits, str) else splits or []
    return {str(piece).strip().split("[")[0] for piece in pieces if str(piece).strip()}


def trained_data(metadata: dict[str, Any]) -> tuple[str | None, set[str]]:
    """(the data set a model trained on, by name, and which of its splits) from its metadata: the
    "data" record train writes ("dataset", "train_splits"), or for a model from before that
    record, the options in "training" (a Flowers-102 folder, a tree, or a tfds name)."""
    record, training = metadata.get("data") or {}, metadata.get("training") or {}
    if record.get("dataset"):
        return str(record["dataset"]), split_names(record.get("train_splits"))
    if training.get("data_dir"):
        name = FLOWERS102
    elif training.get("image_folder"):
        name = Path(training["image_folder"]).resolve().name
    else:
        name = training.get("tfds")
    return name, split_names(training.get("train_splits", "train"))


def trained_on_scored(metadata: dict[str, Any], args: argparse.Namespace) -> bool:
    """Whether the model's metadata says it trained on the photos `args` score: the same data set
    (a Flowers-102 folder is tfds' oxford_flowers102; a tree goes by its folder's name) and an
    official split it trained on, or a tree's validation part cut otherwise than FOLDER_SPLIT."""
    name, splits = trained_data(metadata)
    if args.image_folder:
        training = metadata.get("training") or {}
        cut_otherwise = any(training.get(key, value) != value for key, value in FOLDER_SPLIT.items())
        return name == Path(args.image_folder).resolve().name and cut_otherwise
    scored = FLOWERS102 if args.data_dir else args.tfds
    return name == scored and args.split.split("[")[0] in splits


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
        help="print one JSON object: top1, top5, n, expected, trained_on_scored",
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
    return data.load_image_folder(args.image_folder, **FOLDER_SPLIT)[1]


@dataclass
class Measurement:
    """Everything the command prints: the split, its labels as the model's class indices, the
    model's class names, the served probabilities of the models as one, the report page (or None)
    and the models that trained on the scored photos."""

    split: data.LabeledImages
    labels: np.ndarray
    class_names: list[str]
    probabilities: np.ndarray
    page: str | None
    trained_on_scored: list[str]


def measure(args: argparse.Namespace) -> Measurement:
    """The models the arguments name, run on the split they name; the labels matched by name."""
    if args.report:
        report.check_out_dir(args.report)
    # The classes are matched by the models' metadata before any model loads (a Keras one takes
    # TensorFlow's seconds of start-up): data or models that do not fit are said at once.
    names = [model_files.read_metadata(model)["class_names"] for model in args.model]
    named_as = [f"model {model}" for model in args.model]
    class_names = names[0]
    split = load_split(args)
    columns = metrics.class_columns(class_names, split.class_names, named_as[0], "the data")
    metrics.ensemble_columns(names, named_as)
    labels = columns[np.asarray(split.labels, np.int64)]
    classifiers = [core.Classifier(model, engine=args.engine) for model in args.model]
    probabilities = ensemble_probabilities(classifiers, split.items)
    page = None
    if args.report:  # the probabilities users are served (temperature-scaled if calibrated)
        title = f"Evaluation report: model {' + '.join(Path(m).name for m in args.model)}"
        page = report.write_report(
            args.report, probabilities, labels, class_names, split.items, title, split.source
        )
    trained = [m for m, c in zip(args.model, classifiers) if trained_on_scored(c.metadata, args)]
    return Measurement(
        split, labels, class_names, probabilities, None if page is None else str(page), trained
    )


def warn_trained_on_scored(models: list[str], args: argparse.Namespace) -> None:
    """One line on stderr: which models trained on the photos scored, and where to score instead."""
    scored = f"the validation part of {args.image_folder}" if args.image_folder else f"the {args.split} split"
    print(
        f"warning: {' and '.join(models)} trained on {scored}, which it is scored on here: the figures "
        "measure what it learnt, not its accuracy on new photos (score a split it never trained on)",
        file=sys.stderr,
    )


def print_per_class(scores: metrics.Scores, class_names: list[str]) -> None:
    """Each class's accuracy, best first (classes with no images, shown as -, before them)."""
    print("per-class accuracy:")
    ranked = sorted(zip(class_names, scores.per_class), key=lambda t: -np.nan_to_num(t[1], nan=2))
    for name, accuracy in ranked:
        print(f"  {accuracy:6.1%}  {name}" if not np.isnan(accuracy) else f"     -   {name}")


def run(args: argparse.Namespace) -> None:
    """Measure, then print the figures (one JSON object with --json) and save what is asked for."""
    measured = measure(args)
    if measured.trained_on_scored:
        warn_trained_on_scored(measured.trained_on_scored, args)
    split, page = measured.split, measured.page
    scores = metrics.score(measured.probabilities, measured.labels)
    if args.json:
        summary = {"top1": scores.top1, "top5": scores.topk, "n": scores.n, "expected": split.expected}
        flags = {"trained_on_scored": bool(measured.trained_on_scored)}
        print(json.dumps({**summary, **flags, **({"report": page} if page else {})}))
    else:
        print(f"{split.source}: {scores.n} of {split.expected} images found")
        print(f"top-1 {scores.top1:.4f}   top-5 {scores.topk:.4f}")
        print_per_class(scores, measured.class_names)
        if page:
            print(f"report: {page}")
    if args.confusion_matrix:
        save_confusion_matrix(scores.confusion, args.confusion_matrix)
        if not args.json:
            print(f"confusion matrix saved to {args.confusion_matrix}")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return exit_status(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
