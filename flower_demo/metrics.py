"""How right a model's answers are: the one scoring function of evaluate, calibrate and the report,
and the one expected calibration error.

    scores = score(probabilities, labels)   # top1, topk (k = min(core.DEFAULT_TOP_K, classes)),
                                            # mean_per_class, per_class, confusion, predicted
    expected_calibration_error(probabilities, labels)   # ECE_BINS equal-width bins

    class_columns(model_classes, data_classes, "model M", "the data")[labels]   # labels, as M's columns
    same_classes(first_classes, other_classes, "model A", "model B")   # B's columns in A's order

Probabilities are (images, classes), labels 0-based class indices; the columns are the classes.
A model meets data (or another model) by class name, never by position: a model may list the
classes in another order, or know more (a flower the data lacks; answering it is then simply
wrong); a class it does not know is a one-line FlowerDemoError naming the first.
scikit-learn computes the confusion matrix and top-k accuracy (with every class named, so that a
class absent from the data still counts); top-1, per-class and mean per-class accuracy are read
off the confusion matrix (its trace, its diagonal over each row; the mean over the classes the data
holds is scikit-learn's balanced accuracy). scikit-learn is a training-side package
(requirements-train.txt), imported on first use: `report`, which `predict --plot` imports, and the
serving core never need it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from flower_demo.core import DEFAULT_TOP_K
from flower_demo.errors import FlowerDemoError

ECE_BINS = 15  # equal-width confidence bins of the calibration error and the reliability diagram


@dataclass(frozen=True)
class Scores:
    n: int  # images scored
    k: int  # the k of top-k: min(DEFAULT_TOP_K, classes)
    top1: float
    topk: float
    mean_per_class: float  # over the classes the data holds (balanced accuracy)
    per_class: np.ndarray  # (classes,) share of each class's images answered right; NaN with none
    confusion: np.ndarray  # (classes, classes) image counts, rows the true class, columns the answer
    predicted: np.ndarray  # (images,) the top-1 class of each image (the first on a tie)


def score(probabilities: np.ndarray, labels: np.ndarray) -> Scores:
    """Every accuracy figure of `probabilities` (images, classes) against 0-based `labels`."""
    from sklearn.metrics import confusion_matrix, top_k_accuracy_score

    probabilities, labels = np.asarray(probabilities, np.float64), np.asarray(labels, np.int64)
    classes = np.arange(probabilities.shape[1])
    k = min(DEFAULT_TOP_K, len(classes))
    predicted = probabilities.argmax(axis=1)
    matrix = confusion_matrix(labels, predicted, labels=classes)
    support = matrix.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.diag(matrix) / support
    # With k >= the class count every answer is in the top k: scikit-learn warns that the score is
    # meaningless, and refuses two classes' (images, 2) scores.
    topk = 1.0 if k >= len(classes) else top_k_accuracy_score(labels, probabilities, k=k, labels=classes)
    return Scores(
        n=len(labels),
        k=k,
        top1=float(np.trace(matrix) / len(labels)),
        topk=float(topk),
        mean_per_class=float(np.mean(per_class[support > 0])),
        per_class=per_class,
        confusion=matrix,
        predicted=predicted,
    )


def in_top_k(probabilities: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Per image, whether its true class is among its k most probable: the outcomes whose mean
    `top_k_accuracy_score` is, ranked as it ranks (of equal probabilities, the later class first),
    for statistics that resample the images (the report's bootstrap)."""
    ranked = np.argsort(np.asarray(probabilities), axis=1, kind="stable")[:, ::-1][:, :k]
    return (ranked == np.asarray(labels)[:, None]).any(axis=1)


def reliability(
    confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(accuracy, mean confidence, share of the images) of each non-empty one of `bins` equal-width
    bins of the top-1 probability; a bin holds (low, high], the first [0, high], as
    sklearn.calibration.calibration_curve bins them."""
    confidence = np.asarray(confidence, np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    filled = count > 0
    right = np.bincount(which, weights=np.asarray(correct, np.float64), minlength=bins)
    summed = np.bincount(which, weights=confidence, minlength=bins)
    return right[filled] / count[filled], summed[filled] / count[filled], count[filled] / len(confidence)


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Sum over equal-width confidence bins of |accuracy - mean confidence| x share of the images."""
    probabilities = np.asarray(probabilities, np.float64)
    correct = probabilities.argmax(axis=1) == np.asarray(labels)
    accuracy, confidence, share = reliability(probabilities.max(axis=1), correct, bins)
    return float(np.sum(share * np.abs(accuracy - confidence)))


# --- a model's classes against the data's, by name -------------------------------------------


def class_columns(known: Sequence[str], wanted: Sequence[str], known_as: str, wanted_as: str) -> np.ndarray:
    """For each class of `wanted`, the index of the class of the same name in `known`, which may
    list them in another order and hold more. `known_as` and `wanted_as` name the two in the error:
    "{wanted_as} has a class NAME that {known_as} does not know", for the first such class."""
    index = {name: i for i, name in enumerate(known)}
    missing = next((name for name in wanted if name not in index), None)
    if missing is not None:
        raise FlowerDemoError(f"{wanted_as} has a class {missing!r} that {known_as} does not know")
    return np.array([index[name] for name in wanted], dtype=np.int64)


def same_classes(first: Sequence[str], other: Sequence[str], first_as: str, other_as: str) -> np.ndarray:
    """The columns of `other`'s probabilities in `first`'s class order; the two must name the same
    classes (in any order), or a one-line FlowerDemoError names the first class one lacks."""
    class_columns(first, other, first_as, other_as)  # other knows nothing first does not
    return class_columns(other, first, other_as, first_as)


def ensemble_columns(names: Sequence[Sequence[str]], named_as: Sequence[str]) -> list[np.ndarray]:
    """The columns of each model's probabilities in the first model's class order (same_classes):
    every model of an ensemble must name the same classes. `names` holds each model's class names,
    `named_as` what the error calls it."""
    return [same_classes(names[0], other, named_as[0], other_as) for other, other_as in zip(names, named_as)]


def among(probabilities: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """A model's probabilities of some of its classes (`columns`, from class_columns), in that order,
    renormalised to sum to 1: what a model that knows more classes says among those."""
    chosen = np.asarray(probabilities)[:, columns]
    return chosen / chosen.sum(axis=1, keepdims=True)
