"""Speed and memory figures of the flower classifier, measured on whatever machine runs this.

    python -m flower_demo.bench [--model weights] [--repeats 50] [--json] [--skip-app] [--skip-train]

One run measures, with the model given by --model (default: the shipped model in weights/):
- the bare forward pass: `models.compiled_forward(model)` on an already preprocessed float32
  (1, S, S, 3) array, batch 1, warmed up (p50/p95), plus the eager `model(x, training=False)`;
- `predict()` end to end from a JPEG file on disk, batch 1 (p50/p95), against the bare pass;
- the naive way: decode with `process_image`, then Keras' own `model.predict(x)` one image at a time;
- the evaluation path's throughput (`evaluate.predict_probabilities` over JPEG paths, decoding
  included) against the compiled forward on pre-decoded float32 batches of the same size;
- the app's cold start (`python app.py` until the first /predict answer via gradio_client) and
  its resident memory, children included;
- training seconds per epoch of stage 1 (head on pooled features) and stage 2 (top of the
  backbone on cut activations), on a small fixed subset, along train.py's code path;
- the model file's size, and the machine (CPU, GPU, Python, TensorFlow and Keras versions).

The photos are the test fixtures (tests/fixtures/flowers), repeated as needed; nothing outside
the repository is required. Timings are wall-clock and sensitive to other load on the machine:
the load average before and after the run is part of the output.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from flower_demo import models
from flower_demo.errors import FlowerDemoError, first_line
from flower_demo.evaluate import EVAL_BATCH, predict_probabilities
from flower_demo.images import list_images, process_image, square_uint8

# --- settings --------------------------------------------------------------------------------

FIXTURE_IMAGES = models.REPO_ROOT / "tests" / "fixtures" / "flowers"
APP_SCRIPT = models.REPO_ROOT / "app.py"

DEFAULT_REPEATS = 50  # timed calls per latency figure
WARMUP_CALLS = 5  # untimed calls before each latency figure (tracing, caches, allocator)
EVAL_IMAGES = 256  # images per throughput round (fixtures repeated)
THROUGHPUT_ROUNDS = 3  # timed rounds per throughput figure; the median is reported
TRAIN_IMAGES = 204  # training subset: 102 classes x 2 images, as a --max-per-class 2 run
TRAIN_VIEWS = 2  # cached views per training image (view 0 plain, the rest augmented)
TRAIN_EPOCHS = 3  # the first epoch traces the step functions; the later ones are timed
APP_TIMEOUT_S = 180.0  # give up on the app's first answer after this long
APP_POLL_S = 0.1  # how often to probe the starting app's port
APP_WARM_CALLS = 10  # /predict round trips timed after the first answer
TOP_K = 5  # classes predict() returns, as in the app
QUIET_LOAD = 0.5  # 1-minute load average above which the figures are flagged as noisy

# Targets (for a 2-core CPU machine): (key in the results, comparison, threshold, unit).
TARGETS: dict[str, tuple[str, str, float, str]] = {
    "predict() vs bare forward": ("predict.vs_bare", "<=", 1.5, "x"),
    "per-image model.predict vs predict()": ("naive.vs_predict", ">=", 5.0, "x slower"),
    "eval throughput vs bare batched": ("eval_throughput.vs_bare", ">=", 0.8, "of bare"),
    "app cold start": ("app.cold_start_s", "<", 15.0, "s"),
    "app resident memory": ("app.rss_gb", "<", 1.5, "GB"),
}

BARE_DEFINITION = (
    "models.compiled_forward(model) on an already preprocessed float32 (1, S, S, 3) array "
    "(decoding, resizing and top-k excluded), warmed up"
)


_STARTED = time.perf_counter()


def log(message: str) -> None:
    """Progress on stderr, stamped with seconds since start (stdout is kept for the results)."""
    print(f"[{time.perf_counter() - _STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


# --- timing helpers --------------------------------------------------------------------------


def time_interleaved(
    fns: dict[str, Callable[[int], Any]], repeats: int, warmup: int = WARMUP_CALLS
) -> dict[str, np.ndarray]:
    """Wall-clock seconds of `repeats` calls fn(i) of each fn, after min(warmup, repeats) untimed ones.

    The functions take turns call by call, so a change in background load hits them all alike
    and their ratios stay meaningful on a busy machine.
    """
    for i in range(min(warmup, repeats)):
        for fn in fns.values():
            fn(i)
    gc.collect()
    times = {name: np.empty(repeats) for name in fns}
    for i in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn(i)
            times[name][i] = time.perf_counter() - start
    return times


def percentiles_ms(times: np.ndarray) -> dict[str, float]:
    p50, p95 = np.percentile(times, [50, 95]) * 1000
    return {"p50_ms": round(float(p50), 2), "p95_ms": round(float(p95), 2)}


def throughputs(runs: dict[str, Callable[[], int]], rounds: int = THROUGHPUT_ROUNDS) -> dict[str, float]:
    """Median images/s of each run() (which returns the images it did), rounds taking turns."""
    for run_once in runs.values():
        run_once()  # warm-up
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run_once in runs.items():
            gc.collect()
            start = time.perf_counter()
            done = run_once()
            rates[name].append(done / (time.perf_counter() - start))
    return {name: float(np.median(r)) for name, r in rates.items()}


def repeated(items: list[Path], n: int) -> list[Path]:
    return [items[i % len(items)] for i in range(n)]


# --- the machine -----------------------------------------------------------------------------


def cpu_model_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def machine_info() -> dict[str, Any]:
    import keras
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model_name(),
        "gpu": [tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus],
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "platform": platform.platform(),
    }


# --- inference -------------------------------------------------------------------------------


def bench_inference(classifier: Any, photos: list[Path], repeats: int, eval_images: int) -> dict[str, Any]:
    """Bare forward, predict(), naive model.predict and the evaluation path's throughput."""
    from flower_demo.predict import predict

    model, size = classifier.model, classifier.image_size
    forward = models.compiled_forward(model)
    x1 = process_image(photos[0], size)[None]  # (1, S, S, 3) float32, 0..255

    k = min(TOP_K, classifier.num_classes)

    def photo(i: int) -> Path:
        return photos[i % len(photos)]

    log(f"batch 1 latency: bare forward, eager call, predict(), model.predict ({repeats} calls each)")
    times = time_interleaved(
        {
            "bare": lambda i: np.asarray(forward(x1)),
            "eager": lambda i: np.asarray(model(x1, training=False)),
            "predict": lambda i: predict(photo(i), classifier, k),
            "naive": lambda i: model.predict(process_image(photo(i), size)[None], verbose=0),
            "keras_only": lambda i: model.predict(x1, verbose=0),
        },
        repeats,
    )
    bare, eager, ours, naive, keras_only = (
        percentiles_ms(times[name]) for name in ("bare", "eager", "predict", "naive", "keras_only")
    )

    log(f"throughput: evaluation path and bare batched forward, {eval_images} images by {EVAL_BATCH}")
    paths = [str(p) for p in repeated(photos, eval_images)]
    decoded = np.stack([square_uint8(p, size) for p in photos])
    batches = [
        np.ascontiguousarray(decoded[np.arange(i, min(i + EVAL_BATCH, eval_images)) % len(photos)], "float32")
        for i in range(0, eval_images, EVAL_BATCH)
    ]
    rates = throughputs(
        {
            "bare": lambda: sum(len(np.asarray(forward(b))) for b in batches),
            "eval": lambda: len(predict_probabilities(model, paths, batch_size=EVAL_BATCH)),
        }
    )
    bare_rate, eval_rate = rates["bare"], rates["eval"]

    return {
        "bare_forward": {"definition": BARE_DEFINITION, **bare, "eager_p50_ms": eager["p50_ms"]},
        "predict": {**ours, "vs_bare": round(ours["p50_ms"] / bare["p50_ms"], 2)},
        "naive": {
            "code": "model.predict(process_image(path)[None], verbose=0)",
            **naive,
            "model_predict_only_p50_ms": keras_only["p50_ms"],
            "vs_predict": round(naive["p50_ms"] / ours["p50_ms"], 2),
        },
        "eval_throughput": {
            "images": eval_images,
            "batch_size": EVAL_BATCH,
            "images_per_s": round(eval_rate, 1),
            "bare_images_per_s": round(bare_rate, 1),
            "vs_bare": round(eval_rate / bare_rate, 3),
        },
    }


