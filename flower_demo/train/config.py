"""Every option of a training run, with its default, in one dataclass; the named recipes; and
reading a recipe back from a run folder or a model folder.

A run stores its `TrainConfig` as settings.json and in metadata.json ("training"), so the recipe
that made a model can be run again: `python -m flower_demo.train --config runs/x/settings.json`.
Like cli.py, it imports no Keras (the default input size is model_files'), so `--help` needs only
the serving requirements.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from flower_demo import model_files
from flower_demo.errors import FlowerDemoError, first_line

SOURCES = ("data_dir", "tfds", "image_folder")  # exactly one names the data
# Where a run goes and what is done with its result: not part of a recipe, never read from a file.
RUN_OPTIONS = ("run_dir", "devices", "resume", "keep_cache", "ship", "no_export", "no_report")
# settings.json keeps run_dir, as a record
NOT_SAVED = ("resume", "keep_cache", "ship", "no_export", "no_report")
SHORT_STAGE_STEPS = 200  # a stage this short gets a warning, and no mixup (it only slows learning there)

PRESETS: dict[str, dict[str, Any]] = {
    # The head alone on the photos as they are (1 view); figures in cli.QUICK_HELP and README.
    "quick": {"stage2_epochs": 0, "views": 1, "stage1_epochs": 30},
    # The recipe weights/ was trained with (README, "The shipped model"). The defaults are the same
    # on MobileNetV2, the previous shipped model's backbone (its ImageNet weights come with Keras).
    "shipped": {
        "backbone": "efficientnet_lite0",
        "image_size": 256,
        "views": 16,
        "stage2_epochs": 46,
        "fixed_epochs": True,
    },
}


@dataclasses.dataclass
class TrainConfig:
    """One training run's options, grouped as `--help` shows them; the help texts are in cli.py."""

    # data
    data_dir: str | None = None
    tfds: str | None = None
    image_folder: str | None = None
    tfds_dir: str | None = None
    val_fraction: float = 0.2
    max_per_class: int = 0
    # model
    backbone: str = "mobilenet_v2"
    weights: str = "imagenet"
    image_size: int = model_files.DEFAULT_IMAGE_SIZE
    serve_size: int | None = None
    dropout: float = 0.3
    # optimisation
    preset: str | None = None  # the PRESETS entry whose values this run took as defaults
    views: int = 16
    batch_size: int = 64
    label_smoothing: float = 0.1
    stage1_epochs: int = 15
    stage1_lr: float = 1e-3
    stage2_epochs: int = 46
    stage2_lr: float = 2e-4
    mixup: float = 0.2
    ema: float = 0.99
    weight_decay: float = 1e-4
    schedule: str = "constant"
    warmup_epochs: int = 0
    fine_tune: str = "auto"  # whole on a GPU, cached on a CPU (pipeline.resolve); a run records which
    fine_tune_from: str | None = None
    seed: int = 0
    # splits
    train_splits: str = "train"
    val_split: str = "validation"
    fixed_epochs: bool = False
    patience: int = 10
    # distillation
    teachers: list[str] | None = None
    distill: float = 0.5
    # run
    run_dir: str | None = None
    devices: int = 0  # data parallel over this many devices (JAX); 0: every visible GPU (devices.py)
    resume: bool = False
    keep_cache: bool = False
    ship: bool = False
    no_export: bool = False
    no_report: bool = False


DEFAULTS = TrainConfig()
OPTIONS = tuple(field.name for field in dataclasses.fields(TrainConfig))


def settings(config: TrainConfig) -> dict[str, Any]:
    """What a run folder stores of its config (settings.json, metadata's "training")."""
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in NOT_SAVED}


def read_recipe(path: str | os.PathLike) -> dict[str, Any]:
    """The options stored in a run's settings.json, or in a model's metadata.json (its "training"
    section; a model folder names its metadata.json). Keys that are not options (timings, the
    device, old names) and RUN_OPTIONS are left out."""
    path = Path(path)
    if path.is_dir():
        path = path / model_files.METADATA_FILE
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise FlowerDemoError(f"cannot read the config {path}: {first_line(exc)}") from None
    recipe = stored.get("training", stored) if isinstance(stored, dict) else None
    if not isinstance(recipe, dict):
        raise FlowerDemoError(f"{path} holds no training options")
    return {k: v for k, v in recipe.items() if k in OPTIONS and k not in RUN_OPTIONS}


def merge(recipe: dict[str, Any], given: dict[str, Any]) -> TrainConfig:
    """The config of a run: the defaults, then a stored `recipe` (--config), then the preset
    named on the command line, then the options given explicitly. A data source given replaces
    the recipe's; a preset stored in a recipe is a record only (its values are already there)."""
    if any(given.get(source) for source in SOURCES):
        recipe = {k: v for k, v in recipe.items() if k not in SOURCES}
    preset = PRESETS[given["preset"]] if given.get("preset") else {}
    return TrainConfig(**{**recipe, **preset, **given})
