"""The app in a real browser (headless Debian chromium driven by Playwright), as a visitor uses it:
upload a photo and see the chart of the top five species beside it ("<1%" on the tiny rows);
upload a photo of something else and see no species named as the answer, and why; upload a
broken file, read why on a clean page, and go on; upload a file over the size limit and read why;
click an example's thumbnail; tick Explain and see the overlay without the examples moving; see
under the chart the photos the model learnt from that look most like the upload, for a confident,
an unsure and a rejected photo, on a desktop and a phone screen.

Where a test also checks that the shipped model names an example's species (`test_regression_*`),
that part is a regression check, not evidence of accuracy: the examples are train photos the
model learnt from, chosen because it gets them right (examples/README.md).

Each state is saved as a screenshot in a temporary folder (printed with `-s`); the tests never
write into the repository. README's docs/screenshot.png is refreshed by a separate command:

    python tests/test_browser.py --screenshot
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import ModuleType

import pytest
from helpers import EXAMPLE_PHOTOS, NON_FLOWER, REPO_ROOT, fixture_photos, free_port, is_trained, load_app

EXAMPLES = EXAMPLE_PHOTOS
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
PHOTO_ID = "flower-photo"  # app.PHOTO_ID (the app module is imported by a fixture, not here)
VIEWPORT = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
WAIT_MS = 120_000  # a prediction on a busy 2-core machine, plus the page's own start-up

pytestmark = [pytest.mark.browser, pytest.mark.slow]  # slow: chromium starts and renders


def example(slug: str) -> Path:
    return next(p for p in EXAMPLES if slug in p.name)


def expected_heading(app: ModuleType, photo: Path) -> str:
    """What the chart's heading says when the model is called directly: the page must agree."""
    return app.heading(app.predict(photo, app.CLASSIFIER, top_k=app.TOP_K))


@pytest.fixture(scope="module")
def app(app_module: ModuleType) -> ModuleType:
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api")
    return app_module


@pytest.fixture(scope="module")
def url(app: ModuleType, app_url: str) -> str:
    return app_url


def open_page(playwright, url: str, viewport: dict[str, int] = VIEWPORT):
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
    page = browser.new_page(viewport=viewport)
    page.set_default_timeout(WAIT_MS)
    page.goto(url)
    photo_upload(page).wait_for(state="attached")
    return browser, page


@pytest.fixture(scope="module")
def page(url: str):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser, page = open_page(playwright, url)
        try:
            yield page
        finally:
            browser.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    """Where the states are saved: a temporary folder, never the repository."""
    folder = tmp_path_factory.mktemp("browser_states")
    print(f"\nbrowser screenshots: {folder}")
    return folder


def photo_upload(page):
    """The photo box's file input (the teach tab has one of its own)."""
    return page.locator(f"#{PHOTO_ID}").get_by_test_id("file-upload")


def upload(page, path: Path) -> None:
    photo_upload(page).set_input_files(str(path))


def heading(page):
    return page.get_by_test_id("label-output-value")


def shows_answer_for(app: ModuleType, page, photo: Path) -> None:
    from playwright.sync_api import expect

    expect(heading(page)).to_have_text(expected_heading(app, photo), timeout=WAIT_MS)
    settled(page)


def settled(page) -> None:
    """Every image on the page loaded and no event still running. (Not Playwright's "networkidle":
    the page keeps a heartbeat connection open for the session's taught flowers, a gr.State.)"""
    page.wait_for_function(
        "() => [...document.images].every(i => i.complete)"
        " && !document.querySelector('.progress-text, .eta-bar, .progress-bar')"
    )


def test_regression_photo_shows_its_species_atop_a_top5_chart_beside_it(
    app: ModuleType, page, shots: Path
) -> None:
    from playwright.sync_api import expect

    photo = example("water_lily")
    upload(page, photo)
    shows_answer_for(app, page, photo)
    if is_trained(app.CLASSIFIER.metadata):  # regression check: a train photo the model learnt from
        expect(heading(page)).to_have_text("water lily")
        expect(page.get_by_text("Most likely water lily")).to_be_visible()
    rows = page.locator(f"#{app.CHART_ID} .confidence-set")
    expect(rows).to_have_count(app.TOP_K)
    shares = app.predict(photo, app.CLASSIFIER, top_k=app.TOP_K).probabilities
    for row, share in zip(rows.all(), shares):  # what each row's percentage reads as, drawn
        shown = row.locator(".confidence").evaluate(
            "e => getComputedStyle(e).visibility === 'hidden' ? getComputedStyle(e, '::after').content"
            " : e.textContent"
        )
        assert shown == ('"<1%"' if round(share * 100) == 0 else f"{round(share * 100)}%"), (share, shown)

    photo_box = page.get_by_test_id("image").bounding_box()
    chart_box = page.get_by_test_id("label").bounding_box()
    assert photo_box["x"] + photo_box["width"] <= chart_box["x"]  # side by side
    page.screenshot(path=str(shots / "answer.png"), full_page=True)


