"""The bytes of a member's file, counted without exporting it.

`member_bytes(ensemble, policy)` is the size of the `.tflite` file that
`export_member(ensemble, policy, ...)` (or, for a bit-width, `export_ensemble`)
writes: fast enough for a search over thousands of policies.
`member_sizes(ensemble)` builds the tables once (cached per ensemble, a few
conversions of reference files); each count is then a sum over layers
(about 1 ms for 15 layers, 6 ms for keras' MobileNetV2, most of it
`quantens.bits.mix_bits`).

int8 files (every layer at 2..8 bits) are counted exactly. The converter
lays a file out as a flatbuffer whose graph part (operators, tensors and
their names, per-channel scales and zero points, biases, metadata) is the
same for every policy of a model that exports as int8: a mix changes only

1. how each layer's filter is stored: int8, one byte a weight, or INT4,
   two weights a byte, where every integer of the filter lies in -8 ... 7
   (computed as the int8 emitter computes them, `int8_filter_integers`);
2. the one-byte constants that clip each k-bit activation at the top of its
   grid (`quantens.export.int8.round_to_grid`: the value n - 128 for
   n = 2^k - 1), stored once per distinct value;
3. which bias buffers are equal, which the converter stores once: zero
   biases (BN offsets of zero, as in an untrained model) of equal length.

Each buffer is a vector of a 4-byte length and its bytes padded to 4
(`stored_vector_bytes`), and a buffer that holds data has a 4-byte field
more than an empty one; the writer pads the whole file to 8 bytes (its
largest alignment, the 64-bit zero points: `file_padding`). Measured on
the converter's layout and on the INT4 rewrite's (which lays files out to
the same size), so

    bytes = ceil8(base + sum(4 + ceil4(filter bytes)) + 12 * clip values
                  - shared zero biases)

where `base` comes from one int8 file of the ensemble (its narrowest int8
member, whose INT4 filters the count checks) converted from synthetic
inputs of its shape (sizes do not depend on calibration data).
Not counted: other buffers that happen to be equal, chiefly the biases of a
mix whose re-estimated BN means are zero to rounding (an untrained model,
whose BN offsets are zero): each such pair makes the file a few dozen bytes
smaller than the count. A trained model's biases differ.

LCE and float32 files (a layer at 1 bit, or above 8 bits) are counted
exactly for a uniform member (its file is converted once: the count is its
size) and estimated for a mix, within `ESTIMATE_TOLERANCE`. Their layers'
graphs differ by bit-width (binary convolutions, the float quantizer ops of
k-bit activations), so a mix is counted from one reference file per
bit-width of the ensemble (every layer at that bits, in that format): the
anchor's file, plus per layer its filter and per-channel storage (exact:
bitpacked binary words of 32 input channels, int8 where that holds the
filter exactly, else float32) and its share of the graph (the difference of
the references, spread over the layers), plus the objects the layers share
(operator codes, scalar constants), each once. `breakdown(policy)["exact"]`
says which count is which.

`weight_bytes(flatbuffer)` splits a real file into its weights (the filters
of its convolutions and dense layers, as stored) and the rest (scales, zero
points, biases, the graph): what no smaller grid can buy.

```python
import quantens
from quantens.export import member_bytes
from zoo import create_model

bits = (8, 4, 2)
ensemble = quantens.QuantEnsemble(create_model("digits_resnet_e", width=4, bit_widths=bits), bits)
uniform = [member_bytes(ensemble, b) for b in bits]
mixed = member_bytes(ensemble, {"block1_conv": 8, "*": 2})
assert uniform[0] > mixed > uniform[2]
```
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Mapping

import numpy as np

from quantens.bits import policy_layers
from quantens.errors import ExportError, UsageError
from quantens.export.builder import build_graph
from quantens.export.steps import ActStep, AffineStep, ConvStep, DenseStep, LinearStep
from quantens.export.tflite import FLOAT32, INT8, LCE, convert, member_format

__all__ = [
    "BUFFER_DATA_FIELD", "ESTIMATE_TOLERANCE", "file_padding", "int8_filter_integers", "FILTER_OPS", "MemberSizes", "member_bytes",
    "member_sizes", "stored_vector_bytes", "weight_bytes",
]

FILTER_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "LceBconv2d")
BUFFER_DATA_FIELD = 4  # a Buffer table that holds data has one 4-byte offset more
CLIP_CONSTANT_BYTES = 4 + 4 + BUFFER_DATA_FIELD  # a one-byte buffer: length, byte + pad, field
REFERENCE_EXAMPLES = 4  # synthetic inputs that calibrate the reference files
# The relative error of an LCE or float32 mix's count, as measured on random policies
# (digits ResNetE: LCE <= 0.3%, float32 <= 0.1%; a converted MobileNetV2-shaped model:
# LCE <= 1.6%, float32 <= 1.2%): an estimate's bound as seen, not a guarantee.
ESTIMATE_TOLERANCE = 0.02


def stored_vector_bytes(n: int) -> int:
    """Bytes a flatbuffer vector of `n` bytes occupies: its 4-byte length, the data padded to 4.

    ```python
    from quantens.export.size import stored_vector_bytes

    assert [stored_vector_bytes(n) for n in (0, 1, 4, 5)] == [4, 8, 8, 12]
    ```
    """
    return 4 + -(-int(n) // 4) * 4


# ------------------------------------------------------------------ real files


def weight_bytes(flatbuffer: bytes) -> dict:
    """How many bytes of a TFLite file are weights, and how many are not.

    `weights`: the data of every filter of a convolution, depthwise
    convolution, dense layer and LCE binary convolution, as stored (float32,
    int8, packed INT4, bitpacked binary; an int8 filter read through a
    DEQUANTIZE counts as int8); `non_weights`: the rest of the file (bias
    vectors, per-channel scales and zero points, the graph's operators,
    tensors and names, metadata): what a smaller grid cannot buy. `filters`
    counts the filters; `bytes` is the file's size.

    ```python
    import quantens
    from quantens.export import convert_member
    from quantens.export.size import weight_bytes
    from zoo import create_model

    ensemble = quantens.QuantEnsemble(create_model("digits_resnet_e", width=8), (32, 1))
    split = weight_bytes(convert_member(ensemble, 32))
    assert split["weights"] + split["non_weights"] == split["bytes"]
    assert split["filters"] == 10  # 9 convolutions and the classifier
    ```
    """
    found = _filter_buffers(flatbuffer)
    weights = sum(size for _, size in found)
    return {"bytes": len(flatbuffer), "weights": int(weights),
            "non_weights": len(flatbuffer) - int(weights), "filters": len(found)}


def _filter_buffers(flatbuffer: bytes) -> list[tuple[int, int]]:
    """(buffer index, data bytes) of every distinct filter buffer of a TFLite file."""
    from tensorflow.lite.tools import flatbuffer_utils

    from quantens.export.flatbuffer import op_name

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer))
    seen: dict[int, int] = {}
    for subgraph in model.subgraphs:
        made_by = {out: op for op in subgraph.operators for out in op.outputs}
        for op in subgraph.operators:
            if op_name(model, op.opcodeIndex) not in FILTER_OPS or len(op.inputs) < 2:
                continue
            index = op.inputs[1]
            producer = made_by.get(index)
            if producer is not None and op_name(model, producer.opcodeIndex) == "DEQUANTIZE":
                index = producer.inputs[0]
            buffer = subgraph.tensors[index].buffer
            data = model.buffers[buffer].data
            seen[buffer] = 0 if data is None else len(data)
    return list(seen.items())


def file_padding(flatbuffer: bytes) -> tuple[int, int]:
    """(padding, alignment): the zero bytes a flatbuffer's writer put after its 8-byte
    header so that its size is a multiple of `alignment` (flatbuffers' minalign: 8 where a
    tensor has 64-bit zero points, else 4).

    The writer builds the file back to front and, last, pads it to its largest
    alignment; the root table's vtable is the first thing after the padding.

    ```python
    import quantens
    from quantens.export import convert_member
    from quantens.export.size import file_padding
    from zoo import create_model

    ensemble = quantens.QuantEnsemble(create_model("digits_resnet_e", width=4), (32, 1))
    padding, alignment = file_padding(convert_member(ensemble, 32))
    assert alignment == 4 and padding in (0, 4)  # float32: no 64-bit zero points
    ```
    """
    import struct

    from tensorflow.lite.python import schema_py_generated as schema

    root = struct.unpack_from("<I", flatbuffer, 0)[0]
    vtable = root - struct.unpack_from("<i", flatbuffer, root)[0]
    padding = vtable - 8 if 8 <= vtable < root else 0
    model = schema.Model.GetRootAsModel(flatbuffer, 0)
    wide = any(
        model.Subgraphs(g).Tensors(t).Quantization() is not None
        and model.Subgraphs(g).Tensors(t).Quantization().ZeroPointLength() > 0
        for g in range(model.SubgraphsLength())
        for t in range(model.Subgraphs(g).TensorsLength()))
    return padding, 8 if wide else 4


def _layer_bytes(entry: dict) -> int:
    return entry["weight_bytes"] + entry.get("channel_bytes", 0)


def _shared_objects(flatbuffer: bytes) -> dict:
    """The objects of a file that its layers share, each once: operator codes and scalar
    constants (by value), with the bytes each adds to the file (packed with and without it)."""
    import copy

    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer))

    def size(m) -> int:
        return len(flatbuffer_utils.convert_object_to_bytearray(m))

    whole = size(model)
    found = {}
    for i, code in enumerate(model.operatorCodes):
        trimmed = copy.copy(model)
        trimmed.operatorCodes = model.operatorCodes[:i] + model.operatorCodes[i + 1:]
        key = ("op", code.builtinCode, code.deprecatedBuiltinCode, code.customCode, code.version)
        found[key] = whole - size(trimmed)
    for g, subgraph in enumerate(model.subgraphs):
        for t, tensor in enumerate(subgraph.tensors):
            data = model.buffers[tensor.buffer].data
            if data is None or len(tensor.shape) or len(data) > 8:
                continue
            trimmed = copy.copy(model)
            trimmed.subgraphs = list(model.subgraphs)
            sub = copy.copy(subgraph)
            sub.tensors = subgraph.tensors[:t] + subgraph.tensors[t + 1:]
            trimmed.subgraphs[g] = sub
            trimmed.buffers = list(model.buffers)
            empty = copy.copy(model.buffers[tensor.buffer])
            empty.data = None
            trimmed.buffers[tensor.buffer] = empty
            key = ("const", tensor.type, bytes(np.asarray(data, np.uint8)))
            found[key] = whole - size(trimmed)
    return found


def _shared_bytes(shared: dict, present) -> int:
    """The bytes of the shared objects of the references of bit-widths `present`, each once."""
    union: dict = {}
    for b in present:
        union.update(shared[b])
    return sum(union.values())


def _aligned(n: int, alignment: int) -> int:
    return -(-int(n) // alignment) * alignment


def _filter_sizes(flatbuffer: bytes) -> list[int]:
    """The data size of every filter of a TFLite file (see `weight_bytes`)."""
    return [size for _, size in _filter_buffers(flatbuffer)]


def _multiset_minus(items: list, other: list) -> list:
    """`items` less one occurrence of each element of `other`."""
    left = list(items)
    for item in other:
        if item in left:
            left.remove(item)
    return left


# ------------------------------------------------------------- int8 filters


def int8_filter_integers(step: LinearStep) -> np.ndarray:
    """The integers of a linear step's filter in an int8 file (`Int8Emitter.linear`).

    Per output channel: the grid's integers where int8 holds them with one
    scale (`quantens.export.int8.fake_quant_weights`), else integers of a
    max-abs scale (which reach +-127).

    ```python
    import numpy as np
    from quantens.export.size import int8_filter_integers
    from quantens.export.steps import ConvGeometry, ConvStep

    kernel = np.array([-1, -1 / 3, 1 / 3, 1.0]).reshape(1, 1, 4, 1)  # 2-bit DoReFa values
    step = ConvStep(name="conv", inputs=["x"], kernel=kernel, grid=3, unit=np.array([1 / 3]),
                    act=None, mult=np.array([0.5]), add=np.zeros(1),
                    geometry=ConvGeometry(strides=(1, 1), dilations=(1, 1), padding="SAME"))
    assert int8_filter_integers(step).reshape(-1).tolist() == [-3, -1, 1, 3]  # INT4 holds them
    ```
    """
    dense_as_conv = (isinstance(step, DenseStep) and step.unit is not None
                     and np.ptp(step.unit) > 0)
    per_channel = not isinstance(step, DenseStep) or dense_as_conv
    kernel = np.asarray(step.folded_kernel(), np.float64)
    if step.depthwise:
        h, w, c, m = kernel.shape
        kernel = kernel.reshape(h, w, 1, c * m)
    axes = tuple(range(kernel.ndim - 1))
    scale = np.abs(kernel).max(axis=axes) / 127.0
    if step.unit is not None:
        mult = np.asarray(step.mult, np.float64).reshape(-1)
        unit = np.asarray(step.unit, np.float64).reshape(-1)
        grid = np.where(mult == 0, 1.0, mult) * unit
        ints = np.abs(np.rint(kernel / grid)).max(axis=axes)
        exact = (ints <= 127) & (mult != 0)
        scale = np.where(exact, np.abs(mult) * unit, scale)
    if not per_channel:
        scale = np.full_like(scale, scale.max())
    bound = (127.0 * np.maximum(scale, 1e-12)).astype(np.float32).astype(np.float64)
    return np.clip(np.rint(kernel / (bound / 127.0)), -127, 127)


def _stored_filter_bytes(step: LinearStep, pack_int4: bool) -> int:
    """Bytes of a linear step's filter data in an int8 file (INT4: two a byte)."""
    ints = int8_filter_integers(step)
    if pack_int4 and ints.min(initial=0) >= -8 and ints.max(initial=0) <= 7:
        return -(-ints.size // 2)
    return int(ints.size)


def _clip_levels(step) -> set[int]:
    """The n = 2^k - 1 of the k-bit activations a step clips on their int8 grid."""
    if isinstance(step, LinearStep):
        acts = (step.act, step.post)
    elif isinstance(step, ActStep):
        acts = (step.act,)
    else:
        return set()
    return {a.levels for a in acts if a is not None and a.kind == "round" and a.levels <= 255}


def _layer_of(step_name: str) -> str:
    return step_name.split("/")[0]


@dataclasses.dataclass
class _Int8Table:
    """What an int8 file's size is made of, per layer and bit-width."""

    base: int
    filters: dict[str, dict[int, int]]  # layer -> bits -> stored filter bytes (vectors)
    storage: dict[str, dict[int, str]]  # layer -> bits -> "int8" / "int4" (filters only)
    weights: dict[str, dict[int, int]]  # layer -> bits -> weight bytes (unpadded)
    clips: dict[str, dict[int, frozenset]]  # layer -> bits -> clip levels of its steps
    fixed_clips: frozenset  # clip levels of layers the same in every member
    sizes: dict[int, list[int]]  # bits -> the data size of every linear filter (checks)
    biases: dict[str, dict[int, list]]  # layer -> bits -> (channels, zero, re-estimated in a mix)
    fixed_weights: int = 0  # filter bytes of other ops (a BN as a depthwise convolution)
    alignment: int = 1  # the file's size is a multiple of this (flatbuffers' minalign)


# ---------------------------------------------------------------- the table


def _switchable(model) -> list[str]:
    return [layer.name for layer in model.layers if hasattr(layer, "fixed_layer")]


class MemberSizes:
    """The file size of any member or mix of one ensemble, as a sum (`bytes(policy)`).

    Build it with `member_sizes(ensemble)` (cached per ensemble). The tables
    read the ensemble's weights when they are first needed; rebuild them
    (`member_sizes(ensemble, refresh=True)`) after training changes them.
    `pack_int4` and `lce_int8` are the export's options of the same names.
    A count of a mix assumes its BN statistics re-estimated
    (`export_member`'s `data`).

    ```python
    import quantens
    from quantens.export import MemberSizes
    from zoo import create_model

    bits = (8, 2)
    ensemble = quantens.QuantEnsemble(create_model("digits_resnet_e", width=4, bit_widths=bits), bits)
    sizes = MemberSizes(ensemble, pack_int4=False)
    assert sizes.format({"block1_conv": 8, "*": 2}) == "int8"
    assert sizes.bytes(2) == sizes.bytes(8)  # without INT4, every filter is int8
    ```
    """

    def __init__(self, ensemble, *, pack_int4: bool = True, lce_int8: str = "exact"):
        from quantens.ensemble import QuantEnsemble

        if not isinstance(ensemble, QuantEnsemble):
            raise UsageError(
                f"member_sizes: ensemble must be a QuantEnsemble, got {type(ensemble).__name__}")
        self._ensemble = weakref.ref(ensemble)
        self.bit_widths = tuple(ensemble.bit_widths)
        self.pack_int4 = bool(pack_int4)
        self.lce_int8 = lce_int8
        self.input_shape = tuple(ensemble.model.input_shape[1:])
        self.named_layers = policy_layers(ensemble.model)
        # what carries a share of an LCE or float32 file's graph: the named layers and the
        # activation quantizers that follow the layers they feed (their own ops)
        self._units = self.named_layers + [
            layer.name for layer in ensemble.model.layers
            if getattr(layer, "bits_follow", None) == "outputs" and hasattr(layer, "fixed_layer")]
        self.switchable = _switchable(ensemble.model)
        self._graphs: dict[int, object] = {}
        self._int8: _Int8Table | None = None
        self._int8_checked = False
        self._int8_error: ExportError | None = None
        self._references: dict = {}
        self._families: dict[str, dict] = {}
        self._filters: dict[tuple, tuple[int, str]] = {}

    # ------------------------------------------------------------- policies

    def layer_bits(self, policy) -> dict[str, int]:
        """Every switchable layer's bits in `policy` (a bit-width, or a mix)."""
        from quantens.bits import is_policy, mix_bits

        if is_policy(policy):
            return mix_bits(self._model(), policy, self.bit_widths)
        if policy not in self.bit_widths:
            raise UsageError(f"no member with {policy!r} bits; the members are "
                             f"{' '.join(map(str, self.bit_widths))}")
        return dict.fromkeys(self.switchable, int(policy))

    def format(self, policy) -> str:
        """The format the export gives `policy` (`quantens.export.member_format`)."""
        return self._format(self.layer_bits(policy))

    def _format(self, bits: Mapping[str, int]) -> str:
        named = {name: bits[name] for name in self.named_layers if name in bits}
        return member_format(named or bits)

    def bytes(self, policy) -> int:
        """The size in bytes of `policy`'s file (a bit-width, or a mix as
        `QuantEnsemble.member` takes it)."""
        return self.breakdown(policy)["bytes"]

    def breakdown(self, policy) -> dict:
        """`bytes`, `format`, `weights` (filter data), `non_weights` (the rest), `exact`
        (whether `bytes` is the file's size to the byte) and, per layer whose bits the
        policy sets, `layers`: its `bits`, `storage` and filter `weight_bytes`."""
        from quantens.bits import is_policy

        bits = self.layer_bits(policy)
        fmt = self._format(bits)
        if fmt == LCE and not self._binary_layers(bits):
            # nothing to binarize: the export falls back to int8 or float32
            fmt = INT8 if max(bits.values()) <= 8 else FLOAT32
        if fmt == INT8:
            if self._int8_table() is not None:
                return self._int8_breakdown(bits, mixed=is_policy(policy))
            fmt = FLOAT32  # det_sign members: no int8 form
        if not is_policy(policy):
            return self._uniform_file(int(policy))
        return self._reference_breakdown(bits, fmt)

    # ---------------------------------------------------------------- int8

    def _int8_breakdown(self, bits: Mapping[str, int], mixed: bool = False) -> dict:
        table = self._int8_table()
        total, weights = table.base, 0
        clips = set(table.fixed_clips)
        layers = {}
        for layer, by_bits in table.filters.items():
            b = bits.get(layer, self._fixed_bits)
            total += by_bits[b]
            weights += table.weights[layer][b]
            if layer in bits and layer in self.named_layers:
                layers[layer] = {"bits": b, "storage": table.storage[layer][b],
                                 "weight_bytes": table.weights[layer][b]}
        for layer, by_bits in table.clips.items():
            clips |= by_bits[bits.get(layer, self._fixed_bits)]
        # the converter stores equal buffers once: zero biases (BN offsets of zero, as
        # in an untrained model) of equal length are one buffer; a mix's re-estimated
        # BN statistics give its layers biases of their own
        zeros: dict[int, int] = {}
        for layer, by_bits in table.biases.items():
            for channels, zero, reestimated in by_bits[bits.get(layer, self._fixed_bits)]:
                if zero and not (mixed and reestimated):
                    zeros[channels] = zeros.get(channels, 0) + 1
        total -= sum((count - 1) * (stored_vector_bytes(4 * channels) + BUFFER_DATA_FIELD)
                     for channels, count in zeros.items())
        total = _aligned(total + CLIP_CONSTANT_BYTES * len(clips), table.alignment)
        weights += table.fixed_weights
        return {"bytes": int(total), "format": INT8, "weights": int(weights),
                "non_weights": int(total - weights), "exact": True, "layers": layers}

    @property
    def _fixed_bits(self) -> int:
        """The bit-width whose graph describes the layers that are the same in every member:
        the widest at most 8."""
        return max(self._int8_bits())

    def _int8_bits(self) -> list[int]:
        return [b for b in self.bit_widths if b <= 8]

    def _graph(self, b: int):
        if b not in self._graphs:
            self._graphs[b] = build_graph(self._ensemble_checked().member(b), b)
        return self._graphs[b]

    def _int8_table(self) -> _Int8Table | None:
        """The int8 table (None when this ensemble's int8 policies export otherwise)."""
        if self._int8_error is not None:
            raise self._int8_error
        if self._int8 is not None or self._int8_checked:
            return self._int8
        self._int8_checked = True  # built once, or known to be none
        if not any(2 <= b <= 8 for b in self.bit_widths):
            return None
        graphs = {b: self._graph(b) for b in self._int8_bits()}
        if any(g.has_symmetric_activations() for g in graphs.values()):
            return None  # det_sign members: float32 files
        filters: dict[str, dict[int, int]] = {}
        storage: dict[str, dict[int, str]] = {}
        weights: dict[str, dict[int, int]] = {}
        clips: dict[str, dict[int, frozenset]] = {}
        sizes: dict[int, list[int]] = {}
        biases: dict[str, dict[int, list]] = {}
        switchable = set(self.switchable)
        for b, graph in graphs.items():
            per_layer_clips: dict[str, set] = {}
            for step in graph.steps:
                layer = _layer_of(step.name)
                per_layer_clips.setdefault(layer, set()).update(_clip_levels(step))
                if isinstance(step, (LinearStep, AffineStep)):
                    bn = step.bn if isinstance(step, LinearStep) else step.name
                    biases.setdefault(layer, {}).setdefault(b, []).append(
                        (int(np.size(step.add)), not np.any(step.add), bn in switchable))
                if not isinstance(step, LinearStep):
                    continue
                stored = _stored_filter_bytes(step, self.pack_int4)
                sizes.setdefault(b, []).append(stored)
                packed = stored < step.kernel.size
                filters.setdefault(layer, {}).setdefault(b, 0)
                filters[layer][b] += stored_vector_bytes(stored)
                weights.setdefault(layer, {}).setdefault(b, 0)
                weights[layer][b] += stored
                kinds = storage.setdefault(layer, {})
                kinds[b] = "int4" if packed and kinds.get(b, "int4") == "int4" else "int8"
            for layer, levels in per_layer_clips.items():
                clips.setdefault(layer, {})[b] = frozenset(levels)
        fixed_clips = frozenset().union(*(c[self._fixed_bits] for layer, c in clips.items()
                                          if layer not in switchable))
        clips = {layer: c for layer, c in clips.items() if layer in switchable}
        for by_bits in biases.values():  # layers the same in every member: any bits
            for b in graphs:
                by_bits.setdefault(b, by_bits.get(self._fixed_bits, []))
        table = _Int8Table(0, filters, storage, weights, clips, fixed_clips, sizes, biases)
        self._int8 = table
        # the narrowest int8 member: its INT4 filters check that the runtime takes them
        ref_bits = min(b for b in self.bit_widths if 2 <= b <= 8)
        flatbuffer, fmt = self._reference(ref_bits)
        if fmt != INT8:
            self._int8 = None
            return None
        predicted = self._int8_breakdown(dict.fromkeys(self.switchable, ref_bits))
        measured = weight_bytes(flatbuffer)
        stored = sorted(_filter_sizes(flatbuffer))
        counted = sorted(table.sizes[ref_bits])
        missing = _multiset_minus(counted, stored)
        if missing:
            self._int8 = None
            self._int8_error = ExportError(
                f"member_sizes: the {ref_bits}-bit file has no filter of {missing[0]} bytes "
                "where the count has one (its INT4 filters kept int8? see the export's "
                "weights_storage): this model's int8 files cannot be counted; try "
                "pack_int4=False")
            raise self._int8_error
        # filters of steps that are the same in every member and not linear (a BN
        # after a residual sum, as a depthwise convolution): weights of fixed size
        table.fixed_weights = measured["weights"] - predicted["weights"]
        padding, table.alignment = file_padding(flatbuffer)
        table.base = len(flatbuffer) - padding - predicted["bytes"]
        return table

    # ----------------------------------------------------------- references

    def _reference(self, b: int) -> tuple[bytes, str]:
        """The uniform member `b`'s file (converted once, from synthetic inputs)."""
        key = ("file", b)
        if key not in self._references:
            ensemble = self._ensemble_checked()
            flatbuffer, fmt, _ = convert(ensemble.member(b), b, self._inputs(), self.pack_int4,
                                         self.lce_int8)
            self._references[key] = (flatbuffer, fmt)
        return self._references[key]

    def _uniform_file(self, b: int) -> dict:
        """The count of uniform member `b` in a format the int8 table does not count: its
        file, converted once."""
        flatbuffer, fmt = self._reference(b)
        split = weight_bytes(flatbuffer)
        return {"bytes": split["bytes"], "format": fmt, "weights": split["weights"],
                "non_weights": split["non_weights"], "exact": True, "layers": {}}

    def _reference_breakdown(self, bits: Mapping[str, int], fmt: str) -> dict:
        """The estimate of an LCE or float32 mix's file (see `ESTIMATE_TOLERANCE`)."""
        table = self._family_table(fmt)
        anchor = table["anchor"]
        layers = self._family_layers(fmt, bits)
        present = {entry["bits"] for entry in layers.values()}
        total = table["bytes"][anchor] + sum(
            _layer_bytes(entry) - _layer_bytes(table["layers"][anchor][name])
            + table["graph"][entry["bits"]] - table["graph"][anchor]
            for name, entry in layers.items())
        total += _shared_bytes(table["shared"], present) - _shared_bytes(table["shared"],
                                                                         {anchor})
        weights = table["weights"][anchor] + sum(
            entry["weight_bytes"] - table["layers"][anchor][name]["weight_bytes"]
            for name, entry in layers.items())
        if len(present) == 1:  # every layer at one bit-width: that reference file
            only = next(iter(present))
            total, weights = table["bytes"][only], table["weights"][only]
        else:  # 64-bit zero points (int8 filters or ops) make the writer align to 8
            wide = fmt == LCE and (self.lce_int8 == "full" or any(
                "int8" in entry["storage"] for entry in layers.values()))
            total = _aligned(round(total), 8 if wide else 4)
        named = {name: {k: v for k, v in layers[name].items() if k != "channel_bytes"}
                 for name in self.named_layers}
        return {"bytes": int(total), "format": fmt, "weights": int(weights),
                "non_weights": int(total - weights), "exact": False, "layers": named}

    def _family_layers(self, fmt: str, bits: Mapping[str, int]) -> dict:
        """Per named layer and activation quantizer: its `bits`, `storage` and filter
        `weight_bytes` in format `fmt`."""
        binary = self._binary_layers(bits) if fmt == LCE else set()
        layers = {}
        for name in self._units:
            b = bits[name]
            stored, storage, channels = self._family_filter(fmt, name, b, name in binary)
            layers[name] = {"bits": b, "storage": storage, "weight_bytes": stored,
                            "channel_bytes": channels}
        return layers

    def _binary_layers(self, bits: Mapping[str, int]) -> set[str]:
        """The named layers a mix's LCE file binarizes: 1-bit convolutions of the uniform
        1-bit member's plan whose input activation is at 1 bit in the mix too."""
        if 1 not in self.bit_widths:
            return set()
        graph = self._graph(1)
        found = set()
        for name in graph.lce_plan()["binary"]:
            layer = _layer_of(name)
            if bits.get(layer) != 1:
                continue
            step = graph.step(name)
            if step.act is None:  # an activation step feeds it: that layer's bits
                source = _layer_of(step.inputs[0])
                if source in bits and bits[source] != 1:
                    continue
            found.add(layer)
        return found

    def _family_filter(self, fmt: str, layer: str, b: int, binary: bool) -> tuple[int, str, int]:
        """(filter bytes, storage, per-channel bytes) of a layer in an LCE or float32 file.

        Per-channel bytes: what its channels add besides the filter: an LCE binary
        convolution's float32 multiplier and bias (8 a channel), an int8 filter's scale
        and 64-bit zero point plus a bias (16), a float32 filter's bias (4).
        """
        key = (fmt, layer, b, binary)
        if key in self._filters:
            return self._filters[key]
        from quantens.export.int8_filters import exact_int8

        total, channels, kinds = 0, 0, set()
        for step in self._graph(b).steps:
            if not isinstance(step, LinearStep) or _layer_of(step.name) != layer:
                continue
            kernel = step.kernel
            outputs = kernel.shape[-2] * kernel.shape[-1] if step.depthwise else kernel.shape[-1]
            if binary and isinstance(step, ConvStep) and step.grid == 1:
                h, w, cin, cout = kernel.shape
                stored, storage, per_channel = cout * h * w * -(-cin // 32) * 4, "binary", 8
            elif fmt == LCE and self.lce_int8 == "full":
                stored, storage, per_channel = kernel.size, "int8", 16
            elif fmt == LCE and self.lce_int8 == "exact":
                folded = step.folded_kernel()
                if step.depthwise:
                    h, w, c, m = folded.shape
                    folded = folded.reshape(h, w, c * m)
                exact = exact_int8(folded.astype(np.float32), folded.ndim - 1)
                stored, storage, per_channel = ((kernel.size, "int8", 16) if exact is not None
                                                else (4 * kernel.size, "float32", 4))
            else:
                stored, storage, per_channel = 4 * kernel.size, "float32", 4
            total += stored
            channels += per_channel * int(outputs)
            kinds.add(storage)
        result = (total, kinds.pop() if len(kinds) == 1 else "+".join(sorted(kinds)) or "none",
                  channels)
        self._filters[key] = result
        return result

    def _family_table(self, fmt: str) -> dict:
        """Per bit-width: the file of every layer at that bits in format `fmt`, and each
        bit-width's graph bytes per layer relative to the anchor's."""
        if fmt in self._families:
            return self._families[fmt]
        anchor = 1 if fmt == LCE else max(self.bit_widths)
        sizes, weights, graph, layers = {}, {}, {}, {}
        for b in self.bit_widths:
            flatbuffer = self._family_reference(fmt, b)
            split = weight_bytes(flatbuffer)
            sizes[b], weights[b] = split["bytes"], split["weights"]
            layers[b] = self._family_layers(fmt, dict.fromkeys(self.switchable, b))
        shared = {b: _shared_objects(self._family_reference(fmt, b)) for b in self.bit_widths}
        units = max(len(self._units), 1)
        for b in self.bit_widths:
            stored = sum(_layer_bytes(layers[b][name]) - _layer_bytes(layers[anchor][name])
                         for name in self._units)
            once = _shared_bytes(shared, {b}) - _shared_bytes(shared, {anchor})
            graph[b] = (sizes[b] - sizes[anchor] - stored - once) / units
        table = {"anchor": anchor, "bytes": sizes, "weights": weights, "graph": graph,
                 "layers": layers, "shared": shared}
        self._families[fmt] = table
        return table

    def _family_reference(self, fmt: str, b: int) -> bytes:
        """Every layer at `b` bits, in format `fmt` (LCE: b's steps through the LCE
        emitter; float32: the mixed member {"*": b}'s float32 file)."""
        key = (fmt, b)
        if key in self._references:
            return self._references[key]
        ensemble = self._ensemble_checked()
        if fmt == LCE:
            if b == 1:
                flatbuffer, got = self._reference(1)
                if got != LCE:
                    raise ExportError("member_sizes: the 1-bit member has nothing LCE binarizes")
            else:
                from quantens.export.emit import calibrate
                from quantens.export.lce import lce_flatbuffer

                graph = self._graph(b)
                ranges = (calibrate(graph, self._inputs()) if self.lce_int8 == "full"
                          else None)
                flatbuffer = lce_flatbuffer(graph, self.lce_int8, ranges)
        else:
            import warnings

            from quantens.export.tflite import float_flatbuffer

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                member = ensemble.member({"*": b})
            flatbuffer = float_flatbuffer(member)
        self._references[key] = flatbuffer
        return flatbuffer

    def _inputs(self) -> np.ndarray:
        return np.random.default_rng(0).normal(
            size=(REFERENCE_EXAMPLES, *self.input_shape)).astype(np.float32)

    # -------------------------------------------------------------- helpers

    def _ensemble_checked(self):
        ensemble = self._ensemble()
        if ensemble is None:
            raise UsageError("member_sizes: the ensemble these tables count no longer exists")
        return ensemble

    def _model(self):
        return self._ensemble_checked().model


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def member_sizes(ensemble, *, pack_int4: bool = True, lce_int8: str = "exact",
                 refresh: bool = False) -> MemberSizes:
    """The `MemberSizes` of `ensemble` (built once per ensemble and options, then cached).

    `refresh=True` rebuilds the tables (after training changed the weights:
    a filter's storage depends on its integers).

    ```python
    import quantens
    from quantens.export import member_sizes
    from zoo import create_model

    bits = (8, 2)
    ensemble = quantens.QuantEnsemble(create_model("digits_resnet_e", width=4, bit_widths=bits), bits)
    sizes = member_sizes(ensemble)
    split = sizes.breakdown({"block1_conv": 8, "*": 2})
    assert split["format"] == "int8" and split["exact"]
    assert split["layers"]["block2_conv"]["storage"] == "int4"
    ```
    """
    from quantens.export.lce import LCE_INT8_CHOICES

    if lce_int8 not in LCE_INT8_CHOICES:
        raise UsageError(f"member_sizes: lce_int8 must be one of {', '.join(LCE_INT8_CHOICES)}, "
                         f"got {lce_int8!r}")
    per_ensemble = _CACHE.setdefault(ensemble, {})
    key = (bool(pack_int4), lce_int8)
    if refresh or key not in per_ensemble:
        per_ensemble[key] = MemberSizes(ensemble, pack_int4=pack_int4, lce_int8=lce_int8)
    return per_ensemble[key]


def member_bytes(ensemble, policy, *, pack_int4: bool = True, lce_int8: str = "exact") -> int:
    """The size in bytes of the file the export writes for `policy`, without exporting.

    `policy` is a member's bit-width or a mix (`QuantEnsemble.member(policy)`:
    layer names or patterns to bits, or a callable). See `quantens.export.size`
    for how it is counted: an int8 file exactly; `member_sizes(ensemble)` for
    the breakdown (weights and the rest) and whether a count is exact.

    ```python
    import quantens
    from quantens.export import member_bytes
    from zoo import create_model

    bits = (8, 2)
    ensemble = quantens.QuantEnsemble(create_model("digits_resnet_e", width=4, bit_widths=bits), bits)
    assert member_bytes(ensemble, 8) > member_bytes(ensemble, {"block6_conv": 2, "*": 8})
    ```
    """
    return member_sizes(ensemble, pack_int4=pack_int4, lce_int8=lce_int8).bytes(policy)
