"""Shared fixtures: the shipped model (skipped when weights/ is absent) and small models and data
that the tests build themselves, so the suite runs on a fresh clone with no network.

FLOWER_DEMO_TEST_MODEL=runs/NAME pytest  checks a run folder instead of weights/ where the tests
say "shipped model".
"""

from __future__ import annotations

import atexit
import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

import numpy as np
import pytest
from filelock import FileLock

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # plain `pytest` does not put the repo root on sys.path
    sys.path.insert(0, str(REPO_ROOT))
# Each pytest process (pytest-xdist runs one per core) and the apps it starts get an upload folder of
# their own: Gradio's default, /tmp/gradio, is shared by every app on the machine, and one app's
# clean-up (app.py's delete_cache) deletes the files another has just been sent.
os.environ["GRADIO_TEMP_DIR"] = tempfile.mkdtemp(prefix="flower_demo_tests_gradio_")
atexit.register(shutil.rmtree, os.environ["GRADIO_TEMP_DIR"], ignore_errors=True)

import readme_runs  # noqa: E402
from helpers import (  # noqa: E402
    TINY_CLASSES,
    TINY_COLOURS,
    TINY_SIZE,
    free_port,
    load_app,
    make_class_tree,
    save_tiny_model,
)

from flower_demo.errors import skip_last_collection  # noqa: E402

# --- libraries' temporary files ----------------------------------------------------------------


@pytest.fixture(scope="module")
def own_tempdir(tmp_path_factory) -> Iterator[Path]:
    """The system's temp folder, for a module's tests, one of this test run's: gradio_client leaves
    an empty folder there for each file it downloads, tensorflow_datasets one for each data set it
    looks up without a network, and a test run leaves nothing behind in /tmp."""
    folder = tmp_path_factory.mktemp("tempdir")  # made first: the run's own base stays where it is
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tempfile, "tempdir", str(folder))
        yield folder


# --- the shipped model -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def shipped_model_dir() -> Path:
    override = os.environ.get("FLOWER_DEMO_TEST_MODEL")
    folder = Path(override) if override else REPO_ROOT / "weights"
    if not (folder / "model.tflite").is_file() or not (folder / "model.keras").is_file():
        pytest.skip(f"no trained model in {folder} (weights/ ships model.tflite and model.keras)")
    return folder.resolve()


@pytest.fixture(scope="session")
def shipped_metadata(shipped_model_dir: Path) -> dict:
    return json.loads((shipped_model_dir / "metadata.json").read_text())


@pytest.fixture(scope="session")
def shipped_classifier(shipped_model_dir: Path):
    """flower_demo.Classifier on the shipped model (LiteRT), loaded once per session."""
    from flower_demo import core

    if os.environ.get("FLOWER_DEMO_TEST_MODEL"):
        return core.Classifier(shipped_model_dir)
    # The classifier predict() loads when given no model, so that is loaded once, not twice.
    return core.get_classifier(None)


@pytest.fixture(scope="session")
def shipped_keras_classifier(shipped_model_dir: Path):
    """The shipped model run by Keras (TensorFlow), for comparisons with LiteRT."""
    from flower_demo import core

    return core.Classifier(shipped_model_dir, engine="keras")


# --- the app, imported and served once ------------------------------------------------------


@pytest.fixture(scope="session")
def app_module() -> ModuleType:
    """app.py imported once (importing it loads the model), shared by test_app and test_browser."""
    return load_app()


@pytest.fixture(scope="session")
def app_url(app_module: ModuleType) -> Iterator[str]:
    """app.py's page served once on a free port, for every test that talks to it over HTTP."""
    _, url, _ = app_module.launch(prevent_thread_lock=True, server_port=free_port(), quiet=True)
    try:
        yield url
    finally:
        app_module.demo.close()


