"""How setuptools builds flower_demo; what the project is (name, dependencies, commands) is in
pyproject.toml. Two things pyproject.toml cannot say:

- The wheel carries the shipped model: weights/ and label_map.json, which stay at the
  repository's root, become flower_demo/shipped/ in the wheel, where model_files finds them once
  installed (a checkout, or an editable install, serves weights/ where it is).
- setuptools' scratch folders (build/, flower_demo.egg-info/) go to a temporary folder removed at
  exit, so that `pip install .` and `pip wheel .` leave the source tree as they found it.
"""

import atexit
import os
import shutil
import tempfile

from setuptools import setup
from setuptools.command.build_py import build_py

# The shipped model's files (MANIFEST.in names the same for the source distribution).
SHIPPED = [
    "weights/model.tflite",
    "weights/model.keras",
    "weights/metadata.json",
    "weights/ood.npz",
    "weights/thumbnails",  # the reference photos shown beside answers, a folder
    "weights/README.md",  # the model card
    "label_map.json",
]
SHIPPED_PACKAGE_DIR = os.path.join("flower_demo", "shipped")
SCRATCH = tempfile.mkdtemp(prefix="flower_demo-build-")
atexit.register(shutil.rmtree, SCRATCH, ignore_errors=True)


class BuildWithShippedModel(build_py):
    """build_py, plus the shipped model's files copied into flower_demo/shipped/."""

    def run(self) -> None:
        super().run()
        target = os.path.join(self.build_lib, SHIPPED_PACKAGE_DIR)
        self.mkpath(target)
        for source in SHIPPED:  # a checkout without a trained model builds a package without it
            if os.path.isfile(source):
                self.copy_file(source, os.path.join(target, os.path.basename(source)))
            elif os.path.isdir(source):
                self.copy_tree(source, os.path.join(target, os.path.basename(source)))


setup(
    cmdclass={"build_py": BuildWithShippedModel},
    options={"build": {"build_base": SCRATCH}, "egg_info": {"egg_base": SCRATCH}},
)
