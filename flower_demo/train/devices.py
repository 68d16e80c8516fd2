"""Where a run trains: one device, or several at once with Keras' distribution API.

Keras' `DataParallel` (keras.distribution) puts a copy of the model on each device and splits
every batch between them; the gradients are averaged, so the run follows the one-device run (up to
the order of floating-point sums). The API is Keras' own for its JAX backend: under TensorFlow a
run uses one device. `--devices 0` (the default) takes every visible GPU or TPU, and one device
where there is none; `--devices N` takes the first N devices JAX sees, CPUs included (on a CPU,
XLA_FLAGS=--xla_force_host_platform_device_count=N makes N of them: what the tests use).
"""

from __future__ import annotations

from typing import Any

import keras

from flower_demo.errors import FlowerDemoError


def visible_devices() -> list[Any]:
    """The devices JAX sees: its accelerators if it has any, else its CPU devices."""
    import jax

    accelerators = [device for device in jax.devices() if device.platform != "cpu"]
    return accelerators or jax.devices("cpu")


def choose(requested: int) -> list[Any]:
    """The devices a run with `--devices requested` trains on (one for a backend but JAX)."""
    if requested < 0:
        raise FlowerDemoError(f"--devices must be 0 (every visible GPU) or more, got {requested}")
    if keras.config.backend() != "jax":
        if requested > 1:
            raise FlowerDemoError(
                f"--devices {requested} needs Keras' JAX backend (KERAS_BACKEND=jax, pip install "
                f"-r requirements-jax.txt): Keras' distribution API runs on JAX alone"
            )
        return []
    visible = visible_devices()
    if requested == 0:
        return visible if visible[0].platform != "cpu" else visible[:1]
    if requested > len(visible):
        raise FlowerDemoError(f"--devices {requested}: JAX sees {len(visible)} ({visible[0].platform})")
    return visible[:requested]


def distribute(requested: int, batch_size: int) -> str:
    """Set up data-parallel training over the chosen devices when there are several (each batch
    split evenly between them); what the run trains on, in words."""
    devices = choose(requested)
    if len(devices) <= 1:
        return ""
    if batch_size % len(devices):
        raise FlowerDemoError(f"--batch-size {batch_size} must split evenly over {len(devices)} devices")
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    return f"{len(devices)} x {devices[0].platform.upper()} (data parallel)"
