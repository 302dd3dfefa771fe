"""Members chosen by budget (quantens.budget.search_policy) on the trained digits ResNetE."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import quantens
from quantens import run
from quantens.bits import policy_layers
from quantens.budget import search_policy
from quantens.errors import UsageError
from quantens.export import member_bytes

pytestmark = pytest.mark.trains  # builds and scores mixed members of a trained model

BITS = (32, 8, 4, 2, 1)


class NeverRead:
    """A dataset that must not be read: the test split."""

    def __iter__(self):
        raise AssertionError("the search read the test split")


@pytest.fixture(scope="module")
def trained(tfds_dir):
    import zoo

    model = zoo.create_model("digits_resnet_e", weights="digits_w8", bit_widths=BITS)
    ensemble = quantens.QuantEnsemble(model, BITS)
    datasets = run.load_datasets(run.DataSettings(dataset="digits", data_dir=tfds_dir,
                                                  augmentation="low"))
    return ensemble, dataclasses.replace(datasets, test=NeverRead())


def _val_accuracy(ensemble, bits, datasets) -> float:
    member = ensemble.member(bits)
    correct = total = 0
    for x, y in datasets.validation:
        correct += int(np.sum(np.argmax(member(x, training=False), -1) == y.numpy()))
        total += len(y)
    return correct / total


def test_the_search_fits_the_budget_reads_no_test_data_and_beats_the_uniform_member(trained):
    ensemble, datasets = trained
    sizes = {b: member_bytes(ensemble, b) for b in (8, 4, 2, 1)}
    budget = sizes[4]  # the 4-bit member's bytes
    result = search_policy(ensemble, datasets, max_bytes=budget, verbose=0)
    assert result.bytes <= budget
    assert result.bytes == member_bytes(ensemble, result.policy)
    assert set(result.policy) == set(policy_layers(ensemble.model))
    assert result.accuracy >= _val_accuracy(ensemble, 4, datasets) - 1e-9
    names = [c["name"] for c in result.candidates]
    # every uniform member that fits is a candidate, and nothing larger is
    assert {"uniform 4-bit", "uniform 2-bit", "uniform 1-bit"} <= set(names)
    assert "uniform 8-bit" not in names or sizes[8] <= budget
    assert all(c["bytes"] <= budget for c in result.candidates)


def test_a_budget_between_two_members_gets_a_mix_that_fits(trained):
    ensemble, datasets = trained
    low, high = (member_bytes(ensemble, b) for b in (1, 2))
    budget = (low + high) // 2
    result = search_policy(ensemble, datasets, max_bytes=budget, verbose=0)
    assert result.bytes <= budget
    mixes = [c for c in result.candidates if c["name"].startswith("greedy")]
    assert mixes, [c["name"] for c in result.candidates]
    for mix in mixes:  # each spends the budget beyond the 1-bit member, and fits
        assert low < mix["bytes"] <= budget
        assert len(set(mix["policy"].values())) > 1
        assert mix["bytes"] == member_bytes(ensemble, mix["policy"])
    assert result.accuracy == max(c["accuracy"] for c in result.candidates)
    best = [c for c in result.candidates if c["accuracy"] == result.accuracy]
    assert result.policy == min(best, key=lambda c: c["loss"])["policy"]


def test_a_budget_below_the_smallest_file_is_one_error_naming_it(trained):
    ensemble, datasets = trained
    smallest = member_bytes(ensemble, 1)
    with pytest.raises(UsageError, match=f"the smallest uniform file .* has {smallest:,} bytes"):
        search_policy(ensemble, datasets, max_bytes=smallest - 1, verbose=0)
    with pytest.raises(UsageError, match=r"bit_widths \[3\] are not members"):
        search_policy(ensemble, datasets, max_bytes=10**9, bit_widths=(8, 3), verbose=0)
