"""The evidence behind an answer (Prediction.neighbours): the training photos most like the photo,
of its top species (and of any species for a photo turned away: Prediction.closest), best first,
with thumbnails that
travel with the model folder, are covered by its file hashes and decode; the predict command
line's JSON and table carry them. On the shipped model; the writer and its checks on the tiny one.

Where a shipped-model check uses the example photos, those are training photos (examples/README.md),
so the nearest reference photo is the photo itself: a regression check, not evidence of accuracy.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import EXAMPLE_PHOTOS, NON_FLOWER, TINY_SIZE, fixture_photos, run_module, save_solid
from PIL import Image

from flower_demo import FlowerDemoError, calibrate, model_files, neighbours
from flower_demo.calibrate.folds import Trained
from flower_demo.core import Classifier, predict, predict_batch

MAX_THUMBNAIL_BYTES = 8_000_000  # the reference photos' thumbnails, all together


def check_neighbours(found: list[dict], species: str | None, count: int = neighbours.DEFAULT_NEIGHBOURS):
    """`count` reference photos, of `species` (any for None), best first, thumbnails that decode."""
    assert len(found) == count
    assert set(found[0]) == {"class_name", "similarity", "image"}
    if species is not None:
        assert [n["class_name"] for n in found] == [species] * count
    similarities = [n["similarity"] for n in found]
    assert similarities == sorted(similarities, reverse=True)
    assert 0 <= similarities[-1] <= similarities[0] <= 1
    for n in found:
        with Image.open(n["image"]) as image:
            assert image.format == "JPEG" and image.size == (neighbours.THUMBNAIL_SIZE,) * 2


# --- the shipped model -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped(shipped_classifier) -> Classifier:
    if shipped_classifier.references is None:
        pytest.skip("this model folder holds no reference photos (calibrate --references-only)")
    return shipped_classifier


def test_neighbours_of_a_confident_answer_are_of_its_species(shipped: Classifier) -> None:
    for photo in fixture_photos():
        answer = predict(photo, shipped)
        if answer.is_known and answer.probabilities[0] >= 0.5:
            check_neighbours(answer.neighbours, answer.class_names[0])
    assert predict(fixture_photos()[0], shipped, neighbours=0).neighbours == []
    kept = predict(fixture_photos()[0], shipped)
    assert kept.is_known and kept.evidence == kept.neighbours
    five = predict(fixture_photos()[0], shipped, neighbours=5)
    assert five.neighbours[:3] == predict(fixture_photos()[0], shipped).neighbours  # the same order
    batch = predict_batch(fixture_photos()[:2], shipped)
    assert [p.neighbours for p in batch] == [predict(p, shipped).neighbours for p in fixture_photos()[:2]]
    for wrong in (-1, 1.5, "3", True):
        with pytest.raises(FlowerDemoError, match="neighbours must be a whole number"):
            predict(fixture_photos()[0], shipped, neighbours=wrong)


def test_regression_an_example_photo_is_its_own_nearest_reference(shipped: Classifier) -> None:
    photo = EXAMPLE_PHOTOS[0]  # a training photo: its own thumbnail is in the bank
    nearest = predict(photo, shipped).neighbours[0]
    assert nearest["similarity"] > 0.99


def test_a_photo_turned_away_gets_the_nearest_of_any_species(shipped: Classifier) -> None:
    answer = predict(NON_FLOWER, shipped)
    assert not answer.is_known
    check_neighbours(answer.neighbours, answer.class_names[0])  # its top species' photos, as always
    check_neighbours(answer.closest, None)
    assert answer.evidence == answer.closest  # what the page and --plot show for it
    assert answer.closest[0]["similarity"] >= answer.neighbours[0]["similarity"]  # of all, at least as near
    assert answer.closest[0]["similarity"] < shipped.calibration.ood_threshold + 0.2
    assert predict(fixture_photos()[0], shipped).closest == []  # a photo it accepts has none


def test_shipped_thumbnails_are_few_small_and_one_per_reference(shipped_model_dir: Path, shipped) -> None:
    folder = shipped_model_dir / model_files.THUMBNAILS_DIR
    files = model_files.folder_files(folder)
    assert len(files) == len(shipped.references.labels) == len(shipped.references.bank)
    assert sum(f.stat().st_size for f in files) <= MAX_THUMBNAIL_BYTES
    card = (shipped_model_dir / "README.md").read_text()
    assert "thumbnails/" in card and "Flowers-102" in card  # their source and terms are stated


@pytest.mark.slow
def test_cli_json_and_table_carry_the_reference_photos(shipped: Classifier) -> None:
    photos = fixture_photos()[:2]
    result = run_module("flower_demo.predict", *photos, "--json")
    assert result.returncode == 0, result.stderr
    for record in json.loads(result.stdout):
        check_neighbours(record["neighbours"], record["class_names"][0])
        assert record["closest"] == [] if record["is_known"] else len(record["closest"]) == 3
    result = run_module("flower_demo.predict", photos[0], "--neighbours", "0", "--json")
    assert json.loads(result.stdout)[0]["neighbours"] == []
    table = run_module("flower_demo.predict", photos[0], "--neighbours", "2").stdout
    assert "  training photos most like it (of " in table
    assert sum(line.startswith("     ") and line.endswith(".jpg") for line in table.splitlines()) == 2
    refused = run_module("flower_demo.predict", photos[0], "--neighbours", "-1")
    assert refused.returncode == 2 and "neighbours must be a whole number" in refused.stderr


# --- writing them, and the folder's checks (the tiny model) ----------------------------------


@pytest.fixture
def referenced(tiny_model_dir: Path, tmp_path: Path) -> tuple[Path, list[Path]]:
    """A copy of the tiny model calibrated with a kNN rule whose bank is six photos' (random)
    features, two per class, written with their thumbnails as calibrate writes them."""
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    photos = [save_solid(tmp_path / f"{i}.png", (40 * i, 200 - 30 * i, 90), (50, 40)) for i in range(6)]
    bank = np.random.default_rng(0).uniform(0, 1, size=(6, 1280)).astype(np.float32)
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    trained = Trained(photos, np.array([0, 1, 2, 0, 1, 2]), {"knn": {"bank": bank}})
    result = {"temperature": 1.0, "ood_rule": "knn", "ood_threshold": -1.0, "ood_k": 1}
    calibrate.write_calibration(folder, result, {"bank": bank}, trained)
    return folder, photos


def test_calibrate_writes_thumbnails_the_folder_vouches_for(referenced) -> None:
    folder, photos = referenced
    classifier = Classifier(folder)
    answer = predict(photos[0], classifier)
    check_neighbours(answer.neighbours, answer.class_names[0], count=2)  # two photos per class
    assert classifier.references.nearest(np.ones(1280), classifier.class_names, 7, 3) == []  # no such class
    assert answer.neighbours == sorted(answer.neighbours, key=lambda n: -n["similarity"])
    thumbnails = folder / model_files.THUMBNAILS_DIR
    record = model_files.read_metadata(folder)[model_files.FILES_KEY][model_files.THUMBNAILS_DIR]
    assert record == model_files.file_record(thumbnails) and record["files"] == 6
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # nothing staged left behind
    # written again without them (another rule): the old thumbnails go too
    calibrate.write_calibration(folder, {"temperature": 1.0, "ood_rule": "max_softmax", "ood_threshold": 0.1})
    assert not thumbnails.exists() and Classifier(folder).references is None
    assert predict(photos[0], Classifier(folder)).neighbours == []


@pytest.mark.parametrize("damage", ["changed", "missing"])
def test_a_damaged_thumbnail_is_refused_in_one_line(referenced, damage: str) -> None:
    folder, _ = referenced
    victim = model_files.folder_files(folder / model_files.THUMBNAILS_DIR)[2]
    if damage == "changed":
        Image.new("RGB", (TINY_SIZE, TINY_SIZE), "red").save(victim, "JPEG")
    else:
        victim.unlink()
    with pytest.raises(FlowerDemoError) as refused:
        Classifier(folder)
    message = str(refused.value)
    assert "\n" not in message and "thumbnails" in message and "--references-only" in message
