"""Fitting the rules: the temperature, each rule's statistics, the candidate rules, their thresholds,
their comparison on the non-flower photos and the choice among them, and what a rule costs.

Everything here sees arrays (forward-pass outputs, labels) and Calibrations, never a model folder
or a photo; scipy and scikit-learn are imported on first use.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from flower_demo import metrics
from flower_demo.core import (
    FEATURES,
    PROBABILITIES,
    Calibration,
    apply_temperature,
    l2_normalise,
    log_probabilities,
)

KEEP_FLOWERS = 0.95  # share of held-out flowers every rejection threshold keeps
TEMPERATURE_BOUNDS = (0.05, 20.0)
SPLIT_SEED = 0  # the two halves of the held-out check
DEFAULT_RULE = "knn"
K_CANDIDATES = (1, 2, 5, 10, 20, 50)
STATS_DTYPE = np.float16  # ood.npz stores its arrays at half precision: half the size
TIMING_REPEATS = 300

Outputs = dict[str, np.ndarray]  # a forward pass: {PROBABILITIES: (n, classes), FEATURES: (n, d)}


# --- measures --------------------------------------------------------------------------------


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    from scipy.special import softmax as scipy_softmax

    return scipy_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=-1)


def nll(log_probs: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of softmax(log p / T)."""
    from scipy.special import logsumexp

    z = log_probs / temperature
    return float(np.mean(logsumexp(z, axis=1) - z[np.arange(len(labels)), labels]))


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The T in TEMPERATURE_BOUNDS that minimises the NLL of softmax(log p / T) (1-D search on log T)."""
    from scipy.optimize import minimize_scalar

    log_probs = log_probabilities(probabilities)
    result = minimize_scalar(
        lambda log_t: nll(log_probs, labels, math.exp(log_t)),
        bounds=tuple(math.log(b) for b in TEMPERATURE_BOUNDS),
        method="bounded",
        options={"xatol": 1e-4},
    )
    return float(math.exp(result.x))


def energy_score(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """T * logsumexp(z / T): the negative free energy (higher = more in-distribution)."""
    from scipy.special import logsumexp

    return temperature * logsumexp(np.asarray(logits, dtype=np.float64) / temperature, axis=1)


def auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    """Area under the ROC curve of telling `known` (positives) from `unknown` by a higher score."""
    from sklearn.metrics import roc_auc_score

    scores = np.concatenate([known, unknown])
    truth = np.concatenate([np.ones(len(known)), np.zeros(len(unknown))])
    return float(roc_auc_score(truth, scores))


def keep_threshold(scores: np.ndarray, keep: float = KEEP_FLOWERS) -> float:
    """The largest threshold that `score >= threshold` keeps at least `keep` of `scores` with: the
    `keep` quantile of the negated scores by the inverted empirical distribution function."""
    return -float(np.quantile(-np.asarray(scores, dtype=np.float64), keep, method="inverted_cdf"))


# --- the rules -------------------------------------------------------------------------------


def fit_statistics(
    features: np.ndarray, labels: np.ndarray, num_classes: int, kernel: np.ndarray, bias: np.ndarray
) -> dict[str, dict[str, np.ndarray]]:
    """Each rule's arrays (core.OOD_RULES), fitted on training features, rounded to STATS_DTYPE as
    stored. Mahalanobis: the means of the classes the training photos hold and a shared Ledoit-Wolf
    covariance of the class-centred features, whose precision P is stored as a whitening
    W = V sqrt(S) (P = V S V^T, so |W^T x|^2 = x^T P x), the means already whitened."""
    from sklearn.covariance import LedoitWolf

    features = np.asarray(features, np.float64)
    present, index = np.unique(labels, return_inverse=True)
    means = np.stack([features[labels == c].mean(axis=0) for c in present])
    precision = LedoitWolf().fit(features - means[index]).precision_
    eigenvalues, vectors = np.linalg.eigh(precision)
    whitening = vectors * np.sqrt(np.clip(eigenvalues, 0.0, None))
    stats = {
        "energy": {"kernel": kernel, "bias": bias},
        "mahalanobis": {"means": means @ whitening, "whitening": whitening},
        "knn": {"bank": l2_normalise(features)},
    }
    return {
        rule: {name: np.asarray(a, STATS_DTYPE).astype(np.float32) for name, a in arrays.items()}
        for rule, arrays in stats.items()
    }


def candidates(temperature: float, stats: dict[str, dict[str, np.ndarray]]) -> dict[str, Calibration]:
    """The rules compared, thresholds still unset: name -> Calibration."""
    rules = {
        "max_softmax": Calibration(temperature, "max_softmax", 0.0),
        "energy, T=1": Calibration(1.0, "energy", 0.0, statistics=stats["energy"]),
        "energy, fitted T": Calibration(temperature, "energy", 0.0, statistics=stats["energy"]),
        "mahalanobis": Calibration(temperature, "mahalanobis", 0.0, statistics=stats["mahalanobis"]),
    }
    for k in K_CANDIDATES:
        if k <= len(stats["knn"]["bank"]):
            rules[f"knn, k={k}"] = Calibration(temperature, "knn", 0.0, k, statistics=stats["knn"])
    return rules


def scores(rule: Calibration, outputs: Outputs) -> np.ndarray:
    """The rule's score of each photo (temperature as the served model applies it)."""
    calibrated = apply_temperature(outputs[PROBABILITIES], rule.temperature)
    return np.asarray(rule.score(calibrated, outputs[FEATURES]), np.float64)


