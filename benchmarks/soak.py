"""Soak benchmark of the hosted app (not a test: it takes minutes and its figures depend on the machine).

    python benchmarks/soak.py                      # 1,000 calls from 20 clients
    python benchmarks/soak.py --calls 200 --clients 5

Starts `python app.py` on a free local port, as a Space does, then sends `/predict` calls from
concurrent gradio_client clients, each with its own connection. One call in BAD_EVERY sends a
bad file (empty, text, truncated JPEG, decompression-bomb PNG, a zip archive under its own
extension); the others send real photos (examples/ and tests/fixtures/flowers/). It checks that
every photo gets the same answer as flower_demo.predict() gives in this process, every bad file a
one-line error naming it, and no call hangs (CALL_TIMEOUT); and that the server's resident memory
grows by less than MAX_GROWTH_MB from call RSS_FROM to the last. It prints latency percentiles,
throughput and the machine's load average; exit status 1 if a check failed.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import psutil
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import flower_demo  # noqa: E402

PHOTOS = sorted((ROOT / "examples").glob("*.jpg")) + sorted(
    (ROOT / "tests" / "fixtures" / "flowers").glob("*.jpg")
)
CALLS = 1000
CLIENTS = 20
BAD_EVERY = 5  # one call in five sends a bad file
RSS_FROM = 100  # memory growth is measured from this many finished calls to the last
MAX_GROWTH_MB = 50
CALL_TIMEOUT = 120  # seconds; a call still running then counts as hung
START_TIMEOUT = 300  # seconds for `python app.py` to load the model and answer
TOP_K = 5


def bad_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """Files the app must refuse: name -> (path, what the error says)."""
    photo = PHOTOS[0].read_bytes()
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("This is a text file, not a photo.\n")
    (folder / "truncated.jpg").write_bytes(photo[: len(photo) // 2])
    Image.new("1", (9000, 9000)).save(folder / "bomb.png")  # 81 Mpx in ~10 kB
    with zipfile.ZipFile(folder / "photos.zip", "w") as archive:
        archive.write(PHOTOS[0], PHOTOS[0].name)
    return {
        "empty": (folder / "empty.jpg", "empty"),
        "text": (folder / "notes.jpg", "not an image"),
        "truncated": (folder / "truncated.jpg", "truncated"),
        "bomb": (folder / "bomb.png", "too large"),
        "wrong extension": (folder / "photos.zip", "not an image"),
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_app(port: int) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1"}
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "app.py")],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"error: app.py exited with status {server.returncode}")
        try:
            Client(url, verbose=False)
            return server, url
        except Exception:
            time.sleep(2)
    server.kill()
    raise SystemExit(f"error: app.py did not answer within {START_TIMEOUT} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=CALLS)
    parser.add_argument("--clients", type=int, default=CLIENTS)
    args = parser.parse_args()
    rss_from = min(RSS_FROM, args.calls // 2)

    expected = {p: flower_demo.predict(p, top_k=TOP_K) for p in PHOTOS}  # the answers to match
    folder = Path(tempfile.mkdtemp(prefix="soak_"))
    bad = bad_files(folder)
    bad_names = list(bad)
    load_before = os.getloadavg()
    server, url = start_app(free_port())
    process = psutil.Process(server.pid)
    print(f"app.py (pid {server.pid}) at {url}: {args.calls} calls from {args.clients} clients")

    lock = threading.Lock()
    next_call = iter(range(args.calls))
    latencies: dict[str, list[float]] = {"photo": [], "bad": []}
    failures: list[str] = []
    finished = 0
    rss: dict[str, float] = {}

    def check(call: int, source: Path, kind: str, result: object, error: Exception | None) -> str | None:
        """None if the answer is right, else what went wrong."""
        if kind == "photo":
            if error is not None:
                return f"{source.name}: error {error!r}"
            chart, _ = result
            rows = [(c["label"], c["confidence"]) for c in chart["confidences"]]
            want = expected[source]
            names_ok = [n for n, _ in rows] == want.class_names[: len(rows)]
            probs_ok = np.allclose([p for _, p in rows], want.probabilities[: len(rows)], atol=1e-4)
            return None if names_ok and probs_ok else f"{source.name}: {rows[:2]} != {want.top1}"
        message = str(error) if isinstance(error, AppError) else ""
        _, reason = bad[kind]
        if not (message.startswith(source.name) and reason in message and "\n" not in message):
            return f"{kind}: {error!r} / {result!r}"
        return None

    def worker() -> None:
        nonlocal finished
        client = Client(url, verbose=False)
        while True:
            with lock:
                call = next(next_call, None)
            if call is None:
                return
            if call % BAD_EVERY == BAD_EVERY - 1:
                kind = bad_names[(call // BAD_EVERY) % len(bad_names)]
                source = bad[kind][0]
            else:
                kind, source = "photo", PHOTOS[call % len(PHOTOS)]
            started = time.perf_counter()
            result, error = None, None
            try:
                job = client.submit(handle_file(str(source)), api_name="/predict")
                result = job.result(timeout=CALL_TIMEOUT)
            except Exception as exc:  # a refusal is an AppError; a hang, TimeoutError
                error = exc
            elapsed = time.perf_counter() - started
            problem = check(call, source, kind, result, error)
            with lock:
                latencies["photo" if kind == "photo" else "bad"].append(elapsed)
                if problem:
                    failures.append(f"call {call}: {problem}")
                finished += 1
                if finished in (rss_from, args.calls):
                    rss[str(finished)] = process.memory_info().rss / 2**20

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(args.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    load_after = os.getloadavg()
    server.terminate()
    server.wait(timeout=60)

    everything = latencies["photo"] + latencies["bad"]
    growth = rss[str(args.calls)] - rss[str(rss_from)]
    print(
        f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1 min), CPUs {os.cpu_count()}"
    )
    for name, values in (
        ("photos", latencies["photo"]),
        ("bad files", latencies["bad"]),
        ("all", everything),
    ):
        p50, p95, top = np.percentile(values, [50, 95, 100])
        print(f"{name:9}: {len(values):5d} calls, latency p50 {p50:.2f} s, p95 {p95:.2f} s, max {top:.2f} s")
    print(f"throughput: {len(everything) / wall:.1f} calls/s ({len(everything)} calls in {wall:.0f} s)")
    print(
        f"server RSS: {rss[str(rss_from)]:.0f} MiB after call {rss_from}, {rss[str(args.calls)]:.0f} MiB "
        f"after call {args.calls}: {growth:+.1f} MiB (limit {MAX_GROWTH_MB})"
    )
    print(f"wrong answers, unclear errors or hangs: {len(failures)}")
    for failure in failures[:10]:
        print("  " + failure)
    return 0 if not failures and growth < MAX_GROWTH_MB else 1


if __name__ == "__main__":
    sys.exit(main())
