"""The photos and models a calibration is fitted on: the folds (a model of the recipe and the
split it held out), their forward passes, and the recipe's accuracy estimate from them.

A fold is scored on photos its model never trained on. Its forward passes over those photos, over
the non-flower photos of ood_photos/ (photos.csv names each one's part: "choice" or "held_out")
and, for its rules' statistics, over the photos it trained on are what everything is fitted on.

Models meet the data and each other by class name (metrics.class_columns): a fold's labels are
its own model's class indices, so a fold may list the classes in another order than the data or
the model; each fold must name the same classes as the model, and know every class of the data.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flower_demo import core, data, metrics, model_files
from flower_demo.calibrate.rules import Outputs, fit_statistics
from flower_demo.core import FEATURES, PROBABILITIES
from flower_demo.errors import FlowerDemoError

OOD_PHOTOS = model_files.REPO_ROOT / "ood_photos"  # photos.csv: file, group, package, ..., split
# scikit-learn's flower.jpg is an orange dahlia, one of the 102 species: reported on its own.
KNOWN_FLOWER_PHOTOS = {"sklearn:flower.jpg": "orange dahlia"}


# --- photos and forward passes ---------------------------------------------------------------


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


def forward(engine: Any, items: list[Any], batch_size: int = 32) -> Outputs:
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


def classifier_head(model_path: str | Path, engine: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """The dense classifier's kernel (d, classes) and bias (energy needs them): from the Keras model
    the engine runs, if it runs one, else read from model.keras (seconds: the whole model is built)."""
    from flower_demo import models

    model = getattr(engine, "model", None) or models.load_model(model_path)[0]
    layer = model.get_layer("classifier")
    return np.asarray(layer.kernel, np.float32), np.asarray(layer.bias, np.float32)


def model_labels(split: data.LabeledImages, class_names: list[str], model_path: str | Path) -> np.ndarray:
    """The split's labels as indices into the model's `class_names`, matched by name; a class of the
    data the model does not know is a one-line error naming it."""
    columns = metrics.class_columns(class_names, split.class_names, f"model {model_path}", "the data")
    return columns[np.asarray(split.labels, np.int64)]


@dataclass
class Trained:
    """The photos a model trained on, their labels (its class indices) and every rule's statistics
    from its features of them: the kNN bank's rows are these photos, in this order."""

    photos: list[Any]
    labels: np.ndarray
    statistics: dict[str, dict[str, np.ndarray]]


def training_statistics(
    engine: Any, model_path: str | Path, data_dir: str, splits: list[str], class_names: list[str]
) -> Trained:
    """Every rule's statistics from the model's features of the photos it trained on."""
    train = data.load_oxford_splits(data_dir, splits)
    labels = model_labels(train, class_names, model_path)
    features = forward(engine, list(train.items))[FEATURES]
    statistics = fit_statistics(features, labels, len(class_names), *classifier_head(model_path, engine))
    return Trained(list(train.items), labels, statistics)


# --- folds -----------------------------------------------------------------------------------


@dataclass
class Fold:
    """A model of the recipe, the official splits it trained on and the one it is scored on."""

    path: str | Path
    engine: Any
    trained_on: list[str]
    scored_on: str
    chosen_on_scored: bool  # early stopping picked its epoch on the scored split
    recipe_chosen_on_scored: bool = False  # the recipe was picked by comparing scores on that split
    class_names: list[str] = field(default_factory=list)  # its model's, in the order of its outputs

    @property
    def name(self) -> str:
        """The run's folder name, what metadata records: a path would name this machine's folders."""
        return Path(self.path).name


@dataclass
class FoldOutputs:
    """A fold's forward passes: its scored photos (and their labels), the non-flower photos by part,
    and the photos it trained on with its rules' statistics from them."""

    held: Outputs
    labels: np.ndarray
    others: dict[str, Outputs]
    trained: Trained

    @property
    def statistics(self) -> dict[str, dict[str, np.ndarray]]:
        return self.trained.statistics


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
    names = list(metadata["class_names"])
    return Fold(model_path, engine, trained_splits(metadata), scored_on, chosen, class_names=names)


