"""One TFLite flatbuffer per member: float32, int8 on the member's grid, or LCE.

`member_format(bits)` is the form a member is meant to have; `convert`
returns the form it got, and why when that differs (a 1-bit member that LCE
cannot binarize, `det_sign` members without an int8 form).

A mixed member (`QuantEnsemble.member(policy)`) is converted like a uniform
one: its fixed layers carry their own quantizers, which the builder reads
layer by layer, so the file holds each layer at its own bits. `bits` is then
the mix's bits per layer (`quantens.bits.mix_bits`), and the format follows
from all of them (`member_format`): every layer at 2..8 bits is an int8 file
(each filter on its layer's grid, INT4 where that grid fits -8 ... 7), a
layer at 1 bit makes an LCE file, and a layer above 8 bits (none at 1) a
float32 file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from quantens.errors import ExportError, one_line
from quantens.export.builder import build_graph
from quantens.export.common import iter_batches, tensorflow
from quantens.export.emit import calibrate
from quantens.export.flatbuffer import weight_ops
from quantens.export.graph import StepGraph
from quantens.export.int4 import pack_int4 as pack
from quantens.export.int8 import int8_flatbuffer
from quantens.export.lce import LCE_INT8_CHOICES, lce_flatbuffer, remainder_plan

__all__ = [
    "FLOAT32", "INT8", "INT8_BITS", "LCE", "PACK_CHECK_EXAMPLES", "convert", "convert_member",
    "float_flatbuffer", "member_file", "member_format", "stable_names",
]

INT8_BITS = range(2, 9)
FLOAT32 = "float32"
INT8 = "int8"
LCE = "lce"


def member_file(bits: int) -> str:
    """The file name of member `bits` inside `export/`.

    ```python
    from quantens.export import member_file

    assert member_file(4) == "member_4.tflite"
    ```
    """
    return f"member_{int(bits)}.tflite"


def member_format(bits) -> str:
    """The TFLite form a member is meant to have: `"float32"`, `"int8"` or `"lce"`.

    `bits` is a member's bit-width, or a mixed member's bits per layer (a
    mapping of layer names to bits, as `quantens.bits.mix_bits` returns). A
    mix is one file: `"lce"` when a layer is at 1 bit (binary convolutions
    where a 1-bit layer reads a 1-bit activation, the rest as in the 1-bit
    member's file: `quantens.export.lce`), else `"int8"` when every layer is
    at 2..8 bits, else `"float32"`: a layer above 8 bits has no int8 form, and
    TFLite's int8 conversion makes every op between int8 tensors an int8 op
    (a float32 convolution between two fake-quantized tensors comes out as
    an int8 op with 8-bit weights), so such a mix is float32 throughout.

    (With `det_sign` activations, whose grid (2i - n)/n has no int8 form with
    zero point, 2..8-bit members are float32 files; a 1-bit member with no
    convolution LCE can binarize is an int8 (or float32) file: `convert` and
    export.json's `format_reason` say so.)

    ```python
    from quantens.export import member_format

    assert [member_format(b) for b in (32, 16, 8, 2, 1)] == [
        "float32", "float32", "int8", "int8", "lce"]
    assert member_format({"conv1": 8, "conv2": 2}) == "int8"
    assert member_format({"conv1": 32, "conv2": 2}) == "float32"
    assert member_format({"conv1": 32, "conv2": 1}) == "lce"
    ```
    """
    if isinstance(bits, Mapping):
        values = set(bits.values())
        if not values:
            raise ExportError("a mixed member's bits per layer is empty")
        if 1 in values:
            return LCE
        return INT8 if values <= set(INT8_BITS) else FLOAT32
    if bits == 1:
        return LCE
    if bits in INT8_BITS:
        return INT8
    return FLOAT32


def _top_bits(bits) -> int:
    """The widest layer's bits (a member's bits, or a mix's highest)."""
    return max(bits.values()) if isinstance(bits, Mapping) else int(bits)


def _describe(bits) -> str:
    if isinstance(bits, Mapping):
        return f"mixed member ({'/'.join(map(str, sorted(set(bits.values()), reverse=True)))} bits)"
    return f"{bits}-bit member"


def float_flatbuffer(member) -> bytes:
    """The float32 file of a Keras member (the TFLite converter, quantizers inlined)."""
    tf = tensorflow()
    input_shape = tuple(member.input_shape[1:])
    fn = tf.function(lambda x: member(x, training=False), autograph=False,
                     input_signature=[tf.TensorSpec((1, *input_shape), tf.float32, "images")])
    # the converter saves what it is given: the function and its variables,
    # not the Keras model (whose every layer it would trace and save: 5x slower)
    holder = tf.Module()
    holder.weights = [getattr(v, "latent_variable", v) for v in member.weights]
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [fn.get_concrete_function()], holder)
    return stable_names(converter.convert(), {layer.name for layer in member.layers},
                        drop=member.name)


_COUNTER = re.compile(r"_\d+$")


def stable_names(flatbuffer: bytes, keep=(), drop: str | None = None) -> bytes:
    """The file with the process-wide counters dropped from its tensor names.

    Keras names each quantizer object with a counter (`round_activation_18`)
    that grows with every member built in the process, and the converter puts
    those names in the file: without this, the same member's file differs by
    a few bytes from one export to the next. Every path component of a tensor
    name that ends in `_<digits>` loses that ending, except the names in
    `keep` (the member's own layers); a leading component `drop` (the member
    model's name, which for a mix lists its bits) is left out. The file is
    otherwise unchanged.

    ```python
    import quantens
    from quantens.export.tflite import float_flatbuffer
    from zoo import create_model

    ensemble = quantens.QuantEnsemble(create_model("digits_resnet_e", width=4), (32, 2))
    assert len(float_flatbuffer(ensemble.member(2))) == len(float_flatbuffer(ensemble.member(2)))
    ```
    """
    from tensorflow.lite.tools import flatbuffer_utils

    keep = set(keep)

    def stable(name: str) -> str:
        parts = []
        for part in name.split(";"):
            components = part.split("/")
            if drop is not None and len(components) > 1 and components[0] == drop:
                components = components[1:]
            parts.append("/".join(c if c in keep else _COUNTER.sub("", c) for c in components))
        return ";".join(parts)

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer))
    changed = False
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors:
            name = tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)
            new = stable(name)
            if new != name:
                tensor.name, changed = new, True
    if not changed:
        return flatbuffer
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


