"""Calibration (flower_demo.calibrate): temperature scaling, ECE, AUROC; the four "not one of the
classes" rules (max-softmax, energy, Mahalanobis, kNN) as the serving core applies them, on a tiny
model with both engines, against independent references; the statistics file checked at load; the
calibrate command end to end on a small model and a fake Flowers-102 folder; the non-flower photo
set; and, on the shipped model's stored rule, that non-flower photos are rejected while flowers
are kept (a regression check: the fixture flowers are validation photos the shipped model trained on)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    FIXTURE_FLOWERS,
    REPO_ROOT,
    TINY_SIZE,
    error_lines,
    fixture_photos,
    honest_labels,
    run_module,
    save_solid,
)
from scipy.io import savemat

from flower_demo import FlowerDemoError, calibrate, core, data, model_files, models
from flower_demo.calibrate import cli, folds, rules
from flower_demo.core import Classifier, predict, predict_batch

NON_FLOWERS = sorted((REPO_ROOT / "tests" / "fixtures" / "non_flowers").glob("*.jpg"))
FEATURE_RULES = ("energy", "mahalanobis", "knn")


def random_logits(n: int, classes: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 3, (n, classes))


# --- the measures ----------------------------------------------------------------------------


def test_temperature_on_probabilities_equals_temperature_on_logits() -> None:
    logits = random_logits(50, 7)
    for temperature in (0.3, 1.0, 2.5):
        scaled = core.apply_temperature(rules.softmax(logits), temperature)
        np.testing.assert_allclose(scaled, rules.softmax(logits, temperature), atol=1e-6)
    one = core.apply_temperature(rules.softmax(logits)[0], 0.5)  # a single row
    assert one.shape == (7,) and one.sum() == pytest.approx(1.0, abs=1e-6)
    zeros = core.apply_temperature(np.array([[1.0, 0.0, 0.0]]), 0.5)  # underflowed classes
    assert np.isfinite(zeros).all() and zeros[0, 0] == pytest.approx(1.0)


def test_fit_temperature_recovers_the_true_one() -> None:
    logits = random_logits(4000, 10, seed=2)
    for true_t in (0.5, 2.0):
        p = rules.softmax(logits, true_t)
        labels = honest_labels(p, seed=1)
        # The model reports softmax(logits); the data behave like softmax(logits / true_t).
        fitted = rules.fit_temperature(rules.softmax(logits), labels)
        assert fitted == pytest.approx(true_t, rel=0.1)


def test_auroc_energy_and_threshold() -> None:
    assert rules.auroc(np.array([0.9, 0.8]), np.array([0.1, 0.2])) == 1.0
    assert rules.auroc(np.array([0.1]), np.array([0.9])) == 0.0
    for n in (101, 20, 40, 7):  # 5% of 20 and of 40 is a whole number of photos, of 101 and 7 not
        scores = np.random.default_rng(n).permutation(np.linspace(0, 1, n))
        threshold = rules.keep_threshold(scores, keep=0.95)
        assert (scores >= threshold).mean() >= 0.95 and (scores > threshold).mean() < 0.95
    logits = random_logits(5, 4)
    expected = np.log(np.exp(logits).sum(axis=1))
    np.testing.assert_allclose(rules.energy_score(logits), expected)


# --- reading a calibration, and predicting with one -------------------------------------------


def test_read_calibration(tmp_path: Path) -> None:
    assert core.read_calibration({}) is None
    good = {"temperature": 0.5, "ood_rule": "max_softmax", "ood_threshold": 0.4}
    assert core.read_calibration({"calibration": good}) == core.Calibration(0.5, "max_softmax", 0.4)
    for bad, reason in [
        ({"temperature": 0.5}, "malformed"),
        ({**good, "temperature": -1}, "positive"),
        ({**good, "temperature": "hot"}, "malformed"),
        ({**good, "ood_rule": "vibes"}, "unknown out-of-distribution rule"),
        ({**good, "ood_threshold": float("nan")}, "finite"),
        ({**good, "ood_k": "five"}, "malformed"),
    ]:
        with pytest.raises(FlowerDemoError, match=reason):
            core.read_calibration({"calibration": bad})
    knn = {"calibration": {**good, "ood_rule": "knn", "ood_k": 2}, "class_names": ["a", "b"]}
    with pytest.raises(FlowerDemoError, match="needs its model folder"):
        core.read_calibration(knn)
    with pytest.raises(FlowerDemoError, match="statistics file is missing"):
        core.read_calibration(knn, tmp_path)


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
    stored = json.loads((folder / model_files.METADATA_FILE).read_text())["calibration"]
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
    path = folder / model_files.METADATA_FILE
    metadata = json.loads(path.read_text())
    path.write_text(json.dumps({**metadata, "calibration": {"temperature": 0}}))
    with pytest.raises(FlowerDemoError, match="calibration"):
        Classifier(folder)


# --- the feature rules on a tiny model ---------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_photos(tmp_path_factory) -> dict[str, list[Path]]:
    """Noisy single-colour photos: 6 per tiny class to fit on, 4 more per class as 'flowers' to keep,
    and 'others' of grey static, far from all three colours."""
    root = tmp_path_factory.mktemp("tiny_photos")
    colours = [(200, 40, 40), (40, 200, 40), (40, 40, 200)]
    photos: dict[str, list[Path]] = {"train": [], "flowers": [], "others": []}
    for c, colour in enumerate(colours):
        for i in range(10):
            part = "train" if i < 6 else "flowers"
            photos[part].append(save_solid(root / f"{c}_{i}.png", colour, (40, 40), noise=8, seed=10 * c + i))
    for i in range(4):  # static: nothing like the smooth colours trained on
        photos["others"].append(
            save_solid(root / f"other_{i}.png", (128, 128, 128), (40, 40), noise=90, seed=99 + i)
        )
    return photos


@pytest.fixture(scope="module")
def tiny_statistics(tiny_model_dir: Path, tiny_photos) -> dict:
    """Each rule's statistics fitted by rules.fit_statistics on the tiny model's features."""
    engine = core.open_engine(tiny_model_dir, "litert")
    train = folds.forward(engine, tiny_photos["train"])
    labels = np.repeat(np.arange(3), 6)
    return rules.fit_statistics(
        train[model_files.FEATURES], labels, 3, *folds.classifier_head(tiny_model_dir)
    )


def test_classifier_head_comes_from_the_keras_model_an_engine_runs(
    tiny_model_dir: Path, tiny_keras_classifier
):
    """Read from the model a Keras engine has loaded already (a --folds run without model.tflite),
    it is what model.keras holds."""
    from_engine = folds.classifier_head(tiny_model_dir, tiny_keras_classifier.engine)
    for read, held in zip(folds.classifier_head(tiny_model_dir), from_engine):
        np.testing.assert_array_equal(read, held)


def with_rule(
    source: Path, folder: Path, rule: str, statistics: dict, threshold: float = -1e9, k: int = 2
) -> Path:
    """A copy of `source` with `rule` (and its statistics file) written by calibrate.write_calibration."""
    if not folder.exists():
        shutil.copytree(source, folder)
    result = {
        "temperature": 0.7,
        "ood_rule": rule,
        "ood_threshold": threshold,
        "ood_k": k,
        "ood_file": "ood.npz",
    }
    calibrate.write_calibration(folder, result, statistics.get(rule))
    return folder


def reference_scores(
    rule: str, features: np.ndarray, probabilities: np.ndarray, model_dir: Path, train: dict
):
    """The rules computed independently: scipy, scikit-learn and Keras, not the core's numpy."""
    from scipy.spatial.distance import mahalanobis
    from sklearn.covariance import LedoitWolf
    from sklearn.neighbors import NearestNeighbors

    features = features.astype(np.float64)
    if rule == "energy":
        kernel, bias = folds.classifier_head(model_dir)
        return rules.energy_score(features @ kernel + bias, 0.7)
    labels = np.repeat(np.arange(3), 6)
    bank = train[model_files.FEATURES].astype(np.float64)
    if rule == "mahalanobis":
        means = np.stack([bank[labels == c].mean(axis=0) for c in range(3)])
        precision = LedoitWolf().fit(bank - means[labels]).precision_
        return np.array([-min(mahalanobis(f, m, precision) ** 2 for m in means) for f in features])
    knn = NearestNeighbors(n_neighbors=2, metric="cosine").fit(bank)
    distances, _ = knn.kneighbors(features)
    return 1.0 - distances[:, 1]


