"""Whole training runs on tiny class-per-folder data: the folder of the shared run (conftest's
trained_run), reloading and serving it, what stage 2 may and may not change in the backbone; runs
of their own (slow): resuming after a crash, the quick recipe, distillation and its teachers (built
here: slow too); the whole-backbone mode on README's own run of it (conftest's readme_group); the
errors found before any work, as users meet them. Each part on its own, with no whole run:
test_train_parts.py."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import readme_runs
from helpers import TINY_CLASSES, TINY_SIZE, constant_model, make_class_tree, metadata_only, run_module
from PIL import Image

from flower_demo import data, model_files, models, train
from flower_demo.core import Classifier, predict
from flower_demo.evaluate import evaluate_model
from flower_demo.train import distill

NAMES = TINY_CLASSES
SIZE = TINY_SIZE
SERVE_SIZE = TINY_SIZE + 16  # trained_run's --serve-size: the saved model's input, larger than training's


def train_args(tree: Path, weights: Path, run_dir: Path, stage1: int, stage2: int, views: int = 2):
    return [
        "--image-folder", str(tree), "--backbone", "mobilenet_v2", "--weights", str(weights),
        "--image-size", str(SIZE), "--views", str(views), "--batch-size", "8",
        "--stage1-epochs", str(stage1), "--stage2-epochs", str(stage2), "--run-dir", str(run_dir),
    ]  # fmt: skip


def quietly(argv: list) -> tuple[int, str]:
    """train.main in this process, with what it prints."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = train.main([str(a) for a in argv])
    return code, printed.getvalue()


# --- the shared run --------------------------------------------------------------------------


@pytest.mark.slow
def test_run_folder(trained_run, tiny_class_tree, mobilenet_weights):
    run_dir, output = trained_run.run_dir, trained_run.output
    for name in ("model.keras", "metadata.json", "history.json", "curves.png", "settings.json"):
        assert (run_dir / name).is_file(), name
    assert not (run_dir / "model.tflite").exists() and "model.tflite not written (--no-export)" in output
    assert Image.open(run_dir / "curves.png").format == "PNG"
    assert not (run_dir / "cache").exists() and "cache/" in (run_dir / "README.txt").read_text()

    metadata = json.loads((run_dir / "metadata.json").read_text())
    assert metadata["class_names"] == NAMES
    assert metadata["image_size"] == SERVE_SIZE and metadata["training"]["image_size"] == SIZE
    assert metadata["backbone"] == "mobilenet_v2"
    assert mobilenet_weights.name in json.dumps(metadata["backbone_weights"])  # named (with its hash)
    train_split, _ = data.load_image_folder(tiny_class_tree, 0.2, seed=0)
    assert metadata["data"]["train_size"] == len(train_split) and metadata["data"]["validation_size"] == 6
    assert set(metadata["metrics"]) == {"validation_top1", "validation_top5", "chosen_on_validation"}
    assert metadata["metrics"]["chosen_on_validation"] is True  # early stopping chose the epoch on it
    assert all(0.0 <= v <= 1.0 for v in metadata["metrics"].values())
    assert metadata["training"]["stage1_epochs"] == 2 and metadata["training"]["stage2_epochs"] == 2

    history = json.loads((run_dir / "history.json").read_text())
    assert set(history) == {"stage1", "stage2"}
    for record in history.values():
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert len(record[key]) == 2 and all(np.isfinite(record[key]))
    assert "stage 2: fine-tuning" in output


@pytest.mark.slow
def test_training_leaves_weights_alone(trained_run):
    """A run without --ship writes nothing into weights/ or label_map.json."""
    shipped = [*model_files.SHIPPED_MODEL_DIR.glob("*"), model_files.SHIPPED_LABEL_MAP]
    assert all(path.stat().st_mtime < trained_run.started for path in shipped if path.exists())


