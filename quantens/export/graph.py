"""A member as data: the list of its steps, and what the emitters ask about it.

`StepGraph` holds the steps (`quantens.export.steps`) that
`quantens.export.builder.build_graph` makes from a member, in the order they
run, and answers the questions that decide how each file format emits them:
which convolutions LCE binarizes (`lce_plan`), which tensors lie on a k-bit
grid (`grid_only_tensors`, `grid_scales`). It imports no emitter: the
emitters (`emit`, `int8`, `lce`) import it.

```python
import numpy as np
from quantens.export.graph import StepGraph
from quantens.export.steps import Act, ActStep, InputStep

graph = StepGraph([InputStep(name="x", inputs=[]),
                   ActStep(name="a", inputs=["x"], act=Act("round", 2)),
                   ActStep(name="out", inputs=["a"], act=None)],
                  input_shape=(4,), output="out", bits=2)
assert graph.grid_scales() == {1 / 3} and graph.grid_only_tensors() == set()
```
"""

from __future__ import annotations

import collections

from quantens.export.steps import (
    Act,
    ActStep,
    ConvStep,
    DenseStep,
    DepthwiseStep,
    IdentityStep,
    InputStep,
    LinearStep,
    Step,
    step_act,
)

__all__ = ["StepGraph"]


class StepGraph:
    """The steps of a member (`steps`, in order), its input shape, output step and bits."""

    def __init__(self, steps: list[Step], input_shape: tuple, output: str, bits: int):
        self.steps = steps
        self.input_shape = tuple(input_shape)
        self.output = output
        self.bits = int(bits)
        self._by_name = {s.name: s for s in steps}

    def step(self, name: str) -> Step:
        return self._by_name[name]

    def readers(self, name: str) -> list[Step]:
        """The steps that read tensor `name`."""
        return [s for s in self.steps if name in s.inputs and not isinstance(s, IdentityStep)]

    def binary_input(self, step: LinearStep) -> tuple[str, Act] | None:
        """(pre-activation tensor, its 1-bit activation) when `step` reads a binary input.

        Either the step's own input quantizer (ResNetE) or an activation step
        that makes its input ({0, range} or +-1; quantize_model's models).
        """
        if step.act is not None:
            return (step.inputs[0], step.act) if step.act.binary else None
        source = self._by_name.get(step.inputs[0])
        if isinstance(source, ActStep) and source.act is not None and source.act.binary:
            return source.inputs[0], source.act
        return None

    def lce_plan(self) -> dict:
        """Which 1-bit-weight layers LCE binarizes, and why the others stay float.

        `binary`: names of the convolutions LCE turns into `LceBconv2d` (+-1
        weights that read a 1-bit activation); `float`: name -> reason for
        every other layer with +-1 weights.
        """
        binary, other = [], {}
        for s in self.steps:
            if not isinstance(s, LinearStep) or s.grid != 1:
                continue
            if isinstance(s, DepthwiseStep):
                other[s.name] = "depthwise: LCE has no binary depthwise convolution"
            elif isinstance(s, DenseStep):
                other[s.name] = "dense: LCE binarizes convolutions only"
            elif self.binary_input(s) is None:
                other[s.name] = ("its input is not a 1-bit activation (full-precision "
                                 "tensor such as a residual sum or linear bottleneck)")
            elif self.binary_input(s)[1].kind == "round" and s.geometry.padding == "SAME" \
                    and s.geometry.pad_value != 0.0:
                other[s.name] = "round activations with pad_values != 0"
            else:
                binary.append(s.name)
        return {"binary": binary, "float": other}

    def quantized_conv_inputs(self) -> list[str]:
        """Names of the tensors that reach a convolution through its quantized activation.

        In the 1-bit member these are the tensors LCE binarizes: their values
        are compared with the threshold (0.5 for `round`).
        """
        return [s.inputs[0] for s in self.steps if isinstance(s, ConvStep) and s.act is not None]

    def grid_scales(self) -> set[float]:
        """value_range / n of every k-bit `round` activation (an int8 grid's scale)."""
        acts = [step_act(s) for s in self.steps]
        return {a.value_range / a.levels for a in acts if a is not None and a.on_int8_grid}

    def grid_only_tensors(self) -> set[str]:
        """Tensors read only through one k-bit `round` activation (k <= 8).

        In an int8 file such a tensor is requantized straight onto the
        activation's grid (scale r/n, zero point -128: the requantization
        rounds and saturates at 0) instead of first onto a calibrated 8-bit
        range: one rounding instead of two.
        """
        readers: dict[str, set] = collections.defaultdict(set)
        for s in self.steps:
            if isinstance(s, IdentityStep):
                continue
            act = step_act(s)
            for name in s.inputs:
                grid = (act is not None and act.on_int8_grid
                        and (isinstance(s, ActStep) or name == s.inputs[0]))
                readers[name].add((act.value_range, act.bits) if grid else None)
        return {name for name, acts in readers.items()
                if name != self.output and len(acts) == 1 and None not in acts
                and not isinstance(self._by_name[name], InputStep)
                and not self._has_post(self._by_name[name])}

    @staticmethod
    def _has_post(step: Step) -> bool:
        return isinstance(step, LinearStep) and step.post is not None

    def has_symmetric_activations(self) -> bool:
        return any(step_act(s) is not None and step_act(s).kind == "symmetric"
                   for s in self.steps)

    def has_sign_activations(self) -> bool:
        return any(step_act(s) is not None and step_act(s).kind == "sign" for s in self.steps)
