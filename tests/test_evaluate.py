"""`evaluate`: what it prints (figures, per-class accuracy, the confusion matrix); several models as
one ensemble, their served probabilities averaged with each model decoding at its own input size;
classes matched by name (a model listing them in another order, or knowing one more, is scored
right; one lacking a class of the data is a one-line error); and the warning and the --json flag
when a model is scored on photos its metadata says it trained on. The command runs as users run
it, in a separate process, in test_report (`evaluate --report`) and test_readme. The tests that
build models of their own (a few seconds each) are marked slow."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    TINY_CLASSES,
    TINY_SIZE,
    constant_model,
    error_lines,
    flowers102_folder,
    make_class_tree,
    metadata_only,
    save_tiny_model,
)
from PIL import Image

OTHER_SIZE = TINY_SIZE + 16  # the second model decodes the photos at another size
EXTRA = "delta flower"  # a class the tiny tree does not hold


@pytest.fixture(scope="module")
def second_model(tmp_path_factory, mobilenet_weights: Path) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("second"), mobilenet_weights, OTHER_SIZE, TINY_CLASSES, 11)


@pytest.fixture(scope="module")
def second_classifier(second_model: Path):
    """The second model as `evaluate --model` opens it: on Keras, as it has no model.tflite."""
    from flower_demo.core import Classifier

    return Classifier(second_model)


@pytest.mark.slow
def test_ensemble_is_the_mean_of_each_models_probabilities(
    tiny_keras_classifier, second_classifier, tiny_class_tree: Path
) -> None:
    from flower_demo import data
    from flower_demo.evaluate import ensemble_probabilities, predict_probabilities

    items = data.load_image_folder(tiny_class_tree)[1].items
    first, second = tiny_keras_classifier, second_classifier
    assert second.image_size != first.image_size
    alone = [predict_probabilities(c.probabilities, items, c.image_size) for c in (first, second)]
    assert not np.allclose(alone[0], alone[1], atol=1e-3)  # two different models, or the test proves nothing
    both = ensemble_probabilities([first, second], items)
    np.testing.assert_allclose(both, (alone[0] + alone[1]) / 2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(both.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_cli_measures_several_models_as_one(
    tiny_model_dir: Path,
    second_model: Path,
    tiny_class_tree: Path,
    tiny_classifier,
    second_classifier,
    capsys,
) -> None:
    """The first model runs on LiteRT (it has a model.tflite), the second on Keras (it has none)."""
    from flower_demo import data, metrics
    from flower_demo.evaluate import ensemble_probabilities
    from flower_demo.evaluate import main as evaluate_main

    args = ["--model", str(tiny_model_dir), str(second_model), "--image-folder", str(tiny_class_tree)]
    assert evaluate_main([*args, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    split = data.load_image_folder(tiny_class_tree)[1]
    classifiers = [tiny_classifier, second_classifier]
    assert second_classifier.engine.name == "keras"
    expected = metrics.score(ensemble_probabilities(classifiers, split.items), split.labels)
    assert set(summary) == {"top1", "top5", "n", "expected", "trained_on_scored"}
    assert summary["trained_on_scored"] is False  # a model with no training record is not suspected
    assert summary["n"] == summary["expected"] == len(split.labels) == 6
    assert summary["top1"] == pytest.approx(expected.top1)
    assert summary["top5"] == pytest.approx(expected.topk) == 1.0  # three classes: all in the top 5


def test_cli_prints_accuracy_per_class_and_saves_the_confusion_matrix(
    tiny_model_dir: Path, tiny_class_tree: Path, tiny_classifier, tmp_path: Path, capsys
) -> None:
    from flower_demo import data, metrics
    from flower_demo.evaluate import main as evaluate_main
    from flower_demo.evaluate import predict_probabilities

    picture = tmp_path / "cm.png"
    args = ["--model", str(tiny_model_dir), "--image-folder", str(tiny_class_tree)]
    assert evaluate_main([*args, "--confusion-matrix", str(picture)]) == 0
    lines = capsys.readouterr().out.splitlines()
    split = data.load_image_folder(tiny_class_tree)[1]
    probabilities = predict_probabilities(
        tiny_classifier.probabilities, split.items, tiny_classifier.image_size
    )
    scores = metrics.score(probabilities, split.labels)
    assert lines[0] == f"{split.source}: 6 of 6 images found"
    assert lines[1] == f"top-1 {scores.top1:.4f}   top-5 1.0000"
    assert lines[2] == "per-class accuracy:"
    shown = {line[10:]: line[:8].strip() for line in lines[3:6]}
    assert shown == {name: f"{acc:.1%}" for name, acc in zip(TINY_CLASSES, scores.per_class)}
    assert [float(value[:-1]) for value in shown.values()] == sorted(
        (float(value[:-1]) for value in shown.values()), reverse=True
    )  # best first
    assert lines[6:] == [f"confusion matrix saved to {picture}"]
    with Image.open(picture) as image:
        assert image.format == "PNG" and image.size == (1000, 1000)


@pytest.fixture(scope="module")
def superset_model(tmp_path_factory, mobilenet_weights: Path) -> Path:
    """The tiny tree's classes and one more, in another order, always answering beta flower."""
    names = [EXTRA, "gamma flower", "alpha flower", "beta flower"]
    return constant_model(tmp_path_factory.mktemp("superset"), mobilenet_weights, names, "beta flower")


