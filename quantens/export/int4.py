"""Packed 4-bit filters: int8 files whose filters fit INT4 stored two values per byte.

A member's int8 file stores each quantized CONV_2D, DEPTHWISE_CONV_2D and
FULLY_CONNECTED filter as integers with per-channel scales. Where every
integer of a filter lies in INT4's -8 ... 7 (DoReFa's odd integers at 2 and 3
bits, the narrow grid's -(2^(k-1) - 1) ... 2^(k-1) - 1 at 2 ... 4 bits), the
filter is rewritten as TFLite INT4 (`kTfLiteInt4`): the same integers and
scales, two per byte, low nibble first, as the runtime unpacks them. The file
then computes exactly what the int8 file computes; `pack_int4` checks that
with TFLite's builtin kernels (no delegates) on sample inputs, per operator
kind, and keeps int8 where a kind's packed filters do not give identical
outputs.

Full-precision filters (stem, classifier, shortcuts; max-abs scales whose
integers reach 127) stay int8, as do 4-bit DoReFa filters (odd integers up to
15).
"""

from __future__ import annotations

import numpy as np

from quantens.errors import one_line

__all__ = ["INT4_MAX", "INT4_MIN", "PACKABLE_OPS", "pack_int4", "pack_nibbles"]

PACKABLE_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
INT4_MIN, INT4_MAX = -8, 7


def pack_nibbles(values: np.ndarray) -> np.ndarray:
    """int8 values in -8 ... 7 as bytes, two per byte, low nibble first (row-major order).

    ```python
    import numpy as np
    from quantens.export.int4 import pack_nibbles

    packed = pack_nibbles(np.array([1, -1, 7, -8, 3], np.int8))
    assert packed.tolist() == [0xF1, 0x87, 0x03]
    ```
    """
    nibbles = values.astype(np.int16).reshape(-1) & 0xF
    if len(nibbles) % 2:
        nibbles = np.append(nibbles, 0)
    return (nibbles[0::2] | (nibbles[1::2] << 4)).astype(np.uint8)


def _filters(model) -> list[tuple[str, object, int]]:
    """(op name, filter tensor, buffer index) of every int8 filter of a packable op."""
    from tensorflow.lite.python import schema_py_generated as schema

    from quantens.export.flatbuffer import op_name

    found = []
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            name = op_name(model, op.opcodeIndex)
            if name not in PACKABLE_OPS or len(op.inputs) < 2:
                continue
            tensor = subgraph.tensors[op.inputs[1]]
            if tensor.type == schema.TensorType.INT8 and \
                    model.buffers[tensor.buffer].data is not None:
                found.append((name, tensor, tensor.buffer))
    return found


def _rewrite(flatbuffer: bytes, kinds) -> tuple[bytes, dict]:
    """The file with every fitting filter of the op `kinds` packed; (bytes, per-tensor notes)."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer))
    users: dict[int, int] = {}
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors:
            users[tensor.buffer] = users.get(tensor.buffer, 0) + 1
    notes = {}
    for op, tensor, buffer in _filters(model):
        name = tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)
        values = np.asarray(model.buffers[buffer].data, np.uint8).view(np.int8)
        reach = int(np.abs(values.astype(np.int16)).max(initial=0))
        if values.min(initial=0) < INT4_MIN or values.max(initial=0) > INT4_MAX:
            notes[name] = (op, "int8", "full precision (max-abs scale)" if reach == 127
                           else f"its integers reach ±{reach}; INT4 holds -8 ... 7")
        elif users[buffer] != 1:
            notes[name] = (op, "int8", "its buffer is shared with another tensor")
        elif op not in kinds:
            notes[name] = (op, "int8", None)
        else:
            model.buffers[buffer].data = pack_nibbles(values)
            tensor.type = schema.TensorType.INT4
            notes[name] = (op, "int4", None)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)), notes


def _builtin_outputs(flatbuffer: bytes, examples: np.ndarray) -> np.ndarray:
    from quantens.export.runtime import TFLiteRunner

    return TFLiteRunner(flatbuffer, use_xnnpack=False)(examples)


def pack_int4(flatbuffer: bytes, examples: np.ndarray) -> tuple[bytes, dict]:
    """The int8 file with its INT4-sized filters packed, and what was stored how.

    `examples` (a few inputs) check that the packed file gives outputs
    identical to the int8 file with the builtin kernels; a kind of op whose
    packed filters do not (or cannot run) stays int8, with the reason.

    Returns (flatbuffer, report): `int4_tensors`, `int8_tensors` (counts) and
    `int8_reasons` (tensor name -> why it stays int8).

    ```python
    import numpy as np
    import quantens
    from quantens.export import convert_member
    from quantens.export.int4 import pack_int4
    from zoo import create_model

    bits = (32, 2)
    ensemble = quantens.QuantEnsemble(create_model("digits_resnet_e", width=8, bit_widths=bits), bits)
    x = np.random.default_rng(0).normal(size=(8, 8, 8, 1)).astype("float32")
    int8 = convert_member(ensemble, 2, x, pack_int4=False)
    packed, report = pack_int4(int8, x[:2])
    assert report["int4_tensors"] == 6 and len(packed) < 0.75 * len(int8)
    ```
    """
    examples = np.asarray(examples, np.float32)
    reference = _builtin_outputs(flatbuffer, examples)
    failed: dict[str, str] = {}

    def attempt(kinds):
        packed, notes = _rewrite(flatbuffer, kinds)
        if not any(state == "int4" for _, state, _ in notes.values()):
            return flatbuffer, notes, None
        try:
            same = np.array_equal(_builtin_outputs(packed, examples), reference)
        except Exception as error:  # the interpreter refuses the file: keep int8
            return None, notes, f"the TFLite runtime cannot run it: {one_line(error)}"
        return (packed, notes, None) if same else (
            None, notes, "the builtin kernels' outputs differ from the int8 file's")

    packed, notes, why = attempt(PACKABLE_OPS)
    if packed is None:  # find the kinds that work on their own
        kinds = []
        for kind in PACKABLE_OPS:
            alone, _, reason = attempt((kind,))
            if alone is None:
                failed[kind] = reason or why
            else:
                kinds.append(kind)
        packed, notes, _ = attempt(tuple(kinds)) if kinds else (flatbuffer, notes, None)
        if packed is None:
            packed, notes = flatbuffer, _rewrite(flatbuffer, ())[1]
    reasons = {}
    for name, (op, state, reason) in notes.items():
        if state == "int8":
            reasons[name] = reason or failed.get(op, "not packed")
    return packed, {
        "int4_tensors": sum(state == "int4" for _, state, _ in notes.values()),
        "int8_tensors": len(reasons),
        "int8_reasons": reasons,
    }
