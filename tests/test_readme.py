"""Every command line README.md shows runs as written, the way users run it.

The test reads README.md's bash blocks, and runs each `python -m flower_demo...` command as a
subprocess in a scratch folder that holds a copy of `weights/` and `label_map.json`, so commands that
write (`calibrate`, `export`, `--report docs/report`) never touch the repository. The placeholders
are filled with data the test builds: DATA_DIR is a Flowers-102 folder in the dataset's own layout
made of real photos (examples/ for train, the fixture photos for validation and test), photo.jpg a
fixture photo, my_photos/ a class-per-folder tree. Two things are changed, and only these:
the ImageNet weights (`--weights imagenet`, also the default: a download) become a local MobileNetV2
weights file, and training commands get TRAIN_SPEEDUP appended (argparse lets the last value win),
so that a training run takes seconds;
the full recipes' figures are measured, with their commands, in README itself.
What cannot run here is listed in NOT_RUN with the reason, and a README command that is in neither
list fails the test, so a new command cannot go untested.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest
from helpers import REPO_ROOT, fixture_photos, flowers102_folder, make_class_tree, run_module

README = REPO_ROOT / "README.md"
TRAIN_SPEEDUP = ["--image-size", "32", "--stage1-epochs", "2", "--stage2-epochs", "1", "--views", "2"]
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
    "flower_demo.train import ship": "writes into the repository's own weights/ (what --ship does)",
}
# What each command's output must show, by module.
EXPECTED_OUTPUT = {
    "flower_demo.predict": r"\n  1\. \S",
    "flower_demo.evaluate": r"top-1|\"top1\"",
    "flower_demo.export": r"^wrote \S+\.tflite",
    "flower_demo.calibrate": r"temperature",
    "flower_demo.train": r"saved \S+model\.keras",
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
    return {"root": root, "data": flowers102_folder(root / "DATA_DIR"), "weights": mobilenet_weights}


def runnable(command: str) -> list[str] | None:
    """The arguments after `python -m` of a command this test runs, or None if it is in NOT_RUN."""
    if any(fragment in command for fragment in NOT_RUN):
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


@pytest.mark.slow
def test_readme_commands_run_as_written(scratch: dict[str, Path]) -> None:
    ran = []
    for command in readme_commands():
        for part in command.split(" && "):
            words = runnable(part.strip())
            if words is None:
                continue
            module, args = (
                words[0],
                [
                    str(scratch["data"])
                    if w == "DATA_DIR"
                    else str(scratch["weights"])
                    if w == "imagenet"
                    else w
                    for w in words[1:]
                ],
            )
            if module == "flower_demo.train":
                if "--resume" in args:  # needs the interrupted run it resumes: make it first
                    first = run_module(
                        module, *[a for a in args if a != "--resume"], *TRAIN_SPEEDUP, cwd=scratch["root"]
                    )
                    assert first.returncode == 0, first.stderr
                args += TRAIN_SPEEDUP + (
                    [] if "--weights" in args else ["--weights", str(scratch["weights"])]
                )
            result = run_module(module, *args, cwd=scratch["root"])
            assert result.returncode == 0, f"{part}\n{result.stderr}"
            assert "Traceback" not in result.stderr, part
            assert re.search(EXPECTED_OUTPUT[module], result.stdout, re.M), f"{part}\n{result.stdout}"
            ran.append(part)
    assert len(ran) >= 12, ran
    # What the commands wrote stayed in the scratch folder.
    assert (scratch["root"] / "docs" / "report" / "index.html").is_file()
    assert (scratch["root"] / "runs" / "tflite" / "model_float16.tflite").is_file()
