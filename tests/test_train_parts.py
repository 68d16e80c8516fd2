"""The parts of flower_demo.train one at a time, on tiny arrays and models, with no whole run
(those are in test_train.py): the config, its presets and --config, the command line's groups,
the batches of views, the learning rate, the weight average, a stage's loop, the cache, the
teachers' targets, the splits and what a run without validation writes."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import re
from pathlib import Path

import keras
import numpy as np
import pytest
from helpers import flowers102_folder

from flower_demo import data, train
from flower_demo.train import averaging, caching, cli, config, distill, outputs, pipeline, splits, stages

# --- the config, its presets, --config ---------------------------------------------------------


def test_parser_defaults_are_the_configs():
    """One place for each default: the parser takes TrainConfig's."""
    for action in train.build_parser()._actions:
        if action.dest in config.OPTIONS and action.default != "==SUPPRESS==":
            assert action.default == getattr(config.DEFAULTS, action.dest), action.dest
    assert train.parse_args(["--image-folder", "x"]) == dataclasses.replace(config.DEFAULTS, image_folder="x")


def test_options_are_grouped():
    sections = train.build_parser().format_help().split("\n\n")
    groups = {section.split(":")[0]: set(re.findall(r"--[a-z0-9-]+", section)) for section in sections}
    expected = {
        "data": {"--data-dir", "--tfds", "--image-folder", "--val-fraction"},
        "model": {"--backbone", "--weights", "--image-size", "--serve-size", "--dropout"},
        "optimisation": {"--quick", "--preset", "--views", "--stage1-epochs", "--ema", "--fine-tune"},
        "splits": {"--train-splits", "--val-split", "--fixed-epochs", "--patience"},
        "distillation": {"--teachers", "--distill"},
        "run": {"--config", "--run-dir", "--resume", "--keep-cache", "--drop-cache", "--ship", "--no-export"},
    }
    for title, options in expected.items():
        assert options <= groups[title], (title, options - groups[title])


def test_help_texts_and_defaults(monkeypatch):
    """Every option says what it does and shows its default once; the examples do not wrap."""
    monkeypatch.setenv("COLUMNS", "70")
    parser = train.build_parser()
    formatter = parser._get_formatter()
    for action in parser._actions:
        assert action.help, f"{action.option_strings} has no help text"
        shown = formatter._get_help_string(action) % {**vars(action), "prog": parser.prog}
        assert shown.count("default") <= 1, shown
        if action.default not in (None, False, "==SUPPRESS=="):
            assert f"(default: {action.default})" in shown, shown
    lines = parser.format_help().splitlines()
    for example in cli.__doc__.split("\n\n")[1].splitlines():
        assert example in lines


def test_presets_are_defaults_not_overrides():
    quick = train.parse_args(["--image-folder", "x", "--quick", "--views", "3"])
    assert (quick.stage2_epochs, quick.stage1_epochs, quick.views, quick.preset) == (0, 30, 3, "quick")
    assert train.parse_args(["--image-folder", "x"]).stage2_epochs == 46
    shipped = train.parse_args(["--image-folder", "x", "--preset", "shipped", "--image-size", "224"])
    assert (shipped.image_size, shipped.views, shipped.fixed_epochs) == (224, 16, True)


def write_json(path: Path, content: dict) -> Path:
    path.write_text(json.dumps(content))
    return path