def test_rejected_photo_names_no_species_as_the_answer(app: ModuleType, page, shots: Path) -> None:
    from playwright.sync_api import expect

    if app.CLASSIFIER.calibration is None:
        pytest.skip("the served model has no calibration (python -m flower_demo.calibrate)")
    upload(page, NON_FLOWER)
    expect(heading(page)).to_have_text(
        f"Not one of the {len(app.CLASSIFIER.class_names)} species", timeout=WAIT_MS
    )
    expect(page.get_by_text("This does not look like one of the")).to_be_visible()
    reason = app.REJECTION_REASONS[app.CLASSIFIER.calibration.ood_rule]
    expect(page.get_by_text(reason)).to_be_visible()
    candidates = page.locator("[data-testid$='-confidence-set']")
    expect(candidates).to_have_count(app.TOP_K)
    assert "Most likely" not in page.inner_text("body") and "too low" not in page.inner_text("body")
    page.screenshot(path=str(shots / "rejected.png"), full_page=True)


def test_broken_upload_leaves_a_clean_page_and_the_next_works(
    app: ModuleType, page, shots: Path, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    photo = example("rose")
    upload(page, photo)  # the broken file replaces a photo, the case Gradio 6 reported twice
    shows_answer_for(app, page, photo)
    fake = tmp_path / "holiday.jpg"
    fake.write_text("This is a text file, not a photo.\n")
    upload(page, fake)
    toast = page.get_by_test_id("toast-text")
    expect(toast.first).to_contain_text("holiday.jpg: not an image", timeout=WAIT_MS)
    expect(heading(page)).to_have_count(0, timeout=WAIT_MS)  # the rose's chart is gone
    expect(page.get_by_text(app.PROMPT)).to_be_visible()
    page.wait_for_timeout(1000)
    page.screenshot(path=str(shots / "broken_upload.png"), full_page=True)
    expect(toast).to_have_count(1)  # one upload, one message
    expect(page.get_by_test_id("image").locator("img")).to_have_count(0)  # no broken-image icon
    toast_parts = ":not([data-testid=toast-body]):not([data-testid=toast-body] *)"
    expect(page.locator(f".error:visible{toast_parts}")).to_have_count(0)  # no "Error" badges elsewhere
    page.get_by_test_id("toast-close").click()

    photo = example("marigold")
    upload(page, photo)
    shows_answer_for(app, page, photo)
    page.screenshot(path=str(shots / "after_broken_upload.png"), full_page=True)


def test_oversized_upload_is_refused_with_a_message(app: ModuleType, page, tmp_path: Path) -> None:
    """Over the app's MAX_FILE_SIZE (20 MB): the page refuses it before any upload or model call."""
    from playwright.sync_api import expect

    big = tmp_path / "huge.jpg"
    big.write_bytes(example("rose").read_bytes() + bytes(21 * 2**20))
    upload(page, big)
    toast = page.get_by_test_id("toast-text")
    expect(toast.first).to_contain_text("exceed the maximum allowed size of 20.0 Mb", timeout=WAIT_MS)
    expect(toast.first).to_contain_text("huge.jpg")
    expect(page.get_by_test_id("image").locator("img")).to_have_count(0)  # not shown as a photo
    page.get_by_test_id("toast-close").click()


def test_regression_clicking_a_labelled_example_names_it(app: ModuleType, page, shots: Path) -> None:
    from playwright.sync_api import expect

    photo = example("passion_flower")
    species = app.examples()[1][app.examples()[0].index(str(photo))]
    thumbnails = page.locator(f"#{app.EXAMPLES_ID} .thumbnail-item")
    expect(thumbnails).to_have_count(len(app.examples()[0]))  # a thumbnail per example ...
    expect(thumbnails.locator("img")).to_have_count(len(app.examples()[0]))
    thumbnail = thumbnails.filter(has_text=species)  # ... captioned with its species
    expect(thumbnail).to_have_count(1)
    thumbnail.click()
    shows_answer_for(app, page, photo)
    expect(page.get_by_test_id("image").locator("img")).to_be_visible()  # the photo is shown
    if is_trained(app.CLASSIFIER.metadata):  # regression check: a train photo the model learnt from
        assert species == expected_heading(app, photo)
    page.screenshot(path=str(shots / "example.png"), full_page=True)


def test_explain_shows_the_overlay_without_moving_the_examples(app: ModuleType, page, shots: Path) -> None:
    from playwright.sync_api import expect

    if not app.CLASSIFIER.explains:
        pytest.skip("the served model returns no class activation maps")
    photo = example("sunflower")
    upload(page, photo)
    shows_answer_for(app, page, photo)
    examples = page.locator(f"#{app.EXAMPLES_ID}")
    before = examples.bounding_box()
    overlay = page.locator("#gradcam img")
    expect(overlay).to_have_count(0)  # off by default
    box = page.get_by_label("Explain (Grad-CAM)")
    box.check()
    expect(overlay).to_be_visible(timeout=WAIT_MS)
    settled(page)
    after = examples.bounding_box()
    assert abs(after["y"] - before["y"]) < 5, (before, after)
    page.screenshot(path=str(shots / "explain.png"), full_page=True)
    box.uncheck()
    expect(overlay).to_have_count(0, timeout=WAIT_MS)
    expect(page.get_by_test_id("image").locator("img")).to_be_visible()  # back to the photo


def unsure_collage(folder: Path) -> Path:
    """Four flowers in one photo, which the shipped model answers unsure, not turned away (colt's
    foot, 24%; its kNN score 0.06 above the threshold)."""
    from PIL import Image

    slugs = ("pink_primrose", "colts_foot", "peruvian_lily", "water_lily")
    photos = [next(p for p in fixture_photos() if slug in p.name) for slug in slugs]
    collage = Image.new("RGB", (512, 512))
    for i, photo in enumerate(photos):
        with Image.open(photo) as image:
            collage.paste(image.convert("RGB").resize((256, 256)), ((i % 2) * 256, (i // 2) * 256))
    collage.save(folder / "four_flowers.jpg")
    return folder / "four_flowers.jpg"


@pytest.mark.parametrize("screen", ["desktop", "phone"])
def test_reference_photos_under_the_chart(
    app: ModuleType, url: str, page, shots: Path, tmp_path: Path, screen: str
) -> None:
    """Under the chart, the photos it learnt from that look most like the upload: three thumbnails
    captioned with species and similarity, the model's own, titled by what they are (of the answer's
    species; of any species for a photo turned away), for a confident, an unsure and a rejected photo."""
    from playwright.sync_api import expect

    if app.CLASSIFIER.references is None:
        pytest.skip("the served model holds no reference photos (calibrate --references-only)")
    cases = {"confident": example("_rose"), "unsure": unsure_collage(tmp_path), "rejected": NON_FLOWER}
    page = page.context.browser.new_page(viewport=VIEWPORT if screen == "desktop" else PHONE)
    page.set_default_timeout(WAIT_MS)
    page.goto(url)
    photo_upload(page).wait_for(state="attached")
    try:
        for case, photo in cases.items():
            upload(page, photo)
            shows_answer_for(app, page, photo)
            direct = app.predict(photo, app.CLASSIFIER, top_k=app.TOP_K)
            gallery = page.locator(f"#{app.EVIDENCE_ID}")
            title = app.EVIDENCE_TITLE if direct.is_known else app.EVIDENCE_TITLE_REJECTED
            expect(gallery.get_by_test_id("block-label")).to_have_text(title)
            items = gallery.locator(".thumbnail-item")
            found = direct.neighbours if direct.is_known else direct.closest
            captions = [f"{n['class_name']}, {n['similarity']:.2f}" for n in found]
            expect(items).to_have_count(len(captions))
            expect(items.locator(".caption-label")).to_have_text(captions)
            for img in items.locator("img").all():  # each thumbnail loaded and drawn
                expect(img).to_be_visible()
                assert img.evaluate("e => e.complete && e.naturalWidth") > 0
            chart, shown = page.get_by_test_id("label").bounding_box(), gallery.bounding_box()
            assert shown["y"] >= chart["y"] + chart["height"]  # under the chart
            assert shown["x"] >= 0 and shown["x"] + shown["width"] <= page.viewport_size["width"]
            page.screenshot(path=str(shots / f"reference_photos_{screen}_{case}.png"), full_page=True)
    finally:
        page.close()


def test_a_taught_flower_is_seen_by_its_session_only(app: ModuleType, url: str, page, shots: Path) -> None:
    """Two visitors: one teaches a flower (a name and five photos, here thumbnails of roses the model
    learnt from, so the taught twin answers a rose photo beside rose); their next answers include
    it, with the photos they gave as its evidence; the other visitor's answers never do."""
    from playwright.sync_api import expect

    if app.CLASSIFIER.references is None:
        pytest.skip("the served model holds no reference photos (calibrate --references-only)")
    rose, name = example("_rose"), "garden twin"
    index = app.CLASSIFIER.class_names.index("rose")
    rows = [i for i, label in enumerate(app.CLASSIFIER.references.labels) if label == index][:5]
    photos = [str(app.CLASSIFIER.references.thumbnails[i]) for i in rows]
    other = page.context.browser.new_context(viewport=VIEWPORT).new_page()  # a second visitor
    other.set_default_timeout(WAIT_MS)
    teacher = page.context.browser.new_context(viewport=VIEWPORT).new_page()
    teacher.set_default_timeout(WAIT_MS)
    try:
        for visitor in (teacher, other):
            visitor.goto(url)
            photo_upload(visitor).wait_for(state="attached")
        teacher.get_by_role("tab", name="Teach it a new flower").click()
        teacher.locator("#teach-name textarea, #teach-name input").first.fill(name)
        teacher.locator("#teach-photos").get_by_test_id("file-upload").set_input_files(photos)
        expect(teacher.locator("#teach-photos")).to_contain_text(Path(photos[-1]).stem)
        teacher.locator("#teach-button").click()
        expect(teacher.locator("#taught-list")).to_contain_text(f"Taught in this tab: {name}")
        teacher.screenshot(path=str(shots / "teach_tab.png"), full_page=True)
        teacher.get_by_role("tab", name="Name a flower").click()
        taught = app.CLASSIFIER.teach(name, photos)
        for visitor, classifier in ((teacher, taught), (other, app.CLASSIFIER)):
            upload(visitor, rose)
            direct = app.predict(rose, classifier, top_k=app.TOP_K)
            expect(heading(visitor)).to_have_text(app.heading(direct, classifier))
            rows = visitor.locator(f"#{app.CHART_ID} [data-testid$='-confidence-set']")
            expect(rows).to_have_count(app.TOP_K)
            for species in [*direct.class_names, name]:  # the taught one: in the teacher's chart only
                row = visitor.locator(f"#{app.CHART_ID} [data-testid='{species}-confidence-set']")
                expect(row).to_have_count(int(species in direct.class_names))
        assert name in app.predict(rose, taught, top_k=app.TOP_K).class_names
        assert name not in app.predict(rose, app.CLASSIFIER, top_k=app.TOP_K).class_names
        teacher.screenshot(path=str(shots / "teach_answer.png"), full_page=True)
    finally:
        teacher.context.close()
        other.context.close()


def refresh_screenshot(path: Path = SCREENSHOT) -> Path:
    """README's picture: the shipped model's answer for the water lily example."""
    from playwright.sync_api import sync_playwright

    app = load_app()
    if not is_trained(app.CLASSIFIER.metadata):
        raise SystemExit("error: README's screenshot must show the trained model (weights/)")
    _, url, _ = app.launch(prevent_thread_lock=True, server_port=free_port(), quiet=True)
    try:
        with sync_playwright() as playwright:
            browser, page = open_page(playwright, url)
            photo = example("water_lily")
            upload(page, photo)
            shows_answer_for(app, page, photo)
            page.screenshot(path=str(path), full_page=True)
            browser.close()
    finally:
        app.demo.close()
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Refresh README's screenshot of the app.")
    parser.add_argument(
        "--screenshot", action="store_true", help=f"write {SCREENSHOT.relative_to(REPO_ROOT)}"
    )
    if not parser.parse_args().screenshot:
        parser.print_help()
        sys.exit(2)
    print(refresh_screenshot())
