"""Split planning: which `Split` trains, validates and tests; seeded holdouts of a split.

`plan_splits` turns a `DatasetSpec` into a `SplitPlan`; a `Split` is a TFDS
split or a seeded part of one (`select_part` for a TFDS dataset, `part_mask`
for a list of files).
"""

from __future__ import annotations

import dataclasses
import numbers

import numpy as np
import tensorflow as tf

from quantens.data.catalog import DatasetSpec, resolve
from quantens.errors import DataError

__all__ = [
    "SPLIT_PARTS",
    "Split",
    "SplitPlan",
    "as_split",
    "part_mask",
    "plan_splits",
    "select_part",
]

SPLIT_PARTS = ("all", "rest", "heldout")
_HOLDOUT_SALT = 0x5EED  # the second word of the index_shuffle seed of a holdout


@dataclasses.dataclass(frozen=True)
class Split:
    """A TFDS split (`name`), or a seeded part of it: what `load` reads.

    With `part="all"` it is the whole split (like the plain name). With a
    `holdout` fraction, `part="heldout"` is a fixed k = round(holdout * n) of
    the split's n examples (at least 1 and at most n - 1) and `part="rest"`
    the other n - k. Position i is held out when its image under a stateless
    permutation of 0..n-1 keyed by `holdout_seed`
    (`tf.random.experimental.index_shuffle`) is below k: a function of
    (`holdout_seed`, position) for a given split, so `rest` and `heldout` are
    disjoint, cover the split exactly, and neither the shuffling, the epoch nor
    the batch size changes them. A position is the order TFDS stores the split
    in (a split with a holdout is read file by file in order, then shuffled:
    for splits too large to hold in memory that is a shuffle buffer only), or
    for an image folder the order of `FolderInfo.files` (class, then file name).

    ```python
    import tempfile
    import quantens.data as qd

    data_dir = tempfile.mkdtemp()
    held = qd.Split("train", holdout=0.1, part="heldout")
    x, y = next(iter(qd.load("digits", held, batch_size=1000, data_dir=data_dir)))
    assert x.shape[0] == 129  # round(0.1 * 1294)
    rest = qd.load("digits", qd.Split("train", 0.1, "rest"), batch_size=1000, data_dir=data_dir)
    assert sum(int(x.shape[0]) for x, _ in rest) == 1294 - 129
    ```
    """

    name: str
    holdout: float = 0.0
    part: str = "all"
    holdout_seed: int = 0

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise DataError(f"Split name {self.name!r}: give a split name such as 'train'")
        if self.part not in SPLIT_PARTS:
            raise DataError(f"Split part {self.part!r}: choose {', '.join(SPLIT_PARTS)}")
        if not _is_number(self.holdout) or not 0.0 <= self.holdout < 1.0:
            raise DataError(f"Split holdout {self.holdout!r}: give a fraction in [0, 1), e.g. 0.1")
        if isinstance(self.holdout_seed, bool) or not isinstance(self.holdout_seed, numbers.Integral):
            raise DataError(f"Split holdout_seed {self.holdout_seed!r}: give an integer")
        if self.part != "all" and not self.holdout > 0.0:
            raise DataError(
                f"Split({self.name!r}, part={self.part!r}) needs a holdout fraction in (0, 1)"
            )

    def __str__(self) -> str:
        if self.part == "all":
            return self.name
        return f"{self.name} ({self.part} of a {self.holdout:g} holdout, seed {self.holdout_seed})"


@dataclasses.dataclass(frozen=True)
class SplitPlan:
    """The splits a run trains on (`train`), selects checkpoints and trials with
    (`validation`) and reports (`test`); made by `plan_splits`.

    `validation_is_test` is True when `validation` and `test` are the same
    data (datasets without a validation split and no holdout; ImageNet and
    image folders, whose validation split is also the reported one).

    ```python
    import quantens.data as qd

    plan = qd.plan_splits(qd.DATASETS["mnist"], val_split=0.1)
    assert plan.validation == qd.Split("train", 0.1, "heldout")
    assert not plan.validation_is_test
    ```
    """

    train: Split
    validation: Split
    test: Split
    validation_is_test: bool