@pytest.mark.parametrize("rule", FEATURE_RULES)
def test_feature_rule_matches_reference_with_both_engines(
    rule: str, tiny_model_dir: Path, tiny_photos, tiny_statistics, tmp_path: Path
) -> None:
    folder = with_rule(tiny_model_dir, tmp_path / "model", rule, tiny_statistics)
    engine = core.open_engine(tiny_model_dir, "litert")
    train = folds.forward(engine, tiny_photos["train"])
    photos = tiny_photos["flowers"] + tiny_photos["others"]
    outputs = folds.forward(engine, photos)
    expected = reference_scores(
        rule, outputs[model_files.FEATURES], outputs[model_files.PROBABILITIES], folder, train
    )
    for which in ("litert", "keras"):
        classifier = Classifier(folder, engine=which)
        assert classifier.calibration.ood_rule == rule and classifier.calibration.feature_dim == 1280
        got = rules.scores(classifier.calibration, folds.forward(classifier.engine, photos))
        # float16 statistics: a relative error of ~1e-3 of the scores' spread
        spread = float(np.ptp(expected)) or 1.0
        np.testing.assert_allclose(got, expected, atol=5e-3 * spread + 1e-4, rtol=5e-3)
    # The threshold decides: set just above the lowest score, that photo alone is turned away.
    lowest = int(np.argmin(expected))
    threshold = float(np.sort(expected)[:2].mean())
    folder = with_rule(tiny_model_dir, folder, rule, tiny_statistics, threshold=threshold)
    verdicts = [p.is_known for p in predict_batch(photos, Classifier(folder))]
    assert verdicts == [i != lowest for i in range(len(photos))]