def test_config_file_reruns_a_recipe_and_given_options_win(tmp_path):
    """--config FILE: a run's settings.json, or a model's metadata.json ("training"), or its folder,
    gives the recipe back; keys that are not options are ignored, run options are not taken from
    it, and the options given (a data source included) override it."""
    made = train.parse_args(
        [
            "--data-dir",
            "D",
            "--quick",
            "--views",
            "2",
            "--teachers",
            "a",
            "b",
            "--run-dir",
            "runs/a",
            "--ship",
        ]
    )
    stored = {**config.settings(made), "stage1_seconds": 3.5, "device": "CPU", "quick": True}
    rerun = dataclasses.replace(made, run_dir=None, ship=False)
    settings = write_json(tmp_path / "settings.json", stored)
    (tmp_path / "model").mkdir()
    write_json(tmp_path / "model" / "metadata.json", {"class_names": ["a"], "training": stored})
    for source in (settings, tmp_path / "model" / "metadata.json", tmp_path / "model"):
        assert train.parse_args(["--config", str(source)]) == rerun
    given = train.parse_args(["--config", str(settings), "--image-folder", "F", "--stage1-epochs", "5"])
    assert (given.image_folder, given.data_dir, given.stage1_epochs, given.views) == ("F", None, 5, 2)
    # a preset named on the command line applies over the recipe; one stored in it is a record only
    assert train.parse_args(["--config", str(settings), "--preset", "shipped"]).views == 16
    write_json(settings, {**stored, "stage1_epochs": 50})
    assert train.parse_args(["--config", str(settings)]).stage1_epochs == 50


def test_config_file_errors(tmp_path, capsys):
    assert train.main(["--config", str(tmp_path / "absent.json")]) == 1
    err = capsys.readouterr().err
    assert (
        err.startswith(f"error: cannot read the config {tmp_path / 'absent.json'}") and err.count("\n") == 1
    )
    assert train.main(["--config", str(write_json(tmp_path / "list.json", {"training": [1]}))]) == 1
    assert "holds no training options" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:  # a recipe with no data source, and none given
        train.parse_args(["--config", str(write_json(tmp_path / "bare.json", {"views": 2}))])
    assert stop.value.code == 2 and "--data-dir --tfds --image-folder is required" in capsys.readouterr().err


def test_shipped_model_was_made_by_the_shipped_preset(shipped_model_dir):
    """weights/'s metadata holds the recipe that made it: the shipped preset, its data aside."""
    recipe = config.read_recipe(shipped_model_dir)
    preset = config.TrainConfig(**config.PRESETS["shipped"])
    data_and_splits = {*config.SOURCES, "train_splits", "val_split", "fixed_epochs", "weights", "tfds_dir"}
    records = {"preset", "fine_tune"}  # the preset's name; --fine-tune auto stored as what it ran
    differ = {k: (v, getattr(preset, k)) for k, v in recipe.items() if k not in data_and_splits | records}
    assert {k: pair for k, pair in differ.items() if pair[0] != pair[1]} == {}
    assert recipe["preset"] == "shipped" and recipe["fine_tune"] in ("cached", "whole")
    assert recipe["val_split"] == "none" or recipe["fixed_epochs"]  # its epochs were fixed either way


# --- batches, learning rate -------------------------------------------------------------------


@pytest.mark.parametrize("per_view", [False, True])
def test_random_views_cover_every_image_once_an_epoch(per_view):
    """One view of each image per epoch, in batches, whether the targets are per image or per view
    (distillation: (views, n, classes)); each row's target is its own view's."""
    views, n, classes = 3, 20, 4
    acts = np.arange(views * n, dtype="float32").reshape(views, n, 1)  # the value says (view, image)
    targets = np.stack([np.eye(classes)[np.arange(n) % classes] * (v + 1) for v in range(views)])
    batches = stages.RandomViews(acts, targets if per_view else targets[0], batch_size=8, seed=0)
    assert len(batches) == 3
    rows = [batches[i] for i in range(len(batches))]
    seen = np.concatenate([x[:, 0] for x, _ in rows]).astype(int)
    assert sorted(seen % n) == list(range(n))  # every image once
    for x, y in rows:
        view, image = np.divmod(x[:, 0].astype(int), n)
        expected = targets[view, image] if per_view else targets[0, image]
        np.testing.assert_array_equal(y, expected)


