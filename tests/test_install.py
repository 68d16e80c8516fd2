"""The package works anywhere: the shipped classifier is loaded once however many threads ask
for it at once, and LiteRT runs on as many threads as this process has CPUs."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from helpers import REPO_ROOT

from flower_demo import core


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
