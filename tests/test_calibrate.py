"""Calibration (flower_demo.calibrate): temperature scaling, ECE, AUROC and the rejection rule; how
predictions use a stored calibration (and work as before without one); the calibrate command end to
end on a small model and a fake Flowers-102 folder; and, on the shipped model's stored calibration,
that a non-flower photo is rejected while clear flower photos are accepted."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import FIXTURE_FLOWERS, REPO_ROOT, TINY_SIZE, run_module, save_solid
from scipy.io import savemat

from flower_demo import FlowerDemoError, calibrate, core, models
from flower_demo.core import Classifier, predict, predict_batch

NON_FLOWERS = sorted((REPO_ROOT / "tests" / "fixtures" / "non_flowers").glob("*.jpg"))
CLEAR_FLOWERS = ["073_water_lily.jpg", "088_cyclamen.jpg"]


def random_logits(n: int, classes: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 3, (n, classes))


# --- the measures ----------------------------------------------------------------------------


def test_temperature_on_probabilities_equals_temperature_on_logits() -> None:
    logits = random_logits(50, 7)
    for temperature in (0.3, 1.0, 2.5):
        scaled = core.apply_temperature(calibrate.softmax(logits), temperature)
        np.testing.assert_allclose(scaled, calibrate.softmax(logits, temperature), atol=1e-6)
    one = core.apply_temperature(calibrate.softmax(logits)[0], 0.5)  # a single row
    assert one.shape == (7,) and one.sum() == pytest.approx(1.0, abs=1e-6)
    zeros = core.apply_temperature(np.array([[1.0, 0.0, 0.0]]), 0.5)  # underflowed classes
    assert np.isfinite(zeros).all() and zeros[0, 0] == pytest.approx(1.0)


def test_fit_temperature_recovers_the_true_one() -> None:
    rng = np.random.default_rng(1)
    logits = random_logits(4000, 10, seed=2)
    for true_t in (0.5, 2.0):
        p = calibrate.softmax(logits, true_t)
        labels = np.array([rng.choice(10, p=row) for row in p])
        # The model reports softmax(logits); the data behave like softmax(logits / true_t).
        fitted = calibrate.fit_temperature(calibrate.softmax(logits), labels)
        assert fitted == pytest.approx(true_t, rel=0.1)


def test_expected_calibration_error() -> None:
    # Two bins' worth: 4 answers at 0.9 confidence, 3 right; 4 at 0.6, all right.
    probs = np.array([[0.9, 0.1]] * 4 + [[0.6, 0.4]] * 4)
    labels = np.array([0, 0, 0, 1, 0, 0, 0, 0])
    # |0.75 - 0.9| * 4/8 + |1.0 - 0.6| * 4/8
    assert calibrate.expected_calibration_error(probs, labels) == pytest.approx(0.075 + 0.2)
    rng = np.random.default_rng(3)
    logits = random_logits(20000, 5, seed=4)
    p = calibrate.softmax(logits)
    honest = np.array([rng.choice(5, p=row) for row in p])
    assert calibrate.expected_calibration_error(p, honest) < 0.02
    assert calibrate.expected_calibration_error(calibrate.softmax(logits, 0.3), honest) > 0.1


def test_auroc_energy_and_threshold() -> None:
    assert calibrate.auroc(np.array([0.9, 0.8]), np.array([0.1, 0.2])) == 1.0
    assert calibrate.auroc(np.array([0.1]), np.array([0.9])) == 0.0
    scores = np.linspace(0, 1, 101)
    threshold = calibrate.keep_threshold(scores, keep=0.95)
    assert (scores >= threshold).mean() >= 0.95 and (scores > threshold).mean() < 0.95
    logits = random_logits(5, 4)
    expected = np.log(np.exp(logits).sum(axis=1))
    np.testing.assert_allclose(calibrate.energy_score(logits), expected)


# --- reading a calibration, and predicting with one -------------------------------------------


def test_read_calibration() -> None:
    assert core.read_calibration({}) is None
    good = {"temperature": 0.5, "ood_rule": "max_softmax", "ood_threshold": 0.4}
    assert core.read_calibration({"calibration": good}) == core.Calibration(0.5, "max_softmax", 0.4)
    for bad, reason in [
        ({"temperature": 0.5}, "malformed"),
        ({**good, "temperature": -1}, "positive"),
        ({**good, "temperature": "hot"}, "malformed"),
        ({**good, "ood_rule": "vibes"}, "unknown out-of-distribution rule"),
        ({**good, "ood_threshold": float("nan")}, "finite"),
    ]:
        with pytest.raises(FlowerDemoError, match=reason):
            core.read_calibration({"calibration": bad})


@pytest.fixture
def calibrated_copy(tiny_model_dir: Path, tmp_path: Path):
    """A copy of the tiny model whose metadata gets a calibration written by `set_rule`."""
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)

    def set_rule(temperature: float, threshold: float) -> Path:
        result = {"temperature": temperature, "ood_rule": "max_softmax", "ood_threshold": threshold}
        calibrate.write_calibration(folder, {**result, "details": {"dropped": True}})
        return folder

    return set_rule


def test_uncalibrated_model_accepts_everything(tiny_classifier, tmp_path: Path) -> None:
    assert tiny_classifier.calibration is None
    photo = save_solid(tmp_path / "x.png", (10, 200, 30))
    assert predict(photo, tiny_classifier).is_known is True


def test_classifier_applies_temperature_and_rule(tiny_classifier, calibrated_copy, tmp_path: Path) -> None:
    photo = save_solid(tmp_path / "x.png", (10, 200, 30), noise=10)
    raw = predict(photo, tiny_classifier, top_k=3)
    folder = calibrated_copy(temperature=0.5, threshold=0.0)
    stored = json.loads((folder / core.METADATA_FILE).read_text())["calibration"]
    assert "details" not in stored and stored["temperature"] == 0.5
    models.load_model(folder)  # the consistency checks still pass with a calibration stored
    sharp = predict(photo, Classifier(folder), top_k=3)
    expected = core.apply_temperature(np.array(raw.probabilities), 0.5)  # top-3 of 3 = all
    assert sharp.class_names == raw.class_names  # temperature never changes the ranking
    np.testing.assert_allclose(sharp.probabilities, expected, atol=1e-5)
    assert sharp.is_known is True
    rejecting = Classifier(calibrated_copy(temperature=0.5, threshold=1.01))
    assert predict(photo, rejecting).is_known is False
    assert all(not p.is_known for p in predict_batch([photo, photo], rejecting))


def test_cli_shows_rejection(calibrated_copy, tmp_path: Path) -> None:
    photo = save_solid(tmp_path / "x.png", (10, 200, 30))
    folder = calibrated_copy(temperature=1.0, threshold=1.01)
    result = run_module("flower_demo.predict", photo, "--model", folder)
    assert result.returncode == 0 and "does not look like one of the classes" in result.stdout
    result = run_module("flower_demo.predict", photo, "--model", folder, "--json")
    assert result.returncode == 0 and json.loads(result.stdout)[0]["is_known"] is False


def test_bad_stored_calibration_is_a_readable_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    path = folder / core.METADATA_FILE
    metadata = json.loads(path.read_text())
    path.write_text(json.dumps({**metadata, "calibration": {"temperature": 0}}))
    with pytest.raises(FlowerDemoError, match="calibration"):
        Classifier(folder)


# --- the command, end to end -----------------------------------------------------------------


@pytest.fixture(scope="module")
def flowers102_model(mobilenet_weights: Path, tmp_path_factory) -> Path:
    """An untrained 102-class 32 px model: the calibrate command wants the data's class count."""
    import keras

    keras.utils.set_random_seed(3)
    model = models.create_model("mobilenet_v2", 102, TINY_SIZE, str(mobilenet_weights))
    metadata = {"class_names": [f"class {i}" for i in range(102)], "image_size": TINY_SIZE}
    folder = tmp_path_factory.mktemp("flowers102_model")
    return models.save_model(model, folder, {**metadata, "backbone": "mobilenet_v2"})


