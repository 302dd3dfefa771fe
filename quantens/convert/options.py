"""`quantize_model`'s quantizer options, checked, and the check that its members differ.

`QUANTIZER_OPTIONS` holds the options (`**quantizer_options`) and their
defaults; `check_options` checks the ones passed; `check_something_varies`
refuses a conversion whose members would all compute the same (no
quantizable layer, identity weights without a quantized activation, or a
policy that fixes every layer).

```python
from quantens.convert import QUANTIZER_OPTIONS  # before TensorFlow: selects tf-keras
from quantens.convert.options import check_options

assert check_options({"relu_range": 4}) == {**QUANTIZER_OPTIONS, "relu_range": 4.0}
```
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from quantens import registry
from quantens.bits import check_bit_width
from quantens.convert._plan import Plan
from quantens.convert.kinds import ACT
from quantens.defaults import CONVERTED_WEIGHT_QUANTIZATION, WEIGHT_QUANTIZATIONS
from quantens.errors import ConfigError, UsageError

__all__ = ["QUANTIZER_OPTIONS", "check_options", "check_something_varies"]

QUANTIZER_OPTIONS = {
    "weight_quantization": CONVERTED_WEIGHT_QUANTIZATION,
    "relu_range": None,
    "learn_ranges": True,
    "depthwise_bits": 8,
    "share_bn": False,
    "sync_bn": False,
}
"""`quantize_model`'s `**quantizer_options` and their defaults:

- `weight_quantization`: `narrow` (the default: a max-abs scale per output
  channel keeps every kernel's scale, so each member's BN, started from the
  original's statistics, still fits), `dorefa` (a per-tensor tanh
  normalisation that rescales each kernel: run `quantens.calibrate` to
  re-estimate the members' BN statistics) or `identity` (full-precision
  weights in every member);
- `relu_range`: one clip value for every k-bit member: [0, relu_range] for a
  relu, [0, min(cap, relu_range)] for a capped relu such as ReLU6. None (the
  default): a clip value per member, `quantens.quantizers.default_clip_value`
  until `quantens.calibrate` sets it from data;
- `learn_ranges`: every member's clip values are trained with its own loss
  (PACT's gradient; the default: on a converted MobileNetV2 fine-tuned 10
  epochs, learned ranges took the 2-bit member from 85% to 93% and the 32-,
  8- and 4-bit members from 92-93% to 97%); False: they change only by
  `quantens.calibrate`;
- `depthwise_bits`: depthwise convolutions (`DepthwiseConv2D`, and the
  depthwise step of `SeparableConv2D`) are quantized to at least this many
  bits in every member, their kernels and the ReLU-like activation they read
  (default 8: a 3x3 depthwise kernel mixes 9 values of one channel, and a
  MobileNetV2 whose 2-bit member had them at 2 bits reached 25% on digits
  after fine-tuning, 94% with them at 8 bits); None: the member's own bits;
- `share_bn`: one BN for all members instead of one per member;
- `sync_bn`: BN statistics synchronised across replicas (`synchronized=True`).
"""


def check_options(options: dict) -> dict:
    """`QUANTIZER_OPTIONS` updated with `options`, each checked (UsageError: one line)."""
    unknown = sorted(set(options) - set(QUANTIZER_OPTIONS))
    if unknown:
        raise UsageError(
            f"unknown quantizer option {unknown[0]!r}: choose from "
            f"{', '.join(QUANTIZER_OPTIONS)}"
        )
    options = {**QUANTIZER_OPTIONS, **options}
    if options["weight_quantization"] not in WEIGHT_QUANTIZATIONS:
        raise UsageError(
            f"unknown weight_quantization {options['weight_quantization']!r}: choose one of "
            f"{', '.join(WEIGHT_QUANTIZATIONS)}"
        )
    relu_range = options["relu_range"]
    if relu_range is not None:
        if isinstance(relu_range, bool) or not isinstance(relu_range, numbers.Real) \
                or not math.isfinite(relu_range) or not relu_range > 0:
            raise UsageError(
                f"relu_range must be a finite number > 0 (or None: a clip value per member), "
                f"got {relu_range!r}")
        options["relu_range"] = float(relu_range)
    if options["depthwise_bits"] is not None:
        try:
            options["depthwise_bits"] = check_bit_width(options["depthwise_bits"], "depthwise_bits")
        except ValueError as error:
            raise UsageError(f"{error} (or None: the member's own bits)") from None
    for name in ("learn_ranges", "share_bn", "sync_bn"):
        value = options[name]
        if not isinstance(value, (bool, np.bool_)):
            raise UsageError(f"{name} must be True or False, got {value!r}")
        options[name] = bool(value)
    return options


def check_something_varies(model, plan: Plan, fixed_bits: dict, bit_widths, options) -> None:
    """ConfigError when every member would compute the same function (nothing to quantize)."""
    if len(bit_widths) < 2:
        return
    weights_vary = options["weight_quantization"] != "identity"
    varying = [u for u in plan.units if fixed_bits.get(u.name) is None
               and (u.kind == ACT or weights_vary)]
    if varying:
        return
    start = (f"model {model.name!r} has nothing to quantize: its members "
             f"{', '.join(map(str, bit_widths))} would all compute the same, because")
    if not plan.units:
        raise ConfigError(
            f"{start} it has no {_either(registry.kernel_layer_names())} layer and no "
            "ReLU-like activation (what quantize_model quantizes); convert a model with some"
        )
    free = [u for u in plan.units if fixed_bits.get(u.name) is None]
    if free:  # all of them kernels, under identity weights
        raise ConfigError(
            f"{start} weight_quantization='identity' keeps every kernel full precision and no "
            "ReLU-like activation follows the member; use weight_quantization='narrow' (the "
            "default)"
        )
    fixed = [u.name for u in plan.units][:6] + (["..."] if len(plan.units) > 6 else [])
    raise ConfigError(
        f"{start} the policy fixes the precision of every layer it could quantize "
        f"({', '.join(fixed)}; by default the first convolution and the last Dense stay at "
        "32 bits); pass a policy that leaves some to follow the member (policy={} fixes "
        "nothing)"
    )


def _either(names: str) -> str:
    """"A, B, C" as "A, B or C"."""
    head, _, last = names.rpartition(", ")
    return f"{head} or {last}" if head else last
