"""What benchmarks/bench.py measures, each part returning its section of the results: LiteRT's
bare forward pass beside predict() (and explain=True) in this process, evaluation throughput, the
predict command line as separate processes (wall time, peak RSS, imports), the app as a separate
process, the Keras engine beside LiteRT, and training seconds per epoch; the machine and its load.

Latencies that are compared take turns call by call (export.time_interleaved). Keras and
TensorFlow are imported only by the Keras and training parts; tables.py turns the results into
the table and the targets.
"""

from __future__ import annotations

import importlib.metadata
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import serving
from flower_demo import core, data, evaluate, explain, export, model_files, neighbours
from flower_demo.errors import FlowerDemoError, first_line

# --- settings --------------------------------------------------------------------------------

DEFAULT_DATA_DIR = model_files.REPO_ROOT.parent / "shared" / "data" / "oxford_flowers102"

CLI_RUNS = 5  # timed runs of each command line (after one untimed run for the file cache)
EVAL_IMAGES = 256  # images per throughput round (fixtures repeated)
EVAL_ROUNDS = 3  # timed rounds per throughput figure; the median is reported
APP_REQUESTS = 100  # /predict requests after the first answer, before the memory is read
APP_TIMEOUT_S = 180.0  # give up on the app's first answer after this long
TRAIN_IMAGES = 204  # training subset: 102 classes x 2 images, as a --max-per-class 2 run
TRAIN_VIEWS = 2  # cached views per training image (view 0 plain, the rest augmented)
TRAIN_EPOCHS = 3  # the first epoch traces the step functions; the later ones are timed
QUIET_LOAD = 0.5  # 1-minute load average above which the figures are flagged as noisy
MIB = 1024 * 1024  # memory is reported in MiB (2**20 bytes), as ps and /proc do

# Starts `python ARGS...` and writes its exit code, wall time and peak RSS (os.wait4: that child's
# own resource usage) to the JSON file named first. A separate small process does this because
# Linux starts a child's peak RSS at its parent's size when it forks: counted from the bench, whose
# process holds TensorFlow, every command line would weigh some 800 MB.
LAUNCHER = """\
import json, os, sys, time
report, args = sys.argv[1], sys.argv[2:]
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execv(sys.executable, [sys.executable, *args])
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - start
code = os.waitstatus_to_exitcode(status)
with open(report, "w") as f:
    json.dump({"code": code, "wall_s": wall, "maxrss_kib": usage.ru_maxrss}, f)
"""

# Run in a subprocess: the predict command line exactly as `python -m` runs it, then one last
# stdout line saying which of TensorFlow and Keras it imported.
IMPORT_CHECK = """\
import json, runpy, sys
sys.argv = ["flower_demo.predict", *sys.argv[1:]]
try:
    runpy.run_module("flower_demo.predict", run_name="__main__", alter_sys=True)
    code = 0
except SystemExit as exc:
    code = exc.code
print(json.dumps({"imported": [m for m in ("tensorflow", "keras") if m in sys.modules]}), flush=True)
sys.exit(code)
"""

_STARTED = time.perf_counter()