@pytest.fixture(scope="module")
def fake_flowers102(tmp_path_factory) -> Path:
    """A Flowers-102 folder with 40 validation images (noisy colours) spread over the classes."""
    folder = tmp_path_factory.mktemp("flowers102")
    ids = list(range(1, 41))
    labels = [(7 * i) % 102 + 1 for i in ids]
    for i in ids:
        colour = ((37 * i) % 256, (91 * i) % 256, (53 * i) % 256)
        save_solid(folder / "jpg" / f"image_{i:05d}.jpg", colour, size=(48, 40), noise=25, seed=i)
    savemat(folder / "imagelabels.mat", {"labels": np.array([labels], dtype=np.uint8)})
    splits = {"trnid": [1], "valid": ids, "tstid": [2]}
    savemat(folder / "setid.mat", {k: np.array([v], dtype=np.uint16) for k, v in splits.items()})
    return folder


def test_calibrate_command_writes_metadata_predictions_use(
    flowers102_model: Path, fake_flowers102: Path, capsys
) -> None:
    pytest.importorskip("skimage")
    pytest.importorskip("sklearn")
    assert calibrate.main(["--model", str(flowers102_model), "--data-dir", str(fake_flowers102)]) == 0
    out = capsys.readouterr().out
    assert "ECE (15 bins)" in out and "AUROC" in out and "temperature T =" in out
    stored = json.loads((flowers102_model / core.METADATA_FILE).read_text())["calibration"]
    assert stored["ood_rule"] == "max_softmax" and stored["temperature"] > 0
    assert stored["report"]["validation_images"] == 40
    assert stored["report"]["non_flowers"] == len(calibrate.non_flower_photos())
    classifier = Classifier(flowers102_model)
    assert classifier.calibration.ood_threshold == pytest.approx(stored["ood_threshold"])
    photos = sorted((fake_flowers102 / "jpg").glob("*.jpg"))
    kept = np.mean([p.is_known for p in predict_batch(photos, classifier)])
    # The threshold keeps 95% of the validation images; the one at the threshold may fall either
    # side in a different graph (probabilities differ by ~1e-7).
    assert kept >= calibrate.KEEP_FLOWERS - 1 / len(photos)


