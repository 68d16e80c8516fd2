"""How right a model's answers are: the one scoring function of evaluate, calibrate and the report,
and the one expected calibration error.

    scores = score(probabilities, labels)   # top1, topk (k = min(core.DEFAULT_TOP_K, classes)),
                                            # mean_per_class, per_class, confusion, predicted
    expected_calibration_error(probabilities, labels)   # ECE_BINS equal-width bins

Probabilities are (images, classes), labels 0-based class indices; the columns are the classes.
scikit-learn computes the confusion matrix and top-k accuracy (with every class named, so that a
class absent from the data still counts); top-1, per-class and mean per-class accuracy are read
off the confusion matrix (its trace, its diagonal over each row; the mean over the classes the data
holds is scikit-learn's balanced accuracy). scikit-learn is a training-side package
(requirements-train.txt), imported on first use: `report`, which `predict --plot` imports, and the
serving core never need it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flower_demo.core import DEFAULT_TOP_K

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
