"""A training run as a sequence of steps, each a function: check the options, build the data and
the model (before anything is written), start the run folder, cache what the stages train on,
stage 1, stage 2, then the model to save, its measurement and the run's outputs."""

from __future__ import annotations

import dataclasses
import datetime
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from flower_demo import model_files, models  # first: it keeps TensorFlow's start-up notices off the terminal

# isort: split
import keras

from flower_demo import data, report
from flower_demo.errors import FlowerDemoError
from flower_demo.evaluate import evaluate_model
from flower_demo.train import caching, devices, distill, outputs, stages
from flower_demo.train.config import TrainConfig, settings
from flower_demo.train.splits import load_splits


@dataclass
class Prepared:
    """The data and the model, and the model's two parts (stages.split_model)."""

    train: data.LabeledImages
    val: data.LabeledImages | None
    model: keras.Model
    bottom: keras.Model  # run once per view, its activations cached
    top: keras.Model | None  # fine-tuned by stage 2 on the cached activations (None: no such stage)
    fine_tune_from: str | None
    teacher: Callable | None

    def one_hot(self, labels: np.ndarray) -> np.ndarray:
        return np.eye(len(self.train.class_names), dtype="float32")[labels]


@dataclass
class Cache:
    """The arrays the stages train on (caching.py), and where they are kept."""

    folder: Path
    key: str
    images: np.ndarray  # decoded training images
    val_images: np.ndarray | None
    acts: np.ndarray  # (views, n, ...) the bottom's activations of each view
    val_acts: np.ndarray | None
    soft: np.ndarray | None  # (views, n, classes) the teachers' probabilities of each view
    augmenter: keras.Model


