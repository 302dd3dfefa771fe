"""The active bit-width: which member of a shared-weight ensemble runs.

Switchable layers (`quantens.layers`) and quantizers (`quantens.quantizers`)
read the active bit-width when they are called, so one network with one set
of weights computes any member:

```python
import quantens

with quantens.bits(4):
    assert quantens.active_bits() == 4
assert quantens.active_bits() is None
```

The scope is read while a function is traced: entering it around a
`tf.function` that was already traced for another bit-width does not retrace
it. Enter it inside the traced function (as `QuantEnsemble.train_step` does)
or use `QuantEnsemble.member(b)`.

A scope can also hold a *policy*, a bit-width per layer (a mixed member,
`bits(policy)`): each switchable layer then runs at its own bits
(`layer_bits`), following the rules of `mix_bits`.
"""

from __future__ import annotations

import contextlib
import fnmatch
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping

from quantens.defaults import FULL_PRECISION
from quantens.errors import UsageError

__all__ = [
    "MIN_BITS", "active_bits", "bits", "check_bit_width", "is_policy", "layer_bits",
    "layer_scope", "mix_bits", "policy_layers", "validate_bit_widths",
]

MIN_BITS = 1

_scope = threading.local()


def check_bit_width(b: object, what: str = "bit-width") -> int:
    """One bit-width as an int: an integer (or `"4"`, a numpy integer) from 1 to 32.

    ```python
    from quantens.bits import check_bit_width

    assert check_bit_width("4") == 4
    try:
        check_bit_width(0, "fixed bit-width")
    except ValueError as error:
        assert "invalid fixed bit-width 0" in str(error)
    ```

    Raises:
        ValueError: naming `what` and the value.
    """
    try:
        value = int(b)  # accepts numpy integers and "4"
        is_integer = not isinstance(b, bool) and value == float(b)
    except (TypeError, ValueError):
        is_integer = False
    if not is_integer:
        raise ValueError(
            f"invalid {what} {b!r}: use an integer from {MIN_BITS} to {FULL_PRECISION}"
        )
    if not MIN_BITS <= value <= FULL_PRECISION:
        raise ValueError(
            f"invalid {what} {value}: bit-widths range from {MIN_BITS} to "
            f"{FULL_PRECISION} ({FULL_PRECISION} means full precision)"
        )
    return value


def validate_bit_widths(bit_widths: Iterable[int]) -> tuple[int, ...]:
    """Checks a list of bit-widths and returns it sorted from high to low.

    ```python
    from quantens import validate_bit_widths

    assert validate_bit_widths([1, 32, 4]) == (32, 4, 1)
    ```

    Raises:
        ValueError: if the list is empty, has duplicates, or a value that is not
            an integer from 1 to 32.
    """
    if isinstance(bit_widths, (int, str)):
        bit_widths = [bit_widths]
    checked = [check_bit_width(b) for b in bit_widths]
    if not checked:
        raise ValueError("bit-widths must name at least one bit-width, e.g. 32 8 4 2 1")
    duplicates = sorted({b for b in checked if checked.count(b) > 1}, reverse=True)
    if duplicates:
        raise ValueError(
            f"bit-widths must not repeat: {' '.join(map(str, duplicates))} appears "
            "more than once"
        )
    return tuple(sorted(checked, reverse=True))


def active_bits() -> int | None:
    """The bit-width of the innermost `bits` scope, or None outside any scope.

    Inside a switchable layer called in a `bits(policy)` scope it is that
    layer's bits (`layer_scope`).

    Raises:
        UsageError: the innermost scope is a policy (a bit-width per layer),
            read outside a switchable layer: ask `layer_bits(layer)` instead.
    """
    stack = getattr(_scope, "stack", None)
    if not stack:
        return None
    if isinstance(stack[-1], _Mix):
        raise UsageError(
            "active_bits(): the innermost quantens.bits scope is a per-layer policy, not one "
            "bit-width: ask quantens.bits.layer_bits(layer) for a layer's bits"
        )
    return stack[-1]


