"""`evaluate` with several models: one ensemble, their served probabilities averaged with each model
decoding at its own input size, and a one-line error when the models name different classes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import TINY_CLASSES, TINY_SIZE, error_lines, make_class_tree, run_module

from flower_demo import FlowerDemoError

OTHER_SIZE = TINY_SIZE + 16  # the second model decodes the photos at another size


def tiny_model(folder: Path, weights: Path, size: int, class_names: list[str], seed: int) -> Path:
    """A saved, untrained MobileNetV2 classifier (Keras only) with these classes and input size."""
    import keras

    from flower_demo import models

    keras.utils.set_random_seed(seed)
    model = models.create_model("mobilenet_v2", len(class_names), size, str(weights))
    metadata = {"class_names": class_names, "image_size": size, "backbone": "mobilenet_v2"}
    models.save_model(model, folder, metadata)
    return folder


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    colours = dict(zip(TINY_CLASSES, [(220, 40, 40), (40, 200, 40), (40, 40, 220)]))
    root = tmp_path_factory.mktemp("data") / "tree"
    return make_class_tree(root, colours, per_class=10, size=TINY_SIZE + 8)


@pytest.fixture(scope="module")
def second_model(tmp_path_factory, mobilenet_weights: Path) -> Path:
    return tiny_model(tmp_path_factory.mktemp("second"), mobilenet_weights, OTHER_SIZE, TINY_CLASSES, seed=11)


def test_ensemble_is_the_mean_of_each_models_probabilities(
    tiny_model_dir: Path, second_model: Path, photos: Path
) -> None:
    from flower_demo import data
    from flower_demo.core import Classifier
    from flower_demo.evaluate import ensemble_probabilities, predict_probabilities

    items = data.load_image_folder(photos)[1].items
    first, second = Classifier(tiny_model_dir, engine="keras"), Classifier(second_model, engine="keras")
    assert second.image_size != first.image_size
    alone = [predict_probabilities(c.probabilities, items, c.image_size) for c in (first, second)]
    assert not np.allclose(alone[0], alone[1], atol=1e-3)  # two different models, or the test proves nothing
    both = ensemble_probabilities([first, second], items)
    np.testing.assert_allclose(both, (alone[0] + alone[1]) / 2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(both.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_cli_measures_several_models_as_one(tiny_model_dir: Path, second_model: Path, photos: Path) -> None:
    from flower_demo import data
    from flower_demo.core import Classifier
    from flower_demo.evaluate import ensemble_probabilities, metrics_from

    result = run_module(
        "flower_demo.evaluate", "--model", tiny_model_dir, second_model, "--engine", "keras",
        "--image-folder", photos, "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    split = data.load_image_folder(photos)[1]
    classifiers = [Classifier(m, engine="keras") for m in (tiny_model_dir, second_model)]
    expected = metrics_from(ensemble_probabilities(classifiers, split.items), np.asarray(split.labels))
    summary = json.loads(result.stdout)
    assert summary["n"] == len(split.labels) == 6
    assert summary["top1"] == pytest.approx(expected["top1"])
    assert summary["top5"] == pytest.approx(expected["top5"])


def test_models_naming_other_classes_are_refused(
    tmp_path: Path, tiny_model_dir: Path, mobilenet_weights: Path, photos: Path, capsys
) -> None:
    from flower_demo.core import Classifier
    from flower_demo.evaluate import ensemble_probabilities
    from flower_demo.evaluate import main as evaluate_main

    reordered = tiny_model(tmp_path / "reordered", mobilenet_weights, TINY_SIZE, TINY_CLASSES[::-1], seed=3)
    with pytest.raises(FlowerDemoError, match="name different classes"):
        ensemble_probabilities([Classifier(tiny_model_dir), Classifier(reordered)], [])
    args = ["--model", str(tiny_model_dir), str(reordered), "--image-folder", str(photos)]
    assert evaluate_main(args) == 1
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and "name different classes" in errors[0]