PACK_CHECK_EXAMPLES = 4  # inputs on which packed and int8 files must give identical outputs


def _int8(graph: StepGraph, calibration_data, pack_int4: bool) -> tuple[bytes, dict]:
    """The int8 file (its 4-bit-sized filters packed) and its details."""
    flatbuffer = int8_flatbuffer(graph, calibrate(graph, calibration_data))
    details: dict = {"grid_scales": sorted(graph.grid_scales())}
    if pack_int4:
        examples = next(iter_batches(calibration_data, PACK_CHECK_EXAMPLES))[0]
        flatbuffer, details["weights_storage"] = pack(flatbuffer,
                                                      examples[:PACK_CHECK_EXAMPLES])
    return flatbuffer, details


def _no_int8_reason(graph: StepGraph, calibration_data) -> str | None:
    """Why `graph` has no int8 form (None when it has one)."""
    if calibration_data is None:
        return "calibration_data"
    if graph.has_sign_activations() or graph.has_symmetric_activations():
        return "`round` activations (det_sign's have no int8 form)"
    return None


def _int8_or_float(graph: StepGraph, member, calibration_data,
                   pack_int4: bool) -> tuple[bytes, str, dict]:
    if graph.bits in INT8_BITS or graph.bits == 1:
        why = _no_int8_reason(graph, calibration_data)
    else:  # a layer above 8 bits
        why = f"a layer at {graph.bits} bits"
    if why is None:
        return _as_int8(_int8(graph, calibration_data, pack_int4))
    return float_flatbuffer(member), FLOAT32, {}