@pytest.mark.slow
def test_run_folder_reruns_its_recipe(trained_run):
    """settings.json is the run's config: --config gives it back; so does metadata.json's "training",
    with the data and the weights file given again (the metadata need not say where they were)."""
    made = train.parse_args(trained_run.args)
    where = trained_run.args[: trained_run.args.index("--image-size")]  # --image-folder, --weights
    for stored, given in (("settings.json", []), ("metadata.json", where)):
        rerun = train.parse_args(["--config", str(trained_run.run_dir / stored), *given])
        # run options stay out; --fine-tune auto is stored as what it was on this CPU
        assert rerun == dataclasses.replace(made, run_dir=None, no_export=False, fine_tune="cached")


def test_shipped_model_gives_back_its_recipe():
    """README's `train --config weights/metadata.json --data-dir DATA_DIR --weights imagenet`: the
    recipe of the final run in "The shipped model" (256 px, 16 views, 46 stage-2 epochs, train +
    validation, no validation split), with the data and weights given on the command line."""
    args = ["--config", str(model_files.SHIPPED_MODEL_DIR / "metadata.json"), "--data-dir", "DATA_DIR"]
    recipe = train.parse_args([*args, "--weights", "imagenet"])
    assert (recipe.image_size, recipe.views, recipe.stage2_epochs) == (256, 16, 46)
    assert (recipe.train_splits, recipe.val_split) == ("train,validation", "none")
    assert recipe.data_dir == "DATA_DIR"
    assert recipe.weights == "imagenet" and recipe.run_dir is None


@pytest.mark.slow
def test_trained_model_reloads_and_predicts(trained_run, tiny_class_tree):
    run_dir = trained_run.run_dir
    classifier = Classifier(run_dir)  # no model.tflite (--no-export): the Keras engine serves it
    assert classifier.engine.name == "keras"
    assert classifier.class_names == NAMES and classifier.image_size == SERVE_SIZE
    image = next((tiny_class_tree / NAMES[1]).glob("*.png"))
    prediction = predict(image, model=classifier, top_k=3)
    assert sorted(prediction.class_names) == NAMES
    assert sum(prediction.probabilities) == pytest.approx(1.0, abs=1e-5)

    # the saved model is the one that was measured: same validation split, same accuracy, at the
    # size it serves at (LiteRT too: test_resumed_run_exports_at_its_serving_size)
    _, val = data.load_image_folder(tiny_class_tree, 0.2, seed=0)
    saved = json.loads((run_dir / "metadata.json").read_text())["metrics"]
    metrics = evaluate_model(classifier.probabilities, val.items, val.labels, SERVE_SIZE)
    assert metrics["top1"] == pytest.approx(saved["validation_top1"])


def kernel_changes(run_dir: Path, weights: Path) -> tuple[list[float], list[float]]:
    """How far stage 2 moved the backbone's convolution kernels, (below the run's cut, above it):
    its --fine-tune-from, else the registry's; asserts first that BatchNorm stayed frozen (weights
    and moving statistics)."""
    model, metadata = models.load_model(run_dir)
    tuned = models.backbone_of(model)
    start = models.create_backbone("mobilenet_v2", SIZE, str(weights))  # what training began with
    name = models.fine_tune_cut("mobilenet_v2", metadata["training"]["fine_tune_from"])
    cut = [layer.name for layer in tuned.layers].index(name)

    norms = [layer for layer in tuned.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(norms) == 52
    for layer in norms:
        for got, initial in zip(layer.weights, start.get_layer(layer.name).weights, strict=True):
            np.testing.assert_array_equal(np.asarray(got), np.asarray(initial), err_msg=got.path)
    assert np.abs(np.asarray(norms[-1].moving_variance) - 1).max() > 0.01  # calibrated, not default

    convs = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)
    change = lambda layer: float(
        np.abs(np.asarray(layer.kernel) - np.asarray(start.get_layer(layer.name).kernel)).max()
    )
    below = [change(layer) for layer in tuned.layers[:cut] if isinstance(layer, convs)]
    above = [change(layer) for layer in tuned.layers[cut:] if isinstance(layer, convs)]
    assert below and above
    return below, above


# AdamW's weight decay alone moves a kernel by ~lr * 1e-4 * |w| < 1e-8; gradient steps by ~lr = 1e-4
MOVED = 1e-5


