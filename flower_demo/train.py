"""Train a flower classifier in two stages and save it into a run folder.

    python -m flower_demo.train --data-dir DATA_DIR --weights imagenet          # the full run
    python -m flower_demo.train --data-dir DATA_DIR --weights imagenet --quick  # head only, ~1 min

Stage 1 trains the dense head on the frozen backbone. Stage 2 unfreezes the top of the backbone
(from the registry's `fine_tune_from` layer up) at a low learning rate; BatchNorm layers stay
frozen and in inference mode. `--fine-tune whole` unfreezes every layer instead (BatchNorm still
frozen) and augments the photos afresh in every epoch: the usual way on a GPU; on a 2-core CPU
about three times the cached way's CPU time, for no gain on Flowers-102 (README, "The shipped model").

Distillation: `--teachers RUN ...` averages the probabilities of other trained runs on each cached
view (the same augmented pixels the student's activations come from) and blends them, by
`--distill`, into the labels the student trains on in both stages: several models' knowledge in
the one small model that ships.

Why it is fast on a CPU: the frozen bottom of the backbone is the expensive part, and its output
does not change during training. So each training image is augmented `--views` times up front,
the bottom runs once per view, and both stages train on those cached activations; each epoch
draws one random view per image. Decoded images and activations stay in memory and are also
saved in the run folder, so `--resume` restarts where a run stopped without recomputing them.
With a GPU the same steps run there, in mixed precision.

A run folder holds what RUN_README (written into it as README.txt) lists, and report/ (where the
model fails on the validation split: flower_demo.report). `weights/` is written only with `--ship`.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import hashlib
import importlib.util
import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from flower_demo import model_files, models  # first: it keeps TensorFlow's start-up notices off the terminal

# isort: split
import keras

from flower_demo import data, report
from flower_demo.errors import FlowerDemoError

DEFAULT_VIEWS = 16  # augmented copies of each training image
CACHE_BATCH = 32
# The quick recipe: the head alone on the photos as they are (1 view); figures in QUICK_HELP and README.
QUICK = {"stage2_epochs": 0, "views": 1, "stage1_epochs": 30}
QUICK_HELP = (
    "--quick trains the head alone on the frozen backbone (no fine-tuning), on the photos as they are.\n"
    "Measured on Flowers-102 (1,020 training photos, 2-core CPU): 82.45% top-1 / 95.10% top-5 on its\n"
    "1,020 validation photos (the full run: 92.25%), in 73 s of CPU time (141 s wall clock while\n"
    "the machine was busy with other jobs). It leaves a 14 MB run folder."
)
SHORT_STAGE_STEPS = 200  # a stage this short gets a warning, and no mixup (it only slows learning there)
EMA_WARMUP = 10  # the weight average's momentum is min(--ema, (1 + step) / (EMA_WARMUP + step))
RUN_README = """This folder is one run of `python -m flower_demo.train` (flower_demo).

model.keras, metadata.json   the trained model and what it is (classes, data, metrics, settings);
                             load it with --model THIS_FOLDER in predict, evaluate, calibrate, export
model.tflite                 the same model for LiteRT, what predict and the app run by default
report/                      where the model fails on the validation split (open report/index.html)
settings.json                the command's options
history.json, curves.png     per-epoch loss and accuracy of both stages
stage1_log.csv, stage2_log.csv, stage*_best.weights.h5, stage*.done, checkpoints/
                             per-epoch logs and checkpoints: --resume continues or extends the run