def plan_splits(
    spec: DatasetSpec | str, val_split: float | None = None, holdout_seed: int = 0
) -> SplitPlan:
    """Which `Split`s train, validate and test, from a `DatasetSpec` (or a dataset name).

    A dataset with a validation split uses it (then `val_split` must be None).
    Without one, `val_split` (0 < val_split < 1) holds out that seeded
    fraction of the training split as validation data (`Split` parts "rest" and
    "heldout"); without `val_split` the test split validates too
    (`validation_is_test=True`, what the seed did).

    ```python
    import quantens.data as qd

    plan = qd.plan_splits(qd.DATASETS["digits"])
    assert (plan.train, plan.validation, plan.test) == (
        qd.Split("train"), qd.Split("validation"), qd.Split("test"))
    plan = qd.plan_splits(qd.DATASETS["cifar10"], val_split=0.1, holdout_seed=3)
    assert plan.train == qd.Split("train", 0.1, "rest", holdout_seed=3)
    assert qd.plan_splits("cifar10").validation_is_test
    ```

    Raises:
        DataError: `val_split` given for a dataset with a validation split,
            or not a fraction strictly between 0 and 1.
    """
    if isinstance(spec, str):
        spec = resolve(spec)
    train, test = Split(spec.train_split), Split(spec.test_split)
    if spec.validation_split:
        if val_split is not None:
            raise DataError(
                f"{spec.tfds_name} has its own validation split {spec.validation_split!r}: "
                f"leave val_split unset (got {val_split!r}; a holdout is for datasets without one)"
            )
        validation = Split(spec.validation_split)
        return SplitPlan(train, validation, test, validation_is_test=validation == test)
    if val_split is None:
        return SplitPlan(train, test, test, validation_is_test=True)
    if not _is_number(val_split) or not 0.0 < val_split < 1.0:
        raise DataError(
            f"val_split {val_split!r}: give the held-out fraction of {spec.train_split!r} "
            "strictly between 0 and 1, e.g. 0.1"
        )
    return SplitPlan(
        Split(spec.train_split, float(val_split), "rest", holdout_seed),
        Split(spec.train_split, float(val_split), "heldout", holdout_seed),
        test,
        validation_is_test=False,
    )


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def as_split(split: str | Split) -> Split:
    """`split` as a `Split` (a name is the whole split); DataError for anything else."""
    if isinstance(split, Split):
        return split
    if isinstance(split, str):
        return Split(split)
    raise DataError(f"split {split!r}: give a split name such as 'train' or a quantens.data.Split")


def _heldout_count(n: int, split: Split) -> int:
    """k = round(holdout * n), kept in [1, n - 1] so that both parts have examples."""
    if n < 2:
        raise DataError(f"{split}: a split of {n} example(s) cannot be divided; it needs 2 or more")
    return min(n - 1, max(1, int(round(split.holdout * n))))


def _is_heldout(position, n: int, k: int, seed: int):
    """Whether split position(s) `position` (int64) fall in the held-out k of n."""
    shuffled = tf.random.experimental.index_shuffle(
        tf.cast(position, tf.int64),
        seed=tf.constant([seed, _HOLDOUT_SALT], tf.int64),
        max_index=tf.constant(n - 1, tf.int64),
    )
    return shuffled < k


def part_mask(n: int, split: Split) -> np.ndarray:
    """The positions of a split of n examples that `split` keeps, as a boolean array."""
    if split.part == "all":
        return np.ones(n, bool)
    k = _heldout_count(n, split)
    heldout = _is_heldout(tf.range(n, dtype=tf.int64), n, k, split.holdout_seed).numpy()
    return heldout if split.part == "heldout" else ~heldout


def select_part(ds: tf.data.Dataset, n: int, split: Split) -> tf.data.Dataset:
    """The examples of `ds` (a split of n examples, in position order) that `split` keeps."""
    if split.part == "all":
        return ds
    k = _heldout_count(n, split)
    want = split.part == "heldout"
    seed = int(split.holdout_seed)
    ds = ds.enumerate().filter(lambda i, item: tf.equal(_is_heldout(i, n, k, seed), want))
    ds = ds.map(lambda i, item: item)
    return ds.apply(tf.data.experimental.assert_cardinality(k if want else n - k))