def log(message: str) -> None:
    """Progress on stderr, stamped with seconds since start (stdout is kept for the results)."""
    print(f"[{time.perf_counter() - _STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


def ms(times: np.ndarray) -> dict[str, float]:
    p50, p95 = np.percentile(times, [50, 95]) * 1000
    return {"p50_ms": round(float(p50), 2), "p95_ms": round(float(p95), 2)}


def repeated(items: list[Path], n: int) -> list[Path]:
    return [items[i % len(items)] for i in range(n)]


# --- the machine -----------------------------------------------------------------------------


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """CPU, Python and library versions, read without importing TensorFlow."""
    cpu = platform.processor() or platform.machine()
    try:
        names = [ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name")]
        cpu = names[0].split(":", 1)[1].strip() if names else cpu
    except OSError:
        pass
    packages = ("ai-edge-litert", "tensorflow", "keras", "gradio", "pillow", "numpy")
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu,
        "python": platform.python_version(),
        **{name: version(name) for name in packages},
        "platform": platform.platform(),
    }


def load_figures(before: list[float] | None, after: list[float] | None) -> dict[str, Any]:
    """The load averages around the run, and whether either says the figures are noisy."""
    busy = any(load is not None and load[0] > QUIET_LOAD for load in (before, after))
    return {"before": before, "after": after, "busy": busy}


def model_info(classifier: core.Classifier, folder: Path) -> dict[str, Any]:
    """What was measured: backbone, input size, classes and the sizes of the model files."""
    keras_file = folder / model_files.MODEL_FILE
    return {
        "path": str(folder),
        "backbone": classifier.metadata["backbone"],
        "image_size": classifier.image_size,
        "classes": classifier.num_classes,
        "tflite_mb": round((folder / model_files.TFLITE_FILE).stat().st_size / 1e6, 2),
        "keras_mb": round(keras_file.stat().st_size / 1e6, 2) if keras_file.is_file() else None,
    }


# --- the serving core in this process --------------------------------------------------------


def bench_latency(classifier: core.Classifier, photos: list[Path], repeats: int) -> dict[str, Any]:
    """The bare LiteRT forward pass, predict() and predict(explain=True), batch 1, taking turns."""
    x = core.process_image(photos[0], classifier.image_size)[None]
    k = min(core.DEFAULT_TOP_K, classifier.num_classes)
    plain, explained = itertools.cycle(photos), itertools.cycle(photos)
    log(f"latency: bare LiteRT forward, predict(), predict(explain=True), {repeats} calls each")
    runs = {
        "bare": lambda: classifier.engine(x),
        "predict": lambda: core.predict(next(plain), classifier, k),
        "explain": lambda: core.predict(next(explained), classifier, k, explain=classifier.explains),
    }
    times = export.time_interleaved(runs, repeats)
    bare = ms(times["bare"])
    result: dict[str, Any] = {"bare_forward": {"engine": classifier.engine.device, **bare}}
    for name in ("predict", "explain"):
        figures = ms(times[name])
        result[name] = {**figures, "vs_bare": round(figures["p50_ms"] / bare["p50_ms"], 2)}
    if not classifier.explains:
        result["explain"]["note"] = "the model returns no class activation maps: measured without"
    return result


def bench_neighbours(classifier: core.Classifier, photos: list[Path], repeats: int) -> dict[str, Any]:
    """What the reference photos add to an answer, per photo: the search of the model's bank for
    the nearest photos of the top species (what a known answer gets) and of any species (what a
    photo turned away gets), on the pooled features the forward pass already returned."""
    references = classifier.references
    if references is None:
        return {"skipped": "the model folder holds no reference photos (calibrate --references-only)"}
    batch = np.stack([core.process_image(p, classifier.image_size) for p in photos])
    outputs = classifier.run(batch)
    features, top = outputs[model_files.FEATURES], outputs[model_files.PROBABILITIES].argmax(axis=1)
    names, k = classifier.class_names, neighbours.DEFAULT_NEIGHBOURS
    turn, any_turn = itertools.cycle(range(len(photos))), itertools.cycle(range(len(photos)))
    log(f"reference photos: nearest {k} of {len(references.labels)}, {repeats} calls each")

    def of_species() -> None:
        i = next(turn)
        references.nearest(features[i], names, int(top[i]), k)

    def of_any() -> None:
        references.nearest(features[next(any_turn)], names, None, k)

    times = export.time_interleaved({"of_species": of_species, "of_any": of_any}, repeats)
    micro = lambda t: {f"p{q}_us": round(float(np.percentile(t, q)) * 1e6, 1) for q in (50, 95)}
    return {
        "bank": [int(n) for n in references.bank.shape],
        "neighbours": k,
        "of_species": micro(times["of_species"]),
        "of_any": micro(times["of_any"]),
        "worst_p95_ms": round(max(float(np.percentile(t, 95)) for t in times.values()) * 1000, 3),
    }


def bench_eval(classifier: core.Classifier, photos: list[Path], n_images: int) -> dict[str, Any]:
    """Images/s of evaluate.predict_probabilities through the core from JPEG paths, decoding
    included, beside decoding alone and the engine alone on the same (pre-decoded) images."""
    size = classifier.image_size
    paths = [str(p) for p in repeated(photos, n_images)]
    decoded = np.concatenate(list(data.iter_decoded(paths, size, evaluate.EVAL_BATCH)))
    batches = [decoded[i : i + evaluate.EVAL_BATCH] for i in range(0, n_images, evaluate.EVAL_BATCH)]
    runs = {
        "eval": lambda: evaluate.predict_probabilities(classifier.probabilities, paths, size),
        "decode": lambda: list(data.iter_decoded(paths, size, evaluate.EVAL_BATCH)),
        "engine": lambda: [classifier.probabilities(b.astype("float32")) for b in batches],
    }
    log(f"throughput: evaluation path, decoding alone, engine alone; {n_images} images, {EVAL_ROUNDS} rounds")
    times = export.time_interleaved(runs, EVAL_ROUNDS, warmup=1)
    rate = {name: round(n_images / float(np.median(t)), 1) for name, t in times.items()}
    return {
        "images": n_images,
        "batch_size": evaluate.EVAL_BATCH,
        "decode_threads": data.DECODE_THREADS,
        "engine_threads": core.NUM_THREADS,
        "images_per_s": rate["eval"],
        "decode_only_images_per_s": rate["decode"],
        "engine_only_images_per_s": rate["engine"],
    }


# --- command lines, as users run them --------------------------------------------------------


def run_child(command: list[str], out_dir: Path) -> dict[str, Any]:
    """Run `command` (a Python command line) from the repository root through LAUNCHER: exit code,
    wall seconds from its start to its exit, its peak RSS, and the last line of its stdout and stderr."""
    report = out_dir / "launcher.json"
    with (out_dir / "stdout").open("w+") as out, (out_dir / "stderr").open("w+") as err:
        launcher = subprocess.run(
            [sys.executable, "-c", LAUNCHER, str(report), *command],
            cwd=model_files.REPO_ROOT,
            stdout=out,
            stderr=err,
        )
        out.seek(0), err.seek(0)
        stdout, stderr = out.read().strip().splitlines(), err.read().strip().splitlines()
    if launcher.returncode != 0 or not report.is_file():
        raise FlowerDemoError(
            f"could not run {' '.join(command[:3])}: {stderr[-1] if stderr else 'no output'}"
        )
    measured = json.loads(report.read_text())
    report.unlink()
    return {
        "code": measured["code"],
        "wall_s": measured["wall_s"],
        "peak_rss_mib": measured["maxrss_kib"] / 1024,  # ru_maxrss is in KiB on Linux
        "last_stdout": stdout[-1] if stdout else "",
        "last_stderr": stderr[-1] if stderr else "",
    }


def bench_cli(folder: Path, photo: Path, runs: int) -> dict[str, Any]:
    """`python -m flower_demo.predict photo.jpg`, plain and with --explain: median wall time, peak
    RSS; then the same command lines once more through runpy, to see what they imported."""
    with tempfile.TemporaryDirectory(prefix="flower_bench_") as tmp:
        tmp_dir = Path(tmp)
        args = [
            os.path.relpath(photo, model_files.REPO_ROOT),
            "--model",
            os.path.relpath(folder, model_files.REPO_ROOT),
        ]
        commands = {
            "plain": args,
            "explain": [*args, "--explain", str(tmp_dir / "explained.png")],
        }
        log(f"command line: python -m flower_demo.predict, plain and --explain, {runs} runs each")
        for command in commands.values():  # untimed: file cache, .pyc files
            run_child(["-m", "flower_demo.predict", *command], tmp_dir)
        timed: dict[str, list[dict[str, Any]]] = {name: [] for name in commands}
        for _ in range(runs):
            for name, command in commands.items():
                timed[name].append(run_child(["-m", "flower_demo.predict", *command], tmp_dir))
        result: dict[str, Any] = {"runs": runs, "command": "python -m flower_demo.predict " + " ".join(args)}
        for name, done in timed.items():
            failed = [d for d in done if d["code"] != 0]
            if failed:
                raise FlowerDemoError(f"predict command line failed: {failed[0]['last_stderr']}")
            walls = [d["wall_s"] for d in done]
            result[name] = {
                "wall_s": round(float(np.median(walls)), 3),
                "wall_min_s": round(min(walls), 3),
                "wall_max_s": round(max(walls), 3),
                "peak_rss_mib": round(max(d["peak_rss_mib"] for d in done), 1),
            }
        imported: set[str] = set()
        for command in commands.values():
            check = run_child(["-c", IMPORT_CHECK, *command], tmp_dir)
            if check["code"] != 0:
                raise FlowerDemoError(f"predict command line failed: {check['last_stderr']}")
            imported |= set(json.loads(check["last_stdout"])["imported"])
    result["imported"] = sorted(imported)
    result["tensorflow_imported"] = "tensorflow" in imported
    return result


# --- the app ---------------------------------------------------------------------------------


def bench_app(folder: Path, photo: Path, requests: int) -> dict[str, Any]:
    """Seconds from `python app.py` to its first /predict answer; then `requests` more answers and
    the resident memory of its process tree."""
    if not serving.APP_SCRIPT.is_file():
        return {"skipped": f"{serving.APP_SCRIPT.name} not found"}
    from gradio_client import handle_file  # imported before the clock starts

    port = serving.free_port()
    url = serving.app_url(port)
    log(f"app: starting {serving.APP_SCRIPT.name} on {url}, then {requests} /predict requests")
    with tempfile.TemporaryFile("w+") as app_log:
        start = time.perf_counter()
        proc = serving.start_app(port, app_log, folder)
        try:
            client, listening_s = serving.connect(proc, port, start, APP_TIMEOUT_S)
            answer = client.predict(handle_file(str(photo)), api_name="/predict")
            first_answer = time.perf_counter() - start
            first_rss, _ = serving.app_tree(proc.pid)
            call = lambda: client.predict(handle_file(str(photo)), api_name="/predict")  # noqa: E731
            times = export.time_interleaved({"app": call}, requests, warmup=0)["app"]
            rss, tensorflow = serving.app_tree(proc.pid)
        except Exception as exc:
            app_log.seek(0)
            tail = "\n".join(app_log.read().splitlines()[-15:])
            log(f"app failed: {exc}\n--- app output (last lines) ---\n{tail}")
            return {"error": first_line(exc)}
        finally:
            serving.stop_tree(proc)
        app_log.seek(0)
        serving_line = [ln for ln in app_log.read().splitlines() if ln.startswith("flower_demo: serving")]
    return {
        "first_answer_s": round(first_answer, 2),
        "listening_s": round(listening_s, 2),
        "first_answer_rss_mib": round(first_rss / MIB, 1),
        "requests": requests,
        "request_p50_ms": ms(times)["p50_ms"],
        "rss_mib": round(rss / MIB, 1),
        "tensorflow_loaded": tensorflow,
        "serving": serving_line[0] if serving_line else "",
        "first_answer": str(answer)[:120],
    }


# --- LiteRT against Keras --------------------------------------------------------------------


def bench_keras(
    lite: core.Classifier, folder: Path, photos: list[Path], repeats: int, data_dir: Path | None
) -> dict[str, Any]:
    """The Keras engine beside LiteRT: bare forward, top-1 agreement on the validation split, and
    the class activation map of the forward pass against the gradient Grad-CAM."""
    log("keras: loading model.keras (TensorFlow)")
    keras_classifier = core.Classifier(folder, engine="keras")
    keras_engine = keras_classifier.engine
    x = core.process_image(photos[0], lite.image_size)[None]
    log(f"keras: bare forward beside LiteRT's, {repeats} calls each")
    times = export.time_interleaved(
        {"litert": lambda: lite.engine(x), "keras": lambda: keras_engine(x)}, repeats
    )
    litert, keras_ms = ms(times["litert"]), ms(times["keras"])
    results: dict[str, Any] = {
        "keras_forward": {
            "engine": keras_engine.device,
            **keras_ms,
            "litert_p50_ms": litert["p50_ms"],
            "vs_litert": round(keras_ms["p50_ms"] / litert["p50_ms"], 2),
        }
    }

    if data_dir is None:
        results["agreement"] = {"skipped": f"no Flowers-102 folder (looked for {DEFAULT_DATA_DIR})"}
    else:
        log(f"keras: top-1 agreement with LiteRT on the validation photos of {data_dir}")
        agreement = export.validation_agreement(lite.engine, keras_engine, data_dir)
        results["agreement"] = agreement

    if not lite.explains:
        results["cam"] = {"skipped": "the model returns no class activation maps"}
        return results
    log(f"keras: class activation maps against gradient Grad-CAM on {len(photos)} photos")
    pearson = {}
    for photo in photos:
        index = int(np.argmax(lite.probabilities(core.process_image(photo, lite.image_size)[None])[0]))
        cam = explain.heatmap(photo, lite, index).ravel()
        grad = explain.gradcam(photo, keras_classifier, index).ravel()
        if cam.std() == 0 or grad.std() == 0:  # a 1x1 feature map (tiny inputs): r is undefined
            pearson[photo.name] = 1.0 if np.allclose(cam, grad) else 0.0
        else:
            pearson[photo.name] = round(float(np.corrcoef(cam, grad)[0, 1]), 5)
    results["cam"] = {"photos": len(photos), "min_pearson": min(pearson.values()), "pearson": pearson}
    return results


# --- training --------------------------------------------------------------------------------


def epoch_seconds(trainable: Any, views: np.ndarray, labels: np.ndarray, lr: float) -> float:
    """Median seconds per epoch of one stage, trained as flower_demo.train trains it (RandomViews
    batches, compile_stage's optimizer and loss, the weight average) with the default TrainConfig;
    epoch 1 (tracing) is left out."""
    import keras

    from flower_demo import train
    from flower_demo.train import stages
    from flower_demo.train.averaging import WeightAverage

    config = train.TrainConfig()
    one_hot = np.eye(int(trainable.output_shape[-1]), dtype="float32")[labels]
    batches = stages.RandomViews(views, one_hot, config.batch_size, config.seed, config.mixup)
    stages.compile_stage(trainable, lr, TRAIN_EPOCHS, len(batches), config)
    times: list[float] = []
    timer = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: times.append(time.perf_counter()),
        on_epoch_end=lambda epoch, logs: times.append(time.perf_counter() - times.pop()),
    )
    average = [WeightAverage(config.ema)] if config.ema else []
    trainable.fit(batches, epochs=TRAIN_EPOCHS, callbacks=[timer, *average], verbose=0)
    return float(np.median(times[1:]))


