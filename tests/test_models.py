"""The backbone registry, the classifier built on it, saving, loading and what loading refuses."""

from __future__ import annotations

import gc
import json
import shutil
import subprocess
import sys
import weakref

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import TINY_CLASSES, TINY_SIZE

from flower_demo import FlowerDemoError, core, export, model_files, models

RNG = np.random.default_rng(0)
PIXELS = RNG.uniform(0, 255, (3, TINY_SIZE, TINY_SIZE, 3)).astype("float32")


def outputs(model, pixels=PIXELS) -> np.ndarray:
    return np.asarray(models.compiled_forward(model)(pixels))


@pytest.mark.parametrize("backbone", sorted(models.BACKBONES))
def test_keras_backbones(backbone):
    """weights=None at 32 px, the smallest size keras.applications accepts."""
    model = models.create_model(backbone, 5, TINY_SIZE, weights=None)
    assert model.input_shape == (None, TINY_SIZE, TINY_SIZE, 3)
    assert model.output_shape == (None, 5)
    probabilities = np.asarray(model(PIXELS, training=False))  # eager: tracing a graph costs more here
    assert probabilities.shape == (3, 5)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert (probabilities >= 0).all()

    assert [layer.name for layer in model.layers[1:]] == ["preprocess", "backbone", "dropout", "classifier"]
    backbone_layer = models.backbone_of(model)
    assert not backbone_layer.trainable and backbone_layer.trainable_weights == []
    assert [w.path for w in model.trainable_weights] == ["classifier/kernel", "classifier/bias"]
    # the registry's layer names exist in the real network
    spec = models.BACKBONES[backbone]
    assert backbone_layer.get_layer(spec.fine_tune_from) is not None
    assert len(backbone_layer.get_layer(spec.feature_map).output.shape) == 4
    assert models.head_of(model) == [model.get_layer("dropout"), model.get_layer("classifier")]


def test_backbone_errors(tmp_path):
    with pytest.raises(FlowerDemoError, match="unknown backbone 'vgg19'.*mobilenet_v2.*vgg16"):
        models.create_model("vgg19", 3, TINY_SIZE, weights=None)
    with pytest.raises(FlowerDemoError, match="weights file not found"):
        models.create_model("mobilenet_v2", 3, TINY_SIZE, weights=str(tmp_path / "absent.h5"))


@pytest.mark.parametrize(
    "backbone, reference",
    [
        ("mobilenet_v2", keras.applications.mobilenet_v2.preprocess_input),
        ("resnet50", keras.applications.resnet50.preprocess_input),
        ("vgg16", keras.applications.vgg16.preprocess_input),
        ("hub:anything", lambda x: x / 255.0),
    ],
)
def test_preprocess_layer_matches_the_backbone(backbone, reference):
    layer = models.Preprocess(backbone)
    expected = np.asarray(reference(PIXELS.copy()))
    np.testing.assert_allclose(np.asarray(layer(PIXELS)), expected, rtol=1e-6, atol=1e-5)
    restored = models.Preprocess.from_config(layer.get_config())
    assert restored.backbone == backbone
    if backbone == "mobilenet_v2":  # pixels 0..255 to -1..1
        out = np.asarray(layer(np.array([[[[0.0, 127.5, 255.0]]]], "float32")))
        np.testing.assert_allclose(out.ravel(), [-1.0, 0.0, 1.0], atol=1e-6)


def test_save_load_round_trip(tiny_model_dir, tmp_path):
    model, metadata = models.load_model(tiny_model_dir)
    assert metadata["class_names"] == TINY_CLASSES and metadata["image_size"] == TINY_SIZE
    assert metadata["format_version"] == model_files.METADATA_VERSION
    assert (
        model_files.read_metadata(tiny_model_dir / model_files.MODEL_FILE) == metadata
    )  # a .keras path works too
    assert not np.allclose(outputs(model)[0], 1 / 3, atol=1e-3)  # not a degenerate model

    # compiled_forward: one traced graph per model, same numbers as calling the model
    forward = models.compiled_forward(model)
    assert models.compiled_forward(model) is forward
    eager = np.asarray(model(PIXELS, training=False))
    np.testing.assert_allclose(np.asarray(forward(PIXELS)), eager, atol=1e-4)
    np.testing.assert_allclose(np.asarray(forward(PIXELS[:1])), eager[:1], atol=1e-4)

    # a model saved from the loaded one (given as its .keras file) gives the same outputs
    models.save_model(model, tmp_path / "copy", {**metadata, "note": "copy"})
    copy, copy_metadata = models.load_model(tmp_path / "copy" / model_files.MODEL_FILE)
    assert copy_metadata["note"] == "copy"
    np.testing.assert_allclose(outputs(copy), outputs(model), atol=1e-6)

    # a model no one uses any more is freed, graph and all (compiled_forward keeps no reference)
    served = weakref.ref(copy)
    del copy
    gc.collect()
    assert served() is None


