"""The three labelled-image sources: a Flowers-102 folder, tensorflow_datasets, class folders."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from helpers import make_class_tree, save_solid
from PIL import Image
from scipy.io import savemat

from flower_demo import FlowerDemoError, data, model_files
from flower_demo.images import square_uint8

# --- a folder in Flowers-102's own layout -----------------------------------------------------

# image id -> 1-based label; ids 7 and 8 (test) and 9, 10 (validation) have no file on disk
LABELS = [1, 2, 3, 1, 2, 102, 51, 77, 3, 4]
SPLITS = {"trnid": [1, 2, 4], "valid": [9, 10], "tstid": [3, 5, 6, 7, 8]}


@pytest.fixture
def oxford_dir(tmp_path):
    jpg = tmp_path / "jpg"
    for image_id in (1, 2, 3, 4, 5, 6):
        save_solid(jpg / f"image_{image_id:05d}.jpg", (20 * image_id, 100, 200 - 20 * image_id))
    savemat(tmp_path / "imagelabels.mat", {"labels": np.array([LABELS], dtype=np.uint8)})
    savemat(tmp_path / "setid.mat", {k: np.array([v], dtype=np.uint16) for k, v in SPLITS.items()})
    return tmp_path


def test_oxford_folder_counts_found_and_expected(oxford_dir):
    test = data.load_oxford_folder(oxford_dir, "test")
    assert test.expected == 5 and len(test) == 3  # ids 7 and 8 are absent
    assert [p.name for p in test.items] == ["image_00003.jpg", "image_00005.jpg", "image_00006.jpg"]
    assert test.labels.tolist() == [2, 1, 101]  # 0-based
    assert test.source.endswith(":test")

    train = data.load_oxford_folder(oxford_dir, "train")
    assert (len(train), train.expected) == (3, 3)
    assert train.labels.tolist() == [0, 1, 0]
    batch = next(data.iter_decoded(train.items, 32, batch_size=8))
    assert batch.shape == (3, 32, 32, 3) and batch.dtype == np.uint8


@pytest.mark.usefixtures("own_tempdir")
def test_oxford_class_names_from_tfds_metadata(oxford_dir):
    names = data.load_oxford_folder(oxford_dir, "train").class_names
    assert len(names) == 102
    assert names[0] == "pink primrose" and names[101] == "blackberry lily"
    assert "pink-yellow dahlia" in names  # "pink-yellow dahlia?" in tfds
    assert all(name == data.clean_class_name(name) and "?" not in name and "_" not in name for name in names)
    assert len(set(names)) == 102


@pytest.mark.parametrize("label_map", ["absent", "another model's"])
def test_oxford_class_names_never_come_from_the_label_map(label_map, oxford_dir, tmp_path, monkeypatch):
    """`train --ship` rewrites label_map.json with the shipped model's classes (here 5, reversed):
    Flowers-102's own names must not change with it."""
    expected = data.load_oxford_folder(oxford_dir, "train").class_names
    shipped_map = tmp_path / "label_map.json"
    if label_map != "absent":
        shipped_map.write_text(json.dumps(model_files.label_map_from_names(expected[:5][::-1])))
    monkeypatch.setattr(model_files, "SHIPPED_LABEL_MAP", shipped_map)
    names = data.load_oxford_splits(oxford_dir, ["train", "test"]).class_names
    assert names == expected and len(names) == 102
    assert names[:3] == ["pink primrose", "hard-leaved pocket orchid", "canterbury bells"]


def test_oxford_split_with_no_images_is_an_error(oxford_dir):
    with pytest.raises(FlowerDemoError, match="found 0 of 2 validation images"):
        data.load_oxford_folder(oxford_dir, "validation")


