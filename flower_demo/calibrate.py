"""Honest probabilities and "not one of the 102": temperature scaling and a rejection rule.

    python -m flower_demo.calibrate --model weights --data-dir ../shared/data/oxford_flowers102

Fits a temperature T on the validation split (softmax(log p / T) minimises the negative
log-likelihood), measures the expected calibration error (ECE, 15 equal-width bins) before and
after, and compares out-of-distribution scores on validation flowers against photos of things
that are not flowers, shipped inside PyPI packages (NON_FLOWER_PHOTOS). The stored rule keeps
KEEP_FLOWERS of the validation flowers. With T and the rule it writes
{"temperature", "ood_rule", "ood_threshold", ...} under "calibration" in the model's metadata.json
(`--dry-run` only prints).

The stored rule is max-softmax after temperature because it needs nothing but the probabilities
that every runtime (the Keras model and its TFLite export) returns: the model ends in a softmax,
log p = z - logsumexp(z), and the unknown constant cancels in softmax(log p / T) = softmax(z / T).
The energy score T * logsumexp(z / T) needs that constant, so it is measured here from the real
logits (pooled features times the classifier's kernel, plus its bias) for comparison only.

This module owns the fitting and its measures; what prediction applies at run time
(`Calibration`, `read_calibration`) is the serving core's (core.py). scipy, scikit-learn and
scikit-image are imported only when run.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from flower_demo import core, models
from flower_demo.core import (
    CALIBRATION_KEY,
    Calibration,
    apply_temperature,
    log_probabilities,
    read_calibration,
)
from flower_demo.errors import FlowerDemoError

ECE_BINS = 15
KEEP_FLOWERS = 0.95  # share of validation flowers the rejection threshold keeps
TEMPERATURE_BOUNDS = (0.05, 20.0)
SPLIT_SEED = 0  # the two halves of the held-out check

# Photos (not drawings or synthetic images) of things that are not flowers, from packages on PyPI.
# scikit-image's data module: name -> how it is loaded. Left out: colorwheel, logo, horse (a
# silhouette), chessboard, checkerboard, binary_blobs, shepp_logan_phantom (not photos), lfw_subset
# (25 px faces), and the images scikit-image downloads on first use (no network here).
SKIMAGE_PHOTOS = (
    "astronaut",
    "camera",
    "cat",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "brick",
    "grass",
    "gravel",
    "moon",
    "coins",
    "page",
    "text",
    "clock",
    "retina",
    "immunohistochemistry",
    "cell",
    "microaneurysms",
    "stereo_motorcycle",  # the left view of the stereo pair
)
# scikit-learn's sample images: china.jpg (a pagoda). Its flower.jpg is an orange dahlia, one of
# the 102 species, so it is no non-flower: it is reported on its own (KNOWN_FLOWER_PHOTOS).
SKLEARN_PHOTOS = ("china.jpg",)
KNOWN_FLOWER_PHOTOS = {"sklearn:flower.jpg": "orange dahlia"}
MATPLOTLIB_PHOTOS = ("grace_hopper.jpg",)  # matplotlib's sample data: a portrait


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


# --- data ------------------------------------------------------------------------------------


def non_flower_photos() -> dict[str, np.ndarray]:
    """NON-flower photos from scikit-image, scikit-learn and matplotlib, as arrays, by source:name."""
    import matplotlib
    import skimage.data
    from sklearn.datasets import load_sample_image

    photos: dict[str, np.ndarray] = {}
    for name in SKIMAGE_PHOTOS:
        image = getattr(skimage.data, name)()
        photos[f"skimage:{name}"] = image[0] if name == "stereo_motorcycle" else image
    for name in SKLEARN_PHOTOS:
        photos[f"sklearn:{name}"] = load_sample_image(name)
    from PIL import Image

    for name in MATPLOTLIB_PHOTOS:
        with Image.open(Path(matplotlib.get_data_path()) / "sample_data" / name) as image:
            photos[f"matplotlib:{name}"] = np.asarray(image.convert("RGB"))
    return photos


def known_flower_photos() -> dict[str, np.ndarray]:
    from sklearn.datasets import load_sample_image

    return {key: load_sample_image(key.split(":", 1)[1]) for key in KNOWN_FLOWER_PHOTOS}


_LOGITS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def logits_and_probabilities(
    model: Any, items: list[Any], batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """(logits, probabilities) for images (paths or arrays): logits from the pooled features and the
    classifier's own kernel and bias, probabilities as the model returns them (one pass)."""
    import keras

    from flower_demo.data import iter_decoded

    classifier = model.get_layer("classifier")
    size = int(model.input_shape[1])
    if model not in _LOGITS:
        import tensorflow as tf

        both = keras.Model(model.input, [classifier.input, model.output])
        _LOGITS[model] = (
            tf.function(
                lambda x: both(x, training=False),
                input_signature=[tf.TensorSpec((None, size, size, 3), tf.float32)],
                autograph=False,
            )
            if keras.config.backend() == "tensorflow"
            else both.predict_on_batch
        )
    kernel = np.asarray(classifier.kernel, dtype=np.float64)
    bias = np.asarray(classifier.bias, dtype=np.float64)
    logits, probs = [], []
    for batch in iter_decoded(items, size, batch_size):
        features, p = _LOGITS[model](batch.astype(np.float32))
        logits.append(np.asarray(features, dtype=np.float64) @ kernel + bias)
        probs.append(np.asarray(p))
    return np.concatenate(logits), np.concatenate(probs)


