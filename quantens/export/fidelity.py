"""How a member file agrees with its Keras member (export.json's `fidelity`)."""

from __future__ import annotations

import numpy as np

from quantens.errors import ExportError
from quantens.export.common import iter_batches
from quantens.export.runtime import TFLiteRunner

__all__ = ["DIFFERING_LOGIT_DIFF", "fidelity"]

DIFFERING_LOGIT_DIFF = 1e-4  # an example "differs" beyond this |logit difference|


def fidelity(member, flatbuffer: bytes, val_data, batch_size: int = 256,
             max_examples: int | None = None, predict=None,
             runtime: str | None = None) -> dict:
    """How a member's flatbuffer agrees with the Keras member on `val_data`.

    The Keras member runs as Keras runs it (`predict`, a traced graph), or
    through `predict` (a batch of inputs -> its logits) when given: export
    passes the member's traced serving function, which it has already, where
    `member.predict` would trace the member again. Returns
    examples, top-1 agreement, max and mean |logit difference|, how many
    examples have a logit that differs by more than 1e-4, the accuracy of
    both where labels are given and, for files that round their input to int8,
    `keras_input_rounding_agreement`: how often the Keras member keeps its
    prediction when only its input is rounded that way (a ceiling for what any
    such file can reach), and `interpreter` and `interpreter_version`: the
    runtime that ran the file (`"litert"` where ai-edge-litert is installed,
    else `"tensorflow"`; `"larq_compute_engine"` for LCE files; see
    `quantens.export.runtime.choose_runtime`, whose `runtime` this takes).

    ```python
    import numpy as np
    import quantens
    from quantens.export import convert_member, fidelity
    from zoo import create_model

    ensemble = quantens.QuantEnsemble(create_model("digits_resnet_e", width=8), (32, 1))
    x = np.random.default_rng(0).normal(size=(8, 8, 8, 1)).astype("float32")
    report = fidelity(ensemble.member(32), convert_member(ensemble, 32), x)
    assert report["agreement"] == 1.0
    assert report["interpreter"] in ("litert", "tensorflow")
    ```
    """
    if predict is None:
        def predict(x):
            return member.predict(x, batch_size=len(x), verbose=0)

    runner = TFLiteRunner(flatbuffer, runtime=runtime)
    rounding = runner.input_quantization
    keras, tflite, rounded, labels = [], [], [], []
    seen = 0
    for x, y in iter_batches(val_data, batch_size):
        if max_examples is not None:
            x = x[: max_examples - seen]
            y = None if y is None else y[: len(x)]
            if not len(x):
                break
        seen += len(x)
        keras.append(np.asarray(predict(x), np.float32))
        tflite.append(runner(x))
        if rounding is not None:
            scale, zero = rounding
            xq = (np.clip(np.round(x / scale) + zero, -128, 127) - zero) * scale
            rounded.append(np.asarray(predict(xq.astype(np.float32)), np.float32))
        if y is not None:
            labels.append(np.asarray(y).reshape(-1))
    if not keras:
        raise ExportError("val_data holds no examples")
    k, t = np.concatenate(keras), np.concatenate(tflite)
    diff = np.abs(k - t)
    report = {
        "examples": int(len(k)),
        "agreement": float(np.mean(k.argmax(-1) == t.argmax(-1))),
        "max_abs_logit_diff": float(diff.max()),
        "mean_abs_logit_diff": float(diff.mean()),
        # examples whose logits differ by more than float32 rounding could explain
        "differing_examples": int(np.sum(diff.max(axis=-1) > DIFFERING_LOGIT_DIFF)),
        "keras_logit_range": [float(k.min()), float(k.max())],
        "keras_accuracy": None,
        "tflite_accuracy": None,
        "keras_input_rounding_agreement": None,
        # the runtime that ran the file (quantens.export.runtime.choose_runtime)
        "interpreter": runner.runtime_info["name"],
        "interpreter_version": runner.runtime_info["version"],
    }
    if rounded:
        report["keras_input_rounding_agreement"] = float(
            np.mean(k.argmax(-1) == np.concatenate(rounded).argmax(-1)))
    if labels and len(labels) == len(keras):
        y = np.concatenate(labels)
        report["keras_accuracy"] = float(np.mean(k.argmax(-1) == y))
        report["tflite_accuracy"] = float(np.mean(t.argmax(-1) == y))
    return report