cache/                       decoded images and frozen activations (most of the disk); {cache_fate}
"""


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The description as written (its example must not wrap); each option's default shown once."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:  # nothing to show, or said in the help
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m flower_demo.train",
        description=__doc__.split("\n\n", 2)[1] + "\n\n" + QUICK_HELP if __doc__ else None,
        formatter_class=HelpFormatter,
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--data-dir", help="Flowers-102 folder (jpg/, imagelabels.mat, setid.mat)")
    source.add_argument("--tfds", metavar="NAME", help="tensorflow_datasets name, e.g. tf_flowers")
    source.add_argument("--image-folder", help="class-per-folder image tree (your own data)")
    p.add_argument(
        "--tfds-dir",
        help="where tensorflow_datasets keeps its downloads (default: tfds' own, ~/tensorflow_datasets)",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.2,
        help="validation share when a source has no validation split",
    )
    p.add_argument(
        "--max-per-class",
        type=int,
        default=0,
        help="use at most N training images per class (0 = all)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="the quick recipe (figures above): "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in QUICK.items())
        + " (the options given explicitly still win)",
    )
    p.add_argument(
        "--backbone",
        default="mobilenet_v2",
        help=f"one of {', '.join(models.BACKBONES)}, or hub:HANDLE (a TF-Hub feature-vector module)",
    )
    p.add_argument(
        "--weights",
        default="imagenet",
        help="backbone weights: imagenet (Keras downloads them), a local .h5 file, or none",
    )
    p.add_argument("--image-size", type=int, default=models.DEFAULT_IMAGE_SIZE, help="input size in pixels")
    p.add_argument(
        "--serve-size",
        type=int,
        help="input size of the saved model (default: --image-size). Random zooms make flowers look "
        "larger in training than in a plain photo; serving at a larger size makes up for it",
    )
    p.add_argument(
        "--views",
        type=int,
        default=DEFAULT_VIEWS,
        help="views per training image: the photo as it is, then augmented copies",
    )
    p.add_argument("--batch-size", type=int, default=64, help="images per training step")
    p.add_argument("--dropout", type=float, default=0.3, help="dropout rate before the classifier")
    p.add_argument("--label-smoothing", type=float, default=0.1, help="label smoothing of the loss")
    p.add_argument("--stage1-epochs", type=int, default=15, help="epochs of the head on the frozen backbone")
    p.add_argument("--stage1-lr", type=float, default=1e-3, help="learning rate of stage 1")
    p.add_argument(
        "--stage2-epochs",
        type=int,
        default=46,
        help="epochs of fine-tuning the backbone's top (the most, with early stopping; 0 = skip)",
    )
    p.add_argument("--stage2-lr", type=float, default=2e-4, help="learning rate of stage 2")
    p.add_argument(
        "--mixup",
        type=float,
        default=0.2,
        help=f"mixup alpha on cached activations (0 = off; off in stages under {SHORT_STAGE_STEPS} steps)",
    )
    p.add_argument(
        "--ema",
        type=float,
        default=0.99,
        help="momentum of the weights' moving average, warmed up as min(EMA, (1+step)/(10+step)) (0 = off)",
    )
    p.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay")
    p.add_argument(
        "--schedule",
        choices=("constant", "cosine"),
        default="constant",
        help="learning rate within each stage: constant, or cosine decay to zero over its epochs",
    )
    p.add_argument(
        "--warmup-epochs",
        type=int,
        default=0,
        help="raise the learning rate linearly from 0 over a stage's first epochs",
    )
    p.add_argument(
        "--fine-tune",
        choices=("cached", "whole"),
        default="cached",
        help="stage 2: cached = the backbone's top (from --fine-tune-from up) on the cached views; "
        "whole = every backbone layer but BatchNorm, on photos augmented afresh each epoch (slower)",
    )
    p.add_argument(
        "--teachers",
        nargs="+",
        metavar="RUN",
        help="distil these trained model folders (same classes and input size): their averaged "
        "probabilities on each cached view become soft targets (needs --fine-tune cached)",
    )
    p.add_argument(
        "--distill",
        type=float,
        default=0.5,
        help="with --teachers: the soft targets' weight; the labels get the rest (1 = teachers only)",
    )
    p.add_argument(
        "--fine-tune-from",
        help="layer whose output feeds the fine-tuned part (default: the backbone registry's)",
    )
    p.add_argument(
        "--train-splits",
        default="train",
        help="official splits to train on, joined by commas, e.g. train,validation for the final model "
        "(--data-dir and --tfds; a class-per-folder tree has only its own split)",
    )
    p.add_argument(
        "--val-split",
        default="validation",
        help="official split scored after each epoch, or none: then each stage runs its epochs and "
        "keeps the last weights, with no validation figure (--data-dir and --tfds)",
    )
    p.add_argument(
        "--fixed-epochs",
        action="store_true",
        help="run every epoch and keep the last weights: no early stopping, no best epoch chosen on "
        "the validation split, so its figure stays an honest estimate (implied by --val-split none)",
    )
    p.add_argument(
        "--patience",
        type=int,
        default=10,
        help="stop a stage after this many epochs without a better val accuracy",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of views, order, mixup and initialisation")
    p.add_argument("--run-dir", help="output folder (default: runs/<date-time>)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --run-dir where it stopped (or extend it with more epochs)",
    )
    cache = p.add_mutually_exclusive_group()
    cache.add_argument(
        "--keep-cache",
        action="store_true",
        help="keep run-dir/cache/ (decoded images, activations) after a successful run, "
        "so that --resume with more epochs need not recompute it",
    )
    cache.add_argument(
        "--drop-cache",
        dest="keep_cache",
        action="store_false",
        default=argparse.SUPPRESS,  # the default is --keep-cache's (False), said in this help
        help="delete run-dir/cache/ after a successful run (the default); an interrupted run keeps it",
    )
    p.add_argument(
        "--ship",
        action="store_true",
        help=f"also copy the result into {model_files.SHIPPED_MODEL_DIR} (overwrites it)",
    )
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quick:  # the quick recipe's values become the defaults; options given still win
        parser.set_defaults(**QUICK)
        args = parser.parse_args(argv)
    return args


# --- data ------------------------------------------------------------------------------------


def chosen_splits(args: argparse.Namespace) -> tuple[list[str], str | None]:
    """The official splits to train on and the one to validate on (None: no validation), checked."""
    train_splits = [s.strip() for s in args.train_splits.split(",") if s.strip()]
    val_split = None if args.val_split.lower() == "none" else args.val_split
    if args.image_folder and (train_splits != ["train"] or val_split != "validation"):
        raise FlowerDemoError("--train-splits and --val-split need --data-dir or --tfds (official splits)")
    if not train_splits:
        raise FlowerDemoError("--train-splits names no split")
    if val_split in train_splits:
        raise FlowerDemoError(f"--val-split {val_split} is also trained on; name another split, or none")
    if "test" in train_splits or val_split == "test":
        print("note: the test split is meant for the final, independent measurement only")
    return train_splits, val_split


def load_splits(
    args: argparse.Namespace,
) -> tuple[data.LabeledImages, data.LabeledImages | None]:
    """(train, validation) from whichever source the arguments name; validation None with
    --val-split none."""
    train_splits, val_split = chosen_splits(args)
    if args.data_dir:
        train = data.concatenate([data.load_oxford_folder(args.data_dir, s) for s in train_splits])
        val = data.load_oxford_folder(args.data_dir, val_split) if val_split else None
    elif args.image_folder:
        train, val = data.load_image_folder(args.image_folder, args.val_fraction, args.seed)
    else:
        if train_splits != ["train"] or val_split != "validation":
            train_split, val_split = "+".join(train_splits), val_split
        elif "validation" in data.tfds_split_names(args.tfds, args.tfds_dir):
            train_split, val_split = "train", "validation"
        else:  # e.g. tf_flowers has only "train": hold out its last val-fraction
            cut = round(100 * (1 - args.val_fraction))
            train_split, val_split = f"train[:{cut}%]", f"train[{cut}%:]"
        train = data.load_tfds(args.tfds, train_split, args.tfds_dir)
        val = data.load_tfds(args.tfds, val_split, args.tfds_dir) if val_split else None
    if args.max_per_class:
        keep = np.concatenate(
            [np.flatnonzero(train.labels == c)[: args.max_per_class] for c in np.unique(train.labels)]
        )
        keep.sort()
        train = data.LabeledImages(
            [train.items[i] for i in keep],
            train.labels[keep],
            train.class_names,
            len(keep),
            train.source,
        )
    for name, split in (("train", train), ("validation", val)):
        if split is not None:
            print(f"{name}: {len(split)} of {split.expected} images found ({split.source})")
    if val is None:
        print("validation: none; each stage runs all its epochs and keeps the last weights")
    elif len(val) == 0:
        raise FlowerDemoError("the validation split is empty")
    return train, val


def cached(path: Path, key: str, compute) -> np.ndarray:
    """np.load(path) if it was made with the same `key`, else compute() and save it there."""
    key_file = path.with_suffix(".key")
    if path.exists() and key_file.exists() and key_file.read_text() == key:
        return np.load(path, mmap_mode="r")
    return save_cached(path, key, compute())


def save_cached(path: Path, key: str, array: np.ndarray) -> np.ndarray:
    """Save `array` where `cached` finds it (the key last: a half-written file is never reused)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array)
    path.with_suffix(".key").write_text(key)
    return array


