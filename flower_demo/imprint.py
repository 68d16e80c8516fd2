"""Classes taught after training, without training: weight imprinting (Qi, Brown and Lowe, CVPR 2018).

A trained model's last layer scores each class as z_c = f . W_c + b_c on the pooled features f of
the photo. A new class needs only a column of its own, and a good feature space already puts the
photos of one flower close together. Imprinting takes the column from the photos' features:

    w_new = W_mean + IMPRINT_SCALE * alpha * (m_new - m_mean),    b_new = b_mean

where m_new is the mean of the new photos' L2-normalised features (each photo with its mirror
image: Classifier.teach), m_mean the mean of the trained
classes' such means (from the reference photos' bank), W_mean and b_mean the trained columns' mean,
and alpha the one number that maps class means onto trained columns best (least squares over the
trained classes: sum <W_c - W_mean, m_c - m_mean> / sum |m_c - m_mean|^2). So the new column sits
with the trained ones: the same shared part, its own part scaled as theirs are, times
IMPRINT_SCALE, which was chosen on held-out classes' train photos (README's table: 1.0 named too
few of a new flower's photos; above 1.2 the trained classes lost more than a point). No gradient
step: a matrix product over the bank, milliseconds.

The served network is left as it is. The `.tflite` returns the trained classes' probabilities and
the pooled features of the same pass; the taught classes' logits come from those features, and

    p_taught = exp(z_taught - L),    p_trained' = p_trained * exp(L_trained - L)

with L_trained = logsumexp(f . W + b) over the trained classes and L over all of them: exactly the
softmax over the widened layer, without re-exporting the model (which would need TensorFlow and a
forward pass of the same photos again). The cost: a taught class has no class activation map.

This module owns that arithmetic, the checks a teaching must pass (a new name, enough readable
photos, photos that look like flowers) and the arrays it reads from a model folder's OOD_FILE: the
trained classifier's kernel and bias (calibrate writes them) and the taught classes' columns.
Where the taught photos go (the bank, the thumbnails) is core.py's (`Classifier.teach`, in memory)
and teach.py's (a new model folder). It imports only errors.py and images.py.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flower_demo.errors import FlowerDemoError, first_line
from flower_demo.images import ImageLike, square_uint8

# OOD_FILE's arrays: the trained dense layer (the energy rule's statistics are these too) and the
# taught classes' columns, in the order their names follow the trained ones in metadata.json.
KERNEL, BIAS = "kernel", "bias"
TAUGHT_KERNEL, TAUGHT_BIAS = "taught_kernel", "taught_bias"
TAUGHT_KEY = "taught"  # metadata.json: the taught classes, by name, with how many photos each
# Rules a taught class fits into as it is: the kNN bank takes the new photos; max_softmax needs nothing.
TEACHABLE_RULES = ("knn", "max_softmax")
# Photos to teach from must look like flowers: the median of their similarity to the closest
# training photo must reach what this percentile of the training photos reach to their closest photo
# of another species (a species the model never saw, as the photos of a new flower are). README,
# "Teach it a flower it does not know", gives what it lets through.
TEACH_PERCENTILE = 25
MIN_PHOTOS = 3  # fewer readable photos than this: refused (one photo is a guess, not a class)
MAX_PHOTOS = 20  # more adds little; the page takes at most this many
IMPRINT_SCALE = 1.2  # the new column's own part against alpha's (module text)


def l2_normalise(features: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (float32)."""
    features = np.asarray(features, dtype=np.float32)
    return features / np.maximum(np.linalg.norm(features, axis=-1, keepdims=True), 1e-12)


