"""The app in a real browser (headless Debian chromium driven by Playwright), as a visitor uses it:
upload a photo and see the chart beside it name the species, upload a broken file and read why,
click an example.

Also saves docs/screenshot.png, but only when serving the trained model, so a debug run never
replaces the documented page with an untrained model's guesses.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from helpers import free_port, load_app

REPO_ROOT = Path(__file__).resolve().parent.parent
FLOWERS = sorted((REPO_ROOT / "tests" / "fixtures" / "flowers").glob("*.jpg"))
SCREENSHOT = REPO_ROOT / "docs" / "screenshot.png"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
VIEWPORT = {"width": 1280, "height": 900}
TRAINED_IMAGE_SIZE = 224  # the shipped model's input size; smaller ones are debug models
WAIT_MS = 120_000  # a prediction on a busy 2-core machine, plus the page's own start-up

pytestmark = pytest.mark.browser


def is_trained(app: ModuleType) -> bool:
    metadata = app.CLASSIFIER.metadata
    return "metrics" in metadata and metadata["image_size"] == TRAINED_IMAGE_SIZE


def expected_top1(app: ModuleType, photo: Path) -> str:
    """What the model says when called directly: the page must show the same."""
    return app.predict(photo, app.CLASSIFIER).class_names[0]


@pytest.fixture(scope="module")
def app() -> ModuleType:
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api")
    return load_app()


@pytest.fixture(scope="module")
def url(app: ModuleType) -> Iterator[str]:
    _, url, _ = app.demo.launch(prevent_thread_lock=True, server_port=free_port(), quiet=True)
    try:
        yield url
    finally:
        app.demo.close()


@pytest.fixture(scope="module")
def page(url: str):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.set_default_timeout(WAIT_MS)
            page.goto(url)
            page.get_by_test_id("file-upload").wait_for(state="attached")
            yield page
        finally:
            browser.close()


def upload(page, path: Path) -> None:
    page.get_by_test_id("file-upload").set_input_files(str(path))


def test_photo_shows_top1_in_chart_beside_it(app: ModuleType, page, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    photo = next(p for p in FLOWERS if "water_lily" in p.name)
    upload(page, photo)
    top1 = page.get_by_test_id("label-output-value")
    expect(top1).to_have_text(expected_top1(app, photo), timeout=WAIT_MS)
    if is_trained(app):
        expect(top1).to_have_text("water lily")
        expect(page.get_by_text("Most likely water lily")).to_be_visible()
    expect(page.locator("[data-testid$='-confidence-set']")).to_have_count(app.TOP_K, timeout=WAIT_MS)

    photo_box = page.get_by_test_id("image").bounding_box()
    chart_box = page.get_by_test_id("label").bounding_box()
    assert photo_box["x"] + photo_box["width"] <= chart_box["x"]  # side by side
    assert abs(photo_box["y"] - chart_box["y"]) < 10

    page.wait_for_load_state("networkidle")  # example thumbnails drawn
    shot = SCREENSHOT if is_trained(app) else tmp_path / SCREENSHOT.name
    shot.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


def test_broken_upload_shows_reason_once_and_page_keeps_working(
    app: ModuleType, page, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    photo = next(p for p in FLOWERS if "cyclamen" in p.name)
    upload(page, photo)  # the broken file replaces a photo, the case Gradio 6 reports twice
    expect(page.get_by_test_id("label-output-value")).to_have_text(expected_top1(app, photo), timeout=WAIT_MS)
    fake = tmp_path / "holiday.jpg"
    fake.write_text("This is a text file, not a photo.\n")
    upload(page, fake)
    toast = page.get_by_test_id("toast-text")
    expect(toast.first).to_contain_text("holiday.jpg: not an image", timeout=WAIT_MS)
    page.wait_for_timeout(1000)
    expect(toast).to_have_count(1)  # one upload, one error (not one per `change` event)

    photo = next(p for p in FLOWERS if "marigold" in p.name)
    upload(page, photo)
    expect(page.get_by_test_id("label-output-value")).to_have_text(expected_top1(app, photo), timeout=WAIT_MS)


def test_clicking_an_example_classifies_it(app: ModuleType, page) -> None:
    from playwright.sync_api import expect

    page.get_by_role("button", name="Remove Image").click()
    expect(page.get_by_test_id("label-output-value")).to_have_count(0, timeout=WAIT_MS)
    photo = next(p for p in FLOWERS if "passion_flower" in p.name)
    page.locator(f"img[src$='{photo.name}']").click()
    expect(page.get_by_test_id("label-output-value")).to_have_text(expected_top1(app, photo), timeout=WAIT_MS)


def test_explain_box_shows_and_hides_the_overlay(app: ModuleType, page) -> None:
    from playwright.sync_api import expect

    photo = next(p for p in FLOWERS if "water_lily" in p.name)
    upload(page, photo)
    expect(page.get_by_test_id("label-output-value")).to_have_text(expected_top1(app, photo), timeout=WAIT_MS)
    overlay = page.locator("#gradcam img")
    expect(overlay).to_have_count(0)  # off by default
    box = page.get_by_label("Explain (Grad-CAM)")
    box.check()
    expect(overlay).to_be_visible(timeout=WAIT_MS)
    box.uncheck()
    expect(overlay).to_have_count(0, timeout=WAIT_MS)