def load_teachers(paths: list[str], class_names: list[str], image_size: int) -> Callable:
    """pixels -> the teachers' averaged probabilities, after checking that each teacher knows the
    same classes, in the same order, at the same input size as the run."""
    forwards = []
    for path in paths:
        teacher, metadata = models.load_model(path)
        if metadata["class_names"] != class_names:
            raise FlowerDemoError(f"teacher {path} knows other classes than the training data")
        if int(teacher.input_shape[1]) != image_size:
            raise FlowerDemoError(
                f"teacher {path} takes {teacher.input_shape[1]} px, this run {image_size} px"
            )
        forwards.append(models.compiled_forward(teacher))
    return lambda pixels: np.mean([np.asarray(forward(pixels)) for forward in forwards], axis=0)


# --- model pieces ----------------------------------------------------------------------------


def split_model(model, backbone_name: str, fine_tune_from: str | None):
    """(bottom, top): bottom maps pixels to the cut activation, top maps that to features.

    Both share layers (and so weights) with `model`. For a hub backbone, or with no cut, the
    bottom is the whole frozen feature extractor and the top is None.
    """
    image = model.input
    preprocessed = model.get_layer("preprocess").output
    backbone = models.backbone_of(model)
    if fine_tune_from is None or backbone_name.startswith(models.HUB_PREFIX):
        return keras.Model(image, backbone(preprocessed, training=False), name="bottom"), None
    cut = backbone.get_layer(fine_tune_from).output
    bottom_part = keras.Model(backbone.input, cut)
    top = keras.Model(cut, backbone.output, name="top")
    return keras.Model(image, bottom_part(preprocessed, training=False), name="bottom"), top


