"""`evaluate` with several models: one ensemble, their served probabilities averaged with each model
decoding at its own input size, and a one-line error when the models name different classes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import TINY_CLASSES, TINY_SIZE, error_lines, run_module, save_tiny_model

from flower_demo import FlowerDemoError

OTHER_SIZE = TINY_SIZE + 16  # the second model decodes the photos at another size


@pytest.fixture(scope="module")
def second_model(tmp_path_factory, mobilenet_weights: Path) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("second"), mobilenet_weights, OTHER_SIZE, TINY_CLASSES, 11)


def test_ensemble_is_the_mean_of_each_models_probabilities(
    tiny_model_dir: Path, second_model: Path, tiny_class_tree: Path
) -> None:
    from flower_demo import data
    from flower_demo.core import Classifier
    from flower_demo.evaluate import ensemble_probabilities, predict_probabilities

    items = data.load_image_folder(tiny_class_tree)[1].items
    first, second = Classifier(tiny_model_dir, engine="keras"), Classifier(second_model, engine="keras")
    assert second.image_size != first.image_size
    alone = [predict_probabilities(c.probabilities, items, c.image_size) for c in (first, second)]
    assert not np.allclose(alone[0], alone[1], atol=1e-3)  # two different models, or the test proves nothing
    both = ensemble_probabilities([first, second], items)
    np.testing.assert_allclose(both, (alone[0] + alone[1]) / 2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(both.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_cli_measures_several_models_as_one(
    tiny_model_dir: Path, second_model: Path, tiny_class_tree: Path
) -> None:
    from flower_demo import data
    from flower_demo.core import Classifier
    from flower_demo.evaluate import ensemble_probabilities, metrics_from

    result = run_module(
        "flower_demo.evaluate", "--model", tiny_model_dir, second_model, "--engine", "keras",
        "--image-folder", tiny_class_tree, "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    split = data.load_image_folder(tiny_class_tree)[1]
    classifiers = [Classifier(m, engine="keras") for m in (tiny_model_dir, second_model)]
    expected = metrics_from(ensemble_probabilities(classifiers, split.items), np.asarray(split.labels))
    summary = json.loads(result.stdout)
    assert summary["n"] == len(split.labels) == 6
    assert summary["top1"] == pytest.approx(expected["top1"])
    assert summary["top5"] == pytest.approx(expected["top5"])


def test_models_naming_other_classes_are_refused(
    tmp_path: Path, tiny_model_dir: Path, mobilenet_weights: Path, tiny_class_tree: Path, capsys
) -> None:
    from flower_demo.core import Classifier
    from flower_demo.evaluate import ensemble_probabilities
    from flower_demo.evaluate import main as evaluate_main

    reordered = save_tiny_model(tmp_path / "reordered", mobilenet_weights, TINY_SIZE, TINY_CLASSES[::-1], 3)
    with pytest.raises(FlowerDemoError, match="name different classes"):
        ensemble_probabilities([Classifier(tiny_model_dir), Classifier(reordered)], [])
    args = ["--model", str(tiny_model_dir), str(reordered), "--image-folder", str(tiny_class_tree)]
    assert evaluate_main(args) == 1
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and "name different classes" in errors[0]
