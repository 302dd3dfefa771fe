"""Running member files: the one place interpreters are created, and `TFLiteRunner`.

`create_interpreter` picks the runtime of a member file: Larq Compute Engine's
interpreter for files with LCE ops (no other runs them); for every other file
LiteRT's `ai_edge_litert.interpreter.Interpreter` where the `ai-edge-litert`
package is installed (`pip install quantens[litert]`), TensorFlow's
`tf.lite.Interpreter` otherwise, its "deprecated, use LiteRT" warning
silenced. `runtime="tensorflow"` (or the environment variable
`QUANTENS_TFLITE_RUNTIME=tensorflow`) keeps TensorFlow's interpreter where
LiteRT is installed; `"litert"` insists on LiteRT. Every number quantens
measures on a file names the runtime that ran it (`runtime_info`).
"""

from __future__ import annotations

import os

import numpy as np

from quantens.export.common import quiet_interpreter_deprecation, tensorflow
from quantens.export.flatbuffer import input_quantization, op_counts

__all__ = [
    "LCE_RUNTIME", "LITERT", "RUNTIMES", "RUNTIME_ENV", "TENSORFLOW", "TFLiteRunner",
    "choose_runtime", "create_interpreter", "is_lce_file", "measure_latency", "runtime_info",
]

LITERT = "litert"  # ai_edge_litert.interpreter.Interpreter
TENSORFLOW = "tensorflow"  # tf.lite.Interpreter
LCE_RUNTIME = "larq_compute_engine"  # larq_compute_engine's interpreter (LCE files only)
RUNTIMES = ("auto", LITERT, TENSORFLOW)  # what `runtime=` and RUNTIME_ENV take
RUNTIME_ENV = "QUANTENS_TFLITE_RUNTIME"  # the default of `runtime=` when it is None

_LITERT_INSTALL = "pip install 'quantens[litert]' (or ai-edge-litert)"


def is_lce_file(flatbuffer: bytes) -> bool:
    """Whether a flatbuffer holds Larq Compute Engine ops (`LceBconv2d`, ...).

    ```python
    import quantens
    from quantens.export import convert_member
    from quantens.export.runtime import is_lce_file
    from zoo import create_model

    ensemble = quantens.QuantEnsemble(create_model("digits_resnet_e", width=8), (32, 1))
    assert is_lce_file(convert_member(ensemble, 1))
    assert not is_lce_file(convert_member(ensemble, 32))
    ```
    """
    return b"Lce" in flatbuffer and any(name.startswith("Lce") for name in op_counts(flatbuffer))


def _litert_importable() -> bool:
    try:
        import ai_edge_litert.interpreter  # noqa: F401
    except ImportError:
        return False
    return True


def choose_runtime(flatbuffer: bytes | None = None, runtime: str | None = None) -> str:
    """The runtime that runs `flatbuffer`: `"larq_compute_engine"`, `"litert"` or `"tensorflow"`.

    A file with LCE ops runs on Larq Compute Engine's interpreter whatever
    `runtime` says. Any other file (or `flatbuffer=None`): `runtime` is one of
    `RUNTIMES`; None reads the environment variable `QUANTENS_TFLITE_RUNTIME`
    (unset: `"auto"`). `"auto"` is LiteRT where `ai_edge_litert` imports,
    TensorFlow otherwise; `"tensorflow"` is TensorFlow's interpreter always;
    `"litert"` raises ImportError where LiteRT is not installed.

    ```python
    from quantens.export.runtime import choose_runtime

    assert choose_runtime(runtime="tensorflow") == "tensorflow"
    assert choose_runtime() in ("litert", "tensorflow")  # LiteRT where installed
    ```
    """
    choice = runtime if runtime is not None else (os.environ.get(RUNTIME_ENV) or "auto")
    if str(choice).strip().lower() not in RUNTIMES:
        where = "runtime" if runtime is not None else RUNTIME_ENV
        raise ValueError(f"{where} must be one of {', '.join(RUNTIMES)}, not {choice!r}")
    choice = str(choice).strip().lower()
    if flatbuffer is not None and is_lce_file(flatbuffer):
        return LCE_RUNTIME
    if choice == TENSORFLOW:
        return TENSORFLOW
    if _litert_importable():
        return LITERT
    if choice == LITERT:
        raise ImportError(f"the LiteRT runtime was asked for but ai_edge_litert does not "
                          f"import: {_LITERT_INSTALL}")
    return TENSORFLOW