def test_oxford_folder_errors(oxford_dir, tmp_path):
    with pytest.raises(FlowerDemoError, match="unknown split 'val'"):
        data.load_oxford_folder(oxford_dir, "val")
    (oxford_dir / "setid.mat").unlink()
    with pytest.raises(FlowerDemoError, match="setid.mat is missing"):
        data.load_oxford_folder(oxford_dir, "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FlowerDemoError, match="imagelabels.mat is missing"):
        data.load_oxford_folder(tmp_path / "empty", "train")


def test_missing_data_folder_is_reported_as_missing(tmp_path):
    with pytest.raises(FlowerDemoError, match=r"^data folder not found: .*nowhere$"):
        data.load_oxford_folder(tmp_path / "nowhere", "validation")


@pytest.mark.parametrize(
    "raw, clean",
    [("pink-yellow dahlia?", "pink-yellow dahlia"), ("sweet_pea", "sweet pea"), ("  a  _b? ", "a b")],
)
def test_clean_class_name(raw, clean):
    assert data.clean_class_name(raw) == clean


# --- tensorflow_datasets ---------------------------------------------------------------------


@pytest.mark.usefixtures("own_tempdir")
def test_tfds_source_with_mock_data():
    """tfds.testing.mock_data honours SkipDecoding: the items are encoded image files.

    Its random images are 5..49 px a side, so some are below images.MIN_SIDE (16 px); those must
    be refused with FlowerDemoError, the rest decode.
    """
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=12):
        split = data.load_tfds("tf_flowers", "train")
    assert len(split) == split.expected == 12
    assert split.class_names == ["dandelion", "daisy", "tulips", "sunflowers", "roses"]
    assert split.labels.dtype.kind == "i" and set(split.labels.tolist()) <= set(range(5))
    assert split.source == "tfds:tf_flowers:train"
    decoded = 0
    for item in split.items:
        assert isinstance(item, bytes) and item[:4] in (b"\x89PNG", b"\xff\xd8\xff\xe0", b"\xff\xd8\xff\xdb")
        with Image.open(io.BytesIO(item)) as image:
            width, height = image.size
        if min(width, height) >= 16 and max(width, height) / min(width, height) <= 20:
            assert square_uint8(item, 32).shape == (32, 32, 3)
            decoded += 1
        else:
            with pytest.raises(FlowerDemoError, match="too small|aspect"):
                square_uint8(item, 32)
    assert decoded >= 6


@pytest.mark.usefixtures("own_tempdir")
def test_tfds_without_validation_split_holds_out_a_slice_of_train():
    """tf_flowers has only "train": training holds out its last --val-fraction as validation."""
    import tensorflow_datasets as tfds

    from flower_demo import train
    from flower_demo.train import splits

    args = train.parse_args(["--tfds", "tf_flowers", "--val-fraction", "0.25"])
    with tfds.testing.mock_data(num_examples=8):
        assert "validation" not in data.tfds_split_names("tf_flowers")
        train_split, val_split = splits.load_splits(args)
    assert train_split.source == "tfds:tf_flowers:train[:75%]"
    assert val_split.source == "tfds:tf_flowers:train[75%:]"


@pytest.mark.usefixtures("own_tempdir")
def test_tfds_unknown_dataset_is_an_error(tmp_path):
    """The message is one line (tfds' own goes on to list every dataset it knows)."""
    with pytest.raises(FlowerDemoError, match="cannot load tfds 'no_such_dataset_xyz'") as excinfo:
        data.load_tfds("no_such_dataset_xyz", "train", data_dir=str(tmp_path))
    assert "\n" not in str(excinfo.value) and "not found" in str(excinfo.value)


# --- class-per-folder trees ------------------------------------------------------------------

COLOURS = {
    "sun_flower": (240, 220, 30),
    "blue?bell": (30, 60, 220),
    "Red  Rose": (220, 30, 40),
}


@pytest.fixture
def class_tree(tmp_path):
    root = make_class_tree(tmp_path / "flowers", COLOURS, per_class=10, size=24)
    save_solid(root / "sun_flower" / "nested" / "deep.jpg", (240, 220, 30), (24, 24))  # rglob finds it
    (root / "sun_flower" / "notes.txt").write_text("not an image")
    (root / "empty_class").mkdir()  # no images: dropped
    (root / ".hidden").mkdir()
    save_solid(root / ".hidden" / "x.png", (0, 0, 0), (24, 24))
    return root


