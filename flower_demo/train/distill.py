"""Distillation: trained models ("teachers") whose averaged probabilities of each cached view
become soft targets, blended into the labels by --distill.

The teachers see the very augmented pixels the student's activations come from (caching.py calls
them on each batch of views), so a soft target says what they make of that view.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from flower_demo import metrics, model_files, models
from flower_demo.errors import FlowerDemoError


def load_teachers(paths: list[str], class_names: list[str], image_size: int) -> Callable:
    """pixels -> the teachers' averaged probabilities of the run's `class_names`, in its order.
    A teacher's classes are matched by name: it may list them in another order, or know more
    (its probabilities of the run's classes are then renormalised); one that lacks a class of the
    run, or takes another input size, is a one-line error."""
    orders = []
    for path in paths:  # every teacher checked by its metadata before any is loaded (seconds each)
        metadata = model_files.read_metadata(path)
        name = f"teacher {path}"
        orders.append(metrics.class_columns(metadata["class_names"], class_names, name, "the training data"))
        if int(metadata["image_size"]) != image_size:
            raise FlowerDemoError(f"{name} takes {metadata['image_size']} px, this run {image_size} px")
    teachers = [(models.load_model(path)[0], order) for path, order in zip(paths, orders)]
    return lambda pixels: np.mean(
        [
            metrics.among(np.asarray(models.compiled_forward(model)(pixels)), columns)
            for model, columns in teachers
        ],
        axis=0,
    )


def check_distill(weight: float) -> None:
    if not 0 <= weight <= 1:
        raise FlowerDemoError(f"--distill must be between 0 and 1, not {weight}")


def blend(one_hot: np.ndarray, soft: np.ndarray | None, weight: float) -> np.ndarray:
    """The targets a stage trains on: the (n, classes) labels, or with the teachers' (views, n,
    classes) probabilities, (1 - weight) * labels + weight * teachers, per view."""
    if soft is None:
        return one_hot
    return (1 - weight) * one_hot[None] + weight * np.asarray(soft, "float32")
