"""The package works anywhere: a wheel built from the checkout carries the shipped model and
answers a photo from any folder of a fresh environment, building it leaves the checkout as it
was, the shipped classifier is loaded once however many threads ask for it at once, and LiteRT
runs on as many threads as this process has CPUs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers import REPO_ROOT, fixture_photos, label_id

from flower_demo import core

SHIPPED_FILES = [
    *["README.md", "label_map.json", "metadata.json", "model.keras", "model.tflite", "ood.npz"],
    "thumbnails",  # a folder: the reference photos
]
SCRATCH = ("__pycache__", ".pytest_cache", ".ruff_cache")  # what running Python or a linter leaves


def run(*command: object, cwd: Path = REPO_ROOT) -> str:
    """Run `command` without the checkout on PYTHONPATH; its stdout, or the failure in full."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def untracked_files() -> set[str]:
    """What git shows as untracked or ignored in the checkout (build/, *.egg-info, ...)."""
    lines = run("git", "status", "--porcelain", "--ignored", "--untracked-files=all").splitlines()
    return {line for line in lines if line[:2] in ("??", "!!") and not any(s in line for s in SCRATCH)}


@pytest.mark.slow
def test_wheel_serves_the_shipped_model_from_any_folder(shipped_model_dir, shipped_metadata, tmp_path):
    """pip wheel, then a fresh venv (reusing the installed packages, no network) answers a photo
    through flower-predict and flower_demo.predict from a folder far from the checkout."""
    before = untracked_files()
    run(sys.executable, "-m", "pip", "wheel", REPO_ROOT, "--no-deps", "--no-build-isolation", "-w", tmp_path)
    (wheel,) = tmp_path.glob("flower_demo-*.whl")
    assert untracked_files() == before  # no build/, no flower_demo.egg-info/
    names = zipfile.ZipFile(wheel).namelist()
    shipped = [n.split("/", 2)[2] for n in names if n.startswith("flower_demo/shipped/")]
    assert sorted({n.split("/")[0] for n in shipped}) == SHIPPED_FILES
    thumbnails = shipped_metadata["files"]["thumbnails"]["files"]
    assert sum(n.startswith("thumbnails/") for n in shipped) == thumbnails
    assert "flower_demo/oxford_class_names.txt" in names

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv)
    python = venv / "bin" / "python"
    run(python, "-m", "pip", "install", "--no-deps", "--no-index", wheel)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    photo = fixture_photos()[0]
    expected = shipped_metadata["class_names"][label_id(photo) - 1]

    (answer,) = json.loads(run(venv / "bin" / "flower-predict", photo, "--json", cwd=elsewhere))
    assert answer["class_names"][0] == expected
    assert [n["class_name"] for n in answer["neighbours"]] == [expected] * 3  # its reference photos ...
    assert all(Path(n["image"]).is_relative_to(venv.resolve()) for n in answer["neighbours"])  # ... installed
    code = (
        "import flower_demo; from flower_demo import data, model_files\n"
        f"print(flower_demo.predict({str(photo)!r}).class_names[0])\n"
        "print(model_files.INSTALLED, model_files.SHIPPED_MODEL_DIR, len(data.oxford_class_names()))"
    )
    name, where = run(python, "-c", code, cwd=elsewhere).splitlines()
    assert name == expected
    installed, model_dir, classes = where.split()
    assert installed == "True" and Path(model_dir).is_relative_to(venv.resolve()) and classes == "102"


def test_the_shipped_classifier_is_loaded_once_by_threads_asking_at_once(shipped_model_dir, monkeypatch):
    loads = []

    class CountedClassifier(core.Classifier):
        def __init__(self, *args, **kwargs) -> None:
            loads.append(threading.get_ident())
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(core, "Classifier", CountedClassifier)
    monkeypatch.setattr(core, "_shipped", None)  # not loaded yet (restored afterwards)
    threads = 4
    start = threading.Barrier(threads)

    def ask(_: int) -> core.Classifier:
        start.wait()
        return core.get_classifier(None)

    with ThreadPoolExecutor(threads) as pool:
        got = list(pool.map(ask, range(threads)))
    assert len(loads) == 1
    assert isinstance(got[0], CountedClassifier) and all(c is got[0] for c in got)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity is Linux's")
@pytest.mark.parametrize("asked, threads", [(None, 1), ("3", 3)])
def test_litert_threads_are_the_cpus_this_process_may_use(asked, threads):
    """A process allowed one CPU (as in a container or under taskset) runs one thread, whatever
    the host has; FLOWER_DEMO_THREADS still wins."""
    code = (
        "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\n"
        "from flower_demo import core; print(core.NUM_THREADS)"
    )
    env = {k: v for k, v in os.environ.items() if k != core.THREADS_ENV}
    env.update({} if asked is None else {core.THREADS_ENV: asked})
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) == threads
