import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from sklearn.datasets import load_digits

import quantens.data as qd


def _rows(images):
    """Each image of a batch as bytes (the digits images are all different)."""
    images = np.asarray(images)
    return [bytes(row) for row in images.reshape(len(images), -1)]


def _digits_splits(data_dir):
    builder = tfds.builder("digits", data_dir=data_dir)
    builder.download_and_prepare()
    splits = {
        name: tfds.as_numpy(builder.as_dataset(split=name, batch_size=-1))
        for name in ("train", "validation", "test")
    }
    return builder, splits


def test_digits_has_fixed_disjoint_train_validation_test_splits(tfds_dir):
    builder, splits = _digits_splits(tfds_dir)
    assert str(builder.info.version) == "2.0.0"
    assert builder.data_dir.endswith(os.path.join("digits", "2.0.0"))  # not 1.0.0's files
    sizes = {name: split.num_examples for name, split in builder.info.splits.items()}
    assert sizes == {"train": 1294, "validation": 144, "test": 359}
    assert builder.info.features["label"].num_classes == 10
    assert splits["train"]["image"].shape == (1294, 8, 8, 1)
    assert splits["train"]["image"].dtype == np.uint8
    # the images are scikit-learn's, scaled from 0..16 to 0..255, each with its label
    digits = load_digits()
    scaled = np.round(digits.images * 255 / 16).astype(np.uint8)
    label_of = dict(zip(_rows(scaled), digits.target.tolist(), strict=True))
    rows = {name: _rows(split["image"][..., 0]) for name, split in splits.items()}
    for name, split in splits.items():
        assert [label_of[row] for row in rows[name]] == split["label"].tolist()
    # disjoint, and together all 1,797 images
    train, validation, test = (set(rows[n]) for n in ("train", "validation", "test"))
    assert len(train) == 1294 and len(validation) == 144 and len(test) == 359
    assert not train & validation and not train & test and not validation & test
    assert train | validation | test == set(label_of)
    # test is version 1.0.0's 80/20 cut of a permutation with seed 0; validation comes
    # out of the other 80%
    order = np.random.RandomState(0).permutation(1797)
    n_train = round(0.8 * 1797)
    assert n_train == 1438
    assert test == set(_rows(scaled[order[n_train:]]))
    assert train | validation == set(_rows(scaled[order[:n_train]]))


def test_digits_validation_is_stratified_and_stable(tfds_dir, tmp_path):
    _, splits = _digits_splits(tfds_dir)
    digits = load_digits()
    order = np.random.RandomState(0).permutation(1797)
    train_part = np.bincount(digits.target[order[:1438]], minlength=10)
    validation = np.bincount(splits["validation"]["label"], minlength=10)
    assert validation.sum() == 144 and validation.min() >= 1
    proportional = 144 * train_part / train_part.sum()
    assert np.abs(validation - proportional).max() <= 2, (validation, proportional)
    assert np.bincount(splits["train"]["label"], minlength=10).min() > 100
    # the same images when prepared again elsewhere, and through load at any batch size
    _, again = _digits_splits(str(tmp_path / "tfds"))
    for name in ("train", "validation", "test"):
        assert sorted(_rows(again[name]["image"])) == sorted(_rows(splits[name]["image"]))
    first = [x.numpy() for x, _ in qd.load("digits", "validation", 32, data_dir=tfds_dir)]
    second = [x.numpy() for x, _ in qd.load("digits", "validation", 100, data_dir=tfds_dir)]
    assert sorted(_rows(np.concatenate(first))) == sorted(_rows(np.concatenate(second)))


def test_dataset_specs_name_their_validation_and_test_splits():
    specs = qd.DATASETS
    assert (specs["digits"].validation_split, specs["digits"].test_split) == ("validation", "test")
    assert (specs["imagenet2012"].validation_split, specs["imagenet2012"].test_split) == (
        "validation", "validation")
    for name in ("mnist", "cifar10", "cifar100"):
        assert (specs[name].validation_split, specs[name].test_split) == (None, "test")
    # eval_split, for the callers of before: the validation split, else the test split
    assert [specs[n].eval_split for n in ("digits", "mnist", "cifar10", "imagenet2012")] == [
        "validation", "test", "test", "validation"]
    assert all(spec.train_split == "train" for spec in specs.values())


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


# ------------------------------------------------------------------ Split, plan_splits


def _images(name, split, batch_size, data_dir=None, **kwargs):
    """Every image `load` gives for `split`, as a list of row bytes, in order."""
    ds = qd.load(name, split, batch_size, data_dir=data_dir, **kwargs)
    return _rows(np.concatenate([x.numpy() for x, _ in ds]))