def test_knn_turns_away_photos_far_from_the_training_ones(
    tiny_model_dir: Path, tiny_photos, tiny_statistics, tmp_path: Path
) -> None:
    """Fitted as calibrate does (threshold keeping 95% of held-back 'flowers'), kNN rejects the
    photos of other colours and keeps the flowers."""
    engine = core.open_engine(tiny_model_dir, "litert")
    rule = core.Calibration(0.7, "knn", 0.0, 2, statistics=tiny_statistics["knn"])
    flowers = rules.scores(rule, folds.forward(engine, tiny_photos["flowers"]))
    others = rules.scores(rule, folds.forward(engine, tiny_photos["others"]))
    assert rules.auroc(flowers, others) == 1.0
    # With 12 flowers the threshold is the lowest flower's score itself. The served model scores one
    # photo at a time (a matrix-vector product, not the batch's matrix product), which can land a
    # float32 rounding below it: the threshold sits that hair lower, far inside the gap to the others.
    threshold = rules.keep_threshold(flowers) - 1e-5
    folder = with_rule(tiny_model_dir, tmp_path / "m", "knn", tiny_statistics, threshold)
    classifier = Classifier(folder)
    assert all(p.is_known for p in predict_batch(tiny_photos["flowers"], classifier))
    assert not any(p.is_known for p in predict_batch(tiny_photos["others"], classifier))