def run(config: TrainConfig) -> Path:
    """One training run; returns its folder."""
    started = time.time()
    gpu = models.gpu_available()
    config = resolve(config, gpu)
    check_options(config)
    run_dir = Path(config.run_dir or Path("runs") / datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    # under JAX, Keras seeds TensorFlow too, importing it if installed
    with model_files.quiet_startup(), model_files.collector_paused():
        keras.utils.set_random_seed(config.seed)
    if gpu:
        keras.mixed_precision.set_global_policy("mixed_float16")
    spread = devices.distribute(config.devices, config.batch_size)
    parts = prepare(config)  # a wrong path or name fails here, before anything is written
    start_folder(config, run_dir, gpu, spread)
    cache = cache_arrays(config, parts, run_dir / "cache")
    history: dict[str, dict[str, list[float]]] = {}
    timings: dict[str, float] = {}
    t0 = time.time()
    history["stage1"] = train_stage1(config, parts, cache, run_dir)
    timings["stage1_seconds"] = round(time.time() - t0, 1)
    if parts.top is not None or whole(config):
        t0 = time.time()
        history["stage2"] = train_stage2(config, parts, cache, run_dir)
        timings["stage2_seconds"] = round(time.time() - t0, 1)
    model = model_to_save(config, parts.model, gpu)
    timings["total_seconds"] = round(time.time() - started, 1)
    metrics = measure(config, parts.val, model, cache.val_images)
    metadata = outputs.run_metadata(settings(config), parts.train, parts.val, metrics, timings, gpu)
    write_outputs(config, run_dir, model, metadata, history, parts.val, metrics)
    return run_dir


def resolve(config: TrainConfig, gpu: bool) -> TrainConfig:
    """The run's config with `--fine-tune auto` made concrete: the whole backbone on photos
    augmented afresh where a GPU is seen (the graph runs there, in mixed precision), the cached
    views on a CPU (where that is many times faster), and with teachers or a TF-Hub backbone, which
    only the cached views can take; the run records which."""
    if config.fine_tune != "auto":
        return config
    cached_only = bool(config.teachers) or config.backbone.startswith(models.HUB_PREFIX)
    return dataclasses.replace(config, fine_tune="whole" if gpu and not cached_only else "cached")


def whole(config: TrainConfig) -> bool:
    """Whether stage 2 fine-tunes the whole backbone on photos augmented afresh."""
    return config.fine_tune == "whole" and config.stage2_epochs > 0


def check_options(config: TrainConfig) -> None:
    """The combinations of options that cannot work, refused before any work is done."""
    hub = config.backbone.startswith(models.HUB_PREFIX)
    if config.resume and not (config.run_dir and Path(config.run_dir).is_dir()):
        raise FlowerDemoError("--resume needs --run-dir pointing at an existing run folder")
    if config.run_dir and Path(config.run_dir).resolve() == model_files.SHIPPED_MODEL_DIR.resolve():
        raise FlowerDemoError("--run-dir must not be weights/; use --ship to publish a run")
    if hub and keras.config.backend() != "tensorflow":
        raise FlowerDemoError(
            f"TF-Hub backbones need Keras' TensorFlow backend (KERAS_BACKEND=tensorflow); this is "
            f"{keras.config.backend()}"
        )
    keras_only = "needs a keras.applications backbone; a TF-Hub module"
    if hub and (config.serve_size or config.image_size) != config.image_size:
        raise FlowerDemoError(f"--serve-size {keras_only} has its own size")
    if hub and whole(config):
        raise FlowerDemoError(f"--fine-tune whole {keras_only} stays frozen")
    if whole(config) and config.teachers:
        raise FlowerDemoError("--teachers needs --fine-tune cached: the soft targets are cached per view")
    if config.teachers:
        distill.check_distill(config.distill)
    if config.ship and config.no_export:
        raise FlowerDemoError("--ship needs the model.tflite that --no-export leaves out")


def prepare(config: TrainConfig) -> Prepared:
    """The data, the teachers, the model and its two parts (the cut is --fine-tune-from's, or the
    backbone registry's; none without a cached stage 2)."""
    train, val = load_splits(config)
    names = train.class_names
    teacher = distill.load_teachers(config.teachers, names, config.image_size) if config.teachers else None
    weights = None if config.weights in ("none", "None", "") else config.weights
    model = models.create_model(config.backbone, len(names), config.image_size, weights, config.dropout)
    fine_tune_from = None  # with --fine-tune whole, stage 1 caches the whole frozen backbone's features
    if config.stage2_epochs > 0 and not whole(config) and not config.backbone.startswith(models.HUB_PREFIX):
        fine_tune_from = models.fine_tune_cut(config.backbone, config.fine_tune_from)
    bottom, top = stages.split_model(model, config.backbone, fine_tune_from)
    return Prepared(train, val, model, bottom, top, fine_tune_from, teacher)


def start_folder(config: TrainConfig, run_dir: Path, gpu: bool, spread: str = "") -> None:
    """The run folder with the run's settings (its config) and a README.txt saying what is in it;
    the start-up line names the device (and `spread`, the devices of a data-parallel run)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "settings.json").write_text(json.dumps(settings(config), indent=2))
    fate = "kept (--keep-cache)" if config.keep_cache else "deleted after a successful run (--drop-cache)"
    (run_dir / "README.txt").write_text(outputs.RUN_README.format(cache_fate=fate))
    device = spread or ("GPU (mixed precision)" if gpu else "CPU")
    print(f"run folder: {run_dir}  device: {device}  backend: {keras.config.backend()}")


def cache_arrays(config: TrainConfig, parts: Prepared, folder: Path) -> Cache:
    """Decode the images and compute the bottom's activations of each view (and the teachers'
    probabilities of them), or load them from `folder` when they were made with the same key."""
    train, val, size = parts.train, parts.val, config.image_size
    # Everything the cached arrays depend on, so a changed setting never reuses a stale cache.
    key = caching.cache_key(
        config.backbone, config.weights, size, parts.fine_tune_from, config.views, config.seed,
        train.source, val and val.source, len(train), len(val or []), config.teachers,
    )  # fmt: skip
    augmenter = data.make_augmenter(config.seed)
    steps = caching.activation_steps(parts.bottom, augmenter)
    print("decoding images into memory")
    images = caching.cached(folder / "train_images.npy", key, lambda: data.decode_all(train.items, size))
    decode_val = lambda: data.decode_all(val.items, size)
    val_images = caching.cached(folder / "val_images.npy", key, decode_val) if val else None
    print(f"computing frozen activations of {config.views} views per training image")

    def train_views() -> np.ndarray:  # the teachers' soft targets are saved first, beside the views
        teacher = parts.teacher
        acts, soft = caching.cache_activations(parts.bottom, steps, images, config.views, teacher=teacher)
        if soft is not None:
            caching.save_cached(folder / "train_soft.npy", key, soft)
        return acts

    acts = caching.cached(folder / "train_acts.npy", key, train_views)
    soft = np.load(folder / "train_soft.npy", mmap_mode="r") if parts.teacher else None
    val_views = lambda: caching.cache_activations(parts.bottom, steps, val_images, 1)[0]
    val_acts = caching.cached(folder / "val_acts.npy", key, val_views)[0] if val else None
    return Cache(folder, key, images, val_images, acts, val_acts, soft, augmenter)


def validation(parts: Prepared, inputs: np.ndarray | None) -> tuple[np.ndarray, np.ndarray] | None:
    return None if parts.val is None else (inputs, parts.one_hot(parts.val.labels))


def train_stage1(config: TrainConfig, parts: Prepared, cache: Cache, run_dir: Path) -> dict[str, list[float]]:
    """The head alone, on pooled features (the top, still frozen, is run once here and cached)."""
    feats, val_feats = cache.acts, cache.val_acts
    if parts.top is not None:
        all_views = lambda: np.stack([caching.pooled_features(parts.top, view) for view in cache.acts])
        feats = caching.cached(cache.folder / "train_feats.npy", cache.key, all_views)
        if parts.val:
            val_pooled = lambda: caching.pooled_features(parts.top, cache.val_acts)
            val_feats = caching.cached(cache.folder / "val_feats.npy", cache.key, val_pooled)
    head = stages.head_model(feats.shape[2:], parts.model)
    targets = distill.blend(parts.one_hot(parts.train.labels), cache.soft, config.distill)
    return stages.fit_stage(
        "stage1", head, feats, targets, validation(parts, val_feats),
        config.stage1_epochs, config.stage1_lr, config, run_dir,
    )  # fmt: skip


def train_stage2(config: TrainConfig, parts: Prepared, cache: Cache, run_dir: Path) -> dict[str, list[float]]:
    """The top of the backbone and the head on the cached activations; or with --fine-tune whole,
    every backbone layer and the head on the photos augmented afresh each epoch."""
    if parts.top is not None:
        tuned = stages.unfreeze(parts.top)
        print(f"stage 2: fine-tuning {tuned:,} backbone weights from {parts.fine_tune_from} up")
        trainable = stages.head_model(cache.acts.shape[2:], parts.model, parts.top)
        views, val_x = cache.acts, cache.val_acts
    else:
        tuned = stages.unfreeze(models.backbone_of(parts.model))
        print(f"stage 2: fine-tuning all {tuned:,} backbone weights")
        trainable = stages.augmented_model(parts.model, cache.augmenter)
        views, val_x = cache.images[None], cache.val_images
    targets = distill.blend(parts.one_hot(parts.train.labels), cache.soft, config.distill)
    return stages.fit_stage(
        "stage2", trainable, views, targets, validation(parts, val_x),
        config.stage2_epochs, config.stage2_lr, config, run_dir,
    )  # fmt: skip


def model_to_save(config: TrainConfig, model: keras.Model, gpu: bool) -> keras.Model:
    """The trained model in float32 (mixed precision is for training) at --serve-size."""
    serve_size = config.serve_size or config.image_size
    if not gpu and serve_size == config.image_size:
        return model
    keras.mixed_precision.set_global_policy("float32")
    classes = int(model.output_shape[-1])
    final = models.create_model(config.backbone, classes, serve_size, None, config.dropout)
    final.set_weights(model.get_weights())
    return final


def measure(
    config: TrainConfig, val: data.LabeledImages | None, model: keras.Model, val_images: np.ndarray | None
) -> dict[str, Any] | None:
    """The saved model's accuracy on the validation split, at the size it serves at."""
    serve_size = config.serve_size or config.image_size
    if val is None:
        return None
    if serve_size != config.image_size:
        val_images = data.decode_all(val.items, serve_size)
    return evaluate_model(models.compiled_forward(model), val_images, val.labels, serve_size)


