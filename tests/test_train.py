"""Training end to end on a tiny class-per-folder dataset: run folder, reload, predict, resume,
and what stage 2 may and may not change in the backbone."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
from pathlib import Path

import keras
import numpy as np
import pytest
from helpers import flowers102_folder, make_class_tree, run_module
from PIL import Image

from flower_demo import data, model_files, models, train
from flower_demo.core import Classifier, predict
from flower_demo.evaluate import evaluate_model

COLOURS = {"sun_flower": (240, 220, 30), "blue?bell": (30, 60, 220), "red rose": (220, 30, 40)}
NAMES = ["bluebell", "red rose", "sun flower"]  # sorted by folder name, cleaned
SIZE = 32
SERVE_SIZE = 48  # --serve-size: the saved model's input, larger than the training one


@pytest.fixture(scope="module")
def image_tree(tmp_path_factory) -> Path:
    return make_class_tree(tmp_path_factory.mktemp("data") / "flowers", COLOURS, per_class=6, size=40)


def train_args(tree: Path, weights: Path, run_dir: Path, stage1: int, stage2: int, views: int = 2):
    return [
        "--image-folder", str(tree), "--backbone", "mobilenet_v2", "--weights", str(weights),
        "--image-size", str(SIZE), "--views", str(views), "--batch-size", "8",
        "--stage1-epochs", str(stage1), "--stage2-epochs", str(stage2), "--run-dir", str(run_dir),
    ]  # fmt: skip


def shipped_state() -> dict[str, tuple[int, int]]:
    """Size and modification time of everything `--ship` would write."""
    paths = [*sorted(model_files.SHIPPED_MODEL_DIR.glob("*")), model_files.SHIPPED_LABEL_MAP]
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in paths if p.exists()}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, image_tree, mobilenet_weights):
    """One two-stage run, 2 + 2 epochs; returns (exit code, run folder, printed output)."""
    run_dir = tmp_path_factory.mktemp("runs") / "run"
    before = shipped_state()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = train.main(train_args(image_tree, mobilenet_weights, run_dir, 2, 2))
    assert shipped_state() == before, "training without --ship modified weights/ or label_map.json"
    return code, run_dir, out.getvalue()


def test_run_folder(trained_run, image_tree, mobilenet_weights):
    code, run_dir, output = trained_run
    assert code == 0, output
    for name in ("model.keras", "metadata.json", "history.json", "curves.png", "settings.json"):
        assert (run_dir / name).is_file(), name
    assert Image.open(run_dir / "curves.png").format == "PNG"

    metadata = json.loads((run_dir / "metadata.json").read_text())
    assert metadata["class_names"] == NAMES
    assert metadata["image_size"] == SIZE and metadata["backbone"] == "mobilenet_v2"
    assert metadata["backbone_weights"] == str(mobilenet_weights)
    assert metadata["data"]["train_size"] == 15 and metadata["data"]["validation_size"] == 3
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


def test_trained_model_reloads_and_predicts(trained_run, image_tree):
    from flower_demo import data
    from flower_demo.evaluate import evaluate_model

    _, run_dir, _ = trained_run
    classifier = Classifier(run_dir)  # the run exported model.tflite: LiteRT serves it
    assert classifier.engine.name == "litert" and (run_dir / "model.tflite").is_file()
    assert classifier.class_names == NAMES and classifier.image_size == SIZE
    image = next((image_tree / "red rose").glob("*.png"))
    prediction = predict(image, model=classifier, top_k=3)
    assert sorted(prediction.class_names) == NAMES
    assert sum(prediction.probabilities) == pytest.approx(1.0, abs=1e-5)

    # the saved model is the one that was measured: same validation split, same accuracy, with
    # either engine
    _, val = data.load_image_folder(image_tree, 0.2, seed=0)
    saved = json.loads((run_dir / "metadata.json").read_text())["metrics"]
    for served in (classifier, Classifier(run_dir, engine="keras")):
        metrics = evaluate_model(served.probabilities, val.items, val.labels, SIZE)
        assert metrics["top1"] == pytest.approx(saved["validation_top1"])


def kernel_changes(run_dir: Path, weights: Path) -> tuple[list[float], list[float]]:
    """How far stage 2 moved the backbone's convolution kernels, (below the registry's cut, above
    it); asserts first that BatchNorm stayed frozen (weights and moving statistics)."""
    model, _ = models.load_model(run_dir)
    tuned = models.backbone_of(model)
    start = models.create_backbone("mobilenet_v2", SIZE, str(weights))  # what training began with
    cut = [layer.name for layer in tuned.layers].index(models.BACKBONES["mobilenet_v2"].fine_tune_from)

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


def test_stage2_keeps_batchnorm_and_tunes_the_top(trained_run, mobilenet_weights):
    """BatchNorm stays frozen through fine-tuning; the convolutions above the cut change; those
    below it do not."""
    below, above = kernel_changes(trained_run[1], mobilenet_weights)
    assert max(below) == 0.0
    assert min(above) > MOVED, above


@pytest.mark.slow
def test_whole_fine_tune_trains_every_layer_but_batchnorm(tmp_path, image_tree, mobilenet_weights):
    """`--fine-tune whole`, run as users run it: every convolution changes (the stem too), BatchNorm
    stays frozen, stage 2 runs on photos augmented afresh (no cached cut), and the model serves."""
    run_dir = tmp_path / "whole"
    args = train_args(image_tree, mobilenet_weights, run_dir, 1, 2)
    result = run_module("flower_demo.train", *args, "--fine-tune", "whole", "--keep-cache")
    assert result.returncode == 0, result.stderr
    assert "stage 2: fine-tuning all" in result.stdout
    below, above = kernel_changes(run_dir, mobilenet_weights)
    assert min(below + above) > MOVED, (below, above)
    assert len(json.loads((run_dir / "history.json").read_text())["stage2"]["loss"]) == 2
    cached = np.load(run_dir / "cache" / "train_acts.npy", mmap_mode="r")
    assert cached.shape[2:] == (1280,)  # stage 1 cached the pooled features, not a cut's activations
    assert predict(next(image_tree.rglob("*.png")), Classifier(run_dir)).class_names[0] in NAMES


def test_whole_fine_tune_needs_a_keras_backbone(tmp_path, image_tree, capsys):
    args = ["--image-folder", str(image_tree), "--backbone", "hub:/nowhere", "--fine-tune", "whole"]
    assert train.main([*args, "--run-dir", str(tmp_path / "run")]) == 1
    assert "needs a keras.applications backbone" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def constant_teacher(folder: Path, weights: Path, answer: int) -> Path:
    """A teacher with a known answer: class `answer` at about 99.9% for every photo (zero kernel,
    biased classifier), so a student that learns from it, and not from its labels, is easy to tell."""
    teacher = models.create_model("mobilenet_v2", len(NAMES), SIZE, str(weights))
    kernel, _ = teacher.get_layer("classifier").get_weights()
    bias = np.zeros(len(NAMES), "float32")
    bias[answer] = 8.0
    teacher.get_layer("classifier").set_weights([np.zeros_like(kernel), bias])
    models.save_model(teacher, folder, {"class_names": NAMES, "image_size": SIZE, "backbone": "mobilenet_v2"})
    return folder


@pytest.fixture(scope="module")
def bluebell_teacher(tmp_path_factory, mobilenet_weights) -> Path:
    return constant_teacher(tmp_path_factory.mktemp("bluebell"), mobilenet_weights, NAMES.index("bluebell"))


def test_teachers_are_averaged(tmp_path, bluebell_teacher, mobilenet_weights):
    rose = constant_teacher(tmp_path / "rose", mobilenet_weights, NAMES.index("red rose"))
    teach = train.load_teachers([str(bluebell_teacher), str(rose)], NAMES, SIZE)
    probabilities = teach(np.zeros((2, SIZE, SIZE, 3), "float32"))
    np.testing.assert_allclose(probabilities, [[0.4997, 0.4997, 0.0007]] * 2, atol=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("distill", [1.0, 0.0])
def test_distillation_learns_the_teachers_answers(
    tmp_path, bluebell_teacher, image_tree, mobilenet_weights, distill
):
    """--teachers RUN: the cached soft targets are the teacher's probabilities of the very views the
    student trains on; with --distill 1 the student learns the teacher's answer (bluebell for every
    photo), with --distill 0 its labels (three classes)."""
    run_dir = tmp_path / "student"
    args = train_args(image_tree, mobilenet_weights, run_dir, 60, 1)
    extra = ["--stage1-lr", "0.01", "--teachers", bluebell_teacher, "--distill", distill, "--keep-cache"]
    result = run_module("flower_demo.train", *args, *extra)
    assert result.returncode == 0, result.stderr

    soft = np.load(run_dir / "cache" / "train_soft.npy").astype("float32")
    assert soft.shape[::2] == (2, len(NAMES))  # --views 2: the photo and one augmented copy
    np.testing.assert_allclose(soft[..., 0], 0.9993, atol=1e-3)  # softmax([8, 0, 0])

    photos = sorted(image_tree.rglob("*.png"))
    said = [predict(p, Classifier(run_dir)).class_names[0] for p in photos]
    if distill:  # a student of its labels would say bluebell for a third of them
        assert said.count("bluebell") >= 0.9 * len(photos), said
    else:
        assert len(set(said)) > 1, said


def test_teachers_must_fit_the_run(tmp_path, bluebell_teacher, image_tree, mobilenet_weights, capsys):
    args = train_args(image_tree, mobilenet_weights, tmp_path / "run", 1, 0)
    assert train.main([*args, "--image-size", "48", "--teachers", str(bluebell_teacher)]) == 1
    assert "takes 32 px, this run 48 px" in capsys.readouterr().err
    whole = ["--stage2-epochs", "1", "--fine-tune", "whole"]
    assert train.main([*args, *whole, "--teachers", str(bluebell_teacher)]) == 1
    assert "--teachers needs --fine-tune cached" in capsys.readouterr().err
    assert train.main([*args, "--distill", "1.5", "--teachers", str(bluebell_teacher)]) == 1
    assert "--distill must be between 0 and 1" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_resume_needs_an_existing_run_dir(tmp_path, image_tree, mobilenet_weights, capsys):
    args = train_args(image_tree, mobilenet_weights, tmp_path / "absent", 1, 1)
    assert train.main([*args, "--resume"]) == 1
    assert "error: --resume needs --run-dir" in capsys.readouterr().err
    without_run_dir = args[: args.index("--run-dir")]
    assert train.main([*without_run_dir, "--resume"]) == 1
    assert "error: --resume needs --run-dir" in capsys.readouterr().err
    assert not (tmp_path / "absent").exists()


def test_run_dir_must_not_be_weights(image_tree, mobilenet_weights, capsys):
    before = shipped_state()
    args = train_args(image_tree, mobilenet_weights, model_files.SHIPPED_MODEL_DIR, 1, 1)
    assert train.main(args) == 1
    assert "must not be weights/" in capsys.readouterr().err
    assert shipped_state() == before


class SimulatedCrash(Exception):
    pass


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory, image_tree, mobilenet_weights):
    """A run that crashes after stage 2's first epoch (of 3), then the same command with --resume.

    Returns (run folder, output of the first run, output of the resumed run, cache mtimes of both).
    """
    run_dir = tmp_path_factory.mktemp("runs") / "crashed"
    args = [*train_args(image_tree, mobilenet_weights, run_dir, 1, 3, views=1), "--keep-cache"]
    real_early_stopping = keras.callbacks.EarlyStopping

    class CrashInStage2(real_early_stopping):  # train.fit_stage creates one per stage
        def on_epoch_end(self, epoch, logs=None):
            super().on_epoch_end(epoch, logs)
            if len(self.model.input_shape) == 4:  # stage 2 trains on cached activation maps
                raise SimulatedCrash(f"after epoch {epoch + 1}")

    first = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(first):
        patch.setattr(keras.callbacks, "EarlyStopping", CrashInStage2)
        with pytest.raises(SimulatedCrash, match="after epoch 1"):
            train.main(args)
    state = {
        "stage1_done": (run_dir / "stage1.done").is_file(),
        "stage2_done": (run_dir / "stage2.done").is_file(),
        "model": (run_dir / "model.keras").exists(),
        "backup": sorted(p.name for p in (run_dir / "checkpoints" / "stage2").glob("*")),
        "cache": {p.name: p.stat().st_mtime_ns for p in (run_dir / "cache").glob("*.npy")},
    }
    second = io.StringIO()
    with contextlib.redirect_stdout(second):
        code = train.main([*args, "--resume"])
    assert code == 0, second.getvalue()
    state["cache_after"] = {p.name: p.stat().st_mtime_ns for p in (run_dir / "cache").glob("*.npy")}
    return run_dir, first.getvalue(), second.getvalue(), state


def test_resume_after_a_crash(resumed_run):
    run_dir, first, second, state = resumed_run
    # the crash left stage 1 finished, stage 2 backed up after its first epoch, no model
    assert state["stage1_done"] and not state["stage2_done"] and not state["model"]
    assert state["backup"], "BackupAndRestore left no backup of the interrupted stage"
    assert "Epoch 1/3" in first and "Epoch 2/3" not in first

    assert "stage1: already finished, loading its best weights" in second
    assert "Epoch 1/3" not in second  # stage 2 continues where it stopped ...
    assert "Epoch 2/3" in second and "Epoch 3/3" in second  # ... up to its epoch count
    assert state["cache_after"] == state["cache"]  # decoded images and activations were reused
    assert (run_dir / "model.keras").is_file()
    assert any((run_dir / "checkpoints" / "stage2").glob("*"))  # kept, so a stage can be extended
    history = json.loads((run_dir / "history.json").read_text())
    assert len(history["stage1"]["loss"]) == 1


def test_resumed_history_keeps_epochs_before_the_crash(resumed_run):
    run_dir, _, _, _ = resumed_run
    history = json.loads((run_dir / "history.json").read_text())
    assert len(history["stage2"]["loss"]) == 3


def test_resume_extends_a_finished_stage(resumed_run, image_tree, mobilenet_weights):
    """--resume with a larger epoch count continues a finished stage instead of restarting it."""
    run_dir, _, _, _ = resumed_run
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = train.main(
            [*train_args(image_tree, mobilenet_weights, run_dir, 1, 4, views=1), "--resume", "--keep-cache"]
        )
    assert code == 0, out.getvalue()
    assert "stage1: already finished" in out.getvalue()
    assert "Epoch 4/4" in out.getvalue() and "Epoch 1/4" not in out.getvalue()
    history = json.loads((run_dir / "history.json").read_text())
    assert len(history["stage2"]["loss"]) == 4


# --- a newcomer's path: the quick recipe, errors, packaging ------------------------------------

QUICK_COLOURS = {
    "red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220),
    "yellow": (230, 220, 40), "purple": (150, 40, 180), "grey": (128, 128, 128),
}  # fmt: skip


@pytest.mark.slow
def test_quick_recipe_learns_tiny_data(tmp_path, mobilenet_weights):
    """--quick on 6 classes (chance 17%): well above chance, quiet, plain progress lines, no cache left."""
    tree = make_class_tree(tmp_path / "six", QUICK_COLOURS, per_class=10, size=40)
    run_dir = tmp_path / "run"
    result = run_module(
        "flower_demo.train", "--image-folder", tree, "--val-fraction", "0.3", "--quick",
        "--weights", mobilenet_weights, "--image-size", SIZE, "--batch-size", "8", "--run-dir", run_dir,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""  # no TensorFlow start-up notices, nothing else either
    assert "\x1b" not in result.stdout and "\b" not in result.stdout  # no live bars in a log
    assert "Epoch 1/30" in result.stdout  # early stopping may end it sooner
    assert "stage1: only 180 training steps" in result.stdout  # 42 images / 8 = 6 steps, 30 epochs
    assert "mixup off" in result.stdout

    metadata = json.loads((run_dir / "metadata.json").read_text())
    assert metadata["data"]["validation_size"] == 18
    assert metadata["training"]["preset"] == "quick" and metadata["training"]["stage2_epochs"] == 0
    assert metadata["metrics"]["validation_top1"] >= 0.5, metadata["metrics"]  # 3x chance; measured 0.67
    assert set(json.loads((run_dir / "history.json").read_text())) == {"stage1"}
    assert not (run_dir / "cache").exists()  # --drop-cache is the default
    assert "cache/" in (run_dir / "README.txt").read_text()


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
    commands name real functions."""
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
    }
    for names in files.values():
        lines = (model_files.REPO_ROOT / names[0]).read_text().splitlines()
        requirements = [line for line in lines if line.strip() and not line.startswith("#")]
        assert requirements and all("==" in line and not line.startswith("-") for line in requirements)
    assert "dependencies" not in config["project"]  # no second list of pins
    scripts = config["project"]["scripts"]
    assert set(scripts) == {"flower-predict", "flower-train", "flower-evaluate"}
    for target in scripts.values():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function))
    assert "Apache License" in (model_files.REPO_ROOT / "LICENSE").read_text()


