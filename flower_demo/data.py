"""Where labelled images come from, and how they are decoded and augmented for training.

Three sources, one result type (`LabeledImages`: what to decode, its labels, the class names):
- a folder in Flowers-102's own layout (`jpg/`, `imagelabels.mat`, `setid.mat`), official splits,
  its 102 class names from oxford_class_names.txt beside this file (never the repository's
  label_map.json, which names the shipped model's classes and `train --ship` rewrites);
- `tensorflow_datasets` (`oxford_flowers102`, `tf_flowers`, ...), official splits kept as they are;
- any class-per-folder image tree, with a seeded, stratified validation split.
"""

from __future__ import annotations

import importlib.resources
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flower_demo.errors import FlowerDemoError, first_line
from flower_demo.images import IMAGE_EXTENSIONS, ImageLike, square_uint8

OXFORD_SPLITS = {"train": "trnid", "validation": "valid", "test": "tstid"}
OXFORD_CLASS_NAMES = "oxford_class_names.txt"  # beside this file: Flowers-102's names, one a line
DECODE_THREADS = 4  # Pillow releases the GIL while decoding and resizing


@dataclass
class LabeledImages:
    items: Sequence[ImageLike]  # paths or encoded bytes, anything `images.load_rgb` takes
    labels: np.ndarray  # int, 0-based class index
    class_names: list[str]
    expected: int  # how many the split should hold (more than len(items) if files are absent)
    source: str

    def __len__(self) -> int:
        return len(self.items)


def clean_class_name(name: str) -> str:
    """Display form of a dataset class name: no stray '?', underscores or doubled spaces."""
    return " ".join(name.replace("_", " ").replace("?", "").split())


# --- Flowers-102 in its own layout ----------------------------------------------------------


def oxford_class_names() -> list[str]:
    """Flowers-102's 102 names in label order (tensorflow_datasets' names, cleaned). They belong to
    the data set, so they ship with this loader: label_map.json names whatever model was shipped."""
    text = importlib.resources.files("flower_demo").joinpath(OXFORD_CLASS_NAMES).read_text(encoding="utf-8")
    return text.splitlines()


def load_oxford_folder(data_dir: str | os.PathLike, split: str) -> LabeledImages:
    """One official split of a Flowers-102 folder; absent images are counted, none is an error."""
    from scipy.io import loadmat

    data_dir = Path(data_dir)
    if split not in OXFORD_SPLITS:
        raise FlowerDemoError(f"unknown split {split!r}; choose one of {', '.join(OXFORD_SPLITS)}")
    existing_folder(data_dir, "data folder")
    for name in ("imagelabels.mat", "setid.mat"):
        if not (data_dir / name).is_file():
            raise FlowerDemoError(f"{data_dir} is not a Flowers-102 folder: {name} is missing")
    labels_1based = loadmat(data_dir / "imagelabels.mat")["labels"].ravel()
    ids = loadmat(data_dir / "setid.mat")[OXFORD_SPLITS[split]].ravel()
    paths = [data_dir / "jpg" / f"image_{i:05d}.jpg" for i in ids]
    present = [(p, int(labels_1based[i - 1]) - 1) for p, i in zip(paths, ids) if p.is_file()]
    if not present:
        raise FlowerDemoError(f"found 0 of {len(ids)} {split} images in {data_dir / 'jpg'}")
    items, labels = zip(*present)
    return LabeledImages(
        list(items),
        np.array(labels),
        oxford_class_names(),
        expected=len(ids),
        source=f"flowers102-folder:{data_dir}:{split}",
    )


def concatenate(parts: list[LabeledImages]) -> LabeledImages:
    """Several splits of one source as one (e.g. train + validation for a final model)."""
    if len(parts) == 1:
        return parts[0]
    return LabeledImages(
        [item for part in parts for item in part.items],
        np.concatenate([part.labels for part in parts]),
        parts[0].class_names,
        sum(part.expected for part in parts),
        "+".join(part.source for part in parts),
    )


def load_oxford_splits(data_dir: str | os.PathLike, splits: Sequence[str]) -> LabeledImages:
    """Official Flowers-102 splits of a folder as one set (e.g. train + validation for a final model)."""
    return concatenate([load_oxford_folder(data_dir, split) for split in splits])


# --- tensorflow_datasets ---------------------------------------------------------------------


def load_tfds(name: str, split: str, data_dir: str | None = None) -> LabeledImages:
    """A tfds split (downloaded on first use), kept as encoded bytes until decoding.

    Split strings are tfds' own, slicing included: "train", "test", "train[:80%]".
    """
    import tensorflow_datasets as tfds

    try:
        dataset, info = tfds.load(
            name,
            split=split,
            data_dir=data_dir,
            with_info=True,
            as_supervised=True,
            decoders={"image": tfds.decode.SkipDecoding()},
        )
    except Exception as exc:  # tfds raises many types (network, unknown name, bad split)
        # The first line only: an unknown name's message goes on to list every tfds dataset.
        reason = first_line(exc)
        raise FlowerDemoError(f"cannot load tfds {name!r} split {split!r}: {reason}") from None
    items, labels = [], []
    for encoded, label in tfds.as_numpy(dataset):
        items.append(bytes(encoded))
        labels.append(int(label))
    names = [clean_class_name(n) for n in info.features["label"].names]
    return LabeledImages(items, np.array(labels), names, len(items), f"tfds:{name}:{split}")


