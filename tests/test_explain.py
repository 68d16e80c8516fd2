"""Grad-CAM (flower_demo.explain): the heatmap's shape and range, its overlay, the predict command
line's --explain, and, on the shipped model, that the heat lies on the flower in clear photos (a
regression check: those photos are from the validation split the shipped model trained on)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import FIXTURE_FLOWERS, TINY_SIZE, error_lines, run_module, save_solid
from PIL import Image

import flower_demo
from flower_demo import FlowerDemoError, explain

# Hand-checked boxes (x0, y0, x1, y1) around the flower in the 224 px centre square the model
# sees, drawn on a 16 px grid over process_image(photo): the water lily's petals span about
# x 8..168, y 28..168, the marigold's head x 11..152, y 40..182. The boxes sit just inside those
# outlines, so a peak inside one is on the flower, not on its edge.
FLOWER_BOXES = {
    "073_water_lily.jpg": (16, 32, 160, 160),
    "047_marigold.jpg": (16, 48, 144, 176),
}
BOX_SIZE = 224  # the boxes' square; scaled to the model's input size
MIN_HEAT_IN_BOX = 0.7  # share of the heatmap's total inside the box (measured: 0.92 and 0.81)


MAPS = ("heatmap", "gradcam")  # from the forward pass, from gradients


@pytest.mark.parametrize("kind", MAPS)
def test_map_shape_range_and_class(kind: str, tiny_classifier, tmp_path: Path) -> None:
    photo = save_solid(tmp_path / "red.png", (200, 30, 30), size=(50, 40), noise=30)
    heat = getattr(explain, kind)(photo, tiny_classifier)
    assert heat.shape == (TINY_SIZE, TINY_SIZE) and heat.dtype == np.float32
    assert 0.0 <= heat.min() and heat.max() <= 1.0
    for index in range(tiny_classifier.num_classes):  # any class can be explained
        other = getattr(explain, kind)(photo, tiny_classifier, class_index=index)
        assert other.shape == heat.shape and 0.0 <= other.min() and other.max() <= 1.0


@pytest.mark.parametrize("kind", MAPS)
@pytest.mark.parametrize("bad", [-1, 3, 1.5, "1"])
def test_map_refuses_bad_class_index(kind: str, tiny_classifier, tmp_path: Path, bad) -> None:
    photo = save_solid(tmp_path / "red.png", (200, 30, 30))
    with pytest.raises(FlowerDemoError, match="class_index"):
        getattr(explain, kind)(photo, tiny_classifier, class_index=bad)


@pytest.mark.parametrize("kind", MAPS)
def test_map_reports_unreadable_image(kind: str, tiny_classifier, tmp_path: Path) -> None:
    fake = tmp_path / "fake.jpg"
    fake.write_text("not a photo")
    with pytest.raises(FlowerDemoError, match="not an image"):
        getattr(explain, kind)(fake, tiny_classifier)


def test_overlay_is_the_centre_square_blended() -> None:
    photo = np.full((60, 90, 3), 255, np.uint8)  # white, landscape
    heat = np.zeros((32, 32), np.float32)
    heat[:, 16:] = 1.0
    blended = explain.overlay(photo, heat)
    assert isinstance(blended, Image.Image) and blended.mode == "RGB"
    assert blended.size == (60, 60)  # the photo's own shorter side
    pixels = np.asarray(blended).astype(int)
    cold, hot = pixels[30, 5], pixels[30, 55]
    assert cold[2] > cold[0] and hot[0] > hot[2]  # blue where 0, red where 1
    big = explain.overlay(np.zeros((2000, 3000, 3), np.uint8), heat)
    assert big.size == (explain.MAX_OVERLAY_SIDE, explain.MAX_OVERLAY_SIDE)
    with pytest.raises(FlowerDemoError, match="square"):
        explain.overlay(photo, np.zeros((10, 20)))


def test_colorize_ends() -> None:
    colours = explain.colorize(np.array([[0.0, 1.0, -5.0, 7.0]]))
    assert colours.dtype == np.uint8 and colours.shape == (1, 4, 3)
    assert tuple(colours[0, 0]) == (0, 0, 128) and tuple(colours[0, 1]) == (128, 0, 0)
    assert (colours[0, 2] == colours[0, 0]).all() and (colours[0, 3] == colours[0, 1]).all()


def test_cli_explain_one_and_several_images(tiny_model_dir: Path, tmp_path: Path) -> None:
    a = save_solid(tmp_path / "a.png", (200, 30, 30), noise=20)
    b = save_solid(tmp_path / "b.png", (30, 200, 30), noise=20)
    out = tmp_path / "out" / "why.png"
    out.parent.mkdir()
    result = run_module("flower_demo.predict", a, "--model", tiny_model_dir, "--explain", out)
    assert result.returncode == 0, result.stderr
    assert Image.open(out).size[0] >= TINY_SIZE
    assert f"heatmap overlay: {out}" in result.stdout
    result = run_module("flower_demo.predict", a, b, "--model", tiny_model_dir, "--explain", out, "--json")
    assert result.returncode == 0, result.stderr
    for stem in ("a", "b"):
        assert (out.parent / f"why_{stem}.png").is_file()
    assert '"explanation"' in result.stdout


def test_cli_explain_unwritable_is_an_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    a = save_solid(tmp_path / "a.png", (200, 30, 30))
    out = tmp_path / "no_such_folder" / "why.png"
    result = run_module("flower_demo.predict", a, "--model", tiny_model_dir, "--explain", out)
    assert result.returncode == 1 and "cannot write" in error_lines(result.stderr)[0]


def test_forward_pass_map_equals_gradient_gradcam(tiny_classifier, tmp_path: Path) -> None:
    """For a pooled backbone with a dense head, the class map from the forward pass (LiteRT, no
    gradients) is Grad-CAM: the two agree for every class."""
    photo = save_solid(tmp_path / "a.png", (200, 60, 30), size=(64, 48), noise=40)
    for index in range(tiny_classifier.num_classes):
        fast = explain.heatmap(photo, tiny_classifier, index)
        slow = explain.gradcam(photo, tiny_classifier, index)
        assert fast.shape == slow.shape == (TINY_SIZE, TINY_SIZE)
        if slow.max() > 0:
            assert np.corrcoef(fast.ravel(), slow.ravel())[0, 1] >= 0.999
        else:
            assert fast.max() == 0
    top = flower_demo.predict(photo, tiny_classifier, top_k=1, explain=True)
    np.testing.assert_allclose(top.heatmap, explain.heatmap(photo, tiny_classifier), atol=1e-6)


# --- the shipped model -----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FLOWER_BOXES))
def test_regression_heat_lies_on_the_flower(shipped_classifier, name: str, tmp_path: Path) -> None:
    """A regression check on photos the shipped model trained on (the fixture photos are from the
    validation split, part of its training data): not evidence of where it looks on new photos."""
    photo = FIXTURE_FLOWERS / name
    heat = explain.heatmap(photo, shipped_classifier)
    assert np.corrcoef(heat.ravel(), explain.gradcam(photo, shipped_classifier).ravel())[0, 1] >= 0.99
    size = shipped_classifier.image_size
    assert heat.shape == (size, size)
    assert heat.max() == pytest.approx(1.0)
    x0, y0, x1, y1 = (round(v * size / BOX_SIZE) for v in FLOWER_BOXES[name])
    y, x = np.unravel_index(heat.argmax(), heat.shape)
    assert x0 <= x < x1 and y0 <= y < y1, f"peak at ({x}, {y}) is outside the flower"
    inside = np.zeros_like(heat, dtype=bool)
    inside[y0:y1, x0:x1] = True
    assert heat[inside].sum() / heat.sum() >= MIN_HEAT_IN_BOX
    explain.save_overlay(photo, tmp_path / "why.png", heat)
    assert Image.open(tmp_path / "why.png").size[0] >= size
