"""Teaching measured on classes a model never saw: hold 10 Flowers-102 classes out of training,
teach them back from 1, 3, 5 and 10 photos, and score them on photos no choice was made on.

    python -m benchmarks.held_out tree --data-dir DATA_DIR --out WORK          # WORK/train92: 92 classes
    python -m flower_demo.train --image-folder WORK/train92 --val-split none --preset shipped \\
        --backbone mobilenet_v2 --weights imagenet --run-dir WORK/r92          # MobileNetV2's recipe
    python -m benchmarks.held_out measure --data-dir DATA_DIR --run WORK/r92   # the table

`tree` picks HELD_OUT classes at random (seeded) and links the official train photos of the other
92 into a class-per-folder tree. The run is the shipped recipe on MobileNetV2 (the model shipped
when this was measured) on those 920 photos. `measure`
first gives the run what teaching needs, as calibrate would from a validation split: its features
of the 920 photos (the bank and the reference photos), its classifier's kernel and bias, and a
temperature and kNN threshold fitted on the 92 classes' official validation photos. Then, for each
photo count and DRAWS random draws, it teaches all 10 held-out classes at once, each from that
many of its official train photos, and scores:
- the held-out classes' official validation photos (100): top-1 among all 102 classes, and the
  share the "not one of the classes" rule accepts;
- the 92 classes' validation photos (920): top-1 before and after teaching.
Which imprinting formula to use was settled on the held-out classes' train photos left over after
a draw (`--dev`), never on the validation photos reported here.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from flower_demo import core, data
from flower_demo.calibrate import rules, write_calibration
from flower_demo.calibrate.folds import Trained, classifier_head, forward, non_flower_photos
from flower_demo.core import FEATURES, OOD_FILE, PROBABILITIES
from flower_demo.errors import FlowerDemoError

HELD_OUT, SEED, DRAWS, K = 10, 0, 5, 2
SHOTS = (1, 3, 5, 10)
SINGLE_SHOTS = 5  # one new flower, as the teach command takes it


def held_out_classes(num_classes: int = 102) -> list[int]:
    return sorted(np.random.default_rng(SEED).choice(num_classes, HELD_OUT, replace=False).tolist())


def make_tree(data_dir: str, out: Path) -> Path:
    """out/train92/NAME/image_NNNNN.jpg: symbolic links to the official train photos of the kept classes."""
    train = data.load_oxford_folder(data_dir, "train")
    held = set(held_out_classes(len(train.class_names)))
    root = out / "train92"
    for path, label in zip(train.items, train.labels):
        if int(label) in held:
            continue
        folder = root / train.class_names[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        link = folder / Path(path).name
        if not link.exists():
            link.symlink_to(Path(path).resolve())
    return root


def split_of(data_dir: str, split: str, keep: set[int]) -> tuple[list[Any], np.ndarray, list[str]]:
    """The photos of one official split whose class is in `keep`, their labels and the class names."""
    images = data.load_oxford_folder(data_dir, split)
    chosen = [i for i, label in enumerate(images.labels) if int(label) in keep]
    return [images.items[i] for i in chosen], images.labels[chosen], images.class_names


def prepare(run: Path, data_dir: str) -> None:
    """The run's bank, reference photos, head and calibration (temperature and kNN threshold fitted
    on the kept classes' validation photos), written into the run folder."""
    classifier = core.Classifier(run, engine="litert")
    names = classifier.class_names
    keep = {i for i in range(102) if i not in held_out_classes()}
    photos, train_labels, all_names = split_of(data_dir, "train", keep)  # what train92/ links to
    labels = np.array([names.index(all_names[int(i)]) for i in train_labels])  # matched by name
    features = forward(classifier.engine, photos)[FEATURES]
    statistics = rules.fit_statistics(features, labels, len(names), *classifier_head(run))
    val, val_labels, _ = split_of(data_dir, "validation", keep)
    outputs = forward(classifier.engine, val)
    truth = np.array([names.index(all_names[int(i)]) for i in val_labels])
    temperature = rules.fit_temperature(outputs[PROBABILITIES], truth)
    rule = rules.candidates(temperature, statistics)[f"knn, k={K}"]
    threshold = rules.keep_threshold(rules.scores(rule, outputs))
    result = {
        "temperature": temperature,
        "ood_rule": "knn",
        "ood_threshold": threshold,
        "ood_k": K,
        "ood_file": OOD_FILE,
        "report": {"fitted_on": "the 92 kept classes' official validation photos (benchmarks.held_out)"},
    }
    write_calibration(run, result, statistics["knn"], Trained(photos, labels, statistics))


