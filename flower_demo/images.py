"""Turning whatever a user hands us into the square RGB array the model takes.

This module owns every Pillow detail, so training, evaluation, prediction and the app all see
exactly the same pixels: decode (any format Pillow reads, plus HEIC/HEIF through pillow-heif, the
format iPhones save), apply EXIF orientation, take the first
frame of an animation, composite transparency on white, scale 16-bit data down to 8 bits, then
resize the shorter side to the model's input size and crop the centre square.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from pillow_heif import register_heif_opener

from flower_demo.errors import FlowerDemoError, first_line

# Phone photos: Pillow reads AVIF itself (Pillow 12) but HEIC/HEIF only through this plugin.
register_heif_opener()

# Anything `load_rgb` accepts.
ImageLike = Union[str, os.PathLike, bytes, Image.Image, np.ndarray]

IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".webp",
    ".gif",
    ".bmp",
    ".tif",
    ".tiff",
    ".heic",
    ".heif",
    ".avif",
)
MAX_PIXELS = 64_000_000  # ~8000x8000; larger headers are refused before any decoding
MAX_ASPECT_RATIO = 20.0  # a 20:1 strip has no flower left after a centre crop
MIN_SIDE = 16  # pixels; below this there is nothing to classify
MAX_FILE_BYTES = 100 * 1024 * 1024


def _describe(source: ImageLike) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return f"<{type(source).__name__}>"


def _open(source: ImageLike) -> Image.Image:
    """Open without decoding pixels, so size checks happen before any memory is spent."""
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, np.ndarray):
        return _from_array(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise FlowerDemoError("empty image data (0 bytes)")
        stream = io.BytesIO(bytes(source))
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise FlowerDemoError("no such file")
        if path.is_dir():
            raise FlowerDemoError("is a directory, not an image")
        size = path.stat().st_size
        if size == 0:
            raise FlowerDemoError("empty file (0 bytes)")
        if size > MAX_FILE_BYTES:
            raise FlowerDemoError(f"file too large ({size / 2**20:.0f} MiB)")
        stream = path  # Pillow opens it, and closes it once the pixels are loaded
    else:
        raise FlowerDemoError(f"cannot read an image from {type(source).__name__}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(stream)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise FlowerDemoError("image too large to decode safely") from None
    except UnidentifiedImageError:
        raise FlowerDemoError("not an image (unknown or unsupported format)") from None
    except OSError as exc:
        raise FlowerDemoError(f"cannot open image ({exc})") from None


def _from_array(array: np.ndarray) -> Image.Image:
    """Arrays: HxW or HxWx{1,3,4}; uint8, uint16 (scaled down) or floats in 0..255."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise FlowerDemoError(f"array of shape {array.shape} is not an image")
    if array.size == 0:
        raise FlowerDemoError("empty image array")
    if array.dtype == np.uint16:
        array = (array // 257).astype(np.uint8)
    elif array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.number) or not np.isfinite(array).all():
            raise FlowerDemoError("image array holds non-finite or non-numeric values")
        array = np.clip(np.rint(array), 0, 255).astype(np.uint8)
    return Image.fromarray(array)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; transparency is composited on white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # Pillow's convert("L") clips 16-bit data instead of scaling it: scale to the real range.
        data = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or data.max() > 255 else 255.0
        image = Image.fromarray(np.clip(data * (255.0 / top), 0, 255).astype(np.uint8))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def load_rgb(source: ImageLike, min_size: int | None = None) -> Image.Image:
    """Decode `source` into an upright 8-bit RGB Pillow image, or raise FlowerDemoError.

    `min_size` lets large JPEGs decode at a reduced scale (Pillow's draft mode) when only
    that many pixels of shorter side are needed afterwards.
    """
    name = _describe(source)
    try:
        image = _open(source)
        width, height = image.size
        if width * height > MAX_PIXELS:
            raise FlowerDemoError(f"image too large to decode safely ({width}x{height})")
        if min(width, height) < MIN_SIDE:
            raise FlowerDemoError(f"image too small ({width}x{height}, need {MIN_SIDE}px)")
        if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
            raise FlowerDemoError(f"absurd aspect ratio ({width}x{height})")
        if min_size and image.format == "JPEG" and image.mode in ("RGB", "L", "CMYK"):
            image.draft(image.mode, (min_size, min_size))
        image.load()  # decodes now: truncated or corrupt data fails here, not later
        if isinstance(source, Image.Image):  # the caller's image: never changed in place
            image = ImageOps.exif_transpose(image)
        else:  # opened here: turned upright in place, without a copy
            ImageOps.exif_transpose(image, in_place=True)
        return _to_rgb(image)
    except FlowerDemoError as exc:
        raise FlowerDemoError(f"{name}: {exc}") from None
    except (
        OSError,
        ValueError,
        SyntaxError,
        EOFError,
        Image.DecompressionBombError,
    ) as exc:
        reason = first_line(exc)
        raise FlowerDemoError(f"{name}: corrupt or truncated image ({reason})") from None


def square_uint8(source: ImageLike, size: int) -> np.ndarray:
    """Resize the shorter side to `size`, crop the centre square: (size, size, 3) uint8."""
    image = load_rgb(source, min_size=size)
    fitted = ImageOps.fit(image, (size, size), method=Image.Resampling.BICUBIC)
    return np.asarray(fitted, dtype=np.uint8)


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside `folder`, sorted, by extension."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