# --- training --------------------------------------------------------------------------------


def check_cut(backbone: str, size: int, cut: str) -> None:
    """Raise FlowerDemoError unless `cut` names a layer of the backbone."""
    if backbone.startswith(models.HUB_PREFIX):
        return
    names = {layer.name for layer in models.create_backbone(backbone, size, weights=None).layers}
    if cut not in names:
        raise FlowerDemoError(f"{backbone} has no layer {cut!r} to cut at (--train-cut)")


def bench_training(
    metadata: dict[str, Any], photos: list[Path], n_images: int, cut: str | None = None
) -> dict[str, Any]:
    """Seconds per epoch of both training stages on `n_images` fixture photos, as train.py runs them.

    Same pieces as train.run: create_model (random weights: the figures do not depend on them),
    split_model at `cut` (default: the registry's), activations cached through the bottom (view 0 plain,
    others augmented), pooled features through the frozen top for stage 1, RandomViews batches,
    and fit_stage's optimizer, loss and metrics; mixed precision on a GPU. Not included: validation
    and checkpoint writing.
    """
    import keras

    from flower_demo import data, train

    defaults = train.parse_args(["--data-dir", "unused"])  # train.py's default settings
    backbone = str(metadata["backbone"])
    size = int(metadata["image_size"])
    num_classes = len(metadata["class_names"])
    if backbone.startswith(models.HUB_PREFIX):
        return {"skipped": f"backbone {backbone} is a TF-Hub module; training is timed for registry ones"}
    keras.utils.set_random_seed(defaults.seed)
    gpu = models.gpu_available()
    if gpu:  # as train.run does
        keras.mixed_precision.set_global_policy("mixed_float16")
    model = models.create_model(backbone, num_classes, size, None, defaults.dropout)
    registry_cut = models.BACKBONES[backbone].fine_tune_from
    cut = cut or registry_cut
    trained_from = metadata.get("training", {}).get("fine_tune_from") or registry_cut
    bottom, top = train.split_model(model, backbone, cut)

    log(f"training: decoding {n_images} images at {size}px, caching {TRAIN_VIEWS} views of activations")
    decoded = np.stack([square_uint8(p, size) for p in photos])
    images = decoded[np.arange(n_images) % len(decoded)]
    labels = np.arange(n_images) % num_classes
    steps = train.activation_steps(bottom, data.make_augmenter(defaults.seed))
    for step in steps:  # trace both
        step(images[: train.CACHE_BATCH].astype("float32"))
    start = time.perf_counter()
    acts = train.cache_activations(bottom, steps, images, TRAIN_VIEWS, progress=False)
    cache_s = time.perf_counter() - start

    start = time.perf_counter()
    pooled = np.stack([train.pooled_features(top, view) for view in acts])
    pool_s = time.perf_counter() - start

    def epoch_seconds(trainable: Any, views: np.ndarray, lr: float) -> float:
        one_hot = np.eye(num_classes, dtype="float32")[labels]
        batches = train.RandomViews(views, one_hot, defaults.batch_size, defaults.seed, defaults.mixup)
        train.compile_stage(trainable, lr, TRAIN_EPOCHS, len(batches), defaults)
        times: list[float] = []
        timer = keras.callbacks.LambdaCallback(
            on_epoch_begin=lambda epoch, logs: times.append(time.perf_counter()),
            on_epoch_end=lambda epoch, logs: times.append(time.perf_counter() - times.pop()),
        )
        trainable.fit(batches, epochs=TRAIN_EPOCHS, callbacks=[timer], verbose=0)
        return float(np.median(times[1:]))  # epoch 1 includes tracing

    log(f"training: stage 1 and stage 2, {TRAIN_EPOCHS} epochs each")
    stage1_s = epoch_seconds(train.head_model(pooled.shape[2:], model), pooled, defaults.stage1_lr)
    fine_tuned = train.unfreeze(top)
    stage2_s = epoch_seconds(train.head_model(acts.shape[2:], model, top), acts, defaults.stage2_lr)

    keras.mixed_precision.set_global_policy("float32")

    def per_image(seconds: float, n: int) -> float:
        return round(seconds / n * 1000, 3)

    return {
        "images": n_images,
        "image_size": size,
        "batch_size": defaults.batch_size,
        "cut": cut,
        "model_trained_from": trained_from,
        "mixed_precision": gpu,
        "stage2_trainable_params": fine_tuned,
        "cache_s_per_view": round(cache_s / TRAIN_VIEWS, 3),
        "cache_ms_per_image_view": per_image(cache_s, TRAIN_VIEWS * n_images),
        "pool_ms_per_image_view": per_image(pool_s, TRAIN_VIEWS * n_images),
        "stage1_s_per_epoch": round(stage1_s, 3),
        "stage1_ms_per_image": per_image(stage1_s, n_images),
        "stage2_s_per_epoch": round(stage2_s, 3),
        "stage2_ms_per_image": per_image(stage2_s, n_images),
    }