def tiny_head(inputs: int = 5, classes: int = 2, seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    x = keras.Input((inputs,))
    return keras.Model(x, keras.layers.Dense(classes, activation="softmax")(x))


@pytest.mark.parametrize(
    "schedule, warmup, expected",
    [
        ("constant", 0, [0.01, 0.01, 0.01, 0.01]),
        ("cosine", 0, [0.01, 0.0093301, 0.0075, 0.0]),
        ("constant", 1, [0.0, 0.005, 0.01, 0.01]),
        ("cosine", 1, [0.0, 0.005, 0.01, 0.0]),
    ],
)
def test_learning_rate_schedule(schedule, warmup, expected):
    """--schedule cosine decays a stage's learning rate to zero over its epochs, constant keeps it;
    --warmup-epochs first raises it linearly from zero. It follows the optimizer's step count (3
    epochs of 2 batches: within and after the first epoch, and the end)."""
    head = tiny_head()
    settings = config.TrainConfig(schedule=schedule, warmup_epochs=warmup)
    stages.compile_stage(head, 0.01, epochs=3, steps_per_epoch=2, config=settings)
    rates = []
    for step in (0, 1, 2, 6):
        head.optimizer.iterations.assign(step)
        rates.append(float(head.optimizer.learning_rate))
    assert rates == pytest.approx(expected, abs=1e-6)


# --- the weight average ------------------------------------------------------------------------


class Recorder(keras.callbacks.Callback):
    """The model's weights after every batch and at the ends and starts of epochs, with the logs."""

    def __init__(self):
        super().__init__()
        self.after_batch, self.epoch_end, self.epoch_begin, self.logs = [], [], [], []

    def weights(self) -> np.ndarray:
        return np.concatenate([np.ravel(w) for w in self.model.get_weights()])

    def on_train_batch_end(self, batch, logs=None):
        self.after_batch.append(self.weights())

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_begin.append(self.weights())

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_end.append(self.weights())
        self.logs.append(dict(logs))


def warmed_up_average(weights: list[np.ndarray], ema: float) -> list[np.ndarray]:
    """The numpy reference: the first step copies, then momentum min(ema, (1 + s) / (10 + s))."""
    averages, average = [], None
    for step, w in enumerate(weights):
        m = 0.0 if step == 0 else min(ema, (1 + step) / (averaging.EMA_WARMUP + step))
        average = w if average is None else m * average + (1 - m) * w
        averages.append(average)
    return averages


def line_data(n: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 3)).astype("float32")
    return x, (x @ np.array([[2.0], [-1.0], [0.5]]) + 1.0).astype("float32")


def linear_model(optimizer: keras.optimizers.Optimizer) -> keras.Model:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer=optimizer, loss="mse")
    return model


def test_weight_average_follows_the_warmed_up_momentum():
    """The averages follow min(ema, (1 + step) / (10 + step)) from a copy of the first step's
    weights, so a short stage's average is recent; validation measures them, the callbacks after
    the average (checkpoints) and the end of fit get them, and each epoch trains the weights
    themselves again."""
    x, y = line_data()
    model = linear_model(keras.optimizers.SGD(0.05))
    record = Recorder()
    model.fit(
        x,
        y,
        batch_size=2,
        epochs=3,
        shuffle=False,
        validation_data=(x, y),
        verbose=0,
        callbacks=[averaging.WeightAverage(0.99), record],
    )
    expected = warmed_up_average(record.after_batch, 0.99)
    for epoch, end in enumerate(record.epoch_end):
        np.testing.assert_allclose(end, expected[8 * epoch + 7], rtol=1e-5)
        kernel, bias = end[:3], end[3]
        val_loss = float(np.mean((x @ kernel[:, None] + bias - y) ** 2))
        assert record.logs[epoch]["val_loss"] == pytest.approx(val_loss, rel=1e-4)
    for epoch in (1, 2):  # the weights, not the averages, go on training
        np.testing.assert_allclose(record.epoch_begin[epoch], record.after_batch[8 * epoch - 1], rtol=1e-6)
    final = np.concatenate([np.ravel(w) for w in model.get_weights()])
    np.testing.assert_allclose(final, expected[-1], rtol=1e-5)
    assert np.abs(record.after_batch[-1] - expected[-1]).max() > 1e-3  # the average is not the weights


