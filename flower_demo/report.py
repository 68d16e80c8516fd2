"""Where a model fails, shown: the evaluation report and the one-photo top-K figure.

    from flower_demo.report import write_report, plot_prediction
    write_report("docs/report", probabilities, labels, class_names, items, title="...", source="...")
    plot_prediction("photo.jpg", prediction, "photo_top5.png")

`write_report` writes one self-contained HTML page (every figure embedded as a PNG data URI), the
same figures as PNG files and the numbers as report.json: top-1, top-K and mean per-class
accuracy with percentile-bootstrap 95% intervals, per-class accuracy worst first, the confusion
matrix and its most-confused pairs, grids of the most confident mistakes and of correct answers, a
reliability diagram of the probabilities with their expected calibration error, and the class
balance of the evaluated data.

This module sees only arrays (probabilities (n, classes), 0-based labels), class names and the
items the images came from, never a model or an engine, so `evaluate`, `train` and any runtime
share it. The figures are metrics.py's (the scoring function evaluate and calibrate use, on
scikit-learn; the reliability bins and calibration error calibrate prints); matplotlib (Agg, no
pyplot state) draws; SciPy bootstraps. Those are optional packages, imported on first use:
serving without them is unaffected, and `plot_prediction` needs matplotlib alone.
"""

from __future__ import annotations

import base64
import html
import importlib
import json
import os
import textwrap
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from flower_demo import metrics
from flower_demo.errors import FlowerDemoError, first_line, missing_package
from flower_demo.images import ImageLike, load_rgb, square_uint8
from flower_demo.metrics import ECE_BINS

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
CONFIDENCE_LEVEL = 0.95
CONFUSED_PAIRS = 15  # most-confused (true, predicted) pairs listed by name
CONFUSED_WITH = 3  # wrong answers listed for each class in the per-class table
WORST_CLASSES = 10  # drawn in red in the per-class chart
MISTAKES_SHOWN = 18  # most confident mistakes in their grid
CORRECT_SHOWN = 12  # correct answers in theirs (a seeded sample)
GRID_COLUMNS = 6
THUMBNAIL = 120  # pixels, side of each photo in the grids
GRID_COLOURS = 256  # photo grids are stored as dithered palette PNGs: 40% of the size of full colour
DPI = 100
PLOT_PIXELS = (800, 400)  # width, height of the `predict --plot` figure
PLOT_NEIGHBOURS_HEIGHT = 220  # px added below it for a row of reference photos (Prediction.neighbours)
PLOT_MAX_PHOTO = 512  # the photo in that figure is decoded down to this side at most
SHORT_NAME = 22  # characters of a class name in grid captions and the --plot chart
PLACEHOLDER = 200  # grey level of the square drawn where a photo cannot be decoded

# The page's sections in order: (HTML id, heading). The tests check every one is there.
SECTIONS = (
    ("summary", "Accuracy"),
    ("per-class", "Per-class accuracy, worst first"),
    ("confusion", "Confusion matrix and the most-confused pairs"),
    ("mistakes", "The most confident mistakes"),
    ("correct", "Correct answers"),
    ("reliability", "Reliability of the probabilities"),
    ("balance", "Class balance of the evaluated data"),
)
FIGURES = {  # section id -> PNG file written next to index.html
    "per-class": "per_class_accuracy.png",
    "confusion": "confusion_matrix.png",
    "mistakes": "mistakes.png",
    "correct": "correct.png",
    "reliability": "reliability.png",
    "balance": "class_balance.png",
}
PAGE = "index.html"
NUMBERS = "report.json"
STYLE = (
    "body{font-family:sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}"
    "img{max-width:100%;height:auto}table{border-collapse:collapse;font-size:90%}"
    "td,th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:left}td.n{text-align:right}"
)


class PredictionLike(Protocol):
    class_names: list[str]
    probabilities: list[float]
    # also read when present: is_known (bool), neighbours (core.Prediction's reference photos)