@dataclass(frozen=True)
class Head:
    """The trained classifier, z = features @ kernel + bias, with its classes' mean features."""

    kernel: np.ndarray  # (d, classes) float32
    bias: np.ndarray  # (classes,) float32
    class_means: np.ndarray  # (classes, d): mean L2-normalised training features of each class
    present: np.ndarray  # (classes,) bool: the classes with photos in the bank (the others' means are 0)
    bank: np.ndarray = field(repr=False)  # the trained classes' bank rows, shared with the references
    labels: np.ndarray = field(repr=False)  # and their class indices

    @functools.cached_property
    def floor(self) -> float:
        """The similarity photos to teach from must reach (TEACH_PERCENTILE, check_like_training):
        computed at the first teaching, not when a taught folder is loaded to serve."""
        return teaching_floor(self.bank, self.labels)

    @classmethod
    def fit(cls, kernel: np.ndarray, bias: np.ndarray, bank: np.ndarray, labels: np.ndarray) -> Head:
        """The head with its class means from the bank (unit rows) and its rows' class indices."""
        kernel, bias = np.asarray(kernel, np.float32), np.asarray(bias, np.float32)
        classes = kernel.shape[1]
        labels = np.asarray(labels, np.int64)
        kept = labels < classes  # the trained classes' rows (taught ones come after)
        counts = np.bincount(labels[kept], minlength=classes)
        sums = np.zeros((classes, kernel.shape[0]), np.float64)
        np.add.at(sums, labels[kept], np.asarray(bank, np.float64)[kept])
        means = (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)
        return cls(kernel, bias, means, counts > 0, np.asarray(bank)[kept], labels[kept])

    def check_like_training(self, closest: np.ndarray) -> None:
        """Refuse photos that look like nothing the model learnt from: the median of their
        similarity to the closest training photo (`closest`, one per photo) under `floor`."""
        median = float(np.median(closest))
        if median < self.floor:
            raise FlowerDemoError(
                "these photos look like nothing the model learnt from (their closest training photos are "
                f"{median:.2f} similar; a flower it never saw is usually over {self.floor:.2f}): "
                "teach it flowers"
            )

    def imprint(self, features: np.ndarray) -> tuple[np.ndarray, float]:
        """The column (d,) and bias of a new class from its photos' pooled features (n, d)."""
        means = self.class_means[self.present]
        centre = means.mean(axis=0)
        spread = means - centre
        columns = self.kernel.T[self.present] - self.kernel.T[self.present].mean(axis=0)
        alpha = float((columns * spread).sum() / max(float((spread**2).sum()), 1e-12))
        new_mean = l2_normalise(features).mean(axis=0)
        column = self.kernel.mean(axis=1) + IMPRINT_SCALE * alpha * (new_mean - centre)
        return column.astype(np.float32), float(self.bias.mean())

    def trained_logsumexp(self, features: np.ndarray) -> np.ndarray:
        """logsumexp of the trained classes' logits, per row of pooled features."""
        logits = np.asarray(features, np.float64) @ self.kernel + self.bias
        return np.logaddexp.reduce(logits, axis=-1)


@dataclass(frozen=True)
class Taught:
    """Classes added to a trained model by imprinting: their names and classifier columns."""

    names: tuple[str, ...]
    kernel: np.ndarray  # (d, taught) float32
    bias: np.ndarray  # (taught,) float32

    def with_class(self, name: str, column: np.ndarray, bias: float) -> Taught:
        """These classes and one more."""
        column = np.asarray(column, np.float32)[:, None]
        return Taught(
            (*self.names, name),
            np.concatenate([self.kernel, column], axis=1) if self.names else column,
            np.append(self.bias, np.float32(bias)).astype(np.float32),
        )

    @classmethod
    def none(cls, dim: int) -> Taught:
        return cls((), np.zeros((dim, 0), np.float32), np.zeros(0, np.float32))

    def probabilities(self, probabilities: np.ndarray, features: np.ndarray, head: Head) -> np.ndarray:
        """(n, trained + taught) probabilities: the softmax over the widened layer, from the trained
        classes' probabilities and the pooled features of the same pass (see the module's text)."""
        probabilities = np.asarray(probabilities, np.float64)
        if not self.names:
            return probabilities.astype(np.float32)
        taught = np.asarray(features, np.float32) @ self.kernel + self.bias
        trained = head.trained_logsumexp(features)
        total = np.logaddexp(trained, np.logaddexp.reduce(np.asarray(taught, np.float64), axis=-1))
        widened = np.concatenate(
            [probabilities * np.exp(trained - total)[:, None], np.exp(taught - total[:, None])], axis=1
        )
        return widened.astype(np.float32)