def test_split_rest_and_heldout_are_disjoint_and_cover_the_split(tfds_dir):
    whole = _images("digits", "train", 2000, tfds_dir)
    assert _images("digits", qd.Split("train"), 2000, tfds_dir) == whole  # part "all"
    for holdout, seed in ((0.1, 0), (0.25, 0), (0.1, 7)):
        held = _images("digits", qd.Split("train", holdout, "heldout", seed), 2000, tfds_dir)
        rest = _images("digits", qd.Split("train", holdout, "rest", seed), 2000, tfds_dir)
        assert not set(held) & set(rest)
        assert sorted(held + rest) == sorted(whole)
        assert len(held) == round(holdout * 1294)  # 129, 324, 129
        assert abs(len(held) / len(whole) - holdout) < 0.005
        if seed == 7:  # another seed, another held-out part
            assert set(held) != set(_images(
                "digits", qd.Split("train", 0.1, "heldout", 0), 2000, tfds_dir))


def test_split_parts_do_not_depend_on_batch_size_shuffling_or_epoch(tfds_dir):
    heldout = qd.Split("train", 0.1, "heldout", holdout_seed=3)
    rest = qd.Split("train", 0.1, "rest", holdout_seed=3)
    expected = sorted(_images("digits", heldout, 1000, tfds_dir))
    assert sorted(_images("digits", heldout, 7, tfds_dir)) == expected
    # training: shuffled, keyed by (shuffle_seed, epoch); 1165 = 233 batches of 5
    counter = qd.EpochCounter()
    train = dict(batch_size=5, training=True, shuffle_seed=1, epoch=counter.variable)
    first = _images("digits", rest, data_dir=tfds_dir, **train)
    assert len(first) == 1165
    assert sorted(first) == sorted(_images("digits", rest, 1000, tfds_dir))
    assert not set(first) & set(expected)
    counter.variable.assign(1)
    second = _images("digits", rest, data_dir=tfds_dir, **train)
    assert second != first and sorted(second) == sorted(first)
    counter.variable.assign(0)
    assert _images("digits", rest, data_dir=tfds_dir, **train) == first
    # with batches that drop a remainder, every example still comes from the part
    ds = qd.load("digits", heldout, 16, training=True, data_dir=tfds_dir, shuffle_seed=0,
                 augmentation="high")
    assert int(ds.cardinality()) == 129 // 16
    assert all(x.shape == (16, 8, 8, 1) for x, _ in ds)


def test_split_checks_its_fields():
    assert str(qd.Split("test")) == "test"
    assert str(qd.Split("train", 0.1, "heldout", 2)) == "train (heldout of a 0.1 holdout, seed 2)"
    with pytest.raises(qd.DataError, match="part 'some': choose all, rest, heldout"):
        qd.Split("train", 0.1, "some")
    with pytest.raises(qd.DataError, match=r"holdout 1\.5: give a fraction in \[0, 1\)"):
        qd.Split("train", 1.5, "rest")
    with pytest.raises(qd.DataError, match="needs a holdout fraction"):
        qd.Split("train", 0.0, "heldout")
    with pytest.raises(qd.DataError, match="holdout '0.1': give a fraction"):
        qd.Split("train", "0.1", "rest")
    with pytest.raises(qd.DataError, match="holdout_seed 1.5: give an integer"):
        qd.Split("train", 0.1, "rest", 1.5)
    with pytest.raises(qd.DataError, match="give a split name"):
        qd.load("digits", 3)


def test_plan_splits_uses_a_validation_split_where_there_is_one():
    plan = qd.plan_splits(qd.DATASETS["digits"])
    assert plan == qd.SplitPlan(qd.Split("train"), qd.Split("validation"), qd.Split("test"),
                                validation_is_test=False)
    with pytest.raises(qd.DataError, match="digits has its own validation split 'validation'"):
        qd.plan_splits(qd.DATASETS["digits"], val_split=0.1)
    imagenet = qd.plan_splits("imagenet")  # its test labels are not public
    assert imagenet.validation == imagenet.test == qd.Split("validation")
    assert imagenet.validation_is_test


def test_plan_splits_without_a_validation_split():
    spec = qd.DATASETS["cifar10"]
    seed = qd.plan_splits(spec)  # the seed's behaviour: validate on the test split
    assert seed == qd.SplitPlan(qd.Split("train"), qd.Split("test"), qd.Split("test"),
                                validation_is_test=True)
    plan = qd.plan_splits(spec, val_split=0.2, holdout_seed=5)
    assert plan.train == qd.Split("train", 0.2, "rest", 5)
    assert plan.validation == qd.Split("train", 0.2, "heldout", 5)
    assert plan.test == qd.Split("test") and not plan.validation_is_test
    for bad in (0, 1, 1.0, -0.1, 1.5, "0.1", True):
        with pytest.raises(qd.DataError, match="strictly between 0 and 1"):
            qd.plan_splits(spec, val_split=bad)


