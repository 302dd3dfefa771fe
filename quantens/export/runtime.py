"""Running member files: `TFLiteRunner` (TensorFlow Lite and Larq Compute Engine)."""

from __future__ import annotations

import numpy as np

from quantens.export.common import tensorflow
from quantens.export.flatbuffer import input_quantization, op_counts

__all__ = ["TFLiteRunner"]


class TFLiteRunner:
    """Runs a member's flatbuffer, one example per call (batch 1).

    TensorFlow's `tf.lite.Interpreter` runs float32 and int8 files; the Larq
    Compute Engine interpreter runs files with LCE ops (the TF interpreter
    cannot), by default with its indirect BGEMM kernel, which is exact and, on
    x86, about 8x faster than its default binary kernel. Float32 in, float32
    logits out (int8 inputs are quantized here). `use_xnnpack=False` runs
    TFLite's builtin kernels only (no default delegates).

    ```python
    import numpy as np
    import quantens
    from quantens.export import TFLiteRunner, convert_member
    from zoo import create_model

    ensemble = quantens.QuantEnsemble(create_model("digits_resnet_e", width=8), (32, 1))
    runner = TFLiteRunner(convert_member(ensemble, 32))
    logits = runner(np.zeros((3, 8, 8, 1), "float32"))
    assert logits.shape == (3, 10)
    ```
    """

    def __init__(self, flatbuffer: bytes, num_threads: int = 1, use_xnnpack: bool = True,
                 lce_indirect_bgemm: bool = True):
        self.is_lce = b"Lce" in flatbuffer and any(
            name.startswith("Lce") for name in op_counts(flatbuffer))
        self.interpreter_name = "larq_compute_engine" if self.is_lce else "tensorflow"
        if self.is_lce:
            from larq_compute_engine.tflite.python.interpreter import Interpreter

            self._lce = Interpreter(flatbuffer, num_threads=num_threads,
                                    use_xnnpack=use_xnnpack,
                                    use_indirect_bgemm=lce_indirect_bgemm).interpreter
        else:
            import warnings

            tf = tensorflow()
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
                resolver = (tf.lite.experimental.OpResolverType.AUTO if use_xnnpack else
                            tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
                self._tfl = tf.lite.Interpreter(model_content=flatbuffer,
                                                num_threads=num_threads,
                                                experimental_op_resolver_type=resolver)
            self._tfl.allocate_tensors()
            self._in = self._tfl.get_input_details()[0]
            self._out = self._tfl.get_output_details()[0]
        self.input_quantization = input_quantization(flatbuffer)

    def run_one(self, x: np.ndarray) -> np.ndarray:
        """Logits of one batch-1 input (shape (1, H, W, C)); `invoke` in benchmarks."""
        if self.is_lce:
            return np.asarray(self._lce.predict([x])[0], np.float32)
        if self._in["dtype"] != np.float32:
            scale, zero = self._in["quantization"]
            x = np.clip(np.round(x / scale + zero), -128, 127).astype(self._in["dtype"])
        self._tfl.set_tensor(self._in["index"], x)
        self._tfl.invoke()
        y = self._tfl.get_tensor(self._out["index"])
        if self._out["dtype"] != np.float32:
            scale, zero = self._out["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        return np.asarray(y, np.float32)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        return np.concatenate([self.run_one(x[i:i + 1]) for i in range(len(x))])
