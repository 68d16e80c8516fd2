"""Soak benchmark of the hosted app (not a test: it takes minutes and its figures depend on the machine).

    python -m benchmarks.soak                      # 1,000 calls from 20 clients
    python -m benchmarks.soak --calls 200 --clients 5
    python -m benchmarks.soak --calls 10000 --clients 20   # the long soak: does memory level off?

Starts `python app.py` on a free local port, as a Space does, then sends `/predict` calls from
concurrent gradio_client clients, each with its own connection. One call in BAD_EVERY sends a
bad file (empty, text, truncated JPEG, decompression-bomb PNG, a zip archive under its own
extension); the others send real photos (examples/ and tests/fixtures/flowers/). It checks that
every photo gets the same answer as flower_demo.predict() gives in this process, every bad file a
one-line error naming it, and no call hangs (CALL_TIMEOUT); and that the server's resident memory
grows by less than MAX_LATE_GROWTH_MB over the last half of the calls (a leak keeps growing there).
Its growth from call RSS_FROM is printed too, with no limit: it includes the allocator's warm-up,
which took about 5,000 calls in the 10,000-call runs of BENCHMARKS.md.
The memory is that of the app's process tree, read after call RSS_FROM, every SAMPLE_EVERY calls,
half-way and at the end. It prints latency percentiles, throughput, the memory at each reading and the
machine's load average; exit status 1 if a check failed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from benchmarks import serving
from flower_demo import core, export, model_files
from flower_demo.errors import FlowerDemoError

PHOTOS = sorted((model_files.REPO_ROOT / "examples").glob("*.jpg")) + sorted(
    export.FIXTURE_PHOTOS.glob("*.jpg")
)
CALLS = 1000
CLIENTS = 20
BAD_EVERY = 5  # one call in five sends a bad file
RSS_FROM = 100  # memory growth is measured from this many finished calls to the last
SAMPLE_EVERY = 500  # finished calls between memory readings
MAX_LATE_GROWTH_MB = 10  # growth allowed over the last half of the calls
CALL_TIMEOUT = 120  # seconds; a call still running then counts as hung
START_TIMEOUT = 300  # seconds for `python app.py` to load the model and answer


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


def start_app(port: int) -> subprocess.Popen:
    """`python app.py` serving its default model on `port`, once it answers."""
    server = serving.start_app(port, subprocess.DEVNULL)
    try:
        serving.connect(server, port, time.perf_counter(), START_TIMEOUT)
    except FlowerDemoError as exc:
        serving.stop_tree(server)
        raise SystemExit(f"error: {exc}") from None
    return server


@dataclass
class Soak:
    """One soak run: what each call sends and must get back, and what the client threads record
    (under `lock`)."""

    url: str
    calls: int
    samples: set[int]  # after these many finished calls the server's memory is read
    server: psutil.Process
    expected: dict[Path, core.Prediction]
    bad: dict[str, tuple[Path, str]]
    lock: threading.Lock = field(default_factory=threading.Lock)
    latencies: dict[str, list[float]] = field(default_factory=lambda: {"photo": [], "bad": []})
    failures: list[str] = field(default_factory=list)
    rss: dict[int, float] = field(default_factory=dict)  # finished calls -> app's tree RSS, MiB
    started: int = 0
    finished: int = 0
    began: float = field(default_factory=time.perf_counter)

    def source(self, call: int) -> tuple[str, Path]:
        """What call number `call` sends: ("photo", a photo) or (name of a bad file, its path)."""
        if call % BAD_EVERY == BAD_EVERY - 1:
            kind = list(self.bad)[(call // BAD_EVERY) % len(self.bad)]
            return kind, self.bad[kind][0]
        return "photo", PHOTOS[call % len(PHOTOS)]

    def check(self, source: Path, kind: str, result: object, error: Exception | None) -> str | None:
        """None if the answer is right, else what went wrong."""
        if kind == "photo":
            if error is not None:
                return f"{source.name}: error {error!r}"
            chart, _, photos = result  # the chart, the verdict, the reference photos
            rows = [(c["label"], c["confidence"]) for c in chart["confidences"]]
            want = self.expected[source]
            names_ok = [n for n, _ in rows] == want.class_names[: len(rows)]
            probs_ok = np.allclose([p for _, p in rows], want.probabilities[: len(rows)], atol=1e-4)
            shown = want.evidence
            got = len(photos.get("value") or [])
            if names_ok and probs_ok and got == len(shown):
                return None
            return f"{source.name}: {rows[:2]} != {want.top1}, or {got} reference photos, not {len(shown)}"
        message = str(error) if isinstance(error, AppError) else ""
        _, reason = self.bad[kind]
        if not (message.startswith(source.name) and reason in message and "\n" not in message):
            return f"{kind}: {error!r} / {result!r}"
        return None

    def next_call(self) -> int | None:
        with self.lock:
            if self.started == self.calls:
                return None
            self.started += 1
            return self.started - 1

    def client(self) -> None:
        """One client thread: its own connection, calls until none are left."""
        client = Client(self.url, verbose=False)
        while (call := self.next_call()) is not None:
            kind, source = self.source(call)
            started = time.perf_counter()
            result, error = None, None
            try:
                job = client.submit(handle_file(str(source)), api_name="/predict")
                result = job.result(timeout=CALL_TIMEOUT)
            except Exception as exc:  # a refusal is an AppError; a hang, TimeoutError
                error = exc
            elapsed = time.perf_counter() - started
            problem = self.check(source, kind, result, error)
            with self.lock:
                self.latencies["photo" if kind == "photo" else "bad"].append(elapsed)
                if problem:
                    self.failures.append(f"call {call}: {problem}")
                self.finished += 1
                if self.finished in self.samples:  # under the lock: no other call finishes meanwhile
                    self.sample()

    def sample(self) -> None:
        """Reads the memory of app.py and its children now, and says so (a long run shows its
        progress)."""
        self.rss[self.finished] = serving.app_tree(self.server.pid)[0] / 2**20
        own = self.server.memory_info()  # app.py's own: anonymous memory, pages of files (libraries, model)
        seconds = time.perf_counter() - self.began
        print(
            f"  {self.finished} calls in {seconds:.0f} s: server RSS {self.rss[self.finished]:.1f} MiB "
            f"(app.py's anonymous {(own.rss - own.shared) / 2**20:.1f}, files {own.shared / 2**20:.1f})",
            flush=True,
        )

    def run(self, clients: int) -> float:
        """All calls from `clients` threads; the wall seconds they took."""
        self.began = time.perf_counter()
        threads = [threading.Thread(target=self.client) for _ in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return time.perf_counter() - self.began


def sample_points(calls: int, rss_from: int, every: int) -> set[int]:
    """The finished-call counts after which the server's memory is read: `rss_from`, every
    `every` calls, half-way and the last."""
    return {rss_from, calls // 2, calls, *range(every, calls, every)}


def memory_report(soak: Soak, rss_from: int, max_late_growth: float) -> bool:
    """Prints the memory's growth from `rss_from` and over the last half of the calls (the readings
    themselves were printed as they were taken); whether the last half grew less than its limit."""
    half, last = soak.calls // 2, soak.rss[soak.calls]
    growth, late = last - soak.rss[rss_from], last - soak.rss[half]
    print(
        f"server RSS: {soak.rss[rss_from]:.0f} MiB after call {rss_from}, {last:.0f} MiB "
        f"after call {soak.calls}: {growth:+.1f} MiB (warm-up included, no limit)"
    )
    print(f"last half (calls {half} to {soak.calls}): {late:+.1f} MiB (limit {max_late_growth:g})")
    return late < max_late_growth


def report(
    soak: Soak, wall: float, loads: tuple[tuple[float, ...], tuple[float, ...]], args: argparse.Namespace
) -> int:
    """Prints the figures and failures; the exit status (1 if a check failed)."""
    everything = soak.latencies["photo"] + soak.latencies["bad"]
    print(f"load average before {loads[0][0]:.2f}, after {loads[1][0]:.2f} (1 min), CPUs {os.cpu_count()}")
    for name, values in (
        ("photos", soak.latencies["photo"]),
        ("bad files", soak.latencies["bad"]),
        ("all", everything),
    ):
        p50, p95, top = np.percentile(values, [50, 95, 100])
        print(f"{name:9}: {len(values):5d} calls, latency p50 {p50:.2f} s, p95 {p95:.2f} s, max {top:.2f} s")
    print(f"throughput: {len(everything) / wall:.1f} calls/s ({len(everything)} calls in {wall:.0f} s)")
    memory_ok = memory_report(soak, args.rss_from, args.max_late_growth)
    print(f"wrong answers, unclear errors or hangs: {len(soak.failures)}")
    for failure in soak.failures[:10]:
        print("  " + failure)
    return 0 if not soak.failures and memory_ok else 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=CALLS)
    parser.add_argument("--clients", type=int, default=CLIENTS)
    parser.add_argument(
        "--sample-every", type=int, default=SAMPLE_EVERY, help="calls between memory readings"
    )
    parser.add_argument(
        "--max-late-growth", type=float, default=MAX_LATE_GROWTH_MB, help="MiB, over the last half"
    )
    args = parser.parse_args(argv)
    if args.calls < 2 or args.clients < 1 or args.sample_every < 1:
        parser.error("--calls needs at least 2, --clients and --sample-every at least 1")
    args.rss_from = min(RSS_FROM, args.calls // 2)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="soak_") as folder:
        # Gradio's upload cache is /tmp/gradio for every app on the machine, and a file's path is its
        # content's hash: another app's clean-up would delete the uploads this one is about to read.
        os.environ["GRADIO_TEMP_DIR"] = str(Path(folder) / "gradio")
        (Path(folder) / "bad").mkdir()
        return soak_app(args, bad_files(Path(folder) / "bad"), Path(folder) / "gradio")


def soak_app(args: argparse.Namespace, bad: dict[str, tuple[Path, str]], uploads: Path) -> int:
    """Starts the app, runs the soak and reports it (the upload cache `uploads` included)."""
    expected = {p: core.predict(p, top_k=core.DEFAULT_TOP_K) for p in PHOTOS}  # the answers to match
    load_before = os.getloadavg()
    port = serving.free_port()
    server = start_app(port)
    url = serving.app_url(port)
    print(f"app.py (pid {server.pid}) at {url}: {args.calls} calls from {args.clients} clients", flush=True)
    samples = sample_points(args.calls, args.rss_from, args.sample_every)
    soak = Soak(url, args.calls, samples, psutil.Process(server.pid), expected, bad)
    try:
        wall = soak.run(args.clients)
    finally:
        load_after = os.getloadavg()
        serving.stop_tree(server)
    cached = [f for f in uploads.rglob("*") if f.is_file()]
    print(f"upload cache: {len(cached)} files, {sum(f.stat().st_size for f in cached) / 2**20:.1f} MiB")
    return report(soak, wall, (load_before, load_after), args)


if __name__ == "__main__":
    sys.exit(main())