# --- training on chosen official splits (the final model: train + validation) ----------------


@pytest.mark.slow
def test_final_model_trains_on_the_union_for_fixed_epochs(tmp_path, mobilenet_weights):
    """--train-splits train,validation --val-split none: the union of the splits, every epoch run,
    the last weights kept, and no validation figure claimed."""
    data_dir = flowers102_folder(tmp_path / "flowers102")  # 8 train + 8 validation photos
    run_dir = tmp_path / "final"
    result = run_module(
        "flower_demo.train", "--data-dir", data_dir, "--weights", mobilenet_weights, "--image-size", SIZE,
        "--views", "1", "--batch-size", "8", "--stage1-epochs", "3", "--stage2-epochs", "2",
        "--patience", "1", "--train-splits", "train,validation", "--val-split", "none", "--run-dir", run_dir,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "trained on 16 images with no validation split" in result.stdout
    metadata = json.loads((run_dir / "metadata.json").read_text())
    assert metadata["data"]["train_size"] == 16 and metadata["data"]["validation_size"] == 0
    assert metadata["data"]["train_source"].endswith(
        ":train+flowers102-folder:" + str(data_dir) + ":validation"
    )
    assert metadata["metrics"] == {}  # nothing measured on data it trained on
    history = json.loads((run_dir / "history.json").read_text())
    assert [len(history[s]["loss"]) for s in ("stage1", "stage2")] == [3, 2]  # no early stopping
    assert not (run_dir / "report").exists() and (run_dir / "model.tflite").is_file()


@pytest.mark.slow
def test_second_fold_scores_without_choosing(tmp_path, mobilenet_weights):
    """Train on validation, score on train, with --fixed-epochs: the figure is an estimate (nothing
    was chosen on the scored split), and the metadata says so. With --serve-size the saved model
    (Keras and LiteRT) takes the larger size, and its figure is measured there."""
    data_dir = flowers102_folder(tmp_path / "flowers102")
    run_dir = tmp_path / "fold2"
    result = run_module(
        "flower_demo.train", "--data-dir", data_dir, "--weights", mobilenet_weights, "--image-size", SIZE,
        "--serve-size", SERVE_SIZE, "--views", "1", "--batch-size", "8", "--stage1-epochs", "4",
        "--stage2-epochs", "0", "--patience", "1", "--train-splits", "validation", "--val-split", "train",
        "--fixed-epochs", "--run-dir", run_dir,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    metadata = json.loads((run_dir / "metadata.json").read_text())
    assert metadata["data"]["validation_size"] == 8 and metadata["metrics"]["chosen_on_validation"] is False
    assert len(json.loads((run_dir / "history.json").read_text())["stage1"]["loss"]) == 4
    assert metadata["image_size"] == SERVE_SIZE and metadata["training"]["image_size"] == SIZE
    for engine in ("litert", "keras"):
        classifier = Classifier(run_dir, engine=engine)
        assert classifier.image_size == SERVE_SIZE
    train = data.load_oxford_folder(data_dir, "train")
    served = evaluate_model(classifier.probabilities, train.items, train.labels, SERVE_SIZE)
    assert served["top1"] == pytest.approx(metadata["metrics"]["validation_top1"])