def _library(name: str) -> Any:
    """Import an optional library, or say in one line what to install (matplotlib alone for a plot)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        raise missing_package(exc) from None


def _figure(width: float, height: float) -> Any:
    """A matplotlib Figure of width x height inches, drawn by Agg, with no pyplot global state."""
    return _library("matplotlib.figure").Figure(figsize=(width, height), dpi=DPI, layout="constrained")


# --- checks ----------------------------------------------------------------------------------


def check_out_dir(out_dir: str | os.PathLike) -> Path:
    """`out_dir` as a folder that exists (created if needed), or a one-line FlowerDemoError."""
    path = Path(out_dir)
    if path.exists() and not path.is_dir():
        raise FlowerDemoError(f"report folder {path} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FlowerDemoError(f"cannot create report folder {path}: {first_line(exc)}") from None
    return path


def check_inputs(
    probabilities: Any, labels: Any, class_names: list[str], items: Any
) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities as float64 (n, C), labels as int (n,)), or a one-line FlowerDemoError."""
    probs = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels)
    if probs.ndim != 2 or probs.shape[0] == 0:
        raise FlowerDemoError(f"probabilities must be a non-empty (images, classes) array, got {probs.shape}")
    if probs.shape[1] != len(class_names):
        raise FlowerDemoError(
            f"probabilities have {probs.shape[1]} columns for {len(class_names)} class names"
        )
    if not np.isfinite(probs).all():
        raise FlowerDemoError("probabilities hold NaN or infinite values")
    if labels.shape != (probs.shape[0],):
        raise FlowerDemoError(f"labels have shape {labels.shape}, expected ({probs.shape[0]},)")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= probs.shape[1]:
        raise FlowerDemoError(f"labels must be class indices from 0 to {probs.shape[1] - 1}")
    if items is not None and len(items) != len(labels):
        raise FlowerDemoError(f"{len(items)} items for {len(labels)} labels")
    return probs, labels.astype(np.int64)


# --- numbers ---------------------------------------------------------------------------------