def open_fold(model_path: str | Path, engine_name: str | None, class_names: list[str]) -> Fold:
    """A --folds run: its engine (raw outputs) and splits; it must name the model's `class_names`
    (in any order: its labels are matched to its own)."""
    metadata = model_files.read_metadata(model_path)
    engine = core.open_engine(model_path, engine_name)
    model_files.check_against_metadata(engine.path, engine.num_classes, engine.image_size, metadata)
    metrics.same_classes(class_names, metadata["class_names"], "the model", f"fold {model_path}")
    return fold_of(model_path, engine, metadata)


def mark_recipe_choice(folds: list[Fold], run: str | Path) -> None:
    """Mark the fold whose scored photos the recipe was picked on, so its figure is not passed off
    as an estimate; `run` must be one of the folds."""
    matches = [fold for fold in folds if Path(fold.path).resolve() == Path(run).resolve()]
    if not matches:
        raise FlowerDemoError(f"--recipe-chosen-on {run} is not one of the --folds runs")
    for fold in matches:
        fold.recipe_chosen_on_scored = True


def run_fold(fold: Fold, data_dir: str, parts: dict[str, list[Path]], log: Any = print) -> FoldOutputs:
    """A fold's forward passes over its scored split, the non-flower photos and its training photos;
    the labels are its model's class indices."""
    scored = data.load_oxford_splits(data_dir, [fold.scored_on])
    labels = model_labels(scored, fold.class_names, fold.path)
    trained = "+".join(fold.trained_on)
    log(f"fold {fold.path}: trained on {trained}, scored on {len(scored)} {fold.scored_on} images")
    return FoldOutputs(
        held=forward(fold.engine, list(scored.items)),
        labels=labels,
        others={part: forward(fold.engine, paths) for part, paths in parts.items()},
        trained=training_statistics(fold.engine, fold.path, data_dir, fold.trained_on, fold.class_names),
    )


# --- the estimate ----------------------------------------------------------------------------


def fold_estimate(folds: list[Fold], held: list[Outputs], labels: list[np.ndarray]) -> dict[str, Any]:
    """The recipe's accuracy on photos each fold's model never trained on, per fold and averaged
    ("top5" is top-k, metrics.score's k); with a fold the recipe was picked on, also the figure of
    the folds no choice saw."""
    rows = []
    for fold, outputs, truth in zip(folds, held, labels):
        scores = metrics.score(outputs[PROBABILITIES], truth)
        rows.append(
            {
                "model": fold.name,
                "trained_on": "+".join(fold.trained_on),
                "scored_on": fold.scored_on,
                "images": scores.n,
                "top1": scores.top1,
                "top5": scores.topk,
                "chosen_on_scored": fold.chosen_on_scored,
                "recipe_chosen_on_scored": fold.recipe_chosen_on_scored,
            }
        )
    mean = lambda chosen, key: float(np.mean([row[key] for row in chosen]))
    estimate = {
        "method": f"{len(rows)}-fold" if len(rows) > 1 else "one held-out split",
        "top1": mean(rows, "top1"),
        "top5": mean(rows, "top5"),
        "chosen_on_scored": any(row["chosen_on_scored"] for row in rows),
        "recipe_chosen_on_scored": any(row["recipe_chosen_on_scored"] for row in rows),
        "folds": rows,
    }
    unchosen = [row for row in rows if not (row["chosen_on_scored"] or row["recipe_chosen_on_scored"])]
    if estimate["recipe_chosen_on_scored"] and unchosen:  # the figure from photos no choice saw
        estimate["unchosen"] = {
            "folds": len(unchosen),
            "top1": mean(unchosen, "top1"),
            "top5": mean(unchosen, "top5"),
        }
    return estimate