@pytest.mark.slow
def test_stage2_keeps_batchnorm_and_tunes_the_top(trained_run, mobilenet_weights):
    """BatchNorm stays frozen through fine-tuning; the convolutions above the cut change; those
    below it do not."""
    below, above = kernel_changes(trained_run.run_dir, mobilenet_weights)
    assert max(below) == 0.0
    assert min(above) > MOVED, above


# --- resume ----------------------------------------------------------------------------------


class SimulatedCrash(Exception):
    pass


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory, trained_run):
    """A copy of the shared run, extended to 4 stage-1 epochs with --resume, crashing after
    stage 1's third; then the same command again (which exports model.tflite).

    Returns (run folder, output of the crashed run, output of the resumed one, state after the crash).
    """
    run_dir = tmp_path_factory.mktemp("runs") / "resumed"
    shutil.copytree(trained_run.run_dir, run_dir)
    extend = ["--run-dir", run_dir, "--stage1-epochs", 4, "--resume", "--keep-cache", "--no-report"]
    args = [*(a for a in trained_run.args if a != "--no-export"), *extend]  # the last value of an option wins
    model_written = (run_dir / "model.keras").stat().st_mtime_ns

    class CrashInStage1(keras.callbacks.EarlyStopping):  # stages.fit_stage makes one per stage
        def on_epoch_end(self, epoch, logs=None):
            super().on_epoch_end(epoch, logs)
            if len(self.model.input_shape) == 2 and epoch + 1 == 3:  # stage 1 trains on pooled features
                raise SimulatedCrash(f"after epoch {epoch + 1}")

    first = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(first):
        patch.setattr(keras.callbacks, "EarlyStopping", CrashInStage1)
        with pytest.raises(SimulatedCrash, match="after epoch 3"):
            train.main([str(a) for a in args])
    state = {
        "stage1_done": (run_dir / "stage1.done").read_text(),
        "model_rewritten": (run_dir / "model.keras").stat().st_mtime_ns != model_written,
        "backup": sorted(p.name for p in (run_dir / "checkpoints" / "stage1").glob("*")),
        "cache": {p.name: p.stat().st_mtime_ns for p in (run_dir / "cache").glob("*.npy")},
    }
    code, second = quietly(args)
    assert code == 0, second
    state["cache_after"] = {p.name: p.stat().st_mtime_ns for p in (run_dir / "cache").glob("*.npy")}
    return run_dir, first.getvalue(), second, state


@pytest.mark.slow
def test_resume_after_a_crash(resumed_run):
    run_dir, first, second, state = resumed_run
    # the crash left stage 1 unfinished (done after its first 2 epochs), backed up, and no new model
    assert state["stage1_done"] == "2" and not state["model_rewritten"]
    assert state["backup"], "BackupAndRestore left no backup of the interrupted stage"
    assert "Epoch 3/4" in first and "Epoch 4/4" not in first

    assert "Epoch 3/4" not in second  # stage 1 continues where it stopped ...
    assert "Epoch 4/4" in second  # ... up to its epoch count
    assert "stage2: already finished, loading its best weights" in second
    assert state["cache"] and state["cache_after"] == state["cache"]  # decoded images and activations reused
    assert (run_dir / "model.keras").is_file() and (run_dir / "stage1.done").read_text() == "4"
    assert any((run_dir / "checkpoints" / "stage1").glob("*"))  # kept, so a stage can be extended


@pytest.mark.slow
def test_resume_extends_a_finished_stage(resumed_run):
    """--resume with a larger epoch count continues a finished stage instead of restarting it."""
    _, first, _, _ = resumed_run
    assert "Epoch 1/4" not in first and "Epoch 2/4" not in first and "Epoch 3/4" in first


@pytest.mark.slow
def test_resumed_history_keeps_epochs_before_the_crash(resumed_run):
    run_dir, _, _, _ = resumed_run
    history = json.loads((run_dir / "history.json").read_text())
    assert len(history["stage1"]["loss"]) == 4 and len(history["stage2"]["loss"]) == 2


