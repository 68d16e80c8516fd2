"""The app as a separate process, for the benchmarks (bench.py's app figures, soak.py) and the tests
that serve it: a free local port, `python app.py` started on it, its first answer awaited, the
memory of its process tree, and stopping it with whatever it started.

psutil and gradio_client are imported by the functions that use them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

from flower_demo import model_files
from flower_demo.errors import FlowerDemoError

APP_SCRIPT = model_files.REPO_ROOT / "app.py"
HOST = "127.0.0.1"  # the app is served on this machine only
POLL_S = 0.1  # how often to probe the starting app's port


def free_port() -> int:
    """A TCP port on HOST that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def app_url(port: int) -> str:
    return f"http://{HOST}:{port}/"


def listening(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=1).close()
        return True
    except OSError:
        return False


def start_app(port: int, output: IO[str] | int, model: Path | None = None) -> subprocess.Popen:
    """`python app.py` from the repository root on HOST:port, serving `model` (None: the app's
    default), its stdout and stderr to `output` (a file, or subprocess.DEVNULL)."""
    env = {
        **os.environ,
        "GRADIO_SERVER_NAME": HOST,
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_ANALYTICS_ENABLED": "False",
    }
    if model is not None:
        env["FLOWER_DEMO_MODEL"] = str(model)
    return subprocess.Popen(
        [sys.executable, str(APP_SCRIPT)],
        cwd=model_files.REPO_ROOT,
        env=env,
        stdout=output,
        stderr=subprocess.STDOUT,
    )


def connect(proc: subprocess.Popen, port: int, started: float, timeout_s: float) -> tuple[Any, float]:
    """A gradio_client Client of the app `proc` once it serves on `port`, and the seconds from
    `started` (a time.perf_counter reading) until its port was open. The error says whether the
    app exited or gave no answer within `timeout_s` of `started`."""
    from gradio_client import Client

    listening_s = None
    while True:
        if proc.poll() is not None:
            raise FlowerDemoError(f"app exited with code {proc.returncode}")
        if time.perf_counter() - started > timeout_s:
            raise FlowerDemoError(f"app gave no answer within {timeout_s:.0f} s")
        if not listening(port):  # a cheap probe: failed Client() calls cost ~0.1 s of CPU each
            time.sleep(POLL_S)
            continue
        listening_s = listening_s or time.perf_counter() - started
        try:
            return Client(app_url(port), verbose=False), listening_s
        except Exception:  # listening but not serving yet (404 on /config, ...)
            time.sleep(POLL_S)


def app_tree(pid: int) -> tuple[int, bool]:
    """Resident bytes of process `pid` and its descendants, and whether any has TensorFlow's own
    library mapped (LiteRT's runtime lives under ai_edge_litert/, so it does not count)."""
    import psutil

    root = psutil.Process(pid)
    total, tensorflow = 0, False
    for proc in [root, *root.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
            tensorflow |= any("/tensorflow/" in m.path for m in proc.memory_maps())
        except psutil.Error:
            pass
    return total, tensorflow


def stop_tree(proc: subprocess.Popen) -> None:
    """Terminate the app we started and whatever it started, by process id."""
    import psutil

    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        children = []
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    for child in children:
        try:
            child.terminate()
            child.wait(timeout=5)
        except psutil.TimeoutExpired:
            child.kill()
        except psutil.Error:
            pass
