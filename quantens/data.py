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
    input_shape: tuple[int, int, int]
    num_classes: int
    train_split: str = "train"
    eval_split: str = "test"
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SIZE = 224
FOLDER = "folder"

DATASETS = {
    "digits": DatasetSpec("digits", "digits", (8, 8, 1), 10, mean=(0.3053,), std=(0.3760,)),
    "mnist": DatasetSpec("mnist", "mnist", (28, 28, 1), 10, mean=(0.1307,), std=(0.3081,)),
    "cifar10": DatasetSpec(
        "cifar10", "cifar", (32, 32, 3), 10,
        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
    ),
    "cifar100": DatasetSpec(
        "cifar100", "cifar", (32, 32, 3), 100,
        mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762),
    ),
    "imagenet2012": DatasetSpec(
        "imagenet2012", "imagenet", (IMAGE_SIZE, IMAGE_SIZE, 3), 1000,
        eval_split="validation", mean=IMAGENET_MEAN, std=IMAGENET_STD,
    ),
}
# The seed's names for the same datasets.
ALIASES = {"imagenet": "imagenet2012", "cifar-10": "cifar10", "cifar-100": "cifar100"}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


from quantens.errors import DataError  # noqa: E402  (re-exported: quantens.data.DataError)


def resolve(name: str, data_dir: str | None = None) -> DatasetSpec:
    """The `DatasetSpec` of a dataset name or alias (`folder`: from `data_dir`).

    ImageNet given as a folder with `train/` and `val/` subfolders (the layout
    the MXNet code read) is read as an image folder too.
    """
    key = ALIASES.get(name, name)
    if key == FOLDER or (key == "imagenet2012" and _is_image_folder(data_dir)):
        return _folder_spec(data_dir)
    if key not in DATASETS:
        known = ", ".join(sorted([*DATASETS, *ALIASES, FOLDER]))
        raise DataError(f"unknown dataset {name!r}: choose one of {known}")
    return DATASETS[key]


def _is_image_folder(data_dir: str | None) -> bool:
    return bool(data_dir) and all(
        os.path.isdir(os.path.join(data_dir, sub)) for sub in ("train", "val")
    )


def _folder_classes(directory: str) -> list[str]:
    return sorted(
        d for d in os.listdir(directory) if os.path.isdir(os.path.join(directory, d))
    )


def _folder_spec(data_dir: str | None) -> DatasetSpec:
    if not _is_image_folder(data_dir):
        raise DataError(
            f"--data-dir {data_dir!r} must be a folder with train/ and val/ subfolders, "
            "one subfolder per class in each"
        )
    classes = _folder_classes(os.path.join(data_dir, "train"))
    if not classes:
        raise DataError(f"{os.path.join(data_dir, 'train')} has no class subfolders")
    return DatasetSpec(
        FOLDER, "imagenet", (IMAGE_SIZE, IMAGE_SIZE, 3), len(classes),
        eval_split="val", mean=IMAGENET_MEAN, std=IMAGENET_STD,
    )


# ------------------------------------------------------------------ augmentation
# Augmentations are stateless: each draws from a seed of (epoch seed, element
# index), so an epoch's batches are a function of (seed, epoch) and a resumed
# run sees the same batches as an uninterrupted one.


def _random_resized_crop(image, size: int, seed, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """Inception-style crop: a random area and aspect ratio, resized to `size`."""
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=(1, 1, 4)),
        seed=seed,
        min_object_covered=0.0,
        aspect_ratio_range=ratio,
        area_range=scale,
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    crop = tf.slice(image, begin, crop_size)
    return tf.image.resize(crop, (size, size))


def _resize_center_crop(image, size: int, resize: int):
    """Resizes the short side to `resize`, then crops the `size` center."""
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = resize / tf.reduce_min(shape)
    new = tf.cast(tf.round(shape * scale), tf.int32)
    image = tf.image.resize(image, new)
    return tf.image.resize_with_crop_or_pad(image, size, size)


