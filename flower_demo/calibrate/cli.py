"""The calibrate command: its arguments, the report it prints, and what it writes into the model
folder (metadata.json's "calibration" and "estimate", the rule's statistics in ood.npz)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from flower_demo import core, model_files
from flower_demo.calibrate.fit import calibrate
from flower_demo.calibrate.folds import OOD_PHOTOS, mark_recipe_choice, open_fold
from flower_demo.calibrate.rules import DEFAULT_RULE, KEEP_FLOWERS, STATS_DTYPE
from flower_demo.core import CALIBRATION_KEY, OOD_FILE, read_calibration
from flower_demo.errors import exit_status
from flower_demo.metrics import ECE_BINS

DESCRIPTION = 'Honest probabilities and "not one of the 102": temperature scaling and the rejection rule.'
ESTIMATE_KEY = "estimate"  # metadata.json: the recipe's accuracy on photos its models never trained on


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


def write_calibration(
    model_path: str | Path, result: dict[str, Any], statistics: dict[str, np.ndarray] | None = None
) -> Path:
    """Store `result` (less its per-photo details) under "calibration" in the model's metadata.json,
    its accuracy estimate under "estimate", and the rule's statistics in OOD_FILE beside it (a stale
    one is removed), leaving the rest as it is. Nothing in the folder changes until all of it is
    written and loaded back as prediction will: the statistics go beside OOD_FILE first, and only
    what prediction accepts is renamed into place, metadata.json last (model_files.Staged), so a
    command that fails or is interrupted leaves the model serving its old calibration."""
    folder = model_files.model_dir(model_path)
    metadata = model_files.read_metadata(model_path)
    skip = ("details", ESTIMATE_KEY)
    stored = {key: value for key, value in result.items() if key not in skip and value is not None}
    with model_files.Staged(folder) as staged:
        check = {key: value for key, value in metadata.items() if key != model_files.FILES_KEY}
        check[CALIBRATION_KEY] = stored
        if statistics:
            path = staged.path(OOD_FILE)
            np.savez(path, **{name: np.asarray(a, STATS_DTYPE) for name, a in statistics.items()})
            stored.setdefault("report", {})["ood_file_bytes"] = path.stat().st_size
            check[CALIBRATION_KEY] = {**stored, "ood_file": path.name}  # the staged file, not yet recorded
        read_calibration(check, folder)  # refuse to write what prediction rejects
        metadata[CALIBRATION_KEY] = stored
        if ESTIMATE_KEY in result:
            metadata[ESTIMATE_KEY] = result[ESTIMATE_KEY]
        return staged.publish(metadata, removed=() if statistics else (OOD_FILE,))


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
    p.add_argument("--dry-run", action="store_true", help="print the figures, leave the model folder alone")
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of a report")
    return p


def run(args: argparse.Namespace) -> tuple[dict[str, Any], Path | None]:
    """Calibrate the model the arguments name: (the result, where it was written or None)."""
    core.check_rule(args.rule)
    metadata = model_files.read_metadata(args.model)
    engine = core.open_engine(args.model, args.engine)  # raw outputs: no stored rule applied
    model_files.check_against_metadata(engine.path, engine.num_classes, engine.image_size, metadata)
    folds = [open_fold(folder, args.engine, metadata["class_names"]) for folder in args.folds or []]
    if args.recipe_chosen_on:
        mark_recipe_choice(folds, args.recipe_chosen_on)
    log = lambda message: print(message, file=sys.stderr)
    result, statistics = calibrate(
        engine, metadata, args.model, args.data_dir, args.rule, args.photos, log=log, folds=folds
    )
    written = None if args.dry_run else write_calibration(args.model, result, statistics)
    return result, written


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    def work() -> None:
        result, written = run(args)
        print(json.dumps(result, indent=2) if args.json else format_report(result))
        done = f"calibration written to {written}" if written else "dry run: the model folder is unchanged"
        print(done, file=sys.stderr)

    return exit_status(work)