def tfds_split_names(name: str, data_dir: str | None = None) -> list[str]:
    """The splits a tfds dataset has. They are only known once it is downloaded and prepared
    (which tfds.load would do anyway): before that, `info.splits` is empty."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
        builder.download_and_prepare()
    except Exception as exc:  # tfds raises many types (network, unknown name)
        raise FlowerDemoError(f"cannot prepare tfds {name!r}: {first_line(exc)}") from None
    return list(builder.info.splits)


# --- class-per-folder trees ------------------------------------------------------------------


def existing_folder(path: Path, what: str) -> Path:
    """`path`, or one line saying that this folder (`what`: "data folder", "image folder") is not there."""
    if not path.is_dir():
        raise FlowerDemoError(f"{what} not found: {path}")
    return path


def load_image_folder(
    root: str | os.PathLike, val_fraction: float = 0.2, seed: int = 0
) -> tuple[LabeledImages, LabeledImages]:
    """(train, validation) from root/CLASS_NAME/*.jpg: a seeded split, stratified by class
    (scikit-learn's train_test_split) over the classes with several images; a class of one image
    goes to training."""
    root = existing_folder(Path(root), "image folder")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    per_class = [
        sorted(p for p in d.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        for d in class_dirs
    ]
    kept = [(d, files) for d, files in zip(class_dirs, per_class) if files]
    if len(kept) < 2:
        raise FlowerDemoError(f"{root} needs at least two class sub-folders holding images")
    items = [path for _, files in kept for path in files]
    labels = np.repeat(np.arange(len(kept)), [len(files) for _, files in kept])
    try:
        train, val = stratified_split(labels, val_fraction, seed)
    except ValueError as exc:  # fewer held-out or training images than classes
        raise FlowerDemoError(
            f"cannot split {root} with validation fraction {val_fraction}: {first_line(exc)}"
        ) from None
    names = [clean_class_name(d.name) for d, _ in kept]
    part = lambda name, indices: LabeledImages(
        [items[i] for i in indices], labels[indices], names, len(indices), f"folder:{root}:{name}"
    )
    return part("train", train), part("validation", val)


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training, validation) indices, each in order. Of each class with several images, about
    round(val_fraction x its images) are held out: that many in all, shared out in proportion by
    train_test_split (a ValueError when that leaves a class out of either part)."""
    from sklearn.model_selection import train_test_split

    counts = np.bincount(labels)
    several = np.flatnonzero(counts[labels] > 1)
    n_val = sum(int(round(val_fraction * n)) for n in counts[counts > 1])
    if n_val == 0:
        return np.arange(len(labels)), np.zeros(0, np.int64)
    _, val = train_test_split(several, test_size=n_val, stratify=labels[several], random_state=seed)
    return np.setdiff1d(np.arange(len(labels)), val), np.sort(val)


# --- decoding and augmentation ---------------------------------------------------------------


def iter_decoded(items: Sequence[ImageLike], image_size: int, batch_size: int) -> Iterator[np.ndarray]:
    """Batches of decoded (n, size, size, 3) uint8 images, decoded by a thread pool ahead of use."""
    with ThreadPoolExecutor(DECODE_THREADS) as pool:
        batches = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
        pending = None
        for batch in batches:
            future = pool.map(lambda item: square_uint8(item, image_size), batch)
            if pending is not None:
                yield np.stack(list(pending))
            pending = future
        if pending is not None:
            yield np.stack(list(pending))


def decode_all(items: Sequence[ImageLike], image_size: int) -> np.ndarray:
    """Every image decoded into memory as (n, size, size, 3) uint8."""
    import keras

    from flower_demo.models import progress_verbosity

    bar = keras.utils.Progbar(len(items), unit_name="image", verbose=progress_verbosity())
    out = np.empty((len(items), image_size, image_size, 3), dtype=np.uint8)
    done = 0
    for batch in iter_decoded(items, image_size, batch_size=64):
        out[done : done + len(batch)] = batch
        done += len(batch)
        bar.update(done)
    return out


def make_augmenter(seed: int):
    """Random zoom/crop, flip, small rotation, brightness and contrast, on pixels 0..255."""
    import keras

    layers = keras.layers
    return keras.Sequential(
        [
            layers.RandomFlip("horizontal", seed=seed),
            layers.RandomRotation(0.05, fill_mode="reflect", seed=seed + 1),
            layers.RandomZoom((-0.4, 0.1), fill_mode="reflect", seed=seed + 2),
            layers.RandomTranslation(0.1, 0.1, fill_mode="reflect", seed=seed + 3),
            layers.RandomBrightness(0.2, value_range=(0, 255), seed=seed + 4),
            layers.RandomContrast(0.2, value_range=(0, 255), seed=seed + 5),
        ],
        name="augment",
    )