def preprocess_fn(spec: DatasetSpec, training: bool, augmentation: str = "medium"):
    """The per-image function `load` maps: (image, seed) -> float image in [0, 255].

    In training it augments (random crops and flips, a function of the
    stateless `seed`); in evaluation it only resizes and crops to
    `spec.input_shape`.

    ```python
    import tensorflow as tf
    import quantens.data as qd

    augment = qd.preprocess_fn(qd.DATASETS["cifar10"], training=True)
    image = tf.zeros((32, 32, 3), tf.uint8)
    assert augment(image, tf.constant([0, 1], tf.int64)).shape == (32, 32, 3)
    ```
    """
    height = spec.input_shape[0]

    def augment(image, seed):
        image = tf.cast(image, tf.float32)
        seeds = tf.random.experimental.stateless_split(seed, num=4)
        if spec.family == "imagenet":
            if not training:
                return _resize_center_crop(image, height, int(round(height * 256 / 224)))
            scale = (0.35, 1.0) if augmentation == "low" else (0.08, 1.0)
            image = _random_resized_crop(image, height, seeds[0], scale=scale)
            image = tf.image.stateless_random_flip_left_right(image, seeds[1])
            if augmentation == "high":
                image = tf.image.stateless_random_brightness(image, 0.4 * 255, seeds[2])
                image = tf.image.stateless_random_contrast(image, 0.6, 1.4, seeds[3])
                image = tf.clip_by_value(image, 0.0, 255.0)
            return image
        if not training:
            return image
        if spec.family == "cifar":
            if augmentation != "low":
                image = tf.image.resize_with_crop_or_pad(image, height + 8, height + 8)
                image = tf.image.stateless_random_crop(image, spec.input_shape, seeds[0])
            return tf.image.stateless_random_flip_left_right(image, seeds[1])
        # digits, mnist: no flips (they change the class); shifts on "high"
        if augmentation == "high":
            pad = max(1, height // 8)
            image = tf.image.resize_with_crop_or_pad(image, height + 2 * pad, height + 2 * pad)
            image = tf.image.stateless_random_crop(image, spec.input_shape, seeds[0])
        return image

    return augment


def _normalize(spec: DatasetSpec):
    mean = tf.constant(spec.mean, tf.float32) * 255.0
    std = tf.constant(spec.std, tf.float32) * 255.0
    return lambda image: (image - mean) / std


# --------------------------------------------------------------------- sources


def _tfds_source(spec, split, training, data_dir, shuffle_seed):
    manual_dir = data_dir if spec.tfds_name == "imagenet2012" else None
    tfds_dir = None if manual_dir else data_dir
    builder = tfds.builder(spec.tfds_name, data_dir=tfds_dir)
    try:
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
        )
    except AssertionError as error:  # TFDS's way of saying "manual files missing"
        raise DataError(
            f"{spec.tfds_name} is not prepared and cannot be: {str(error).splitlines()[0]} "
            "(put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in --data-dir, or "
            "give --data-dir a folder with train/ and val/ image subfolders)"
        ) from None
    read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed)
    return builder.as_dataset(
        split=split, as_supervised=True, shuffle_files=training, read_config=read_config
    )


def _folder_source(data_dir, split, training, shuffle_seed):
    classes = _folder_classes(os.path.join(data_dir, "train"))
    directory = os.path.join(data_dir, split)
    paths, labels = [], []
    for label, name in enumerate(classes):
        class_dir = os.path.join(directory, name)
        if not os.path.isdir(class_dir):
            continue
        for file in sorted(os.listdir(class_dir)):
            if file.lower().endswith(IMAGE_EXTENSIONS):
                paths.append(os.path.join(class_dir, file))
                labels.append(label)
    if not paths:
        raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {directory}")
    ds = tf.data.Dataset.from_tensor_slices((paths, labels))
    if training:
        ds = ds.shuffle(len(paths), seed=shuffle_seed, reshuffle_each_iteration=True)

    def read(path, label):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return image, label

    return ds.map(read, num_parallel_calls=tf.data.AUTOTUNE)