def test_weight_average_skips_a_step_the_optimizer_skipped():
    """Mixed precision skips a step whose gradients are not finite (the optimizer's step count
    stays): the average is not moved by a batch that made no update."""
    model = linear_model(keras.optimizers.SGD(0.1))
    average = averaging.WeightAverage(0.5)
    average.set_model(model)
    kernel = model.trainable_variables[0]
    for step, value, expected in [(1, 1.0, 1.0), (1, 3.0, 1.0), (2, 3.0, 1 + 2 * (1 - 2 / 11))]:
        model.optimizer.iterations.assign(step)  # the count after the batch's update
        kernel.assign(np.full(kernel.shape, value, "float32"))
        average.on_train_batch_end(0)
        np.testing.assert_allclose(np.asarray(average.averages[0]), expected, rtol=1e-6)


def test_keras_own_average_stays_near_the_start():
    """Why the warm-up: with Keras' own average (full momentum from the second step) the weights
    move ~5 in 50 steps and its average still sits near where they started; ours follows them."""
    optimizer = keras.optimizers.AdamW(0.1, weight_decay=0.0, use_ema=True, ema_momentum=0.99)
    var = keras.Variable(np.zeros(1, "float32"))
    history = []
    for _ in range(50):
        optimizer.apply_gradients([(keras.ops.ones(1), var)])  # constant gradient: var falls ~0.1 a step
        history.append(np.asarray(var).copy())
    final = float(history[-1][0])
    ours = float(warmed_up_average(history, 0.99)[-1][0])
    (average,) = [v for v in optimizer.variables if "average" in v.name]  # its moving average of `var`
    keras_average = float(np.asarray(average)[0])
    assert final < -4.5  # the weight moved ...
    assert ours < final + 1.5  # ... and the warmed-up average followed it
    assert keras_average > final + 2.5  # Keras' own average still sits near the start


class Crash(Exception):
    pass


class CrashAfter(keras.callbacks.Callback):
    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epoch:
            raise Crash


def test_weight_average_carries_on_after_a_resume(tmp_path):
    """The averages are saved with the optimizer, so a stage that BackupAndRestore resumes after a
    crash ends with the same average as one that ran through."""
    x, y = line_data()

    def fit(backup: Path, *extra: keras.callbacks.Callback) -> keras.Model:
        model = linear_model(keras.optimizers.AdamW(0.05))
        callbacks = [keras.callbacks.BackupAndRestore(str(backup)), averaging.WeightAverage(0.9), *extra]
        model.fit(x, y, batch_size=4, epochs=3, shuffle=False, verbose=0, callbacks=callbacks)
        return model

    through = fit(tmp_path / "through").get_weights()
    with pytest.raises(Crash):
        fit(tmp_path / "resumed", CrashAfter(2))
    resumed = fit(tmp_path / "resumed").get_weights()
    for a, b in zip(through, resumed):
        np.testing.assert_allclose(a, b, rtol=1e-5)


# --- a stage's loop ----------------------------------------------------------------------------


def stage_data(n: int = 8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(1, n, 5)).astype("float32"), np.eye(2, dtype="float32")[np.arange(n) % 2]