def test_image_folder_classes_sorted_and_cleaned(class_tree):
    train, val = data.load_image_folder(class_tree, val_fraction=0.2, seed=0)
    assert train.class_names == val.class_names == ["Red Rose", "bluebell", "sun flower"]
    assert len(train) + len(val) == 31
    assert not any("notes.txt" in str(p) or ".hidden" in str(p) for p in [*train.items, *val.items])
    for split in (train, val):
        for item, label in zip(split.items, split.labels):
            folder = item.parent.name if item.parent.name != "nested" else item.parent.parent.name
            assert data.clean_class_name(folder) == split.class_names[label]


def test_image_folder_split_is_stratified(class_tree):
    train, val = data.load_image_folder(class_tree, val_fraction=0.2, seed=0)
    assert np.bincount(val.labels).tolist() == [2, 2, 2]  # round(0.2 * 10), round(0.2 * 11)
    assert np.bincount(train.labels).tolist() == [8, 8, 9]
    assert not set(train.items) & set(val.items)
    assert train.expected == len(train) and val.expected == len(val)


def test_image_folder_split_is_seeded(class_tree):
    first_train, first_val = data.load_image_folder(class_tree, 0.3, seed=5)
    again_train, again_val = data.load_image_folder(class_tree, 0.3, seed=5)
    other_train, other_val = data.load_image_folder(class_tree, 0.3, seed=6)
    assert first_val.items == again_val.items and first_train.items == again_train.items
    assert first_val.labels.tolist() == again_val.labels.tolist()
    assert set(first_val.items) != set(other_val.items)
    assert np.bincount(other_val.labels).tolist() == np.bincount(first_val.labels).tolist()


def test_image_folder_errors(tmp_path):
    with pytest.raises(FlowerDemoError, match="not found"):
        data.load_image_folder(tmp_path / "absent")
    make_class_tree(tmp_path / "one", {"only": (1, 2, 3)}, per_class=3, size=20)
    with pytest.raises(FlowerDemoError, match="at least two class"):
        data.load_image_folder(tmp_path / "one")


def test_image_folder_split_too_small_for_every_class(class_tree):
    """Two images held out cannot hold one of each of three classes: a one-line error, not a split
    that leaves a class out of validation; a fraction that holds out none leaves validation empty."""
    with pytest.raises(FlowerDemoError, match="cannot split .* validation fraction 0.05") as caught:
        data.load_image_folder(class_tree, val_fraction=0.05)
    assert "\n" not in str(caught.value)
    train, val = data.load_image_folder(class_tree, val_fraction=0.01)
    assert len(train) == 31 and len(val) == 0


def test_single_image_class_goes_to_training(tmp_path):
    root = make_class_tree(tmp_path / "t", {"a": (255, 0, 0), "b": (0, 0, 255)}, per_class=1, size=20)
    save_solid(root / "b" / "extra.png", (0, 0, 255), (20, 20))
    train, val = data.load_image_folder(root, val_fraction=0.5, seed=0)
    assert train.labels.tolist().count(0) == 1 and 0 not in val.labels.tolist()


def test_iter_decoded_keeps_order_and_batches(tmp_path):
    colours = [(i * 25, 255 - i * 25, 128) for i in range(7)]
    paths = [save_solid(tmp_path / f"{i}.png", c, (30, 20)) for i, c in enumerate(colours)]
    batches = list(data.iter_decoded(paths, 16, batch_size=3))
    assert [len(b) for b in batches] == [3, 3, 1]
    flat = np.concatenate(batches)
    assert [tuple(image[8, 8]) for image in flat] == [tuple(c) for c in colours]
    with pytest.raises(FlowerDemoError):
        list(data.iter_decoded([*paths, tmp_path / "absent.png"], 16, batch_size=3))