def test_calibrate_dry_run_and_errors(
    flowers102_model: Path, fake_flowers102: Path, tmp_path: Path, capsys
) -> None:
    pytest.importorskip("skimage")
    pytest.importorskip("sklearn")
    before = (flowers102_model / core.METADATA_FILE).read_text()
    args = ["--model", str(flowers102_model), "--data-dir", str(fake_flowers102), "--dry-run", "--json"]
    assert calibrate.main(args) == 0
    assert "temperature" in json.loads(capsys.readouterr().out)
    assert (flowers102_model / core.METADATA_FILE).read_text() == before
    assert calibrate.main(["--model", str(flowers102_model), "--data-dir", str(tmp_path)]) == 1
    assert "not a Flowers-102 folder" in capsys.readouterr().err


def test_non_flower_photos_leave_out_the_dahlia() -> None:
    pytest.importorskip("skimage")
    pytest.importorskip("sklearn")
    photos = calibrate.non_flower_photos()
    assert len(photos) == len(calibrate.SKIMAGE_PHOTOS) + len(calibrate.SKLEARN_PHOTOS) + 1
    assert not set(photos) & set(calibrate.KNOWN_FLOWER_PHOTOS)
    assert all(min(image.shape[:2]) >= 64 for image in photos.values())


# --- the shipped model's stored calibration --------------------------------------------------


@pytest.fixture(scope="module")
def calibrated_shipped(shipped_classifier):
    if shipped_classifier.calibration is None:
        pytest.skip("the shipped metadata has no calibration (python -m flower_demo.calibrate)")
    return shipped_classifier


@pytest.mark.parametrize("photo", NON_FLOWERS, ids=lambda p: p.name)
def test_shipped_rejects_non_flower(calibrated_shipped, photo: Path) -> None:
    assert predict(photo, calibrated_shipped).is_known is False


@pytest.mark.parametrize("name", CLEAR_FLOWERS)
def test_shipped_accepts_clear_flower(calibrated_shipped, name: str) -> None:
    prediction = predict(FIXTURE_FLOWERS / name, calibrated_shipped)
    assert prediction.is_known is True
    assert prediction.class_ids[0] == int(name[:3])
