"""The tf.data pipelines: `load` (source -> preprocess -> batches) and `EpochCounter`.

A source is a TFDS split or an image folder's files (a `Split` of either);
evaluation pipelines map, batch and prefetch; training pipelines shuffle and
augment each epoch as a function of (seed, epoch) alone.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from quantens.data.augmentation import preprocess_fn
from quantens.data.catalog import FOLDER, resolve
from quantens.data.folders import FolderInfo, validate_image_folder
from quantens.data.preprocessing import preprocessing_fn
from quantens.data.splits import Split, as_split, part_mask, select_part
from quantens.defaults import INPUT_PREPROCESSING
from quantens.errors import DataError, one_line

__all__ = ["EpochCounter", "load"]


def _tfds_source(spec, split: Split, training, data_dir, shuffle_seed):
    manual_dir = data_dir if spec.tfds_name == "imagenet2012" else None
    tfds_dir = None if manual_dir else data_dir
    builder = tfds.builder(spec.tfds_name, data_dir=tfds_dir)
    urllib3 = logging.getLogger("urllib3")
    level = urllib3.level
    urllib3.setLevel(logging.ERROR)  # its retry warnings: the DataError below says it all
    try:
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
        )
    except OSError as error:  # requests' ConnectionError & co.: no network here
        raise DataError(
            f"{spec.tfds_name} is not prepared in {builder.data_dir} and cannot be downloaded "
            f"here ({type(error).__name__}: no network?): prepare it on a machine with "
            f"network (`tfds build {spec.tfds_name} --data_dir DIR`), copy DIR here and pass "
            "--data-dir DIR"
        ) from None
    except AssertionError as error:  # TFDS's way of saying "manual files missing"
        raise DataError(
            f"{spec.tfds_name} is not prepared and cannot be: {one_line(error)} "
            "(put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in --data-dir, or "
            "give --data-dir a folder with train/ and val/ image subfolders)"
        ) from None
    finally:
        urllib3.setLevel(level)
    if split.part == "all":
        read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed)
        shuffle_files = training
    else:  # positions are the stored order: the files one after the other
        read_config = tfds.ReadConfig(interleave_cycle_length=1)
        shuffle_files = False
    try:
        ds = builder.as_dataset(
            split=split.name, as_supervised=True, shuffle_files=shuffle_files,
            read_config=read_config,
        )
    except (KeyError, ValueError) as error:  # an unknown split
        raise DataError(f"{spec.tfds_name} split {split.name!r}: {one_line(error)}") from None
    if split.part == "all":
        return ds
    n = int(ds.cardinality())
    if n < 0:
        n = int(ds.reduce(np.int64(0), lambda count, _: count + 1))
    return select_part(ds, n, split)


def _folder_source(info: FolderInfo, split: Split, training, shuffle_seed):
    paths, labels = info.files(split.name)
    if split.part != "all":
        keep = part_mask(len(paths), split)
        paths = [p for p, k in zip(paths, keep, strict=True) if k]
        labels = [label for label, k in zip(labels, keep, strict=True) if k]
    ds = tf.data.Dataset.from_tensor_slices((paths, labels))
    if training:
        ds = ds.shuffle(len(paths), seed=shuffle_seed, reshuffle_each_iteration=True)

    def read(path, label):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return image, label

    return ds.map(read, num_parallel_calls=tf.data.AUTOTUNE)


def load(
    name: str = "digits",
    split: str | Split = "train",
    batch_size: int = 64,
    training: bool = False,
    data_dir: str | None = None,
    num_workers: int | None = None,
    shuffle_seed: int | None = None,
    take_batches: int | None = None,
    augmentation: str = "medium",
    epoch: tf.Variable | None = None,
    preprocessing: str = INPUT_PREPROCESSING,
) -> tf.data.Dataset:
    """A batched `(image, label)` dataset, augmented, preprocessed, prefetched.

    Arguments:
        name: a TFDS name (`digits`, `mnist`, `cifar10`, `cifar100`,
            `imagenet2012`), one of the seed's aliases (`imagenet`), or
            `folder` (an image folder: `data_dir/train/<class>/*.jpg`, `data_dir/val/...`).
        split: a split name, e.g. `"train"`, `"validation"` or `"test"`
            (`"train"` or `"val"` for folders), or a `Split` (a seeded
            held-out part of a split or the rest of it; see `plan_splits`).
        batch_size: the batch size (global under `tf.distribute`).
        training: shuffle, augment and drop the last incomplete batch.
        data_dir: TFDS data directory (default `TFDS_DATA_DIR` or
            `~/tensorflow_datasets`); for `imagenet2012` the TFDS manual
            directory with the ILSVRC2012 tar files; for `folder` the folder.
        num_workers: parallel calls of the map functions (default AUTOTUNE).
        shuffle_seed: seed of the shuffle order.
        take_batches: stop after this many batches (smoke runs).
        augmentation: `low`, `medium` or `high` (training only).
        epoch: an integer variable holding the epoch about to start; with it,
            the order and augmentations of each epoch depend only on
            (`shuffle_seed`, epoch), so a resumed run sees the same batches.
        preprocessing: what the model is fed in place of the pixels in [0, 255]
            (`quantens.defaults.INPUT_PREPROCESSINGS`, `preprocessing_fn`):
            `standardized` (the dataset's mean and std), `none`, `unit`,
            `symmetric`, `caffe`, `torch`.

    Raises:
        DataError: unknown dataset or split, missing folder or files, a bad
            image folder (see `validate_image_folder`), an unknown
            preprocessing or one that does not apply to the images.
    """
    if augmentation not in ("low", "medium", "high"):
        raise DataError(f"unknown augmentation {augmentation!r}: choose low, medium or high")
    if data_dir is not None and not os.path.isdir(data_dir):
        raise DataError(f"--data-dir {data_dir} does not exist or is not a folder")
    split = as_split(split)
    spec = resolve(name, data_dir)
    normalize = preprocessing_fn(preprocessing, spec)
    ds = _source(spec, split, training, data_dir, shuffle_seed)
    parallel = num_workers or tf.data.AUTOTUNE
    augment = preprocess_fn(spec, training, augmentation)
    if not training:
        ds = _evaluation_batches(ds, augment, normalize, batch_size, parallel)
    else:
        ds = _training_batches(ds, spec, split, augment, normalize, batch_size, parallel,
                               shuffle_seed, epoch)
    if take_batches:
        ds = ds.take(take_batches)
    return _with_options(ds).prefetch(tf.data.AUTOTUNE)


def _source(spec, split: Split, training: bool, data_dir, shuffle_seed) -> tf.data.Dataset:
    """The (uint8 image, label) examples of `split`: an image folder's files or a TFDS split."""
    if spec.tfds_name == FOLDER:
        info = validate_image_folder(data_dir)  # checked by resolve: from its cache
        return _folder_source(info, split, training, shuffle_seed)
    return _tfds_source(spec, split, training, data_dir, shuffle_seed)


def _evaluation_batches(ds, augment, normalize, batch_size: int, parallel) -> tf.data.Dataset:
    """Evaluation: each image resized/cropped and normalised, in order, the last batch kept."""
    ds = ds.map(
        lambda image, label: (normalize(augment(image, tf.zeros(2, tf.int64))), label),
        num_parallel_calls=parallel,
    )
    return ds.batch(batch_size)


def _training_batches(ds, spec, split: Split, augment, normalize, batch_size: int, parallel,
                      shuffle_seed, epoch) -> tf.data.Dataset:
    """Training: per epoch a shuffled, augmented pass (`_one_epoch`), whole batches only.

    Small datasets are cached decoded; an epoch's order and augmentations
    follow from its seed (`_epoch_seeds`).
    """
    in_memory = spec.family in ("digits", "mnist", "cifar")
    if in_memory:
        ds = ds.cache()  # decoded uint8 images; augmentation stays random per epoch
    size = int(ds.cardinality())

    def one_epoch(epoch_seed):
        return _one_epoch(ds, epoch_seed, in_memory, size, batch_size, shuffle_seed, augment,
                          normalize, parallel)

    epoch_seeds = _epoch_seeds(shuffle_seed, epoch)
    if size < 0:
        raise DataError(f"{spec.tfds_name} {split}: the number of examples is unknown")
    batches = size // batch_size
    if batches == 0:
        raise DataError(
            f"{spec.tfds_name} {split} has {size} examples: fewer than one batch of {batch_size}"
        )
    ds = epoch_seeds.flat_map(one_epoch).batch(batch_size, drop_remainder=True)
    return ds.apply(tf.data.experimental.assert_cardinality(batches))


def _one_epoch(ds, epoch_seed, in_memory: bool, size: int, batch_size: int, shuffle_seed,
               augment, normalize, parallel) -> tf.data.Dataset:
    """The examples of one epoch, shuffled and augmented from (seed, epoch) alone."""
    if in_memory and size > 0:
        # a stateless permutation of the whole split (it fits in memory)
        order = tf.random.experimental.stateless_shuffle(
            tf.range(size, dtype=tf.int64), seed=tf.stack([epoch_seed, 0])
        )
        shuffled = ds.batch(size).map(
            lambda images, labels: (tf.gather(images, order), tf.gather(labels, order))
        ).unbatch()
    else:  # large splits: a shuffle buffer (its order is not keyed by the epoch)
        shuffled = ds.shuffle(max(1000, 10 * batch_size), seed=shuffle_seed)
    return shuffled.enumerate().map(
        lambda i, item: (
            normalize(augment(item[0], tf.stack([epoch_seed, i]))), item[1]
        ),
        num_parallel_calls=parallel,
    )


def _epoch_seeds(shuffle_seed, epoch) -> tf.data.Dataset:
    """A one-element dataset: the seed of the epoch about to start.

    With an `epoch` variable it is read when the epoch's iterator is created
    (epoch * 1,000,003 + shuffle_seed); without one, a new seed every iteration.
    """
    base_seed = 0 if shuffle_seed is None else int(shuffle_seed)
    if epoch is None:  # no epoch counter: a new seed every iteration
        generator = (
            tf.random.Generator.from_non_deterministic_state() if shuffle_seed is None
            else tf.random.Generator.from_seed(shuffle_seed)
        )
        return tf.data.Dataset.range(1).map(
            lambda _: generator.uniform_full_int([], tf.int64)
        )
    # read when the epoch's iterator is created
    return tf.data.Dataset.range(1).map(
        lambda _: tf.cast(epoch.read_value(), tf.int64) * 1_000_003 + base_seed
    )


class EpochCounter(tf.keras.callbacks.Callback):
    """Holds the epoch about to start in a variable that `load(epoch=...)` reads.

    At the start of training the epoch is derived from the optimizer's step
    count, so a run resumed by BackupAndRestore (list this callback after it)
    continues with the data order of the epoch it resumes.

    ```python
    import tempfile
    import quantens.data as qd

    counter = qd.EpochCounter(steps_per_epoch=20)  # 1,294 // 64
    train = qd.load("digits", "train", 64, training=True, epoch=counter.variable,
                    data_dir=tempfile.mkdtemp())
    assert int(train.cardinality()) == 20
    ```
    """

    def __init__(self, steps_per_epoch: int = 1):
        super().__init__()
        self.steps_per_epoch = int(steps_per_epoch)
        with tf.init_scope():
            self.variable = tf.Variable(0, dtype=tf.int64, trainable=False, name="data_epoch")

    def on_train_begin(self, logs=None):
        steps = int(self.model.optimizer.iterations.numpy())
        self.variable.assign(steps // max(1, self.steps_per_epoch))

    def on_epoch_end(self, epoch, logs=None):
        self.variable.assign(epoch + 1)


def _with_options(ds: tf.data.Dataset) -> tf.data.Dataset:
    options = tf.data.Options()
    # shard by element across workers: the TFDS files are fewer than the workers
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    options.deterministic = True
    return ds.with_options(options)

