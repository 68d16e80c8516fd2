"""The Gradio app served for real on a free port and called through gradio_client, as a user's
script would: the right species comes back, a broken upload gets a readable error without
taking the app down, and many calls at once all get their own answer.

Serves the shipped weights/, or the model folder named by FLOWER_DEMO_MODEL.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from helpers import free_port, load_app

REPO_ROOT = Path(__file__).resolve().parent.parent
FLOWERS = sorted((REPO_ROOT / "tests" / "fixtures" / "flowers").glob("*.jpg"))
TRAINED_IMAGE_SIZE = 224  # the shipped model's input size; smaller ones are debug models
CALL_TIMEOUT = 120  # seconds for one call, generous for a busy 2-core machine
CONCURRENT_CALLS = 20

pytestmark = pytest.mark.app


def species(app: ModuleType, photo: Path) -> str:
    """The true class of a fixture, from its name: NNN_slug.jpg is label id NNN (1-based)."""
    return app.CLASSIFIER.class_names[int(photo.name[:3]) - 1]


def is_trained(app: ModuleType) -> bool:
    """Only the trained model can be held to naming species right; debug models are untrained."""
    metadata = app.CLASSIFIER.metadata
    return "metrics" in metadata and metadata["image_size"] == TRAINED_IMAGE_SIZE


@pytest.fixture(scope="module")
def app() -> ModuleType:
    return load_app()


@pytest.fixture(scope="module")
def client(app: ModuleType) -> Iterator:
    from gradio_client import Client

    _, url, _ = app.demo.launch(prevent_thread_lock=True, server_port=free_port(), quiet=True)
    try:
        yield Client(url, verbose=False)
    finally:
        app.demo.close()


def call(client, image) -> tuple[dict, str]:
    from gradio_client import handle_file

    image = handle_file(str(image)) if image is not None else None
    return client.submit(image, api_name="/predict").result(timeout=CALL_TIMEOUT)


def expected_top1(app: ModuleType, photo: Path) -> str:
    """What the model says when called directly: the served answer must be the same."""
    return app.predict(photo, app.CLASSIFIER).class_names[0]


def test_predict_is_the_only_endpoint(client) -> None:
    assert set(client.view_api(return_format="dict", print_info=False)["named_endpoints"]) == {"/predict"}


def test_predict_returns_top5_as_plain_json(app: ModuleType, client) -> None:
    photo = FLOWERS[0]
    chart, verdict = call(client, photo)
    direct = app.predict(photo, app.CLASSIFIER)
    assert chart["label"] == direct.class_names[0]
    assert [c["label"] for c in chart["confidences"]] == direct.class_names
    confidences = [c["confidence"] for c in chart["confidences"]]
    assert all(type(p) is float for p in confidences)
    assert confidences == sorted(confidences, reverse=True) and sum(confidences) <= 1 + 1e-6
    assert confidences == pytest.approx(direct.probabilities, abs=1e-5)
    assert direct.class_names[0].lower() in verdict.lower()


def test_predict_names_the_species(app: ModuleType, client) -> None:
    """One clear photo end to end; the model's accuracy itself is measured by evaluate, not here."""
    if not is_trained(app):
        pytest.skip("debug model (no metrics or not 224 px): species names are meaningless")
    photo = next(p for p in FLOWERS if "water_lily" in p.name)
    chart, verdict = call(client, photo)
    assert chart["label"] == species(app, photo) == "water lily"
    assert "Most likely **water lily**" in verdict


def test_broken_upload_gives_readable_error_and_app_keeps_serving(client, tmp_path: Path) -> None:
    from gradio_client.exceptions import AppError

    fake = tmp_path / "holiday.jpg"
    fake.write_text("This is a text file, not a photo.\n")
    with pytest.raises(AppError) as error:
        call(client, fake)
    assert "not an image" in str(error.value)
    assert "holiday.jpg" in str(error.value)  # the user's file name, not the server's cache path
    assert "/tmp" not in str(error.value)
    chart, _ = call(client, FLOWERS[1])  # still serving
    assert len(chart["confidences"]) == 5


