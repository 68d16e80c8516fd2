"""Smoke test of `python -m flower_demo.bench`: it runs end to end with tiny repeat counts on a
tiny random model and reports every figure. No timing is asserted: figures depend on the machine.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flower_demo import bench, models

IMAGE_SIZE = 32  # the smallest input MobileNetV2 takes; keeps the run short
NUM_CLASSES = 4
SECTIONS = {
    "machine",
    "model",
    "settings",
    "bare_forward",
    "predict",
    "naive",
    "eval_throughput",
    "training",
    "app",
    "load_average",
    "targets",
}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny_model")
    model = models.create_model("mobilenet_v2", NUM_CLASSES, IMAGE_SIZE, weights=None)
    names = [f"class {i}" for i in range(NUM_CLASSES)]
    models.save_model(
        model, folder, {"class_names": names, "image_size": IMAGE_SIZE, "backbone": "mobilenet_v2"}
    )
    return folder


def test_bench_json(tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--model", str(tiny_model), "--json", "--skip-app", "--repeats", "2"]
    assert bench.main([*argv, "--eval-images", "8", "--train-images", "8"]) == 0
    results = json.loads(capsys.readouterr().out)

    assert SECTIONS <= set(results)
    assert {"cpu_count", "cpu_model", "gpu", "python", "tensorflow", "keras"} <= set(results["machine"])
    assert results["model"]["image_size"] == IMAGE_SIZE and results["model"]["file_mb"] > 0
    assert {"definition", "p50_ms", "p95_ms", "eager_p50_ms"} <= set(results["bare_forward"])
    assert {"p50_ms", "p95_ms", "vs_bare"} <= set(results["predict"])
    assert {"p50_ms", "model_predict_only_p50_ms", "vs_predict"} <= set(results["naive"])
    assert {"images_per_s", "bare_images_per_s", "vs_bare"} <= set(results["eval_throughput"])
    assert {"stage1_s_per_epoch", "stage2_s_per_epoch", "stage1_ms_per_image"} <= set(results["training"])
    assert results["app"] == {"skipped": "--skip-app"}
    assert [t["name"] for t in results["targets"]] == list(bench.TARGETS)
    app_checks = [t for t in results["targets"] if t["key"].startswith("app.")]
    assert all(t["pass"] is None for t in app_checks)  # not measured, so neither pass nor miss


def test_table_and_missing_app(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(bench, "APP_SCRIPT", tiny_model / "no_app.py")
    assert (
        bench.main(["--model", str(tiny_model), "--skip-train", "--repeats", "1", "--eval-images", "2"]) == 0
    )
    table = capsys.readouterr().out
    assert "bare forward" in table and "predict() / bare forward" in table
    assert "skipped: no_app.py not found" in table


def test_missing_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--model", str(tmp_path), "--skip-app", "--skip-train"]) == 2
    assert "model file not found" in capsys.readouterr().err