# --- a TF-Hub backbone, exported here --------------------------------------------------------


class TinyFeatureModule(tf.Module):
    """A TF2 SavedModel in the shape of a TF-Hub image feature-vector module."""

    def __init__(self, dim: int = 8):
        super().__init__()
        self.projection = tf.Variable(tf.random.stateless_normal((3, dim), seed=(1, 2)))

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    def __call__(self, images):
        return tf.nn.relu(tf.matmul(tf.reduce_mean(images, axis=[1, 2]), self.projection))


@pytest.fixture
def hub_module_dir(tmp_path):
    path = tmp_path / "feature_vector"
    tf.saved_model.save(TinyFeatureModule(), str(path))
    return path


def test_hub_backbone_round_trip(hub_module_dir, tmp_path):
    backbone = f"hub:{hub_module_dir}"
    keras.utils.set_random_seed(3)
    model = models.create_model(backbone, 4, TINY_SIZE, weights=None)
    assert model.output_shape == (None, 4)
    hub_layer = models.backbone_of(model)
    assert isinstance(hub_layer, models.HubFeatureExtractor)
    assert hub_layer.feature_dim == 8 and not hub_layer.trainable
    assert [w.path for w in model.weights] == ["classifier/kernel", "classifier/bias"]  # module not stored
    pixels = PIXELS * np.array([0.2, 0.6, 1.0], "float32")[:, None, None, None]  # dark to bright
    before = outputs(model, pixels)
    np.testing.assert_allclose(before.sum(axis=1), 1.0, atol=1e-5)
    assert before.std(axis=0).max() > 1e-3  # the features depend on the image

    metadata = {"class_names": list("abcd"), "image_size": TINY_SIZE, "backbone": backbone}
    models.save_model(model, tmp_path / "hub_model", metadata)
    loaded, loaded_metadata = models.load_model(tmp_path / "hub_model")
    assert loaded_metadata["backbone"] == backbone
    assert isinstance(models.backbone_of(loaded), models.HubFeatureExtractor)
    np.testing.assert_allclose(outputs(loaded, pixels), before, atol=1e-6)

    # exported, the module's variables are constants in the file, which LiteRT runs as Keras did
    lite = core.LiteRTEngine(export.export_tflite(tmp_path / "hub_model"))
    np.testing.assert_allclose(lite(pixels)[model_files.PROBABILITIES], before, atol=1e-5)

    # the module is re-loaded from its handle, so it must still be there
    shutil.rmtree(hub_module_dir)
    with pytest.raises(FlowerDemoError, match="cannot load model"):
        models.load_model(tmp_path / "hub_model")


# --- what loading refuses --------------------------------------------------------------------


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    return folder


def edit_metadata(folder, **changes):
    path = folder / model_files.METADATA_FILE
    metadata = json.loads(path.read_text())
    metadata.update(changes)
    path.write_text(json.dumps(metadata))


def refuses(folder, reason):
    with pytest.raises(FlowerDemoError, match=reason) as excinfo:
        models.load_model(folder)
    assert "\n" not in str(excinfo.value)


def test_load_refuses_wrong_class_count(model_copy):
    edit_metadata(model_copy, class_names=["a", "b"])
    refuses(model_copy, "has 3 outputs but its metadata names 2 classes")


def test_load_refuses_wrong_image_size(model_copy):
    edit_metadata(model_copy, image_size=224)
    refuses(model_copy, "takes 32px images but its metadata says 224px")


def test_load_refuses_missing_files(model_copy, tmp_path):
    refuses(tmp_path / "nowhere", "model file not found")
    (model_copy / model_files.METADATA_FILE).unlink()
    refuses(model_copy, "model metadata not found")


def test_load_refuses_bad_metadata(model_copy):
    (model_copy / model_files.METADATA_FILE).write_text("{not json")
    refuses(model_copy, "model metadata .* is not valid JSON")
    (model_copy / model_files.METADATA_FILE).write_text(json.dumps({"class_names": ["a"], "image_size": 32}))
    refuses(model_copy, "lacks 'backbone'")


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_load_refuses_corrupt_model_file(model_copy, damage, monkeypatch):
    path = model_copy / model_files.MODEL_FILE
    content = path.read_bytes()
    broken = {"garbage": b"not a keras file" * 100, "truncated": content[:5000], "empty": b""}
    path.write_bytes(broken[damage])
    refuses(model_copy, r"does not match metadata.json \(size differs")  # its recorded size
    monkeypatch.setenv(model_files.SKIP_VERIFY_ENV, "1")
    refuses(model_copy, "cannot load model")  # unchecked, Keras refuses it


