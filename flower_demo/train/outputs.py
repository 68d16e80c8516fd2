"""What a run leaves behind besides the model: the folder's README.txt, the learning curves, the
metadata's description of the run (what it was made of named and hashed, never located),
model.tflite, and `ship`, the copy into weights/."""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from flower_demo import model_files, models  # noqa: F401  first: it keeps TensorFlow's start-up notices off the terminal

# isort: split
import keras

from flower_demo import data, efficientnet_lite
from flower_demo.errors import FlowerDemoError

FLOWERS102 = "oxford_flowers102"  # the data set a Flowers-102 folder holds, by tensorflow_datasets' name
# Options that say where things sat on the training machine: settings.json keeps them (to run the
# recipe again there), metadata.json, which travels with the model, does not.
MACHINE_PATHS = ("data_dir", "image_folder", "tfds_dir", "run_dir")

RUN_README = """This folder is one run of `python -m flower_demo.train` (flower_demo).

model.keras, metadata.json   the trained model and what it is (classes, data, metrics, settings);
                             load it with --model THIS_FOLDER in predict, evaluate, calibrate, export
model.tflite                 the same model for LiteRT, what predict and the app run by default
report/                      where the model fails on the validation split (open report/index.html)
settings.json                the command's options: --config settings.json runs the recipe again
history.json, curves.png     per-epoch loss and accuracy of both stages
stage1_log.csv, stage2_log.csv, stage*_best.weights.h5, stage*.done, checkpoints/
                             per-epoch logs and checkpoints: --resume continues or extends the run
cache/                       decoded images and frozen activations (most of the disk); {cache_fate}
"""


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


def run_metadata(
    settings: dict[str, Any],
    train: data.LabeledImages,
    val: data.LabeledImages | None,
    metrics: dict[str, Any] | None,
    timings: dict[str, float],
    gpu: bool,
) -> dict[str, Any]:
    """metadata.json's description of the run (models.save_model adds the format version and the
    files' hashes). What it was made of is named, never located: the data set and its splits with
    a hash of their image ids, the pretrained weights by name and hash (see `training_record`)."""
    backbone_weights = weights_record(settings["weights"], settings["backbone"])
    name, location = dataset_of(settings)
    return {
        "class_names": train.class_names,
        "image_size": settings["serve_size"] or settings["image_size"],
        "backbone": settings["backbone"],
        "backbone_weights": backbone_weights,
        "data": {
            "dataset": name,
            **split_record("train", train, name, location),
            **split_record("validation", val, name, location),
        },
        # With --fixed-epochs (or no validation) nothing was chosen on the validation split, so its
        # figure is an estimate for data the run never saw; otherwise the best epoch was chosen on it.
        "metrics": {
            "validation_top1": metrics["top1"],
            "validation_top5": metrics["top5"],
            "chosen_on_validation": not settings["fixed_epochs"],
        }
        if metrics
        else {},
        "training": {
            **training_record(settings, backbone_weights["name"]),
            **timings,
            "device": "GPU" if gpu else "CPU",
        },
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "versions": {"keras": keras.__version__, "backend": keras.config.backend()},
    }


# --- provenance: names and hashes, not where things sat on the training machine --------------


def weights_record(weights: str, backbone: str = "") -> dict[str, str]:
    """The pretrained weights: "imagenet" (Keras' own download, or for EfficientNet-Lite the
    installed package's file, named with its package version and sha256) or "none", or a local
    file's base name and sha256."""
    if weights == "imagenet" and backbone in efficientnet_lite.VARIANTS:
        package = efficientnet_lite.VARIANTS[backbone].distribution
        file = efficientnet_lite.package_file(backbone)
        return {
            "name": weights,
            "package": f"{package}=={importlib.metadata.version(package)}",
            "file": file.name,
            "sha256": model_files.sha256_of(file),
        }
    if weights in ("imagenet", "none", "None", ""):
        return {"name": weights or "none"}
    return {"name": Path(weights).name, "sha256": model_files.sha256_of(Path(weights))}


def dataset_of(settings: dict[str, Any]) -> tuple[str, str | None]:
    """The data set's name (Flowers-102 in its own layout, a class-per-folder tree's folder name,
    a tensorflow_datasets name) and the folder its sources name, to be left out (None for tfds)."""
    if settings.get("data_dir"):
        return FLOWERS102, str(Path(settings["data_dir"]))
    if settings.get("image_folder"):
        folder = Path(settings["image_folder"])
        return folder.resolve().name, str(folder)
    return str(settings["tfds"]), None


def image_id(item: Any) -> str:
    """An image's id in a split: its file's folder and name (jpg/image_00001.jpg, CLASS/x.png), or
    the sha256 of an encoded image held in memory (tensorflow_datasets)."""
    if isinstance(item, (bytes, bytearray)):
        return hashlib.sha256(item).hexdigest()
    path = Path(item)
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


