"""What a run leaves behind besides the model: the folder's README.txt, the learning curves, the
metadata's description of the run, model.tflite, and `ship`, the copy into weights/."""

from __future__ import annotations

import datetime
import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from flower_demo import model_files, models  # noqa: F401  first: it keeps TensorFlow's start-up notices off the terminal

# isort: split
import keras

from flower_demo import data
from flower_demo.errors import FlowerDemoError

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
    """metadata.json's description of the run (models.save_model adds the format version)."""
    return {
        "class_names": train.class_names,
        "image_size": settings["serve_size"] or settings["image_size"],
        "backbone": settings["backbone"],
        "backbone_weights": settings["weights"],
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
            "chosen_on_validation": not settings["fixed_epochs"],
        }
        if metrics
        else {},
        "training": {**settings, **timings, "device": "GPU" if gpu else "CPU"},
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "versions": {"keras": keras.__version__, "backend": keras.config.backend()},
    }


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
    if model_files.INSTALLED:  # a checkout's weights/, never the installed package's own copy
        raise FlowerDemoError(
            f"--ship replaces a checkout's weights/ and label_map.json, and this flower_demo is an "
            f"installed package; serve the run with --model {run_dir}, or ship from a checkout"
        )
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