def test_statistics_file_checked_at_load(
    tiny_model_dir: Path, tiny_statistics, tmp_path: Path, monkeypatch
) -> None:
    folder = with_rule(tiny_model_dir, tmp_path / "model", "knn", tiny_statistics)
    Classifier(folder)  # fits
    stats_file = folder / model_files.OOD_FILE
    bank = np.load(stats_file)["bank"]
    np.savez(stats_file, bank=bank[:, :64])
    with pytest.raises(FlowerDemoError, match="does not match metadata.json"):  # not the file recorded
        Classifier(folder)
    monkeypatch.setenv(model_files.SKIP_VERIFY_ENV, "1")  # unchecked, its contents are checked still
    cases = [
        ({"bank": bank[:, :64]}, "fitted on 64-d features"),  # wrong feature size for this model
        ({"bank": bank[:1]}, "does not fit the knn rule"),  # fewer training photos than k = 2
        ({"other": bank}, "lacks the knn rule's array"),
    ]
    for arrays, message in cases:
        np.savez(stats_file, **arrays)
        with pytest.raises(FlowerDemoError, match=message):
            Classifier(folder)
    stats_file.write_bytes(b"not an npz")
    with pytest.raises(FlowerDemoError, match="cannot read"):
        Classifier(folder)
    stats_file.unlink()
    with pytest.raises(FlowerDemoError, match="statistics file is missing"):
        Classifier(folder)
    energy = {
        "kernel": tiny_statistics["energy"]["kernel"][:, :2],
        "bias": tiny_statistics["energy"]["bias"][:2],
    }
    with pytest.raises(FlowerDemoError, match="3-class model"):
        with_rule(tiny_model_dir, folder, "energy", {"energy": energy})
    # refused before the folder changed: it still holds the knn rule, whose file is still missing
    result = run_module("flower_demo.predict", FIXTURE_FLOWERS / "073_water_lily.jpg", "--model", folder)
    assert result.returncode != 0 and "statistics file is missing" in result.stderr
    assert "Traceback" not in result.stderr


def test_write_calibration_removes_a_stale_statistics_file(
    tiny_model_dir: Path, tiny_statistics, tmp_path: Path
) -> None:
    folder = with_rule(tiny_model_dir, tmp_path / "model", "mahalanobis", tiny_statistics)
    assert (folder / model_files.OOD_FILE).is_file()
    calibrate.write_calibration(folder, {"temperature": 1.0, "ood_rule": "max_softmax", "ood_threshold": 0.1})
    assert (
        not (folder / model_files.OOD_FILE).exists()
        and Classifier(folder).calibration.ood_rule == "max_softmax"
    )


# --- the command, end to end -----------------------------------------------------------------


@pytest.fixture(scope="module")
def flowers102_model(mobilenet_weights: Path, tmp_path_factory) -> Path:
    """An untrained 32 px model of Flowers-102's 102 classes (with its .tflite): the command matches
    the model's classes to the data's by name."""
    import keras

    from flower_demo import export

    keras.utils.set_random_seed(3)
    model = models.create_model("mobilenet_v2", 102, TINY_SIZE, str(mobilenet_weights))
    metadata = {"class_names": data.oxford_class_names(), "image_size": TINY_SIZE}
    folder = tmp_path_factory.mktemp("flowers102_model")
    models.save_model(model, folder, {**metadata, "backbone": "mobilenet_v2"})
    export.export_tflite(folder)
    return folder


@pytest.fixture(scope="module")
def fake_flowers102(tmp_path_factory) -> Path:
    """A Flowers-102 folder: 204 train images (2 per class) and 40 validation images (noisy colours)."""
    folder = tmp_path_factory.mktemp("flowers102")
    train = list(range(1, 205))
    valid = list(range(205, 245))
    labels = [(i - 1) % 102 + 1 for i in train] + [(7 * i) % 102 + 1 for i in valid]
    for i in train + valid:
        colour = ((37 * i) % 256, (91 * i) % 256, (53 * i) % 256)
        save_solid(folder / "jpg" / f"image_{i:05d}.jpg", colour, size=(48, 40), noise=25, seed=i)
    savemat(folder / "imagelabels.mat", {"labels": np.array([labels], dtype=np.uint8)})
    splits = {"trnid": train, "valid": valid, "tstid": [300]}
    savemat(folder / "setid.mat", {k: np.array([v], dtype=np.uint16) for k, v in splits.items()})
    return folder