def test_plan_splits_holdout_reads_cifar10_under_mock_data(tfds_dir):
    plan = qd.plan_splits(qd.DATASETS["cifar10"], val_split=0.2)
    with tfds.testing.mock_data(num_examples=20):
        whole = _images("cifar10", "train", 100)
        train = _images("cifar10", plan.train, 100)
        validation = _images("cifar10", plan.validation, 100)
        assert len(whole) == len(set(whole)) == 20
        assert len(train) == 16 and len(validation) == 4
        assert sorted(train + validation) == sorted(whole)
        assert len(_images("cifar10", plan.test, 100)) == 20
        # training with augmentation and the epoch-keyed order on a Split
        counter = qd.EpochCounter()
        ds = qd.load("cifar10", plan.train, 4, training=True, shuffle_seed=0,
                     epoch=counter.variable, augmentation="high")
        labels = [y.numpy().tolist() for x, y in ds]
        assert len(labels) == 4 and all(len(batch) == 4 for batch in labels)
        ds = qd.load("cifar10", plan.train, 4, training=True, shuffle_seed=0,
                     epoch=counter.variable, augmentation="high")
        assert [y.numpy().tolist() for _, y in ds] == labels


# ------------------------------------------------------------------- image folders


def _save_image(path, size=(6, 5), seed=0):
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def _image_folder(root, train=("cat", "dog"), val=None, count=2):
    """root/train/<class>/<i>.png and root/val/<class>/<i>.png, `count` images each."""
    for split, classes in (("train", train), ("val", train if val is None else val)):
        (root / split).mkdir(parents=True, exist_ok=True)
        for c, name in enumerate(classes):
            for i in range(count):
                _save_image(root / split / name / f"{i}.png", seed=10 * c + i)
    return root


def test_validate_image_folder_lists_classes_and_images(tmp_path):
    root = _image_folder(tmp_path / "data", count=3)
    (root / "train" / "cat" / "notes.txt").write_text("not an image")  # ignored
    (root / "train" / "cat" / "sub.png").mkdir()  # a folder, not an image: ignored
    (root / "val" / "dog" / "3.JPG").write_bytes((root / "val" / "dog" / "0.png").read_bytes())
    (root / "README").write_text("ignored")
    info = qd.validate_image_folder(str(root))
    assert info.classes == ("cat", "dog") and info.num_classes == 2
    assert info.train_counts == (3, 3) and info.val_counts == (3, 4)
    paths, labels = info.files("val")
    assert [os.path.relpath(p, root) for p in paths] == [
        os.path.join("val", c, f) for c, f in
        [("cat", "0.png"), ("cat", "1.png"), ("cat", "2.png"),
         ("dog", "0.png"), ("dog", "1.png"), ("dog", "2.png"), ("dog", "3.JPG")]]
    assert labels == [0, 0, 0, 1, 1, 1, 1]
    with pytest.raises(qd.DataError, match="has splits train and val, not 'test'"):
        info.files("test")
    assert qd.validate_image_folder(str(root)) is info  # checked once while unchanged
    spec = qd.resolve("folder", str(root))
    assert spec.num_classes == 2
    assert (spec.validation_split, spec.test_split, spec.eval_split) == ("val", "val", "val")
    plan = qd.plan_splits(spec)
    assert plan.validation == plan.test == qd.Split("val") and plan.validation_is_test
    with pytest.raises(qd.DataError, match="folder has its own validation split 'val'"):
        qd.plan_splits(spec, val_split=0.1)
    # a seeded holdout of a folder split
    held = qd.load("folder", qd.Split("train", 0.5, "heldout"), 8, data_dir=str(root))
    rest = qd.load("folder", qd.Split("train", 0.5, "rest"), 8, data_dir=str(root))
    assert [int(x.shape[0]) for x, _ in held] == [3] and [int(x.shape[0]) for x, _ in rest] == [3]


def test_folder_with_one_class_fails_at_resolve(tmp_path):
    root = _image_folder(tmp_path, train=("cat",))
    with pytest.raises(qd.DataError, match=r"1 class subfolder\(s\) \(cat\).*at least 2 classes"):
        qd.resolve("folder", str(tmp_path))
    with pytest.raises(qd.DataError, match="at least 2 classes"):
        qd.validate_image_folder(str(root))


def test_folder_with_mismatched_classes_lists_the_differences(tmp_path):
    _image_folder(tmp_path, train=("cat", "dog", "fox"), val=("cat", "dog", "owl", "yak"))
    with pytest.raises(qd.DataError) as error:
        qd.resolve("imagenet", str(tmp_path))  # the MXNet layout is checked as well
    message = str(error.value)
    assert "\n" not in message
    assert "missing in val/: fox; only in val/: owl, yak" in message


