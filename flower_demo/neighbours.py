"""The evidence behind an answer: the training photos that look most like the photo asked about.

A person told "canterbury bells (97%)" can only trust it; shown three photos the model learnt
canterbury bells from that look most like theirs, they can judge it themselves. A calibrated model
folder holds what that takes:
- OOD_FILE's `bank`: the L2-normalised pooled features of every photo the model trained on (the
  kNN rule's statistics, written for every rule), with `bank_labels` (each photo's class index)
  and `bank_photos` (each photo's thumbnail file name);
- THUMBNAILS_DIR: a small JPEG of each of those photos (THUMBNAIL_SIZE px, the centre square the
  model sees), recorded in metadata.json's file hashes as one folder.
The neighbours of a photo are the rows with the highest cosine similarity to its pooled features,
from the forward pass that answered it: one (n, d) matrix product, no second pass, no TensorFlow.

This module owns that format: writing the thumbnails (calibrate writes them with the bank),
reading them back checked, and the nearest photos of a species or of any.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from flower_demo.errors import FlowerDemoError, first_line
from flower_demo.images import ImageLike, square_uint8
from flower_demo.model_files import OOD_FILE, THUMBNAILS_DIR, verify_file

DEFAULT_NEIGHBOURS = 3  # reference photos per answer unless asked otherwise (0: none)
THUMBNAIL_SIZE = 112  # px, square: enough to recognise a flower in a gallery, ~3.6 KB each
THUMBNAIL_QUALITY = 78  # JPEG quality: Flowers-102's 2,040 train + validation photos fit in 8 MB
# OOD_FILE's arrays of the reference photos, beside the rules' statistics.
BANK, LABELS, PHOTOS = "bank", "bank_labels", "bank_photos"


def thumbnail_bytes(image: ImageLike) -> bytes:
    """A reference photo's thumbnail: the centre square the model sees, THUMBNAIL_SIZE px, JPEG."""
    pixels = square_uint8(image, THUMBNAIL_SIZE)
    stream = io.BytesIO()
    Image.fromarray(pixels).save(stream, "JPEG", quality=THUMBNAIL_QUALITY, optimize=True)
    return stream.getvalue()


def thumbnail_name(index: int, image: ImageLike) -> str:
    """The thumbnail file of the bank's row `index`: the photo's own file name where it has one
    (image_00001.jpg for a Flowers-102 photo), with the row number in front, so names never clash."""
    stem = Path(image).stem if isinstance(image, (str, os.PathLike)) else "photo"
    return f"{index:05d}_{stem}.jpg"


