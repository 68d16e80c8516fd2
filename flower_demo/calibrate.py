"""Honest probabilities and "not one of the 102": temperature scaling and the rejection rule.

    python -m flower_demo.calibrate --model weights --data-dir DATA_DIR
    python -m flower_demo.calibrate --model weights --data-dir DATA_DIR --folds RUN_A RUN_B

Everything is fitted on photos a model never trained on. By default that is the model's own
validation split. A model trained on train + validation (the final one) has none left, so
`--folds` names runs of the same recipe that each held one split out (train on train, score on
validation; train on validation, score on train): each is scored on its held-out split and the
results are pooled (out-of-fold). Their accuracies are the recipe's estimate, stored under
"estimate" in metadata.json: a figure from photos no choice was made on, unless a fold's epoch
was chosen on them (the fold says so) or the recipe itself was picked on a fold's score
(`--recipe-chosen-on RUN` says which; the estimate then also gives the other folds' figure alone).

It fits a temperature T (softmax(log p / T) minimises the negative log-likelihood) and measures
the expected calibration error (ECE, 15 equal-width bins) before and after. Then it compares four
out-of-distribution scores, all read from the served model's forward pass (probabilities and
pooled features, the engine the core runs, LiteRT by default): max-softmax after T, energy
T * logsumexp(z / T) of the logits z = features @ kernel + bias, Mahalanobis distance to the
nearest class mean under a shared Ledoit-Wolf covariance, and cosine similarity to the k-th
nearest training photo (kNN on L2-normalised features). A model's statistics are fitted on the
photos it trained on; each threshold keeps KEEP_FLOWERS of the held-out flowers; k is chosen on
held-out flowers against the "choice" part of ood_photos/. The held-out part of ood_photos/ is
used for the final figures only.

The served rule is kNN (DEFAULT_RULE, `--rule` picks another): on this model it separates flowers
from the other photos far better than the rest (see README). It writes {"temperature", "ood_rule",
"ood_threshold", "ood_k", "ood_file", "report"} under "calibration" in metadata.json and the rule's
statistics to ood.npz beside the model (`--dry-run` only prints).

This module owns the fitting and its measures; what prediction applies at run time
(`Calibration`, `known_score`, `read_calibration`) is the serving core's (core.py). scipy,
scikit-learn and Keras (to read the classifier's kernel and bias from model.keras, for energy)
are imported only when run.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from flower_demo import core, data, model_files
from flower_demo.core import (
    CALIBRATION_KEY,
    FEATURES,
    OOD_FILE,
    PROBABILITIES,
    Calibration,
    apply_temperature,
    l2_normalise,
    log_probabilities,
    read_calibration,
)
from flower_demo.errors import FlowerDemoError

ECE_BINS = 15
KEEP_FLOWERS = 0.95  # share of validation flowers every rejection threshold keeps
TEMPERATURE_BOUNDS = (0.05, 20.0)
SPLIT_SEED = 0  # the two halves of the validation check
DEFAULT_RULE = "knn"
K_CANDIDATES = (1, 2, 5, 10, 20, 50)
OOD_PHOTOS = model_files.REPO_ROOT / "ood_photos"  # photos.csv: file, group, package, ..., split
ESTIMATE_KEY = "estimate"  # metadata.json: the recipe's accuracy on photos its models never trained on
STATS_DTYPE = np.float16  # ood.npz stores its arrays at half precision: half the size
TIMING_REPEATS = 300
# scikit-learn's flower.jpg is an orange dahlia, one of the 102 species: reported on its own.
KNOWN_FLOWER_PHOTOS = {"sklearn:flower.jpg": "orange dahlia"}


# --- measures --------------------------------------------------------------------------------


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    from scipy.special import softmax as scipy_softmax

    return scipy_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=-1)


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Sum over equal-width confidence bins of |accuracy - mean confidence| x share of samples."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    error = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            error += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(error)


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
    """The largest threshold that `score >= threshold` keeps at least `keep` of `scores` with."""
    ordered = np.sort(np.asarray(scores, dtype=np.float64))
    return float(ordered[int(math.floor((1.0 - keep) * len(ordered)))])


# --- data and forward passes ------------------------------------------------------------------


def non_flower_photos(folder: Path = OOD_PHOTOS) -> dict[str, list[Path]]:
    """The photos of ood_photos/ by part: {"choice": [...], "held_out": [...]} (photos.csv's split)."""
    listing = folder / "photos.csv"
    if not listing.is_file():
        raise FlowerDemoError(f"non-flower photos not found: {listing}")
    with open(listing, newline="") as f:
        rows = list(csv.DictReader(f))
    parts: dict[str, list[Path]] = {"choice": [], "held_out": []}
    for row in rows:
        parts[row["split"]].append(folder / row["file"])
    return parts


def known_flower_photos() -> dict[str, np.ndarray]:
    from sklearn.datasets import load_sample_image

    return {key: load_sample_image(key.split(":", 1)[1]) for key in KNOWN_FLOWER_PHOTOS}


def forward(engine: Any, items: list[Any], batch_size: int = 32) -> dict[str, np.ndarray]:
    """The engine's raw probabilities and pooled features for images (paths or arrays): what the
    served model computes, before any calibration."""

    probabilities, features = [], []
    for batch in data.iter_decoded(items, engine.image_size, batch_size):
        outputs = engine(batch.astype(np.float32))
        if FEATURES not in outputs:
            raise FlowerDemoError(f"{engine.path} returns no pooled features; re-export it")
        probabilities.append(outputs[PROBABILITIES])
        features.append(outputs[FEATURES])
    return {
        PROBABILITIES: np.concatenate(probabilities).astype(np.float64),
        FEATURES: np.concatenate(features).astype(np.float32),
    }


def classifier_head(model_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The dense classifier's kernel (d, classes) and bias, read from model.keras (energy needs them)."""
    from flower_demo import models

    model, _ = models.load_model(model_path)
    layer = model.get_layer("classifier")
    return np.asarray(layer.kernel, np.float32), np.asarray(layer.bias, np.float32)


# --- fitting the rules -------------------------------------------------------------------------


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


def scores(rule: Calibration, outputs: dict[str, np.ndarray]) -> np.ndarray:
    """The rule's score of each photo (temperature as the served model applies it)."""
    calibrated = apply_temperature(outputs[PROBABILITIES], rule.temperature)
    return np.asarray(rule.score(calibrated, outputs[FEATURES]), np.float64)


def compare(
    rules: list[dict[str, Calibration]],
    validation: list[dict[str, np.ndarray]],
    others: list[dict[str, dict[str, np.ndarray]]],
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


def microseconds_per_photo(rule: Calibration, outputs: dict[str, np.ndarray]) -> float:
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


def held_out_check(
    probabilities: np.ndarray, labels: np.ndarray, rule_scores: np.ndarray, seed: int = SPLIT_SEED
) -> dict[str, float]:
    """Fit T and the threshold on one half of the validation split, measure on the other, both ways."""
    order = np.random.default_rng(seed).permutation(len(labels))
    halves = (order[: len(order) // 2], order[len(order) // 2 :])
    ece, kept = [], []
    for fit, test in (halves, halves[::-1]):
        temperature = fit_temperature(probabilities[fit], labels[fit])
        calibrated = apply_temperature(probabilities[test], temperature)
        ece.append(expected_calibration_error(calibrated, labels[test]))
        kept.append(float((rule_scores[test] >= keep_threshold(rule_scores[fit])).mean()))
    return {"ece_after": float(np.mean(ece)), "kept_flowers": float(np.mean(kept))}


@dataclass
class Fold:
    """A model of the recipe, the official splits it trained on and the one it is scored on."""

    path: str | Path
    engine: Any
    trained_on: list[str]
    scored_on: str
    chosen_on_scored: bool  # early stopping picked its epoch on the scored split
    recipe_chosen_on_scored: bool = False  # the recipe was picked by comparing scores on that split


def trained_splits(metadata: dict[str, Any]) -> list[str]:
    """The official splits a model trained on, from the settings train.py stored (train before them)."""
    splits = str(metadata.get("training", {}).get("train_splits", "train"))
    return [s.strip() for s in splits.split(",") if s.strip()]


def fold_of(model_path: str | Path, engine: Any, metadata: dict[str, Any]) -> Fold:
    """The fold a trained model folder is, from the settings train.py stored in its metadata."""
    scored_on = str(metadata.get("training", {}).get("val_split", "validation"))
    if scored_on.lower() == "none":
        raise FlowerDemoError(
            f"{model_path} was trained on every split it has, so nothing held out can calibrate it; "
            "give --folds: runs of the same recipe that held a split out"
        )
    chosen = bool(metadata.get("metrics", {}).get("chosen_on_validation", True))
    return Fold(model_path, engine, trained_splits(metadata), scored_on, chosen)


def open_fold(model_path: str | Path, engine_name: str | None, num_classes: int) -> Fold:
    """A --folds run: its engine (raw outputs) and splits, checked against the model's class count."""
    metadata = model_files.read_metadata(model_path)
    engine = core.open_engine(model_path, engine_name)
    model_files.check_against_metadata(engine.path, engine.num_classes, engine.image_size, metadata)
    if engine.num_classes != num_classes:
        raise FlowerDemoError(f"fold {model_path} has {engine.num_classes} classes, the model {num_classes}")
    return fold_of(model_path, engine, metadata)


def mark_recipe_choice(folds: list[Fold], run: str | Path) -> None:
    """Mark the fold whose scored photos the recipe was picked on, so its figure is not passed off
    as an estimate; `run` must be one of the folds."""
    matches = [fold for fold in folds if Path(fold.path).resolve() == Path(run).resolve()]
    if not matches:
        raise FlowerDemoError(f"--recipe-chosen-on {run} is not one of the --folds runs")
    for fold in matches:
        fold.recipe_chosen_on_scored = True


def training_statistics(
    engine: Any, model_path: str | Path, data_dir: str, splits: list[str], num_classes: int
) -> dict[str, dict[str, np.ndarray]]:
    """Every rule's statistics from the model's features of the photos it trained on."""
    train = data.load_oxford_splits(data_dir, splits)
    if len(train.class_names) != num_classes:
        raise FlowerDemoError(f"the data has {len(train.class_names)} classes, the model {num_classes}")
    features = forward(engine, list(train.items))[FEATURES]
    return fit_statistics(features, np.asarray(train.labels), num_classes, *classifier_head(model_path))


def fold_estimate(folds: list[Fold], held: list[dict[str, np.ndarray]], labels: list[np.ndarray]) -> dict:
    """The recipe's accuracy on photos each fold's model never trained on, per fold and averaged."""
    rows = []
    for fold, outputs, truth in zip(folds, held, labels):
        ranked = np.argsort(-outputs[PROBABILITIES], axis=1)
        rows.append(
            {
                "model": str(fold.path),
                "trained_on": "+".join(fold.trained_on),
                "scored_on": fold.scored_on,
                "images": int(len(truth)),
                "top1": float((ranked[:, 0] == truth).mean()),
                "top5": float((ranked[:, :5] == truth[:, None]).any(axis=1).mean()),
                "chosen_on_scored": fold.chosen_on_scored,
                "recipe_chosen_on_scored": fold.recipe_chosen_on_scored,
            }
        )
    method = f"{len(rows)}-fold" if len(rows) > 1 else "one held-out split"
    estimate = {
        "method": method,
        "top1": float(np.mean([r["top1"] for r in rows])),
        "top5": float(np.mean([r["top5"] for r in rows])),
        "chosen_on_scored": any(r["chosen_on_scored"] for r in rows),
        "recipe_chosen_on_scored": any(r["recipe_chosen_on_scored"] for r in rows),
        "folds": rows,
    }
    unchosen = [r for r in rows if not (r["chosen_on_scored"] or r["recipe_chosen_on_scored"])]
    if estimate["recipe_chosen_on_scored"] and unchosen:  # the figure from photos no choice saw
        estimate["unchosen"] = {
            "folds": len(unchosen),
            "top1": float(np.mean([r["top1"] for r in unchosen])),
            "top5": float(np.mean([r["top5"] for r in unchosen])),
        }
    return estimate


def calibrate(
    engine: Any,
    metadata: dict[str, Any],
    model_path: str | Path,
    data_dir: str,
    rule_name: str = DEFAULT_RULE,
    photos: Path = OOD_PHOTOS,
    log: Any = print,
    folds: list[Fold] | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Everything the command prints and stores, and the chosen rule's statistics.

    The temperature, the threshold and the rule's choice are fitted on photos the models never
    trained on: each fold's model on its held-out split, pooled. With no `folds` the model is its own
    one fold (trained on train, scored on validation). A model trained on every split (the final
    one) takes its folds from runs of the same recipe; it then gets only the rule's statistics of
    its own (its features of the photos it trained on) beside the fitted temperature and threshold.
    """
    core.check_rule(rule_name)
    num_classes = len(metadata["class_names"])
    own = fold_of(model_path, engine, metadata) if not folds else None
    folds = folds or [own]
    parts = non_flower_photos(photos)
    started = time.perf_counter()
    stats, held, labels, others = [], [], [], []
    for fold in folds:
        scored = data.load_oxford_splits(data_dir, [fold.scored_on])
        trained, n = "+".join(fold.trained_on), len(scored)
        log(f"fold {fold.path}: trained on {trained}, scored on {n} {fold.scored_on} images")
        stats.append(training_statistics(fold.engine, fold.path, data_dir, fold.trained_on, num_classes))
        held.append(forward(fold.engine, list(scored.items)))
        labels.append(np.asarray(scored.labels))
        others.append({part: forward(fold.engine, paths) for part, paths in parts.items()})
    final_stats = (
        stats[0]
        if own
        else training_statistics(engine, model_path, data_dir, trained_splits(metadata), num_classes)
    )
    final_others = others[0] if own else {part: forward(engine, paths) for part, paths in parts.items()}
    known = known_flower_photos()
    known_outputs = forward(engine, list(known.values()))
    log(f"forward passes ({engine.name}): {time.perf_counter() - started:.0f} s")

    probs = np.concatenate([outputs[PROBABILITIES] for outputs in held])
    truth = np.concatenate(labels)
    temperature = fit_temperature(probs, truth)
    calibrated = apply_temperature(probs, temperature)
    fold_rules = [candidates(temperature, fold_stats) for fold_stats in stats]
    thresholds, table = compare(fold_rules, held, others)
    chosen = choose(table, rule_name)
    rule = replace(candidates(temperature, final_stats)[chosen], ood_threshold=thresholds[chosen])
    flower_scores = np.concatenate([scores(r[chosen], outputs) for r, outputs in zip(fold_rules, held)])
    flowers_known = flower_scores >= rule.ood_threshold
    held_out = final_others["held_out"]
    held_known = rule.is_known(apply_temperature(held_out[PROBABILITIES], temperature), held_out[FEATURES])
    known_calibrated = apply_temperature(known_outputs[PROBABILITIES], temperature)
    known_verdict = rule.is_known(known_calibrated, known_outputs[FEATURES])
    top1 = calibrated.argmax(axis=1) == truth
    forward_us = microseconds_forward(engine)
    fitted_on = [f"{fold.path} on {fold.scored_on}" for fold in folds]
    result = {
        "temperature": temperature,
        "ood_rule": rule.ood_rule,
        "ood_threshold": rule.ood_threshold,
        "ood_k": rule.k,
        "ood_file": OOD_FILE if rule.statistics else None,
        "report": {
            "statistics_fitted_on": "+".join(trained_splits(metadata)),
            "threshold_fitted_on": fitted_on[0] if own else "out of fold: " + ", ".join(fitted_on),
            "validation_images": int(len(truth)),
            "validation_top1": float(top1.mean()),
            "nll_before": nll(log_probabilities(probs), truth, 1.0),
            "nll_after": nll(log_probabilities(probs), truth, temperature),
            "ece_before": expected_calibration_error(probs, truth),
            "ece_after": expected_calibration_error(calibrated.astype(np.float64), truth),
            "held_out_half": held_out_check(probs, truth, flower_scores),
            "rule": chosen,
            "rules": table,
            "kept_flowers": float(flowers_known.mean()),
            "top1_of_kept": float(top1[flowers_known].mean()),
            "top1_of_rejected": float(top1[~flowers_known].mean()) if (~flowers_known).any() else None,
            "non_flowers": int(len(held_known)),  # the held-out part of ood_photos/, by this model
            "non_flowers_rejected": int((~held_known).sum()),
            "auroc": table[chosen]["auroc_held_out"],
            "choice_photos": len(parts["choice"]),
            "rule_microseconds": microseconds_per_photo(rule, held[0]),
            "forward_microseconds": forward_us,
            "engine": engine.name,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        },
        "estimate": fold_estimate(folds, held, labels),
        "details": {  # printed, not stored
            "accepted_non_flowers": [
                str(path.relative_to(photos.parent) if path.is_relative_to(photos.parent) else path)
                for part in parts
                for path, ok in zip(
                    parts[part],
                    rule.is_known(
                        apply_temperature(final_others[part][PROBABILITIES], temperature),
                        final_others[part][FEATURES],
                    ),
                )
                if ok
            ],
            "known_flower_photos": {
                name: {
                    "species": KNOWN_FLOWER_PHOTOS[name],
                    "top1": metadata["class_names"][int(known_calibrated[i].argmax())],
                    "accepted": bool(known_verdict[i]),
                }
                for i, name in enumerate(known)
            },
        },
    }
    return result, final_stats.get(rule.ood_rule, {}) if rule.statistics else {}


def microseconds_forward(engine: Any, repeats: int = 10) -> float:
    """Median time of the engine's forward pass for one photo (for scale beside the rule's cost)."""
    pixels = np.zeros((1, engine.image_size, engine.image_size, 3), np.float32)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        engine(pixels)
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1e6)


def format_report(result: dict[str, Any]) -> str:
    r, estimate = result["report"], result["estimate"]
    lines = [
        f"estimate ({estimate['method']}): top-1 {estimate['top1']:.4f}, top-5 {estimate['top5']:.4f}",
        *[
            f"  {fold['model']}: trained on {fold['trained_on']}, {fold['images']} {fold['scored_on']} "
            f"images: top-1 {fold['top1']:.4f}, top-5 {fold['top5']:.4f}"
            + (" (its epoch was chosen on them)" if fold["chosen_on_scored"] else "")
            + (" (the recipe was chosen on them)" if fold["recipe_chosen_on_scored"] else "")
            for fold in estimate["folds"]
        ],
        *(
            [
                f"  the folds no choice saw ({estimate['unchosen']['folds']}): "
                f"top-1 {estimate['unchosen']['top1']:.4f}, top-5 {estimate['unchosen']['top5']:.4f}"
            ]
            if "unchosen" in estimate
            else []
        ),
        f"fitted on {r['threshold_fitted_on']} ({r['validation_images']} images)",
        f"temperature T = {result['temperature']:.4f}",
        f"NLL  before {r['nll_before']:.4f}   after {r['nll_after']:.4f}",
        f"ECE ({ECE_BINS} bins)  before {r['ece_before']:.4f}   after {r['ece_after']:.4f}   "
        f"(T fitted on the other half: {r['held_out_half']['ece_after']:.4f})",
        f"rules: thresholds keep {KEEP_FLOWERS:.0%} of held-out flowers; non-flower photos: "
        f"{r['choice_photos']} for choices, {r['non_flowers']} held out",
        f"  {'rule':<18} {'AUROC choice':>12} {'rejected':>9} {'AUROC held-out':>15} {'rejected':>9}",
        *[
            f"  {name:<18} {row['auroc_choice']:>12.4f} {row['rejected_choice']:>9.1%} "
            f"{row['auroc_held_out']:>15.4f} {row['rejected_held_out']:>9.1%}"
            for name, row in r["rules"].items()
        ],
        f"rule: {r['rule']} >= {result['ood_threshold']:.4f} (keeps {r['kept_flowers']:.1%} of held-out "
        f"flowers; {r['held_out_half']['kept_flowers']:.1%} when fitted on the other half)",
        f"  held-out non-flower photos this model rejects: {r['non_flowers_rejected']} of {r['non_flowers']},"
        f" AUROC {r['auroc']:.4f}",
        f"  top-1 of kept flowers {r['top1_of_kept']:.1%}, of rejected flowers "
        + (f"{r['top1_of_rejected']:.1%}" if r["top1_of_rejected"] is not None else "-"),
        f"  cost: {r['rule_microseconds']:.0f} us per photo on top of a "
        f"{r['forward_microseconds'] / 1000:.1f} ms forward pass ({r['engine']})",
    ]
    details = result.get("details", {})
    for name in details.get("accepted_non_flowers", []):
        lines.append(f"    accepted non-flower: {name}")
    for name, s in details.get("known_flower_photos", {}).items():
        verdict = "accepted" if s["accepted"] else "rejected"
        lines.append(f"  {name} ({s['species']}, one of the classes): top-1 {s['top1']}, {verdict}")
    return "\n".join(lines)


def write_calibration(
    model_path: str | Path, result: dict[str, Any], statistics: dict[str, np.ndarray] | None = None
) -> Path:
    """Store `result` (less its per-photo details) under "calibration" in the model's metadata.json,
    its accuracy estimate under "estimate", and the rule's statistics in OOD_FILE beside it (a stale
    one is removed), leaving the rest as it is; then load it back as prediction will, so nothing
    prediction would reject is left."""
    path = model_files.metadata_path(model_path)
    metadata = model_files.read_metadata(model_path)
    skip = ("details", ESTIMATE_KEY)
    stored = {key: value for key, value in result.items() if key not in skip and value is not None}
    stats_path = model_files.model_dir(model_path) / OOD_FILE
    if statistics:
        np.savez(stats_path, **{name: np.asarray(a, STATS_DTYPE) for name, a in statistics.items()})
        stored.setdefault("report", {})["ood_file_bytes"] = stats_path.stat().st_size
    elif stats_path.exists():
        stats_path.unlink()
    metadata[CALIBRATION_KEY] = stored
    if ESTIMATE_KEY in result:
        metadata[ESTIMATE_KEY] = result[ESTIMATE_KEY]
    read_calibration(metadata, model_files.model_dir(model_path))  # refuse to write what prediction rejects
    path.write_text(json.dumps(metadata, indent=2) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flower_demo.calibrate", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model", default=str(model_files.SHIPPED_MODEL_DIR), help="model folder (default: weights/)"
    )
    p.add_argument(
        "--data-dir", required=True, help="Flowers-102 folder; its train and validation splits are used"
    )
    p.add_argument("--rule", default=DEFAULT_RULE, help=f"rule to store, one of {', '.join(core.OOD_RULES)}")
    p.add_argument(
        "--engine", default=None, help="engine that computes the outputs: litert (default) or keras"
    )
    p.add_argument(
        "--folds",
        nargs="+",
        metavar="RUN",
        help="fit on these runs of the same recipe, each on the split it held out (pooled), instead of "
        "on the model's own validation split: what a model trained on train + validation needs",
    )
    p.add_argument(
        "--recipe-chosen-on",
        metavar="RUN",
        help="the --folds run whose score picked the recipe (its settings were compared on that "
        "fold's scored photos): the estimate marks its figure as selected and gives the others alone",
    )
    p.add_argument(
        "--photos", type=Path, default=OOD_PHOTOS, help="folder of non-flower photos with photos.csv"
    )
    p.add_argument("--dry-run", action="store_true", help="print the figures, leave the model folder alone")
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of a report")
    args = p.parse_args(argv)
    try:
        core.check_rule(args.rule)
        metadata = model_files.read_metadata(args.model)
        engine = core.open_engine(args.model, args.engine)  # raw outputs: no stored rule applied
        model_files.check_against_metadata(engine.path, engine.num_classes, engine.image_size, metadata)
        num_classes = len(metadata["class_names"])
        folds = [open_fold(run, args.engine, num_classes) for run in args.folds or []]
        if args.recipe_chosen_on:
            mark_recipe_choice(folds, args.recipe_chosen_on)
        result, statistics = calibrate(
            engine,
            metadata,
            args.model,
            args.data_dir,
            args.rule,
            args.photos,
            log=lambda m: print(m, file=sys.stderr),
            folds=folds,
        )
        written = None if args.dry_run else write_calibration(args.model, result, statistics)
    except FlowerDemoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    print(
        f"calibration written to {written}" if written else "dry run: the model folder is unchanged",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
