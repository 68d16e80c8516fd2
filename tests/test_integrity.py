"""A model folder is one unit: metadata.json records each model file's size and sha256, loading
refuses a file that does not match in one line naming it, and every writer (save_model, export,
calibrate, ship) renames its files into place with the metadata last, so a command that fails
midway leaves the folder serving what it served. Also: provenance names things, never locates them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO_ROOT, TINY_CLASSES

from flower_demo import FlowerDemoError, calibrate, data, model_files, models
from flower_demo.calibrate import cli
from flower_demo.core import Classifier
from flower_demo.train import outputs

FEATURES = 1280  # the tiny MobileNetV2's pooled features
MACHINE_PATH_MARKS = ("../", "/work/", "/tmp/", "shared/", "runs/", "/home/", "/root/")


def knn_folder(source: Path, folder: Path, seed: int) -> Path:
    """A copy of the tiny model calibrated by calibrate.write_calibration with a kNN rule whose
    feature bank is random (seeded): same shapes, other bytes for another seed."""
    shutil.copytree(source, folder)
    bank = np.random.default_rng(seed).normal(size=(6, FEATURES)).astype(np.float32)
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    result = {"temperature": 0.8, "ood_rule": "knn", "ood_threshold": 0.1, "ood_k": 2, "ood_file": "ood.npz"}
    calibrate.write_calibration(folder, result, {"bank": bank})
    return folder


def refusal(folder: Path, **kwargs) -> str:
    with pytest.raises(FlowerDemoError) as refused:
        Classifier(folder, **kwargs)
    message = str(refused.value)
    assert "\n" not in message
    return message


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file of the folder, hidden ones included, by name."""
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


# --- what is recorded ------------------------------------------------------------------------


def test_shipped_folder_records_its_files(shipped_model_dir: Path, shipped_metadata: dict) -> None:
    records = shipped_metadata[model_files.FILES_KEY]
    recorded = {
        model_files.MODEL_FILE,
        model_files.TFLITE_FILE,
        model_files.OOD_FILE,
        model_files.THUMBNAILS_DIR,
    }
    assert set(records) == recorded
    for name, record in records.items():
        assert record == model_files.file_record(shipped_model_dir / name), name


def test_every_writer_records_the_files_it_leaves(tiny_model_dir: Path, tmp_path: Path) -> None:
    """save_model and export (conftest's tiny model) and write_calibration leave each model file
    recorded, and no temporary file behind."""
    folder = knn_folder(tiny_model_dir, tmp_path / "model", seed=0)
    records = model_files.read_metadata(folder)[model_files.FILES_KEY]
    assert set(records) == {model_files.MODEL_FILE, model_files.TFLITE_FILE, model_files.OOD_FILE}
    for name, record in records.items():
        assert record == model_files.file_record(folder / name)
    assert sorted(p.name for p in folder.iterdir()) == sorted([*records, model_files.METADATA_FILE])
    assert Classifier(folder).calibration.ood_rule == "knn"


# --- what loading refuses --------------------------------------------------------------------


def test_ood_statistics_of_another_model_are_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    mine, other = (knn_folder(tiny_model_dir, tmp_path / name, seed) for seed, name in enumerate("ab"))
    assert (mine / "ood.npz").stat().st_size == (other / "ood.npz").stat().st_size  # same shapes
    shutil.copy2(other / "ood.npz", mine / "ood.npz")
    message = refusal(mine)
    assert message.startswith(f"{mine / 'ood.npz'} does not match metadata.json (sha256 differs)")


