"""One TFLite flatbuffer per member: float32, int8 on the member's grid, or LCE.

`member_format(bits)` is the form a member is meant to have; `convert`
returns the form it got, and why when that differs (a 1-bit member that LCE
cannot binarize, `det_sign` members without an int8 form).
"""

from __future__ import annotations

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
    "float_flatbuffer", "member_file", "member_format",
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


def member_format(bits: int) -> str:
    """The TFLite form a member is meant to have: `"float32"`, `"int8"` or `"lce"`.

    (With `det_sign` activations, whose grid (2i - n)/n has no int8 form with
    zero point, 2..8-bit members are float32 files; a 1-bit member with no
    convolution LCE can binarize is an int8 (or float32) file: `convert` and
    export.json's `format_reason` say so.)

    ```python
    from quantens.export import member_format

    assert [member_format(b) for b in (32, 16, 8, 2, 1)] == [
        "float32", "float32", "int8", "int8", "lce"]
    ```
    """
    if bits == 1:
        return LCE
    if bits in INT8_BITS:
        return INT8
    return FLOAT32


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
    return converter.convert()


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
    if _no_int8_reason(graph, calibration_data) is None:
        return _as_int8(_int8(graph, calibration_data, pack_int4))
    return float_flatbuffer(member), FLOAT32, {}


def _as_int8(result: tuple[bytes, dict]) -> tuple[bytes, str, dict]:
    return result[0], INT8, result[1]


def convert(member, bits: int, calibration_data=None, pack_int4: bool = True,
            lce_int8: str = "exact") -> tuple[bytes, str, dict]:
    """(flatbuffer, format, details) of a Keras member (`QuantEnsemble.member(bits)`).

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
    graph = build_graph(member, bits)
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
            f"the {bits}-bit member is exported as int8 and needs calibration_data "
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
