"""Which images a run trains on and which it scores after each epoch: official splits of
Flowers-102 (a folder or tensorflow_datasets), or a class-per-folder tree's own seeded split."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flower_demo import data
from flower_demo.errors import FlowerDemoError
from flower_demo.train.config import TrainConfig


def check_source(config: TrainConfig) -> None:
    """A data folder or image folder that is not there, said before TensorFlow's seconds of start-up."""
    if config.data_dir:
        data.existing_folder(Path(config.data_dir), "data folder")
    if config.image_folder:
        data.existing_folder(Path(config.image_folder), "image folder")


def chosen_splits(config: TrainConfig) -> tuple[list[str], str | None]:
    """The official splits to train on and the one to validate on (None: no validation), checked."""
    train_splits = [s.strip() for s in config.train_splits.split(",") if s.strip()]
    val_split = None if config.val_split.lower() == "none" else config.val_split
    if config.image_folder and (train_splits != ["train"] or val_split not in ("validation", None)):
        raise FlowerDemoError(
            "an image folder has no official splits: --train-splits and --val-split (but --val-split none) "
            "need --data-dir or --tfds"
        )
    if not train_splits:
        raise FlowerDemoError("--train-splits names no split")
    if val_split in train_splits:
        raise FlowerDemoError(f"--val-split {val_split} is also trained on; name another split, or none")
    if "test" in train_splits or val_split == "test":
        print("note: the test split is meant for the final, independent measurement only")
    return train_splits, val_split


def load_tfds_splits(
    config: TrainConfig, train_splits: list[str], val_split: str | None
) -> tuple[data.LabeledImages, data.LabeledImages | None]:
    """tensorflow_datasets' splits; a dataset with no validation split (tf_flowers) holds out the
    last --val-fraction of its train split."""
    if train_splits != ["train"] or val_split != "validation":
        train_split = "+".join(train_splits)
    elif "validation" in data.tfds_split_names(config.tfds, config.tfds_dir):
        train_split = "train"
    else:
        cut = round(100 * (1 - config.val_fraction))
        train_split, val_split = f"train[:{cut}%]", f"train[{cut}%:]"
    train = data.load_tfds(config.tfds, train_split, config.tfds_dir)
    return train, data.load_tfds(config.tfds, val_split, config.tfds_dir) if val_split else None


def at_most_per_class(images: data.LabeledImages, limit: int) -> data.LabeledImages:
    """The first `limit` images of each class (--max-per-class), in their order."""
    per_class = [np.flatnonzero(images.labels == c)[:limit] for c in np.unique(images.labels)]
    keep = np.sort(np.concatenate(per_class))
    return data.LabeledImages(
        [images.items[i] for i in keep], images.labels[keep], images.class_names, len(keep), images.source
    )


def load_splits(config: TrainConfig) -> tuple[data.LabeledImages, data.LabeledImages | None]:
    """(train, validation) from whichever source the config names; validation None with
    --val-split none."""
    train_splits, val_split = chosen_splits(config)
    if config.data_dir:
        train = data.load_oxford_splits(config.data_dir, train_splits)
        val = data.load_oxford_folder(config.data_dir, val_split) if val_split else None
    elif config.image_folder:
        fraction = config.val_fraction if val_split else 0.0  # --val-split none: train on every photo
        train, val = data.load_image_folder(config.image_folder, fraction, config.seed)
        val = val if val_split else None
    else:
        train, val = load_tfds_splits(config, train_splits, val_split)
    if config.max_per_class:
        train = at_most_per_class(train, config.max_per_class)
    for name, split in (("train", train), ("validation", val)):
        if split is not None:
            print(f"{name}: {len(split)} of {split.expected} images found ({split.source})")
    if val is None:
        print("validation: none; each stage runs all its epochs and keeps the last weights")
    elif len(val) == 0:
        raise FlowerDemoError("the validation split is empty")
    return train, val