def _as_int8(result: tuple[bytes, dict]) -> tuple[bytes, str, dict]:
    return result[0], INT8, result[1]


def convert(member, bits, calibration_data=None, pack_int4: bool = True,
            lce_int8: str = "exact") -> tuple[bytes, str, dict]:
    """(flatbuffer, format, details) of a Keras member (`QuantEnsemble.member(bits)`).

    For a mixed member (`QuantEnsemble.member(policy)`), `bits` is its bits
    per layer (`quantens.bits.mix_bits(ensemble.model, policy)`): the format
    is `member_format(bits)`, and each layer keeps its own grid in it.

    `details` holds, for the 1-bit member, `lce` (`MemberGraph.lce_plan`: the
    binary convolutions and why the other +-1 layers are not; with an LCE
    file also `int8`, `int8_layers` and `float32_layers`, see
    `quantens.export.lce.lce_flatbuffer` for `lce_int8`), `format_reason`
    where the format is not `member_format(bits)`, and for int8 files
    `grid_scales` (the scales of the member's k-bit activations) and, with
    `pack_int4`, `weights_storage` (`quantens.export.int4.pack_int4`: filters
    whose integers fit -8 ... 7 are stored as packed INT4).
    """
    fmt = member_format(bits)
    if fmt == FLOAT32:
        return float_flatbuffer(member), FLOAT32, {}
    graph = build_graph(member, _top_bits(bits))
    if fmt == LCE:
        if lce_int8 not in LCE_INT8_CHOICES:
            raise ExportError(f"lce_int8 must be one of {', '.join(LCE_INT8_CHOICES)}, "
                              f"not {lce_int8!r}")
        plan = graph.lce_plan()
        details: dict = {"lce": {"binary_convs": plan["binary"],
                                 "not_binarized": plan["float"]}}
        if plan["binary"]:
            int8, ranges = lce_int8, None
            if int8 == "full":
                why = _no_int8_reason(graph, calibration_data)
                if why is None:
                    ranges = calibrate(graph, calibration_data)
                else:
                    int8 = "exact"
                    details["lce"]["int8_reason"] = f"int8 ops need {why}: exact int8 filters"
            try:
                flatbuffer = lce_flatbuffer(graph, int8, ranges)
            except ExportError:
                raise
            except Exception as error:  # the LCE converter raises many kinds
                reason = f"the LCE converter failed: {one_line(error)}"
            else:
                details["lce"].update(int8=int8, **remainder_plan(graph, int8),
                                      weight_ops=weight_ops(flatbuffer))
                return flatbuffer, LCE, details
        else:
            reason = ("no convolution with +-1 weights reads a 1-bit activation: LCE has "
                      "nothing to binarize")
        flatbuffer, got, more = _int8_or_float(graph, member, calibration_data, pack_int4)
        return flatbuffer, got, {**details, "format_reason": reason, **more}
    if graph.has_symmetric_activations():
        return float_flatbuffer(member), FLOAT32, {
            "format_reason": "det_sign's grid (2i - n)/n has no int8 form with one rounding"}
    if calibration_data is None:
        raise ExportError(
            f"the {_describe(bits)} is exported as int8 and needs calibration_data "
            "(inputs from the training split)"
        )
    return _as_int8(_int8(graph, calibration_data, pack_int4))


def convert_member(ensemble, bits: int, calibration_data=None, pack_int4: bool = True,
                   lce_int8: str = "exact") -> bytes:
    """The TFLite flatbuffer of member `bits` (see `member_format`).

    int8 members (2..8 bits) need `calibration_data` (inputs from the training
    split) for the ranges of their full-precision tensors. With `det_sign`
    activations, 2..8-bit members are float32 files.

    ```python
    import quantens
    from quantens.export import convert_member
    from zoo import create_model

    ensemble = quantens.QuantEnsemble(create_model("digits_resnet_e", width=8), (32, 1))
    flatbuffer = convert_member(ensemble, 1)
    assert b"LceBconv2d" in flatbuffer
    ```
    """
    return convert(ensemble.member(bits), bits, calibration_data, pack_int4, lce_int8)[0]