def test_no_image_asks_for_one(client) -> None:
    chart, verdict = call(client, None)
    assert not chart
    assert "upload" in verdict.lower()


def test_concurrent_calls_all_get_their_own_answer(app: ModuleType, client) -> None:
    photos = [FLOWERS[i % len(FLOWERS)] for i in range(CONCURRENT_CALLS)]
    expected = {photo: expected_top1(app, photo) for photo in set(photos)}
    from gradio_client import handle_file

    jobs = [client.submit(handle_file(str(photo)), api_name="/predict") for photo in photos]
    answers = [job.result(timeout=CALL_TIMEOUT)[0]["label"] for job in jobs]
    assert answers == [expected[photo] for photo in photos]


def test_low_confidence_is_not_stated_as_fact(app: ModuleType) -> None:
    unsure = app.Prediction([73, 1], ["water lily", "pink primrose"], [app.LOW_CONFIDENCE - 0.01, 0.2])
    sure = app.Prediction([73, 1], ["water lily", "pink primrose"], [0.93, 0.02])
    assert "not sure" in app.verdict(unsure).lower()
    assert "not sure" not in app.verdict(sure).lower()
    assert "**water lily** (93%)" in app.verdict(sure)


def test_about_reports_accuracy_and_limits(app: ModuleType) -> None:
    metadata = app.CLASSIFIER.metadata
    text = app.about(metadata, app.CLASSIFIER.class_names)
    assert "102" in text and "not a plant-safety tool" in text
    if "validation_top1" in metadata.get("metrics", {}):
        assert f"{metadata['metrics']['validation_top1']:.1%}" in text


def test_unknown_photo_is_said_to_be_none_of_the_species(app: ModuleType) -> None:
    rejected = app.Prediction([73, 1], ["water lily", "pink primrose"], [0.35, 0.2], is_known=False)
    text = app.verdict(rejected)
    assert f"does not look like one of the {len(app.CLASSIFIER.class_names)} species" in text
    assert "*water lily*" in text and "Most likely" not in text


def test_non_flower_upload_is_rejected(app: ModuleType, client) -> None:
    if app.CLASSIFIER.calibration is None:
        pytest.skip("the served model has no calibration (python -m flower_demo.calibrate)")
    chart, verdict = call(client, REPO_ROOT / "tests" / "fixtures" / "non_flowers" / "cat.jpg")
    assert "does not look like one of the" in verdict
    assert len(chart["confidences"]) == app.TOP_K  # the candidates are still shown


def test_explain_off_computes_nothing(app: ModuleType, monkeypatch) -> None:
    def no_gradients(*args, **kwargs):
        raise AssertionError("Grad-CAM computed while the box is off")

    monkeypatch.setattr(app, "gradcam", no_gradients)
    for image in (str(FLOWERS[0]), None):
        update = app.explain(image, False)
        assert update["visible"] is False and update["value"] is None


def test_explain_on_shows_the_overlay(app: ModuleType, tmp_path: Path) -> None:
    update = app.explain(str(FLOWERS[0]), True)
    assert update["visible"] is True
    assert update["value"].size[0] == update["value"].size[1] >= app.CLASSIFIER.image_size
    fake = tmp_path / "holiday.jpg"
    fake.write_text("not a photo")
    assert app.explain(str(fake), True)["visible"] is False  # `/predict` reports the error
    assert app.explain(None, True)["visible"] is False


def test_missing_model_is_one_clear_line(tmp_path: Path) -> None:
    """A host pointing the app at a model that is not there gets one line and exit status 1."""
    env = {**os.environ, "FLOWER_DEMO_MODEL": str(tmp_path / "no_model_here")}
    command = [sys.executable, str(REPO_ROOT / "app.py")]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=CALL_TIMEOUT)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "error: cannot serve: model file not found" in result.stderr
