import numpy as np
import tensorflow_datasets as tfds
from sklearn.datasets import load_digits

import quantens.data as qd


def test_digits_is_a_tfds_dataset_with_a_fixed_80_20_split(tfds_dir):
    builder = tfds.builder("digits", data_dir=tfds_dir)
    builder.download_and_prepare()
    assert builder.info.splits["train"].num_examples == 1438
    assert builder.info.splits["test"].num_examples == 359
    assert builder.info.features["label"].num_classes == 10
    train = tfds.as_numpy(builder.as_dataset(split="train", batch_size=-1))
    test = tfds.as_numpy(builder.as_dataset(split="test", batch_size=-1))
    assert train["image"].shape == (1438, 8, 8, 1) and train["image"].dtype == np.uint8
    # the images are scikit-learn's, scaled from 0..16 to 0..255, split by seed 0
    digits = load_digits()
    order = np.random.RandomState(0).permutation(1797)
    expected_test = np.round(digits.images[np.sort(order[1438:])] * 255 / 16)
    got = test["image"][..., 0].astype(float)
    # TFDS may store examples in another order: compare as sets of rows
    key = lambda a: sorted(map(bytes, a.astype(np.uint8).reshape(len(a), -1)))  # noqa: E731
    assert key(got) == key(expected_test)
    assert np.bincount(train["label"], minlength=10).min() > 100


def test_load_normalises_and_batches(tfds_dir):
    ds = qd.load("digits", "train", batch_size=32, training=True, data_dir=tfds_dir)
    x, y = next(iter(ds))
    assert x.shape == (32, 8, 8, 1) and y.shape == (32,)
    full = next(iter(qd.load("digits", "train", batch_size=2000, data_dir=tfds_dir)))[0]
    assert abs(float(full.numpy().mean())) < 0.05
    assert abs(float(full.numpy().std()) - 1) < 0.05


def test_unknown_dataset_names_the_choices():
    import pytest

    with pytest.raises(ValueError, match="unknown dataset 'imagenet1k'.*cifar100"):
        qd.resolve("imagenet1k")
    assert qd.resolve("imagenet").tfds_name == "imagenet2012"
