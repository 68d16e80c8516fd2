"""Teach a model a flower it does not know, from a few photos: a new model folder, one class more.

    python -m flower_demo.teach --model weights --name "blue poppy" --out runs/taught PHOTO [PHOTO ...]
    python -m flower_demo.teach --model runs/taught --name "oriental poppy" --out runs/taught2 PHOTO ...

The new class's classifier column is imprinted from the photos' pooled features (imprint.py): no
training, no TensorFlow, a second or two for 5-20 photos. The new folder holds the source's
`model.tflite` unchanged (the taught class's logit is computed from the pooled features that file
already returns), metadata.json naming one class more (the taught ones listed under "taught"),
the source's calibration (its temperature and threshold as they were fitted), and OOD_FILE and
`thumbnails/` with the new photos added to the bank: photos like them are accepted and shown
beside answers. `model.keras` is not copied: it knows only the trained classes. Each file is
recorded with its hash, like any model folder.

The source folder is never changed: `--out` naming it is refused unless `--overwrite` says so
(then its model.tflite and model.keras are kept and the rest rewritten in place, metadata last),
and so is an `--out` folder that already holds files. Refusals (a name the model knows, fewer
than 3 readable photos, photos that look like nothing it learnt from) are one `error:` line,
exit 1. The figures in metadata.json (estimate, test measurement) stay those of the model before
teaching, and "taught" says so.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from flower_demo import core, imprint, model_files, neighbours
from flower_demo.errors import FlowerDemoError, exit_status
from flower_demo.images import ImageLike, list_images
from flower_demo.model_files import OOD_FILE, TFLITE_FILE, THUMBNAILS_DIR

METHOD = "weight imprinting (Qi, Brown and Lowe, CVPR 2018) on the pooled features; no training"


def taught_metadata(classifier: core.Classifier, source: dict[str, Any], photos: int) -> dict[str, Any]:
    """The source's metadata with the taught classifier's class names and the new class recorded."""
    metadata = {key: value for key, value in source.items() if key != model_files.FILES_KEY}
    metadata["class_names"] = list(classifier.class_names)
    before = dict(source.get(imprint.TAUGHT_KEY) or {})
    classes = [*before.get("classes", []), {"name": classifier.class_names[-1], "photos": photos}]
    metadata[imprint.TAUGHT_KEY] = {
        "method": METHOD,
        "trained_classes": before.get("trained_classes", classifier.engine.num_classes),
        "classes": classes,
        "figures": "estimate, metrics and test_measurement are of the model before any class was taught",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    return metadata


def taught_arrays(classifier: core.Classifier, source: Path, names: list[str]) -> dict[str, np.ndarray]:
    """The source's OOD_FILE arrays with the new photos' rows added to the bank (and its labels and
    thumbnail names), their mirror images' to the kNN rule's extra rows, and the taught classes'
    columns."""
    with np.load(source / OOD_FILE, allow_pickle=False) as stored:
        arrays = {name: stored[name] for name in stored.files}
    references = classifier.references
    new_rows = references.extra[-len(names) :]
    arrays[neighbours.BANK] = np.concatenate(
        [arrays[neighbours.BANK], new_rows.astype(arrays[neighbours.BANK].dtype)]
    )
    label = np.full(len(names), classifier.num_classes - 1, arrays[neighbours.LABELS].dtype)
    arrays[neighbours.LABELS] = np.concatenate([arrays[neighbours.LABELS], label])
    arrays[neighbours.PHOTOS] = np.concatenate([arrays[neighbours.PHOTOS], np.asarray(names, str)])
    arrays[imprint.TAUGHT_KERNEL] = classifier.taught.kernel
    arrays[imprint.TAUGHT_BIAS] = classifier.taught.bias
    statistics = classifier.calibration.statistics if classifier.calibration else {}
    if core.EXTRA_BANK in statistics:  # the kNN rule's rows beyond the bank: the mirror images
        mirrors = statistics[core.EXTRA_BANK][-len(names) :].astype(arrays[neighbours.BANK].dtype)
        before = arrays.get(core.EXTRA_BANK, mirrors[:0])
        arrays[core.EXTRA_BANK] = np.concatenate([before, mirrors])
    return arrays


def check_out(source: Path, out: Path, overwrite: bool) -> bool:
    """Whether `out` is the source folder itself (allowed with `overwrite` only); a folder that
    holds files already is refused unless `overwrite`."""
    same = out.resolve() == source.resolve()
    if same and not overwrite:
        raise FlowerDemoError(
            f"--out {out} is the source model folder; pass --overwrite to change it in place"
        )
    if not same and out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FlowerDemoError(
            f"--out {out} already holds files; choose an empty or new folder, or --overwrite"
        )
    if out.exists() and not out.is_dir():
        raise FlowerDemoError(f"--out {out} is a file, not a folder")
    return same


def teach_folder(
    model: str | Path, name: str, photos: Sequence[ImageLike], out: str | Path, overwrite: bool = False
) -> core.Classifier:
    """Write the model folder `out`: the folder `model` taught the class `name` from `photos`; the
    classifier it serves, loaded back from `out` as prediction loads it."""
    source, out = model_files.model_dir(model), Path(out)
    in_place = check_out(source, out, overwrite)
    classifier = core.Classifier(source, engine="litert")
    taught = classifier.teach(name, photos)
    start = len(classifier.references.labels)
    count = len(taught.references.labels) - start
    new_photos = taught.references.thumbnails[start:]
    thumbnail_names = [neighbours.thumbnail_name(start + i, pixels) for i, pixels in enumerate(new_photos)]
    metadata = taught_metadata(taught, classifier.metadata, count)
    with model_files.Staged(out) as staged:
        thumbnails = staged.subfolder(THUMBNAILS_DIR)
        for path in model_files.folder_files(source / THUMBNAILS_DIR):
            shutil.copy2(path, thumbnails / path.name)
        for file_name, pixels in zip(thumbnail_names, new_photos):
            (thumbnails / file_name).write_bytes(neighbours.thumbnail_bytes(pixels))
        np.savez(staged.path(OOD_FILE), **taught_arrays(taught, source, thumbnail_names))
        if not in_place:
            shutil.copy2(source / TFLITE_FILE, staged.path(TFLITE_FILE))
        staged.publish(metadata, fresh=not in_place)
    return core.Classifier(out, engine="litert")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m flower_demo.teach",
        description="Teach a model folder one more flower from a few photos (weight imprinting): "
        "a new model folder that serves it on LiteRT.",
    )
    p.add_argument(
        "photos", nargs="+", help=f"{imprint.MIN_PHOTOS} to {imprint.MAX_PHOTOS} photos of it, or folders"
    )
    p.add_argument(
        "--model", default=str(model_files.SHIPPED_MODEL_DIR), help="model folder (default: weights/)"
    )
    p.add_argument("--name", required=True, help="the flower's name, as answers will give it")
    p.add_argument("--out", required=True, help="the new model folder to write")
    p.add_argument(
        "--overwrite", action="store_true", help="allow --out to be the source, or a folder with files"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    def work() -> None:
        photos = [
            str(p) for item in args.photos for p in (list_images(item) if Path(item).is_dir() else [item])
        ]
        started = time.perf_counter()
        served = teach_folder(args.model, args.name, photos, args.out, args.overwrite)
        taught = served.metadata[imprint.TAUGHT_KEY]["classes"][-1]
        seconds = time.perf_counter() - started
        unread = len(photos) - taught["photos"]
        skipped = f" ({unread} of the {len(photos)} could not be read)" if unread else ""
        print(
            f"taught {taught['name']!r} from {taught['photos']} photos{skipped} in {seconds:.1f} s: "
            f"{args.out} knows {served.num_classes} classes"
        )

    return exit_status(work)


if __name__ == "__main__":
    sys.exit(main())