@pytest.mark.parametrize("fixed, scored", [(True, True), (False, False)])
def test_stage_without_choice_runs_every_epoch_and_keeps_the_last(tmp_path, fixed, scored):
    """--fixed-epochs, or no validation (--val-split none): no early stopping even at patience 1,
    and the stage ends with its last epoch's weights (the average), not a chosen one."""
    views, targets = stage_data()
    head = tiny_head()
    settings = config.TrainConfig(fixed_epochs=fixed, patience=1, batch_size=4, ema=0.9, stage1_lr=0.5)
    validation = (views[0], 1 - targets) if scored else None  # inverted labels: val accuracy falls
    with contextlib.redirect_stdout(io.StringIO()):
        history = stages.fit_stage("stage1", head, views, targets, validation, 4, 0.5, settings, tmp_path)
    assert len(history["loss"]) == 4
    assert (tmp_path / "stage1.done").read_text() == "4"
    last = [np.asarray(w) for w in head.get_weights()]
    head.load_weights(tmp_path / "stage1_best.weights.h5")
    for a, b in zip(last, head.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_no_variable_is_made_inside_the_training_step(tmp_path):
    """Every variable a stage trains with exists before its first step: on TensorFlow a metric
    named by a string is made inside that step, and TensorFlow then traces the step a second time
    (seconds for a whole backbone)."""
    import tensorflow as tf

    made_in_a_step = []

    def creator(next_creator, **kwargs):
        if not tf.executing_eagerly():  # inside a traced function
            made_in_a_step.append(kwargs.get("name"))
        return next_creator(**kwargs)

    views, targets = stage_data()
    settings = config.TrainConfig(fixed_epochs=True, batch_size=4)
    with tf.variable_creator_scope(creator), contextlib.redirect_stdout(io.StringIO()):
        stages.fit_stage(
            "stage1", tiny_head(), views, targets, (views[0], targets), 1, 0.1, settings, tmp_path
        )
    assert made_in_a_step == []


def test_stage_resumes_and_extends(tmp_path):
    """A stage interrupted after epoch 2 of 3 goes on at epoch 3 with --resume, keeping the
    epochs before the interruption in its history; a finished stage is loaded, not rerun; a
    larger epoch count extends it instead of restarting it."""
    views, targets = stage_data()
    settings = config.TrainConfig(batch_size=4, ema=0.9)
    resumed = dataclasses.replace(settings, resume=True)

    def fit(epochs: int, config_: config.TrainConfig, *extra: keras.callbacks.Callback) -> tuple[dict, str]:
        head, out = tiny_head(), io.StringIO()
        with contextlib.redirect_stdout(out), pytest.MonkeyPatch.context() as patch:
            if extra:  # the crash comes after the stage's own callbacks have run for the epoch
                real = stages.stage_callbacks
                patch.setattr(stages, "stage_callbacks", lambda *a: [*real(*a), *extra])
            history = stages.fit_stage(
                "stage1", head, views, targets, (views[0], targets), epochs, 0.1, config_, tmp_path
            )
        return history, out.getvalue()

    with pytest.raises(Crash):
        fit(3, settings, CrashAfter(2))
    assert not (tmp_path / "stage1.done").exists()
    history, printed = fit(3, resumed)
    assert len(history["loss"]) == 3 and "Epoch 3/3" in printed and "Epoch 2/3" not in printed
    history, printed = fit(3, resumed)
    assert "stage1: already finished, loading its best weights" in printed and len(history["loss"]) == 3
    history, printed = fit(5, resumed)
    assert "Epoch 4/5" in printed and "Epoch 1/5" not in printed and len(history["loss"]) == 5


# --- the cache ---------------------------------------------------------------------------------


def test_each_activation_step_is_traced_once_for_every_batch_length():
    """The last batch of a cache is shorter than the others: it reuses each step's one trace."""
    x = keras.Input((8, 8, 3))
    bottom = keras.Model(x, keras.layers.Conv2D(4, 3)(x))
    steps = caching.activation_steps(bottom, data.make_augmenter(seed=0))
    pixels = np.random.default_rng(0).uniform(0, 255, (5, 8, 8, 3)).astype("float32")
    for step in steps:
        assert [step(pixels[:n]).shape[0] for n in (5, 2)] == [5, 2]
        assert step.experimental_get_tracing_count() == 1


def test_cached_arrays_are_reused_only_under_their_key(tmp_path):
    calls = []

    def compute() -> np.ndarray:
        calls.append(1)
        return np.arange(6.0).reshape(2, 3)

    path = tmp_path / "cache" / "acts.npy"
    first = caching.cached(path, "key-a", compute)
    again = caching.cached(path, "key-a", compute)
    np.testing.assert_array_equal(first, again)
    assert len(calls) == 1  # the same key: loaded, not computed
    caching.cached(path, "key-b", compute)
    assert len(calls) == 2  # another key: computed afresh
    path.with_suffix(".key").unlink()  # a file whose key was never written (an interrupted save)
    caching.cached(path, "key-b", compute)
    assert len(calls) == 3


def test_cache_key_changes_with_what_the_arrays_depend_on():
    base = ["mobilenet_v2", "imagenet", 32, "block_2_add", 2, 0, "folder:x:train", None, 10, 0, None]
    keys = {caching.cache_key(*base)}
    for i, changed in enumerate(["resnet50", "w.h5", 48, None, 3, 1, "folder:y:train", "v", 11, 2, ["t"]]):
        keys.add(caching.cache_key(*base[:i], changed, *base[i + 1 :]))
    assert len(keys) == len(base) + 1


def test_teachers_see_the_very_views_the_student_is_cached_from():
    """View 0 is the photo as it is, the others augmented; the teacher gets exactly the pixels the
    bottom gets, and its probabilities are kept per view."""
    images = np.random.default_rng(0).integers(0, 255, (5, 4, 4, 3)).astype("uint8")
    seen = {"bottom": [], "teacher": []}
    augment = lambda batch: batch + np.random.default_rng(len(seen["bottom"])).normal(size=batch.shape)

    def forward(pixels):
        seen["bottom"].append(np.asarray(pixels))
        return np.asarray(pixels).mean(axis=(1, 2))

    def teacher(pixels):
        seen["teacher"].append(np.asarray(pixels))
        return np.tile([0.25, 0.75], (len(pixels), 1))

    bottom = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.GlobalAveragePooling2D()])
    acts, soft = caching.cache_activations(
        bottom, (augment, forward), images, 3, progress=False, teacher=teacher
    )
    assert acts.shape == (3, 5, 3) and soft.shape == (3, 5, 2)
    for bottom_pixels, teacher_pixels in zip(seen["bottom"], seen["teacher"], strict=True):
        np.testing.assert_array_equal(bottom_pixels, teacher_pixels)
    np.testing.assert_array_equal(seen["bottom"][0], images.astype("float32"))  # view 0: as it is
    assert not np.allclose(seen["bottom"][1], images)  # view 1: augmented
    np.testing.assert_allclose(soft[..., 1], 0.75)