@pytest.mark.slow
def test_resumed_run_exports_at_its_serving_size(resumed_run, tiny_class_tree):
    """The model.tflite of a run saved at --serve-size takes that size, and LiteRT gives the
    figure the run measured."""
    run_dir, _, _, _ = resumed_run
    classifier = Classifier(run_dir)
    assert classifier.engine.name == "litert" and classifier.image_size == SERVE_SIZE
    _, val = data.load_image_folder(tiny_class_tree, 0.2, seed=0)
    served = evaluate_model(classifier.probabilities, val.items, val.labels, SERVE_SIZE)
    saved = json.loads((run_dir / "metadata.json").read_text())["metrics"]
    assert served["top1"] == pytest.approx(saved["validation_top1"])


# --- the whole backbone, distillation --------------------------------------------------------


WHOLE_RUN = "--run-dir runs/w-fold1"  # README's `--fine-tune whole` command, run by conftest's readme_group


@pytest.mark.slow
def test_whole_fine_tune_trains_every_layer_but_batchnorm(readme_group, readme_scratch, mobilenet_weights):
    """`--fine-tune whole`, README's command as test_readme runs it (32 px, one epoch per stage, no
    report, on the test's Flowers-102 folder): every convolution changes (the stem too), BatchNorm
    stays frozen, and the model serves."""
    printed = readme_group(readme_runs.group_running(WHOLE_RUN))
    output = next(text for line, text in printed.items() if WHOLE_RUN in line)
    run_dir = readme_scratch["root"] / "runs" / "w-fold1"
    assert "stage 2: fine-tuning all" in output
    assert "validation report" not in output and not (run_dir / "report").exists()  # --no-report
    below, above = kernel_changes(run_dir, mobilenet_weights)
    assert min(below + above) > MOVED, (below, above)
    assert len(json.loads((run_dir / "history.json").read_text())["stage2"]["loss"]) == 1
    metadata = json.loads((run_dir / "metadata.json").read_text())
    assert metadata["training"]["fine_tune"] == "whole" and metadata["image_size"] == SIZE
    photo = next((readme_scratch["data"] / "jpg").glob("*.jpg"))
    assert predict(photo, Classifier(run_dir, engine="keras")).class_names[0] in metadata["class_names"]


@pytest.fixture(scope="module")
def first_class_teacher(tmp_path_factory, mobilenet_weights) -> Path:
    return constant_model(tmp_path_factory.mktemp("teacher"), mobilenet_weights, NAMES, NAMES[0])


@pytest.mark.slow
def test_teachers_are_averaged(tmp_path, first_class_teacher, mobilenet_weights):
    second = constant_model(tmp_path / "second", mobilenet_weights, NAMES, NAMES[1])
    teach = distill.load_teachers([str(first_class_teacher), str(second)], NAMES, SIZE)
    probabilities = teach(np.zeros((2, SIZE, SIZE, 3), "float32"))
    np.testing.assert_allclose(probabilities, [[0.4997, 0.4997, 0.0007]] * 2, atol=1e-3)


@pytest.mark.slow
def test_distillation_learns_the_teachers_answer(
    tmp_path, first_class_teacher, tiny_class_tree, mobilenet_weights
):
    """--teachers RUN --distill 1: the cached soft targets are the teacher's probabilities of the
    views the student trains on, and the student learns the teacher's answer (the first class for
    every photo) instead of its labels (three classes; --distill 0 is the labels alone:
    test_train_parts.test_targets_blend_labels_and_teachers)."""
    run_dir = tmp_path / "student"
    args = train_args(tiny_class_tree, mobilenet_weights, run_dir, 20, 0)
    # every epoch: the validation split's labels must not pick the student's epoch
    extra = ["--stage1-lr", "0.03", "--teachers", first_class_teacher, "--distill", "1", "--fixed-epochs"]
    extra += ["--keep-cache", "--no-export", "--no-report"]
    code, output = quietly([*args, *extra])
    assert code == 0, output

    soft = np.load(run_dir / "cache" / "train_soft.npy").astype("float32")
    assert soft.shape[::2] == (2, len(NAMES))  # --views 2: the photo and one augmented copy
    np.testing.assert_allclose(soft[..., 0], 0.9993, atol=1e-3)  # softmax([8, 0, 0])

    student = Classifier(run_dir, engine="keras")
    photos = sorted(tiny_class_tree.rglob("*.png"))
    said = [predict(p, student).class_names[0] for p in photos]
    assert said.count(NAMES[0]) >= 0.9 * len(photos), said  # a student of its labels: a third


