"""Training on Keras' JAX backend, run as users run it (`KERAS_BACKEND=jax python -m
flower_demo.train`, on CPU): a tiny run trains, converts its model.keras to model.tflite on Keras'
TensorFlow backend in a process of its own, and LiteRT serves it with the validation figure the run
measured under JAX; the same run on two CPU devices at once (keras.distribution.DataParallel,
XLA_FLAGS=--xla_force_host_platform_device_count=2) follows the one-device losses; `--devices` and
`--fine-tune auto` are checked without a run. Skipped where JAX is not installed
(requirements-jax.txt)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers import TINY_SIZE, run_module

from flower_demo import data, train
from flower_demo.core import Classifier
from flower_demo.evaluate import evaluate_model

HAS_JAX = importlib.util.find_spec("jax") is not None
NO_JAX = "JAX is not installed (pip install -r requirements-jax.txt)"
needs_jax = pytest.mark.skipif(not HAS_JAX, reason=NO_JAX)
# Two CPU devices; XLA's backend optimisation off: compiling is most of a tiny run's time, and
# both runs (and the LiteRT check) compute the same sums either way.
XLA_FLAGS = "--xla_force_host_platform_device_count=2 --xla_backend_optimization_level=0"
LOSS_TOLERANCE = 1e-3  # relative: two devices sum the same gradients in another order


def jax_train(tree: Path, weights: Path, run_dir: Path, *extra: object):
    """`python -m flower_demo.train` on Keras' JAX backend, two CPU devices visible."""
    args = [
        "--image-folder", tree, "--weights", weights, "--image-size", TINY_SIZE, "--views", 1,
        "--batch-size", 4, "--stage1-epochs", 2, "--stage2-epochs", 1, "--fixed-epochs",
        "--fine-tune-from", "block_16_project_BN", "--no-report", "--run-dir", run_dir, *extra,
    ]  # fmt: skip
    return run_module("flower_demo.train", *args, env={"KERAS_BACKEND": "jax", "XLA_FLAGS": XLA_FLAGS})


@pytest.fixture(scope="module")
def jax_runs(tmp_path_factory, tiny_class_tree: Path, mobilenet_weights: Path) -> dict[int, tuple[Path, str]]:
    """The tiny run on one device (exported for serving) and on two (not exported)."""
    if not HAS_JAX:
        pytest.skip(NO_JAX)
    root = tmp_path_factory.mktemp("jax")
    runs = {}
    with ThreadPoolExecutor(2) as pool:  # both at once: much of each is XLA compiling, one core each
        started = {
            devices: pool.submit(
                jax_train, tiny_class_tree, mobilenet_weights, root / f"on{devices}", "--devices", devices,
                *(["--no-export"] if devices == 2 else []),
            )
            for devices in (1, 2)
        }  # fmt: skip
    for devices, future in started.items():
        result = future.result()
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        assert "Traceback" not in result.stderr
        runs[devices] = (root / f"on{devices}", result.stdout)
    return runs


@pytest.mark.slow
def test_a_run_on_jax_is_served_by_litert_as_it_measured(jax_runs, tiny_class_tree: Path) -> None:
    run_dir, output = jax_runs[1]
    assert "backend: jax" in output and "device: CPU" in output
    assert "converting to model.tflite on Keras' TensorFlow backend" in output
    assert f"wrote {run_dir / 'model.tflite'}" in output
    classifier = Classifier(run_dir)  # LiteRT, as the app serves it
    assert classifier.engine.name == "litert"
    _, val = data.load_image_folder(tiny_class_tree, 0.2, seed=0)
    served = evaluate_model(classifier.probabilities, val.items, val.labels, TINY_SIZE)
    measured = json.loads((run_dir / "metadata.json").read_text())["metrics"]  # Keras on JAX
    assert served["top1"] == pytest.approx(measured["validation_top1"])
    assert served["top5"] == pytest.approx(measured["validation_top5"])


@pytest.mark.slow
def test_two_devices_follow_the_one_device_losses(jax_runs) -> None:
    (one, _), (two, output) = jax_runs[1], jax_runs[2]
    assert "device: 2 x CPU (data parallel)" in output
    losses = [json.loads((run / "history.json").read_text()) for run in (one, two)]
    assert list(losses[0]) == list(losses[1]) == ["stage1", "stage2"]
    for stage in losses[0]:
        assert losses[1][stage]["loss"] == pytest.approx(losses[0][stage]["loss"], rel=LOSS_TOLERANCE)
    assert json.loads((two / "settings.json").read_text())["devices"] == 2


def test_devices_need_jax_and_a_count_that_exists(tmp_path, tiny_class_tree, mobilenet_weights, capsys):
    """Under TensorFlow (this process) more than one device is refused before any work."""
    args = ["--image-folder", str(tiny_class_tree), "--weights", str(mobilenet_weights)]
    assert train.main([*args, "--devices", "2", "--run-dir", str(tmp_path / "run")]) == 1
    assert "--devices 2 needs Keras' JAX backend" in capsys.readouterr().err
    assert train.main([*args, "--devices", "-1", "--run-dir", str(tmp_path / "run")]) == 1
    assert "--devices must be 0" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_fine_tune_auto_is_whole_on_a_gpu_and_cached_on_a_cpu() -> None:
    from flower_demo.train import pipeline

    auto = train.parse_args(["--image-folder", "photos"])
    assert auto.fine_tune == "auto"
    assert pipeline.resolve(auto, gpu=True).fine_tune == "whole"
    assert pipeline.resolve(auto, gpu=False).fine_tune == "cached"
    chosen = dataclasses.replace(auto, fine_tune="cached")
    assert pipeline.resolve(chosen, gpu=True) == chosen  # what is asked for stays
    students = dataclasses.replace(auto, teachers=["runs/teacher"])
    assert pipeline.resolve(students, gpu=True).fine_tune == "cached"  # soft targets are per cached view
    assert train.parse_args(["--image-folder", "photos", "--recipe", "whole"]).fine_tune == "whole"


@needs_jax
@pytest.mark.slow
def test_what_needs_tensorflow_says_so_on_jax(tiny_model_dir: Path, tiny_class_tree: Path, tmp_path) -> None:
    """TFLite conversion and TF-Hub backbones: one line each, under KERAS_BACKEND=jax."""
    on_jax = {"KERAS_BACKEND": "jax"}
    result = run_module("flower_demo.export", "--model", tiny_model_dir, "--force", env=on_jax)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: TFLite conversion needs Keras' TensorFlow backend")
    hub = ["--image-folder", tiny_class_tree, "--backbone", "hub:/nowhere", "--run-dir", tmp_path / "run"]
    result = run_module("flower_demo.train", *hub, env=on_jax)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: TF-Hub backbones need Keras' TensorFlow backend (KERAS_BACKEND=tensorflow); this is jax"
    )
    assert not (tmp_path / "run").exists()
