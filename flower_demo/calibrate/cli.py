"""The calibrate command: its arguments, the report it prints, and what it writes into the model
folder (metadata.json's "calibration" and "estimate", the rule's statistics and the reference
photos' features in ood.npz, their thumbnails in thumbnails/)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from flower_demo import core, imprint, model_files, neighbours
from flower_demo.calibrate.fit import calibrate
from flower_demo.calibrate.folds import (
    OOD_PHOTOS,
    Trained,
    mark_recipe_choice,
    open_fold,
    trained_splits,
    training_statistics,
)
from flower_demo.calibrate.rules import DEFAULT_RULE, KEEP_FLOWERS, STATS_DTYPE
from flower_demo.core import CALIBRATION_KEY, OOD_FILE, read_calibration
from flower_demo.errors import FlowerDemoError, exit_status
from flower_demo.metrics import ECE_BINS
from flower_demo.model_files import THUMBNAILS_DIR

DESCRIPTION = 'Honest probabilities and "not one of the 102": temperature scaling and the rejection rule.'
ESTIMATE_KEY = "estimate"  # metadata.json: the recipe's accuracy on photos its models never trained on
REFERENCES_KEY = "reference_photos"  # under "calibration": what ood.npz and thumbnails/ hold of them
BANK_TOLERANCE = 2e-3  # --references-only: a kNN bank recomputed must match the stored one (float16)


# --- the report ------------------------------------------------------------------------------


def estimate_lines(estimate: dict[str, Any]) -> list[str]:
    """The recipe's estimate, then each fold's figure and whether a choice was made on its photos."""
    lines = [f"estimate ({estimate['method']}): top-1 {estimate['top1']:.4f}, top-5 {estimate['top5']:.4f}"]
    for fold in estimate["folds"]:
        lines.append(
            f"  {fold['model']}: trained on {fold['trained_on']}, {fold['images']} {fold['scored_on']} "
            f"images: top-1 {fold['top1']:.4f}, top-5 {fold['top5']:.4f}"
            + (" (its epoch was chosen on them)" if fold["chosen_on_scored"] else "")
            + (" (the recipe was chosen on them)" if fold["recipe_chosen_on_scored"] else "")
        )
    if "unchosen" in estimate:
        unchosen = estimate["unchosen"]
        lines.append(
            f"  the folds no choice saw ({unchosen['folds']}): "
            f"top-1 {unchosen['top1']:.4f}, top-5 {unchosen['top5']:.4f}"
        )
    return lines


def rule_lines(result: dict[str, Any]) -> list[str]:
    """The temperature and calibration figures, the rules' table and what the chosen rule does."""
    r = result["report"]
    return [
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


def format_report(result: dict[str, Any]) -> str:
    details = result.get("details", {})
    lines = estimate_lines(result["estimate"]) + rule_lines(result)
    lines += [f"    accepted non-flower: {name}" for name in details.get("accepted_non_flowers", [])]
    for name, s in details.get("known_flower_photos", {}).items():
        verdict = "accepted" if s["accepted"] else "rejected"
        lines.append(f"  {name} ({s['species']}, one of the classes): top-1 {s['top1']}, {verdict}")
    return "\n".join(lines)


# --- writing ---------------------------------------------------------------------------------


def reference_arrays(trained: Trained, thumbnails: list[str]) -> dict[str, np.ndarray]:
    """OOD_FILE's arrays of the reference photos: the kNN bank (the photos' L2-normalised
    features), each photo's class index and its thumbnail's file name; and the classifier's kernel
    and bias, which teaching a new class builds on (imprint.py)."""
    arrays = {
        neighbours.BANK: np.asarray(trained.statistics["knn"]["bank"], STATS_DTYPE),
        neighbours.LABELS: np.asarray(trained.labels, np.int16),
        neighbours.PHOTOS: np.asarray(thumbnails, dtype=str),
    }
    head = trained.statistics.get("energy", {})  # the dense layer: the energy rule's statistics
    if head:
        arrays |= {name: np.asarray(head[name], STATS_DTYPE) for name in (imprint.KERNEL, imprint.BIAS)}
    return arrays


def write_calibration(
    model_path: str | Path,
    result: dict[str, Any],
    statistics: dict[str, np.ndarray] | None = None,
    trained: Trained | None = None,
) -> Path:
    """Store `result` (less its per-photo details) under "calibration" in the model's metadata.json,
    its accuracy estimate under "estimate", the rule's statistics in OOD_FILE beside it and, given
    the photos the model `trained` on, those reference photos (their features in OOD_FILE, their
    thumbnails in THUMBNAILS_DIR); stale ones are removed, the rest is left as it is. Nothing in
    the folder changes until all of it is written and loaded back as prediction will: the new
    files go beside their places first, and only what prediction accepts is renamed into place,
    metadata.json last (model_files.Staged), so a command that fails or is interrupted leaves the
    model serving its old calibration."""
    folder = model_files.model_dir(model_path)
    metadata = model_files.read_metadata(model_path)
    skip = ("details", ESTIMATE_KEY, REFERENCES_KEY)
    stored = {key: value for key, value in result.items() if key not in skip and value is not None}
    arrays = {name: np.asarray(a, STATS_DTYPE) for name, a in (statistics or {}).items()}
    with model_files.Staged(folder) as staged:
        check = {key: value for key, value in metadata.items() if key != model_files.FILES_KEY}
        check[CALIBRATION_KEY] = stored
        if trained is not None:
            thumbnails = staged.subfolder(THUMBNAILS_DIR)
            arrays |= reference_arrays(trained, neighbours.write_thumbnails(thumbnails, trained.photos))
            stored[REFERENCES_KEY] = {
                "photos": len(trained.photos),
                "splits": "+".join(trained_splits(metadata)),
                "thumbnail_px": neighbours.THUMBNAIL_SIZE,
                "thumbnails_bytes": model_files.size_of(thumbnails),
            }
        if arrays:
            path = staged.path(OOD_FILE)
            np.savez(path, **arrays)
            stored.setdefault("report", {})["ood_file_bytes"] = path.stat().st_size
            check[CALIBRATION_KEY] = {**stored, "ood_file": path.name}  # the staged file, not yet recorded
        read_calibration(check, folder)  # refuse to write what prediction rejects
        metadata[CALIBRATION_KEY] = stored
        if ESTIMATE_KEY in result:
            metadata[ESTIMATE_KEY] = result[ESTIMATE_KEY]
        removed = (() if arrays else (OOD_FILE,)) + (() if trained is not None else (THUMBNAILS_DIR,))
        return staged.publish(metadata, removed=removed)


def references_only(args: argparse.Namespace, engine: Any, metadata: dict[str, Any]) -> dict[str, Any]:
    """--references-only: the stored calibration as it is, with the reference photos (re)written
    from the model's features of the photos it trained on; the stored kNN bank must be those."""
    calibration = read_calibration(metadata, args.model)
    if calibration is None:
        raise FlowerDemoError(f"{args.model} is not calibrated: run calibrate without --references-only")
    class_names = list(metadata["class_names"])
    splits = trained_splits(metadata)
    trained = training_statistics(engine, args.model, args.data_dir, splits, class_names)
    stored_bank = calibration.statistics.get("bank")  # the kNN rule's: the same rows
    if stored_bank is not None:
        new_bank = trained.statistics["knn"]["bank"]
        if stored_bank.shape != new_bank.shape or np.abs(stored_bank - new_bank).max() > BANK_TOLERANCE:
            raise FlowerDemoError(
                f"the stored kNN bank is not this model's features of its {'+'.join(splits)} photos in "
                f"{args.data_dir}: run calibrate without --references-only"
            )
    if not args.dry_run:
        write_calibration(args.model, metadata[CALIBRATION_KEY], calibration.statistics or None, trained)
    return {"reference_photos": len(trained.photos), "splits": "+".join(splits)}


# --- the command line ------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m flower_demo.calibrate", description=DESCRIPTION)
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
    p.add_argument(
        "--references-only",
        action="store_true",
        help="only (re)write the reference photos shown beside answers (the training photos' "
        "features and thumbnails), keeping the stored calibration: for a folder calibrated before "
        "they existed",
    )
    p.add_argument("--dry-run", action="store_true", help="print the figures, leave the model folder alone")
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of a report")
    return p


def open_model(args: argparse.Namespace) -> tuple[dict[str, Any], Any]:
    """The metadata and the engine (raw outputs: no stored rule applied) of --model, checked
    against each other."""
    metadata = model_files.read_metadata(args.model)
    engine = core.open_engine(args.model, args.engine)
    model_files.check_against_metadata(engine.path, engine.num_classes, engine.image_size, metadata)
    return metadata, engine


def run(args: argparse.Namespace) -> tuple[dict[str, Any], Path | None]:
    """Calibrate the model the arguments name: (the result, where it was written or None)."""
    core.check_rule(args.rule)
    metadata, engine = open_model(args)
    folds = [open_fold(folder, args.engine, metadata["class_names"]) for folder in args.folds or []]
    if args.recipe_chosen_on:
        mark_recipe_choice(folds, args.recipe_chosen_on)
    log = lambda message: print(message, file=sys.stderr)
    result, statistics, trained = calibrate(
        engine, metadata, args.model, args.data_dir, args.rule, args.photos, log=log, folds=folds
    )
    written = None if args.dry_run else write_calibration(args.model, result, statistics, trained)
    return result, written


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    def work() -> None:
        if args.references_only:
            metadata, engine = open_model(args)
            written = references_only(args, engine, metadata)
            done = "dry run: the model folder is unchanged" if args.dry_run else f"written to {args.model}"
            print(f"reference photos: {written['reference_photos']} ({written['splits']}); {done}")
            return
        result, written = run(args)
        print(json.dumps(result, indent=2) if args.json else format_report(result))
        done = f"calibration written to {written}" if written else "dry run: the model folder is unchanged"
        print(done, file=sys.stderr)

    return exit_status(work)
