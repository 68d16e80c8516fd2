"""The benchmark, run as users run it (`python -m benchmarks.bench`), on the tiny 32 px model of
conftest.py exported to TFLite here, with the smallest counts its options take. Timings are not
asserted (they depend on the machine); what the figures say about the code is: the predict command
line answers without TensorFlow in a small process, LiteRT and Keras agree, and the forward pass's
class activation map is the gradient Grad-CAM. The targets and the table are also checked in this
process on hand-written results, so their logic is tested without measuring anything.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from helpers import TINY_CLASSES, TINY_SIZE, fixture_photos, flowers102_folder, run_module

from benchmarks import tables

TIMEOUT_S = 900  # a whole (tiny) run on a busy 2-core machine
# stage 2 from MobileNetV2's last block: from the registry's cut (block 2), tracing most of the
# network's gradients took most of the training figures' time
LATE_CUT = "block_16_project_BN"
FEWEST = ["--repeats", 1, "--cli-runs", 1, "--eval-images", 1, "--train-images", 1]  # every count at 1


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


@pytest.fixture
def two_photos(tmp_path: Path) -> Path:
    """A folder of two fixture photos: the fewest the CAM comparison can take a minimum over."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for photo in fixture_photos()[:2]:
        shutil.copy(photo, folder / photo.name)
    return folder


# --- the command, as users run it ------------------------------------------------------------


@pytest.mark.slow
def test_bench_json(litert_dir: Path, oxford_dir: Path, two_photos: Path) -> None:
    result = run_bench(
        "--model",
        litert_dir,
        "--data-dir",
        oxford_dir,
        "--images",
        two_photos,
        "--json",
        "--skip-app",
        "--fine-tune-from",
        LATE_CUT,
        *FEWEST,
    )
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

    assert r["eval"]["images"] == 1 and r["eval"]["images_per_s"] > 0
    assert r["agreement"]["n"] == len(fixture_photos())
    assert r["agreement"]["top1_agreement"] == 1.0  # the same float32 network on both engines
    assert r["agreement"]["max_abs_probability_difference"] < 1e-3
    assert r["cam"]["photos"] == 2 and r["cam"]["min_pearson"] >= 0.99

    training = r["training"]
    assert training["cut"] == LATE_CUT
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
        "--model", litert_dir, "--skip-keras", "--skip-train", "--skip-app", "--skip-cli", "--repeats", 1,
        "--eval-images", 1,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    table = result.stdout
    assert "predict() / bare forward" in table and "<= 1.5 x" in table
    assert "LiteRT/Keras agreement" in table and "skipped: --skip-keras" in table
    assert "predict command line" in table and "skipped: --skip-cli" in table
    assert "reference photos" in table and "skipped: the model folder holds no reference photos" in table


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


# --- targets and table, in this process ------------------------------------------------------

RESULTS: dict[str, Any] = {  # every section measured; figures chosen to sit on and near the targets
    "machine": {"cpu_count": 2, "cpu_model": "Test CPU", "python": "3.11.7", "ai-edge-litert": "2.3.0",
                "tensorflow": "2.21.0", "keras": "3.15.1"},
    "model": {"path": "/models/tiny", "backbone": "mobilenet_v2", "image_size": 32, "classes": 3,
              "tflite_mb": 8.91, "keras_mb": 9.64},
    "bare_forward": {"engine": "CPU (LiteRT, 2 threads)", "p50_ms": 1.0, "p95_ms": 1.5},
    "predict": {"p50_ms": 1.5, "p95_ms": 2.0, "vs_bare": 1.5},
    "explain": {"p50_ms": 3.0, "p95_ms": 4.0, "vs_bare": 3.0},
    "neighbours": {"bank": [2040, 1280], "neighbours": 3, "of_species": {"p50_us": 71.0, "p95_us": 105.2},
                   "of_any": {"p50_us": 190.4, "p95_us": 1000.0}, "worst_p95_ms": 1.0},
    "keras_forward": {"engine": "CPU (Keras)", "p50_ms": 20.0, "p95_ms": 25.0, "vs_litert": 20.0},
    "cli": {"runs": 3, "imported": [], "tensorflow_imported": False,
            "plain": {"wall_s": 0.4, "wall_min_s": 0.3, "wall_max_s": 0.5, "peak_rss_mib": 300.0},
            "explain": {"wall_s": 2.5, "wall_min_s": 2.25, "wall_max_s": 3.0, "peak_rss_mib": 80.4}},
    "app": {"first_answer_s": 5.0, "listening_s": 4.0, "first_answer_rss_mib": 290.0, "requests": 10,
            "request_p50_ms": 130.24, "rss_mib": 299.6, "tensorflow_loaded": False},
    "eval": {"images": 16, "decode_threads": 4, "engine_threads": 2, "images_per_s": 150.0,
             "decode_only_images_per_s": 600.4, "engine_only_images_per_s": 1500.0},
    "agreement": {"n": 8, "top1_agreement": 0.875, "tflite_top1": 0.5, "keras_top1": 0.625},
    "cam": {"photos": 2, "min_pearson": 0.99},
    "training": {"images": 4, "image_size": 32, "cut": "block_2_add", "cache_ms_per_image_view": 1.24,
                 "stage1_s_per_epoch": 0.0424, "stage2_s_per_epoch": 0.25},
    "load_average": {"before": [0.1, 0.2, 0.3], "after": [0.6, 0.3, 0.3], "busy": True},
}  # fmt: skip