def bootstrap_interval(statistic: Any, *samples: np.ndarray) -> tuple[float, float]:
    """Percentile-bootstrap CONFIDENCE_LEVEL interval of `statistic(*samples)`, resampling images
    (paired), seeded; (nan, nan) for fewer than two images. `statistic` takes `axis` and is given
    every resample at once (scipy's vectorized form): 2,000 calls one by one cost seconds."""
    if len(samples[0]) < 2:
        return float("nan"), float("nan")
    stats = _library("scipy.stats")
    result = stats.bootstrap(
        samples, statistic, n_resamples=BOOTSTRAP_RESAMPLES, paired=True, vectorized=True,
        confidence_level=CONFIDENCE_LEVEL, method="percentile", rng=np.random.default_rng(BOOTSTRAP_SEED),
    )  # fmt: skip
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def balanced_accuracy(labels: np.ndarray, predicted: np.ndarray, axis: int = -1) -> np.ndarray:
    """scikit-learn's balanced_accuracy_score (the mean recall of the classes present in `labels`)
    of each row of (resamples, n) arrays at once, for bootstrap_interval; a test holds it to
    scikit-learn's on single rows."""
    labels, predicted = (
        np.moveaxis(np.atleast_2d(labels), axis, -1),
        np.moveaxis(np.atleast_2d(predicted), axis, -1),
    )
    rows, classes = labels.shape[0], int(labels.max()) + 1
    cells = (np.arange(rows)[:, None] * classes + labels).ravel()
    present = np.bincount(cells, minlength=rows * classes).reshape(rows, classes)
    right = np.bincount(cells, weights=(labels == predicted).ravel(), minlength=rows * classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = right.reshape(rows, classes) / present
    return np.nanmean(np.where(present > 0, recall, np.nan), axis=-1)


def compute(probabilities: np.ndarray, labels: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """Everything the report states, as plain Python data (what report.json holds)."""
    scores = metrics.score(probabilities, labels)
    correct = scores.predicted == labels
    in_top_k = metrics.in_top_k(probabilities, labels, scores.k)
    accuracy = {
        "top1": {"value": scores.top1, "interval": bootstrap_interval(np.mean, correct.astype(float))},
        f"top{scores.k}": {
            "value": scores.topk,
            "interval": bootstrap_interval(np.mean, in_top_k.astype(float)),
        },
        "mean_per_class": {
            "value": scores.mean_per_class,
            "interval": bootstrap_interval(balanced_accuracy, labels, scores.predicted),
        },
    }
    confidence = probabilities[np.arange(len(labels)), scores.predicted]
    return {
        "n": scores.n,
        "classes": len(class_names),
        "k": scores.k,
        "accuracy": accuracy,
        "expected_calibration_error": metrics.expected_calibration_error(probabilities, labels),
        "per_class": per_class_rows(scores.confusion, class_names),
        "confused_pairs": confused_pairs(scores.confusion, class_names),
        "confusion_matrix": scores.confusion,
        "predicted": scores.predicted,
        "confidence": confidence,
        "correct": correct,
        "class_counts": np.bincount(labels, minlength=len(class_names)),
    }


def per_class_rows(matrix: np.ndarray, class_names: list[str]) -> list[dict[str, Any]]:
    """Each class with images: its accuracy, images right and in all, and its most frequent wrong
    answers; worst first."""
    support, hits = matrix.sum(axis=1), np.diag(matrix)
    off = matrix - np.diag(hits)
    rows = []
    for c in np.argsort(np.where(support > 0, hits / np.maximum(support, 1), np.inf), kind="stable"):
        if support[c] == 0:
            continue  # a class with no images has no accuracy
        answers = np.argsort(-off[c], kind="stable")[:CONFUSED_WITH]
        rows.append(
            {
                "class": class_names[c],
                "accuracy": hits[c] / support[c],
                "correct": int(hits[c]),
                "n": int(support[c]),
                "confused_with": {class_names[a]: int(off[c, a]) for a in answers if off[c, a] > 0},
            }
        )
    return rows


def confused_pairs(matrix: np.ndarray, class_names: list[str]) -> list[dict[str, Any]]:
    """The CONFUSED_PAIRS (true, predicted) pairs with the most images, by name."""
    support = matrix.sum(axis=1)
    off = matrix - np.diag(np.diag(matrix))
    # Most images first; among equals, pairs also confused the other way round first.
    worst = np.lexsort((-off.T.ravel(), -off.ravel()))[:CONFUSED_PAIRS]
    return [
        {"true": class_names[t], "predicted": class_names[p], "count": int(off[t, p]), "of": int(support[t])}
        for t, p in zip(*np.unravel_index(worst, off.shape))
        if off[t, p] > 0
    ]


# --- figures ---------------------------------------------------------------------------------


def _png(fig: Any, path: Path, palette: bool = False) -> bytes:
    """Render `fig` with Agg and write it to `path` as PNG (a palette PNG for photo grids)."""
    canvas = _library("matplotlib.backends.backend_agg").FigureCanvasAgg(fig)
    canvas.draw()
    image = Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3])
    if palette:
        image = image.quantize(palette=image.quantize(GRID_COLOURS), dither=Image.Dither.FLOYDSTEINBERG)
    image.save(path, optimize=True)
    return path.read_bytes()


def thumbnail(item: ImageLike | None) -> tuple[np.ndarray, bool]:
    """(THUMBNAIL-px centre square, True) of an item, or (a grey square, False) if it cannot be read."""
    if item is not None:
        try:
            return square_uint8(item, THUMBNAIL), True
        except (FlowerDemoError, OSError, ValueError):
            pass
    return np.full((THUMBNAIL, THUMBNAIL, 3), PLACEHOLDER, np.uint8), False