def evaluate_json(capsys, *args: str) -> tuple[int, dict, list[str]]:
    """evaluate --json in this process: (exit code, the JSON it printed or {}, its stderr lines)."""
    from flower_demo.evaluate import main as evaluate_main

    code = evaluate_main([*args, "--json"])
    out, err = capsys.readouterr()
    return code, json.loads(out) if code == 0 else {}, err.splitlines()


@pytest.mark.slow
def test_classes_are_matched_by_name_in_another_order_and_with_one_more(
    superset_model: Path, tiny_class_tree: Path, capsys
) -> None:
    """The model lists the tree's classes in another order, after one the tree lacks, and answers
    beta flower for every photo: right for the two beta photos of six, whatever their positions."""
    from flower_demo.evaluate import main as evaluate_main

    args = ["--model", str(superset_model), "--image-folder", str(tiny_class_tree)]
    code, summary, _ = evaluate_json(capsys, *args)
    assert code == 0
    assert (summary["n"], summary["top1"], summary["top5"]) == (6, pytest.approx(2 / 6), 1.0)
    assert evaluate_main(args) == 0
    table = capsys.readouterr().out.splitlines()[3:7]
    assert table == [
        f"     -   {EXTRA}",  # no photos: shown first, as -
        "  100.0%  beta flower",
        "    0.0%  gamma flower",
        "    0.0%  alpha flower",
    ]


@pytest.mark.slow
def test_an_answer_naming_a_class_the_data_lacks_is_wrong(
    tmp_path: Path, mobilenet_weights, tiny_class_tree, capsys
):
    names = ["alpha flower", EXTRA, "beta flower", "gamma flower"]
    extra = constant_model(tmp_path / "extra", mobilenet_weights, names, EXTRA)
    code, summary, _ = evaluate_json(capsys, "--model", str(extra), "--image-folder", str(tiny_class_tree))
    assert code == 0 and summary["top1"] == 0.0 and summary["n"] == 6


