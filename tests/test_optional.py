"""With only requirements.txt installed, every command's --help works, and a command that needs an
optional package that is missing says in one `error:` line what to install, with no traceback
(errors.missing_package: the train extra for TensorFlow, Keras, SciPy, scikit-learn; matplotlib
alone for a plot). Every command also ends without the garbage collector's last pass
(errors.skip_last_collection), however it ends.

The optional packages are hidden from a separate Python process (HIDE): every finder on its
sys.meta_path is wrapped so that it finds none of them, as in an environment where they were never
installed (an import raises ModuleNotFoundError, importlib.util.find_spec returns None). Those
processes import no TensorFlow, so they start in about a second each.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO_ROOT, error_lines, fixture_photos

from flower_demo.errors import TRAIN_INSTALL, missing_package

OPTIONAL = (
    "tensorflow",
    "keras",
    "tensorflow_datasets",
    "tensorflow_hub",
    "scipy",
    "sklearn",
    "skimage",
    "matplotlib",
)
COMMANDS = ("predict", "train", "evaluate", "calibrate", "export")
# python -c HIDE MODULES MODULE ARGS... runs `python -m MODULE ARGS...` with MODULES (a,b,...) hidden.
HIDE = """
import runpy, sys

class Hidden:
    def __init__(self, finder, names):
        self.finder, self.names = finder, names

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.names:
            return None
        return self.finder.find_spec(name, path, target)

    def invalidate_caches(self):
        getattr(self.finder, "invalidate_caches", lambda: None)()

names = set(sys.argv[1].split(","))
sys.meta_path[:] = [Hidden(finder, names) for finder in sys.meta_path]
sys.argv[:] = sys.argv[2:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def run_without_optional(module: str, *args: object) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS...` from the repository root, the optional packages hidden."""
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-c", HIDE, ",".join(OPTIONAL), module, *map(str, args)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": path},
    )


@pytest.mark.parametrize("command", COMMANDS)
def test_help_needs_no_optional_package(command: str) -> None:
    result = run_without_optional(f"flower_demo.{command}", "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m flower_demo.") and not result.stderr


@pytest.mark.parametrize(
    ("command", "args", "code", "install"),
    [
        (
            "train",
            ["--image-folder", "examples"],
            1,
            f"this needs Keras, which is not installed: {TRAIN_INSTALL}",
        ),
        (
            "evaluate",
            ["--data-dir", "examples", "--split", "test"],
            1,
            f"this needs SciPy, which is not installed: {TRAIN_INSTALL}",
        ),
        (
            "export",
            ["--model", "weights", "--out", "{tmp}"],
            1,
            f"this needs Keras, which is not installed: {TRAIN_INSTALL}",
        ),
        (
            "predict",
            ["{photo}", "--engine", "keras"],
            2,
            f"this needs Keras, which is not installed: {TRAIN_INSTALL}",
        ),
        (
            "predict",
            ["{photo}", "--plot", "{tmp}/top5.png"],
            1,
            "this needs matplotlib, which is not installed: pip install matplotlib",
        ),
    ],
    ids=["train", "evaluate", "export", "predict-keras", "predict-plot"],
)
def test_a_missing_package_is_one_line_naming_the_install(
    command: str, args: list[str], code: int, install: str, tmp_path: Path
) -> None:
    fill = {"tmp": tmp_path, "photo": fixture_photos()[0]}
    result = run_without_optional(f"flower_demo.{command}", *[arg.format(**fill) for arg in args])
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and errors[0].endswith(install), result.stderr
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_a_module_that_is_no_option_is_not_explained_away() -> None:
    """A missing module of the project itself, or of the serving requirements, is a broken install."""
    for name in ("flower_demo.nowhere", "numpy", None):
        exc = ModuleNotFoundError(f"No module named {name!r}", name=name)
        with pytest.raises(ModuleNotFoundError):
            missing_package(exc)
    assert "pip install matplotlib" in str(missing_package(ModuleNotFoundError(name="matplotlib.figure")))


def test_train_help_names_every_backbone() -> None:
    """train's help lists the backbones without importing Keras (cli.BACKBONE_NAMES): the registry's."""
    from flower_demo import models
    from flower_demo.train import cli

    assert cli.BACKBONE_NAMES == ", ".join(models.BACKBONES)


# python -c PROBE MODULE ARGS... runs `python -m MODULE ARGS...` and says at exit, after every atexit
# handler the command registered has run, whether gc.freeze() put the objects left out of reach.
PROBE = """
import atexit, gc, runpy, sys
atexit.register(lambda: print("frozen at exit:", gc.get_freeze_count() > 0))
sys.argv[:] = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize(
    "module, args",
    [
        ("flower_demo.predict", ["{tmp}/no_such_photo.jpg"]),  # its own error handling
        ("flower_demo.evaluate", ["--data-dir", "{tmp}/no_such_folder"]),  # errors.exit_status
    ],
    ids=["predict", "evaluate"],
)
def test_a_command_skips_the_last_collection(module: str, args: list[str], tmp_path: Path) -> None:
    """The freeze is what ends a command; a process that ran none keeps Python's usual exit."""
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    run = lambda *argv: subprocess.run(  # noqa: E731
        [sys.executable, "-c", PROBE, *argv], cwd=REPO_ROOT, capture_output=True, text=True,
        timeout=120, env={**os.environ, "PYTHONPATH": path},
    )  # fmt: skip
    result = run(module, *[arg.format(tmp=tmp_path) for arg in args])
    assert result.returncode != 0, result.stderr  # each of these fails, one line, before any work
    frozen = result.stdout.strip().splitlines()[-1]
    assert frozen == "frozen at exit: True", result.stdout + result.stderr
    assert run("json.tool", "--help").stdout.strip().endswith("frozen at exit: False")