def is_policy(b: object) -> bool:
    """Whether `b` is a policy (a bit-width per layer: a mapping or a callable), not one bit-width.

    ```python
    from quantens.bits import is_policy

    assert is_policy({"block1_*": 2, "*": 1}) and is_policy(lambda layer: 4)
    assert not is_policy(4) and not is_policy("4")
    ```
    """
    return isinstance(b, (Mapping, _Mix)) or (callable(b) and not isinstance(b, type))


@contextlib.contextmanager
def bits(b) -> Iterator:
    """Runs switchable layers and quantizers at bit-width `b` inside the scope.

    ```python
    import numpy as np
    import quantens

    layer = quantens.QuantDense(3)
    x = np.ones((1, 4), "float32")
    with quantens.bits(2):
        y2 = layer(x)  # 2-bit weights and inputs
        with quantens.bits(32):
            y32 = layer(x)  # the same weights at full precision
        assert quantens.active_bits() == 2
    assert y2.shape == y32.shape == (1, 3)
    ```

    `b` may also be a policy, a bit-width per layer (a mixed member): a
    mapping of layer names or `fnmatch` patterns to bits (the first matching
    pattern wins; `"*"` last gives the rest), or a callable `layer -> bits`.
    Each switchable layer then runs at its own bits, by the rules of
    `mix_bits`; `QuantEnsemble.member(policy)` builds the same mix as a
    standalone model.

    ```python
    import numpy as np
    import quantens
    import tensorflow as tf

    inputs = tf.keras.Input((4,))
    hidden = quantens.QuantDense(8, input_quantizer=None, name="hidden")(inputs)
    outputs = quantens.QuantDense(2, name="out")(hidden)
    model = tf.keras.Model(inputs, outputs)
    x = np.random.default_rng(0).normal(size=(3, 4)).astype("float32")
    with quantens.bits({"hidden": 8, "*": 1}):  # hidden at 8 bits, the rest at 1
        mixed = model(x)
    with quantens.bits(8):
        h8 = model.get_layer("hidden")(x)
    with quantens.bits(1):
        np.testing.assert_allclose(mixed, model.get_layer("out")(h8), rtol=1e-5, atol=1e-6)
    ```

    Scopes nest; the innermost one wins (an int scope inside a policy scope
    runs every layer at that int). The scope is local to the thread, like
    `larq.context.quantized_scope`.

    Raises:
        ValueError: `b` is neither a bit-width from 1 to 32 nor a policy;
            `UsageError` (a ValueError) for a policy whose bits are not
            bit-widths.
    """
    entry = _Mix(b) if is_policy(b) else check_bit_width(b)
    stack = getattr(_scope, "stack", None)
    if stack is None:
        stack = _scope.stack = []
    stack.append(entry)
    try:
        yield b if isinstance(entry, _Mix) else entry
    finally:
        stack.pop()


# ------------------------------------------------------------- per-layer bits

_NAMED, _INPUTS, _OUTPUTS = "named", "inputs", "outputs"


def _role(layer) -> str | None:
    """How a layer gets its bits in a mix: `named` by the policy (a switchable layer with a
    kernel), from the layers feeding it (`inputs`: a BN) or from those it feeds
    (`outputs`: an activation quantizer); None for a layer that is the same in every member.

    A switchable layer (one with `fixed_layer`) says which with its class attribute
    `bits_follow` ("inputs" or "outputs"); without one, the policy names it.
    """
    if not hasattr(layer, "fixed_layer"):
        return None
    follow = getattr(layer, "bits_follow", None)
    return follow if follow in (_INPUTS, _OUTPUTS) else _NAMED


def _producers(layer) -> Iterator:
    """The layers whose outputs `layer` reads in functional models (tf-keras' public nodes)."""
    for node in getattr(layer, "inbound_nodes", None) or ():
        inbound = node.inbound_layers
        yield from (inbound if isinstance(inbound, (list, tuple)) else [inbound])