def grid_figure(cells: list[tuple[np.ndarray, str, str]], empty: str) -> Any:
    """Photos in GRID_COLUMNS columns, each captioned (caption, colour); `empty` when none."""
    if not cells:
        fig = _figure(6, 0.6)
        fig.text(0.5, 0.5, empty, ha="center", va="center")
        return fig
    rows = -(-len(cells) // GRID_COLUMNS)
    fig = _figure(GRID_COLUMNS * 1.7, rows * 2.1)
    for i, (photo, caption, colour) in enumerate(cells):
        ax = fig.add_subplot(rows, GRID_COLUMNS, i + 1)
        ax.imshow(photo)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(caption, fontsize=7, color=colour)
    return fig


def _short(name: str) -> str:
    return textwrap.shorten(name, SHORT_NAME, placeholder="…")


def grid_cells(
    found: dict[str, Any], indices: np.ndarray, labels: np.ndarray, class_names: list[str], items: Any
) -> list[tuple[np.ndarray, str, str]]:
    """(photo, caption, colour) of each image in `indices`: name and probability when right, the
    true name and the model's answer when wrong."""
    cells = []
    for i in indices:
        photo, readable = thumbnail(None if items is None else items[i])
        true, answer, p = labels[i], found["predicted"][i], found["confidence"][i]
        if answer == true:
            caption, colour = f"{_short(class_names[true])}\n{p:.1%}", "#060"
        else:
            caption = f"true: {_short(class_names[true])}\nmodel: {_short(class_names[answer])} {p:.1%}"
            colour = "#b00"
        cells.append((photo, caption if readable else caption + "\n(photo unreadable)", colour))
    return cells


def per_class_figure(per_class: list[dict[str, Any]]) -> Any:
    fig = _figure(8, max(3.0, 0.16 * len(per_class) + 1.2))
    ax = fig.add_subplot()
    accuracy = [row["accuracy"] for row in per_class]
    colours = ["C3" if rank < WORST_CLASSES else "C0" for rank in range(len(per_class))]
    ax.barh(range(len(per_class)), accuracy, color=colours)
    names = [row["class"] for row in per_class]
    ax.set_yticks(range(len(per_class)), names, fontsize=6 if len(per_class) > 40 else 9)
    ax.invert_yaxis()  # worst at the top
    ax.margins(y=0.01)
    ax.set_xlim(0, 1)
    ax.set_title(f"the {WORST_CLASSES} worst in red")
    ax.set_xlabel("accuracy (share of the class's images named right)")
    ax.grid(axis="x", alpha=0.3)
    return fig


def confusion_figure(matrix: np.ndarray, class_names: list[str]) -> Any:
    sklearn_metrics, colors = _library("sklearn.metrics"), _library("matplotlib.colors")
    many = len(class_names) > 20
    fig = _figure(10, 10) if many else _figure(7, 6)
    ax = fig.add_subplot()
    display = sklearn_metrics.ConfusionMatrixDisplay(matrix, display_labels=None if many else class_names)
    # A log scale whose floor lies below 1, so that a single mistake shows clearly beside a full
    # diagonal; empty cells (log of 0) are masked and stay white.
    norm = colors.LogNorm(vmin=0.3, vmax=max(2, int(matrix.max())))
    display.plot(
        ax=ax,
        include_values=not many,
        cmap="Blues",
        colorbar=False,
        im_kw={"norm": norm},
        xticks_rotation="vertical",
    )
    ticks = [t for t in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000) if t <= norm.vmax]
    fig.colorbar(display.im_, ax=ax, shrink=0.6, label="images").set_ticks(
        ticks, labels=[str(t) for t in ticks]
    )
    if many:
        ticks = np.arange(0, len(class_names), 10)
        ax.set_xticks(ticks, ticks + 1)
        ax.set_yticks(ticks, ticks + 1)
        ax.set_xlabel("predicted label id (1-based)")
        ax.set_ylabel("true label id (1-based)")
    return fig


def reliability_figure(confidence: np.ndarray, correct: np.ndarray, ece: float) -> Any:
    accuracy, mean_confidence, _ = metrics.reliability(confidence, correct, ECE_BINS)
    fig = _figure(6, 6.5)
    top, bottom = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    top.plot([0, 1], [0, 1], ls="--", color="grey", label="perfectly calibrated")
    top.plot(mean_confidence, accuracy, marker="o", label="this model")
    top.set_ylabel("accuracy of the top-1 answers")
    top.set_title(
        f"mean top-1 probability {confidence.mean():.3f}, accuracy {correct.mean():.3f}, ECE {ece:.3f}"
    )
    top.legend(loc="upper left")
    top.set_ylim(0, 1.02)
    bottom.hist(confidence, bins=ECE_BINS, range=(0, 1), color="C0", log=True)
    bottom.set_xlabel(f"top-1 probability ({ECE_BINS} equal-width bins)")
    bottom.set_ylabel("images")
    return fig


def balance_figure(counts: np.ndarray, class_names: list[str]) -> Any:
    fig = _figure(10, 3.5)
    ax = fig.add_subplot()
    ax.bar(np.arange(1, len(counts) + 1), counts, color="C0")
    if len(class_names) <= 20:
        ax.set_xticks(np.arange(1, len(counts) + 1), class_names, rotation=45, ha="right", fontsize=8)
    ax.set_xlabel("label id (1-based)" if len(class_names) > 20 else "class")
    ax.set_ylabel("images")
    ax.set_title(f"{counts.sum()} images: {counts.min()} to {counts.max()} per class")
    return fig