def load(
    name: str = "digits",
    split: str = "train",
    batch_size: int = 64,
    training: bool = False,
    data_dir: str | None = None,
    num_workers: int | None = None,
    shuffle_seed: int | None = None,
    take_batches: int | None = None,
    augmentation: str = "medium",
    epoch: tf.Variable | None = None,
) -> tf.data.Dataset:
    """A batched `(image, label)` dataset, augmented, normalised, prefetched.

    Arguments:
        name: a TFDS name (`digits`, `mnist`, `cifar10`, `cifar100`,
            `imagenet2012`), one of the seed's aliases (`imagenet`), or
            `folder` (an image folder: `data_dir/train/<class>/*.jpg`, `data_dir/val/...`).
        split: a split, e.g. `"train"` or `"test"` (`"val"` for folders).
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

    Raises:
        DataError: unknown dataset, missing folder or files.
    """
    if augmentation not in ("low", "medium", "high"):
        raise DataError(f"unknown augmentation {augmentation!r}: choose low, medium or high")
    if data_dir is not None and not os.path.isdir(data_dir):
        raise DataError(f"--data-dir {data_dir} does not exist or is not a folder")
    spec = resolve(name, data_dir)
    if spec.tfds_name == FOLDER:
        ds = _folder_source(data_dir, split, training, shuffle_seed)
    else:
        ds = _tfds_source(spec, split, training, data_dir, shuffle_seed)
    parallel = num_workers or tf.data.AUTOTUNE
    augment, normalize = preprocess_fn(spec, training, augmentation), _normalize(spec)
    if not training:
        ds = ds.map(
            lambda image, label: (normalize(augment(image, tf.zeros(2, tf.int64))), label),
            num_parallel_calls=parallel,
        )
        ds = ds.batch(batch_size)
        if take_batches:
            ds = ds.take(take_batches)
        return _with_options(ds).prefetch(tf.data.AUTOTUNE)

    in_memory = spec.family in ("digits", "mnist", "cifar")
    if in_memory:
        ds = ds.cache()  # decoded uint8 images; augmentation stays random per epoch
    size = int(ds.cardinality())
    base_seed = 0 if shuffle_seed is None else int(shuffle_seed)

    def one_epoch(epoch_seed):
        # the order and the augmentations of one epoch, from (seed, epoch) alone
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

    if epoch is None:  # no epoch counter: a new seed every iteration
        generator = (
            tf.random.Generator.from_non_deterministic_state() if shuffle_seed is None
            else tf.random.Generator.from_seed(shuffle_seed)
        )
        epoch_seeds = tf.data.Dataset.range(1).map(
            lambda _: generator.uniform_full_int([], tf.int64)
        )
    else:  # read when the epoch's iterator is created
        epoch_seeds = tf.data.Dataset.range(1).map(
            lambda _: tf.cast(epoch.read_value(), tf.int64) * 1_000_003 + base_seed
        )
    if size < 0:
        raise DataError(f"{spec.tfds_name} {split}: the number of examples is unknown")
    batches = size // batch_size
    if batches == 0:
        raise DataError(
            f"{spec.tfds_name} {split} has {size} examples: fewer than one batch of {batch_size}"
        )
    ds = epoch_seeds.flat_map(one_epoch).batch(batch_size, drop_remainder=True)
    ds = ds.apply(tf.data.experimental.assert_cardinality(batches))
    if take_batches:
        ds = ds.take(take_batches)
    return _with_options(ds).prefetch(tf.data.AUTOTUNE)


class EpochCounter(tf.keras.callbacks.Callback):
    """Holds the epoch about to start in a variable that `load(epoch=...)` reads.

    At the start of training the epoch is derived from the optimizer's step
    count, so a run resumed by BackupAndRestore (list this callback after it)
    continues with the data order of the epoch it resumes.

    ```python
    import quantens.data as qd

    counter = qd.EpochCounter(steps_per_epoch=22)
    train = qd.load("digits", "train", 64, training=True, epoch=counter.variable)
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