def test_targets_blend_labels_and_teachers():
    """--distill d: (1 - d) * labels + d * teachers for each view; 0 is the labels alone (a
    student of its labels), 1 the teachers alone."""
    labels = np.eye(3, dtype="float32")[[0, 1, 2, 0]]
    soft = np.random.default_rng(0).dirichlet(np.ones(3), (2, 4)).astype("float16")
    np.testing.assert_array_equal(distill.blend(labels, None, 0.5), labels)
    np.testing.assert_allclose(distill.blend(labels, soft, 0.0), np.stack([labels, labels]))
    np.testing.assert_allclose(distill.blend(labels, soft, 1.0), soft.astype("float32"))
    np.testing.assert_allclose(
        distill.blend(labels, soft, 0.25)[1], 0.75 * labels + 0.25 * soft[1], rtol=1e-3
    )


# --- the splits, and a run without validation ---------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--train-splits", "train", "--val-split", "train"], "is also trained on"),
        (["--train-splits", " , "], "names no split"),
    ],
)
def test_split_options_are_checked(tmp_path, extra, message, capsys):
    args = ["--data-dir", str(tmp_path), "--run-dir", str(tmp_path / "run"), *extra]
    assert train.main(args) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_split_options_need_official_splits(tmp_path, capsys):
    args = ["--image-folder", str(tmp_path), "--run-dir", str(tmp_path / "run")]
    assert train.main([*args, "--train-splits", "train,validation"]) == 1
    assert "need --data-dir or --tfds" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_an_image_folder_trains_on_every_photo_with_no_validation(tiny_class_tree):
    """--val-split none on a class-per-folder tree: every photo trains, nothing is held out."""
    settings = dataclasses.replace(config.TrainConfig(), image_folder=str(tiny_class_tree), val_split="none")
    assert splits.chosen_splits(settings) == (["train"], None)
    train_part, val = splits.load_splits(settings)
    assert val is None and len(train_part) == sum(1 for p in tiny_class_tree.rglob("*.png"))