# --- the app ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def tree_rss(pid: int) -> int:
    """Resident bytes of process `pid` and all its descendants."""
    import psutil

    root = psutil.Process(pid)
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            pass
    return total


def stop_tree(proc: subprocess.Popen) -> None:
    """Terminate the app we started and whatever it started, by process id."""
    import psutil

    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        children = []
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    for child in children:
        try:
            child.terminate()
            child.wait(timeout=5)
        except psutil.TimeoutExpired:
            child.kill()
        except psutil.Error:
            pass


def bench_app(model_dir: Path, photo: Path) -> dict[str, Any]:
    """Seconds from `python app.py` to its first /predict answer, and its resident memory."""
    if not APP_SCRIPT.is_file():
        return {"skipped": f"{APP_SCRIPT.name} not found"}
    from gradio_client import Client, handle_file  # imported before the clock starts

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = {
        **os.environ,
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "FLOWER_DEMO_MODEL": str(model_dir),
    }
    log(f"app: starting {APP_SCRIPT.name} on {url}")
    with tempfile.TemporaryFile("w+") as app_log:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, str(APP_SCRIPT)],
            cwd=models.REPO_ROOT,
            env=env,
            stdout=app_log,
            stderr=subprocess.STDOUT,
        )
        try:
            client, answer, listening_s = None, None, None
            while client is None:
                if proc.poll() is not None:
                    raise FlowerDemoError(f"app exited with code {proc.returncode}")
                if time.perf_counter() - start > APP_TIMEOUT_S:
                    raise FlowerDemoError(f"app gave no answer within {APP_TIMEOUT_S:.0f} s")
                if not listening(port):  # a cheap probe: failed Client() calls cost ~0.1 s of CPU each
                    time.sleep(APP_POLL_S)
                    continue
                listening_s = listening_s or time.perf_counter() - start
                try:
                    client = Client(url, verbose=False)
                except Exception:  # listening but not serving yet (404 on /config, ...)
                    time.sleep(APP_POLL_S)
            answer = client.predict(handle_file(str(photo)), api_name="/predict")
            cold_start = time.perf_counter() - start
            rss = tree_rss(proc.pid)
            call = lambda i: client.predict(handle_file(str(photo)), api_name="/predict")  # noqa: E731
            warm = time_interleaved({"app": call}, APP_WARM_CALLS, warmup=1)["app"]
        except Exception as exc:
            app_log.seek(0)
            tail = "\n".join(app_log.read().splitlines()[-15:])
            log(f"app failed: {exc}\n--- app output (last lines) ---\n{tail}")
            return {"error": first_line(exc)}
        finally:
            stop_tree(proc)
    return {
        "cold_start_s": round(cold_start, 2),
        "listening_s": round(listening_s or cold_start, 2),
        "rss_gb": round(rss / 1e9, 3),
        "warm_predict_p50_ms": percentiles_ms(warm)["p50_ms"],
        "first_answer": str(answer)[:120],
    }


