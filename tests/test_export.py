"""TFLite export (flower_demo.export): the files and metadata it writes, running them through
Classifier and the predict command line, its errors, and on the shipped model that float16 and int8
files name the same species as the Keras model on the fixture photos (a regression check: those
are validation photos the shipped model trained on)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import TINY_SIZE, error_lines, fixture_photos, run_module, save_solid

from flower_demo import FlowerDemoError, core, export, model_files
from flower_demo.core import Classifier, predict_batch
from flower_demo.images import square_uint8

# int8 moves probabilities by a few points (up to ~0.05 measured), so a close second may swap
# places with the first on one photo; float16 must agree everywhere.
INT8_DISAGREEMENTS_ALLOWED = 1


# The float32 file is the tiny model folder's own model.tflite (conftest's tiny_model_dir exports it
# into the folder, as `export --model FOLDER` does); float16 is exported by test_export_command and by
# README's export command (test_readme, on the shipped model).
TINY_QUANTIZE = ("int8",)


@pytest.fixture(scope="module")
def tiny_exports(tiny_model_dir: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny_tflite")
    for quantize in TINY_QUANTIZE:
        export.export_tflite(tiny_model_dir, out, quantize)
    return out


def exported_file(tiny_model_dir: Path, tiny_exports: Path, quantize: str) -> Path:
    if quantize == "none":
        return tiny_model_dir / model_files.TFLITE_FILE
    return tiny_exports / export.tflite_file_name(quantize)


@pytest.fixture(scope="module")
def colour_photos(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("colours")
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (120, 120, 120)]
    return [
        save_solid(folder / f"{i}.png", colour, size=(48, 40), noise=15, seed=i)
        for i, colour in enumerate(colours)
    ]


@pytest.mark.slow
def test_export_writes_files_and_metadata(tiny_exports: Path, tiny_model_dir: Path) -> None:
    metadata = json.loads((tiny_exports / model_files.METADATA_FILE).read_text())
    source = json.loads((tiny_model_dir / model_files.METADATA_FILE).read_text())
    assert metadata["class_names"] == source["class_names"]
    # Without an out folder the float32 file is the folder's own model.tflite, recorded in its metadata.
    own = source[export.EXPORTS_KEY][model_files.TFLITE_FILE]
    assert (
        own["quantize"] == "none"
        and own["bytes"] == (tiny_model_dir / model_files.TFLITE_FILE).stat().st_size
    )
    files = {export.tflite_file_name(q) for q in TINY_QUANTIZE}
    assert set(metadata[export.EXPORTS_KEY]) == files  # each export added itself
    for name in files:
        assert (tiny_exports / name).stat().st_size == metadata[export.EXPORTS_KEY][name]["bytes"]
    assert metadata[export.EXPORTS_KEY]["model_int8.tflite"]["representative_images"] > 0


@pytest.mark.slow
def test_tflite_classifier_agrees_with_keras(
    tiny_model_dir, tiny_exports, tiny_keras_classifier, colour_photos
) -> None:
    pixels = np.stack([square_uint8(photo, TINY_SIZE) for photo in colour_photos]).astype(np.float32)
    expected = tiny_keras_classifier.probabilities(pixels)
    # The untrained tiny model's int8 file is calibrated on flower photos, not on these colours,
    # so only float32 is held to Keras' numbers here; int8 quality is checked on the shipped model.
    for quantize, tolerance in (("none", 1e-4), ("int8", None)):
        lite = Classifier(exported_file(tiny_model_dir, tiny_exports, quantize))
        assert lite.engine.name == "litert" and lite.image_size == TINY_SIZE
        got = lite.probabilities(pixels)
        assert got.shape == expected.shape and (got >= 0).all()
        np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=0.05)
        if tolerance is not None:
            np.testing.assert_allclose(got, expected, atol=tolerance)
        assert [p.class_ids for p in predict_batch(colour_photos, lite, top_k=1)] == [
            [int(i) + 1] for i in got.argmax(axis=1)
        ]


@pytest.mark.slow
def test_tflite_from_the_command_line(tiny_exports: Path, colour_photos, tmp_path: Path) -> None:
    model = tiny_exports / "model_int8.tflite"
    result = run_module("flower_demo.predict", colour_photos[0], "--model", model, "--json")
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)[0]["class_names"]) == 3
    out = tmp_path / "x.png"  # exported files return class maps: --explain works on them too
    result = run_module("flower_demo.predict", colour_photos[0], "--model", model, "--explain", out)
    assert result.returncode == 0, result.stderr
    assert out.is_file()


def test_exported_outputs(tiny_model_dir: Path, tiny_keras_classifier) -> None:
    """model.tflite returns what the Keras serving model returns: probabilities, the class maps of
    the last feature map and the pooled features, by name."""
    lite = core.LiteRTEngine(tiny_model_dir / model_files.TFLITE_FILE)
    assert lite.outputs == {model_files.PROBABILITIES, model_files.CLASS_MAPS, model_files.FEATURES}
    pixels = np.random.default_rng(0).uniform(0, 255, (2, TINY_SIZE, TINY_SIZE, 3)).astype(np.float32)
    got, expected = lite(pixels), tiny_keras_classifier.engine(pixels)
    for name in lite.outputs:
        assert got[name].shape == expected[name].shape, name
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-3, atol=1e-4)
    assert got[model_files.CLASS_MAPS].shape[-1] == 3 and got[model_files.FEATURES].shape == (2, 1280)


@pytest.mark.slow
def test_the_converted_function_holds_the_weights_as_constants(tiny_keras_classifier, tmp_path: Path) -> None:
    """The SavedModel the converter reads has no Keras variables (so no checkpoint to write and
    restore) and answers what the Keras serving model answers."""
    import tensorflow as tf

    engine = tiny_keras_classifier.engine
    signature = [tf.TensorSpec((1, TINY_SIZE, TINY_SIZE, 3), tf.float32, name="image")]
    export.save_serving_function(engine.serving, signature, str(tmp_path))
    saved = tf.saved_model.load(str(tmp_path))
    assert list(saved.captured) == [] and not saved.signatures["serving_default"].variables
    pixels = np.random.default_rng(1).uniform(0, 255, (1, TINY_SIZE, TINY_SIZE, 3)).astype(np.float32)
    got, expected = saved.signatures["serving_default"](image=tf.constant(pixels)), engine(pixels)
    assert set(got) == set(expected)
    for name in expected:
        np.testing.assert_allclose(got[name].numpy(), expected[name], rtol=1e-3, atol=1e-4)


@pytest.mark.slow
def test_export_errors(tiny_model_dir: Path, tiny_exports: Path, tmp_path: Path) -> None:
    with pytest.raises(FlowerDemoError, match="another folder"):
        export.export_tflite(tiny_model_dir, tiny_model_dir, "float16")
    with pytest.raises(FlowerDemoError, match="another folder"):
        export.export_tflite(tiny_model_dir, None, "int8")
    with pytest.raises(FlowerDemoError, match="unknown quantization"):
        export.export_tflite(tiny_model_dir, tmp_path, "int4")
    broken = tmp_path / "broken" / "model_broken.tflite"  # named, and not in the metadata: not checked
    broken.parent.mkdir()
    broken.write_bytes(b"not a flatbuffer" * 64)
    (broken.parent / model_files.METADATA_FILE).write_text(
        (tiny_exports / model_files.METADATA_FILE).read_text()
    )
    with pytest.raises(FlowerDemoError, match="cannot load TFLite model"):
        Classifier(broken)
    with pytest.raises(FlowerDemoError, match="not found"):
        Classifier(tmp_path / "missing.tflite")


@pytest.mark.slow
def test_export_command(tiny_model_dir: Path, tmp_path: Path) -> None:
    """`export --measure --json` as users run it, on a copy of the tiny model folder whose
    model.tflite is up to date, so nothing is converted (README's float16 command, run by
    test_readme, converts through the command line; conftest's tiny_model_dir in-process)."""
    folder = tmp_path / "model"
    folder.mkdir()
    for file in tiny_model_dir.iterdir():
        (folder / file.name).write_bytes(file.read_bytes())
    result = run_module("flower_demo.export", "--model", folder, "--measure", "--repeats", "3", "--json")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith(f"{folder / model_files.TFLITE_FILE} is up to date: the export of this")
    measured = json.loads(lines[-1])
    assert measured["tflite_p50_ms"] > 0 and measured["keras_p50_ms"] > 0 and measured["tflite_mb"] > 0
    result = run_module("flower_demo.export", "--model", tmp_path / "nowhere", "--out", tmp_path / "out")
    assert result.returncode == 1 and "model file not found" in error_lines(result.stderr)[0]


def test_export_into_the_model_folder(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Without an out folder the float32 file lands in the folder as model.tflite, recorded in its
    metadata, and the folder then serves through LiteRT (conftest's tiny_model_dir is made so; the
    command `export --model weights` is run by test_readme)."""
    folder = tmp_path / "model"  # the folder as it was before its export
    folder.mkdir()
    (folder / model_files.MODEL_FILE).write_bytes((tiny_model_dir / model_files.MODEL_FILE).read_bytes())
    metadata = model_files.read_metadata(tiny_model_dir)
    del metadata[export.EXPORTS_KEY]
    (folder / model_files.METADATA_FILE).write_text(json.dumps(metadata))
    assert core.choose_engine(folder) == "keras"  # no model.tflite yet
    assert (tiny_model_dir / model_files.TFLITE_FILE).is_file()
    assert core.choose_engine(tiny_model_dir) == "litert"
    assert model_files.TFLITE_FILE in model_files.read_metadata(tiny_model_dir)[export.EXPORTS_KEY]


# --- the shipped model -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped_exports(shipped_model_dir: Path, tmp_path_factory) -> Path:
    """The int8 export of the shipped model (9 to 14 s on a 2-core machine). Its float16 export is
    README's own command, checked the same way by test_readme."""
    out = tmp_path_factory.mktemp("shipped_tflite")
    for quantize in ("int8",):
        export.export_tflite(shipped_model_dir, out, quantize)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("quantize", ["int8"])
def test_regression_shipped_tflite_names_the_same_species(
    shipped_classifier, shipped_model_dir: Path, shipped_exports: Path, quantize: str
) -> None:
    """The quantized file answers as the float model does. A regression check, not accuracy
    evidence: the fixture photos are validation photos the shipped model trained on."""
    photos = fixture_photos()
    lite = Classifier(shipped_exports / export.tflite_file_name(quantize))
    expected = [p.class_ids[0] for p in predict_batch(photos, shipped_classifier)]
    got = [p.class_ids[0] for p in predict_batch(photos, lite)]
    disagreements = sum(a != b for a, b in zip(expected, got))
    assert disagreements <= (INT8_DISAGREEMENTS_ALLOWED if quantize == "int8" else 0), (expected, got)
    size = (shipped_exports / export.tflite_file_name(quantize)).stat().st_size
    assert size < (shipped_model_dir / model_files.MODEL_FILE).stat().st_size  # smaller than model.keras


def test_export_leaves_an_up_to_date_file_alone(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    """`export --model FOLDER` converts nothing when the folder's model.tflite is recorded as the
    export of its model.keras as it is now; a changed model.keras or model.tflite is converted again."""
    folder = tmp_path / "model"
    folder.mkdir()
    for file in tiny_model_dir.iterdir():
        (folder / file.name).write_bytes(file.read_bytes())
    lite, keras_file = folder / model_files.TFLITE_FILE, folder / model_files.MODEL_FILE
    written = lite.stat().st_mtime_ns
    assert export.up_to_date(folder, keras_file)
    assert export.main(["--model", str(folder)]) == 0
    assert (
        capsys.readouterr().out
        == f"{lite} is up to date: the export of this model.keras (--force converts again)\n"
    )
    assert lite.stat().st_mtime_ns == written
    lite.write_bytes(lite.read_bytes()[:-8])  # a truncated model.tflite
    assert not export.up_to_date(folder, keras_file)
    (folder / model_files.TFLITE_FILE).write_bytes((tiny_model_dir / model_files.TFLITE_FILE).read_bytes())
    assert export.up_to_date(folder, keras_file)
    keras_file.write_bytes(keras_file.read_bytes() + b"\0")  # another model.keras
    assert not export.up_to_date(folder, keras_file)
