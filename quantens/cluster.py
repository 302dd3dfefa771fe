"""The multi-worker cluster that `TF_CONFIG` describes, read and checked without TensorFlow.

```python
import json
from quantens.cluster import read_tf_config

config = read_tf_config(json.dumps({
    "cluster": {"worker": ["hostA:12345", "hostB:12345"]},
    "task": {"type": "worker", "index": 1}}))
assert config.multi_worker and not config.is_chief and config.task_index == 1
assert read_tf_config(None) is None
```
"""

from __future__ import annotations

import dataclasses
import json
import os

from quantens.errors import DeviceError

__all__ = [
    "ENV",
    "ClusterConfig",
    "read_tf_config",
]

ENV = "TF_CONFIG"
_HINT = ("e.g. TF_CONFIG='{\"cluster\": {\"worker\": [\"hostA:12345\", \"hostB:12345\"]}, "
         "\"task\": {\"type\": \"worker\", \"index\": 0}}'")


@dataclasses.dataclass(frozen=True)
class ClusterConfig:
    """This process's place in the cluster: its job type and index, and the job sizes."""

    jobs: dict  # job name -> number of tasks
    task_type: str
    task_index: int

    @property
    def multi_worker(self) -> bool:
        """More than one process trains (chief and workers together)."""
        return self.jobs.get("chief", 0) + self.jobs.get("worker", 0) > 1

    @property
    def is_chief(self) -> bool:
        """Whether this process writes the result directory (Keras' convention)."""
        return self.task_type == "chief" or (
            self.task_type == "worker" and self.task_index == 0 and "chief" not in self.jobs
        )


def read_tf_config(value: str | None = None) -> ClusterConfig | None:
    """`TF_CONFIG` (default: the environment's) checked; None when it is unset or empty.

    Raises:
        DeviceError: not JSON, no cluster or task, or a task outside its cluster.
    """
    value = os.environ.get(ENV) if value is None else value
    if not value or not value.strip():
        return None
    try:
        config = json.loads(value)
    except ValueError as error:
        raise DeviceError(f"{ENV} is not valid JSON ({error}); {_HINT}") from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not cluster or not all(
        isinstance(v, list) for v in cluster.values()
    ):
        raise DeviceError(f"{ENV} needs a \"cluster\" object of job lists; {_HINT}")
    if not isinstance(task, dict):
        raise DeviceError(f"{ENV} needs a \"task\" object with type and index; {_HINT}")
    task_type, index = task.get("type"), task.get("index", 0)
    if task_type not in cluster:
        raise DeviceError(
            f"{ENV} task type {task_type!r} is not a job of its cluster "
            f"({', '.join(sorted(cluster))})"
        )
    size = len(cluster[task_type])
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < size:
        raise DeviceError(
            f"{ENV} task index {index!r} is outside its cluster: job {task_type!r} has "
            f"{size} task(s), indices 0 to {size - 1}"
        )
    return ClusterConfig({k: len(v) for k, v in cluster.items()}, task_type, index)
