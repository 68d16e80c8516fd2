"""Teaching a model a flower it does not know (imprint.py, Classifier.teach, flower_demo.teach):
the arithmetic on tiny arrays, then the shipped model taught from its own reference thumbnails.

The thumbnails are training photos of the shipped model, so a class taught from them is a copy of
a species it knows under another name: these tests check the mechanics (the taught class answers
photos like its own and leaves others alone, nothing is shared or overwritten, refusals are one
line), not accuracy on unseen species, which README's held-out table measures.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import EXAMPLE_PHOTOS, NON_FLOWER, REPO_ROOT, fixture_photos, flowers102_folder, run_module

from flower_demo import FlowerDemoError, imprint
from flower_demo.core import EXTRA_BANK, Classifier, predict

TAUGHT = "garden twin"  # a name the model does not know


def test_widened_probabilities_are_the_softmax_over_every_column():
    rng = np.random.default_rng(0)
    features = rng.random((4, 6)).astype(np.float32)
    kernel, bias = rng.normal(size=(6, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32)
    head = imprint.Head.fit(kernel, bias, imprint.l2_normalise(rng.random((6, 6))), np.arange(6) % 3)
    taught = (
        imprint.Taught.none(6)
        .with_class("x", rng.normal(size=6), 0.5)
        .with_class("y", rng.normal(size=6), -1)
    )
    logits = np.concatenate([features @ kernel + bias, features @ taught.kernel + taught.bias], axis=1)
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    trained = expected[:, :3] / expected[:, :3].sum(axis=1, keepdims=True)  # what the engine returns
    np.testing.assert_allclose(taught.probabilities(trained, features, head), expected, atol=1e-6)


def test_imprinting_a_trained_class_again_gives_its_own_column():
    """Where the trained columns are exactly shared part + alpha x (class mean - centre), the photos
    of a trained class imprint that class's column, its own part times IMPRINT_SCALE: the head's
    own scale."""
    rng = np.random.default_rng(1)
    bank = imprint.l2_normalise(rng.random((40, 8)))
    labels = np.arange(40) % 4
    means = np.stack([bank[labels == c].mean(axis=0) for c in range(4)])
    shared = rng.normal(size=8)
    kernel = (shared[:, None] + 2.5 * (means - means.mean(axis=0)).T).astype(np.float32)
    head = imprint.Head.fit(kernel, np.full(4, 0.25, np.float32), bank, labels)
    column, bias = head.imprint(bank[labels == 2] * 7.0)  # raw features: their length does not matter
    own = kernel.mean(axis=1) + imprint.IMPRINT_SCALE * (kernel[:, 2] - kernel.mean(axis=1))
    np.testing.assert_allclose(column, own, atol=1e-5)
    assert bias == pytest.approx(0.25)


def thumbnails_of(classifier: Classifier, species: str, count: int) -> list[Path]:
    """`count` of the shipped model's reference thumbnails of `species` (its training photos)."""
    index = classifier.class_names.index(species)
    rows = np.flatnonzero(classifier.references.labels == index)[:count]
    return [classifier.references.thumbnails[i] for i in rows]


def test_teach_answers_photos_like_its_own_and_leaves_the_model_unchanged(shipped_classifier):
    rose = next(p for p in EXAMPLE_PHOTOS if p.name.endswith("_rose.jpg"))
    before = predict(rose, shipped_classifier)
    taught = shipped_classifier.teach(TAUGHT, thumbnails_of(shipped_classifier, "rose", 5))
    assert taught.class_names[-1] == TAUGHT and taught.num_classes == shipped_classifier.num_classes + 1
    after = predict(rose, taught, top_k=2)
    assert set(after.class_names) == {"rose", TAUGHT}  # a copy of rose: the two share the answer
    assert after.is_known
    twin = predict(rose, taught, top_k=taught.num_classes)
    assert sum(twin.probabilities) == pytest.approx(1.0, abs=1e-4)
    other = fixture_photos()[1]  # colt's foot: nothing like a rose
    unrelated = predict(other, taught, top_k=taught.num_classes)
    assert unrelated.class_names[0] == predict(other, shipped_classifier).class_names[0]
    assert unrelated.probabilities[unrelated.class_names.index(TAUGHT)] < 0.01
    if after.class_names[0] == TAUGHT:  # the evidence is the taught photos, held in memory
        assert {n["class_name"] for n in after.neighbours} == {TAUGHT}
        assert all(isinstance(n["image"], np.ndarray) for n in after.neighbours)
    # the original is unchanged: same classes, same answer, its bank not widened
    assert shipped_classifier.num_classes == 102 and TAUGHT not in shipped_classifier.class_names
    assert predict(rose, shipped_classifier) == before
    assert shipped_classifier.references.extra is None


def test_teach_refusals_are_one_line(shipped_classifier, tmp_path):
    roses = thumbnails_of(shipped_classifier, "rose", 3)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a photo")
    non_flowers = [NON_FLOWER, *sorted((REPO_ROOT / "ood_photos").glob("*.jpg"))[:4]]
    cases = [
        ("Rose", roses, "already knows"),
        ("  ", roses, "give the new flower a name"),
        (TAUGHT, [*roses[:2], broken], "at least 3 readable photos, got 2 (1 could not be read"),
        (TAUGHT, roses * 7, "at most 20 photos"),
        (TAUGHT, non_flowers, "look like nothing the model learnt from"),
    ]
    for name, photos, message in cases:
        with pytest.raises(FlowerDemoError, match=re.escape(message)) as caught:
            shipped_classifier.teach(name, photos)
        assert "\n" not in str(caught.value)
    taught = shipped_classifier.teach(TAUGHT, roses)
    with pytest.raises(FlowerDemoError, match="already knows"):
        taught.teach(TAUGHT.upper(), roses)


