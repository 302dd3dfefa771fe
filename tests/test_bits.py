import pytest

import quantens
from quantens import validate_bit_widths


def test_bit_widths_are_sorted_high_to_low():
    assert validate_bit_widths([1, 32, 4, 8, 2]) == (32, 8, 4, 2, 1)
    assert validate_bit_widths(["4", 2]) == (4, 2)


@pytest.mark.parametrize(
    "bad, message",
    [
        ([0], "range from 1 to 32"),
        ([33], "range from 1 to 32"),
        ([4, 4], "must not repeat: 4"),
        ([], "at least one"),
        ([2.5], "integer"),
        (["x"], "integer"),
        ([True], "integer"),
    ],
)
def test_invalid_bit_widths_are_rejected(bad, message):
    with pytest.raises(ValueError, match=message):
        validate_bit_widths(bad)


def test_scope_nests_and_restores():
    assert quantens.active_bits() is None
    with quantens.bits(8):
        assert quantens.active_bits() == 8
        with quantens.bits(1):
            assert quantens.active_bits() == 1
        assert quantens.active_bits() == 8
    assert quantens.active_bits() is None


def test_scope_is_restored_after_an_error():
    with pytest.raises(RuntimeError):
        with quantens.bits(2):
            raise RuntimeError
    assert quantens.active_bits() is None


def test_scope_rejects_impossible_bits():
    with pytest.raises(ValueError, match="range from 1 to 32"):
        with quantens.bits(0):
            pass