def test_official_splits_a_union_or_a_fold(tmp_path):
    """--train-splits train,validation --val-split none: the union, nothing scored; the second fold
    trains on validation and scores train; --max-per-class keeps the first N of each class."""
    data_dir = flowers102_folder(tmp_path / "flowers102")  # 8 train + 8 validation photos
    union, none = splits.load_splits(
        config.TrainConfig(data_dir=str(data_dir), train_splits="train,validation", val_split="none")
    )
    assert none is None and len(union) == 16
    assert union.source == f"flowers102-folder:{data_dir}:train+flowers102-folder:{data_dir}:validation"
    fold = config.TrainConfig(data_dir=str(data_dir), train_splits="validation", val_split="train")
    trained, scored = splits.load_splits(fold)
    assert trained.source.endswith(":validation") and scored.source.endswith(":train") and len(scored) == 8
    few = splits.at_most_per_class(union, 1)
    assert [union.items.index(i) for i in few.items] == sorted(np.unique(union.labels, return_index=True)[1])


def test_outputs_without_validation(tmp_path, capsys):
    """No validation split: no figure is claimed (metrics {}), no report written, and the run
    says what it trained on; with --fixed-epochs a scored figure is marked as not chosen on it."""
    from flower_demo import data

    images = data.LabeledImages(["a", "b"], np.array([0, 1]), ["x", "y"], 2, "folder:t:train")
    settings = config.settings(
        config.TrainConfig(image_folder="t", image_size=32, serve_size=48, no_export=True)
    )
    metadata = outputs.run_metadata(settings, images, None, None, {"total_seconds": 1.0}, gpu=False)
    assert metadata["metrics"] == {} and metadata["image_size"] == 48
    assert metadata["data"]["validation_size"] == 0 and metadata["data"]["validation_source"] is None
    scored = outputs.run_metadata(
        {**settings, "fixed_epochs": True}, images, images, {"top1": 0.5, "top5": 1.0}, {}, gpu=False
    )
    assert scored["metrics"]["chosen_on_validation"] is False
    head = tiny_head()
    history = {"stage1": {"loss": [1.0], "accuracy": [0.5], "val_loss": [np.nan], "val_accuracy": [np.nan]}}
    # an earlier run's model.tflite: --no-export must not leave it beside the new model
    (tmp_path / "model.tflite").write_bytes(b"not this model")
    pipeline.write_outputs(config.TrainConfig(no_export=True), tmp_path, head, metadata, history, None, None)
    printed = capsys.readouterr().out
    assert "trained on 2 images with no validation split" in printed
    assert not (tmp_path / "report").exists() and (tmp_path / "model.keras").is_file()
    assert not (tmp_path / "model.tflite").exists() and "--no-export" in printed


def test_whole_mode_caches_the_whole_backbones_pooled_features(tiny_class_tree, mobilenet_weights):
    """--fine-tune whole: no cut, so stage 1 caches what the whole frozen backbone pools (1,280
    features per view for MobileNetV2), and stage 2 trains on photos augmented afresh. (The whole
    run itself: test_train, on README's run.)"""
    whole = cli.parse_args([
        "--image-folder", str(tiny_class_tree), "--weights", str(mobilenet_weights), "--image-size", "32",
        "--fine-tune", "whole", "--stage2-epochs", "1",
    ])  # fmt: skip
    parts = pipeline.prepare(whole)
    assert parts.fine_tune_from is None and parts.top is None
    assert parts.bottom.output_shape == (None, 1280)
