"""The precision policy: which layers have a fixed bit-width in every member.

A policy maps layer-name patterns (`fnmatch`, the first match wins) to a
bit-width, or is a callable `layer -> bits or None`; `default_policy` keeps
the first convolution and the last `Dense` at 32 bits. `resolve_policy` turns
a policy into a fixed bit-width (or None: follow the member) per unit of a
conversion's plan: its kernel layers and ReLU-like activations.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping

import tensorflow as tf

from quantens import registry
from quantens.bits import check_bit_width
from quantens.convert._plan import Plan
from quantens.convert.kinds import check_graph_model
from quantens.defaults import FULL_PRECISION
from quantens.errors import UsageError

__all__ = ["Policy", "default_policy", "resolve_policy"]

Policy = Mapping[str, "int | None"] | Callable[[tf.keras.layers.Layer], "int | None"] | None
"""What `quantize_model(policy=...)` takes: layer-name patterns -> bits, a callable
layer -> bits, or None (`default_policy`)."""


def default_policy(model: tf.keras.Model) -> dict[str, int]:
    """The default precision policy: the first convolution and the last `Dense` at 32 bits.

    The layers of ResNetE's stem and classifier, which stay full precision in
    every member. A model without `Dense` keeps its last convolution (a fully
    convolutional classifier) instead. Combine it with your own patterns:
    `policy={**default_policy(model), "block_*": 8}`.

    ```python
    from quantens.convert import default_policy  # before TensorFlow: selects tf-keras
    import tensorflow as tf

    model = tf.keras.Sequential([
        tf.keras.layers.Conv2D(4, 3, input_shape=(8, 8, 1), name="first"),
        tf.keras.layers.Conv2D(4, 3, name="second"),
        tf.keras.layers.Flatten(),
        tf.keras.layers.Dense(10, name="classifier"),
    ])
    assert default_policy(model) == {"first": 32, "classifier": 32}
    ```
    """
    check_graph_model(model)
    return _default_policy(Plan(model).units)


def _default_policy(units) -> dict[str, int]:
    convs = [u.name for u in units if u.kind == registry.CONV]
    dense = [u.name for u in units if u.kind == registry.DENSE]
    chosen = convs[:1] + (dense[-1:] or convs[-1:])
    return {name: FULL_PRECISION for name in chosen}


def _policy_bits(value, what: str) -> int | None:
    if value is None:
        return None
    try:
        return check_bit_width(value, "fixed bit-width")
    except ValueError as error:
        raise UsageError(f"policy for {what}: {error}") from None


def resolve_policy(policy: Policy, plan: Plan) -> dict[str, int | None]:
    """Fixed bit-width (or None: follow the member) per unit name."""
    if policy is None:
        policy = _default_policy(plan.units)
    if callable(policy) and not isinstance(policy, Mapping):
        return {u.name: _policy_bits(policy(u.layer), f"layer {u.name!r}") for u in plan.units}
    if not isinstance(policy, Mapping):
        raise UsageError(
            f"policy must map layer-name patterns to bit-widths or be a callable "
            f"layer -> bits, got {type(policy).__name__}"
        )
    patterns = {str(p): _policy_bits(v, f"pattern {p!r}") for p, v in policy.items()}
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in plan.names):
            raise UsageError(f"policy pattern {pattern!r} matches no layer of the model")
    resolved = {}
    for unit in plan.units:
        matches = [b for p, b in patterns.items() if fnmatch.fnmatchcase(unit.name, p)]
        resolved[unit.name] = matches[0] if matches else None
    return resolved