def runtime_info(name: str) -> dict:
    """`{"name": name, "version": ...}` of a runtime `choose_runtime` returns.

    The version is that of the package whose interpreter runs the files:
    ai-edge-litert, tensorflow or larq-compute-engine.

    ```python
    import tensorflow as tf
    from quantens.export.runtime import runtime_info

    assert runtime_info("tensorflow") == {"name": "tensorflow", "version": tf.__version__}
    ```
    """
    if name == LITERT:
        import ai_edge_litert as module
    elif name == TENSORFLOW:
        module = tensorflow()
    elif name == LCE_RUNTIME:
        import larq_compute_engine as module
    else:
        raise ValueError(f"no runtime {name!r}: one of {LITERT}, {TENSORFLOW}, {LCE_RUNTIME}")
    return {"name": name, "version": str(getattr(module, "__version__", "unknown"))}


def create_interpreter(flatbuffer: bytes, num_threads: int = 1, use_xnnpack: bool = True,
                       lce_indirect_bgemm: bool = True,
                       runtime: str | None = None) -> tuple[object, dict]:
    """(interpreter, `runtime_info`) of a member file: the one place quantens creates one.

    The runtime is `choose_runtime(flatbuffer, runtime)`. For an LCE file the
    interpreter is Larq Compute Engine's (its `predict([x])` runs a batch),
    by default with its indirect BGEMM kernel: exact and, on x86, about 8x
    faster than its default binary kernel. For any other file it is a
    `tf.lite`-style `Interpreter` (LiteRT's or TensorFlow's, tensors
    allocated); `use_xnnpack=False` runs the builtin kernels only (no default
    delegates), as packed INT4 filters need. TensorFlow's interpreter is
    created without its deprecation warning.

    ```python
    import numpy as np
    import quantens
    from quantens.export import convert_member
    from quantens.export.runtime import create_interpreter
    from zoo import create_model

    ensemble = quantens.QuantEnsemble(create_model("digits_resnet_e", width=8), (32, 1))
    interpreter, runtime = create_interpreter(convert_member(ensemble, 32))
    assert runtime["name"] in ("litert", "tensorflow")
    inp = interpreter.get_input_details()[0]
    interpreter.set_tensor(inp["index"], np.zeros((1, 8, 8, 1), "float32"))
    interpreter.invoke()
    ```
    """
    name = choose_runtime(flatbuffer, runtime)
    if name == LCE_RUNTIME:
        from larq_compute_engine.tflite.python.interpreter import Interpreter

        interpreter = Interpreter(flatbuffer, num_threads=num_threads, use_xnnpack=use_xnnpack,
                                  use_indirect_bgemm=lce_indirect_bgemm).interpreter
        return interpreter, runtime_info(name)
    if name == LITERT:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    else:
        tf = tensorflow()
        Interpreter, OpResolverType = tf.lite.Interpreter, tf.lite.experimental.OpResolverType
    resolver = (OpResolverType.AUTO if use_xnnpack else
                OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    with quiet_interpreter_deprecation():
        interpreter = Interpreter(model_content=flatbuffer, num_threads=num_threads,
                                  experimental_op_resolver_type=resolver)
    interpreter.allocate_tensors()
    return interpreter, runtime_info(name)


class TFLiteRunner:
    """Runs a member's flatbuffer, one example per call (batch 1).

    The interpreter comes from `create_interpreter` (`runtime` as in
    `choose_runtime`): LiteRT where installed, else TensorFlow's
    `tf.lite.Interpreter`, for float32 and int8 files; Larq Compute Engine's
    for files with LCE ops. `runtime_info` names the one used
    (`{"name": "litert", "version": "2.3.0"}`). Float32 in, float32 logits
    out (int8 inputs are quantized here). `use_xnnpack=False` runs the
    builtin kernels only (no default delegates).

    ```python
    import numpy as np
    import quantens
    from quantens.export import TFLiteRunner, convert_member
    from zoo import create_model

    ensemble = quantens.QuantEnsemble(create_model("digits_resnet_e", width=8), (32, 1))
    runner = TFLiteRunner(convert_member(ensemble, 32))
    logits = runner(np.zeros((3, 8, 8, 1), "float32"))
    assert logits.shape == (3, 10)
    assert runner.runtime_info["name"] in ("litert", "tensorflow")
    ```
    """

    def __init__(self, flatbuffer: bytes, num_threads: int = 1, use_xnnpack: bool = True,
                 lce_indirect_bgemm: bool = True, runtime: str | None = None):
        interpreter, self.runtime_info = create_interpreter(
            flatbuffer, num_threads, use_xnnpack, lce_indirect_bgemm, runtime)
        self.interpreter_name = self.runtime_info["name"]
        self.is_lce = self.interpreter_name == LCE_RUNTIME
        if self.is_lce:
            self._lce = interpreter
        else:
            self._tfl = interpreter
            self._in = interpreter.get_input_details()[0]
            self._out = interpreter.get_output_details()[0]
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


def measure_latency(flatbuffer: bytes, example: np.ndarray | None = None, *, runs: int = 200,
                    warmup: int = 10, num_threads: int = 1, use_xnnpack: bool = True,
                    runtime: str | None = None, max_seconds: float | None = None) -> dict:
    """The median time of one batch-1 inference of a member file, in milliseconds.

    Runs `warmup` calls, then `runs` timed calls (fewer when `max_seconds` of
    timed calls have passed, at least 10) of `TFLiteRunner.run_one` on
    `example` (shape (1, H, W, C); zeros of the file's input shape by
    default), `num_threads` threads, XNNPACK on by default: what export.json
    records as `latency_ms`. Returns `{"ms", "runs", "threads", "xnnpack",
    "runtime"}`. A measurement of this machine at this moment: compare files
    side by side, not with numbers from elsewhere.

    ```python
    import quantens
    from quantens.export import convert_member
    from quantens.export.runtime import measure_latency
    from zoo import create_model

    ensemble = quantens.QuantEnsemble(create_model("digits_resnet_e", width=8), (32, 1))
    latency = measure_latency(convert_member(ensemble, 1), runs=20)
    assert latency["ms"] > 0 and latency["runtime"]["name"] == "larq_compute_engine"
    ```
    """
    import statistics
    import time

    runner = TFLiteRunner(flatbuffer, num_threads=num_threads, use_xnnpack=use_xnnpack,
                          runtime=runtime)
    if example is None:
        shape = runner._lce.input_shapes[0] if runner.is_lce else runner._in["shape"]
        example = np.zeros((1, *[int(d) for d in shape[1:]]), np.float32)
    example = np.asarray(example, np.float32)[:1]
    for _ in range(max(0, int(warmup))):
        runner.run_one(example)
    times = []
    for _ in range(max(1, int(runs))):
        start = time.perf_counter()
        runner.run_one(example)
        times.append(time.perf_counter() - start)
        if max_seconds is not None and len(times) >= 10 and sum(times) > max_seconds:
            break
    return {"ms": round(1e3 * statistics.median(times), 4), "runs": len(times),
            "threads": num_threads, "xnnpack": use_xnnpack, "runtime": runner.runtime_info}