def test_teach_command_writes_a_new_folder_that_serves_the_class(shipped_model_dir, tmp_path):
    """As users run it: a new folder, loaded back with its hashes checked; again on that folder for
    a second class; the source untouched; --out naming the source refused."""
    source_files = {p.name: p.stat().st_mtime_ns for p in shipped_model_dir.iterdir()}
    classifier = Classifier(shipped_model_dir)
    out = tmp_path / "taught"
    result = run_module(
        "flower_demo.teach",
        "--model",
        shipped_model_dir,
        "--name",
        TAUGHT,
        "--out",
        out,
        *thumbnails_of(classifier, "rose", 5),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"taught {TAUGHT!r} from 5 photos in ")
    metadata = json.loads((out / "metadata.json").read_text())
    assert metadata["class_names"][-1] == TAUGHT and len(metadata["class_names"]) == 103
    assert metadata["taught"]["classes"] == [{"name": TAUGHT, "photos": 5}]
    assert set(metadata["files"]) == {"model.tflite", "ood.npz", "thumbnails"}
    rose = next(p for p in EXAMPLE_PHOTOS if p.name.endswith("_rose.jpg"))
    answer = run_module("flower_demo.predict", rose, "--model", out, "--top_k", "2", "--json")
    assert answer.returncode == 0, answer.stderr
    assert {c for c in json.loads(answer.stdout)[0]["class_names"]} == {"rose", TAUGHT}

    served = Classifier(out)  # the photos in the bank, their mirror images in the rule's extra rows
    assert len(served.references.bank) == len(classifier.references.bank) + 5
    assert served.calibration.statistics[EXTRA_BANK].shape == (5, classifier.references.bank.shape[1])

    second = run_module(
        "flower_demo.teach",
        "--model",
        out,
        "--name",
        "second twin",
        "--out",
        tmp_path / "two",
        *thumbnails_of(classifier, "sunflower", 4),
    )
    assert second.returncode == 0, second.stderr
    two = Classifier(tmp_path / "two")
    assert two.class_names[-2:] == [TAUGHT, "second twin"]
    assert predict(thumbnails_of(classifier, "sunflower", 6)[5], two, top_k=2).class_names[0] in {
        "sunflower",
        "second twin",
    }

    refused = run_module(
        "flower_demo.teach",
        "--model",
        shipped_model_dir,
        "--name",
        "x",
        "--out",
        shipped_model_dir,
        *thumbnails_of(classifier, "rose", 3),
    )
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1
    assert "is the source model folder; pass --overwrite" in refused.stderr
    assert {p.name: p.stat().st_mtime_ns for p in shipped_model_dir.iterdir()} == source_files


def test_a_taught_folder_is_scored_on_the_datas_classes_and_checked_at_load(
    shipped_model_dir, tmp_path, capsys
):
    """evaluate on Flowers-102 data, which lacks the taught class: scored on the data's classes, an
    answer naming the taught class wrong (the figure is what the API's answers give). Then the
    folder's taught record no longer matching its class names is refused at load."""
    from flower_demo.evaluate import main as evaluate_main
    from flower_demo.teach import teach_folder

    classifier = Classifier(shipped_model_dir)
    out = tmp_path / "taught"
    taught = teach_folder(shipped_model_dir, "petunia twin", thumbnails_of(classifier, "petunia", 5), out)
    folder = flowers102_folder(tmp_path / "flowers")
    assert evaluate_main(["--model", str(out), "--data-dir", str(folder), "--split", "test", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    photos = fixture_photos()
    right = [predict(p, taught).class_names[0] == classifier.class_names[int(p.name[:3]) - 1] for p in photos]
    assert summary["n"] == len(photos) and summary["top1"] == pytest.approx(np.mean(right))

    metadata = json.loads((out / "metadata.json").read_text())
    metadata["taught"]["classes"][0]["name"] = "renamed"  # no longer the last class name
    (out / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(FlowerDemoError, match="not the last of its class_names"):
        Classifier(out)


def test_overwrite_teaches_the_folder_in_place_and_keeps_its_models(shipped_model_dir, tmp_path):
    """--overwrite on the source itself (a copy here): one class more, its model.keras and model.tflite
    kept and still vouched for; without it the same call is refused before anything is written."""
    from flower_demo.teach import teach_folder

    folder = tmp_path / "copy"
    shutil.copytree(shipped_model_dir, folder)
    roses = thumbnails_of(Classifier(folder), "rose", 3)
    with pytest.raises(FlowerDemoError, match="is the source model folder"):
        teach_folder(folder, TAUGHT, roses, folder)
    served = teach_folder(folder, TAUGHT, roses, folder, overwrite=True)
    assert served.class_names[-1] == TAUGHT and (folder / "model.keras").is_file()
    metadata = json.loads((folder / "metadata.json").read_text())
    assert set(metadata["files"]) == {"model.keras", "model.tflite", "ood.npz", "thumbnails"}
    assert (
        len(list((folder / "thumbnails").iterdir()))
        == len(list((shipped_model_dir / "thumbnails").iterdir())) + 3
    )