def results(**sections: dict[str, Any]) -> dict[str, Any]:
    """RESULTS with some sections replaced, and its targets checked as bench.run does."""
    r = copy.deepcopy(RESULTS) | sections
    r["targets"] = tables.check_targets(r)
    return r


def test_targets_pass_on_their_thresholds_and_are_unmeasured_where_skipped() -> None:
    checks = {c["name"]: c for c in results(app={"skipped": "--skip-app"})["targets"]}
    assert list(checks) == list(tables.TARGETS)
    verdicts = {name: (c["value"], c["target"], c["pass"]) for name, c in checks.items()}
    assert verdicts == {
        "predict() / bare forward": (1.5, "<= 1.5 x", True),  # on a <= threshold
        "reference photos per answer, p95": (1.0, "<= 1 ms", True),
        "CLI wall time": (0.4, "< 1.5 s", True),
        "CLI peak RSS": (300.0, "< 300 MiB", False),  # on a < threshold
        "CLI --explain wall time": (2.5, "< 2 s", False),
        "CLI imports TensorFlow": (False, "== no", True),
        "app first /predict answer": (None, "< 6 s", None),  # skipped: neither pass nor miss
        "app RSS after requests": (None, "< 500 MiB", None),
        "eval throughput": (150.0, ">= 150 images/s", True),  # on a >= threshold
        "LiteRT/Keras top-1 agreement": (0.875, ">= 0.999", False),
        "CAM vs Grad-CAM, min Pearson r": (0.99, ">= 0.99", True),
    }


def test_table_rows_of_every_section_in_order() -> None:
    rows = tables.table_rows(results())
    assert rows == [
        ("bare forward, LiteRT, batch 1 (p50 / p95)", "1.00 / 1.50 ms", None),
        ("predict() from a JPEG (p50 / p95)", "1.50 / 2.00 ms", None),
        ("  predict() / bare forward", "1.50x", "predict.vs_bare"),
        ("predict(explain=True) (p50 / p95)", "3.00 / 4.00 ms", None),
        ("  predict(explain=True) / bare forward", "3.00x", None),
        ("reference photos of the top species (3 of 2040 photos, 1280-d), p50 / p95", "71 / 105 us", None),
        ("reference photos of any species, p50 / p95", "190 / 1000 us", None),
        ("  reference photos, worst p95", "1.000 ms", "neighbours.worst_p95_ms"),
        ("bare forward, Keras, batch 1 (p50 / p95)", "20.00 / 25.00 ms", None),
        ("  Keras / LiteRT (same run)", "20.00x", None),
        ("python -m flower_demo.predict photo.jpg: wall, median of 3", "0.40 s (min 0.30, max 0.50)",
         "cli.plain.wall_s"),
        ("  peak RSS", "300 MiB", "cli.plain.peak_rss_mib"),
        ("  with --explain: wall, median of 3", "2.50 s (min 2.25, max 3.00)", "cli.explain.wall_s"),
        ("    peak RSS", "80 MiB", "cli.explain.peak_rss_mib"),
        ("  TensorFlow imported", "no", "cli.tensorflow_imported"),
        ("app: start to first /predict answer", "5.00 s (port open 4.00 s)", "app.first_answer_s"),
        ("  RSS at the first answer", "290 MiB", None),
        ("  /predict round trip (p50 of 10)", "130.2 ms", None),
        ("  RSS after 10 requests (process tree)", "300 MiB", "app.rss_mib"),
        ("  TensorFlow loaded in the app", "no", None),
        ("eval throughput, 16 JPEGs, decoding included", "150 images/s", "eval.images_per_s"),
        ("  decoding alone (4 threads)", "600 images/s", None),
        ("  engine alone, pre-decoded (2 threads)", "1500 images/s", None),
        ("LiteRT/Keras same top-1, 8 validation photos", "87.50%", "agreement.top1_agreement"),
        ("  validation top-1, LiteRT / Keras", "50.00% / 62.50%", None),
        ("CAM vs Grad-CAM, Pearson r, min of 2 photos", "0.9900", "cam.min_pearson"),
        ("train: cache activations (bottom)", "1.2 ms per image-view", None),
        ("train: stage 1 epoch (4 images, 32 px)", "0.042 s", None),
        ("train: stage 2 epoch (4 images, 32 px, from block_2_add)", "0.250 s", None),
    ]  # fmt: skip
    keys = {key for _, _, key in rows if key}
    assert {key for key, *_ in tables.TARGETS.values()} <= keys  # every target has its row