@pytest.mark.slow
def test_calibrate_command_writes_rule_predictions_use(
    flowers102_model: Path, fake_flowers102: Path, capsys
) -> None:
    pytest.importorskip("sklearn")
    args = ["--model", str(flowers102_model), "--data-dir", str(fake_flowers102)]
    assert calibrate.main(args) == 0
    out = capsys.readouterr().out
    assert "ECE (15 bins)" in out and "AUROC held-out" in out and "us per photo" in out
    for name in ("max_softmax", "energy, fitted T", "mahalanobis", "knn, k=1", "knn, k=20"):
        assert f"  {name} " in out
    stored = json.loads((flowers102_model / model_files.METADATA_FILE).read_text())["calibration"]
    assert stored["ood_rule"] == "knn" and stored["ood_k"] in rules.K_CANDIDATES
    report = stored["report"]
    parts = folds.non_flower_photos()
    assert report["validation_images"] == 40 and report["non_flowers"] == len(parts["held_out"])
    assert report["choice_photos"] == len(parts["choice"]) and report["rule_microseconds"] > 0
    assert set(report["rules"]["mahalanobis"]) == {
        "kept_flowers",
        "auroc_choice",
        "rejected_choice",
        "auroc_held_out",
        "rejected_held_out",
    }
    bank = np.load(flowers102_model / model_files.OOD_FILE)["bank"]
    assert bank.shape == (204, 1280) and bank.dtype == np.float16
    assert report["ood_file_bytes"] == (flowers102_model / model_files.OOD_FILE).stat().st_size
    classifier = Classifier(flowers102_model)
    assert classifier.calibration.ood_threshold == pytest.approx(stored["ood_threshold"])
    photos = sorted((fake_flowers102 / "jpg").glob("*.jpg"))[204:]
    answers = predict_batch(photos, classifier)
    kept = np.mean([p.is_known for p in answers])
    # The threshold keeps 95% of the validation images; the one at the threshold may fall either side.
    assert kept >= rules.KEEP_FLOWERS - 1 / len(photos)

    # The reference photos: the 204 training photos' thumbnails, recorded, shown beside answers.
    files = json.loads((flowers102_model / model_files.METADATA_FILE).read_text())[model_files.FILES_KEY]
    assert files[model_files.THUMBNAILS_DIR]["files"] == 204 == stored["reference_photos"]["photos"]
    for answer in answers:  # two training photos per class; of any class, three
        assert [n["class_name"] for n in answer.neighbours] == [answer.class_names[0]] * 2
        assert len(answer.closest) == (0 if answer.is_known else 3)
    # --references-only rewrites them, from the same features, and leaves the calibration alone.
    assert calibrate.main([*args, "--references-only"]) == 0
    assert "reference photos: 204 (train)" in capsys.readouterr().out
    after = json.loads((flowers102_model / model_files.METADATA_FILE).read_text())
    assert after["calibration"] == stored
    assert after[model_files.FILES_KEY][model_files.THUMBNAILS_DIR] == files[model_files.THUMBNAILS_DIR]