def test_folder_with_a_class_without_images_names_it(tmp_path):
    _image_folder(tmp_path)
    for image in (tmp_path / "val" / "dog").iterdir():
        image.unlink()
    (tmp_path / "val" / "dog" / "labels.txt").write_text("no image")
    with pytest.raises(qd.DataError, match="no images") as error:
        qd.resolve("folder", str(tmp_path))
    assert str(error.value).startswith(str(tmp_path / "val" / "dog") + " has no images")


def test_folder_with_a_corrupt_image_names_the_first_one(tmp_path):
    _image_folder(tmp_path, count=40)
    assert qd.resolve("folder", str(tmp_path)).num_classes == 2
    (tmp_path / "val" / "cat" / "bad.jpg").write_bytes(b"garbage")
    (tmp_path / "train" / "dog" / "bad.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(qd.DataError) as error:
        qd.resolve("folder", str(tmp_path))  # the folder changed: checked again
    message = str(error.value)
    assert message.startswith(str(tmp_path / "train" / "dog" / "bad.png") + " does not decode")
    assert message.endswith("fix or remove it") and "\n" not in message
    (tmp_path / "train" / "dog" / "bad.png").unlink()
    with pytest.raises(qd.DataError, match=r"val/cat/bad\.jpg does not decode"):
        qd.validate_image_folder(str(tmp_path))
    (tmp_path / "val" / "cat" / "bad.jpg").unlink()
    from PIL import Image  # a TIFF file named .jpg: PIL reads it, TensorFlow cannot

    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "val" / "cat" / "x.jpg",
                                                        format="TIFF")
    with pytest.raises(qd.DataError, match=r"x\.jpg is a TIFF image"):
        qd.validate_image_folder(str(tmp_path))


def test_folder_symlink_cycles_are_ignored_and_links_inside_followed(tmp_path):
    root = _image_folder(tmp_path / "data")
    outside = _image_folder(tmp_path / "other", train=("elk",), val=("elk",))
    for split in ("train", "val"):
        os.symlink(".", root / split / "loop")  # the split folder itself
        os.symlink("..", root / split / "up")  # data_dir
        os.symlink(str(tmp_path), root / split / "ancestor")
        os.symlink(str(outside / split / "elk"), root / split / "elk")  # outside data_dir
        os.symlink("missing", root / split / "dangling")
    info = qd.validate_image_folder(str(root))
    assert info.classes == ("cat", "dog")
    # a class folder elsewhere inside data_dir is followed
    for i in range(3):
        _save_image(root / "extra" / "bird" / f"{i}.png", seed=i)
    os.symlink(os.path.join("..", "extra", "bird"), root / "train" / "bird")
    os.symlink(str(root / "extra" / "bird"), root / "val" / "bird")
    info = qd.validate_image_folder(str(root))
    assert info.classes == ("bird", "cat", "dog") and info.train_counts == (3, 2, 2)
    assert qd.resolve("folder", str(root)).num_classes == 3
    labels = [y.numpy().tolist() for _, y in qd.load("folder", "train", 8, data_dir=str(root))]
    assert labels == [[0, 0, 0, 1, 1, 2, 2]]


def test_folder_without_val_is_a_clear_error(tmp_path):
    _image_folder(tmp_path)
    import shutil

    shutil.rmtree(tmp_path / "val")
    with pytest.raises(qd.DataError, match="has no val/: it must be a folder with train/ and val/"):
        qd.validate_image_folder(str(tmp_path))


def _forged_png(path, width, height):
    """A 1 x 1 PNG whose header (IHDR, its CRC fixed) claims `width` x `height` pixels."""
    import struct
    import zlib

    _save_image(path, size=(1, 1))
    data = bytearray(path.read_bytes())
    assert data[12:16] == b"IHDR"  # after the signature (8) and the chunk's length (4)
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("side", [100_000, 10_000])  # above twice PIL's limit, and between
def test_folder_image_above_the_pixel_cap_is_named_with_its_size_before_training(tmp_path,
                                                                                 side):
    _image_folder(tmp_path)
    huge = tmp_path / "train" / "dog" / "huge.png"
    _forged_png(huge, side, side)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(qd.DataError) as error:
        qd.resolve("folder", str(tmp_path))
    message = str(error.value)
    assert message.startswith(f"{huge} is {side} x {side} pixels ({side * side:,})")
    assert f"above the cap of {qd.MAX_IMAGE_PIXELS:,} pixels" in message
    assert "MAX_IMAGE_PIXELS" in message and "\n" not in message
    assert qd.MAX_IMAGE_PIXELS == 89_478_485
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written