def test_truncated_files_are_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    for name, engine in ((model_files.TFLITE_FILE, "litert"), (model_files.MODEL_FILE, "keras")):
        whole = (folder / name).read_bytes()
        (folder / name).write_bytes(whole[: len(whole) // 2])
        message = refusal(folder, engine=engine)
        assert message.startswith(f"{folder / name} does not match metadata.json (size differs")
        (folder / name).write_bytes(whole)
    assert Classifier(folder).engine.name == "litert"  # the same bytes again: served


def test_model_tflite_older_than_the_metadata_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A new model.keras saved into a folder (its metadata records only it) beside the previous
    model.tflite: the default engine refuses the stale file rather than serve it; Keras serves."""
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    model, metadata = models.load_model(folder)
    models.save_model(model, folder, {**metadata, "created": "later"})
    assert set(model_files.read_metadata(folder)[model_files.FILES_KEY]) == {model_files.MODEL_FILE}
    message = refusal(folder)
    assert message.startswith(f"{folder / 'model.tflite'} is not recorded in metadata.json")
    assert "python -m flower_demo.export" in message
    assert Classifier(folder, engine="keras").class_names == TINY_CLASSES


def test_opt_out_and_folders_written_before_hashes(tiny_model_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """FLOWER_DEMO_SKIP_VERIFY=1 loads a folder unchecked; so does a folder with no "files" (older
    run folders), whose writers then record what it holds."""
    mine, other = (knn_folder(tiny_model_dir, tmp_path / name, seed) for seed, name in enumerate("ab"))
    shutil.copy2(other / "ood.npz", mine / "ood.npz")
    monkeypatch.setenv(model_files.SKIP_VERIFY_ENV, "1")
    assert Classifier(mine).calibration.ood_rule == "knn"
    monkeypatch.delenv(model_files.SKIP_VERIFY_ENV)
    metadata = model_files.read_metadata(mine)
    del metadata[model_files.FILES_KEY]
    (mine / "metadata.json").write_text(json.dumps(metadata))
    assert Classifier(mine).calibration.ood_rule == "knn"
    cli.write_calibration(mine, {"temperature": 1.0, "ood_rule": "max_softmax", "ood_threshold": 0.1})
    records = model_files.read_metadata(mine)[model_files.FILES_KEY]
    assert set(records) == {model_files.MODEL_FILE, model_files.TFLITE_FILE}  # ood.npz removed


# --- writers that fail midway ----------------------------------------------------------------


def test_calibrate_that_fails_midway_leaves_the_old_folder_serving(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    folder = knn_folder(tiny_model_dir, tmp_path / "model", seed=0)
    before = snapshot(folder)
    bank = np.asarray(np.load(folder / "ood.npz")["bank"])
    result = {"temperature": 2.0, "ood_rule": "knn", "ood_threshold": 0.9, "ood_k": 1}

    def fails(*args, **kwargs):
        raise FlowerDemoError("interrupted")

    # the new statistics are written, then the check that loads them back fails
    monkeypatch.setattr(cli, "read_calibration", fails)
    with pytest.raises(FlowerDemoError, match="interrupted"):
        cli.write_calibration(folder, result, {"bank": bank[::-1].copy()})
    assert snapshot(folder) == before  # no new file, no temporary file left
    classifier = Classifier(folder)
    assert (classifier.calibration.temperature, classifier.calibration.k) == (0.8, 2)
    monkeypatch.undo()

    # interrupted after the statistics are renamed into place, before the metadata: refused, not mixed
    monkeypatch.setattr(model_files, "write_json", fails)
    with pytest.raises(FlowerDemoError, match="interrupted"):
        cli.write_calibration(folder, result, {"bank": bank[::-1].copy()})
    assert (folder / "metadata.json").read_bytes() == before["metadata.json"]
    assert refusal(folder).startswith(f"{folder / 'ood.npz'} does not match metadata.json (sha256 differs)")


def test_ship_checks_the_run_and_renames_it_into_place(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    """ship (pointed at a scratch weights/ here) refuses a run folder whose files are not one model,
    leaving the shipped folder as it was; a whole run is shipped with its files recorded."""
    shipped, label_map = tmp_path / "weights", tmp_path / "label_map.json"
    monkeypatch.setattr(model_files, "SHIPPED_MODEL_DIR", shipped)
    monkeypatch.setattr(model_files, "SHIPPED_LABEL_MAP", label_map, raising=False)
    run = tmp_path / "run"
    shutil.copytree(tiny_model_dir, run)
    outputs.ship(run)
    assert Classifier(shipped).class_names == TINY_CLASSES
    before = snapshot(shipped)
    (run / "model.tflite").write_bytes((run / "model.tflite").read_bytes()[:-8])
    with pytest.raises(FlowerDemoError, match="does not match metadata.json"):
        outputs.ship(run)
    assert snapshot(shipped) == before


# --- provenance: names and hashes, not paths --------------------------------------------------


def test_run_metadata_names_its_data_and_weights(tiny_class_tree: Path, tmp_path: Path) -> None:
    """The data set by name, splits, counts and a hash of its image ids (the same wherever the
    folder sits), the weights by name and sha256; no path of the training machine anywhere."""
    moved = tmp_path / "elsewhere" / tiny_class_tree.name
    shutil.copytree(tiny_class_tree, moved)
    weights = tmp_path / "backbone.weights.h5"
    weights.write_bytes(b"pretrained weights")
    records = []
    for tree in (tiny_class_tree, moved):
        train, val = data.load_image_folder(tree, 0.2, seed=0)
        settings = {
            "image_folder": str(tree), "weights": str(weights), "run_dir": str(tmp_path / "runs" / "r1"),
            "teachers": [str(tmp_path / "runs" / "t1")], "serve_size": None, "image_size": 32,
            "backbone": "mobilenet_v2", "fixed_epochs": False,
        }  # fmt: skip
        metadata = outputs.run_metadata(settings, train, val, None, {}, gpu=False)
        assert not any(mark in json.dumps(metadata) for mark in MACHINE_PATH_MARKS), metadata
        records.append(metadata)
    assert records[0]["data"] == records[1]["data"]
    meta = records[0]
    assert meta["backbone_weights"] == {"name": weights.name, "sha256": model_files.sha256_of(weights)}
    assert meta["data"]["dataset"] == tiny_class_tree.name
    assert meta["data"]["train_source"] == f"folder:{tiny_class_tree.name}:train"
    assert meta["data"]["train_splits"] == ["train"] and meta["data"]["validation_size"] == len(val) == 6
    assert meta["training"]["weights"] == weights.name and meta["training"]["run"] == "r1"
    assert meta["training"]["teachers"] == ["t1"] and "image_folder" not in meta["training"]


def test_shipped_provenance_names_no_machine_paths(shipped_metadata: dict) -> None:
    text = json.dumps(shipped_metadata) + (REPO_ROOT / "docs" / "report" / "index.html").read_text()
    text += (REPO_ROOT / "docs" / "report" / "report.json").read_text()
    assert not [mark for mark in MACHINE_PATH_MARKS if mark in text]
    assert shipped_metadata["data"]["dataset"] == "oxford_flowers102"
    assert shipped_metadata["data"]["train_splits"] == ["train", "validation"]
    assert len(shipped_metadata["data"]["train_ids_sha256"]) == 64
    assert len(shipped_metadata["backbone_weights"]["sha256"]) == 64
