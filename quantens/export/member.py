"""`MemberGraph`: a member's steps together with the emitters that turn them into ops.

The convenience above the export layers: `MemberGraph(member, bits)` builds
the member's `StepGraph` (`quantens.export.builder`) and `forward` runs one
of the emitters on it (`emit.FloatEmitter`, `int8.Int8Emitter`,
`lce.LceEmitter`). Nothing in the export package imports this module but
`quantens.export` itself.
"""

from __future__ import annotations

from collections.abc import Mapping

from quantens.export.builder import GraphBuilder
from quantens.export.emit import FloatEmitter
from quantens.export.graph import StepGraph
from quantens.export.int8 import Int8Emitter
from quantens.export.lce import lce_emitter

__all__ = ["MODES", "MemberGraph"]

MODES = ("float", "int8", "lce")


class MemberGraph(StepGraph):
    """A standalone member as a list of steps, with BN folded into convolutions.

    Built from `QuantEnsemble.member(b)` (of a zoo model or of a
    `quantens.quantize_model` conversion); `forward` emits it as TensorFlow
    ops in one of three modes: `"float"` (the member's own arithmetic, used to
    calibrate ranges), `"int8"` (fake-quantized on the member's grid, for the
    TFLite converter) and `"lce"` (the 1-bit member in the +-1 form that Larq
    Compute Engine turns into binary convolutions).

    ```python
    import numpy as np
    import quantens
    from quantens.export import MemberGraph
    from zoo import create_model

    ensemble = quantens.QuantEnsemble(create_model("digits_resnet_e", width=8), (32, 8, 4, 2, 1))
    graph = MemberGraph(ensemble.member(4), bits=4)
    x = np.zeros((2, 8, 8, 1), "float32")
    np.testing.assert_allclose(graph.forward(x), ensemble.member(4)(x), atol=1e-4)
    ```
    """

    def __init__(self, member, bits: int):
        built = GraphBuilder(member, bits).build()
        super().__init__(built.steps, built.input_shape, built.output, built.bits)

    def forward(self, x, mode: str = "float", ranges: Mapping[str, tuple] | None = None,
                taps: dict | None = None):
        """The member's logits as TensorFlow ops (`mode`: float, int8 or lce).

        `ranges` (int8 mode) maps tensor names to calibrated (min, max);
        `taps` (float mode), when a dict, receives every tensor that int8 mode
        quantizes with a calibrated range. In lce mode, what is not binarized
        is float32 (the member's arithmetic), or with `ranges` int8 as in int8
        mode.
        """
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        if mode == "int8":
            return Int8Emitter(self, ranges).run(x)
        if mode == "lce":
            return lce_emitter(self, ranges).run(x)
        return FloatEmitter(self, taps=taps).run(x)
