"""Train a flower classifier in two stages and save it into a run folder
(`python -m flower_demo.train`; the options are in cli.py, their defaults in config.py).

Stage 1 trains the dense head on the frozen backbone. Stage 2 unfreezes the top of the backbone
(from the registry's `fine_tune_from` layer up) at a low learning rate; BatchNorm layers stay
frozen and in inference mode. `--fine-tune whole` unfreezes every layer instead (BatchNorm still
frozen) and augments the photos afresh in every epoch: the usual way on a GPU, and what the
default `--fine-tune auto` (also spelt `--recipe`) picks where one is seen; on a 2-core CPU about
three times the cached way's CPU time, for no gain on Flowers-102 (README, "The shipped model").

Distillation: `--teachers RUN ...` averages the probabilities of other trained runs on each cached
view (the same augmented pixels the student's activations come from) and blends them, by
`--distill`, into the labels the student trains on in both stages: several models' knowledge in
the one small model that ships.

Why it is fast on a CPU: the frozen bottom of the backbone is the expensive part, and its output
does not change during training. So each training image is augmented `--views` times up front,
the bottom runs once per view, and both stages train on those cached activations; each epoch
draws one random view per image. Decoded images and activations stay in memory and are also
saved in the run folder, so `--resume` restarts where a run stopped without recomputing them.
With a GPU the same steps run there, in mixed precision. Keras' JAX backend (KERAS_BACKEND=jax)
trains the same way, on several devices at once with `--devices` (devices.py); its model.tflite is
converted on the TensorFlow backend in a process of its own (outputs.py).

A run folder holds what outputs.RUN_README (written into it as README.txt) lists, and report/
(where the model fails on the validation split: flower_demo.report). `weights/` is written only
with `--ship`.

The parts, in the order a run uses them:
- config.py     TrainConfig (every option and its default), PRESETS, reading a stored recipe
- cli.py        the command line: options in groups, --quick/--preset, --config
- pipeline.py   the run as a sequence of steps
- devices.py    one device, or several at once (Keras' DataParallel, JAX)
- splits.py     which images are trained on and which scored
- caching.py    decoded images, activations of each view, pooled features, kept in cache/
- distill.py    the teachers and the soft targets
- stages.py     a stage's models, batches (RandomViews), optimizer and schedule, and its loop
- averaging.py  the warmed-up weight average (a Keras callback)
- outputs.py    the run folder's README.txt, curves, metadata, model.tflite, `ship`
"""

from flower_demo.train.cli import build_parser, main, parse_args
from flower_demo.train.config import PRESETS, TrainConfig

# The command line and its options need only requirements.txt (so `--help` works without
# TensorFlow); the parts that need Keras are imported by name where they are used, e.g.
# `from flower_demo.train import stages` or `from flower_demo.train.outputs import ship`.
__all__ = ["PRESETS", "TrainConfig", "build_parser", "main", "parse_args"]
