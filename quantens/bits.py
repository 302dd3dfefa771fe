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
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator

from quantens.defaults import FULL_PRECISION

__all__ = ["MIN_BITS", "active_bits", "bits", "check_bit_width", "validate_bit_widths"]

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
    """The bit-width of the innermost `bits` scope, or None outside any scope."""
    stack = getattr(_scope, "stack", None)
    return stack[-1] if stack else None


@contextlib.contextmanager
def bits(b: int) -> Iterator[int]:
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

    Scopes nest; the innermost one wins. The scope is local to the thread, like
    `larq.context.quantized_scope`.
    """
    b = check_bit_width(b)
    stack = getattr(_scope, "stack", None)
    if stack is None:
        stack = _scope.stack = []
    stack.append(b)
    try:
        yield b
    finally:
        stack.pop()