# --- the page --------------------------------------------------------------------------------


def _table(header: list[str], rows: list[list[Any]], numeric: set[int] = frozenset()) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    cell = lambda i, v: f"<td{' class=n' * (i in numeric)}>{html.escape(str(v))}</td>"
    body = "".join("<tr>" + "".join(cell(i, v) for i, v in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _interval(low: float, high: float) -> str:
    return "n/a (one image)" if np.isnan(low) else f"{low:.1%} to {high:.1%}"


def section_texts(found: dict[str, Any]) -> dict[str, str]:
    """The HTML under each section's heading, before its figure."""
    k, n = found["k"], found["n"]
    names = {"top1": "top-1", f"top{k}": f"top-{k}", "mean_per_class": "mean per-class accuracy"}
    rows = [
        [names[key], f"{v['value']:.2%}", _interval(*v["interval"])] for key, v in found["accuracy"].items()
    ]
    summary = _table(["measure", "value", f"{CONFIDENCE_LEVEL:.0%} interval"], rows) + (
        f"<p>{n} images, {found['classes']} classes. Intervals: percentile bootstrap over the images, "
        f"{BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED}.</p>"
    )
    rows = [
        [
            r["class"],
            f"{r['accuracy']:.0%}",
            r["correct"],
            r["n"],
            ", ".join(f"{k} ({v})" for k, v in r["confused_with"].items()),
        ]
        for r in found["per_class"]
    ]
    per_class = _table(["class", "accuracy", "right", "images", "answered instead (images)"], rows, {1, 2, 3})
    pairs = found["confused_pairs"]
    confusion = (
        _table(
            ["true class", "predicted as", "images", "of the class's"],
            [[p["true"], p["predicted"], p["count"], p["of"]] for p in pairs],
            numeric={2, 3},
        )
        if pairs
        else "<p>No image was confused with another class.</p>"
    )
    wrong = int((~found["correct"]).sum())
    shown = min(n - wrong, CORRECT_SHOWN)
    return {
        "summary": summary,
        "per-class": per_class,
        "confusion": confusion,
        "mistakes": f"<p>{wrong} mistakes; the {min(wrong, MISTAKES_SHOWN)} the model was surest of "
        "(true name, the model's answer and its probability).</p>",
        "correct": f"<p>A seeded sample of {shown} of the {n - wrong} right answers.</p>",
        "reliability": "<p>Top-1 probability against how often the top-1 answer is right: on the "
        "diagonal, a probability of 80% is right 80% of the time. Expected calibration error "
        f"({ECE_BINS} equal-width bins): {found['expected_calibration_error']:.4f}.</p>",
        "balance": "<p>Images per class in the evaluated data.</p>",
    }


def write_report(
    out_dir: str | os.PathLike,
    probabilities: Any,
    labels: Any,
    class_names: list[str],
    items: Any = None,
    title: str = "Evaluation report",
    source: str = "",
) -> Path:
    """Write the report into `out_dir` (index.html, the figures as PNG, report.json); returns the
    page's path. `items` (paths or bytes, one per label; None for no photos) feed the photo grids."""
    probs, labels = check_inputs(probabilities, labels, list(class_names), items)
    out = check_out_dir(out_dir)
    found = compute(probs, labels, list(class_names))
    wrong = np.flatnonzero(~found["correct"])
    wrong = wrong[np.argsort(-found["confidence"][wrong], kind="stable")][:MISTAKES_SHOWN]
    right = np.flatnonzero(found["correct"])
    right = np.sort(np.random.default_rng(BOOTSTRAP_SEED).permutation(right)[:CORRECT_SHOWN])
    figures = {  # section id -> (figure, is a photo grid)
        "per-class": (per_class_figure(found["per_class"]), False),
        "confusion": (confusion_figure(found["confusion_matrix"], class_names), False),
        "mistakes": (grid_figure(grid_cells(found, wrong, labels, class_names, items), "no mistakes"), True),
        "correct": (grid_figure(grid_cells(found, right, labels, class_names, items), "none right"), True),
        "reliability": (
            reliability_figure(found["confidence"], found["correct"], found["expected_calibration_error"]),
            False,
        ),
        "balance": (balance_figure(found["class_counts"], class_names), False),
    }
    texts = section_texts(found)
    body = [f"<h1>{html.escape(title)}</h1>", f"<p>Data: {html.escape(source)}</p>" if source else ""]
    for section, heading in SECTIONS:
        body.append(f'<section id="{section}"><h2>{html.escape(heading)}</h2>{texts[section]}')
        if section in figures:
            fig, palette = figures[section]
            data = base64.b64encode(_png(fig, out / FIGURES[section], palette)).decode("ascii")
            body.append(f'<img src="data:image/png;base64,{data}" alt="{html.escape(heading)}">')
        body.append("</section>")
    page = (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
    (out / PAGE).write_text(page, encoding="utf-8")
    numbers = {"title": title, "source": source, "figures": FIGURES}
    keys = ("n", "classes", "accuracy", "expected_calibration_error", "per_class", "confused_pairs")
    numbers |= {key: found[key] for key in keys}
    (out / NUMBERS).write_text(json.dumps(numbers, indent=1) + "\n", encoding="utf-8")
    return out / PAGE


# --- one photo and its top-K -----------------------------------------------------------------


def plot_prediction(image: ImageLike, prediction: PredictionLike, out_path: str | os.PathLike) -> Path:
    """The photo beside a horizontal bar chart of its top-K, PLOT_PIXELS in size, and under them
    the prediction's reference photos (PLOT_NEIGHBOURS_HEIGHT px more) when it has any, written to
    `out_path` (PNG, or any format matplotlib writes by the suffix)."""
    photo = load_rgb(image, min_size=PLOT_MAX_PHOTO)
    photo.thumbnail((PLOT_MAX_PHOTO, PLOT_MAX_PHOTO))
    names, probs = list(prediction.class_names), list(prediction.probabilities)
    known = getattr(prediction, "is_known", True)
    neighbours = list(getattr(prediction, "evidence", None) or [])  # core.Prediction's
    height = PLOT_PIXELS[1] + (PLOT_NEIGHBOURS_HEIGHT if neighbours else 0)
    fig = _figure(PLOT_PIXELS[0] / DPI, height / DPI)
    if neighbours:
        top, bottom = fig.subfigures(2, 1, height_ratios=[PLOT_PIXELS[1], PLOT_NEIGHBOURS_HEIGHT])
        plot_neighbours(bottom, neighbours, known)
    else:
        top = fig
    left, right = top.subplots(1, 2, width_ratios=[1, 1.3])
    left.imshow(np.asarray(photo))
    left.axis("off")
    if isinstance(image, (str, os.PathLike)):
        left.set_title(textwrap.shorten(Path(image).name, 40, placeholder="…"), fontsize=9)
    rows = np.arange(len(names))
    right.barh(rows, probs, color="C0")
    right.set_yticks(rows, [_short(n) for n in names])
    right.invert_yaxis()  # best at the top
    right.set_xlim(0, 1)
    right.set_xlabel("probability")
    for row, p in zip(rows, probs):
        inside = p > 0.82  # the label goes inside a long bar, in white
        right.text(
            p - 0.02 if inside else p + 0.02,
            row,
            f"{p:.1%}",
            va="center",
            fontsize=9,
            ha="right" if inside else "left",
            color="white" if inside else "black",
        )
    unknown = getattr(prediction, "is_known", True) is False
    right.set_title(f"top-{len(names)}" + (": not one of the known classes?" if unknown else ""))
    out = Path(out_path)
    try:
        fig.savefig(out, dpi=DPI)
    except (OSError, ValueError) as exc:  # unwritable folder, unknown format
        raise FlowerDemoError(f"cannot write {out}: {first_line(exc)}") from None
    return out


def plot_neighbours(fig: Any, neighbours: list[dict[str, Any]], known: bool) -> None:
    """A row of reference photos, each titled with its species and similarity."""
    fig.suptitle("training photos most like it" + ("" if known else ", of any species"), fontsize=10)
    for axes, neighbour in zip(np.atleast_1d(fig.subplots(1, len(neighbours))), neighbours):
        axes.imshow(np.asarray(load_rgb(neighbour["image"])))
        axes.set_title(f"{_short(neighbour['class_name'])}, {neighbour['similarity']:.2f}", fontsize=8)
        axes.axis("off")
