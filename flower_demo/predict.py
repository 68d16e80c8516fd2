"""The command line that classifies photos (the Python API lives in core.py).

    python -m flower_demo.predict IMAGE [IMAGE or FOLDER ...] --top_k 5 --category_names label_map.json
    python -m flower_demo.predict IMAGE --explain why.png      # also writes a heatmap overlay
    python -m flower_demo.predict IMAGE --plot top5.png        # the photo beside its top-K chart
    python -m flower_demo.predict IMAGE --neighbours 0         # no reference photos

It prints a table per image (or `--json`) with the training photos most like it (`--neighbours`,
3 by default: their thumbnails' paths), one `error:` line per input it cannot read, goes on
with the rest, and exits 1 if any failed (2 for a bad model, label map or top_k). It runs on the
serving core, so it needs no TensorFlow: LiteRT runs the model folder's model.tflite unless
`--engine keras` (or FLOWER_DEMO_ENGINE=keras) asks for the Keras model. `--explain` draws the
class activation map of the same forward pass; `--plot` needs matplotlib alone. A missing optional
package is one `error:` line naming what to install.

Only `python -m` runs this file; nothing imports it, so `flower_demo.predict` stays the function.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from flower_demo import core
from flower_demo.errors import FlowerDemoError, missing_package, skip_last_collection
from flower_demo.explain import save_overlay
from flower_demo.images import list_images


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


def format_table(name: str, prediction: core.Prediction) -> str:
    width = max(len(n) for n in prediction.class_names)
    rows = [
        f"  {rank}. {cls:<{width}}  {p:7.2%}"
        for rank, (cls, p) in enumerate(zip(prediction.class_names, prediction.probabilities), 1)
    ]
    return "\n".join(
        [name, *([] if prediction.is_known else [NOT_KNOWN]), *rows, *neighbour_rows(prediction)]
    )


def neighbour_rows(prediction: core.Prediction) -> list[str]:
    """The reference photos under the table: what they are of, then each one's similarity and file;
    for a photo turned away, the closest of any species too."""
    rows = []
    of_top = (prediction.neighbours, prediction.class_names[0])
    for found, of in (of_top, (prediction.closest, "any species")):
        if found:
            rows.append(f"  training photos most like it (of {of}):")
            rows += [f"     {n['similarity']:.2f}  {n['class_name']}  {n['image']}" for n in found]
    return rows


def explain_path(out: str, image: str, several: bool) -> Path:
    """Where --explain OUT writes the overlay of `image`: OUT itself for one image, else
    OUT's stem + "_" + the image's stem + OUT's suffix, in OUT's folder."""
    out_path = Path(out)
    if not several:
        return out_path
    return out_path.with_name(f"{out_path.stem}_{Path(image).stem}{out_path.suffix or '.png'}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m flower_demo.predict", description=__doc__.split("\n\n")[0])
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of images")
    p.add_argument(
        "--model",
        default=None,
        help="model folder, model.keras or .tflite file (default: the shipped model in weights/)",
    )
    p.add_argument(
        "--top_k",
        "--top-k",
        type=int,
        default=None,
        help=f"how many classes to show (default: {core.DEFAULT_TOP_K})",
    )
    p.add_argument(
        "--category_names",
        "--category-names",
        default=None,
        help="JSON label map {id: name} (default: the names in the model's metadata)",
    )
    p.add_argument(
        "--engine",
        choices=core.ENGINES,
        default=None,
        help=f"what runs the model (default: ${core.ENGINE_ENV}, else auto: LiteRT, or Keras where "
        "TensorFlow sees a GPU or the folder has no model.tflite)",
    )
    p.add_argument(
        "--neighbours",
        type=int,
        default=None,
        metavar="N",
        help=f"show the N training photos most like each image, with their thumbnails (default: "
        f"{core.DEFAULT_NEIGHBOURS}; 0: none; a model folder calibrated before they existed has none)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument(
        "--explain",
        metavar="OUT.png",
        default=None,
        help="also write a heatmap of the top-1 class blended over the photo to OUT.png; "
        "with several images, to OUT_<image stem>.png each",
    )
    p.add_argument(
        "--plot",
        metavar="OUT.png",
        default=None,
        help="also write the photo beside a bar chart of its top-K to OUT.png; "
        "with several images, to OUT_<image stem>.png each",
    )
    return p


def open_classifier(args: argparse.Namespace) -> core.Classifier:
    """The classifier the arguments name, checked against --top_k and --explain."""
    classifier = core.Classifier(args.model, args.category_names, args.engine)
    classifier.check_top_k(args.top_k)
    classifier.check_neighbours(args.neighbours)
    if args.explain and not classifier.explains:
        raise FlowerDemoError("--explain: this model returns no class activation maps")
    return classifier


def figures(
    args: argparse.Namespace, path: str, prediction: core.Prediction, several: bool
) -> dict[str, str]:
    """Write what --explain and --plot ask for of one image: {"explanation": file, "plot": file}.
    A figure that cannot be written is a FlowerDemoError naming the image."""
    written = {}
    if args.explain:
        out = explain_path(args.explain, path, several)
        if prediction.heatmap is None:  # a taught class on top (imprint.py): no activation map
            raise FlowerDemoError(f"{path}: heatmap: {prediction.class_names[0]!r} was taught, not trained")
        try:
            save_overlay(path, out, prediction.heatmap)
        except FlowerDemoError as exc:
            raise FlowerDemoError(f"{path}: heatmap: {exc}") from None
        written["explanation"] = str(out)
    if args.plot:
        from flower_demo.report import plot_prediction

        try:
            written["plot"] = str(plot_prediction(path, prediction, explain_path(args.plot, path, several)))
        except FlowerDemoError as exc:
            raise FlowerDemoError(f"{path}: --plot: {exc}") from None
    return written


def show(args: argparse.Namespace, path: str, prediction: core.Prediction, written: dict[str, str]) -> None:
    """Print one image's table and the figures written for it (nothing with --json)."""
    if args.json:
        return
    print(format_table(path, prediction))
    if "explanation" in written:
        print(f"  heatmap overlay: {written['explanation']}")
    if "plot" in written:
        print(f"  top-{len(prediction.class_names)} chart: {written['plot']}")


def classify(args: argparse.Namespace, classifier: core.Classifier) -> list[dict[str, Any]]:
    """One record per input: the prediction and the figures written, or its error (also printed)."""
    paths, problems = expand_inputs(args.images)
    explain, several = bool(args.explain), len(paths) > 1
    results = (
        core.predict_batch(
            paths, classifier, args.top_k, skip_errors=True, explain=explain, neighbours=args.neighbours
        )
        if paths
        else []
    )
    records = []
    for path, result in [*zip(paths, results), *problems]:
        if not isinstance(result, FlowerDemoError):
            try:
                written = figures(args, path, result, several)
            except FlowerDemoError as exc:
                result = exc
        if isinstance(result, FlowerDemoError):
            print(f"error: {result}", file=sys.stderr)
            records.append({"image": path, "error": str(result)})
        else:
            records.append({"image": path, **result.as_dict(), **written})
            show(args, path, result, written)
    return records


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    skip_last_collection()  # as every command does (errors.exit_status): --engine keras loads TensorFlow
    try:
        classifier = open_classifier(args)
    except FlowerDemoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:  # --engine keras without TensorFlow
        print(f"error: {missing_package(exc)}", file=sys.stderr)
        return 2
    records = classify(args, classifier)
    if args.json:
        print(json.dumps(records, indent=2))
    return 1 if any("error" in record for record in records) else 0


if __name__ == "__main__":
    sys.exit(main())
