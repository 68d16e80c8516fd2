"""The one exception type the public API raises for anything a user can get wrong, the one line
that names what to install when an optional package is missing, and how a command ends."""

import atexit
import gc
import sys
from collections.abc import Callable
from typing import Any

TRAIN_INSTALL = 'pip install "flower_demo[train]" (in a checkout: pip install -r requirements-train.txt)'
# The optional packages by module: training, evaluation and calibration need the train extra; a
# plot (`predict --plot`, `evaluate --confusion-matrix`) needs matplotlib alone.
OPTIONAL_PACKAGES = {
    "tensorflow": ("TensorFlow", TRAIN_INSTALL),
    "keras": ("Keras", TRAIN_INSTALL),
    "tensorflow_datasets": ("tensorflow-datasets", TRAIN_INSTALL),
    "tensorflow_hub": ("tensorflow-hub", TRAIN_INSTALL),
    "scipy": ("SciPy", TRAIN_INSTALL),
    "sklearn": ("scikit-learn", TRAIN_INSTALL),
    "skimage": ("scikit-image", TRAIN_INSTALL),
    "matplotlib": ("matplotlib", "pip install matplotlib"),
}


class FlowerDemoError(ValueError):
    """A bad image, path, model, label map or argument; the message is one readable line."""


def first_line(exc: BaseException) -> str:
    """A library exception as one readable line (its first line, or its type if it says nothing)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def missing_package(exc: ModuleNotFoundError) -> FlowerDemoError:
    """An optional package's absence as one line naming what to install. Any other missing module
    (the project's own, a serving requirement) is a broken install, not a choice: `exc` again."""
    module = (exc.name or "").split(".")[0]
    if module not in OPTIONAL_PACKAGES:
        raise exc
    package, install = OPTIONAL_PACKAGES[module]
    return FlowerDemoError(f"this needs {package}, which is not installed: {install}")


def skip_last_collection() -> None:
    """Let this process end without the garbage collector's last pass over what is still alive.

    TensorFlow and Keras leave about half a million objects behind, and the interpreter's collection
    at exit walks and frees them one by one: 1.2 to 1.5 s of CPU at the end of every command that
    imported them (measured on a 2-core CPU machine; about a sixth of a short command), for memory
    the operating system takes back at once. gc.freeze() at exit puts them out of its reach; atexit
    handlers, file flushes and reference-counted clean-up still run, and nothing changes before exit.
    """
    atexit.unregister(gc.freeze)  # registered once, however many commands a process runs
    atexit.register(gc.freeze)


def exit_status(work: Callable[[], Any], failed: int = 1) -> int:
    """Run a command's work: 0 when it ends, else `failed` with one `error:` line on stderr for what
    a user can mend (a FlowerDemoError, or an optional package that is not installed). The process
    then ends without its last garbage collection (skip_last_collection)."""
    skip_last_collection()
    try:
        work()
    except FlowerDemoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return failed
    except ModuleNotFoundError as exc:  # only requirements.txt installed
        print(f"error: {missing_package(exc)}", file=sys.stderr)
        return failed
    return 0
