"""The benchmark, run as users run it (`python -m benchmarks.bench`), on the tiny 32 px model of
conftest.py exported to TFLite here, with tiny counts. Timings are not asserted (they depend on the
machine); what the figures say about the code is: the predict command line answers without
TensorFlow in a small process, LiteRT and Keras agree, and the forward pass's class activation
map is the gradient Grad-CAM.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import TINY_CLASSES, TINY_SIZE, fixture_photos, flowers102_folder, run_module

from benchmarks import tables
from flower_demo import models

TIMEOUT_S = 900  # a whole (tiny) run on a busy 2-core machine


def run_bench(*args: str | Path) -> subprocess.CompletedProcess:
    return run_module("benchmarks.bench", *args, timeout=TIMEOUT_S)


@pytest.fixture(scope="module")
def litert_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny model folder (its model.tflite beside model.keras)."""
    folder = tmp_path_factory.mktemp("bench") / "tiny"
    shutil.copytree(tiny_model_dir, folder)
    assert (folder / "model.tflite").is_file()
    return folder


@pytest.fixture
def oxford_dir(tmp_path: Path) -> Path:
    """A Flowers-102 folder whose validation split is the fixture photos (labels from their names)."""
    return flowers102_folder(tmp_path / "flowers102")


def test_bench_json(litert_dir: Path, oxford_dir: Path) -> None:
    counts = ["--repeats", 3, "--cli-runs", 1, "--eval-images", 8, "--train-images", 8]
    result = run_bench("--model", litert_dir, "--data-dir", oxford_dir, "--json", "--skip-app", *counts)
    assert result.returncode == 0, result.stderr
    r = json.loads(result.stdout)

    assert r["model"]["image_size"] == TINY_SIZE and r["model"]["classes"] == len(TINY_CLASSES)
    for section in ("bare_forward", "predict", "explain", "keras_forward"):
        assert 0 < r[section]["p50_ms"] <= r[section]["p95_ms"], section
    assert r["predict"]["vs_bare"] > 0 and r["explain"]["vs_bare"] > 0
    assert "LiteRT" in r["bare_forward"]["engine"] and "Keras" in r["keras_forward"]["engine"]

    cli = r["cli"]
    assert cli["tensorflow_imported"] is False and cli["imported"] == []
    # The command's own memory, not the bench's (which holds TensorFlow, several hundred MB).
    assert 10 < cli["plain"]["peak_rss_mib"] < 300 and 10 < cli["explain"]["peak_rss_mib"] < 300
    assert 0 < cli["plain"]["wall_min_s"] <= cli["plain"]["wall_s"] <= cli["plain"]["wall_max_s"]

    assert r["eval"]["images"] == 8 and r["eval"]["images_per_s"] > 0
    assert r["agreement"]["n"] == len(fixture_photos())
    assert r["agreement"]["top1_agreement"] == 1.0  # the same float32 network on both engines
    assert r["agreement"]["max_abs_probability_difference"] < 1e-3
    assert r["cam"]["photos"] == len(fixture_photos()) and r["cam"]["min_pearson"] >= 0.99

    training = r["training"]
    assert training["cut"] == models.BACKBONES["mobilenet_v2"].fine_tune_from
    assert training["stage1_s_per_epoch"] > 0 and training["stage2_s_per_epoch"] > 0

    assert r["app"] == {"skipped": "--skip-app"}
    assert {"before", "after", "busy"} <= set(r["load_average"])
    checks = {t["name"]: t for t in r["targets"]}
    assert list(checks) == list(tables.TARGETS)
    assert checks["CLI imports TensorFlow"]["pass"] is True
    assert checks["LiteRT/Keras top-1 agreement"]["pass"] is True
    assert checks["app first /predict answer"]["pass"] is None  # not measured: neither pass nor miss


def test_bench_table_without_keras(litert_dir: Path) -> None:
    result = run_bench(
        "--model", litert_dir, "--skip-keras", "--skip-train", "--skip-app", "--skip-cli", "--repeats", 2,
        "--eval-images", 4,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    table = result.stdout
    assert "predict() / bare forward" in table and "<= 1.5 x" in table
    assert "LiteRT/Keras agreement" in table and "skipped: --skip-keras" in table
    assert "predict command line" in table and "skipped: --skip-cli" in table


@pytest.mark.parametrize(
    ("model", "extra", "message"),
    [
        ("missing", [], "error: model folder not found"),
        ("keras only", [], "error: no model.tflite in"),
        ("tflite", ["--data-dir", "."], "is not a Flowers-102 folder"),
        ("tflite", ["--repeats", "0"], "must be at least 1"),
    ],
)
def test_bench_refuses_bad_input(
    model: str, extra: list[str], message: str, tmp_path: Path, tiny_model_dir: Path, litert_dir: Path
) -> None:
    keras_only = tmp_path / "keras_only"
    keras_only.mkdir()
    for name in ("model.keras", "metadata.json"):
        shutil.copy(tiny_model_dir / name, keras_only / name)
    folder = {"missing": tmp_path / "nothing", "keras only": keras_only, "tflite": litert_dir}[model]
    result = run_bench("--model", folder, "--skip-app", *extra)
    assert result.returncode == 2
    assert message in result.stderr.strip().splitlines()[-1]
    assert result.stdout == ""
