"""A calibration from start to end: every fold's forward passes, then the temperature and the rule
fitted on the held-out photos pooled over folds, then every figure the command reports and stores.

`calibrate` returns the result (what metadata.json stores under "calibration" and "estimate", and
the per-photo details the command prints), the chosen rule's statistics (for ood.npz) and the
photos the model trained on, with their features (the reference photos, also in ood.npz).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from flower_demo import core, metrics
from flower_demo.calibrate import rules
from flower_demo.calibrate.folds import (
    KNOWN_FLOWER_PHOTOS,
    OOD_PHOTOS,
    Fold,
    FoldOutputs,
    Trained,
    fold_estimate,
    fold_of,
    forward,
    known_flower_photos,
    non_flower_photos,
    run_fold,
    trained_splits,
    training_statistics,
)
from flower_demo.core import OOD_FILE, PROBABILITIES, Calibration, apply_temperature, log_probabilities


@dataclass
class FittedRule:
    """The temperature and the served rule fitted on the held-out photos pooled over folds."""

    temperature: float
    rule: Calibration  # the chosen variant, the final model's statistics, the pooled threshold
    name: str  # the chosen variant's name in the comparison table, e.g. "knn, k=5"
    table: dict[str, dict[str, float]]  # every variant's threshold and AUROC (rules.compare)
    flower_scores: np.ndarray  # each held-out photo's score by its own fold's variant


def calibrate(
    engine: Any,
    metadata: dict[str, Any],
    model_path: str | Path,
    data_dir: str,
    rule_name: str = rules.DEFAULT_RULE,
    photos: Path = OOD_PHOTOS,
    log: Any = print,
    folds: list[Fold] | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray], Trained]:
    """Everything the command prints and stores, the chosen rule's statistics, and the photos the
    model trained on (the reference photos of its answers, neighbours.py).

    The temperature, the threshold and the rule's choice are fitted on photos the models never
    trained on: each fold's model on its held-out split, pooled. With no `folds` the model is its own
    one fold (trained on train, scored on validation). A model trained on every split (the final
    one) takes its folds from runs of the same recipe; it then gets only the rule's statistics of
    its own (its features of the photos it trained on) beside the fitted temperature and threshold.
    """
    core.check_rule(rule_name)
    own = fold_of(model_path, engine, metadata) if not folds else None
    folds = folds or [own]
    parts = non_flower_photos(photos)
    started = time.perf_counter()
    outputs = [run_fold(fold, data_dir, parts, log) for fold in folds]
    final = outputs[0] if own else final_model_outputs(engine, model_path, data_dir, metadata, parts)
    log(f"forward passes ({engine.name}): {time.perf_counter() - started:.0f} s")

    fitted = fit_rule(outputs, final.statistics, rule_name)
    fitted_on = [f"{fold.name} on {fold.scored_on}" for fold in folds]
    report = {
        "statistics_fitted_on": "+".join(trained_splits(metadata)),
        "threshold_fitted_on": fitted_on[0] if own else "out of fold: " + ", ".join(fitted_on),
        **fit_report(outputs, final, fitted),
        "choice_photos": len(parts["choice"]),
        "rule_microseconds": rules.microseconds_per_photo(fitted.rule, outputs[0].held),
        "forward_microseconds": rules.microseconds_forward(engine),
        "engine": engine.name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    rule = fitted.rule
    result = {
        "temperature": fitted.temperature,
        "ood_rule": rule.ood_rule,
        "ood_threshold": rule.ood_threshold,
        "ood_k": rule.k,
        "ood_file": OOD_FILE if rule.statistics else None,
        "report": report,
        "estimate": fold_estimate(folds, [o.held for o in outputs], [o.labels for o in outputs]),
        "details": {  # printed, not stored
            "accepted_non_flowers": accepted_non_flowers(rule, parts, final.others, photos),
            "known_flower_photos": known_verdicts(engine, rule, metadata["class_names"]),
        },
    }
    return result, final.statistics.get(rule.ood_rule, {}) if rule.statistics else {}, final.trained


def final_model_outputs(
    engine: Any, model_path: str | Path, data_dir: str, metadata: dict[str, Any], parts: dict[str, list[Path]]
) -> FoldOutputs:
    """The forward passes a model that is none of the folds needs: its rules' statistics from the
    photos it trained on (every split) and the non-flower photos; no held-out photos of its own."""
    splits, class_names = trained_splits(metadata), list(metadata["class_names"])
    return FoldOutputs(
        held={},
        labels=np.zeros(0, np.int64),
        others={part: forward(engine, paths) for part, paths in parts.items()},
        trained=training_statistics(engine, model_path, data_dir, splits, class_names),
    )


def fit_rule(
    outputs: list[FoldOutputs], statistics: dict[str, dict[str, np.ndarray]], rule_name: str
) -> FittedRule:
    """T fitted on the pooled held-out photos; each fold's candidate rules thresholded and compared
    on its own photos; the chosen variant of `rule_name` served with the final model's `statistics`."""
    probabilities = np.concatenate([o.held[PROBABILITIES] for o in outputs])
    temperature = rules.fit_temperature(probabilities, np.concatenate([o.labels for o in outputs]))
    fold_rules = [rules.candidates(temperature, o.statistics) for o in outputs]
    thresholds, table = rules.compare(fold_rules, [o.held for o in outputs], [o.others for o in outputs])
    name = rules.choose(table, rule_name)
    rule = replace(rules.candidates(temperature, statistics)[name], ood_threshold=thresholds[name])
    flower_scores = np.concatenate([rules.scores(r[name], o.held) for r, o in zip(fold_rules, outputs)])
    return FittedRule(temperature, rule, name, table, flower_scores)


