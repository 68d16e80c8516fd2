"""A training stage: the models it trains (cut from the classifier, sharing its layers), the
batches it draws from cached views, its optimizer and schedule, and its loop with per-epoch
checkpoints, resume, early stopping and the weight average (averaging.py).

A stage leaves in the run folder: STAGE_log.csv (one row per epoch), STAGE_best.weights.h5 (the
weights it ends with), STAGE.done (its epoch count, once finished) and checkpoints/STAGE/.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from flower_demo import models  # first: it keeps TensorFlow's start-up notices off the terminal

# isort: split
import keras

from flower_demo.train.averaging import WeightAverage
from flower_demo.train.config import SHORT_STAGE_STEPS, TrainConfig

# --- the models a stage trains -----------------------------------------------------------------


def split_model(model: keras.Model, backbone_name: str, fine_tune_from: str | None) -> tuple[Any, Any]:
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


def head_model(input_shape: tuple, model: keras.Model, top: keras.Model | None = None) -> keras.Model:
    """[top ->] dropout -> classifier, on cached activations; layers shared with `model`."""
    inputs = keras.Input(input_shape)
    x = top(inputs, training=False) if top is not None else inputs
    for layer in models.head_of(model):
        x = layer(x)
    return keras.Model(inputs, x)


def unfreeze(top: keras.Model | keras.Layer) -> int:
    """Make every layer of `top` trainable except BatchNorm; returns trainable weight count."""
    top.trainable = True  # a frozen model hides its layers' weights, whatever their own flags say
    for layer in top.layers:
        layer.trainable = not isinstance(layer, keras.layers.BatchNormalization)
    return sum(int(np.prod(w.shape)) for w in top.trainable_weights)


def augmented_model(model: keras.Model, augmenter: keras.Model) -> keras.Model:
    """pixels -> `augmenter` (active in training only) -> `model`, for `--fine-tune whole`;
    shares every layer with `model`, so training it trains the model that is saved."""
    inputs = keras.Input(model.input_shape[1:])
    return keras.Model(inputs, model(augmenter(inputs)))


# --- batches, optimizer, schedule --------------------------------------------------------------


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


def compile_stage(
    trainable: keras.Model, lr: float, epochs: int, steps_per_epoch: int, config: TrainConfig
) -> None:
    """AdamW with the run's weight decay and learning-rate schedule; smoothed cross-entropy.
    (The weight average is a callback of `fit_stage`.) The metrics are objects made here, not
    names: on TensorFlow, Keras builds a named metric inside the first training step, and a step
    that creates variables is traced twice (seconds each for a whole backbone)."""
    rate = learning_rate(lr, epochs, steps_per_epoch, config.schedule, config.warmup_epochs)
    trainable.compile(
        optimizer=keras.optimizers.AdamW(rate, weight_decay=config.weight_decay),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
        metrics=[
            keras.metrics.CategoricalAccuracy(name="accuracy"),
            keras.metrics.TopKCategoricalAccuracy(5, name="top5"),
        ],
    )


def stage_mixup(stage: str, epochs: int, images: int, config: TrainConfig) -> float:
    """The stage's mixup alpha: none in a short stage, which says that it is short."""
    steps = epochs * -(-images // config.batch_size)
    if steps >= SHORT_STAGE_STEPS:
        return config.mixup
    off = "; mixup off, it needs longer to pay off" if config.mixup else ""
    print(f"{stage}: only {steps} training steps, expect a weak model (--quick: 480 on Flowers-102){off}")
    return 0.0


# --- the loop ----------------------------------------------------------------------------------


def read_log(path: Path) -> dict[str, list[float]]:
    """Per-epoch metrics from a Keras CSVLogger file ({} if there is none yet)."""
    if not path.exists():
        return {}
    with path.open() as f:
        by_epoch = {row["epoch"]: row for row in csv.DictReader(f)}  # a re-run epoch counts once
    rows = sorted(by_epoch.values(), key=lambda row: int(row["epoch"]))
    value = lambda text: float("nan") if text in ("", "NA") else float(text)  # CSVLogger's gaps: NA
    return {k: [value(r[k]) for r in rows] for k in (rows[0] if rows else {}) if k != "epoch"}


def stage_callbacks(stage: str, run_dir: Path, config: TrainConfig, choose: bool) -> list[Any]:
    """Backup (for --resume), the weight average, the log, and with `choose` the best epoch's
    checkpoint and early stopping on val accuracy. The order matters: the backup holds the
    weights being trained, what comes after the average sees the averaged ones."""
    log, best = run_dir / f"{stage}_log.csv", run_dir / f"{stage}_best.weights.h5"
    best_so_far = max(read_log(log).get("val_accuracy", []), default=None)
    chosen = [] if not choose else [
        keras.callbacks.ModelCheckpoint(
            str(best),
            monitor="val_accuracy",
            save_best_only=True,
            save_weights_only=True,
            initial_value_threshold=best_so_far,
        ),
        keras.callbacks.EarlyStopping(monitor="val_accuracy", patience=config.patience),
    ]  # fmt: skip
    return [
        # Kept after the stage ends, so --resume with more epochs extends a finished stage.
        keras.callbacks.BackupAndRestore(str(run_dir / "checkpoints" / stage), delete_checkpoint=False),
        *([WeightAverage(config.ema)] if config.ema else []),
        keras.callbacks.CSVLogger(str(log), append=True),
        *chosen,
    ]


def fit_stage(
    stage: str,
    trainable: keras.Model,
    views: np.ndarray,
    targets: np.ndarray,
    validation: tuple[np.ndarray, np.ndarray] | None,
    epochs: int,
    lr: float,
    config: TrainConfig,
    run_dir: Path,
) -> dict[str, list[float]]:
    """Train one stage on `views` (views, n, ...) towards `targets` ((n, classes), or per view),
    with per-epoch checkpoints, resume and early stopping on `validation` (inputs, one-hot), and
    keep the best epoch. With no validation, or --fixed-epochs, run every epoch and keep the last.

    Returns the stage's per-epoch metrics, epochs from before an interruption included.
    """
    choose = not config.fixed_epochs and validation is not None
    best, log, done = (run_dir / f"{stage}{end}" for end in ("_best.weights.h5", "_log.csv", ".done"))
    if config.resume and done.exists() and best.exists() and int(done.read_text() or 0) >= epochs:
        print(f"{stage}: already finished, loading its best weights")
        trainable.load_weights(best)
        return read_log(log)
    if not config.resume:  # a fresh run never picks up a stale checkpoint from the same folder
        shutil.rmtree(run_dir / "checkpoints" / stage, ignore_errors=True)
        log.unlink(missing_ok=True)
    callbacks = stage_callbacks(stage, run_dir, config, choose)
    mixup = stage_mixup(stage, epochs, targets.shape[-2], config)
    batches = RandomViews(views, targets, config.batch_size, config.seed, mixup)
    compile_stage(trainable, lr, epochs, len(batches), config)
    trainable.fit(
        batches,
        validation_data=None if validation is None else (np.asarray(validation[0], "float32"), validation[1]),
        epochs=epochs,
        callbacks=callbacks,
        verbose=models.progress_verbosity(),
    )
    if choose:
        trainable.load_weights(best)
    else:  # the last epoch's weights (the weight average, when there is one)
        trainable.save_weights(best)
    done.write_text(str(epochs))
    return read_log(log)