# --- errors found before any work ------------------------------------------------------------


def test_whole_fine_tune_needs_a_keras_backbone(tmp_path, tiny_class_tree, capsys):
    args = ["--image-folder", str(tiny_class_tree), "--backbone", "hub:/nowhere", "--fine-tune", "whole"]
    assert train.main([*args, "--run-dir", str(tmp_path / "run")]) == 1
    assert "needs a keras.applications backbone" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_teachers_must_fit_the_run(tmp_path, first_class_teacher, tiny_class_tree, mobilenet_weights, capsys):
    args = train_args(tiny_class_tree, mobilenet_weights, tmp_path / "run", 1, 0)
    assert train.main([*args, "--image-size", "48", "--teachers", str(first_class_teacher)]) == 1
    assert "takes 32 px, this run 48 px" in capsys.readouterr().err
    # said from its metadata before any teacher loads: a folder of metadata alone gets the same line
    metadata_alone = metadata_only(first_class_teacher, tmp_path / "metadata_only")
    assert train.main([*args, "--image-size", "48", "--teachers", str(metadata_alone)]) == 1
    assert f"teacher {metadata_alone} takes 32 px, this run 48 px" in capsys.readouterr().err
    whole = ["--stage2-epochs", "1", "--fine-tune", "whole"]
    assert train.main([*args, *whole, "--teachers", str(first_class_teacher)]) == 1
    assert "--teachers needs --fine-tune cached" in capsys.readouterr().err
    assert train.main([*args, "--distill", "1.5", "--teachers", str(first_class_teacher)]) == 1
    assert "--distill must be between 0 and 1" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_resume_needs_an_existing_run_dir(tmp_path, tiny_class_tree, mobilenet_weights, capsys):
    args = train_args(tiny_class_tree, mobilenet_weights, tmp_path / "absent", 1, 1)
    assert train.main([*args, "--resume"]) == 1
    assert "error: --resume needs --run-dir" in capsys.readouterr().err
    without_run_dir = args[: args.index("--run-dir")]
    assert train.main([*without_run_dir, "--resume"]) == 1
    assert "error: --resume needs --run-dir" in capsys.readouterr().err
    assert not (tmp_path / "absent").exists()


def test_run_dir_must_not_be_weights(tmp_path, tiny_class_tree, mobilenet_weights, capsys):
    shipped = [*model_files.SHIPPED_MODEL_DIR.glob("*"), model_files.SHIPPED_LABEL_MAP]
    before = {p: p.stat().st_mtime_ns for p in shipped if p.exists()}
    args = train_args(tiny_class_tree, mobilenet_weights, model_files.SHIPPED_MODEL_DIR, 1, 1)
    assert train.main(args) == 1
    assert "must not be weights/" in capsys.readouterr().err
    assert train.main([*args[:-2], "--run-dir", str(tmp_path / "run"), "--ship", "--no-export"]) == 1
    assert "--ship needs the model.tflite" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in shipped if p.exists()} == before
    assert not (tmp_path / "run").exists()


# --- the commands as users run them -----------------------------------------------------------

QUICK_COLOURS = {
    "red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220),
    "yellow": (230, 220, 40), "purple": (150, 40, 180), "grey": (128, 128, 128),
}  # fmt: skip


