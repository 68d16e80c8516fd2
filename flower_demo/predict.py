"""Classify images with a saved model: the Python API and its command line.

    python -m flower_demo.predict IMAGE [IMAGE or FOLDER ...] --top_k 5 --category_names label_map.json
    python -m flower_demo.predict IMAGE --explain why.png      # also writes a Grad-CAM overlay
    python -m flower_demo.predict IMAGE --plot top5.png        # the photo beside its top-K chart

API: `predict(image)` for one image, `predict_batch(images)` for many (run in batches), both on
the shipped model unless given a `Classifier`. Every problem a user can cause raises
`FlowerDemoError` with a one-line reason; the command line prints it and goes on.

A model folder's metadata may hold a calibration (written by `python -m flower_demo.calibrate`):
then the probabilities are temperature-scaled, and `Prediction.is_known` says whether the photo
passes the stored "one of the known classes" rule. Without one, probabilities are the model's own
and every prediction is known. A `.tflite` file made by `python -m flower_demo.export` (with the
metadata.json next to it) runs wherever a model folder does.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import types
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from flower_demo import calibrate, models
from flower_demo.errors import FlowerDemoError
from flower_demo.images import ImageLike, list_images, square_uint8

BATCH_SIZE = 32
DEFAULT_TOP_K = 5


@dataclass
class Prediction:
    """Top-K classes of one image, best first, as plain Python types (JSON-ready)."""

    class_ids: list[int]  # label ids, 1-based as in label_map.json
    class_names: list[str]
    probabilities: list[float]
    is_known: bool = True  # False: the calibration's rule says it is none of the model's classes

    @property
    def top1(self) -> tuple[str, float]:
        return self.class_names[0], self.probabilities[0]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Classifier:
    """A loaded model with its metadata and class names; load once, call many times."""

    def __init__(
        self,
        model_path: str | os.PathLike | None = None,
        category_names: str | os.PathLike | None = None,
    ) -> None:
        if model_path is not None and Path(model_path).suffix == ".tflite":
            from flower_demo.export import TFLiteModel

            self.model = None  # no Keras model: no Grad-CAM
            self.forward = TFLiteModel(model_path)
            self.metadata = models.read_metadata(model_path)
            models.check_against_metadata(
                Path(model_path), self.forward.num_outputs, self.forward.image_size, self.metadata
            )
        else:
            self.model, self.metadata = models.load_model(model_path)
            self.forward = models.compiled_forward(self.model)
        self.calibration = calibrate.read_calibration(self.metadata)
        self.image_size = int(self.metadata["image_size"])
        self.num_classes = len(self.metadata["class_names"])
        self.class_names = (
            models.load_label_map(category_names, self.num_classes)
            if category_names is not None
            else list(self.metadata["class_names"])
        )
        self.forward(np.zeros((1, self.image_size, self.image_size, 3), np.float32))  # trace now

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """(n, classes) probabilities for a batch of process_image outputs (temperature-scaled
        when the model is calibrated)."""
        probabilities = np.asarray(self.forward(np.asarray(batch, dtype=np.float32)))
        return probabilities if self.calibration is None else self.calibration.probabilities(probabilities)

    def check_top_k(self, top_k: int | None) -> int:
        """`top_k` if it is a valid class count; None means DEFAULT_TOP_K (or all, if fewer)."""
        if top_k is None:
            return min(DEFAULT_TOP_K, self.num_classes)
        if not isinstance(top_k, (int, np.integer)) or not 1 <= top_k <= self.num_classes:
            raise FlowerDemoError(f"top_k must be an integer from 1 to {self.num_classes}, got {top_k!r}")
        return int(top_k)

    def top_k(self, probabilities: np.ndarray, k: int) -> Prediction:
        """The best `k` classes of one image's `probabilities()` row, and the calibration's verdict."""
        best = np.argsort(-probabilities)[:k]
        return Prediction(
            class_ids=[int(i) + 1 for i in best],
            class_names=[self.class_names[i] for i in best],
            probabilities=[float(probabilities[i]) for i in best],
            is_known=self.calibration is None or bool(self.calibration.is_known(probabilities)),
        )


_shipped: Classifier | None = None


def _classifier(model: Classifier | str | os.PathLike | None) -> Classifier:
    """The given Classifier, one loaded from a path, or the shipped model (loaded once)."""
    global _shipped
    if isinstance(model, Classifier):
        return model
    if model is not None:
        return Classifier(model)
    if _shipped is None:
        _shipped = Classifier()
    return _shipped


def predict(
    image: ImageLike,
    model: Classifier | str | os.PathLike | None = None,
    top_k: int | None = None,
) -> Prediction:
    """Top-K classes of one image (path, bytes, PIL image or array)."""
    classifier = _classifier(model)
    k = classifier.check_top_k(top_k)
    pixels = square_uint8(image, classifier.image_size)[None].astype(np.float32)
    return classifier.top_k(classifier.probabilities(pixels)[0], k)


def predict_batch(
    images: Sequence[ImageLike],
    model: Classifier | str | os.PathLike | None = None,
    top_k: int | None = None,
    batch_size: int = BATCH_SIZE,
    skip_errors: bool = False,
) -> list[Prediction | FlowerDemoError]:
    """Top-K classes of many images, run through the model `batch_size` at a time.

    A bad image raises FlowerDemoError, or with `skip_errors` takes that error's place in the list.
    """
    classifier = _classifier(model)
    k = classifier.check_top_k(top_k)
    results: list[Prediction | FlowerDemoError] = []
    for start in range(0, len(images), batch_size):
        decoded: list[np.ndarray | FlowerDemoError] = []
        for image in images[start : start + batch_size]:
            try:
                decoded.append(square_uint8(image, classifier.image_size))
            except FlowerDemoError as exc:
                if not skip_errors:
                    raise
                decoded.append(exc)
        good = [d for d in decoded if isinstance(d, np.ndarray)]
        probs = iter(classifier.probabilities(np.stack(good)) if good else [])
        results += [classifier.top_k(next(probs), k) if isinstance(d, np.ndarray) else d for d in decoded]
    return results


# --- command line ----------------------------------------------------------------------------


def expand_inputs(
    inputs: list[str],
) -> tuple[list[str], list[tuple[str, FlowerDemoError]]]:
    """Paths to classify (folders expanded to their images) and the inputs that yield none."""
    paths, problems = [], []
    for item in inputs:
        if Path(item).is_dir():
            found = list_images(item)
            if not found:
                problems.append((item, FlowerDemoError(f"{item}: directory holds no images")))
            paths += [str(p) for p in found]
        else:
            paths.append(item)
    return paths, problems


NOT_KNOWN = "  (does not look like one of the classes this model knows)"


def format_table(name: str, prediction: Prediction) -> str:
    width = max(len(n) for n in prediction.class_names)
    rows = [
        f"  {rank}. {cls:<{width}}  {p:7.2%}"
        for rank, (cls, p) in enumerate(zip(prediction.class_names, prediction.probabilities), 1)
    ]
    return "\n".join([name, *([] if prediction.is_known else [NOT_KNOWN]), *rows])


def explain_path(out: str, image: str, several: bool) -> Path:
    """Where --explain OUT writes the overlay of `image`: OUT itself for one image, else
    OUT's stem + "_" + the image's stem + OUT's suffix, in OUT's folder."""
    out_path = Path(out)
    if not several:
        return out_path
    return out_path.with_name(f"{out_path.stem}_{Path(image).stem}{out_path.suffix or '.png'}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flower_demo.predict", description=__doc__.split("\n\n")[0])
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of images")
    p.add_argument(
        "--model",
        default=None,
        help="model folder, .keras file or exported .tflite file (default: the shipped model)",
    )
    p.add_argument("--top_k", "--top-k", type=int, default=None, help="how many classes to show (default 5)")
    p.add_argument(
        "--category_names",
        "--category-names",
        default=None,
        help="JSON label map {id: name}",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument(
        "--explain",
        metavar="OUT.png",
        default=None,
        help="also write a Grad-CAM heatmap of the top-1 class blended over the photo to OUT.png; "
        "with several images, to OUT_<image stem>.png each (Keras models only)",
    )
    p.add_argument(
        "--plot",
        metavar="OUT.png",
        default=None,
        help="also write the photo beside a bar chart of its top-K to OUT.png; "
        "with several images, to OUT_<image stem>.png each",
    )
    args = p.parse_args(argv)
    try:
        classifier = Classifier(args.model, args.category_names)
        classifier.check_top_k(args.top_k)
        if args.explain and classifier.model is None:
            raise FlowerDemoError("--explain needs a Keras model (model.keras), not a .tflite file")
    except FlowerDemoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    paths, problems = expand_inputs(args.images)
    results = predict_batch(paths, classifier, args.top_k, skip_errors=True) if paths else []
    records = []
    for path, result in [*zip(paths, results), *problems]:
        if args.explain and not isinstance(result, FlowerDemoError):
            from flower_demo.explain import save_overlay

            out = explain_path(args.explain, path, several=len(paths) > 1)
            try:
                save_overlay(path, out, classifier, class_index=result.class_ids[0] - 1)
            except FlowerDemoError as exc:
                result = FlowerDemoError(f"{path}: Grad-CAM: {exc}")
        if args.plot and not isinstance(result, FlowerDemoError):
            from flower_demo.report import plot_prediction

            try:
                plot = plot_prediction(path, result, explain_path(args.plot, path, several=len(paths) > 1))
            except FlowerDemoError as exc:
                result = FlowerDemoError(f"{path}: --plot: {exc}")
        if isinstance(result, FlowerDemoError):
            print(f"error: {result}", file=sys.stderr)
            records.append({"image": path, "error": str(result)})
        else:
            records.append({"image": path, **result.as_dict()})
            if args.explain:
                records[-1]["explanation"] = str(out)
            if args.plot:
                records[-1]["plot"] = str(plot)
            if not args.json:
                print(format_table(path, result))
                if args.explain:
                    print(f"  Grad-CAM overlay: {out}")
                if args.plot:
                    print(f"  top-{len(result.class_names)} chart: {plot}")
    if args.json:
        print(json.dumps(records, indent=2))
    failed = sum("error" in r for r in records)
    return 1 if failed else 0


class _CallableModule(types.ModuleType):
    """`import flower_demo.predict` rebinds the package attribute `flower_demo.predict` from the
    function to this module; making the module callable keeps `flower_demo.predict(image)` working."""

    def __call__(self, *args: Any, **kwargs: Any) -> Prediction:
        return predict(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    sys.exit(main())