# --- report ----------------------------------------------------------------------------------


def lookup(results: dict[str, Any], dotted: str) -> Any:
    value: Any = results
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def check_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    checks = []
    for name, (key, op, threshold, unit) in TARGETS.items():
        value = lookup(results, key)
        if value is None:
            status = None
        elif op == "<=":
            status = value <= threshold
        elif op == ">=":
            status = value >= threshold
        else:
            status = value < threshold
        checks.append(
            {"name": name, "key": key, "value": value, "target": f"{op} {threshold:g} {unit}", "pass": status}
        )
    return checks


def format_table(results: dict[str, Any]) -> str:
    m, info = results["machine"], results["model"]
    gpu = ", ".join(m["gpu"]) or "none"
    load = results["load_average"]
    busy = "  (BUSY MACHINE: figures are noisy)" if load["busy"] else ""
    lines = [
        f"machine: {m['cpu_count']} CPUs ({m['cpu_model']}), GPU: {gpu}; Python {m['python']}, "
        f"TensorFlow {m['tensorflow']}, Keras {m['keras']}",
        f"load average (1, 5, 15 min) before / after: {load['before']} / {load['after']}{busy}",
        f"model: {info['path']} ({info['backbone']}, {info['image_size']} px, {info['classes']} classes, "
        f"{info['file_mb']} MB)",
        f"bare forward = {BARE_DEFINITION}",
        "",
    ]
    status = {
        r["key"]: ("pass" if r["pass"] else "MISS") if r["pass"] is not None else "-"
        for r in results["targets"]
    }
    target = {r["key"]: r["target"] for r in results["targets"]}
    rows: list[tuple[str, str, str, str]] = []

    def row(name: str, value: str, key: str | None = None) -> None:
        rows.append((name, value, target.get(key or "", ""), status.get(key or "", "")))

    if "bare_forward" in results:
        b, p, n, e = (results[k] for k in ("bare_forward", "predict", "naive", "eval_throughput"))
        row("bare forward, batch 1 (p50 / p95)", f"{b['p50_ms']:.1f} / {b['p95_ms']:.1f} ms")
        row("eager model(x), batch 1 (p50)", f"{b['eager_p50_ms']:.1f} ms")
        row("predict() from JPEG, batch 1 (p50 / p95)", f"{p['p50_ms']:.1f} / {p['p95_ms']:.1f} ms")
        row("  predict() / bare forward", f"{p['vs_bare']:.2f}x", "predict.vs_bare")
        row("decode + model.predict, per image (p50 / p95)", f"{n['p50_ms']:.1f} / {n['p95_ms']:.1f} ms")
        row("  model.predict alone (p50)", f"{n['model_predict_only_p50_ms']:.1f} ms")
        row("  naive / predict()", f"{n['vs_predict']:.2f}x", "naive.vs_predict")
        row(f"bare batched forward (batch {e['batch_size']})", f"{e['bare_images_per_s']:.1f} images/s")
        row("eval path from JPEGs (decode included)", f"{e['images_per_s']:.1f} images/s")
        row("  eval / bare batched", f"{e['vs_bare']:.0%}", "eval_throughput.vs_bare")
    app = results.get("app", {})
    if "cold_start_s" in app:
        row("app cold start to first /predict", f"{app['cold_start_s']:.1f} s", "app.cold_start_s")
        row("  of which: until the port listens", f"{app['listening_s']:.1f} s")
        row("app resident memory (with children)", f"{app['rss_gb']:.2f} GB", "app.rss_gb")
        row("app /predict round trip, warm (p50)", f"{app['warm_predict_p50_ms']:.1f} ms")
    else:
        row("app", f"skipped: {app['skipped']}" if "skipped" in app else f"error: {app.get('error')}")
    t = results.get("training", {})
    if "stage1_s_per_epoch" in t:
        n_img = f"{t['images']} images, {t['image_size']} px"
        row(f"train: cut at {t['cut']} (model trained from {t['model_trained_from']})", "")
        row("train: cache activations (bottom)", f"{t['cache_ms_per_image_view']:.2f} ms per image-view")
        row(
            f"train: stage 1 epoch ({n_img})",
            f"{t['stage1_s_per_epoch']:.3f} s = {t['stage1_ms_per_image']} ms/img",
        )
        row(
            f"train: stage 2 epoch ({n_img})",
            f"{t['stage2_s_per_epoch']:.3f} s = {t['stage2_ms_per_image']} ms/img",
        )
    else:
        row("training", f"skipped: {t.get('skipped')}")
    row("model file size", f"{info['file_mb']} MB")

    header = ("measurement", "value", "target", "status")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    table = [fmt.format(*header), fmt.format(*("-" * w for w in widths)), *(fmt.format(*r) for r in rows)]
    return "\n".join(lines + [line.rstrip() for line in table])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m flower_demo.bench",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", default=str(models.SHIPPED_MODEL_DIR), help="model folder or .keras file")
    p.add_argument("--repeats", type=int, default=DEFAULT_REPEATS, help="timed calls per latency figure")
    p.add_argument("--eval-images", type=int, default=EVAL_IMAGES, help="images per throughput round")
    p.add_argument("--train-images", type=int, default=TRAIN_IMAGES, help="size of the training subset")
    p.add_argument(
        "--train-cut",
        metavar="LAYER",
        help="backbone layer whose output feeds the part stage 2 trains (default: the registry's)",
    )
    p.add_argument("--images", default=str(FIXTURE_IMAGES), help="folder of JPEG photos to use")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--skip-app", action="store_true", help="do not measure the app's cold start")
    p.add_argument("--skip-train", action="store_true", help="do not measure training")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.eval_images < 1 or args.train_images < 1:
        p.error("--repeats, --eval-images and --train-images must be at least 1")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    from flower_demo.predict import Classifier

    before = load_average()
    photos = [p for p in list_images(args.images) if p.suffix.lower() in (".jpg", ".jpeg")]
    if not photos:
        raise FlowerDemoError(f"no JPEG photos in {args.images}")
    if Path(args.model).suffix == ".tflite":
        raise FlowerDemoError("the bench measures Keras models: give the model folder, not a .tflite export")
    model_dir = Path(args.model).resolve()
    if model_dir.suffix == ".keras":
        model_dir = model_dir.parent
    classifier = Classifier(model_dir)
    meta = classifier.metadata
    if args.train_cut and not args.skip_train:  # fail now, not after the inference figures
        check_cut(str(meta["backbone"]), classifier.image_size, args.train_cut)
    results: dict[str, Any] = {
        "machine": machine_info(),
        "model": {
            "path": str(model_dir),
            "backbone": meta["backbone"],
            "image_size": classifier.image_size,
            "classes": classifier.num_classes,
            "file_mb": round((model_dir / models.MODEL_FILE).stat().st_size / 1e6, 2),
        },
        "settings": {
            "repeats": args.repeats,
            "warmup_calls": WARMUP_CALLS,
            "photos": len(photos),
            "eval_images": args.eval_images,
            "train_images": args.train_images,
        },
    }
    results |= bench_inference(classifier, photos, args.repeats, args.eval_images)
    del classifier
    gc.collect()
    results["training"] = (
        {"skipped": "--skip-train"}
        if args.skip_train
        else bench_training(meta, photos, args.train_images, args.train_cut)
    )
    results["app"] = {"skipped": "--skip-app"} if args.skip_app else bench_app(model_dir, photos[0])
    after = load_average()
    busy = any(load is not None and load[0] > QUIET_LOAD for load in (before, after))
    results["load_average"] = {"before": before, "after": after, "busy": busy}
    results["targets"] = check_targets(results)
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        results = run(args)
    except FlowerDemoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(results, indent=2) if args.json else format_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
