"""Rebuild this folder: photos of things that are not flowers, taken from Debian and PyPI packages.

    apt-get download gcompris-qt-data opencv-doc palapeli-data lomiri-wallpapers-20.04
    for f in *.deb; do mkdir -p "x_${f%%_*}" && dpkg -x "$f" "x_${f%%_*}"; done
    python ood_photos/collect.py --debs DIR_OF_THOSE_x_FOLDERS

Each photo is resized so that its shorter side is SHORT_SIDE px and saved as JPEG (quality QUALITY);
photos.csv lists its file, subject group, package, path inside the package, author and licence,
and whether it is in the held-out part (HELD_OUT of them, chosen by a seeded permutation, used for
the final figure only: never to choose a rule, a k or a threshold). GCompris keeps its pictures in
Qt resource (.rcc) files, read here with a small reader of that format; its per-file credits come
from the README beside each picture. scikit-image, scikit-learn and matplotlib photos come from the
installed packages.
"""

from __future__ import annotations

import argparse
import csv
import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
SHORT_SIDE = 288
QUALITY = 85
HELD_OUT = 0.35
SEED = 16
GCOMPRIS = "usr/share/gcompris-qt/rcc"
ACT = "gcompris/src/activities"
# (group, rcc file, folder inside it, files to take: names, or every n-th, or all; names left out)
GCOMPRIS_SETS = [
    ("animal", "explore_farm_animals", f"{ACT}/explore_farm_animals/resource/animals", None, ()),
    ("animal", "explore_world_animals", f"{ACT}/explore_world_animals/resource/animals", None, ()),
    # bee and butterfly sit on flowers, so they are left out
    ("animal", "erase", f"{ACT}/erase/resource", None, ("bee", "butterfly")),
    ("object", "categorization", f"{ACT}/categorization/resource/images/others", None, ()),
    ("animal", "categorization", f"{ACT}/categorization/resource/images/fishes", 2, ()),
    ("object", "categorization", f"{ACT}/categorization/resource/images/tools", 3, ()),
    ("building", "categorization", f"{ACT}/categorization/resource/images/renewable", 2, ()),
    ("building", "categorization", f"{ACT}/categorization/resource/images/monuments", None, ()),
]
OPENCV = "usr/share/doc/opencv-doc/examples"
OPENCV_PHOTOS = {  # file -> group; Blender renders, logos, paintings and drawings left out
    "data/apple.jpg": "food",
    "data/orange.jpg": "food",
    "data/fruits.jpg": "food",
    "data/baboon.jpg": "animal",
    "data/squirrel_cls.jpg": "animal",
    "data/chicky_512.png": "animal",
    "data/butterfly.jpg": "animal",
    "hfs/data/000.jpg": "animal",
    "data/messi5.jpg": "people",
    "data/basketball1.png": "people",
    "data/building.jpg": "building",
    "data/home.jpg": "building",
    "data/leuvenA.jpg": "street",
    "data/licenseplate_motion.jpg": "street",
    "text/scenetext01.jpg": "street",
    "text/scenetext02.jpg": "street",
    "text/scenetext03.jpg": "street",
    "text/scenetext04.jpg": "street",
    "text/scenetext05.jpg": "street",
    "text/scenetext06.jpg": "street",
    "data/board.jpg": "object",
    "data/stuff.jpg": "indoor",
    "data/aero1.jpg": "indoor",
    "data/rubberwhale1.png": "indoor",
    "data/box_in_scene.png": "indoor",
    "data/text_defocus.jpg": "object",
    "data/aloeL.jpg": "plant",
    "alphamat/input_images/plant.jpg": "plant",
    "hfs/data/001.jpg": "landscape",
    "hfs/data/002.jpg": "landscape",
}
OPENCV_LICENCE = ("OpenCV contributors", "Apache-2.0 AND BSD-3-Clause (Debian copyright, Files: *)")
PALAPELI = "usr/share/palapeli/collection"
PALAPELI_PHOTOS = {  # european-honey-bee sits on an aster: left out
    "castle-maintenon.jpg": "building",
    "cincinnati-bridge.jpg": "street",
    "citrus-fruits.jpg": "food",
    "panther-chameleon-female.jpg": "animal",
}
PALAPELI_LICENCE = ("KDE Palapeli authors", "GPL-2+ (Debian copyright, Files: *)")
LOMIRI = "usr/share/backgrounds"
LOMIRI_PHOTOS = {
    "Fossa_by_Jasper_Roks.jpg": ("plant", "Jasper Roks"),
    "Kleiber_by_Lukas_Baubkus.jpg": ("animal", "Lukas Baubkus"),
    "Infinite-Sea_by_Aury88.jpg": ("landscape", "Aury88"),
}
# scikit-image's skimage.data (CC0 or public domain, see its data/README), by group
SKIMAGE_PHOTOS = {
    "astronaut": "people",
    "camera": "people",
    "cat": "animal",
    "coffee": "food",
    "rocket": "object",
    "clock": "object",
    "coins": "object",
    "page": "object",
    "text": "object",
    "brick": "texture",
    "grass": "plant",
    "gravel": "texture",
    "moon": "landscape",
    "hubble_deep_field": "landscape",
    "retina": "medical",
    "immunohistochemistry": "medical",
    "cell": "medical",
    "microaneurysms": "medical",
    "stereo_motorcycle": "street",
}


