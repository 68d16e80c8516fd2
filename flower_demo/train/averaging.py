"""The weights' moving average ("EMA"), warmed up, as a Keras callback on the public API.

Keras' own average (the optimizer's `use_ema`) takes its full momentum from the second step on,
so after a few hundred steps at 0.99 it still holds mostly the weights a stage started from (a
40-step run scored 1% that way: README, "Short stages work"). Warmed up, the momentum is
min(ema, (1 + step) / (EMA_WARMUP + step)) and the first step copies the weights, so the average
covers about the last tenth of a short stage and reaches the full momentum after about
EMA_WARMUP / (1 - ema) steps.

Validation, the best epoch's checkpoint and the weights a stage ends with are the averaged ones,
as with Keras' SwapEMAWeights(swap_on_epoch=True): the averages are swapped into the model for
each validation and at each epoch's end, and back out when the next epoch begins.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from flower_demo import models  # noqa: F401  first: it keeps TensorFlow's start-up notices off the terminal

# isort: split
import keras

EMA_WARMUP = 10  # the momentum is min(ema, (1 + step) / (EMA_WARMUP + step))


def momentum(step: int, ema: float) -> float:
    """The average's momentum at optimizer step `step` (0 for the first update: a copy)."""
    return 0.0 if step == 0 else min(ema, (1 + step) / (EMA_WARMUP + step))


class WeightAverage(keras.callbacks.Callback):
    """Keeps the warmed-up moving average of the model's trainable weights during `fit`.

    The averages are optimizer variables (`add_variable_from_reference`), so every checkpoint of
    the optimizer holds them: BackupAndRestore's, which goes before this callback in the list and
    so saves the weights being trained, and a resumed stage carries on with its average.
    """

    def __init__(self, ema: float) -> None:
        super().__init__()
        self.ema = ema
        self.variables: list[Any] = []  # the model's trainable weights
        self.averages: list[Any] = []  # and their averages, in the same order
        self.swapped = False  # whether the model holds the averages now
        self.swapped_for_test = False
        self.last_step = -1  # the optimizer step last averaged in

    def set_model(self, model: keras.Model) -> None:
        """Make the averages when fit attaches the callback, before any callback restores a
        checkpoint (BackupAndRestore does in on_train_begin, and so restores them too)."""
        super().set_model(model)
        if self.averages:
            return
        optimizer = model.optimizer
        if not optimizer.built:
            optimizer.build(model.trainable_variables)
        self.variables = list(model.trainable_variables)
        self.averages = [optimizer.add_variable_from_reference(v, name="average") for v in self.variables]

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)) - 1  # the update just made
        if step == self.last_step:  # none was made: mixed precision skips non-finite gradients
            return
        self.last_step = step
        m = momentum(step, self.ema)
        for variable, average in zip(self.variables, self.averages):
            average.assign(m * average + (1.0 - m) * variable)

    def swap(self) -> None:
        """Exchange the model's weights and their averages."""
        for variable, average in zip(self.variables, self.averages):
            held = np.array(keras.ops.convert_to_numpy(variable))
            variable.assign(average)
            average.assign(held)
        self.swapped = not self.swapped

    def on_test_begin(self, logs: dict | None = None) -> None:
        if not self.swapped:  # validation during fit measures the averages
            self.swap()
            self.swapped_for_test = True

    def on_test_end(self, logs: dict | None = None) -> None:
        if self.swapped_for_test:
            self.swap()
            self.swapped_for_test = False

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if self.swapped:  # train the weights themselves again
            self.swap()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if not self.swapped:  # the callbacks after this one (checkpoints) and the end of fit see the averages
            self.swap()
