"""Speed, memory and agreement of the serving path, measured on whatever machine runs this, against
the targets of issue 11 (set for a 2-core CPU machine).

    python -m benchmarks.bench [--model weights] [--json] [--skip-app] [--skip-train] [--data-dir DIR]

The reference is LiteRT's bare forward pass: the model folder's model.tflite run by
core.LiteRTEngine on an already preprocessed (1, S, S, 3) float32 array. Against it, one run measures:
- `predict(path, classifier)` from a JPEG on the same engine, and with explain=True (p50/p95, ratio);
- `python -m flower_demo.predict photo.jpg` (and with --explain) as users run it: wall time from
  process start to exit, peak RSS, and whether TensorFlow got imported;
- `python app.py` until its first /predict answer, then APP_REQUESTS requests and the resident
  memory of its process tree;
- evaluation throughput through the core, decoding included, beside decoding alone and the engine
  alone on the same images;
- the Keras engine (models.KerasEngine, TensorFlow) beside LiteRT: bare forward, top-1 agreement on
  the Flowers-102 validation photos, and the forward pass's class activation map against the
  gradient Grad-CAM on the photos;
- training seconds per epoch of both stages on a small subset, along train.py's own functions;
- the machine and its load average before and after.
Photos are the test fixtures (tests/fixtures/flowers), repeated as needed. Latencies that are
compared take turns call by call (export.time_interleaved, the timing helper of export's --measure
too), so background load hits them alike. Importing export imports Keras and TensorFlow; nothing
runs on them before the Keras figures.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import itertools
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from flower_demo import core, data, evaluate, explain, export, model_files
from flower_demo.errors import FlowerDemoError, first_line
from flower_demo.images import list_images

# --- settings --------------------------------------------------------------------------------

FIXTURE_IMAGES = model_files.REPO_ROOT / "tests" / "fixtures" / "flowers"
APP_SCRIPT = model_files.REPO_ROOT / "app.py"
DEFAULT_DATA_DIR = model_files.REPO_ROOT.parent / "shared" / "data" / "oxford_flowers102"

CLI_RUNS = 5  # timed runs of each command line (after one untimed run for the file cache)
EVAL_IMAGES = 256  # images per throughput round (fixtures repeated)
EVAL_ROUNDS = 3  # timed rounds per throughput figure; the median is reported
APP_REQUESTS = 100  # /predict requests after the first answer, before the memory is read
APP_TIMEOUT_S = 180.0  # give up on the app's first answer after this long
APP_POLL_S = 0.1  # how often to probe the starting app's port
TRAIN_IMAGES = 204  # training subset: 102 classes x 2 images, as a --max-per-class 2 run
TRAIN_VIEWS = 2  # cached views per training image (view 0 plain, the rest augmented)
TRAIN_EPOCHS = 3  # the first epoch traces the step functions; the later ones are timed
TOP_K = 5  # classes predict() returns, as in the app
QUIET_LOAD = 0.5  # 1-minute load average above which the figures are flagged as noisy
MIB = 1024 * 1024  # memory is reported in MiB (2**20 bytes), as ps and /proc do

# Targets: name -> (dotted key in the results, comparison, threshold, unit).
TARGETS: dict[str, tuple[str, str, Any, str]] = {
    "predict() / bare forward": ("predict.vs_bare", "<=", 1.5, "x"),
    "CLI wall time": ("cli.plain.wall_s", "<", 1.5, "s"),
    "CLI peak RSS": ("cli.plain.peak_rss_mib", "<", 300, "MiB"),
    "CLI --explain wall time": ("cli.explain.wall_s", "<", 2.0, "s"),
    "CLI imports TensorFlow": ("cli.tensorflow_imported", "==", False, ""),
    "app first /predict answer": ("app.first_answer_s", "<", 6.0, "s"),
    "app RSS after requests": ("app.rss_mib", "<", 500, "MiB"),
    "eval throughput": ("eval.images_per_s", ">=", 150, "images/s"),
    "LiteRT/Keras top-1 agreement": ("agreement.top1_agreement", ">=", 0.999, ""),
    "CAM vs Grad-CAM, min Pearson r": ("cam.min_pearson", ">=", 0.99, ""),
}

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


# --- the serving core in this process --------------------------------------------------------


def bench_latency(classifier: core.Classifier, photos: list[Path], repeats: int) -> dict[str, Any]:
    """The bare LiteRT forward pass, predict() and predict(explain=True), batch 1, taking turns."""
    x = core.process_image(photos[0], classifier.image_size)[None]
    k = min(TOP_K, classifier.num_classes)
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


def app_tree(pid: int) -> tuple[int, bool]:
    """Resident bytes of process `pid` and its descendants, and whether any has TensorFlow's own
    library mapped (LiteRT's runtime lives under ai_edge_litert/, so it does not count)."""
    import psutil

    root = psutil.Process(pid)
    total, tensorflow = 0, False
    for proc in [root, *root.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
            tensorflow |= any("/tensorflow/" in m.path for m in proc.memory_maps())
        except psutil.Error:
            pass
    return total, tensorflow


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


def bench_app(folder: Path, photo: Path, requests: int) -> dict[str, Any]:
    """Seconds from `python app.py` to its first /predict answer; then `requests` more answers and
    the resident memory of its process tree."""
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
        "FLOWER_DEMO_MODEL": str(folder),
    }
    log(f"app: starting {APP_SCRIPT.name} on {url}, then {requests} /predict requests")
    with tempfile.TemporaryFile("w+") as app_log:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, str(APP_SCRIPT)],
            cwd=model_files.REPO_ROOT,
            env=env,
            stdout=app_log,
            stderr=subprocess.STDOUT,
        )
        try:
            client, listening_s = None, None
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
            first_answer = time.perf_counter() - start
            first_rss, _ = app_tree(proc.pid)
            call = lambda: client.predict(handle_file(str(photo)), api_name="/predict")  # noqa: E731
            times = export.time_interleaved({"app": call}, requests, warmup=0)["app"]
            rss, tensorflow = app_tree(proc.pid)
        except Exception as exc:
            app_log.seek(0)
            tail = "\n".join(app_log.read().splitlines()[-15:])
            log(f"app failed: {exc}\n--- app output (last lines) ---\n{tail}")
            return {"error": first_line(exc)}
        finally:
            stop_tree(proc)
        app_log.seek(0)
        serving = [ln for ln in app_log.read().splitlines() if ln.startswith("flower_demo: serving")]
    return {
        "first_answer_s": round(first_answer, 2),
        "listening_s": round(listening_s or first_answer, 2),
        "first_answer_rss_mib": round(first_rss / MIB, 1),
        "requests": requests,
        "request_p50_ms": ms(times)["p50_ms"],
        "rss_mib": round(rss / MIB, 1),
        "tensorflow_loaded": tensorflow,
        "serving": serving[0] if serving else "",
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


def bench_training(metadata: dict[str, Any], photos: list[Path], n_images: int) -> dict[str, Any]:
    """Seconds per epoch of both training stages on `n_images` photos, along train.py's functions:
    create_model (random weights: timing does not depend on them), split_model at the registry's
    cut, activation_steps and cache_activations (view 0 plain, the others augmented),
    pooled_features for stage 1, RandomViews batches and compile_stage; mixed precision on a GPU.
    Not included: validation and checkpoint writing."""
    import keras

    from flower_demo import models, train

    backbone = str(metadata["backbone"])
    if backbone not in models.BACKBONES:
        return {"skipped": f"backbone {backbone} is not in the registry; training is timed for those"}
    defaults = train.parse_args(["--data-dir", "unused"])  # train.py's default settings
    size, num_classes = int(metadata["image_size"]), len(metadata["class_names"])
    keras.utils.set_random_seed(defaults.seed)
    gpu = models.gpu_available()
    if gpu:  # as train.run does
        keras.mixed_precision.set_global_policy("mixed_float16")
    model = models.create_model(backbone, num_classes, size, None, defaults.dropout)
    cut = models.BACKBONES[backbone].fine_tune_from
    bottom, top = train.split_model(model, backbone, cut)

    log(f"training: decoding {n_images} images at {size}px, caching {TRAIN_VIEWS} views of activations")
    decoded = np.concatenate(list(data.iter_decoded(photos, size, evaluate.EVAL_BATCH)))
    images = decoded[np.arange(n_images) % len(decoded)]
    labels = np.arange(n_images) % num_classes
    steps = train.activation_steps(bottom, data.make_augmenter(defaults.seed))
    for step in steps:  # trace both
        step(images[: train.CACHE_BATCH].astype("float32"))
    start = time.perf_counter()
    acts, _ = train.cache_activations(bottom, steps, images, TRAIN_VIEWS, progress=False)
    cache_s = time.perf_counter() - start
    pooled = np.stack([train.pooled_features(top, view) for view in acts])

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
    train.unfreeze(top)
    stage2_s = epoch_seconds(train.head_model(acts.shape[2:], model, top), acts, defaults.stage2_lr)
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


# --- report ----------------------------------------------------------------------------------


def lookup(results: dict[str, Any], dotted: str) -> Any:
    value: Any = results
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def target_text(op: str, threshold: Any, unit: str) -> str:
    if isinstance(threshold, bool):
        return f"{op} {'yes' if threshold else 'no'}"
    return f"{op} {threshold:g} {unit}".strip()


def check_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with its measured value and pass (True / False; None where not measured)."""
    compare = {
        "<": lambda a, b: a < b,
        "<=": lambda a, b: a <= b,
        ">=": lambda a, b: a >= b,
        "==": lambda a, b: a == b,
    }
    return [
        {
            "name": name,
            "key": key,
            "value": (value := lookup(results, key)),
            "target": target_text(op, threshold, unit),
            "pass": None if value is None else bool(compare[op](value, threshold)),
        }
        for name, (key, op, threshold, unit) in TARGETS.items()
    ]


def table_rows(r: dict[str, Any]) -> list[tuple[str, str, str | None]]:
    """(measurement, value, target key or None) for every figure measured."""
    rows: list[tuple[str, str, str | None]] = []

    def skipped(section: str, what: str) -> bool:
        part = r.get(section, {})
        if "skipped" in part or "error" in part:
            rows.append(
                (what, f"{'skipped' if 'skipped' in part else 'error'}: {next(iter(part.values()))}", None)
            )
            return True
        return False

    b, p, e = r["bare_forward"], r["predict"], r["explain"]
    rows += [
        ("bare forward, LiteRT, batch 1 (p50 / p95)", f"{b['p50_ms']:.2f} / {b['p95_ms']:.2f} ms", None),
        ("predict() from a JPEG (p50 / p95)", f"{p['p50_ms']:.2f} / {p['p95_ms']:.2f} ms", None),
        ("  predict() / bare forward", f"{p['vs_bare']:.2f}x", "predict.vs_bare"),
        ("predict(explain=True) (p50 / p95)", f"{e['p50_ms']:.2f} / {e['p95_ms']:.2f} ms", None),
        ("  predict(explain=True) / bare forward", f"{e['vs_bare']:.2f}x", None),
    ]
    if not skipped("keras_forward", "bare forward, Keras"):
        k = r["keras_forward"]
        rows.append(
            ("bare forward, Keras, batch 1 (p50 / p95)", f"{k['p50_ms']:.2f} / {k['p95_ms']:.2f} ms", None)
        )
        rows.append(("  Keras / LiteRT (same run)", f"{k['vs_litert']:.2f}x", None))
    if not skipped("cli", "predict command line"):
        c = r["cli"]
        for name, what in (
            ("plain", "python -m flower_demo.predict photo.jpg"),
            ("explain", "  with --explain"),
        ):
            f = c[name]
            spread = f"(min {f['wall_min_s']:.2f}, max {f['wall_max_s']:.2f})"
            rows.append(
                (
                    f"{what}: wall, median of {c['runs']}",
                    f"{f['wall_s']:.2f} s {spread}",
                    f"cli.{name}.wall_s",
                )
            )
            rows.append(
                (
                    f"{'  ' if name == 'explain' else ''}  peak RSS",
                    f"{f['peak_rss_mib']:.0f} MiB",
                    f"cli.{name}.peak_rss_mib",
                )
            )
        rows.append(
            ("  TensorFlow imported", "yes" if c["tensorflow_imported"] else "no", "cli.tensorflow_imported")
        )
    if not skipped("app", "app"):
        a = r["app"]
        rows += [
            (
                "app: start to first /predict answer",
                f"{a['first_answer_s']:.2f} s (port open {a['listening_s']:.2f} s)",
                "app.first_answer_s",
            ),
            ("  RSS at the first answer", f"{a['first_answer_rss_mib']:.0f} MiB", None),
            (f"  /predict round trip (p50 of {a['requests']})", f"{a['request_p50_ms']:.1f} ms", None),
            (
                f"  RSS after {a['requests']} requests (process tree)",
                f"{a['rss_mib']:.0f} MiB",
                "app.rss_mib",
            ),
            ("  TensorFlow loaded in the app", "yes" if a["tensorflow_loaded"] else "no", None),
        ]
    v = r["eval"]
    rows += [
        (
            f"eval throughput, {v['images']} JPEGs, decoding included",
            f"{v['images_per_s']:.0f} images/s",
            "eval.images_per_s",
        ),
        (
            f"  decoding alone ({v['decode_threads']} threads)",
            f"{v['decode_only_images_per_s']:.0f} images/s",
            None,
        ),
        (
            f"  engine alone, pre-decoded ({v['engine_threads']} threads)",
            f"{v['engine_only_images_per_s']:.0f} images/s",
            None,
        ),
    ]
    if not skipped("agreement", "LiteRT/Keras agreement"):
        g = r["agreement"]
        rows.append(
            (
                f"LiteRT/Keras same top-1, {g['n']} validation photos",
                f"{g['top1_agreement']:.2%}",
                "agreement.top1_agreement",
            )
        )
        rows.append(
            ("  validation top-1, LiteRT / Keras", f"{g['tflite_top1']:.2%} / {g['keras_top1']:.2%}", None)
        )
    if not skipped("cam", "CAM vs Grad-CAM"):
        rows.append(
            (
                f"CAM vs Grad-CAM, Pearson r, min of {r['cam']['photos']} photos",
                f"{r['cam']['min_pearson']:.4f}",
                "cam.min_pearson",
            )
        )
    if not skipped("training", "training"):
        t = r["training"]
        n_img = f"{t['images']} images, {t['image_size']} px"
        rows += [
            (
                "train: cache activations (bottom)",
                f"{t['cache_ms_per_image_view']:.1f} ms per image-view",
                None,
            ),
            (f"train: stage 1 epoch ({n_img})", f"{t['stage1_s_per_epoch']:.3f} s", None),
            (f"train: stage 2 epoch ({n_img}, from {t['cut']})", f"{t['stage2_s_per_epoch']:.3f} s", None),
        ]
    return rows


def format_table(results: dict[str, Any]) -> str:
    m, info, load = results["machine"], results["model"], results["load_average"]
    busy = "  (BUSY MACHINE: figures are noisy)" if load["busy"] else ""
    header_lines = [
        f"machine: {m['cpu_count']} CPUs ({m['cpu_model']}); Python {m['python']}, ai-edge-litert "
        f"{m['ai-edge-litert']}, TensorFlow {m['tensorflow']}, Keras {m['keras']}",
        f"load average (1, 5, 15 min) before / after: {load['before']} / {load['after']}{busy}",
        f"model: {info['path']} ({info['backbone']}, {info['image_size']} px, {info['classes']} classes; "
        f"model.tflite {info['tflite_mb']} MB, model.keras {info['keras_mb']} MB)",
        "",
    ]
    checks = {c["key"]: c for c in results["targets"]}
    rows = [("measurement", "value", "target", "status")]
    for name, value, key in table_rows(results):
        check = checks.get(key or "")
        status = "" if check is None else {True: "pass", False: "MISS", None: "-"}[check["pass"]]
        rows.append((name, value, check["target"] if check else "", status))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(header_lines + lines)


# --- the command line ------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--model", default=str(model_files.SHIPPED_MODEL_DIR), help="model folder (model.tflite, model.keras)"
    )
    p.add_argument(
        "--data-dir",
        default=None,
        help=f"Flowers-102 folder for the LiteRT/Keras agreement (default: {DEFAULT_DATA_DIR} if present)",
    )
    p.add_argument("--images", default=str(FIXTURE_IMAGES), help="folder of JPEG photos to use")
    p.add_argument("--repeats", type=int, default=export.REPEATS, help="timed calls per latency figure")
    p.add_argument("--cli-runs", type=int, default=CLI_RUNS, help="timed runs of each command line")
    p.add_argument("--eval-images", type=int, default=EVAL_IMAGES, help="images per throughput round")
    p.add_argument("--app-requests", type=int, default=APP_REQUESTS, help="/predict requests to the app")
    p.add_argument("--train-images", type=int, default=TRAIN_IMAGES, help="size of the training subset")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--skip-cli", action="store_true", help="do not run the predict command line")
    p.add_argument("--skip-app", action="store_true", help="do not start the app")
    p.add_argument("--skip-keras", action="store_true", help="no Keras figures (no TensorFlow import)")
    p.add_argument("--skip-train", action="store_true", help="do not measure training")
    args = p.parse_args(argv)
    counts = ("repeats", "cli_runs", "eval_images", "app_requests", "train_images")
    if any(getattr(args, name) < 1 for name in counts):
        p.error("--repeats, --cli-runs, --eval-images, --app-requests and --train-images must be at least 1")
    return args


def check_inputs(args: argparse.Namespace) -> tuple[Path, list[Path], Path | None]:
    """The model folder, the photos and the Flowers-102 folder (or None), checked before anything
    is measured."""
    folder = model_files.model_dir(args.model).resolve()
    if not folder.is_dir():
        raise FlowerDemoError(f"model folder not found: {folder}")
    model_files.read_metadata(folder)
    if not (folder / model_files.TFLITE_FILE).is_file():
        raise FlowerDemoError(
            f"no {model_files.TFLITE_FILE} in {folder}: "
            f"write it with python -m flower_demo.export --model {folder}"
        )
    if not Path(args.images).is_dir():
        raise FlowerDemoError(f"photo folder not found: {args.images}")
    photos = [p for p in list_images(args.images) if p.suffix.lower() in (".jpg", ".jpeg")]
    if not photos:
        raise FlowerDemoError(f"no JPEG photos in {args.images}")
    data_dir = Path(args.data_dir) if args.data_dir else DEFAULT_DATA_DIR
    if args.data_dir is None and not data_dir.is_dir():
        data_dir = None  # the default is optional; a folder given on purpose is not
    elif not args.skip_keras:
        data.load_oxford_folder(data_dir, "validation")  # raises a one-line error now, not later
    return folder, photos, data_dir


def run(args: argparse.Namespace) -> dict[str, Any]:
    folder, photos, data_dir = check_inputs(args)
    before = load_average()
    log(f"load average before: {before}")
    classifier = core.Classifier(folder, engine="litert")
    has_keras = (folder / model_files.MODEL_FILE).is_file()
    results: dict[str, Any] = {
        "machine": machine_info(),
        "model": {
            "path": str(folder),
            "backbone": classifier.metadata["backbone"],
            "image_size": classifier.image_size,
            "classes": classifier.num_classes,
            "tflite_mb": round((folder / model_files.TFLITE_FILE).stat().st_size / 1e6, 2),
            "keras_mb": round((folder / model_files.MODEL_FILE).stat().st_size / 1e6, 2)
            if has_keras
            else None,
        },
        "settings": {
            "repeats": args.repeats,
            "warmup": export.WARMUP,
            "photos": len(photos),
            "cli_runs": args.cli_runs,
            "eval_images": args.eval_images,
            "app_requests": args.app_requests,
            "train_images": args.train_images,
        },
    }
    # The parts that need no Keras first: no TensorFlow work runs beside them.
    results |= bench_latency(classifier, photos, args.repeats)
    results["eval"] = bench_eval(classifier, photos, args.eval_images)
    results["cli"] = (
        {"skipped": "--skip-cli"} if args.skip_cli else bench_cli(folder, photos[0], args.cli_runs)
    )
    results["app"] = (
        {"skipped": "--skip-app"} if args.skip_app else bench_app(folder, photos[0], args.app_requests)
    )
    if args.skip_keras or not has_keras:
        why = "--skip-keras" if args.skip_keras else f"no {model_files.MODEL_FILE} in {folder}"
        results |= {name: {"skipped": why} for name in ("keras_forward", "agreement", "cam")}
    else:
        results |= bench_keras(classifier, folder, photos, args.repeats, data_dir)
    results["training"] = (
        {"skipped": "--skip-train"}
        if args.skip_train
        else bench_training(classifier.metadata, photos, args.train_images)
    )
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