def read_rcc(path: Path) -> dict[str, bytes]:
    """Every file in a Qt resource file (format versions 1-3), by its path inside it."""
    blob = path.read_bytes()
    if blob[:4] != b"qres":
        raise ValueError(f"{path} is not a Qt resource file")
    version, tree, data, names = struct.unpack(">IIII", blob[4:20])
    node_size = 22 if version >= 2 else 14
    files: dict[str, bytes] = {}

    def name(offset: int) -> str:
        (length,) = struct.unpack(">H", blob[names + offset : names + offset + 2])
        return blob[names + offset + 6 : names + offset + 6 + 2 * length].decode("utf-16-be")

    def walk(index: int, prefix: str) -> None:
        at = tree + index * node_size
        name_offset, flags = struct.unpack(">IH", blob[at : at + 6])
        path_here = f"{prefix}/{name(name_offset)}" if index else ""
        if flags & 2:  # a directory
            count, first = struct.unpack(">II", blob[at + 6 : at + 14])
            for child in range(first, first + count):
                walk(child, path_here)
            return
        (offset,) = struct.unpack(">I", blob[at + 10 : at + 14])
        (size,) = struct.unpack(">I", blob[data + offset : data + offset + 4])
        content = blob[data + offset + 4 : data + offset + 4 + size]
        if flags & 1:  # zlib, after a 4-byte uncompressed size
            content = zlib.decompress(content[4:])
        files[path_here.lstrip("/")] = content

    walk(0, "")
    return files


def credits(readme: str) -> dict[str, tuple[str, str, str]]:
    """GCompris README blocks (Copyright, License, Source, Files) as file -> (author, licence, source)."""
    found: dict[str, tuple[str, str, str]] = {}
    for block in readme.split("\n\n"):
        fields: dict[str, str] = {}
        files: list[str] = []
        key = ""
        for line in block.splitlines():
            head, _, value = line.partition(":")
            if head in ("Copyright", "License", "Source", "Files") and not line.startswith(" "):
                key = head
                if value.strip():
                    fields[key] = value.strip()
            elif key == "Files" and line.strip():
                files.append(line.strip())
        files += fields.get("Files", "").split()
        for file in files:
            found[file] = (fields.get("Copyright", ""), fields.get("License", ""), fields.get("Source", ""))
    return found