def write_outputs(
    config: TrainConfig,
    run_dir: Path,
    model: keras.Model,
    metadata: dict[str, Any],
    history: dict[str, dict[str, list[float]]],
    val: data.LabeledImages | None,
    metrics: dict[str, Any] | None,
) -> None:
    """The model and its metadata, the curves, the validation report, model.tflite; then the
    cache is dropped (unless --keep-cache) and the run shipped (with --ship)."""
    timings = {k: v for k, v in metadata["training"].items() if k.endswith("_seconds")}
    if metrics:
        print(f"validation top-1 {metrics['top1']:.4f}  top-5 {metrics['top5']:.4f}  ({timings})")
    else:
        print(f"trained on {metadata['data']['train_size']} images with no validation split ({timings})")
    models.save_model(model, run_dir, metadata)
    (run_dir / "history.json").write_text(json.dumps(history, indent=2))
    outputs.plot_history(history, run_dir / "curves.png")
    if metrics and val and not config.no_report:
        title = f"Validation report: run {run_dir.name}"
        names = metadata["class_names"]
        page = report.write_report(
            run_dir / "report", metrics["probabilities"], val.labels, names, val.items, title, val.source
        )
        print(f"validation report: {page}")
    print(f"saved {run_dir / model_files.MODEL_FILE}")
    if config.no_export:  # never leave an earlier model.tflite beside the new model
        (run_dir / model_files.TFLITE_FILE).unlink(missing_ok=True)
        print(f"model.tflite not written (--no-export): python -m flower_demo.export --model {run_dir}")
    else:
        outputs.export_for_serving(run_dir)
    if not config.keep_cache:
        shutil.rmtree(run_dir / "cache", ignore_errors=True)
        print(f"deleted the cache {run_dir / 'cache'} (--keep-cache keeps it)")
    if config.ship:
        outputs.ship(run_dir)