def verdicts(rule: Calibration, outputs: Outputs) -> np.ndarray:
    """Whether the rule keeps each photo as one of the classes, as the served model decides."""
    return rule.is_known(apply_temperature(outputs[PROBABILITIES], rule.temperature), outputs[FEATURES])


def compare(
    rules: list[dict[str, Calibration]], validation: list[Outputs], others: list[dict[str, Outputs]]
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Each rule's threshold, set to keep KEEP_FLOWERS of the held-out flowers, and its AUROC and
    share of non-flowers turned away, for each part of the non-flower photos. One entry per fold in
    each list: a fold's rules score its own held-out flowers and non-flowers, pooled over folds.
    Rules some fold lacks (kNN with more neighbours than its training photos) are left out."""
    thresholds, table = {}, {}
    pooled = lambda name, outputs: np.concatenate([scores(r[name], o) for r, o in zip(rules, outputs)])
    for name in [name for name in rules[0] if all(name in fold_rules for fold_rules in rules)]:
        flowers = pooled(name, validation)
        thresholds[name] = keep_threshold(flowers)
        row = {"kept_flowers": float((flowers >= thresholds[name]).mean())}
        for part in others[0]:
            other = pooled(name, [fold_others[part] for fold_others in others])
            row[f"auroc_{part}"] = auroc(flowers, other)
            row[f"rejected_{part}"] = float((other < thresholds[name]).mean())
        table[name] = row
    return thresholds, table


def choose(table: dict[str, dict[str, float]], rule: str) -> str:
    """The compared variant of `rule` with the best AUROC on the choice photos (the smallest k on a tie)."""
    names = [name for name in table if name.split(",")[0] == rule]
    if rule == "energy":
        names = ["energy, fitted T"]  # the temperature the served probabilities use
    return max(names, key=lambda name: (table[name]["auroc_choice"], -names.index(name)))


def held_out_check(
    probabilities: np.ndarray, labels: np.ndarray, rule_scores: np.ndarray, seed: int = SPLIT_SEED
) -> dict[str, float]:
    """Fit T and the threshold on one half of the held-out photos, measure on the other, both ways."""
    order = np.random.default_rng(seed).permutation(len(labels))
    halves = (order[: len(order) // 2], order[len(order) // 2 :])
    ece, kept = [], []
    for fit, test in (halves, halves[::-1]):
        temperature = fit_temperature(probabilities[fit], labels[fit])
        calibrated = apply_temperature(probabilities[test], temperature)
        ece.append(metrics.expected_calibration_error(calibrated, labels[test]))
        kept.append(float((rule_scores[test] >= keep_threshold(rule_scores[fit])).mean()))
    return {"ece_after": float(np.mean(ece)), "kept_flowers": float(np.mean(kept))}


# --- what a rule costs -----------------------------------------------------------------------


def microseconds_per_photo(rule: Calibration, outputs: Outputs) -> float:
    """Median time of the rule for one photo, given its forward-pass outputs (one row at a time, as
    predict() runs), in microseconds."""
    calibrated = apply_temperature(outputs[PROBABILITIES], rule.temperature)
    features = outputs[FEATURES]
    times = []
    for i in range(TIMING_REPEATS):
        row = i % len(features)
        started = time.perf_counter()
        rule.is_known(calibrated[row], features[row])
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1e6)


def microseconds_forward(engine: Any, repeats: int = 10) -> float:
    """Median time of the engine's forward pass for one photo (for scale beside the rule's cost)."""
    pixels = np.zeros((1, engine.image_size, engine.image_size, 3), np.float32)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        engine(pixels)
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1e6)