def save(image: Image.Image, stem: str) -> str:
    image = image.convert("RGB")
    scale = SHORT_SIDE / min(image.size)
    if scale < 1:
        image = image.resize(
            (round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS
        )
    name = f"{stem}.jpg"
    image.save(HERE / name, quality=QUALITY)
    return name


def collect(debs: Path) -> list[dict[str, str]]:
    rows = []

    def add(image: Image.Image, stem: str, group: str, package: str, where: str, author: str, licence: str):
        rows.append(
            {
                "file": save(image, stem),
                "group": group,
                "package": package,
                "path": where,
                "author": author,
                "licence": licence,
            }
        )

    rcc_dir = debs / "x_gcompris-qt-data" / GCOMPRIS
    for group, rcc, folder, pick, skip in GCOMPRIS_SETS:
        files = read_rcc(rcc_dir / f"{rcc}.rcc")
        known = credits(files[f"{folder}/README"].decode())
        pictures = sorted(p for p in files if p.startswith(folder + "/") and p.endswith(".webp"))
        pictures = [p for p in pictures if Path(p).stem not in skip and "/" not in p[len(folder) + 1 :]]
        if isinstance(pick, int):
            pictures = pictures[::pick]
        for p in pictures:
            author, licence, source = known.get(Path(p).name, ("", "", ""))
            add(
                Image.open(io.BytesIO(files[p])),
                f"gcompris_{Path(folder).name}_{Path(p).stem}",
                group,
                "gcompris-qt-data 3.1-2 (Debian)",
                f"{rcc}.rcc:{p}",
                author,
                f"{licence} {source}".strip(),
            )
    for file, group in OPENCV_PHOTOS.items():
        stem = "opencv_" + file.replace("/", "_").rsplit(".", 1)[0]
        add(
            Image.open(debs / "x_opencv-doc" / OPENCV / file),
            stem,
            group,
            "opencv-doc 4.6.0+dfsg-12 (Debian)",
            f"{OPENCV}/{file}",
            *OPENCV_LICENCE,
        )
    for file, group in PALAPELI_PHOTOS.items():
        add(
            Image.open(debs / "x_palapeli-data" / PALAPELI / file),
            f"palapeli_{Path(file).stem}",
            group,
            "palapeli-data 22.12.3-1 (Debian)",
            f"{PALAPELI}/{file}",
            *PALAPELI_LICENCE,
        )
    for file, (group, author) in LOMIRI_PHOTOS.items():
        add(
            Image.open(debs / "x_lomiri-wallpapers-20.04" / LOMIRI / file),
            f"lomiri_{Path(file).stem}",
            group,
            "lomiri-wallpapers-20.04 20.04.0-2 (Debian)",
            f"{LOMIRI}/{file}",
            author,
            "CC-BY-SA-3.0",
        )
    import matplotlib
    import skimage
    import skimage.data
    from sklearn.datasets import load_sample_image

    for name, group in SKIMAGE_PHOTOS.items():
        array = getattr(skimage.data, name)()
        array = array[0] if name == "stereo_motorcycle" else array
        add(
            Image.fromarray(array),
            f"skimage_{name}",
            group,
            f"scikit-image {skimage.__version__} (PyPI)",
            f"skimage.data.{name}()",
            "see skimage/data/README.txt",
            "CC0 or public domain",
        )
    add(
        Image.fromarray(load_sample_image("china.jpg")),
        "sklearn_china",
        "building",
        "scikit-learn (PyPI)",
        "sklearn.datasets.load_sample_image('china.jpg')",
        "",
        "CC-BY 2.0 (Wikimedia)",
    )
    add(
        Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"),
        "matplotlib_grace_hopper",
        "people",
        "matplotlib (PyPI)",
        "mpl-data/sample_data/grace_hopper.jpg",
        "US Navy",
        "public domain",
    )
    order = np.random.default_rng(SEED).permutation(len(rows))
    held = set(order[: round(HELD_OUT * len(rows))].tolist())
    for i, row in enumerate(rows):
        row["split"] = "held_out" if i in held else "choice"
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--debs", type=Path, required=True, help="folder of the x_PACKAGE folders dpkg -x made")
    rows = collect(p.parse_args().debs)
    with open(HERE / "photos.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"{len(rows)} photos, {sum(r['split'] == 'held_out' for r in rows)} held out")


if __name__ == "__main__":
    main()