def test_label_map(tmp_path):
    names = ["rose", "tulip", "daisy"]
    mapping = model_files.label_map_from_names(names)
    assert mapping == {"1": "rose", "2": "tulip", "3": "daisy"}
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(dict(reversed(list(mapping.items())))))  # order in the file is free
    assert model_files.load_label_map(path, 3) == names

    bad = {
        "zero_based.json": {"0": "rose", "1": "tulip", "2": "daisy"},
        "too_few.json": {"1": "rose", "2": "tulip"},
        "too_many.json": {str(i): f"f{i}" for i in range(1, 6)},
        "list.json": ["rose", "tulip", "daisy"],
    }
    for name, content in bad.items():
        (tmp_path / name).write_text(json.dumps(content))
        reason = "must be a JSON object" if name == "list.json" else "do not match the model's 3 classes"
        with pytest.raises(FlowerDemoError, match=reason):
            model_files.load_label_map(tmp_path / name, 3)
    (tmp_path / "broken.json").write_text('{"1": "rose",')
    with pytest.raises(FlowerDemoError, match="not valid JSON"):
        model_files.load_label_map(tmp_path / "broken.json", 3)
    with pytest.raises(FlowerDemoError, match="label map not found"):
        model_files.load_label_map(tmp_path / "absent.json", 3)


def test_shipped_label_map_matches_shipped_model(shipped_metadata):
    if not model_files.SHIPPED_LABEL_MAP.is_file():
        pytest.skip("no label_map.json")
    names = model_files.load_label_map(model_files.SHIPPED_LABEL_MAP, len(shipped_metadata["class_names"]))
    assert names == shipped_metadata["class_names"]


# --- TensorFlow's start-up notices -----------------------------------------------------------


def run_python(code: str) -> subprocess.CompletedProcess:
    repo = model_files.REPO_ROOT
    return subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=180)


@pytest.mark.slow
def test_importing_tensorflow_through_models_is_quiet_and_keeps_other_lines():
    """oneDNN, cuda, absl and CPU-feature notices stay off stderr (a fresh process prints them);
    quiet_startup drops only such notices: a real warning and Python's own lines stay. The import
    leaves the garbage collector on, with what it made frozen (collector_paused). One process, one
    TensorFlow start-up."""
    code = (
        "import gc, os, sys\n"
        "import flower_demo.models, keras\n"
        "print(keras.ops.ones(2).shape, gc.isenabled(), gc.get_freeze_count() > 100_000)\n"
        "from flower_demo.model_files import quiet_startup\n"
        "with quiet_startup():\n"
        "    os.write(2, b'I0000 00:00 1 port.cc:153] oneDNN custom operations are on.\\n')\n"
        "    os.write(2, b'E0000 00:00 1 cuda_platform.cc:52] failed call to cuInit: INTERNAL\\n')\n"
        "    os.write(2, b'W0000 00:00 1 a real warning\\n')\n"
        "    print('a python message', file=sys.stderr)\n"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(2,) True True"
    assert result.stderr.splitlines() == ["W0000 00:00 1 a real warning", "a python message"]


def test_collector_paused_keeps_what_was_made_out_of_later_collections():
    """No collection inside; after it, every object that exists is frozen (never walked again) and
    the collector is as the program left it: on, or off."""
    before = gc.get_freeze_count()
    with model_files.collector_paused():
        assert not gc.isenabled()
        made = [[i] for i in range(1000)]
    assert gc.isenabled()
    assert gc.get_freeze_count() >= before + len(made)
    gc.disable()
    try:
        with model_files.collector_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_vgg16_registry_entry_fits_the_network():
    """The cut and the Grad-CAM map are VGG16's own layers: block 5's convolutions above the cut."""
    backbone = models.create_backbone("vgg16", TINY_SIZE, weights=None)
    names = [layer.name for layer in backbone.layers]
    cut = names.index(models.BACKBONES["vgg16"].fine_tune_from)
    assert names[cut + 1 : cut + 4] == ["block5_conv1", "block5_conv2", "block5_conv3"]
    assert models.BACKBONES["vgg16"].feature_map == "block5_conv3"