def _consumers(layer) -> Iterator:
    """The layers that read `layer`'s outputs in functional models."""
    for node in getattr(layer, "outbound_nodes", None) or ():
        yield node.layer


def _passes(layer, role: str | None, upstream: bool, walker: str) -> bool:
    """Whether a walk from a layer of role `walker` for the nearest named layers goes on
    through `layer` (not named)."""
    if role == _OUTPUTS:  # downstream of an activation quantizer, another one quantizes again:
        return upstream or walker != _OUTPUTS  # nothing past it sees the first one's output
    if role == _INPUTS or hasattr(layer, "moving_mean"):  # a BN, switchable or not
        return True
    # a layer with weights of its own (a full-precision convolution, a classifier) is the
    # same in every member: it holds no bits to follow and ends the walk
    return not getattr(layer, "weights", None)


def _named_neighbours(layer, upstream: bool) -> list:
    """The policy-named layers nearest to `layer` in the functional graph, upstream or
    downstream, through layers without weights (additions, pooling, reshapes), BNs and
    activation quantizers (not downstream of an activation quantizer)."""
    step = _producers if upstream else _consumers
    walker = _role(layer)
    found, seen, todo = [], {id(layer)}, list(step(layer))
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        role = _role(current)
        if role == _NAMED:
            found.append(current)
        elif _passes(current, role, upstream, walker):
            todo.extend(step(current))
    return found


def policy_layers(model) -> list[str]:
    """The names of the layers of `model` a policy gives bits to (the switchable conv and
    dense layers; BNs and activation quantizers follow them: `mix_bits`), in order.

    ```python
    import quantens
    import tensorflow as tf
    from quantens.bits import policy_layers

    inputs = tf.keras.Input((4,))
    x = quantens.QuantDense(8, input_quantizer=None, name="fc1")(inputs)
    x = quantens.SwitchableBatchNormalization((8, 2), name="bn1")(x)
    model = tf.keras.Model(inputs, quantens.QuantDense(2, name="fc2")(x))
    assert policy_layers(model) == ["fc1", "fc2"]
    ```
    """
    return [layer.name for layer in model.layers if _role(layer) == _NAMED]


class _Mix:
    """A policy, checked: what a `bits(policy)` scope holds (see `mix_bits` for the rules)."""

    def __init__(self, policy):
        if isinstance(policy, _Mix):
            policy = policy.policy
        self.policy = policy
        self.patterns: dict[str, int] | None = None
        if isinstance(policy, Mapping):
            self.patterns = {}
            for pattern, value in policy.items():
                if not isinstance(pattern, str):
                    raise UsageError(
                        f"policy keys are layer names or fnmatch patterns (str), got "
                        f"{pattern!r}: write e.g. {{'block1_*': 2, '*': 1}}")
                if value is None:
                    raise UsageError(
                        f"policy pattern {pattern!r} has no bits (None): give it a bit-width, "
                        "or leave it out")
                self.patterns[pattern] = _policy_bits(value, f"pattern {pattern!r}")
        elif not callable(policy):
            raise UsageError(
                f"a policy maps layer names or fnmatch patterns to bits, or is a callable "
                f"layer -> bits, got {type(policy).__name__}")
        self._bits: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def winner(self, layer) -> str | None:
        """The pattern that gives `layer` its bits (the first that matches), or None."""
        return next((p for p in self.patterns if fnmatch.fnmatchcase(layer.name, p)), None)

    def named_bits(self, layer) -> int | None:
        """The bits the policy itself gives `layer` (by its name, or the callable), or None."""
        if self.patterns is None:
            return _policy_bits(self.policy(layer), f"layer {layer.name!r}")
        pattern = self.winner(layer)
        return None if pattern is None else self.patterns[pattern]

    def bits_of(self, layer) -> int:
        """The bits `layer` runs at in this mix."""
        try:
            return self._bits[layer]
        except (KeyError, TypeError):
            pass
        role = _role(layer)
        if role is None:
            raise UsageError(
                f"layer {layer.name!r} is not switchable: it is the same in every member, and "
                "a policy gives bits to quantens' switchable layers only")
        if role == _NAMED:
            value = self.named_bits(layer)
            if value is None:
                raise UsageError(
                    f"the policy gives no bits to layer {layer.name!r}: name it, or end the "
                    "policy with '*': bits for the layers it does not name")
        else:
            first = role == _INPUTS  # a BN: the layers feeding it; an activation: those it feeds
            found = _named_neighbours(layer, first) or _named_neighbours(layer, not first)
            if found:
                value = max(self.bits_of(other) for other in found)
            else:
                value = self.named_bits(layer)
                if value is None:
                    raise UsageError(
                        f"no switchable conv or dense layer feeds or reads layer {layer.name!r}, "
                        "so the policy must name it: add its name, or '*': bits")
        try:
            self._bits[layer] = value
        except TypeError:  # a layer that cannot be weakly referenced: not cached
            pass
        return value


