"""Two model folders' LiteRT forward passes, timed in turns: how much slower one backbone serves.

    python -m benchmarks.compare_forward weights runs/l0-fold1 --repeats 100

Each model runs its own model.tflite (core's LiteRT engine, the app's) on the same photo at its
own input size, preprocessed as serving does; the calls take turns (export.time_interleaved), so
background load hits both alike. It prints each one's p50 and p95 and the second's p50 over the
first's: the figure issue 28's "within 3x today's" asks for.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np

from flower_demo import core
from flower_demo.export import FIXTURE_PHOTOS, time_interleaved


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.compare_forward", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("first", help="model folder (the reference)")
    p.add_argument("second", help="model folder to compare with it")
    p.add_argument("--repeats", type=int, default=100, help="timed calls of each")
    args = p.parse_args(argv)
    photo = sorted(FIXTURE_PHOTOS.glob("*.jpg"))[0]
    runs: dict[str, Any] = {}
    folders = {"first": args.first, "second": args.second}  # by role: the same folder twice is two runs
    for role, folder in folders.items():
        engine = core.open_engine(folder, "litert")
        x = core.process_image(photo, engine.image_size)[None]
        runs[role] = lambda engine=engine, x=x: engine(x)
    times = time_interleaved(runs, args.repeats)
    p50 = {role: 1000 * float(np.median(seconds)) for role, seconds in times.items()}
    for role, seconds in times.items():
        print(
            f"{folders[role]}: p50 {p50[role]:.2f} ms, p95 {1000 * float(np.percentile(seconds, 95)):.2f} ms"
        )
    print(
        f"{args.second} / {args.first}: {p50['second'] / p50['first']:.2f}x (p50, {args.repeats} calls each)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
