"""The one scoring function of evaluate, calibrate and the report (flower_demo.metrics) on arrays
whose answers are known, the one expected calibration error and its reliability bins, and how a
model's classes are matched to the data's (and another model's) by name."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from helpers import honest_labels

from flower_demo import FlowerDemoError, metrics


def ranked(orders: list[list[int]], classes: int) -> np.ndarray:
    """Probabilities whose rows rank the classes as `orders` says (first = most probable)."""
    probabilities = np.zeros((len(orders), classes))
    for row, order in enumerate(orders):
        probabilities[row, order] = np.linspace(0.5, 0.01, classes)
    return probabilities / probabilities.sum(axis=1, keepdims=True)


def test_score_of_a_known_case() -> None:
    """Six classes (so top-5 is not everything), three of them absent from the data."""
    labels = np.array([0, 0, 0, 1, 1, 2])
    probabilities = ranked(
        [
            [0, 1, 2, 3, 4, 5],  # right
            [1, 0, 2, 3, 4, 5],  # wrong, the true class second: in the top 5
            [2, 1, 3, 4, 5, 0],  # wrong, the true class last: not in the top 5
            [1, 0, 2, 3, 4, 5],  # right
            [0, 2, 3, 4, 5, 1],  # wrong, the true class last
            [2, 0, 1, 3, 4, 5],  # right
        ],
        classes=6,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no class absent from the data makes scikit-learn warn
        scores = metrics.score(probabilities, labels)
    assert (scores.n, scores.k) == (6, 5)
    assert scores.predicted.tolist() == [0, 1, 2, 1, 0, 2]
    assert scores.top1 == pytest.approx(3 / 6) and scores.topk == pytest.approx(4 / 6)
    expected = np.zeros((6, 6), int)
    expected[0, [0, 1, 2]] = 1
    expected[1, [0, 1]] = 1
    expected[2, 2] = 1
    np.testing.assert_array_equal(scores.confusion, expected)
    np.testing.assert_allclose(scores.per_class, [1 / 3, 1 / 2, 1, np.nan, np.nan, np.nan])
    assert scores.mean_per_class == pytest.approx((1 / 3 + 1 / 2 + 1) / 3)


def test_score_agrees_with_scikit_learn_on_random_answers() -> None:
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, top_k_accuracy_score

    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(12), size=300)
    labels = rng.integers(0, 12, 300)
    scores = metrics.score(probabilities, labels)
    assert scores.top1 == pytest.approx(accuracy_score(labels, probabilities.argmax(axis=1)))
    assert scores.topk == pytest.approx(top_k_accuracy_score(labels, probabilities, k=5))
    assert scores.mean_per_class == pytest.approx(balanced_accuracy_score(labels, scores.predicted))


def test_few_classes_put_every_answer_in_the_top_k() -> None:
    """With no more classes than DEFAULT_TOP_K, top-k is every class: 1.0, two classes included."""
    for classes in (2, 3, 5):
        labels = np.arange(classes)
        probabilities = np.roll(np.eye(classes), 1, axis=1)  # every answer wrong
        scores = metrics.score(probabilities, labels)
        assert (scores.k, scores.top1, scores.topk) == (classes, 0.0, 1.0)


def test_in_top_k_is_what_top_k_accuracy_averages() -> None:
    """Per image, ties included (probabilities rounded to one decimal tie often)."""
    from sklearn.metrics import top_k_accuracy_score

    rng = np.random.default_rng(1)
    probabilities = np.round(rng.random((400, 8)), 1)
    labels = rng.integers(0, 8, 400)
    for k in range(1, 8):
        hits = metrics.in_top_k(probabilities, labels, k)
        assert hits.shape == (400,)
        assert hits.mean() == pytest.approx(top_k_accuracy_score(labels, probabilities, k=k, labels=range(8)))


def test_expected_calibration_error() -> None:
    # Two bins' worth: 4 answers at 0.9 confidence, 3 right; 4 at 0.6, all right.
    probs = np.array([[0.9, 0.1]] * 4 + [[0.6, 0.4]] * 4)
    labels = np.array([0, 0, 0, 1, 0, 0, 0, 0])
    # |0.75 - 0.9| * 4/8 + |1.0 - 0.6| * 4/8
    assert metrics.expected_calibration_error(probs, labels) == pytest.approx(0.075 + 0.2)
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 3, (20000, 5))
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    honest = honest_labels(p, seed=4)
    assert metrics.expected_calibration_error(p, honest) < 0.02
    sharp = np.exp(logits / 0.3) / np.exp(logits / 0.3).sum(axis=1, keepdims=True)  # over-confident
    assert metrics.expected_calibration_error(sharp, honest) > 0.1


def test_reliability_bins_as_scikit_learn_bins_them() -> None:
    """The bins of the ECE and the report's reliability diagram are calibration_curve's."""
    from sklearn.calibration import calibration_curve

    rng = np.random.default_rng(5)
    confidence = np.concatenate([rng.random(500), np.linspace(0, 1, metrics.ECE_BINS + 1)])  # edges too
    correct = rng.random(len(confidence)) < confidence
    accuracy, mean_confidence, share = metrics.reliability(confidence, correct)
    expected = calibration_curve(correct, confidence, n_bins=metrics.ECE_BINS, strategy="uniform")
    np.testing.assert_allclose(accuracy, expected[0])
    np.testing.assert_allclose(mean_confidence, expected[1])
    assert share.sum() == pytest.approx(1.0) and len(share) == len(accuracy)


# --- classes matched by name -------------------------------------------------------------------

DATA = ["alpha", "beta", "gamma"]
MODEL = ["gamma", "extra", "alpha", "beta"]  # the data's classes in another order, and one more


def test_labels_become_the_models_columns_by_name() -> None:
    columns = metrics.class_columns(MODEL, DATA, "model M", "the data")
    assert columns.tolist() == [2, 3, 0]  # alpha, beta, gamma in the model's order
    np.testing.assert_array_equal(columns[np.array([0, 1, 2, 2])], [2, 3, 0, 0])


def test_a_superset_model_is_scored_on_the_datas_classes() -> None:
    """Answering the extra class is wrong; the data's classes are scored wherever the model lists them."""
    labels = metrics.class_columns(MODEL, DATA, "model M", "the data")[np.array([0, 1, 2, 0])]
    answers = [2, 3, 1, 1]  # alpha right, beta right, "extra" for a gamma photo, "extra" for an alpha one
    scores = metrics.score(np.eye(4)[answers] * 0.9 + 0.025, labels)
    assert scores.top1 == pytest.approx(2 / 4)
    np.testing.assert_allclose(scores.per_class, [0.0, np.nan, 0.5, 1.0])  # gamma, extra, alpha, beta
    assert scores.mean_per_class == pytest.approx((0 + 0.5 + 1) / 3)  # over the data's classes only