def _policy_bits(value, what: str) -> int | None:
    if value is None:
        return None
    try:
        return check_bit_width(value)
    except ValueError as error:
        raise UsageError(f"policy for {what}: {error}") from None


def _current_mix() -> _Mix | None:
    stack = getattr(_scope, "stack", None)
    return stack[-1] if stack and isinstance(stack[-1], _Mix) else None


def layer_bits(layer) -> int | None:
    """The bit-width `layer` runs at now: the innermost scope's (a policy's: this layer's).

    None outside any scope.

    ```python
    import quantens
    from quantens.bits import layer_bits

    dense = quantens.QuantDense(2, name="head")
    with quantens.bits({"head": 4}):
        assert layer_bits(dense) == 4
    with quantens.bits(2):
        assert layer_bits(dense) == 2
    ```

    Raises:
        UsageError: the policy of the scope gives the layer no bits.
    """
    mix = _current_mix()
    if mix is not None:
        return mix.bits_of(layer)
    stack = getattr(_scope, "stack", None)
    return stack[-1] if stack else None


@contextlib.contextmanager
def layer_scope(layer) -> Iterator[int | None]:
    """Inside a policy scope, the scope of `layer`'s own bits; else nothing changes.

    Switchable layers run their `call` inside it, so that their quantizers and
    BN branch (which read `active_bits()`) run at the layer's bits in a mix.

    ```python
    import quantens
    from quantens.bits import layer_scope

    dense = quantens.QuantDense(2, name="head")
    with quantens.bits({"head": 4}), layer_scope(dense) as b:
        assert b == quantens.active_bits() == 4
    ```
    """
    mix = _current_mix()
    if mix is None:
        yield layer_bits(layer)
        return
    value = mix.bits_of(layer)
    _scope.stack.append(value)
    try:
        yield value
    finally:
        _scope.stack.pop()


