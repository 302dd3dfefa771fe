"""The `tf.distribute` strategy from the flags and the environment.

| flags / environment   | strategy                                              |
|-----------------------|-------------------------------------------------------|
| `TF_CONFIG` set       | `MultiWorkerMirroredStrategy` (every worker runs the same command) |
| `--gpus 0,1`          | `MirroredStrategy` on those GPUs                      |
| `--gpus 0`            | `OneDeviceStrategy` on that GPU                       |
| `--gpus ''`           | `OneDeviceStrategy` on the CPU                        |
| `--cpu-replicas N`    | `MirroredStrategy` over N logical CPU devices         |
| nothing               | TensorFlow's default device placement                 |

`--batch-size` is per device (as in the seed): the global batch is
`batch_size * strategy.num_replicas_in_sync`.

```python
from quantens.distribute import strategy_from_flags

strategy = strategy_from_flags(gpus="")
assert strategy.num_replicas_in_sync == 1
```
"""

from __future__ import annotations

import os

import tensorflow as tf

from quantens.cluster import read_tf_config
from quantens.errors import DeviceError  # re-exported: quantens.distribute.DeviceError

__all__ = [
    "DeviceError",
    "is_chief",
    "is_multi_worker",
    "parse_gpus",
    "strategy_from_flags",
]


def parse_gpus(gpus: str | None) -> list[int] | None:
    """`"0,1"` -> [0, 1]; `""` -> []; None -> None."""
    if gpus is None:
        return None
    try:
        return [int(g) for g in str(gpus).replace(" ", "").split(",") if g != ""]
    except ValueError:
        raise DeviceError(
            f"--gpus {gpus!r}: give comma-separated GPU ids such as 0 or 0,1"
        ) from None


def is_multi_worker() -> bool:
    """True when `TF_CONFIG` describes a cluster of more than one worker."""
    config = read_tf_config()
    return config is not None and config.multi_worker


def is_chief(strategy: tf.distribute.Strategy | None = None) -> bool:
    """Whether this worker writes the result directory (Keras convention)."""
    config = read_tf_config()
    return config is None or not config.multi_worker or config.is_chief


def strategy_from_flags(
    gpus: str | None = None, cpu_replicas: int | None = None
) -> tf.distribute.Strategy:
    """Creates the strategy; call before TensorFlow runs its first operation.

    Raises:
        DeviceError: GPUs asked for are missing, or flags contradict each other.
    """
    gpu_ids = parse_gpus(gpus)
    if cpu_replicas and gpu_ids:
        raise DeviceError("--cpu-replicas and --gpus exclude each other: choose one")
    if os.environ.get("TF_CONFIG") and is_multi_worker():
        return tf.distribute.MultiWorkerMirroredStrategy()
    if cpu_replicas:
        if cpu_replicas < 1:
            raise DeviceError("--cpu-replicas must be at least 1")
        cpu = tf.config.list_physical_devices("CPU")[0]
        try:
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration()] * cpu_replicas
            )
        except RuntimeError:
            pass  # already configured (e.g. a second call in one process)
        devices = [d.name for d in tf.config.list_logical_devices("CPU")][:cpu_replicas]
        if len(devices) < cpu_replicas:
            raise DeviceError(
                f"--cpu-replicas {cpu_replicas}: TensorFlow was already initialised with "
                f"{len(devices)} CPU device(s)"
            )
        return tf.distribute.MirroredStrategy(devices)
    if gpu_ids is None:
        return tf.distribute.get_strategy()
    if not gpu_ids:
        return tf.distribute.OneDeviceStrategy("/cpu:0")
    available = tf.config.list_physical_devices("GPU")
    missing = [g for g in gpu_ids if g >= len(available)]
    if missing:
        have = f"{len(available)} GPU(s)" if available else "no GPU"
        raise DeviceError(
            f"--gpus {gpus}: this machine has {have}; omit --gpus (or pass --gpus '') "
            "to train on the CPU"
        )
    if len(gpu_ids) == 1:
        return tf.distribute.OneDeviceStrategy(f"/gpu:{gpu_ids[0]}")
    return tf.distribute.MirroredStrategy([f"/gpu:{g}" for g in gpu_ids])