@pytest.mark.parametrize(
    ("known", "wanted", "missing"),
    [
        (["alpha", "beta"], DATA, "gamma"),  # the first the model lacks
        (["beta", "delta"], DATA, "alpha"),
    ],
)
def test_a_class_the_model_lacks_is_one_line(known: list[str], wanted: list[str], missing: str) -> None:
    with pytest.raises(FlowerDemoError) as raised:
        metrics.class_columns(known, wanted, "model M", "the data")
    assert str(raised.value) == f"the data has a class {missing!r} that model M does not know"


def test_two_models_must_name_the_same_classes_in_any_order() -> None:
    order = metrics.same_classes(DATA, ["gamma", "alpha", "beta"], "model A", "model B")
    probabilities = np.array([[0.7, 0.2, 0.1]])  # B's: gamma, alpha, beta
    np.testing.assert_allclose(probabilities[:, order], [[0.2, 0.1, 0.7]])  # in A's order
    with pytest.raises(FlowerDemoError, match="model B has a class 'extra' that model A does not know"):
        metrics.same_classes(DATA, MODEL, "model A", "model B")
    with pytest.raises(FlowerDemoError, match="model A has a class 'gamma' that model B does not know"):
        metrics.same_classes(DATA, ["alpha", "beta"], "model A", "model B")


def test_among_renormalises_the_chosen_classes() -> None:
    """A teacher that knows an extra class: its probabilities of the student's classes, summing to 1."""
    columns = metrics.class_columns(MODEL, DATA, "teacher T", "the training data")
    probabilities = np.array([[0.1, 0.5, 0.3, 0.1], [0.25, 0.0, 0.25, 0.5]])
    np.testing.assert_allclose(metrics.among(probabilities, columns), [[0.6, 0.2, 0.2], [0.25, 0.5, 0.25]])