def top1(classifier: core.Classifier, raw: dict[str, np.ndarray], names: list[str]) -> tuple[float, float]:
    """Top-1 of the photos whose true class names are `names`, among all the classifier's classes,
    and the share its rule accepts."""
    probabilities, known = verdicts(classifier, raw)
    # a class teaching refused is not among the classifier's: its photos are all answered wrong
    truth = np.array([classifier.class_names.index(n) if n in classifier.class_names else -1 for n in names])
    return float((probabilities.argmax(axis=1) == truth).mean()), float(np.mean(known))


def verdicts(classifier: core.Classifier, raw: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The classifier's probabilities for photos (raw engine outputs) and its rule's verdict on each."""
    answered = classifier.answer(raw)
    return answered[PROBABILITIES], classifier.calibration.is_known(answered[PROBABILITIES], raw[FEATURES])


@dataclass
class Photos:
    """The base model and every photo set the measurement uses, with the base engine's raw outputs."""

    base: core.Classifier
    names: list[str]  # Flowers-102's class names, by label
    held: list[int]  # the held-out classes' labels
    pool: list[Any]  # the held-out classes' train photos: what teaching draws from
    pool_labels: np.ndarray
    scored_labels: np.ndarray  # the held-out classes' validation photos' labels
    raw_pool: dict[str, np.ndarray]
    raw_scored: dict[str, np.ndarray]
    raw_old: dict[str, np.ndarray]  # the 92 kept classes' validation photos
    old_names: list[str]
    raw_non_flowers: dict[str, np.ndarray]  # ood_photos/, both parts

    @classmethod
    def load(cls, run: Path, data_dir: str) -> Photos:
        base = core.Classifier(run, engine="litert")
        held = held_out_classes()
        pool, pool_labels, names = split_of(data_dir, "train", set(held))
        scored, scored_labels, _ = split_of(data_dir, "validation", set(held))
        old, old_labels, _ = split_of(data_dir, "validation", set(range(102)) - set(held))
        raws = [forward(base.engine, photos) for photos in (pool, scored, old)]
        old_names = [names[int(i)] for i in old_labels]
        non_flowers = [path for part in non_flower_photos().values() for path in part]
        raw_non_flowers = forward(base.engine, non_flowers)
        return cls(base, names, held, pool, pool_labels, scored_labels, *raws, old_names, raw_non_flowers)

    def teach(self, classifier: core.Classifier, c: int, chosen: np.ndarray, least: int) -> core.Classifier:
        """`classifier` taught class `c` from the pool's photos `chosen`; unchanged if it refuses
        (counted as a teaching that failed: that class's photos are then all answered wrong)."""
        try:
            return classifier.teach(self.names[c], [self.pool[i] for i in chosen], min_photos=least)
        except FlowerDemoError as exc:
            print(f"refused: {self.names[c]}: {exc}", flush=True)
            return classifier


def accepted_share(classifier: core.Classifier, raw: dict[str, np.ndarray]) -> float:
    """The share of photos (raw engine outputs) the classifier's rule accepts."""
    return float(np.mean(verdicts(classifier, raw)[1]))


def subset(raw: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    return {key: value[rows] for key, value in raw.items()}


def all_ten(photos: Photos, shots: int, draws: int, dev: bool, rng: np.random.Generator) -> dict[str, Any]:
    """Every held-out class taught (all ten in one classifier) from `shots` photos, `draws` times."""
    runs = []
    for _ in range(draws):
        classifier, left_over = photos.base, np.ones(len(photos.pool), bool)
        started = time.perf_counter()
        for c in photos.held:
            chosen = rng.choice(np.flatnonzero(photos.pool_labels == c), shots, replace=False)
            left_over[chosen] = False
            classifier = photos.teach(classifier, c, chosen, least=1)
        seconds = time.perf_counter() - started
        if dev:  # the train photos not drawn: where the formula was settled
            raw, labels = subset(photos.raw_pool, left_over), photos.pool_labels[left_over]
        else:
            raw, labels = photos.raw_scored, photos.scored_labels
        taught_top1, accepted = top1(classifier, raw, [photos.names[int(i)] for i in labels])
        after = top1(classifier, photos.raw_old, photos.old_names)[0]
        refused = len(photos.held) - (classifier.num_classes - photos.base.num_classes)
        non_flowers = accepted_share(classifier, photos.raw_non_flowers)
        runs.append(
            {
                "taught_top1": taught_top1,
                "accepted": accepted,
                "old_top1": after,
                "seconds": seconds,
                "refused": refused,
                "non_flowers_accepted": non_flowers,
            }
        )
    mean = {key: float(np.mean([r[key] for r in runs])) for key in runs[0]}
    return {"draws": len(runs), "mean": mean, "runs": runs}


def one_at_a_time(photos: Photos, draws: int, dev: bool, rng: np.random.Generator) -> dict[str, Any]:
    """Each held-out class taught alone from SINGLE_SHOTS photos (one new flower, as the teach command
    does it): top-1 and acceptance on its own photos, and the 92 classes' top-1 after."""
    results = []
    for c in photos.held:
        members = np.flatnonzero(photos.pool_labels == c)
        for _ in range(draws):
            chosen = rng.choice(members, SINGLE_SHOTS, replace=False)
            taught = photos.teach(photos.base, c, chosen, least=SINGLE_SHOTS)
            if dev:
                rows = np.setdiff1d(members, chosen)
                raw = subset(photos.raw_pool, rows)
            else:
                rows = np.flatnonzero(photos.scored_labels == c)
                raw = subset(photos.raw_scored, rows)
            top, accepted = top1(taught, raw, [photos.names[c]] * len(rows))
            old = top1(taught, photos.raw_old, photos.old_names)[0]
            refused = int(taught.num_classes == photos.base.num_classes)
            results.append(
                {
                    "class": photos.names[c],
                    "top1": top,
                    "accepted": accepted,
                    "old_top1": old,
                    "refused": refused,
                }
            )
    keys = ("top1", "accepted", "old_top1", "refused")
    mean = {key: float(np.mean([r[key] for r in results])) for key in keys}
    return {"shots": SINGLE_SHOTS, "teachings": len(results), "mean": mean, "runs": results}


def measure(run: Path, data_dir: str, draws: int, dev: bool) -> dict[str, Any]:
    """The table: per photo count, each draw's figures and their mean; then one class at a time."""
    if not (run / OOD_FILE).is_file():
        prepare(run, data_dir)
    photos = Photos.load(run, data_dir)
    before = top1(photos.base, photos.raw_old, photos.old_names)[0]
    rows: dict[str, Any] = {
        "held_out": [photos.names[i] for i in photos.held],
        "non_flowers_accepted_before": accepted_share(photos.base, photos.raw_non_flowers),
        "scored_on": "held-out classes' train photos not drawn (--dev)" if dev else "official validation",
        "old_top1_before": before,
        "shots": {},
    }
    rng = np.random.default_rng(SEED)
    for shots in SHOTS[:-1] if dev else SHOTS:  # --dev: 10 photos leave none of the 10 over
        result = all_ten(photos, shots, draws if shots < 10 else 1, dev, rng)
        rows["shots"][shots] = result
        mean = result["mean"]
        print(
            f"{shots:>2} photos ({result['draws']} draws): taught classes top-1 {mean['taught_top1']:.1%} "
            f"(accepted {mean['accepted']:.1%}); 92 classes {before:.1%} -> {mean['old_top1']:.1%}; "
            f"teaching all 10: {mean['seconds']:.1f} s; refused {mean['refused']:.1f} of 10; "
            f"non-flower photos accepted {mean['non_flowers_accepted']:.1%} "
            f"(before: {rows['non_flowers_accepted_before']:.1%})",
            flush=True,
        )
    single = rows["one_at_a_time"] = one_at_a_time(photos, draws, dev, rng)
    mean = single["mean"]
    print(
        f"one class at a time from {SINGLE_SHOTS} photos ({single['teachings']} teachings): its photos "
        f"named {mean['top1']:.1%} (accepted {mean['accepted']:.1%}); 92 classes -> {mean['old_top1']:.1%}; "
        f"refused {mean['refused']:.1%}",
        flush=True,
    )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.held_out", description=__doc__.split("\n\n")[0])
    p.add_argument("step", choices=["tree", "measure"])
    p.add_argument("--data-dir", required=True, help="Flowers-102 folder (jpg/, imagelabels.mat, setid.mat)")
    p.add_argument("--out", type=Path, help="tree: where to write train92/")
    p.add_argument("--run", type=Path, help="measure: the run trained on train92/")
    p.add_argument("--draws", type=int, default=DRAWS, help="random draws per photo count (10 photos: 1)")
    p.add_argument(
        "--dev", action="store_true", help="score the held-out classes' undrawn train photos instead"
    )
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    if args.step == "tree":
        print(make_tree(args.data_dir, args.out))
        return 0
    rows = measure(args.run, args.data_dir, args.draws, args.dev)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