def split_record(part: str, images: data.LabeledImages | None, name: str, location: str | None) -> dict:
    """One part of the run's data (train or validation): its source with the data set's name where
    its folder was, the official splits it joins, its image count and the sha256 of its sorted ids."""
    if images is None:
        return {f"{part}_source": None, f"{part}_splits": [], f"{part}_size": 0, f"{part}_ids_sha256": None}
    source = images.source.replace(f":{location}:", f":{name}:") if location else images.source
    ids = "\n".join(sorted(image_id(item) for item in images.items))
    return {
        f"{part}_source": source,
        f"{part}_splits": [piece.rsplit(":", 1)[-1] for piece in source.split("+")],
        f"{part}_size": len(images),
        f"{part}_ids_sha256": hashlib.sha256(ids.encode()).hexdigest(),
    }


def training_record(settings: dict[str, Any], weights_name: str) -> dict[str, Any]:
    """The run's options as metadata.json keeps them: settings.json's, less where things sat
    (MACHINE_PATHS; the run folder and the teachers by name, the weights as in `weights_record`).
    `--config` reruns it with the data source (and a weights file) given again."""
    record = {key: value for key, value in settings.items() if key not in MACHINE_PATHS}
    record["weights"] = weights_name
    if settings.get("teachers"):
        record["teachers"] = [Path(teacher).name for teacher in settings["teachers"]]
    if settings.get("run_dir"):
        record["run"] = Path(settings["run_dir"]).name
    return record


def export_for_serving(run_dir: Path) -> Path | None:
    """Write the run's model.tflite, what the serving core runs by default. TFLite conversion needs
    Keras' TensorFlow backend: a run on another backend (JAX) converts its model.keras, which every
    backend reads, in a process of its own on TensorFlow; where TensorFlow is missing, or that
    fails, it says so in one line and the run stays servable by the Keras engine."""
    if importlib.util.find_spec("tensorflow") is None:
        print("note: TensorFlow is not installed, so no model.tflite was written; run "
              f"`python -m flower_demo.export --model {run_dir}` where it is")  # fmt: skip
        return None
    if keras.config.backend() != "tensorflow":
        return export_on_tensorflow(run_dir)
    from flower_demo.export import export_tflite

    target = export_tflite(run_dir)
    print(f"saved {target}")
    return target


def export_on_tensorflow(run_dir: Path) -> Path | None:
    """`python -m flower_demo.export --model RUN` with KERAS_BACKEND=tensorflow, for a run trained
    on another backend; its output lines are passed on, a failure is one note."""
    print(f"converting to model.tflite on Keras' TensorFlow backend (TFLite needs it; this run: "
          f"{keras.config.backend()})")  # fmt: skip
    command = [sys.executable, "-m", "flower_demo.export", "--model", str(run_dir)]
    tensorflow = {**os.environ, "KERAS_BACKEND": "tensorflow"}
    done = subprocess.run(command, env=tensorflow, capture_output=True, text=True)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"note: no model.tflite was written ({reason}); the Keras engine serves model.keras")
        return None
    print(done.stdout.strip())
    return run_dir / model_files.TFLITE_FILE


def ship(run_dir: Path) -> None:
    """Copy the run's model into weights/ and write the matching label_map.json. The run's files
    are checked against its metadata, copied beside their places and renamed into them, the
    metadata last (model_files.Staged): an interrupted ship never serves a mix of two models."""
    if model_files.INSTALLED:  # a checkout's weights/, never the installed package's own copy
        raise FlowerDemoError(
            f"--ship replaces a checkout's weights/ and label_map.json, and this flower_demo is an "
            f"installed package; serve the run with --model {run_dir}, or ship from a checkout"
        )
    metadata = model_files.read_metadata(run_dir)
    files = (model_files.MODEL_FILE, model_files.TFLITE_FILE, model_files.OOD_FILE)
    with model_files.Staged(model_files.SHIPPED_MODEL_DIR) as staged:
        for name in files:
            if (run_dir / name).is_file():
                model_files.verify_file(run_dir / name, metadata, remedy=f"{run_dir} mixes two models")
                shutil.copy2(run_dir / name, staged.path(name))
        absent = [name for name in files if not (run_dir / name).is_file()]  # none of the old model's
        staged.publish(metadata, removed=absent)
    names = model_files.read_metadata(run_dir)["class_names"]
    label_map = model_files.label_map_from_names(names)
    model_files.SHIPPED_LABEL_MAP.write_text(json.dumps(label_map, indent=2) + "\n")
    print(f"shipped into {model_files.SHIPPED_MODEL_DIR} and {model_files.SHIPPED_LABEL_MAP}")