def bench_training(
    metadata: dict[str, Any], photos: list[Path], n_images: int, cut: str | None = None
) -> dict[str, Any]:
    """Seconds per epoch of both training stages on `n_images` photos, through flower_demo.train's
    own parts: create_model (random weights: timing does not depend on them), split_model at `cut`
    (else the cut the model was trained from, else the registry's), activation_steps and
    cache_activations (view 0 plain, the others augmented),
    pooled_features for stage 1, then epoch_seconds; mixed precision on a GPU.
    Not included: validation and checkpoint writing."""
    import keras

    from flower_demo import models, train
    from flower_demo.train import caching, stages

    backbone = str(metadata["backbone"])
    if backbone not in models.BACKBONES:
        return {"skipped": f"backbone {backbone} is not in the registry; training is timed for those"}
    config = train.TrainConfig()  # the training defaults
    size, num_classes = int(metadata["image_size"]), len(metadata["class_names"])
    keras.utils.set_random_seed(config.seed)
    gpu = models.gpu_available()
    if gpu:  # as train.run does
        keras.mixed_precision.set_global_policy("mixed_float16")
    model = models.create_model(backbone, num_classes, size, None, config.dropout)
    cut = models.fine_tune_cut(backbone, cut or metadata.get("training", {}).get("fine_tune_from"))
    bottom, top = stages.split_model(model, backbone, cut)

    log(f"training: decoding {n_images} images at {size}px, caching {TRAIN_VIEWS} views of activations")
    decoded = np.concatenate(list(data.iter_decoded(photos, size, evaluate.EVAL_BATCH)))
    images = decoded[np.arange(n_images) % len(decoded)]
    labels = np.arange(n_images) % num_classes
    steps = caching.activation_steps(bottom, data.make_augmenter(config.seed))
    for step in steps:  # trace both
        step(images[: caching.CACHE_BATCH].astype("float32"))
    start = time.perf_counter()
    acts, _ = caching.cache_activations(bottom, steps, images, TRAIN_VIEWS, progress=False)
    cache_s = time.perf_counter() - start
    pooled = np.stack([caching.pooled_features(top, view) for view in acts])

    log(f"training: stage 1 and stage 2, {TRAIN_EPOCHS} epochs each")
    stage1_s = epoch_seconds(stages.head_model(pooled.shape[2:], model), pooled, labels, config.stage1_lr)
    stages.unfreeze(top)
    stage2_s = epoch_seconds(stages.head_model(acts.shape[2:], model, top), acts, labels, config.stage2_lr)
    keras.mixed_precision.set_global_policy("float32")
    return {
        "images": n_images,
        "image_size": size,
        "cut": cut,
        "mixed_precision": gpu,
        "cache_ms_per_image_view": round(cache_s / (TRAIN_VIEWS * n_images) * 1000, 2),
        "stage1_s_per_epoch": round(stage1_s, 3),
        "stage2_s_per_epoch": round(stage2_s, 3),
    }