def write_thumbnails(folder: Path, photos: list[ImageLike]) -> list[str]:
    """Write every photo's thumbnail into `folder` (created); their names, in the photos' order."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for index, photo in enumerate(photos):
        name = thumbnail_name(index, photo)
        (folder / name).write_bytes(thumbnail_bytes(photo))
        names.append(name)
    return names


@dataclass(frozen=True)
class References:
    """A model's reference photos: bank rows (unit length), their class indices and thumbnails;
    photos taught in memory (Classifier.teach) follow the bank as `extra` rows, so that a taught
    classifier shares the bank instead of copying it."""

    bank: np.ndarray  # (n, d) float32, L2-normalised pooled features
    labels: np.ndarray  # (n + extra,) class index of each row
    thumbnails: list[Path | np.ndarray]  # the thumbnail of each row: on disk, or pixels held in memory
    extra: np.ndarray | None = None  # (extra, d) float32, L2-normalised: rows taught in memory

    @property
    def folder(self) -> Path:
        """The folder of the thumbnails (THUMBNAILS_DIR in the model folder)."""
        return Path(self.thumbnails[0]).parent

    def with_rows(self, rows: np.ndarray, label: int, photos: list[ImageLike]) -> References:
        """These references and more rows of class index `label`, their thumbnails made from
        `photos` and held in memory (nothing is written)."""
        rows = np.asarray(rows, np.float32)
        extra = rows if self.extra is None else np.concatenate([self.extra, rows])
        labels = np.concatenate([self.labels, np.full(len(rows), label, self.labels.dtype)])
        thumbnails = self.thumbnails + [square_uint8(photo, THUMBNAIL_SIZE) for photo in photos]
        return References(self.bank, labels, thumbnails, extra)

    def similarity(self, vector: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Cosine similarity of a unit vector to every row (or to `rows`), the extra rows included."""
        if rows is None:
            parts = [self.bank @ vector] + ([self.extra @ vector] if self.extra is not None else [])
            return np.concatenate(parts)
        base, extra = rows[rows < len(self.bank)], rows[rows >= len(self.bank)] - len(self.bank)
        parts = [self.bank[base] @ vector] + ([self.extra[extra] @ vector] if len(extra) else [])
        return np.concatenate(parts)

    def nearest(
        self, features: np.ndarray, class_names: list[str], species: int | None, k: int
    ) -> list[dict[str, Any]]:
        """The `k` rows most like one photo's pooled `features` (cosine similarity, best first),
        of class index `species`, or of any class for None: [{"class_name", "similarity", "image"}],
        the image a thumbnail's path, or its pixels for a photo taught in memory."""
        if k <= 0:
            return []
        vector = np.asarray(features, dtype=np.float32)
        vector = vector / max(float(np.linalg.norm(vector)), 1e-12)
        rows = np.flatnonzero(self.labels == species) if species is not None else None
        similarity = self.similarity(vector, rows)
        k = min(k, len(similarity))
        if k == 0:  # no training photo of that class in the bank
            return []
        best = np.argpartition(-similarity, k - 1)[:k]
        best = best[np.argsort(-similarity[best], kind="stable")]
        chosen = best if rows is None else rows[best]
        return [
            {
                "class_name": class_names[int(self.labels[row])],
                "similarity": float(np.clip(similarity[i], 0.0, 1.0)),  # ReLU features: cosine >= 0
                "image": thumbnail
                if isinstance(thumbnail := self.thumbnails[row], np.ndarray)
                else str(thumbnail),
            }
            for i, row in zip(best, chosen)
        ]


def read_references(
    folder: Path, metadata: dict[str, Any], num_classes: int, bank: np.ndarray | None = None
) -> References | None:
    """The model folder's reference photos, checked (its file hashes, every thumbnail present, the
    labels in range); None when the folder has none (not calibrated, or calibrated before they
    existed). `bank` is the kNN rule's copy of OOD_FILE's bank, when already read."""
    path, thumbnails = folder / OOD_FILE, folder / THUMBNAILS_DIR
    if not path.is_file() or not thumbnails.is_dir():
        return None
    remedy = f"re-run python -m flower_demo.calibrate --model {folder} --references-only"
    verify_file(thumbnails, metadata, remedy=remedy)
    try:
        with np.load(path, allow_pickle=False) as stored:
            if LABELS not in stored.files or PHOTOS not in stored.files:
                return None
            labels = np.asarray(stored[LABELS], dtype=np.int64)
            names = [str(name) for name in stored[PHOTOS]]
            if bank is None:
                bank = np.asarray(stored[BANK], dtype=np.float32)
    except (OSError, ValueError, KeyError) as exc:
        raise FlowerDemoError(f"cannot read the reference photos in {path}: {first_line(exc)}") from None
    if not (len(bank) == len(labels) == len(names)) or len(labels) == 0:
        raise FlowerDemoError(f"{path}: the reference photos' features, labels and names differ in length")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise FlowerDemoError(f"{path}: a reference photo's label is not one of the {num_classes} classes")
    paths = [thumbnails / name for name in names]
    missing = next((p for p in paths if not p.is_file()), None)
    if missing is not None:
        raise FlowerDemoError(f"reference photo thumbnail missing: {missing}: {remedy}")
    return References(np.asarray(bank, dtype=np.float32), labels, paths)
