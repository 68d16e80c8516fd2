"""The evaluation report (flower_demo.report): every section of the page on a small case whose
answers the test knows, its figures as valid PNG files, one-line errors for bad arguments, and the
hooks that write it: `evaluate --report`, `predict --plot` and the end of a `train` run."""

from __future__ import annotations

import base64
import io
import json
import warnings
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import TINY_CLASSES, TINY_COLOURS, run_module, save_solid
from PIL import Image

from flower_demo import FlowerDemoError, report
from flower_demo.core import Prediction

PER_CLASS = 4


class Page(HTMLParser):
    """What the report's HTML holds: section ids in order, headings, images, table cells' text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.headings: list[str] = []
        self.images: list[str] = []
        self.text: list[str] = []
        self._in_h2 = False
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "section":
            self.sections.append(attributes["id"])
        elif tag == "img":
            self.images.append(attributes["src"])
        self._in_h2 = tag == "h2"

    def handle_data(self, data: str) -> None:
        (self.headings if self._in_h2 else self.text).append(data)
        self._in_h2 = False


def png_from_data_uri(uri: str) -> bytes:
    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix)
    return base64.b64decode(uri[len(prefix) :])


def assert_complete_report(page: Path) -> Page:
    """Every section, in order, each figure embedded as the same valid PNG as the file beside it."""
    parsed = Page(page.read_text(encoding="utf-8"))
    assert parsed.sections == [section for section, _ in report.SECTIONS]
    assert parsed.headings == [heading for _, heading in report.SECTIONS]
    assert len(parsed.images) == len(report.FIGURES)
    for uri, name in zip(parsed.images, report.FIGURES.values()):
        data = png_from_data_uri(uri)
        assert data == (page.parent / name).read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            assert image.format == "PNG" and min(image.size) > 50
            image.verify()
    return parsed


@pytest.fixture
def known_case(tmp_path: Path):
    """12 photos of 3 classes (one unreadable file) and probabilities whose mistakes are known:
    two "beta flower" photos answered "gamma flower", one "alpha flower" answered "beta flower"."""
    labels = np.repeat(np.arange(3), PER_CLASS)
    items = [
        save_solid(tmp_path / "photos" / f"{i:02d}.png", TINY_COLOURS[TINY_CLASSES[c]], noise=20, seed=i)
        for i, c in enumerate(labels)
    ]
    items[5] = tmp_path / "photos" / "broken.jpg"
    items[5].write_text("not a photo")
    answers = labels.copy()
    answers[[4, 6]] = 2
    answers[0] = 1
    probabilities = np.full((len(labels), 3), 0.05)
    probabilities[np.arange(len(labels)), answers] = 0.9
    return probabilities, labels, items


def test_report_holds_every_section(known_case, tmp_path: Path) -> None:
    probabilities, labels, items = known_case
    page = report.write_report(
        tmp_path / "out", probabilities, labels, TINY_CLASSES, items, "tiny", "synthetic"
    )
    assert page == tmp_path / "out" / report.PAGE
    parsed = assert_complete_report(page)
    text = " ".join(parsed.text)
    assert "top-3" in text  # three classes: top-K is top-3
    photo, readable = report.thumbnail(items[5])  # the unreadable file: a placeholder, no crash
    assert not readable and photo.shape == (report.THUMBNAIL, report.THUMBNAIL, 3) and photo.std() == 0
    numbers = json.loads((tmp_path / "out" / report.NUMBERS).read_text())
    assert numbers["n"] == 12 and numbers["accuracy"]["top1"]["value"] == pytest.approx(9 / 12)
    assert numbers["accuracy"]["top3"]["value"] == 1.0
    low, high = numbers["accuracy"]["top1"]["interval"]
    assert low < 9 / 12 < high
    assert numbers["accuracy"]["mean_per_class"]["value"] == pytest.approx((3 / 4 + 2 / 4 + 1) / 3)
    assert numbers["expected_calibration_error"] == pytest.approx(0.9 - 9 / 12)  # every answer at 90%
    assert "Expected calibration error (15 equal-width bins): 0.1500." in text
    worst = numbers["per_class"][0]
    assert (worst["class"], worst["correct"], worst["n"]) == ("beta flower", 2, 4)
    assert worst["confused_with"] == {"gamma flower": 2}
    pairs = [(p["true"], p["predicted"], p["count"]) for p in numbers["confused_pairs"]]
    assert pairs == [("beta flower", "gamma flower", 2), ("alpha flower", "beta flower", 1)]
    assert "gamma flower" in parsed.text and "3 mistakes; the 3 the model was surest of " in text


def test_report_without_mistakes_or_photos(tmp_path: Path) -> None:
    labels = np.array([0, 1, 2, 2])
    page = report.write_report(tmp_path, np.eye(3)[labels], labels, TINY_CLASSES)
    parsed = assert_complete_report(page)
    assert "No image was confused with another class." in parsed.text


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(probabilities=np.full((12, 4), 0.25)), "4 columns for 3 class names"),
        (dict(probabilities=np.zeros((0, 3))), "non-empty"),
        (dict(labels=np.zeros(11, int)), "labels have shape"),
        (dict(labels=np.full(12, 3)), "class indices from 0 to 2"),
        (dict(labels=np.zeros(12)), "class indices"),  # floats are not class indices
        (dict(probabilities=np.full((12, 3), np.nan)), "NaN"),
        (dict(items=["a.jpg"]), "1 items for 12 labels"),
    ],
)
def test_bad_arguments_get_one_line(known_case, tmp_path: Path, change: dict, message: str) -> None:
    probabilities, labels, items = known_case
    arguments = dict(probabilities=probabilities, labels=labels, items=items) | change
    with pytest.raises(FlowerDemoError, match=message) as caught:
        report.write_report(tmp_path / "out", class_names=TINY_CLASSES, **arguments)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "out").exists()  # checked before anything is written


def test_report_folder_that_is_a_file(known_case, tmp_path: Path) -> None:
    file = tmp_path / "taken"
    file.write_text("x")
    with pytest.raises(FlowerDemoError, match="is a file, not a folder"):
        report.write_report(file, *known_case[:2], TINY_CLASSES)


# --- the one-photo figure --------------------------------------------------------------------


def test_plot_prediction_size_and_errors(tmp_path: Path) -> None:
    photo = save_solid(tmp_path / "wide.png", (200, 30, 30), size=(300, 120), noise=10)
    prediction = SimpleNamespace(class_names=TINY_CLASSES, probabilities=[0.7, 0.2, 0.1], is_known=False)
    out = report.plot_prediction(photo, prediction, tmp_path / "chart.png")
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == report.PLOT_PIXELS
        colours = np.asarray(image.convert("RGB")).reshape(-1, 3)
    assert (np.abs(colours - [200, 30, 30]).sum(axis=1) < 60).mean() > 0.02  # the photo is drawn
    with pytest.raises(FlowerDemoError, match="cannot write"):
        report.plot_prediction(photo, prediction, tmp_path / "missing" / "chart.png")
    not_photo = tmp_path / "note.jpg"
    not_photo.write_text("hello")
    with pytest.raises(FlowerDemoError, match="not an image"):
        report.plot_prediction(not_photo, prediction, tmp_path / "chart.png")

    # with reference photos: a row of them under the chart, drawn; of the top species for a photo
    # it accepts (Prediction.neighbours), of any species for one it turns away (Prediction.closest)
    green = save_solid(tmp_path / "green.jpg", (30, 200, 30), size=(112, 112))
    blue = save_solid(tmp_path / "blue.jpg", (30, 30, 200), size=(112, 112))
    neighbours = [{"class_name": "beta flower", "similarity": 0.8, "image": str(green)}] * 2
    closest = [{"class_name": "gamma flower", "similarity": 0.5, "image": str(blue)}] * 3
    for known, colour in ((True, [30, 200, 30]), (False, [30, 30, 200])):
        names, shares = TINY_CLASSES, [0.7, 0.2, 0.1]
        prediction = Prediction([2, 1, 3], names, shares, known, neighbours, closest if not known else [])
        taller = (report.PLOT_PIXELS[0], report.PLOT_PIXELS[1] + report.PLOT_NEIGHBOURS_HEIGHT)
        with Image.open(report.plot_prediction(photo, prediction, tmp_path / "like.png")) as image:
            assert image.size == taller
            below = np.asarray(image.convert("RGB"))[report.PLOT_PIXELS[1] :].reshape(-1, 3)
        assert (np.abs(below - colour).sum(axis=1) < 60).mean() > 0.05  # those thumbnails are drawn


@pytest.mark.slow
def test_cli_plot_one_figure_per_image(tiny_model_dir: Path, tmp_path: Path) -> None:
    a = save_solid(tmp_path / "a.png", (200, 30, 30), noise=20)
    b = save_solid(tmp_path / "b.png", (30, 200, 30), noise=20)
    out = tmp_path / "top.png"
    result = run_module(
        "flower_demo.predict", str(a), str(b), "--model", str(tiny_model_dir), "--plot", str(out)
    )
    assert result.returncode == 0, result.stderr
    for stem in ("a", "b"):
        written = tmp_path / f"top_{stem}.png"
        assert f"top-3 chart: {written}" in result.stdout
        with Image.open(written) as image:
            assert image.size == report.PLOT_PIXELS
    assert not out.exists()  # several images: one file each, none under OUT itself


def test_cli_plot_single_image_and_unwritable(tiny_model_dir: Path, tmp_path: Path) -> None:
    """As a subprocess, as users run it (it starts without TensorFlow, in about a second). Imported
    here, the module flower_demo.predict would take the place of the function flower_demo.predict
    for the rest of this test process: Python binds an imported submodule to its package's name."""
    a = save_solid(tmp_path / "a.png", (200, 30, 30), noise=20)
    out = tmp_path / "top.png"
    result = run_module("flower_demo.predict", a, "--model", tiny_model_dir, "--plot", out, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["plot"] == str(out)
    assert Image.open(out).size == report.PLOT_PIXELS
    unwritable = tmp_path / "no" / "x.png"
    result = run_module("flower_demo.predict", a, "--model", tiny_model_dir, "--plot", unwritable)
    assert result.returncode == 1
    err = result.stderr.strip()
    assert err.startswith("error: ") and "cannot write" in err and "\n" not in err


# --- evaluate and train write it -------------------------------------------------------------


@pytest.mark.slow
def test_cli_evaluate_report_on_a_class_folder(
    tiny_model_dir: Path, tiny_class_tree: Path, tmp_path: Path
) -> None:
    out = tmp_path / "report"
    result = run_module(
        "flower_demo.evaluate", "--model", str(tiny_model_dir), "--image-folder", str(tiny_class_tree),
        "--report", str(out), "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["report"] == str(out / report.PAGE) and summary["n"] == 6
    assert_complete_report(out / report.PAGE)
    numbers = json.loads((out / report.NUMBERS).read_text())
    assert numbers["n"] == 6 and numbers["accuracy"]["top1"]["value"] == pytest.approx(summary["top1"])
    assert numbers["source"].startswith("folder:")


def test_evaluate_report_pointing_at_a_file(
    tiny_model_dir: Path, tiny_class_tree: Path, tmp_path: Path, capsys
) -> None:
    from flower_demo.evaluate import main as evaluate_main

    file = tmp_path / "report.html"
    file.write_text("x")
    args = ["--model", str(tiny_model_dir), "--image-folder", str(tiny_class_tree), "--report", str(file)]
    assert evaluate_main(args) == 1
    err = capsys.readouterr().err
    assert err == f"error: report folder {file} is a file, not a folder\n"


@pytest.mark.slow
def test_train_writes_the_validation_report(trained_run) -> None:
    """The end of a training run (conftest's shared one) writes its validation split's report."""
    page = trained_run.run_dir / "report" / report.PAGE
    assert f"validation report: {page}" in trained_run.output
    assert_complete_report(page)
    assert json.loads((trained_run.run_dir / "report" / report.NUMBERS).read_text())["n"] == 6


def test_balanced_accuracy_of_many_resamples_is_scikit_learns() -> None:
    """The bootstrap's vectorized statistic gives scikit-learn's balanced accuracy for each row,
    classes missing from a row's labels left out as scikit-learn leaves them out."""
    from sklearn.metrics import balanced_accuracy_score

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 7, 60)
    predicted = np.where(rng.random(60) < 0.7, labels, rng.integers(0, 9, 60))
    rows = rng.integers(0, 60, (25, 60))  # 25 resamples, some missing classes
    got = report.balanced_accuracy(labels[rows], predicted[rows])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn warns of predicted classes absent from a row
        expected = [balanced_accuracy_score(labels[r], predicted[r]) for r in rows]
    np.testing.assert_allclose(got, expected, atol=1e-12)
    assert got.shape == (25,)