# --- fitting and reporting -------------------------------------------------------------------


def held_out_check(probabilities: np.ndarray, labels: np.ndarray, seed: int = SPLIT_SEED) -> dict[str, float]:
    """Fit T and the threshold on one half of the validation split, measure on the other, both ways."""
    order = np.random.default_rng(seed).permutation(len(labels))
    halves = (order[: len(order) // 2], order[len(order) // 2 :])
    ece, kept = [], []
    for fit, test in (halves, halves[::-1]):
        temperature = fit_temperature(probabilities[fit], labels[fit])
        threshold = keep_threshold(apply_temperature(probabilities[fit], temperature).max(axis=1))
        calibrated = apply_temperature(probabilities[test], temperature)
        ece.append(expected_calibration_error(calibrated, labels[test]))
        kept.append(float((calibrated.max(axis=1) >= threshold).mean()))
    return {"ece_after": float(np.mean(ece)), "kept_flowers": float(np.mean(kept))}


def calibrate(
    model: Any,
    metadata: dict[str, Any],
    data_dir: str,
    log: Any = print,
) -> dict[str, Any]:
    """Everything the command prints and stores, measured on the validation split of `data_dir`."""
    from flower_demo import data

    split = data.load_oxford_folder(data_dir, "validation")
    if len(split.class_names) != len(metadata["class_names"]):
        raise FlowerDemoError(
            f"the data has {len(split.class_names)} classes, the model {len(metadata['class_names'])}"
        )
    labels = np.asarray(split.labels)
    started = time.perf_counter()
    log(f"validation: {len(split)} of {split.expected} images from {split.source}")
    logits, probs = logits_and_probabilities(model, list(split.items))
    others = non_flower_photos()
    other_logits, other_probs = logits_and_probabilities(model, list(others.values()))
    known = known_flower_photos()
    _, known_probs = logits_and_probabilities(model, list(known.values()))
    log(f"forward passes: {time.perf_counter() - started:.0f} s")

    temperature = fit_temperature(probs, labels)
    calibrated = apply_temperature(probs, temperature)
    other_calibrated = apply_temperature(other_probs, temperature)
    scores = {
        "max_softmax, T=1": (probs.max(axis=1), other_probs.max(axis=1)),
        "max_softmax, fitted T": (calibrated.max(axis=1), other_calibrated.max(axis=1)),
        "energy, T=1": (energy_score(logits), energy_score(other_logits)),
        "energy, fitted T": (
            energy_score(logits, temperature),
            energy_score(other_logits, temperature),
        ),
    }
    rule = Calibration(temperature, "max_softmax", keep_threshold(calibrated.max(axis=1)))
    flowers_known = rule.is_known(calibrated)
    others_known = rule.is_known(other_calibrated)
    top1 = calibrated.argmax(axis=1) == labels
    held_out = held_out_check(probs, labels)
    known_calibrated = apply_temperature(known_probs, temperature)
    return {
        "temperature": temperature,
        "ood_rule": rule.ood_rule,
        "ood_threshold": rule.ood_threshold,
        "report": {
            "fitted_on": split.source,
            "validation_images": int(len(labels)),
            "validation_top1": float(top1.mean()),
            "nll_before": nll(log_probabilities(probs), labels, 1.0),
            "nll_after": nll(log_probabilities(probs), labels, temperature),
            "ece_before": expected_calibration_error(probs.astype(np.float64), labels),
            "ece_after": expected_calibration_error(calibrated.astype(np.float64), labels),
            "held_out_half": held_out,
            "auroc": {name: auroc(f, o) for name, (f, o) in scores.items()},
            "kept_flowers": float(flowers_known.mean()),
            "top1_of_kept": float(top1[flowers_known].mean()),
            "top1_of_rejected": float(top1[~flowers_known].mean()) if (~flowers_known).any() else None,
            "non_flowers": int(len(others)),
            "non_flowers_rejected": int((~others_known).sum()),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        },
        "details": {  # printed, not stored
            "non_flower_scores": {
                name: {
                    "score": float(other_calibrated[i].max()),
                    "top1": metadata["class_names"][int(other_calibrated[i].argmax())],
                    "rejected": bool(not others_known[i]),
                }
                for i, name in enumerate(others)
            },
            "known_flower_photos": {
                name: {
                    "species": KNOWN_FLOWER_PHOTOS[name],
                    "top1": metadata["class_names"][int(known_calibrated[i].argmax())],
                    "score": float(known_calibrated[i].max()),
                    "rejected": bool(not rule.is_known(known_calibrated[i])),
                }
                for i, name in enumerate(known)
            },
        },
    }


def format_report(result: dict[str, Any]) -> str:
    r = result["report"]
    lines = [
        f"model validation top-1: {r['validation_top1']:.4f} ({r['validation_images']} images)",
        f"temperature T = {result['temperature']:.4f}",
        f"NLL  before {r['nll_before']:.4f}   after {r['nll_after']:.4f}",
        f"ECE ({ECE_BINS} bins)  before {r['ece_before']:.4f}   after {r['ece_after']:.4f}   "
        f"(T fitted on the other half: {r['held_out_half']['ece_after']:.4f})",
        f"AUROC, validation flowers vs {r['non_flowers']} non-flower photos:",
        *[f"  {name:<26} {value:.4f}" for name, value in r["auroc"].items()],
        f"rule: {result['ood_rule']} after T >= {result['ood_threshold']:.4f} "
        f"(keeps {r['kept_flowers']:.1%} of validation flowers; "
        f"{r['held_out_half']['kept_flowers']:.1%} when fitted on the other half)",
        f"  top-1 of kept flowers {r['top1_of_kept']:.1%}, of rejected flowers "
        + (f"{r['top1_of_rejected']:.1%}" if r["top1_of_rejected"] is not None else "-"),
        f"  non-flower photos rejected: {r['non_flowers_rejected']} of {r['non_flowers']}",
    ]
    details = result.get("details", {})
    for name, s in sorted(details.get("non_flower_scores", {}).items(), key=lambda t: t[1]["score"]):
        verdict = "rejected" if s["rejected"] else "ACCEPTED"
        lines.append(f"    {s['score']:.3f}  {verdict:<8}  {name}  (top-1 {s['top1']})")
    for name, s in details.get("known_flower_photos", {}).items():
        verdict = "rejected" if s["rejected"] else "accepted"
        lines.append(
            f"  {name} ({s['species']}, one of the classes): "
            f"top-1 {s['top1']}, score {s['score']:.3f}, {verdict}"
        )
    return "\n".join(lines)


def write_calibration(model_path: str | Path, result: dict[str, Any]) -> Path:
    """Store `result` (less its per-photo details) under "calibration" in the model's metadata.json,
    leaving the rest as it is."""
    path = core.metadata_path(model_path)
    metadata = core.read_metadata(model_path)
    metadata[CALIBRATION_KEY] = {key: value for key, value in result.items() if key != "details"}
    read_calibration(metadata)  # refuse to write something prediction would reject
    path.write_text(json.dumps(metadata, indent=2) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flower_demo.calibrate", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model", default=str(core.SHIPPED_MODEL_DIR), help="model folder or .keras file (default: weights/)"
    )
    p.add_argument("--data-dir", required=True, help="Flowers-102 folder; its validation split is used")
    p.add_argument("--dry-run", action="store_true", help="print the figures, leave metadata.json alone")
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of a report")
    args = p.parse_args(argv)
    try:
        model, metadata = models.load_model(args.model)
        result = calibrate(model, metadata, args.data_dir, log=lambda m: print(m, file=sys.stderr))
        written = None if args.dry_run else write_calibration(args.model, result)
    except FlowerDemoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    print(
        f"calibration written to {written}" if written else "dry run: metadata.json unchanged",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