@pytest.mark.slow
def test_calibrate_other_rule_dry_run_and_errors(
    flowers102_model: Path, fake_flowers102: Path, tmp_path: Path, capsys
) -> None:
    pytest.importorskip("sklearn")
    before = (flowers102_model / model_files.METADATA_FILE).read_text()
    args = ["--model", str(flowers102_model), "--data-dir", str(fake_flowers102), "--dry-run", "--json"]
    assert calibrate.main([*args, "--rule", "mahalanobis"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["ood_rule"] == "mahalanobis" and result["ood_file"] == model_files.OOD_FILE
    assert (flowers102_model / model_files.METADATA_FILE).read_text() == before
    result = run_module("flower_demo.calibrate", *args, "--rule", "vibes")
    assert result.returncode == 1 and "unknown out-of-distribution rule" in result.stderr
    assert calibrate.main(["--model", str(flowers102_model), "--data-dir", str(tmp_path)]) == 1
    assert "not a Flowers-102 folder" in capsys.readouterr().err
    assert calibrate.main([*args, "--photos", str(tmp_path)]) == 1
    assert "non-flower photos not found" in capsys.readouterr().err


def recipe_run(model: Path, folder: Path, train_splits: str, val_split: str, fixed: bool) -> Path:
    """A copy of `model` whose metadata says it is a run of train.py on these official splits."""
    shutil.copytree(model, folder)
    metadata = json.loads((folder / model_files.METADATA_FILE).read_text())
    metadata.pop("calibration", None)
    metadata["training"] = {"train_splits": train_splits, "val_split": val_split, "fixed_epochs": fixed}
    metadata["metrics"] = {} if val_split == "none" else {"chosen_on_validation": not fixed}
    (folder / model_files.METADATA_FILE).write_text(json.dumps(metadata))
    (folder / model_files.OOD_FILE).unlink(missing_ok=True)
    return folder


@pytest.mark.slow
def test_final_model_is_calibrated_out_of_fold_with_an_estimate(
    flowers102_model: Path, fake_flowers102: Path, tmp_path: Path, capsys
) -> None:
    """A model trained on train + validation has no held-out photos of its own: --folds fits its
    temperature and threshold on runs that each held a split out, and stores their accuracies."""
    pytest.importorskip("sklearn")
    final = recipe_run(flowers102_model, tmp_path / "final", "train,validation", "none", True)
    fold1 = recipe_run(flowers102_model, tmp_path / "fold1", "train", "validation", False)
    fold2 = recipe_run(flowers102_model, tmp_path / "fold2", "validation", "train", True)
    args = ["--model", str(final), "--data-dir", str(fake_flowers102)]
    assert calibrate.main(args) == 1
    assert "give --folds" in capsys.readouterr().err  # never fitted on its own training photos

    assert calibrate.main([*args, "--folds", str(fold1), str(fold2)]) == 0
    out = capsys.readouterr().out
    metadata = json.loads((final / model_files.METADATA_FILE).read_text())
    estimate, report = metadata["estimate"], metadata["calibration"]["report"]
    assert estimate["method"] == "2-fold" and estimate["chosen_on_scored"] is True  # fold 1 chose
    splits = {"fold1": ("train", "validation", 40, True), "fold2": ("validation", "train", 204, False)}
    runs = {"fold1": fold1, "fold2": fold2}
    for fold in estimate["folds"]:  # named by the run's folder name, never a path of this machine
        trained_on, scored_on, images, chosen = splits[fold["model"]]
        assert (fold["trained_on"], fold["scored_on"], fold["images"]) == (trained_on, scored_on, images)
        assert fold["chosen_on_scored"] is chosen
        # the fold's figure is its model's top-1 on the split it held out, as predict serves it
        held_out = sorted((fake_flowers102 / "jpg").glob("*.jpg"))
        held_out = held_out[204:] if scored_on == "validation" else held_out[:204]
        classifier = Classifier(runs[fold["model"]])
        answers = [p.class_ids[0] for p in predict_batch(held_out, classifier, top_k=1)]
        truth = [c + 1 for c in data_labels(fake_flowers102, held_out)]
        assert fold["top1"] == pytest.approx(np.mean(np.equal(answers, truth)))
    assert estimate["top1"] == pytest.approx(np.mean([f["top1"] for f in estimate["folds"]]))
    assert f"estimate (2-fold): top-1 {estimate['top1']:.4f}" in out
    assert report["threshold_fitted_on"] == "out of fold: fold1 on validation, fold2 on train"
    assert report["validation_images"] == 244
    assert report["statistics_fitted_on"] == "train+validation"
    bank = np.load(final / model_files.OOD_FILE)["bank"]
    assert bank.shape == (244, 1280)  # the final model's own features of every photo it trained on
    stored = metadata["calibration"]["ood_threshold"]
    assert Classifier(final).calibration.ood_threshold == pytest.approx(stored)
    assert "unchosen" not in estimate and estimate["recipe_chosen_on_scored"] is False


def test_the_fold_the_recipe_was_picked_on_is_marked(tmp_path: Path) -> None:
    """The fold the recipe was picked on: its figure is a selected one; the estimate also gives the
    folds no choice saw (no epoch chosen on their scored photos, no recipe picked on them). On
    answers whose figures are known: ten classes, each answer's runners-up the later classes."""
    fold1 = folds.Fold(tmp_path / "fold1", None, ["train"], "validation", chosen_on_scored=False)
    fold2 = folds.Fold(tmp_path / "fold2", None, ["validation"], "train", chosen_on_scored=False)
    folds.mark_recipe_choice([fold1, fold2], tmp_path / "fold2" / ".." / "fold1")  # fold1, spelt otherwise
    answers = [np.array([0, 1, 2, 0]), np.array([0, 1, 2, 3, 4, 0, 0, 0, 0, 0])]
    labels = [np.arange(4), np.arange(10)]
    held = [{model_files.PROBABILITIES: np.eye(10)[a] + np.linspace(0, 0.1, 10)} for a in answers]
    estimate = folds.fold_estimate([fold1, fold2], held, labels)
    first, second = estimate["folds"]
    assert (first["top1"], first["top5"]) == (0.75, 0.75)  # class 3 answered 0: top 5 is 0, 9, 8, 7, 6
    assert (second["top1"], second["top5"]) == (0.5, 0.9)  # classes 6 to 9 in the top 5, 5 not
    assert (first["recipe_chosen_on_scored"], second["recipe_chosen_on_scored"]) == (True, False)
    assert estimate["recipe_chosen_on_scored"] is True and estimate["chosen_on_scored"] is False
    assert estimate["unchosen"] == {"folds": 1, "top1": second["top1"], "top5": second["top5"]}
    assert estimate["top1"] == pytest.approx((first["top1"] + second["top1"]) / 2)  # the mean stays
    out = "\n".join(cli.estimate_lines(estimate))
    assert "(the recipe was chosen on them)" in out and "the folds no choice saw (1)" in out


@pytest.mark.slow
def test_recipe_chosen_on_a_run_that_is_not_a_fold(
    flowers102_model: Path, fake_flowers102: Path, tmp_path: Path, capsys
) -> None:
    fold1 = recipe_run(flowers102_model, tmp_path / "fold1", "train", "validation", True)
    fold2 = recipe_run(flowers102_model, tmp_path / "fold2", "validation", "train", True)
    args = ["--model", str(fold1), "--data-dir", str(fake_flowers102), "--folds", str(fold1), str(fold2)]
    assert calibrate.main([*args, "--recipe-chosen-on", str(tmp_path / "elsewhere")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --recipe-chosen-on") and "not one of the --folds runs" in err


@pytest.mark.slow
def test_folds_meet_the_model_and_the_data_by_name(
    flowers102_model: Path, fake_flowers102: Path, tmp_path: Path, capsys
) -> None:
    """A fold listing the model's classes in another order is taken, its labels matched by name;
    a fold that lacks one of the model's classes is one error line naming it."""
    names = data.oxford_class_names()
    reordered = recipe_run(flowers102_model, tmp_path / "reordered", "train", "validation", True)
    renamed = recipe_run(flowers102_model, tmp_path / "renamed", "train", "validation", True)
    for folder, class_names in ((reordered, names[::-1]), (renamed, ["a new flower", *names[1:]])):
        metadata = json.loads((folder / model_files.METADATA_FILE).read_text())
        (folder / model_files.METADATA_FILE).write_text(json.dumps({**metadata, "class_names": class_names}))
    fold = folds.open_fold(reordered, None, names)
    assert fold.class_names == names[::-1]
    validation = data.load_oxford_folder(fake_flowers102, "validation")
    labels = folds.model_labels(validation, fold.class_names, fold.path)
    assert [fold.class_names[i] for i in labels] == [names[i] for i in validation.labels]
    args = ["--model", str(flowers102_model), "--data-dir", str(fake_flowers102), "--dry-run"]
    assert calibrate.main([*args, "--folds", str(reordered), str(renamed)]) == 1
    errors = error_lines(capsys.readouterr().err)
    assert errors == [f"error: fold {renamed} has a class 'a new flower' that the model does not know"]


def data_labels(folder: Path, photos: list[Path]) -> list[int]:
    """0-based labels of Flowers-102 photos, from the folder's imagelabels.mat."""
    from scipy.io import loadmat

    labels = loadmat(folder / "imagelabels.mat")["labels"].ravel()
    return [int(labels[int(p.stem.split("_")[1]) - 1]) - 1 for p in photos]


# --- the non-flower photos ---------------------------------------------------------------------


def test_non_flower_photo_set_is_listed_with_source_and_licence() -> None:
    import csv

    folder = folds.OOD_PHOTOS
    with open(folder / "photos.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["file"] for r in rows) == sorted(p.name for p in folder.glob("*.jpg"))
    assert len(rows) >= 100 and all(r["package"] and r["licence"] and r["group"] for r in rows)
    assert {"animal", "people", "street", "building", "indoor", "food", "object", "landscape"} <= {
        r["group"] for r in rows
    }
    parts = folds.non_flower_photos()
    assert 0.3 <= len(parts["held_out"]) / len(rows) <= 0.4
    assert not set(parts["held_out"]) & set(parts["choice"])
    assert sum(p.stat().st_size for p in folder.iterdir()) < 5_000_000


# --- the shipped model's stored rule -----------------------------------------------------------


@pytest.fixture(scope="module")
def calibrated_shipped(shipped_classifier):
    if shipped_classifier.calibration is None:
        pytest.skip("the shipped metadata has no calibration (python -m flower_demo.calibrate)")
    return shipped_classifier


@pytest.mark.parametrize("photo", NON_FLOWERS, ids=lambda p: p.name)
def test_shipped_rejects_non_flower(calibrated_shipped, photo: Path) -> None:
    assert predict(photo, calibrated_shipped).is_known is False


@pytest.mark.parametrize("photo", fixture_photos(), ids=lambda p: p.name)
def test_regression_shipped_keeps_flower(calibrated_shipped, photo: Path) -> None:
    """A regression check, not evidence of how many flowers the rule keeps: the fixture photos are
    validation photos the shipped model trained on, so their features are in its kNN bank (the
    out-of-fold figure is calibrate's, the test figure weights/README.md's)."""
    assert predict(photo, calibrated_shipped).is_known is True


def test_shipped_rule_turns_away_held_out_non_flowers(calibrated_shipped) -> None:
    """The acceptance bar on the photos no choice saw: at least 95% turned away."""
    held_out = folds.non_flower_photos()["held_out"]
    rejected = np.mean([not p.is_known for p in predict_batch(held_out, calibrated_shipped)])
    assert rejected >= 0.95
    assert calibrated_shipped.calibration.ood_rule == "knn"


def test_shipped_rule_serves_without_tensorflow_or_scipy(calibrated_shipped) -> None:
    """The kNN rule runs on numpy alone: answering a photo imports no TensorFlow, scipy or sklearn."""
    code = (
        "import sys, flower_demo\n"
        "p = flower_demo.predict('tests/fixtures/non_flowers/cat.jpg')\n"
        "heavy = [m for m in ('tensorflow', 'keras', 'scipy', 'sklearn') if m in sys.modules]\n"
        "print(p.is_known, heavy)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False []"