def head_model(input_shape: tuple, model, top=None):
    """[top ->] dropout -> classifier, on cached activations; layers shared with `model`."""
    inputs = keras.Input(input_shape)
    x = top(inputs, training=False) if top is not None else inputs
    for layer in models.head_of(model):
        x = layer(x)
    return keras.Model(inputs, x)


def unfreeze(top) -> int:
    """Make every layer of `top` trainable except BatchNorm; returns trainable weight count."""
    top.trainable = True  # a frozen model hides its layers' weights, whatever their own flags say
    for layer in top.layers:
        layer.trainable = not isinstance(layer, keras.layers.BatchNormalization)
    return sum(int(np.prod(w.shape)) for w in top.trainable_weights)


class RandomViews(keras.utils.PyDataset):
    """Batches from (views, n, ...) cached arrays: one random view of each image per epoch.
    `labels` are (n, classes), or (views, n, classes) when each view has its own (distillation)."""

    def __init__(self, views: np.ndarray, labels: np.ndarray, batch_size: int, seed: int, mixup: float = 0.0):
        super().__init__()
        self.views, self.labels, self.batch_size, self.mixup = views, labels, batch_size, mixup
        self.images = views.shape[1]
        self.rng = np.random.default_rng(seed)
        self.on_epoch_end()

    def __len__(self) -> int:
        return -(-self.images // self.batch_size)

    def on_epoch_end(self) -> None:
        self.order = self.rng.permutation(self.images)
        self.choice = self.rng.integers(0, len(self.views), self.images)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rows = np.sort(self.order[index * self.batch_size : (index + 1) * self.batch_size])
        x = np.stack([self.views[v, r] for v, r in zip(self.choice[rows], rows)]).astype("float32")
        y = self.labels[self.choice[rows], rows] if self.labels.ndim == 3 else self.labels[rows]
        if self.mixup > 0:  # mixup of cached activations ("manifold mixup"): blend pairs and labels
            lam = self.rng.beta(self.mixup, self.mixup, size=len(rows)).astype("float32")
            pair = self.rng.permutation(len(rows))
            lam_x = lam.reshape((-1,) + (1,) * (x.ndim - 1))
            x = lam_x * x + (1 - lam_x) * x[pair]
            y = lam[:, None] * y + (1 - lam[:, None]) * y[pair]
        return x, y


def augmented_model(model: keras.Model, augmenter: keras.Model) -> keras.Model:
    """pixels -> `augmenter` (active in training only) -> `model`, for `--fine-tune whole`;
    shares every layer with `model`, so training it trains the model that is saved."""
    inputs = keras.Input(model.input_shape[1:])
    return keras.Model(inputs, model(augmenter(inputs)))


def read_log(path: Path) -> dict[str, list[float]]:
    """Per-epoch metrics from a Keras CSVLogger file ({} if there is none yet)."""
    if not path.exists():
        return {}
    with path.open() as f:
        by_epoch = {row["epoch"]: row for row in csv.DictReader(f)}  # a re-run epoch counts once
    rows = sorted(by_epoch.values(), key=lambda row: int(row["epoch"]))
    value = lambda text: float("nan") if text in ("", "NA") else float(text)  # CSVLogger's gaps: NA
    return {k: [value(r[k]) for r in rows] for k in (rows[0] if rows else {}) if k != "epoch"}


def learning_rate(
    lr: float, epochs: int, steps_per_epoch: int, schedule: str, warmup_epochs: int
) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """`lr`, or a Keras schedule of it: a linear warmup, then constant or cosine decay to zero.

    The schedule follows the optimizer's step count, which is checkpointed with it, so a stage
    resumed after a crash carries on along the same curve.
    """
    if schedule == "constant" and warmup_epochs <= 0:
        return lr
    warmup = max(warmup_epochs, 0) * steps_per_epoch
    return keras.optimizers.schedules.CosineDecay(
        0.0 if warmup else lr,
        decay_steps=max(epochs * steps_per_epoch - warmup, 1),
        alpha=1.0 if schedule == "constant" else 0.0,  # alpha 1: the "decay" stays at lr
        warmup_target=lr if warmup else None,
        warmup_steps=warmup,
    )


def activation_steps(bottom: keras.Model, augmenter: keras.Model) -> tuple[Callable, Callable]:
    """(augment, forward): a float32 pixel batch -> augmented pixels, and pixels -> `bottom`'s
    activations, each one compiled step (apart, so that teachers see the same augmented pixels)."""
    if keras.config.backend() == "tensorflow":  # one traced graph per step, not op by op
        import tensorflow as tf

        augment = tf.function(lambda batch: augmenter(batch, training=True), autograph=False)
        forward = tf.function(lambda batch: bottom(batch, training=False), autograph=False)
        return augment, forward
    # other Keras backends (e.g. JAX on a GPU): Keras compiles predict_on_batch
    return lambda batch: augmenter(batch, training=True), bottom.predict_on_batch


def cache_activations(
    bottom: keras.Model,
    steps: tuple[Callable, Callable],
    images: np.ndarray,
    n_views: int,
    progress: bool = True,
    teacher: Callable | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """(n_views, n, ...) float16 activations of `images`, view 0 plain, the others augmented; and
    with a `teacher` (load_teachers), its (n_views, n, classes) probabilities of the same views."""
    augment, forward = steps
    out = np.empty((n_views, len(images), *bottom.output_shape[1:]), dtype="float16")
    soft = None
    total = n_views * len(images)
    bar = (
        keras.utils.Progbar(total, unit_name="image", verbose=models.progress_verbosity())
        if progress
        else None
    )
    for v in range(n_views):
        for i in range(0, len(images), CACHE_BATCH):
            batch = images[i : i + CACHE_BATCH].astype("float32")
            pixels = augment(batch) if v > 0 else batch
            out[v, i : i + len(batch)] = np.asarray(forward(pixels))
            if teacher is not None:
                probabilities = teacher(pixels)
                if soft is None:
                    soft = np.empty((n_views, len(images), probabilities.shape[-1]), dtype="float16")
                soft[v, i : i + len(batch)] = probabilities
            if bar:
                bar.add(len(batch))
    return out, soft


def pooled_features(top: keras.Model, acts: np.ndarray) -> np.ndarray:
    """The frozen top's pooled features of cached activations, for stage 1."""
    return np.asarray(top.predict(np.asarray(acts, "float32"), batch_size=128, verbose=0))


class AdamWAveraged(keras.optimizers.AdamW):
    """AdamW whose weight average warms up: momentum min(ema, (1 + step) / (EMA_WARMUP + step)).

    Keras' own average uses its full momentum from the second step on, so after a few hundred
    steps at 0.99 it still holds mostly the weights the stage started from (a 40-step run scored
    1% that way). Warmed up, the average covers about the last tenth of a short stage and reaches
    the full momentum after about EMA_WARMUP / (1 - ema) steps.
    """

    def _update_model_variables_moving_average(self, trainable_variables: list) -> None:
        if not self.use_ema:
            return
        step = keras.ops.cast(self.iterations, "float32")  # 0 during the first update
        warm = keras.ops.minimum(self.ema_momentum, (1.0 + step) / (EMA_WARMUP + step))
        momentum = keras.ops.where(step > 0, warm, 0.0)  # the first step copies the weights
        for var, average in zip(trainable_variables, self._model_variables_moving_average):
            if average is not None:
                m = keras.ops.cast(momentum, var.dtype)
                average.assign(m * average + (1 - m) * var)


def compile_stage(
    trainable: keras.Model, lr: float, epochs: int, steps_per_epoch: int, args: argparse.Namespace
) -> None:
    """AdamW with the run's weight decay, EMA and learning-rate schedule; smoothed cross-entropy."""
    ema = {"use_ema": True, "ema_momentum": args.ema} if args.ema else {}
    rate = learning_rate(lr, epochs, steps_per_epoch, args.schedule, args.warmup_epochs)
    trainable.compile(
        optimizer=AdamWAveraged(rate, weight_decay=args.weight_decay, **ema),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=args.label_smoothing),
        metrics=["accuracy", keras.metrics.TopKCategoricalAccuracy(5, name="top5")],
    )


def fit_stage(
    stage: str,
    trainable: keras.Model,
    train_views: np.ndarray,
    train_labels: np.ndarray,
    val_x: np.ndarray | None,
    val_labels: np.ndarray | None,
    epochs: int,
    lr: float,
    args: argparse.Namespace,
    run_dir: Path,
    soft: np.ndarray | None = None,
) -> dict[str, list[float]]:
    """Train one stage with per-epoch checkpoints, resume and early stopping; keep the best.
    With no validation data, or --fixed-epochs, run every epoch and keep the last weights.
    With `soft` (the teachers' probabilities of each view), each view's target is the labels
    blended with them by --distill.

    Returns the stage's per-epoch metrics, epochs from before an interruption included.
    """
    fixed = args.fixed_epochs or val_x is None
    best = run_dir / f"{stage}_best.weights.h5"
    log = run_dir / f"{stage}_log.csv"
    backup = run_dir / "checkpoints" / stage
    done = run_dir / f"{stage}.done"
    if args.resume and done.exists() and best.exists() and int(done.read_text() or 0) >= epochs:
        print(f"{stage}: already finished, loading its best weights")
        trainable.load_weights(best)
        return read_log(log)
    if not args.resume:  # a fresh run never picks up a stale checkpoint from the same folder
        shutil.rmtree(backup, ignore_errors=True)
        log.unlink(missing_ok=True)
    best_so_far = max(read_log(log).get("val_accuracy", []), default=None)
    one_hot = np.eye(int(trainable.output_shape[-1]), dtype="float32")
    steps = epochs * -(-len(train_labels) // args.batch_size)
    mixup = args.mixup if steps >= SHORT_STAGE_STEPS else 0.0
    if steps < SHORT_STAGE_STEPS:
        off = "; mixup off, it needs longer to pay off" if args.mixup else ""
        print(f"{stage}: only {steps} training steps, expect a weak model (--quick: 480 on Flowers-102){off}")
    targets = one_hot[train_labels]
    if soft is not None:
        targets = (1 - args.distill) * targets[None] + args.distill * np.asarray(soft, "float32")
    views = RandomViews(train_views, targets, args.batch_size, args.seed, mixup)
    compile_stage(trainable, lr, epochs, len(views), args)
    # With EMA, validation and the best checkpoint use the averaged weights.
    swap = [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if args.ema else []
    choose = [] if fixed else [
        keras.callbacks.ModelCheckpoint(
            str(best),
            monitor="val_accuracy",
            save_best_only=True,
            save_weights_only=True,
            initial_value_threshold=best_so_far,
        ),
        keras.callbacks.EarlyStopping(monitor="val_accuracy", patience=args.patience),
    ]  # fmt: skip
    trainable.fit(
        views,
        validation_data=None if val_x is None else (np.asarray(val_x, dtype="float32"), one_hot[val_labels]),
        epochs=epochs,
        callbacks=[
            # Kept after the stage ends, so --resume with more epochs extends a finished stage.
            keras.callbacks.BackupAndRestore(str(backup), delete_checkpoint=False),
            *swap,
            keras.callbacks.CSVLogger(str(log), append=True),
            *choose,
        ],
        verbose=models.progress_verbosity(),
    )
    if fixed:  # the last epoch's weights (the weight average, when there is one)
        trainable.save_weights(best)
    else:
        trainable.load_weights(best)
    done.write_text(str(epochs))
    return read_log(log)


# --- outputs ---------------------------------------------------------------------------------


def plot_history(history: dict[str, dict[str, list[float]]], path: Path) -> None:
    """Loss and accuracy curves of both stages, one after the other, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    offset = 0
    for stage, record in history.items():
        epochs = np.arange(1, len(record.get("loss", [])) + 1) + offset
        for ax, metric in zip(axes, ("loss", "accuracy")):
            ax.plot(epochs, record[metric], label=f"{stage} train")
            ax.plot(epochs, record[f"val_{metric}"], "--", label=f"{stage} validation")
        offset += len(epochs)
        for ax in axes:
            ax.axvline(offset + 0.5, color="grey", lw=0.5)
    for ax, metric in zip(axes, ("loss", "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def export_for_serving(run_dir: Path) -> Path | None:
    """Write the run's model.tflite, what the serving core runs by default; where TensorFlow is
    missing (Keras on JAX, say) say so in one line and leave the run servable by the Keras engine."""
    if importlib.util.find_spec("tensorflow") is None:
        print("note: TensorFlow is not installed, so no model.tflite was written; run "
              f"`python -m flower_demo.export --model {run_dir}` where it is")  # fmt: skip
        return None
    from flower_demo.export import export_tflite

    target = export_tflite(run_dir)
    print(f"saved {target}")
    return target


def ship(run_dir: Path) -> None:
    """Copy the run's model into weights/ and write the matching label_map.json."""
    model_files.SHIPPED_MODEL_DIR.mkdir(exist_ok=True)
    for name in (
        model_files.MODEL_FILE,
        model_files.TFLITE_FILE,
        model_files.METADATA_FILE,
        model_files.OOD_FILE,
    ):
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, model_files.SHIPPED_MODEL_DIR / name)
        else:  # never leave a file of the previous model beside the new one
            (model_files.SHIPPED_MODEL_DIR / name).unlink(missing_ok=True)
    names = model_files.read_metadata(run_dir)["class_names"]
    label_map = model_files.label_map_from_names(names)
    model_files.SHIPPED_LABEL_MAP.write_text(json.dumps(label_map, indent=2) + "\n")
    print(f"shipped into {model_files.SHIPPED_MODEL_DIR} and {model_files.SHIPPED_LABEL_MAP}")


# --- the run ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except FlowerDemoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def run(args: argparse.Namespace) -> Path:
    from flower_demo.evaluate import evaluate_model

    if args.resume and not (args.run_dir and Path(args.run_dir).is_dir()):
        raise FlowerDemoError("--resume needs --run-dir pointing at an existing run folder")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = Path(args.run_dir or Path("runs") / stamp)  # in the working directory, also when installed
    if run_dir.resolve() == model_files.SHIPPED_MODEL_DIR.resolve():
        raise FlowerDemoError("--run-dir must not be weights/; use --ship to publish a run")
    started = time.time()
    keras.utils.set_random_seed(args.seed)
    gpu = models.gpu_available()
    if gpu:
        keras.mixed_precision.set_global_policy("mixed_float16")

    # Data and model first: a wrong path or name fails before anything is written.
    train, val = load_splits(args)
    size, names = args.image_size, train.class_names
    serve_size = args.serve_size or size
    if serve_size != size and args.backbone.startswith(models.HUB_PREFIX):
        raise FlowerDemoError(
            "--serve-size needs a keras.applications backbone; a TF-Hub module has its own size"
        )
    weights = None if args.weights in ("none", "None", "") else args.weights
    whole = args.fine_tune == "whole" and args.stage2_epochs > 0
    if whole and args.backbone.startswith(models.HUB_PREFIX):
        raise FlowerDemoError(
            "--fine-tune whole needs a keras.applications backbone; a TF-Hub module stays frozen"
        )
    if whole and args.teachers:
        raise FlowerDemoError("--teachers needs --fine-tune cached: the soft targets are cached per view")
    if args.teachers and not 0 <= args.distill <= 1:
        raise FlowerDemoError(f"--distill must be between 0 and 1, not {args.distill}")
    teacher = load_teachers(args.teachers, names, size) if args.teachers else None
    model = models.create_model(args.backbone, len(names), size, weights, args.dropout)
    fine_tune_from = None  # with --fine-tune whole, stage 1 caches the whole frozen backbone's features
    if args.stage2_epochs > 0 and not whole and not args.backbone.startswith(models.HUB_PREFIX):
        fine_tune_from = args.fine_tune_from or models.BACKBONES[args.backbone].fine_tune_from

    bottom, top = split_model(model, args.backbone, fine_tune_from)

    run_dir.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("resume", "ship", "keep_cache")}
    (run_dir / "settings.json").write_text(json.dumps(settings, indent=2))
    cache_fate = "kept (--keep-cache)" if args.keep_cache else "deleted after a successful run (--drop-cache)"
    (run_dir / "README.txt").write_text(RUN_README.format(cache_fate=cache_fate))
    print(f"run folder: {run_dir}  device: {'GPU (mixed precision)' if gpu else 'CPU'}")

    # Everything the cached arrays depend on, so a changed setting never reuses a stale cache.
    key = hashlib.sha256(
        json.dumps([args.backbone, args.weights, size, fine_tune_from, args.views, args.seed,
                    train.source, val and val.source, len(train), len(val or []), args.teachers]).encode()
    ).hexdigest()  # fmt: skip
    cache = run_dir / "cache"

    augmenter = data.make_augmenter(args.seed)
    steps = activation_steps(bottom, augmenter)

    print("decoding images into memory")
    train_images = cached(cache / "train_images.npy", key, lambda: data.decode_all(train.items, size))
    val_images = (
        cached(cache / "val_images.npy", key, lambda: data.decode_all(val.items, size)) if val else None
    )
    print(f"computing frozen activations of {args.views} views per training image")

    def train_views() -> np.ndarray:  # the teachers' soft targets are saved first, beside the views
        acts, soft = cache_activations(bottom, steps, train_images, args.views, teacher=teacher)
        if soft is not None:
            save_cached(cache / "train_soft.npy", key, soft)
        return acts

    train_acts = cached(cache / "train_acts.npy", key, train_views)
    train_soft = np.load(cache / "train_soft.npy", mmap_mode="r") if teacher else None
    val_acts = (
        cached(cache / "val_acts.npy", key, lambda: cache_activations(bottom, steps, val_images, 1)[0])[0]
        if val
        else None
    )
    val_labels = val.labels if val else None

    history: dict[str, dict[str, list[float]]] = {}
    timings: dict[str, float] = {}
    # Stage 1: the head alone, on pooled features (the top, still frozen, is run once here).
    t0 = time.time()
    if top is not None:
        all_views = lambda: np.stack([pooled_features(top, view) for view in train_acts])
        train_feats = cached(cache / "train_feats.npy", key, all_views)
        val_feats = (
            cached(cache / "val_feats.npy", key, lambda: pooled_features(top, val_acts)) if val else None
        )
    else:
        train_feats, val_feats = train_acts, val_acts
    stage1 = head_model(train_feats.shape[2:], model)
    history["stage1"] = fit_stage(
        "stage1", stage1, train_feats, train.labels, val_feats, val_labels,
        args.stage1_epochs, args.stage1_lr, args, run_dir, train_soft,
    )  # fmt: skip
    timings["stage1_seconds"] = round(time.time() - t0, 1)

    # Stage 2: the top of the backbone and the head, on the cached cut activations.
    if top is not None:
        t0 = time.time()
        print(f"stage 2: fine-tuning {unfreeze(top):,} backbone weights from {fine_tune_from} up")
        stage2 = head_model(train_acts.shape[2:], model, top)
        history["stage2"] = fit_stage(
            "stage2", stage2, train_acts, train.labels, val_acts, val_labels,
            args.stage2_epochs, args.stage2_lr, args, run_dir, train_soft,
        )  # fmt: skip
        timings["stage2_seconds"] = round(time.time() - t0, 1)
    elif whole:  # every backbone layer and the head, on photos augmented afresh each epoch
        t0 = time.time()
        print(f"stage 2: fine-tuning all {unfreeze(models.backbone_of(model)):,} backbone weights")
        history["stage2"] = fit_stage(
            "stage2", augmented_model(model, augmenter), train_images[None], train.labels,
            val_images, val_labels, args.stage2_epochs, args.stage2_lr, args, run_dir,
        )  # fmt: skip
        timings["stage2_seconds"] = round(time.time() - t0, 1)

    if gpu or serve_size != size:  # the saved model: float32 (mixed precision is for training), at serve_size
        keras.mixed_precision.set_global_policy("float32")
        final = models.create_model(args.backbone, len(names), serve_size, None, args.dropout)
        final.set_weights(model.get_weights())
        model = final
    timings["total_seconds"] = round(time.time() - started, 1)
    if val and serve_size != size:
        val_images = data.decode_all(val.items, serve_size)
    forward = models.compiled_forward(model)
    metrics = evaluate_model(forward, val_images, val.labels, serve_size) if val else None
    if metrics:
        print(f"validation top-1 {metrics['top1']:.4f}  top-5 {metrics['top5']:.4f}  ({timings})")
    else:
        print(f"trained on {len(train)} images with no validation split ({timings})")
    metadata = {
        "class_names": names,
        "image_size": serve_size,
        "backbone": args.backbone,
        "backbone_weights": args.weights,
        "data": {
            "train_source": train.source,
            "validation_source": val.source if val else None,
            "train_size": len(train),
            "validation_size": len(val) if val else 0,
        },
        # With --fixed-epochs (or no validation) nothing was chosen on the validation split, so its
        # figure is an estimate for data the run never saw; otherwise the best epoch was chosen on it.
        "metrics": {
            "validation_top1": metrics["top1"],
            "validation_top5": metrics["top5"],
            "chosen_on_validation": not args.fixed_epochs,
        }
        if metrics
        else {},
        "training": {**settings, **timings, "device": "GPU" if gpu else "CPU"},
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "versions": {"keras": keras.__version__, "backend": keras.config.backend()},
    }
    models.save_model(model, run_dir, metadata)
    (run_dir / "history.json").write_text(json.dumps(history, indent=2))
    plot_history(history, run_dir / "curves.png")
    if metrics:
        title = f"Validation report: run {run_dir.name}"
        page = report.write_report(
            run_dir / "report", metrics["probabilities"], val.labels, names, val.items, title, val.source
        )
        print(f"validation report: {page}")
    print(f"saved {run_dir / model_files.MODEL_FILE}")
    export_for_serving(run_dir)
    if not args.keep_cache:
        shutil.rmtree(cache, ignore_errors=True)
        print(f"deleted the cache {cache} (--keep-cache keeps it)")
    if args.ship:
        ship(run_dir)
    return run_dir


if __name__ == "__main__":
    sys.exit(main())