def fit_report(outputs: list[FoldOutputs], final: FoldOutputs, fitted: FittedRule) -> dict[str, Any]:
    """Calibration before and after on the pooled held-out photos, the rules' table, and what the
    served rule keeps of the flowers and turns away of the held-out non-flower photos."""
    probabilities = np.concatenate([o.held[PROBABILITIES] for o in outputs])
    truth = np.concatenate([o.labels for o in outputs])
    calibrated = apply_temperature(probabilities, fitted.temperature)
    scores = metrics.score(calibrated, truth)
    correct = scores.predicted == truth
    kept = fitted.flower_scores >= fitted.rule.ood_threshold
    non_flowers = rules.verdicts(fitted.rule, final.others["held_out"])
    log_probs = log_probabilities(probabilities)
    return {
        "validation_images": scores.n,
        "validation_top1": scores.top1,
        "nll_before": rules.nll(log_probs, truth, 1.0),
        "nll_after": rules.nll(log_probs, truth, fitted.temperature),
        "ece_before": metrics.expected_calibration_error(probabilities, truth),
        "ece_after": metrics.expected_calibration_error(calibrated, truth),
        "held_out_half": rules.held_out_check(probabilities, truth, fitted.flower_scores),
        "rule": fitted.name,
        "rules": fitted.table,
        "kept_flowers": float(kept.mean()),
        "top1_of_kept": float(correct[kept].mean()),
        "top1_of_rejected": float(correct[~kept].mean()) if (~kept).any() else None,
        "non_flowers": int(len(non_flowers)),  # the held-out part of ood_photos/, by this model
        "non_flowers_rejected": int((~non_flowers).sum()),
        "auroc": fitted.table[fitted.name]["auroc_held_out"],
    }


def accepted_non_flowers(
    rule: Calibration, parts: dict[str, list[Path]], others: dict[str, Any], photos: Path
) -> list[str]:
    """The non-flower photos the served rule lets through, relative to the photos' parent folder."""
    return [
        str(path.relative_to(photos.parent) if path.is_relative_to(photos.parent) else path)
        for part in parts
        for path, ok in zip(parts[part], rules.verdicts(rule, others[part]))
        if ok
    ]


def known_verdicts(engine: Any, rule: Calibration, class_names: list[str]) -> dict[str, dict[str, Any]]:
    """What the served model answers for the sample photos of a known species, and the rule's verdict."""
    known = known_flower_photos()
    outputs = forward(engine, list(known.values()))
    calibrated = apply_temperature(outputs[PROBABILITIES], rule.temperature)
    accepted = rules.verdicts(rule, outputs)
    return {
        name: {
            "species": KNOWN_FLOWER_PHOTOS[name],
            "top1": class_names[int(calibrated[i].argmax())],
            "accepted": bool(accepted[i]),
        }
        for i, name in enumerate(known)
    }