def test_table_rows_of_skipped_and_failed_sections() -> None:
    r = results(
        keras_forward={"skipped": "--skip-keras"},
        cli={"skipped": "--skip-cli"},
        app={"error": "app exited with code 1"},
        training={"skipped": "backbone resnet is not in the registry"},
    )
    rows = [row for row in tables.table_rows(r) if row[1].startswith(("skipped: ", "error: "))]
    assert rows == [
        ("bare forward, Keras", "skipped: --skip-keras", None),
        ("predict command line", "skipped: --skip-cli", None),
        ("app", "error: app exited with code 1", None),
        ("training", "skipped: backbone resnet is not in the registry", None),
    ]
    assert len(tables.table_rows(r)) == 5 + 3 + 1 + 1 + 1 + 3 + 2 + 1 + 1  # measured sections keep theirs


def test_format_table_aligns_rows_with_targets_and_status() -> None:
    lines = tables.format_table(results()).splitlines()
    assert lines[0] == (
        "machine: 2 CPUs (Test CPU); Python 3.11.7, ai-edge-litert 2.3.0, TensorFlow 2.21.0, Keras 3.15.1"
    )
    assert lines[1].endswith("[0.1, 0.2, 0.3] / [0.6, 0.3, 0.3]  (BUSY MACHINE: figures are noisy)")
    assert lines[2] == (
        "model: /models/tiny (mobilenet_v2, 32 px, 3 classes; model.tflite 8.91 MB, model.keras 9.64 MB)"
    )
    header, rule, *rows = lines[4:]
    assert header.split() == ["measurement", "value", "target", "status"]
    assert set(rule) == {"-", " "} and len(rows) == len(tables.table_rows(results()))
    starts = [header.index(word) for word in ("value", "target", "status")]
    assert all(rule[s - 2 : s + 1] == "  -" for s in starts)  # the rule breaks where columns start
    by_name = {row[: starts[0]].rstrip(): row for row in rows}
    for name, target, status in [
        ("  predict() / bare forward", "<= 1.5 x", "pass"),
        ("  peak RSS", "< 300 MiB", "MISS"),
        ("LiteRT/Keras same top-1, 8 validation photos", ">= 0.999", "MISS"),
        ("  TensorFlow imported", "== no", "pass"),
    ]:
        row = by_name[name]
        assert row[starts[1] : starts[2]].strip() == target and row[starts[2] :] == status, name
    assert by_name["  RSS at the first answer"].rstrip().endswith("290 MiB")  # no target: no status
    quiet = results(load_average={"before": [0.1, 0.1, 0.1], "after": [0.2, 0.1, 0.1], "busy": False})
    assert "BUSY" not in tables.format_table(quiet)


@pytest.mark.slow
def test_compare_forward_times_two_folders_in_turns(litert_dir: Path) -> None:
    """`python -m benchmarks.compare_forward A B` as users run it (here a folder against itself)."""
    result = run_module(
        "benchmarks.compare_forward", litert_dir, litert_dir, "--repeats", 3, timeout=TIMEOUT_S
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3 and lines[0].startswith(f"{litert_dir}: p50 ")
    assert re.search(r": \d+\.\d\dx \(p50, 3 calls each\)$", lines[2]), lines[2]
