"""Smoke test of `python -m flower_demo.bench`: it runs end to end with tiny repeat counts on the
tiny 32 px model (conftest.py) and reports every figure. No timing is asserted: the figures
depend on the machine.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import TINY_SIZE

from flower_demo import bench, models

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


def test_bench_json(tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--model", str(tiny_model_dir), "--json", "--skip-app", "--repeats", "2"]
    assert bench.main([*argv, "--eval-images", "8", "--train-images", "8"]) == 0
    results = json.loads(capsys.readouterr().out)

    assert SECTIONS <= set(results)
    assert {"cpu_count", "cpu_model", "gpu", "python", "tensorflow", "keras"} <= set(results["machine"])
    assert results["model"]["image_size"] == TINY_SIZE and results["model"]["file_mb"] > 0
    assert {"definition", "p50_ms", "p95_ms", "eager_p50_ms"} <= set(results["bare_forward"])
    assert {"p50_ms", "p95_ms", "vs_bare"} <= set(results["predict"])
    assert {"p50_ms", "model_predict_only_p50_ms", "vs_predict"} <= set(results["naive"])
    assert {"images_per_s", "bare_images_per_s", "vs_bare"} <= set(results["eval_throughput"])
    assert {"stage1_s_per_epoch", "stage2_s_per_epoch", "stage1_ms_per_image"} <= set(results["training"])
    assert results["training"]["cut"] == models.BACKBONES["mobilenet_v2"].fine_tune_from
    assert results["app"] == {"skipped": "--skip-app"}
    assert {"before", "after", "busy"} <= set(results["load_average"])
    assert [t["name"] for t in results["targets"]] == list(bench.TARGETS)
    app_checks = [t for t in results["targets"] if t["key"].startswith("app.")]
    assert all(t["pass"] is None for t in app_checks)  # not measured, so neither pass nor miss


def test_table_and_missing_app(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(bench, "APP_SCRIPT", tiny_model_dir / "no_app.py")
    assert (
        bench.main(["--model", str(tiny_model_dir), "--skip-train", "--repeats", "1", "--eval-images", "2"])
        == 0
    )
    table = capsys.readouterr().out
    assert "bare forward" in table and "predict() / bare forward" in table
    assert "skipped: no_app.py not found" in table


def test_missing_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--model", str(tmp_path), "--skip-app", "--skip-train"]) == 2
    assert "model file not found" in capsys.readouterr().err


def test_bad_train_cut(tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--model", str(tiny_model_dir), "--skip-app", "--train-cut", "no_such_layer"]
    assert bench.main(argv) == 2  # refused before any figure is measured
    assert "has no layer 'no_such_layer'" in capsys.readouterr().err