@pytest.mark.slow
def test_quick_recipe_learns_tiny_data(tmp_path, mobilenet_weights):
    """--quick on 6 classes (chance 17%): well above chance, plain progress lines, no cache left.
    In this process and not exported: README's quick command runs as users run it (test_readme,
    which also checks that training writes nothing to stderr), and the resumed run here checks that
    LiteRT serves an exported run with the figure it measured."""
    tree = make_class_tree(tmp_path / "six", QUICK_COLOURS, per_class=10, size=40)
    run_dir = tmp_path / "run"
    code, output = quietly([
        "--image-folder", tree, "--val-fraction", "0.3", "--quick", "--weights", mobilenet_weights,
        "--image-size", SIZE, "--batch-size", "8", "--run-dir", run_dir, "--no-export", "--no-report",
    ])  # fmt: skip
    assert code == 0, output
    assert "\x1b" not in output and "\b" not in output  # no live bars in a log
    assert "Epoch 1/30" in output  # early stopping may end it sooner
    assert "stage1: only 180 training steps" in output  # 42 images / 8 = 6 steps, 30 epochs
    assert "mixup off" in output

    metadata = json.loads((run_dir / "metadata.json").read_text())
    assert metadata["data"]["validation_size"] == 18
    assert metadata["training"]["preset"] == "quick" and metadata["training"]["stage2_epochs"] == 0
    assert metadata["metrics"]["validation_top1"] >= 0.5, metadata["metrics"]  # 3x chance; measured 0.67
    assert set(json.loads((run_dir / "history.json").read_text())) == {"stage1"}
    assert not (run_dir / "cache").exists()  # --drop-cache is the default
    _, val = data.load_image_folder(tree, 0.3, seed=0)
    served = evaluate_model(Classifier(run_dir).probabilities, val.items, val.labels, SIZE)
    assert served["top1"] == pytest.approx(metadata["metrics"]["validation_top1"])


@pytest.mark.slow
@pytest.mark.parametrize("module", ["train", "evaluate"])
def test_missing_data_folder_is_reported_as_missing(tmp_path, module, tiny_model_dir):
    absent = tmp_path / "no_such_folder"
    args = ["--run-dir", tmp_path / "run"] if module == "train" else ["--model", tiny_model_dir]
    result = run_module(f"flower_demo.{module}", "--data-dir", absent, *args)
    assert result.returncode == 1
    assert result.stderr == f"error: data folder not found: {absent}\n"
    assert not (tmp_path / "run").exists()  # a failed start leaves no run folder behind


def test_package_metadata():
    """pyproject.toml: dependencies and extras come from the requirements files; the console
    commands name real functions; every package of flower_demo is installed."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project_file = model_files.REPO_ROOT / "pyproject.toml"
    config = tomllib.loads(project_file.read_text())
    dynamic = config["tool"]["setuptools"]["dynamic"]
    files = {
        "": dynamic["dependencies"]["file"],
        **{k: v["file"] for k, v in dynamic["optional-dependencies"].items()},
    }
    assert files == {
        "": ["requirements.txt"],
        "train": ["requirements-train.txt"],
        "test": ["requirements-test.txt"],
        "jax": ["requirements-jax.txt"],
    }
    for names in files.values():
        lines = (model_files.REPO_ROOT / names[0]).read_text().splitlines()
        requirements = [line for line in lines if line.strip() and not line.startswith("#")]
        assert requirements and all("==" in line and not line.startswith("-") for line in requirements)
    assert "dependencies" not in config["project"]  # no second list of pins
    scripts = config["project"]["scripts"]
    assert set(scripts) == {"flower-predict", "flower-train", "flower-evaluate"}
    # In a process of their own: imported here, the module flower_demo.predict would take the place
    # of the function flower_demo.predict for the rest of this test process.
    targets = [target.split(":") for target in scripts.values()]
    checks = [f"assert callable(importlib.import_module({m!r}).{f})" for m, f in targets]
    code = "\n".join(["import importlib", *checks])
    assert subprocess.run([sys.executable, "-c", code], cwd=model_files.REPO_ROOT).returncode == 0
    package = model_files.REPO_ROOT / "flower_demo"
    found = {".".join(p.parent.relative_to(package.parent).parts) for p in package.rglob("__init__.py")}
    assert found == set(config["tool"]["setuptools"]["packages"])
    assert "Apache License" in (model_files.REPO_ROOT / "LICENSE").read_text()
