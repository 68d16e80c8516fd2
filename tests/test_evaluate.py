"""`evaluate`: what it prints (figures, per-class accuracy, the confusion matrix); several models as
one ensemble, their served probabilities averaged with each model decoding at its own input size;
a one-line error when the models name different classes. The command runs as users run it, in a
separate process, in test_report (`evaluate --report`) and test_readme."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import TINY_CLASSES, TINY_SIZE, error_lines, save_tiny_model
from PIL import Image

from flower_demo import FlowerDemoError

OTHER_SIZE = TINY_SIZE + 16  # the second model decodes the photos at another size


@pytest.fixture(scope="module")
def second_model(tmp_path_factory, mobilenet_weights: Path) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("second"), mobilenet_weights, OTHER_SIZE, TINY_CLASSES, 11)


@pytest.fixture(scope="module")
def second_classifier(second_model: Path):
    """The second model as `evaluate --model` opens it: on Keras, as it has no model.tflite."""
    from flower_demo.core import Classifier

    return Classifier(second_model)


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
    assert set(summary) == {"top1", "top5", "n", "expected"}
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


def test_models_naming_other_classes_are_refused(
    tmp_path: Path,
    tiny_model_dir: Path,
    tiny_classifier,
    mobilenet_weights: Path,
    tiny_class_tree: Path,
    capsys,
) -> None:
    from flower_demo.core import Classifier
    from flower_demo.evaluate import ensemble_probabilities
    from flower_demo.evaluate import main as evaluate_main

    reordered = save_tiny_model(tmp_path / "reordered", mobilenet_weights, TINY_SIZE, TINY_CLASSES[::-1], 3)
    with pytest.raises(FlowerDemoError, match="name different classes"):
        ensemble_probabilities([tiny_classifier, Classifier(reordered)], [])
    args = ["--model", str(tiny_model_dir), str(reordered), "--image-folder", str(tiny_class_tree)]
    assert evaluate_main(args) == 1
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and "name different classes" in errors[0]
