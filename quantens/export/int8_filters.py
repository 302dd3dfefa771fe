"""Float filters that int8 holds exactly, stored as int8 with a DEQUANTIZE.

A member's float32 ops can have filters that lie on an integer grid: the
BN-folded kernel of a layer with +-1 or k-bit weights is, per output channel,
integers times one scale. `store_exact_int8` rewrites every such float32
filter of a CONV_2D, DEPTHWISE_CONV_2D or FULLY_CONNECTED op as an int8
tensor with per-channel scales, read through a DEQUANTIZE op (TFLite
dequantizes constant tensors once, when the interpreter is prepared): a
quarter of the bytes, and the same float32 values up to one rounding of the
product integer * scale. Full-precision filters stay float32. It is what the
1-bit member's LCE file uses for the convolutions LCE cannot binarize and
that read full-precision tensors (see `quantens.export.lce`).
"""

from __future__ import annotations

import numpy as np

__all__ = ["EXACT_OPS", "EXACT_TOLERANCE", "exact_int8", "store_exact_int8"]

EXACT_OPS = {"CONV_2D": 0, "DEPTHWISE_CONV_2D": 3, "FULLY_CONNECTED": 0}  # op -> channel axis
# |integer * scale - value| allowed per channel, relative to its largest |value|:
# float32 rounding of the product, far below any grid's step (1/127)
EXACT_TOLERANCE = 1e-6
_DEQUANTIZE_PER_CHANNEL_VERSION = 5


def exact_int8(values: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(int8 integers, per-channel scales) that reproduce `values` exactly, or None.

    Per channel (along `axis`), the smallest integer m <= 127 such that every
    value is an integer multiple of max|value| / m; None when some channel
    has no such m (full-precision weights).

    ```python
    import numpy as np
    from quantens.export.int8_filters import exact_int8

    kernel = np.array([[0.5, -0.5, 1.5], [2.0, -2.0, 2.0]], np.float32).T  # channels last
    ints, scales = exact_int8(kernel, axis=1)
    assert ints[:, 0].tolist() == [1, -1, 3] and scales.tolist() == [0.5, 2.0]
    assert exact_int8(np.array([[0.1], [0.2001]], np.float32), axis=1) is None
    ```
    """
    moved = np.moveaxis(np.asarray(values, np.float64), axis, 0)
    rows = moved.reshape(moved.shape[0], -1)
    peak = np.abs(rows).max(axis=1)
    safe = np.where(peak > 0, peak, 1.0)
    levels = np.zeros(len(rows))
    for m in range(1, 128):
        scaled = rows / safe[:, None] * m
        fits = np.all(np.abs(scaled - np.rint(scaled)) <= 1e-3, axis=1) & (levels == 0)
        levels[fits] = m
        if np.all(levels > 0):
            break
    if np.any(levels == 0):
        return None
    scales = (safe / levels).astype(np.float32)
    ints = np.rint(rows / scales[:, None].astype(np.float64))
    error = np.abs(ints * scales[:, None].astype(np.float32) - rows).max(axis=1)
    if np.any(error > EXACT_TOLERANCE * safe) or np.abs(ints).max(initial=0) > 127:
        return None
    ints = np.moveaxis(ints.reshape(moved.shape), 0, axis).astype(np.int8)
    return ints, scales


def store_exact_int8(flatbuffer: bytes) -> tuple[bytes, dict]:
    """The file with its exactly-int8 float32 filters stored as int8; (bytes, report).

    The report counts the filters stored as int8 and those left float32
    (`int8_filters`, `float32_filters`, by op) and the bytes saved.
    """
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    from quantens.export.flatbuffer import op_name

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer))
    users: dict[int, int] = {}
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors:
            users[tensor.buffer] = users.get(tensor.buffer, 0) + 1
    dequantize = None
    stored: dict[str, int] = {}
    kept: dict[str, int] = {}
    for subgraph in model.subgraphs:
        new_ops = []
        for op in subgraph.operators:
            name = op_name(model, op.opcodeIndex)
            if name not in EXACT_OPS or len(op.inputs) < 2 or op.inputs[1] < 0:
                continue
            tensor = subgraph.tensors[op.inputs[1]]
            data = model.buffers[tensor.buffer].data
            if tensor.type != schema.TensorType.FLOAT32 or data is None:
                continue
            values = np.asarray(data, np.uint8).view(np.float32).reshape(tensor.shape)
            exact = exact_int8(values, EXACT_OPS[name]) if users[tensor.buffer] == 1 else None
            if exact is None:
                kept[name] = kept.get(name, 0) + 1
                continue
            ints, scales = exact
            if dequantize is None:
                dequantize = _opcode(model, schema.BuiltinOperator.DEQUANTIZE,
                                     _DEQUANTIZE_PER_CHANNEL_VERSION)
            buffer = schema.BufferT()
            buffer.data = ints.reshape(-1).view(np.uint8)
            model.buffers.append(buffer)
            quantization = schema.QuantizationParametersT()
            quantization.scale = scales.tolist()
            quantization.zeroPoint = [0] * len(scales)
            quantization.quantizedDimension = EXACT_OPS[name]
            q = schema.TensorT()
            q.shape, q.type, q.buffer = list(tensor.shape), schema.TensorType.INT8, \
                len(model.buffers) - 1
            q.name = (tensor.name.decode() if isinstance(tensor.name, bytes)
                      else str(tensor.name or "")) + "/int8"
            q.quantization = quantization
            subgraph.tensors.append(q)
            model.buffers[tensor.buffer].data = None  # the float filter: DEQUANTIZE's output
            read = schema.OperatorT()
            read.opcodeIndex = dequantize
            read.inputs, read.outputs = [len(subgraph.tensors) - 1], [op.inputs[1]]
            new_ops.append(read)
            stored[name] = stored.get(name, 0) + 1
        subgraph.operators = new_ops + list(subgraph.operators)  # constants: run first
    packed = bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    return packed, {"int8_filters": stored, "float32_filters": kept,
                    "bytes_saved": len(flatbuffer) - len(packed)}


def _opcode(model, builtin: int, version: int) -> int:
    """The index of `builtin`'s operator code in `model`, added if missing."""
    from tensorflow.lite.python import schema_py_generated as schema

    for i, code in enumerate(model.operatorCodes):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin:
            code.version = max(code.version, version)
            return i
    code = schema.OperatorCodeT()
    code.builtinCode = builtin
    code.deprecatedBuiltinCode = min(builtin, 127)
    code.version = version
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1