@pytest.mark.slow
def test_an_ensemble_in_two_orders_is_averaged_by_name(
    tmp_path: Path, tiny_keras_classifier, mobilenet_weights: Path, tiny_class_tree: Path
) -> None:
    """The same network saved with its class names reversed is another model; averaged with the
    first, each model's columns go where their names say."""
    from flower_demo import data
    from flower_demo.core import Classifier
    from flower_demo.evaluate import ensemble_probabilities, predict_probabilities

    reordered = Classifier(
        save_tiny_model(tmp_path / "reordered", mobilenet_weights, TINY_SIZE, TINY_CLASSES[::-1], 3)
    )
    items = data.load_image_folder(tiny_class_tree)[1].items
    first, second = (
        predict_probabilities(c.probabilities, items, TINY_SIZE) for c in (tiny_keras_classifier, reordered)
    )
    both = ensemble_probabilities([tiny_keras_classifier, reordered], items)
    np.testing.assert_allclose(both, (first + second[:, ::-1]) / 2, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_a_class_the_model_lacks_is_one_line(
    tmp_path: Path, tiny_model_dir: Path, superset_model: Path, tiny_class_tree: Path, capsys
) -> None:
    """Data holding a class the model does not know, and an ensemble whose models name different
    classes: one error line naming the first such class, said from the models' metadata before any
    model loads (a folder holding only its metadata.json gets the same line)."""
    from flower_demo.evaluate import main as evaluate_main

    colours = {"alpha flower": (220, 40, 40), "epsilon flower": (200, 200, 40)}
    other_tree = make_class_tree(tmp_path / "tree", colours, per_class=5, size=TINY_SIZE)
    metadata_alone = metadata_only(superset_model, tmp_path / "metadata_only")
    expected = {
        (
            (superset_model,),
            other_tree,
        ): f"the data has a class 'epsilon flower' that model {superset_model} does",
        ((tiny_model_dir, superset_model), tiny_class_tree): f"has a class '{EXTRA}' that model ",
        ((metadata_alone,), other_tree): (
            f"the data has a class 'epsilon flower' that model {metadata_alone} does"
        ),
        ((tiny_model_dir, metadata_alone), tiny_class_tree): f"has a class '{EXTRA}' that model ",
    }
    for (models, tree), message in expected.items():
        assert evaluate_main(["--model", *map(str, models), "--image-folder", str(tree)]) == 1
        errors = error_lines(capsys.readouterr().err)
        assert len(errors) == 1 and message in errors[0], errors


# --- a model scored on photos it trained on --------------------------------------------------


def scored(**given: str) -> argparse.Namespace:
    """evaluate's arguments that name the data: one of data_dir, tfds, image_folder, and a split."""
    return argparse.Namespace(
        **{"data_dir": None, "tfds": None, "image_folder": None, "split": "validation", **given}
    )


FINAL = {"data": {"dataset": "oxford_flowers102", "train_splits": ["train", "validation"]}}  # train writes
OLDER = {"training": {"data_dir": "D", "train_splits": "train"}}  # before that record: the options
TREE = {
    "data": {"dataset": "photos", "train_splits": ["train"]},
    "training": {"val_fraction": 0.2, "seed": 0},
}
TREE_CUT_OTHERWISE = {**TREE, "training": {"val_fraction": 0.2, "seed": 1}}


@pytest.mark.parametrize(
    ("metadata", "args", "trained"),
    [
        (FINAL, scored(data_dir="D"), True),
        (FINAL, scored(data_dir="D", split="test"), False),
        (FINAL, scored(tfds="oxford_flowers102", split="validation[:50%]"), True),  # the same photos
        (FINAL, scored(tfds="tf_flowers", split="train"), False),  # another data set
        (
            {"data": {"dataset": "tf_flowers", "train_splits": ["train[:80%]"]}},
            scored(tfds="tf_flowers", split="train"),
            True,
        ),
        (OLDER, scored(data_dir="E", split="train"), True),
        (OLDER, scored(data_dir="E"), False),
        (TREE, scored(image_folder="x/photos"), False),  # its validation part, cut as evaluate cuts it
        (TREE_CUT_OTHERWISE, scored(image_folder="x/photos"), True),
        (TREE_CUT_OTHERWISE, scored(image_folder="x/other"), False),
        ({}, scored(data_dir="D"), False),  # no record: not suspected
    ],
)
def test_trained_on_scored(metadata: dict, args: argparse.Namespace, trained: bool) -> None:
    from flower_demo.evaluate import trained_on_scored

    assert trained_on_scored(metadata, args) is trained


def test_the_shipped_model_on_its_own_training_split_is_flagged(
    shipped_model_dir: Path, tmp_path: Path, capsys
) -> None:
    """Flowers-102's layout of real photos (the fixture photos are both its validation and its test
    split here): the shipped model trained on validation, so scoring it there warns, in one line
    naming the split, and --json says so; on test it does not."""
    folder = str(flowers102_folder(tmp_path / "flowers"))
    code, summary, err = evaluate_json(capsys, "--model", str(shipped_model_dir), "--data-dir", folder)
    assert code == 0 and summary["trained_on_scored"] is True
    assert len(err) == 1 and err[0].startswith("warning: ") and "the validation split" in err[0], err
    code, summary, err = evaluate_json(
        capsys, "--model", str(shipped_model_dir), "--data-dir", folder, "--split", "test"
    )
    assert code == 0 and summary["trained_on_scored"] is False and err == []