# --- small models built here, once per test run ----------------------------------------------


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """The folder `name`, filled by build(folder) once per test run rather than once per
    pytest-xdist worker: the workers' temp folders share a parent, and the first worker to ask
    builds it there under a lock while the others wait, then all of them read it."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    folder, done = root / name, root / f"{name}.done"
    with FileLock(f"{folder}.lock"):
        if not done.is_file():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def mobilenet_weights(tmp_path_factory) -> Path:
    """A MobileNetV2 (32 px, no top) weights file with random kernels and calibrated BatchNorm.

    With weights=None every BatchNorm keeps mean 0 / variance 1 and MobileNetV2's features
    vanish (~1e-13), so nothing downstream can learn. Setting each BatchNorm's moving statistics
    to the batch statistics of random images gives features of order 1, and non-trivial moving
    statistics that a test can check are left alone by fine-tuning.
    """
    name = "mobilenet_v2_32.weights.h5"

    def build(folder: Path) -> None:
        import keras

        keras.utils.set_random_seed(1234)
        backbone = keras.applications.MobileNetV2(
            include_top=False, weights=None, input_shape=(TINY_SIZE, TINY_SIZE, 3), pooling="avg"
        )
        norms = [layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)]
        for layer in norms:
            layer.momentum = 0.0  # one training-mode call sets moving stats to the batch stats
        pixels = np.random.default_rng(0).uniform(0, 255, (32, TINY_SIZE, TINY_SIZE, 3)).astype("float32")
        backbone(keras.applications.mobilenet_v2.preprocess_input(pixels), training=True)
        for layer in norms:
            layer.momentum = 0.999
        backbone.save_weights(folder / name)

    return built_once(tmp_path_factory, "weights", build) / name


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, mobilenet_weights: Path) -> Path:
    """A saved 3-class, 32 px MobileNetV2 classifier: model.keras, metadata.json and the
    model.tflite that the serving core runs by default."""
    from flower_demo import export

    def build(folder: Path) -> None:
        save_tiny_model(folder, mobilenet_weights, TINY_SIZE, TINY_CLASSES, seed=7)
        export.export_tflite(folder)

    return built_once(tmp_path_factory, "tiny_model", build)


@pytest.fixture(scope="session")
def tiny_class_tree(tmp_path_factory) -> Path:
    """root/<class>/NN.png: the tiny model's three classes, 10 photos each (2 each in its seeded
    validation part, what `evaluate --image-folder` measures)."""
    build = lambda root: make_class_tree(root, TINY_COLOURS, per_class=10, size=TINY_SIZE + 8)
    return built_once(tmp_path_factory, "tiny_class_tree", build)


FINE_TUNE_FROM = "block_15_add"  # trained_run's cut: stage 2 tunes MobileNetV2's block 16 and head


class TrainedRun(NamedTuple):
    run_dir: Path
    output: str  # what the run printed
    args: list[str]  # its command line
    started: float  # time.time() when it started


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, tiny_class_tree: Path, mobilenet_weights: Path) -> TrainedRun:
    """One tiny whole training run on tiny_class_tree, shared by every test that needs a trained run
    folder: both stages (2 + 2 epochs, 2 views, 32 px), saved at --serve-size 48, the validation
    report written; --no-export (test_train's quick recipe run checks the export). Stage 2 tunes
    from FINE_TUNE_FROM, late in the backbone: from the registry's own cut it took two thirds of
    the run's time (graph building), and what stage 2 may change is checked at any cut."""
    from flower_demo import train

    def args(run_dir: Path) -> list[str]:
        return [
            "--image-folder", str(tiny_class_tree), "--weights", str(mobilenet_weights),
            "--image-size", str(TINY_SIZE), "--serve-size", str(TINY_SIZE + 16), "--views", "2",
            "--batch-size", "8", "--stage1-epochs", "2", "--stage2-epochs", "2", "--no-export",
            "--fine-tune-from", FINE_TUNE_FROM,
            "--run-dir", str(run_dir),
        ]  # fmt: skip

    def build(folder: Path) -> None:  # what the run printed and when it started are kept beside it
        started, printed = time.time(), io.StringIO()
        with contextlib.redirect_stdout(printed):
            code = train.main(args(folder / "run"))
        assert code == 0, printed.getvalue()
        (folder / "run.json").write_text(json.dumps({"output": printed.getvalue(), "started": started}))

    folder = built_once(tmp_path_factory, "trained_run", build)
    record = json.loads((folder / "run.json").read_text())
    return TrainedRun(folder / "run", record["output"], args(folder / "run"), record["started"])


# --- README's commands, each group run once per test run ---------------------------------------


@pytest.fixture(scope="session")
def readme_scratch(tmp_path_factory, mobilenet_weights: Path) -> dict[str, Path]:
    """The folder README's commands run in (readme_runs.make_scratch), one shared by every worker,
    and what fills README's placeholders."""
    if not (REPO_ROOT / "weights" / "model.tflite").is_file():
        pytest.skip("README's commands use the shipped model in weights/")
    root = built_once(tmp_path_factory, "readme", readme_runs.make_scratch)
    return readme_runs.scratch_paths(root, mobilenet_weights)


@pytest.fixture(scope="session")
def readme_group(
    request, tmp_path_factory, readme_scratch: dict[str, Path]
) -> Iterator[Callable[[int], dict[str, str]]]:
    """readme_group(i) runs readme_runs.GROUPS[i] in readme_scratch once per test run (the first
    worker to ask runs it, the others wait) and returns what each command printed, by README line.

    The groups share nothing they write, so they run in the same folder at the same time: the first
    call also starts the groups of every README test this run selected (the longest first) in the
    background, and their commands share the cores (readme_runs.SLOTS). One group alone is mostly a
    chain of commands that wait on each other, which left a core idle."""
    selected = {item.callspec.params["index"] for item in request.session.items if is_readme_test(item)}
    started: dict[int, Future] = {}

    def build(index: int, folder: Path) -> None:
        printed = readme_runs.run_group(readme_runs.GROUPS[index], readme_scratch)
        (folder / "printed.json").write_text(json.dumps(printed))

    def run(index: int) -> dict[str, str]:
        for i in [index] if started else sorted(selected | {index}, key=readme_runs.group_cost, reverse=True):
            if i not in started:
                started[i] = pool.submit(built_once, tmp_path_factory, f"readme_group_{i}", partial(build, i))
        return json.loads((started[index].result() / "printed.json").read_text())

    with ThreadPoolExecutor(max_workers=len(readme_runs.GROUPS)) as pool:
        yield run


def is_readme_test(item: pytest.Item) -> bool:
    """A test of one group of README's commands (test_readme's parametrized test)."""
    return item.nodeid.startswith("tests/test_readme.py::test_readme_commands")


@pytest.fixture(scope="session")
def tiny_classifier(tiny_model_dir: Path):
    """The tiny model as users get it by default: LiteRT."""
    from flower_demo.core import Classifier

    return Classifier(tiny_model_dir)


@pytest.fixture(scope="session")
def tiny_keras_classifier(tiny_model_dir: Path):
    from flower_demo.core import Classifier

    return Classifier(tiny_model_dir, engine="keras")


def pytest_configure(config):
    skip_last_collection()  # each pytest process imports TensorFlow too: it ends as a command does
    config.addinivalue_line(
        "markers",
        "slow: starts a separate Python process (TensorFlow start-up) or a browser (test_browser), "
        "needs a whole training run (its own or conftest's trained_run), builds Keras models of its own "
        "(test_evaluate's and test_train's teachers: a few seconds each), or a model conversion beyond "
        "conftest's tiny model (a TFLite export, EfficientNet-Lite's ImageNet weights)",
    )


BUILT_ONCE = "mobilenet_weights"  # every fixture that built_once builds with TensorFlow needs these
APP = "app_module"  # app.py imported (its model loaded): once per worker that asks
JAX_RUNS = "jax_runs"  # test_jax's two training runs on JAX (most of a minute): first of the builders


@pytest.hookimpl(trylast=True)  # after `-m` has deselected: the halves are of the tests that run
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """test_readme's command groups first, those with the most training runs first (a minute or
    more each on 2 cores); then the test files that use the models built here with TensorFlow
    (BUILT_ONCE), and the rest. pytest-xdist's worksteal scheduler gives each of the two workers
    one half of this order, so the second half is made to begin with the files that serve the app
    (APP): one worker builds the shared models while the other loads the app once and runs the tests
    that need no TensorFlow, instead of waiting on the build's lock or loading the app twice. Files
    that need neither fill the first half up to its end (one of them may be cut in two: they share
    nothing costly); the run ends on short tests that an idle worker can take over, so the longest
    builder (JAX_RUNS) comes first."""
    readme = [item for item in items if is_readme_test(item)]
    readme.sort(key=lambda item: readme_runs.group_cost(item.callspec.params["index"]), reverse=True)
    files: dict[Path, list[pytest.Item]] = {}
    for item in items:
        if item not in readme:
            files.setdefault(item.path, []).append(item)

    def using(fixture: str) -> set[Path]:
        return {
            path for path, file_items in files.items() if any(fixture in i.fixturenames for i in file_items)
        }

    def items_of(paths: set[Path]) -> list[pytest.Item]:
        return [item for path, file_items in files.items() if path in paths for item in file_items]

    builders = using(BUILT_ONCE)
    longest = using(JAX_RUNS)
    files = {path: files[path] for path in sorted(files, key=lambda path: path not in longest)}
    app = using(APP) - builders
    half = len(items) // 2  # the first worker's share
    first = list(readme)
    builder_files = [file_items for path, file_items in files.items() if path in builders]
    while builder_files and len(first) + len(builder_files[0]) <= half:
        first += builder_files.pop(0)
    plain = items_of(set(files) - builders - app)
    fill = max(0, half - len(first))
    items[:] = first + plain[:fill] + items_of(app) + plain[fill:] + [i for f in builder_files for i in f]