def teaching_floor(bank: np.ndarray, labels: np.ndarray) -> float:
    """TEACH_PERCENTILE of the bank rows' similarity to their closest row of another class (a
    2,040-row bank: about a fifth of a second, a block of rows at a time to bound the memory)."""
    bank = np.asarray(bank, np.float32)
    closest = np.empty(len(bank), np.float32)
    for start in range(0, len(bank), 512):
        similarity = bank[start : start + 512] @ bank.T
        similarity[labels[start : start + 512, None] == labels[None, :]] = -1.0
        closest[start : start + 512] = similarity.max(axis=1)
    return float(np.percentile(closest, TEACH_PERCENTILE))


def new_class_name(name: str, known: list[str], rule: str | None) -> str:
    """The name tidied (spacing); refused in one line when empty, already known (case aside), or
    when the model's "not one of the classes" `rule` cannot take a new class."""
    name = " ".join(str(name).split())
    if not name:
        raise FlowerDemoError("give the new flower a name")
    if name.casefold() in {k.casefold() for k in known}:
        raise FlowerDemoError(f"the model already knows {name!r}; choose another name")
    if rule is not None and rule not in TEACHABLE_RULES:
        raise FlowerDemoError(
            f"a taught class does not fit this model's {rule} rule; calibrate it with --rule knn"
        )
    return name


def readable_photos(photos: Sequence[ImageLike], size: int, min_photos: int = MIN_PHOTOS) -> np.ndarray:
    """The photos that decode, as (n, size, size, 3) uint8 model inputs; refused in one line when
    more than MAX_PHOTOS are given or fewer than `min_photos` can be read (with the first reason)."""
    if len(photos) > MAX_PHOTOS:
        raise FlowerDemoError(f"at most {MAX_PHOTOS} photos teach a flower, got {len(photos)}")
    readable, problems = [], []
    for photo in photos:
        try:
            readable.append(square_uint8(photo, size))
        except FlowerDemoError as exc:
            problems.append(str(exc))
    if len(readable) < min_photos:
        unread = f" ({len(problems)} could not be read: {problems[0]})" if problems else ""
        raise FlowerDemoError(
            f"teaching needs at least {min_photos} readable photos, got {len(readable)}{unread}"
        )
    return np.stack(readable)


def read_taught(path: Path, names: list[str], dim: int | None = None) -> Taught:
    """The taught classes' columns stored in `path` (OOD_FILE) for the class `names` metadata.json
    lists as taught (none: an empty Taught)."""
    if not names:
        return Taught.none(dim or 0)
    try:
        with np.load(path, allow_pickle=False) as stored:
            kernel = np.asarray(stored[TAUGHT_KERNEL], np.float32)
            bias = np.asarray(stored[TAUGHT_BIAS], np.float32)
    except (OSError, ValueError, KeyError) as exc:
        raise FlowerDemoError(
            f"cannot read the taught classes' columns in {path}: {first_line(exc)}"
        ) from None
    if kernel.ndim != 2 or kernel.shape[1] != len(names) or bias.shape != (len(names),):
        raise FlowerDemoError(
            f"{path}: the taught columns {kernel.shape} do not fit {len(names)} taught classes"
        )
    return Taught(tuple(names), kernel, bias)


def read_head(path: Path, bank: np.ndarray, labels: np.ndarray) -> Head:
    """The trained classifier stored in `path` (OOD_FILE), with its class means from the bank."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            kernel = np.asarray(stored[KERNEL], np.float32)
            bias = np.asarray(stored[BIAS], np.float32)
    except KeyError:
        raise FlowerDemoError(
            f"{path} lacks the classifier's kernel and bias that teaching needs: re-run "
            f"python -m flower_demo.calibrate --model {path.parent} --references-only"
        ) from None
    except (OSError, ValueError) as exc:
        raise FlowerDemoError(f"cannot read {path}: {first_line(exc)}") from None
    return Head.fit(kernel, bias, bank, labels)
