"""Input pipelines: TFDS datasets, the embedded `digits` dataset, image folders.

Every dataset goes through `tensorflow_datasets`. The default one, `digits`,
is scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes)
wrapped as a TFDS builder with a fixed, seeded 80/20 train/test split: it needs
no download and takes the same path as ImageNet.

```python
import quantens.data as qd

train = qd.load("digits", "train", batch_size=64, training=True)
images, labels = next(iter(train))
assert images.shape == (64, 8, 8, 1)
```
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

DIGITS_SPLIT_SEED = 0
DIGITS_TRAIN_FRACTION = 0.8


class Digits(tfds.core.GeneratorBasedBuilder):
    """scikit-learn's 8x8 handwritten digits as a TFDS dataset (no download).

    Pixel values 0..16 are scaled to 0..255. The split is a fixed permutation
    (seed 0): 1,438 training and 359 test images.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "scikit-learn's load_digits, seeded 80/20 split."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="8x8 images of handwritten digits (UCI ML, via scikit-learn).",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(8, 8, 1)),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://archive.ics.uci.edu/dataset/80",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # the data ships with scikit-learn
        return {
            "train": self._generate_examples("train"),
            "test": self._generate_examples("test"),
        }

    def _generate_examples(self, split: str):
        from sklearn.datasets import load_digits

        digits = load_digits()
        order = np.random.RandomState(DIGITS_SPLIT_SEED).permutation(len(digits.target))
        n_train = int(round(DIGITS_TRAIN_FRACTION * len(order)))
        indices = order[:n_train] if split == "train" else order[n_train:]
        images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
        for i in sorted(indices):
            yield int(i), {"image": images[i][..., None], "label": int(digits.target[i])}


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """How a dataset is read and preprocessed."""

    tfds_name: str
    family: str  # "digits", "mnist", "cifar", "imagenet": selects augmentation
    train_split: str = "train"
    eval_split: str = "test"
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)


DATASETS = {
    "digits": DatasetSpec("digits", "digits", mean=(0.3053,), std=(0.3760,)),
    "mnist": DatasetSpec("mnist", "mnist", mean=(0.1307,), std=(0.3081,)),
    "cifar10": DatasetSpec(
        "cifar10", "cifar", mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616)
    ),
    "cifar100": DatasetSpec(
        "cifar100", "cifar", mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762)
    ),
    "imagenet2012": DatasetSpec(
        "imagenet2012",
        "imagenet",
        eval_split="validation",
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
    ),
}
# The seed's names for the same datasets.
ALIASES = {"imagenet": "imagenet2012", "cifar-10": "cifar10", "cifar-100": "cifar100"}


def resolve(name: str) -> DatasetSpec:
    """The `DatasetSpec` of a dataset name or alias."""
    key = ALIASES.get(name, name)
    if key not in DATASETS:
        known = ", ".join(sorted([*DATASETS, *ALIASES]))
        raise ValueError(f"unknown dataset {name!r}: choose one of {known}")
    return DATASETS[key]


def _preprocess(spec: DatasetSpec, training: bool):
    mean = tf.constant(spec.mean, tf.float32)
    std = tf.constant(spec.std, tf.float32)

    def preprocess(image, label):
        image = tf.cast(image, tf.float32) / 255.0
        return (image - mean) / std, label

    return preprocess


def load(
    name: str = "digits",
    split: str = "train",
    batch_size: int = 64,
    training: bool = False,
    data_dir: str | None = None,
    num_workers: int | None = None,
    shuffle_seed: int | None = None,
    take_batches: int | None = None,
) -> tf.data.Dataset:
    """A batched `(image, label)` dataset, normalised, prefetched.

    Arguments:
        name: a TFDS name (`digits`, `mnist`, `cifar10`, `cifar100`,
            `imagenet2012`) or one of the seed's aliases (`imagenet`).
        split: a TFDS split, e.g. `"train"` or `"test"`.
        batch_size: the batch size (global under `tf.distribute`).
        training: shuffle, augment and drop the last incomplete batch.
        data_dir: TFDS data directory (default `TFDS_DATA_DIR` or
            `~/tensorflow_datasets`).
        num_workers: parallel calls of the map functions (default AUTOTUNE).
        shuffle_seed: seed of the shuffle order.
        take_batches: stop after this many batches (smoke runs).
    """
    spec = resolve(name)
    builder = tfds.builder(spec.tfds_name, data_dir=data_dir)
    builder.download_and_prepare()
    read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed)
    ds = builder.as_dataset(
        split=split, as_supervised=True, shuffle_files=training, read_config=read_config
    )
    parallel = num_workers or tf.data.AUTOTUNE
    ds = ds.map(_preprocess(spec, training), num_parallel_calls=parallel)
    if training:
        ds = ds.cache().shuffle(10 * batch_size, seed=shuffle_seed)
    ds = ds.batch(batch_size, drop_remainder=training)
    if take_batches:
        ds = ds.take(take_batches)
    return ds.prefetch(tf.data.AUTOTUNE)


def info(name: str, data_dir: str | None = None) -> tfds.core.DatasetInfo:
    """The TFDS `DatasetInfo` of a dataset (prepares it if needed)."""
    builder = tfds.builder(resolve(name).tfds_name, data_dir=data_dir)
    builder.download_and_prepare()
    return builder.info


def default_data_dir() -> str:
    return os.environ.get("TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))
