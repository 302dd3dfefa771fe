"""Loading TensorFlow quietly, for programs that print to a terminal.

```python
from quantens.startup import load_tensorflow

tf = load_tensorflow()   # tf-keras selected, native start-up chatter hidden
assert tf.keras.Model.__module__.startswith("tf_keras")
```
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile

__all__ = ["load_tensorflow", "quiet_native_logs"]


@contextlib.contextmanager
def quiet_native_logs():
    """Hides what TensorFlow's C++ runtime prints to stderr while it starts.

    TensorFlow 2.21 prints absl INFO lines (oneDNN, CUDA drivers, CPU features)
    that `TF_CPP_MIN_LOG_LEVEL` no longer silences. They are kept in a buffer
    and shown only if the block fails.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as buffer:
        os.dup2(buffer.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            buffer.seek(0)
            sys.stderr.write(buffer.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def load_tensorflow():
    """Imports TensorFlow, tf-keras and larq quietly and initialises the devices."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import quantens  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)

    with quiet_native_logs():
        import larq  # noqa: F401
        import tensorflow as tf

        tf.config.list_physical_devices()
    return tf
