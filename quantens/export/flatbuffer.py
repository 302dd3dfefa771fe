"""Reading TFLite flatbuffers: operators, int8 weights, input quantization."""

from __future__ import annotations

import collections

import numpy as np

__all__ = ["input_quantization", "int8_conv_weights", "op_counts", "op_name", "weight_ops"]


def _flatbuffer_model(flatbuffer: bytes):
    from tensorflow.lite.tools import flatbuffer_utils

    return flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer))


def op_name(model, code_index: int) -> str:
    from tensorflow.lite.python import schema_py_generated as schema

    code = model.operatorCodes[code_index]
    builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
    if builtin == schema.BuiltinOperator.CUSTOM:
        custom = code.customCode
        return custom.decode() if isinstance(custom, bytes) else str(custom)
    for name, value in vars(schema.BuiltinOperator).items():
        if value == builtin:
            return name
    return f"BUILTIN_{builtin}"


def op_counts(flatbuffer: bytes) -> dict[str, int]:
    """How often each operator occurs in a TFLite flatbuffer (custom ops by name).

    ```python
    import numpy as np
    import quantens
    from quantens.export import convert_member, op_counts
    from zoo import create_model

    ensemble = quantens.QuantEnsemble(create_model("digits_resnet_e", width=8), (32, 1))
    assert op_counts(convert_member(ensemble, 1))["LceBconv2d"] == 6
    ```
    """
    model = _flatbuffer_model(flatbuffer)
    counts: collections.Counter = collections.Counter()
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            counts[op_name(model, op.opcodeIndex)] += 1
    return dict(sorted(counts.items()))


def int8_conv_weights(flatbuffer: bytes) -> list[dict]:
    """The int8 weights of every CONV_2D and DEPTHWISE_CONV_2D op, with its input's quantization.

    Each item: `op`, `storage` (`int8`, or `int4`: packed, unpacked here),
    `weights` (as int8, in TFLite's layout: output channels
    first for CONV_2D, last for DEPTHWISE_CONV_2D), `input_scale`,
    `input_zero_point`. A conv whose input has scale r/n and zero point -128
    reads a k-bit activation grid on [0, r] (n = 2^k - 1).
    """
    from tensorflow.lite.python import schema_py_generated as schema

    model = _flatbuffer_model(flatbuffer)
    found = []
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            name = op_name(model, op.opcodeIndex)
            if name not in ("CONV_2D", "DEPTHWISE_CONV_2D"):
                continue
            tensor = subgraph.tensors[op.inputs[1]]
            data = model.buffers[tensor.buffer].data
            if tensor.type not in (schema.TensorType.INT8, schema.TensorType.INT4) \
                    or data is None:
                continue
            raw = np.asarray(data, np.uint8)
            if tensor.type == schema.TensorType.INT4:  # two per byte, low nibble first
                nibbles = np.stack([raw & 0xF, raw >> 4], axis=-1).reshape(-1).astype(np.int8)
                values = np.where(nibbles > 7, nibbles - 16, nibbles)[:int(np.prod(tensor.shape))]
            else:
                values = raw.view(np.int8)
            q = subgraph.tensors[op.inputs[0]].quantization
            found.append({
                "op": name,
                "storage": "int4" if tensor.type == schema.TensorType.INT4 else "int8",
                "weights": values.astype(np.int8).reshape(tensor.shape),
                "input_scale": float(q.scale[0]) if q is not None and q.scale is not None
                else None,
                "input_zero_point": int(q.zeroPoint[0]) if q is not None
                and q.zeroPoint is not None else None,
            })
    return found


def weight_ops(flatbuffer: bytes) -> dict[str, int]:
    """How many ops with a filter compute in which type, and how their filter is stored.

    Keys `"<op> <input type>/<filter storage>"`: `CONV_2D int8/int8` is an
    int8 op, `CONV_2D float32/float32` a float op, `CONV_2D float32/int8` a
    float op whose filter is stored as int8 and read through a DEQUANTIZE,
    `LceBconv2d binary/binary` a bitpacked binary convolution.

    ```python
    import quantens
    from quantens.export import convert_member
    from quantens.export.flatbuffer import weight_ops
    from zoo import create_model

    ensemble = quantens.QuantEnsemble(create_model("digits_resnet_e", width=8), (32, 1))
    ops = weight_ops(convert_member(ensemble, 1))
    assert ops["LceBconv2d binary/binary"] == 6 and ops["CONV_2D float32/float32"] == 3
    ```
    """
    from tensorflow.lite.python import schema_py_generated as schema

    model = _flatbuffer_model(flatbuffer)
    types = {value: name.lower() for name, value in vars(schema.TensorType).items()
             if not name.startswith("_")}
    counts: collections.Counter = collections.Counter()
    for subgraph in model.subgraphs:
        made_by = {out: op for op in subgraph.operators for out in op.outputs}
        for op in subgraph.operators:
            name = op_name(model, op.opcodeIndex)
            if name == "LceBconv2d":
                counts[f"{name} binary/binary"] += 1
                continue
            if name not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED") \
                    or len(op.inputs) < 2:
                continue
            source, weights = subgraph.tensors[op.inputs[0]], op.inputs[1]
            storage = subgraph.tensors[weights]
            producer = made_by.get(weights)
            if producer is not None and op_name(model, producer.opcodeIndex) == "DEQUANTIZE":
                storage = subgraph.tensors[producer.inputs[0]]
            counts[f"{name} {types[source.type]}/{types[storage.type]}"] += 1
    return dict(sorted(counts.items()))


def input_quantization(flatbuffer: bytes) -> tuple[float, int] | None:
    """(scale, zero point) the model input is rounded to, when its first op quantizes it."""
    model = _flatbuffer_model(flatbuffer)
    graph = model.subgraphs[0]
    source = graph.inputs[0]
    for op in graph.operators:
        if op_name(model, op.opcodeIndex) == "QUANTIZE" and op.inputs[0] == source:
            q = graph.tensors[op.outputs[0]].quantization
            return float(q.scale[0]), int(q.zeroPoint[0])
    tensor = graph.tensors[source]
    if tensor.quantization is not None and tensor.quantization.scale is not None:
        return float(tensor.quantization.scale[0]), int(tensor.quantization.zeroPoint[0])
    return None