def mix_bits(model, policy: Mapping[str, int] | Callable | None,
             bit_widths: Iterable[int] | None = None) -> dict[str, int]:
    """The bit-width of every switchable layer of `model` in the mix `policy`, checked.

    A policy names the switchable layers with a kernel (`QuantConv2D`,
    `QuantDense`, ...: conv and dense layers), by name or `fnmatch` pattern
    (the first matching pattern wins; end with `"*": bits` for the rest), or is
    a callable `layer -> bits or None`. Each such layer runs its own
    precision's kernel quantizer and input quantizer. The other switchable
    layers follow the graph:

    - an activation quantizer (`QuantActivation`) runs at the bits of the
      layers it feeds: the nearest named layers downstream;
    - a BN (`SwitchableBatchNormalization`) runs at the bits of the layers
      that feed it: the nearest named layers upstream (a BN after a residual
      addition: the last convolution of each branch);
    - "nearest": walking the graph through layers without weights (additions,
      pooling, reshapes), BNs and activation quantizers; a walk ends at a
      named layer, at a layer with weights that is the same in every member
      (a full-precision convolution or classifier) and, for an activation
      quantizer's walk downstream, at another activation quantizer;
    - where several layers feed (or are fed by) one, the highest of their bits;
      where none does, the other direction (a BN after a full-precision
      shortcut convolution: the layers its output reaches); where none is
      connected either way, the policy must name the layer itself.

    A layer held at a fixed precision (`quantize_model`'s policy) keeps it, as
    in every uniform member; layers that are not switchable are the same in
    every member.

    ```python
    import quantens
    import tensorflow as tf
    from quantens.bits import mix_bits

    inputs = tf.keras.Input((4,))
    x = quantens.QuantDense(8, input_quantizer=None, name="fc1")(inputs)
    x = quantens.SwitchableBatchNormalization((8, 2), name="bn1")(x)
    x = quantens.QuantActivation(name="act1")(x)
    outputs = quantens.QuantDense(2, input_quantizer=None, name="fc2")(x)
    model = tf.keras.Model(inputs, outputs)
    assert mix_bits(model, {"fc1": 8, "*": 2}) == {"fc1": 8, "bn1": 8, "act1": 2, "fc2": 2}
    ```

    Raises:
        UsageError: (one line) a policy of another kind, a value that is not a
            bit-width (or, with `bit_widths`, not one of them), a switchable
            layer the policy gives no bits, a pattern that matches no
            switchable conv or dense layer, or one that decides no layer (an
            earlier pattern matches every layer it does).
    """
    mix = _Mix(policy)
    layers = [layer for layer in model.layers if _role(layer) is not None]
    if not layers:
        raise UsageError(
            f"model {model.name!r} has no switchable layer: a policy gives bits to quantens' "
            "switchable layers (build it with the zoo or quantens.quantize_model)")
    allowed = None if bit_widths is None else validate_bit_widths(bit_widths)
    members = "" if allowed is None else " ".join(map(str, allowed))
    if mix.patterns is not None and allowed is not None:
        for pattern, value in mix.patterns.items():
            if value not in allowed:
                raise UsageError(
                    f"policy pattern {pattern!r}: {value} bits is not a member; the members "
                    f"are {members}")
    named = [layer for layer in layers if _role(layer) == _NAMED]
    unnamed = [layer.name for layer in named if mix.named_bits(layer) is None]
    if unnamed:
        shown = ", ".join(unnamed[:5]) + (f" and {len(unnamed) - 5} more" if len(unnamed) > 5
                                          else "")
        raise UsageError(
            f"the policy gives no bits to {len(unnamed)} layer{'s' * (len(unnamed) > 1)} "
            f"({shown}): name them, or end the policy with '*': bits for the rest")
    resolved = {layer.name: mix.bits_of(layer) for layer in layers}
    if allowed is not None:
        stray = {name: b for name, b in resolved.items() if b not in allowed}
        if stray:
            name, b = next(iter(stray.items()))
            raise UsageError(
                f"the policy gives layer {name!r} {b} bits, not a member; the members are "
                f"{members}")
    if mix.patterns is not None:
        _check_patterns(mix, model, layers, named)
    return resolved


def _check_patterns(mix: _Mix, model, layers: list, named: list) -> None:
    """Every pattern of a mapping policy decides some layer's bits."""
    # the layers the policy names: those with a kernel, and any it had to name itself
    decided = [layer for layer in layers
               if _role(layer) == _NAMED or (mix.winner(layer) is not None and not (
                   _named_neighbours(layer, True) or _named_neighbours(layer, False)))]
    winners = {mix.winner(layer) for layer in decided}
    for pattern in mix.patterns:
        if pattern in winners:
            continue
        matching = [layer for layer in decided if fnmatch.fnmatchcase(layer.name, pattern)]
        if not matching:
            names = ", ".join(layer.name for layer in named[:4])
            raise UsageError(
                f"policy pattern {pattern!r} matches no switchable conv or dense layer of "
                f"model {model.name!r} (they are {names}{', ...' if len(named) > 4 else ''})")
        earlier = mix.winner(matching[0])
        raise UsageError(
            f"policy pattern {pattern!r} decides no layer: the earlier pattern {earlier!r} "
            "matches every layer it does; put it before that one")
