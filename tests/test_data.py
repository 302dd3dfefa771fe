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


def test_image_folder_is_read_with_imagenet_preprocessing(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", 3), ("val", 2)):
        for name in ("cat", "dog"):
            folder = tmp_path / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 255, size=(40 + i, 60, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    spec = qd.resolve("folder", str(tmp_path))
    assert spec.num_classes == 2 and spec.input_shape == (224, 224, 3)
    assert qd.resolve("imagenet", str(tmp_path)).tfds_name == "folder"  # the MXNet layout
    train = qd.load("folder", "train", batch_size=2, training=True, data_dir=str(tmp_path),
                    shuffle_seed=0)
    x, y = next(iter(train))
    assert x.shape == (2, 224, 224, 3)
    val = qd.load("folder", "val", batch_size=8, data_dir=str(tmp_path))
    x, y = next(iter(val))
    assert x.shape == (4, 224, 224, 3) and sorted(y.numpy().tolist()) == [0, 0, 1, 1]


def test_missing_folders_are_clear_errors(tmp_path):
    import pytest

    with pytest.raises(qd.DataError, match="train/ and val/"):
        qd.resolve("folder", str(tmp_path))
    with pytest.raises(qd.DataError, match="does not exist"):
        qd.load("digits", data_dir=str(tmp_path / "missing"))


def test_cifar_augmentation_pads_crops_and_flips():
    import tensorflow as tf

    spec = qd.DATASETS["cifar10"]
    image = tf.reshape(tf.range(32 * 32 * 3) % 256, (32, 32, 3))
    augment = qd.preprocess_fn(spec, training=True, augmentation="medium")
    outputs = [augment(image, tf.constant([7, i], tf.int64)).numpy() for i in range(40)]
    assert all(o.shape == (32, 32, 3) for o in outputs)
    assert len({o.tobytes() for o in outputs}) > 10  # random crops and flips
    same = augment(image, tf.constant([7, 3], tf.int64)).numpy()
    np.testing.assert_array_equal(same, outputs[3])  # a function of the seed
    # a crop shifted by the 4-pixel padding brings black (padded) rows or columns
    assert sum(int((o == 0).all(-1).any()) for o in outputs) > 10
    evaluation = qd.preprocess_fn(spec, training=False, augmentation="medium")
    np.testing.assert_array_equal(evaluation(image, tf.constant([0, 0], tf.int64)), image)


def test_imagenet_evaluation_resizes_256_and_crops_the_center_224():
    import tensorflow as tf

    spec = qd.DATASETS["imagenet2012"]
    image = tf.zeros((300, 400, 3), tf.uint8)
    out = qd.preprocess_fn(spec, training=False, augmentation="medium")(image, tf.zeros(2, tf.int64))
    assert out.shape == (224, 224, 3)
    train = qd.preprocess_fn(spec, training=True, augmentation="medium")(image, tf.constant([1, 2]))
    assert train.shape == (224, 224, 3)


def test_epoch_order_is_a_function_of_seed_and_epoch(tfds_dir):
    counter = qd.EpochCounter()

    def labels():
        ds = qd.load("digits", "train", 64, training=True, data_dir=tfds_dir, shuffle_seed=3,
                     epoch=counter.variable)
        return np.concatenate([y.numpy() for _, y in ds])

    first = labels()
    assert (labels() == first).all()
    counter.variable.assign(1)
    second = labels()
    assert not (second == first).all()
    counter.variable.assign(0)
    assert (labels() == first).all()
