"""Input pipelines: TFDS datasets, the embedded `digits` dataset, image folders.

Every dataset goes through `tensorflow_datasets`. The default one, `digits`,
is scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes)
wrapped as a TFDS builder with fixed, seeded splits: `test` is a seeded 20%
(359 images), `validation` a seeded, stratified 10% of the rest (144) and
`train` the remaining 1,294. It needs no download and takes the same path as
ImageNet.

Which split plays which part is in the `DatasetSpec` (`train_split`,
`validation_split`, `test_split`); `plan_splits` turns it into `Split`s,
holding out a seeded part of the training split for datasets without a
validation split of their own.

```python
import tempfile
import quantens.data as qd

train = qd.load("digits", "train", batch_size=64, training=True, data_dir=tempfile.mkdtemp())
images, labels = next(iter(train))
assert images.shape == (64, 8, 8, 1)
```
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import numbers
import os
import warnings

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from quantens.errors import DataError, one_line

DIGITS_SPLIT_SEED = 0
DIGITS_TRAIN_FRACTION = 0.8
DIGITS_VALIDATION_SEED = 1
DIGITS_VALIDATION_FRACTION = 0.1  # of the 80% train part, stratified by label


def _stratified_sample(indices, labels, fraction: float, seed: int) -> np.ndarray:
    """round(fraction * len(indices)) of `indices`, each label in proportion (largest remainder)."""
    classes, counts = np.unique(labels, return_counts=True)
    total = int(round(fraction * len(indices)))
    exact = counts * total / counts.sum()
    take = np.floor(exact).astype(int)
    extra = np.argsort(-(exact - take), kind="stable")[: total - int(take.sum())]
    take[extra] += 1
    rng = np.random.RandomState(seed)
    chosen = [
        rng.permutation(np.sort(indices[labels == c]))[:k]
        for c, k in zip(classes, take, strict=True)
    ]
    return np.sort(np.concatenate(chosen))


def _digits_split_indices(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Indices into scikit-learn's load_digits of each split of `Digits`, sorted."""
    order = np.random.RandomState(DIGITS_SPLIT_SEED).permutation(len(labels))
    n_train = int(round(DIGITS_TRAIN_FRACTION * len(order)))
    train_part, test = order[:n_train], order[n_train:]  # the 1.0.0 80/20 cut
    validation = _stratified_sample(
        train_part, labels[train_part], DIGITS_VALIDATION_FRACTION, DIGITS_VALIDATION_SEED
    )
    train = np.setdiff1d(train_part, validation)
    return {"train": np.sort(train), "validation": validation, "test": np.sort(test)}


class Digits(tfds.core.GeneratorBasedBuilder):
    """scikit-learn's 8x8 handwritten digits as a TFDS dataset (no download).

    Pixel values 0..16 are scaled to 0..255. The splits are fixed: a
    permutation with seed `DIGITS_SPLIT_SEED` cut 80/20 gives the 359 `test`
    images (the same as version 1.0.0); of the 1,438 others a seeded 10%,
    stratified by label, is `validation` (144) and the rest `train` (1,294).

    ```python
    import tempfile
    import tensorflow_datasets as tfds
    import quantens.data  # registers the builder

    builder = tfds.builder("digits", data_dir=tempfile.mkdtemp())
    builder.download_and_prepare()
    sizes = {name: split.num_examples for name, split in builder.info.splits.items()}
    assert sizes == {"train": 1294, "validation": 144, "test": 359}
    ```
    """

    VERSION = tfds.core.Version("2.0.0")
    RELEASE_NOTES = {
        "1.0.0": "scikit-learn's load_digits, seeded 80/20 split.",
        "2.0.0": "train/validation/test: a seeded, stratified 10% of the 1.0.0 train split "
                 "is the validation split; the test split is unchanged.",
    }

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
        return {split: self._generate_examples(split) for split in ("train", "validation", "test")}

    def _generate_examples(self, split: str):
        from sklearn.datasets import load_digits

        digits = load_digits()
        indices = _digits_split_indices(digits.target)[split]
        images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
        for i in indices:
            yield int(i), {"image": images[i][..., None], "label": int(digits.target[i])}


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """How a dataset is read and preprocessed, and which split plays which part.

    `train_split` trains; `validation_split` selects checkpoints and tuner
    trials (None: the dataset has none, see `plan_splits`); `test_split` is
    what results report. `eval_split` (read-only) is `validation_split or
    test_split`, the one split the code used before the two were told apart.

    ```python
    import quantens.data as qd

    digits = qd.DATASETS["digits"]
    assert (digits.validation_split, digits.test_split) == ("validation", "test")
    assert qd.DATASETS["cifar10"].validation_split is None
    assert qd.DATASETS["cifar10"].eval_split == "test"
    ```
    """

    tfds_name: str
    family: str  # "digits", "mnist", "cifar", "imagenet": selects augmentation
    input_shape: tuple[int, int, int]
    num_classes: int
    train_split: str = "train"
    validation_split: str | None = None
    test_split: str = "test"
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)

    @property
    def eval_split(self) -> str:
        """The validation split if there is one, else the test split (the old single split)."""
        return self.validation_split or self.test_split


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SIZE = 224
FOLDER = "folder"

DATASETS = {
    "digits": DatasetSpec(
        "digits", "digits", (8, 8, 1), 10, validation_split="validation",
        mean=(0.3053,), std=(0.3760,),
    ),
    "mnist": DatasetSpec("mnist", "mnist", (28, 28, 1), 10, mean=(0.1307,), std=(0.3081,)),
    "cifar10": DatasetSpec(
        "cifar10", "cifar", (32, 32, 3), 10,
        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
    ),
    "cifar100": DatasetSpec(
        "cifar100", "cifar", (32, 32, 3), 100,
        mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762),
    ),
    # the test labels of ImageNet are not public: its validation split is reported too
    "imagenet2012": DatasetSpec(
        "imagenet2012", "imagenet", (IMAGE_SIZE, IMAGE_SIZE, 3), 1000,
        validation_split="validation", test_split="validation",
        mean=IMAGENET_MEAN, std=IMAGENET_STD,
    ),
}
# The seed's names for the same datasets.
ALIASES = {"imagenet": "imagenet2012", "cifar-10": "cifar10", "cifar-100": "cifar100"}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")



# ----------------------------------------------------------------------- splits

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


def _as_split(split: str | Split) -> Split:
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


def _part_mask(n: int, split: Split) -> np.ndarray:
    """The positions of a split of n examples that `split` keeps, as a boolean array."""
    if split.part == "all":
        return np.ones(n, bool)
    k = _heldout_count(n, split)
    heldout = _is_heldout(tf.range(n, dtype=tf.int64), n, k, split.holdout_seed).numpy()
    return heldout if split.part == "heldout" else ~heldout


def _select_part(ds: tf.data.Dataset, n: int, split: Split) -> tf.data.Dataset:
    """The examples of `ds` (a split of n examples, in position order) that `split` keeps."""
    if split.part == "all":
        return ds
    k = _heldout_count(n, split)
    want = split.part == "heldout"
    seed = int(split.holdout_seed)
    ds = ds.enumerate().filter(lambda i, item: tf.equal(_is_heldout(i, n, k, seed), want))
    ds = ds.map(lambda i, item: item)
    return ds.apply(tf.data.experimental.assert_cardinality(k if want else n - k))


# ----------------------------------------------------------------- image folders

# what tf.io.decode_image reads (PIL names; MPO is a multi-picture JPEG)
_DECODABLE_FORMATS = frozenset({"JPEG", "MPO", "PNG", "GIF", "BMP", "WEBP"})

MAX_IMAGE_PIXELS = 89_478_485
"""The most pixels (width x height) an image of an image folder may have.

PIL's decompression-bomb limit (`PIL.Image.MAX_IMAGE_PIXELS`, 1 GiB / 4 bytes /
3 channels), fixed here so that a changed PIL setting does not move it: the
input pipeline decodes a whole image before it crops, and holds it as float32
RGB, 12 bytes a pixel, so an image at the cap takes 1 GiB, and several are
decoded at once. Photos are far below it (a 24-megapixel camera: 24 million).
"""
_FOLDER_LAYOUT = "a folder with train/ and val/ subfolders, one subfolder per class in each"


@dataclasses.dataclass(frozen=True)
class FolderInfo:
    """An image folder checked by `validate_image_folder`: its classes and image files.

    `classes` are the class subfolder names of `train/` (the same as `val/`'s),
    sorted: a label is a position in it. `train_counts` and `val_counts` are
    the number of images per class, in that order; `files(split)` gives the
    paths and labels.

    ```python
    import quantens.data as qd

    info = qd.FolderInfo("/data", ("cat", "dog"), (1, 2), (1, 1),
                         train_files=("/data/train/cat/0.png", "/data/train/dog/0.png",
                                      "/data/train/dog/1.png"),
                         val_files=("/data/val/cat/0.png", "/data/val/dog/0.png"))
    assert info.num_classes == 2
    assert info.files("train")[1] == [0, 1, 1]
    ```
    """

    data_dir: str
    classes: tuple[str, ...]
    train_counts: tuple[int, ...]
    val_counts: tuple[int, ...]
    train_files: tuple[str, ...] = dataclasses.field(default=(), repr=False)
    val_files: tuple[str, ...] = dataclasses.field(default=(), repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def files(self, split: str) -> tuple[list[str], list[int]]:
        """(paths, labels) of `split` ("train" or "val"): class by class, files by name."""
        if split not in ("train", "val"):
            raise DataError(
                f"image folder {self.data_dir} has splits train and val, not {split!r}"
            )
        paths = self.train_files if split == "train" else self.val_files
        counts = self.train_counts if split == "train" else self.val_counts
        return list(paths), np.repeat(np.arange(len(counts)), counts).tolist()


# validate_image_folder's results: (real data_dir, class folders' mtimes) -> FolderInfo
_folder_cache: dict[tuple, FolderInfo] = {}
_FOLDER_CACHE_SIZE = 8


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows symbolic links
    except OSError:  # a link loop, a permission problem
        return False


def _class_dirs(split_dir: str, root: str) -> dict[str, str]:
    """{class name: path} of the class subfolders of `split_dir` (see validate_image_folder)."""
    split_real = os.path.realpath(split_dir)
    found = {}
    with os.scandir(split_dir) as entries:
        for entry in entries:
            if not _is_dir(entry):
                continue
            if entry.is_symlink():
                target = os.path.realpath(entry.path)
                inside = _within(target, root) or _within(target, split_real)
                if not inside or _within(split_real, target):  # outside, or a cycle
                    continue
            found[entry.name] = entry.path
    return found


def _image_names(class_dir: str) -> list[str]:
    with os.scandir(class_dir) as entries:
        return sorted(
            e.name for e in entries
            if e.name.lower().endswith(IMAGE_EXTENSIONS) and not _is_dir(e)
        )


def _header_size(path: str) -> tuple[int, int] | None:
    """(width, height) in an image's header, read without PIL's decompression-bomb check.

    `Image.open` refuses images above twice PIL's limit before it returns
    their size; the format plugins it calls read the header alone.
    """
    from PIL import Image

    Image.init()
    with open(path, "rb") as f:
        prefix = f.read(16)
        for kind in Image.ID:
            factory, accept = Image.OPEN[kind]
            if accept and not accept(prefix):
                continue
            f.seek(0)
            try:
                return factory(f, path).size
            except Exception:  # another format's header: try the next plugin
                continue
    return None


def _too_large(size: tuple[int, int] | None) -> str | None:
    """Why an image of `size` is refused (above `MAX_IMAGE_PIXELS`), or None."""
    if size is None or size[0] * size[1] <= MAX_IMAGE_PIXELS:
        return None
    width, height = size
    return (
        f"is {width} x {height} pixels ({width * height:,}), above the cap of "
        f"{MAX_IMAGE_PIXELS:,} pixels of an image folder's images "
        "(quantens.data.MAX_IMAGE_PIXELS: decoding it would take more memory than training "
        "can spare; downscale it)"
    )


def _image_problem(path: str) -> str | None:
    """Why `path` is not an image TensorFlow can decode (its header), or None.

    An image above `MAX_IMAGE_PIXELS` is refused by its header's size.
    """
    from PIL import Image

    try:
        with Image.open(path) as image:
            kind, size = image.format, image.size
            too_large = _too_large(size)
            if too_large:
                return too_large
            image.verify()
    except Image.DecompressionBombError as error:  # above twice PIL's limit
        try:
            size = _header_size(path)
        except OSError:
            size = None
        return _too_large(size) or (
            f"is above the cap of {MAX_IMAGE_PIXELS:,} pixels of an image folder's images "
            f"({one_line(error, 120)}; downscale it)")
    except Exception as error:  # PIL raises many kinds for a bad file
        return f"does not decode as an image ({type(error).__name__}: {one_line(error, 120)})"
    if kind not in _DECODABLE_FORMATS:
        return f"is a {kind} image, which TensorFlow does not decode (use JPEG, PNG, BMP or GIF)"
    return None


def _first_bad_image(paths: list[str], chunk: int = 256) -> tuple[str, str] | None:
    """(path, problem) of the first of `paths` that does not decode, checked by a thread pool."""

    def check(part):
        for path in part:
            problem = _image_problem(path)
            if problem:
                return path, problem
        return None

    from PIL import Image

    parts = [paths[i : i + chunk] for i in range(0, len(paths), chunk)]
    # PIL warns about images above its limit: they are refused here, by name
    with warnings.catch_warnings(), concurrent.futures.ThreadPoolExecutor() as pool:
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        for found in pool.map(check, parts):  # in order: the first bad file of the list
            if found:
                pool.shutdown(wait=False, cancel_futures=True)
                return found
    return None


def _names(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def validate_image_folder(data_dir: str) -> FolderInfo:
    """Checks an image folder once, up front, and returns its `FolderInfo`.

    The layout is `data_dir/train/<class>/<image>` and `data_dir/val/<class>/...`.
    Class subfolders are the directories in `train/` (and `val/`); a symbolic
    link to a directory counts only when it resolves inside `data_dir` (or
    inside the split folder it is in) and is not a cycle: a link to its split
    folder, to `data_dir` or to any of their ancestors is ignored, as is a link
    that leads outside. Images are the files of a class folder whose names end
    in one of `IMAGE_EXTENSIONS` (any case); other files and subfolders are
    ignored. Each image's header is read (PIL, in a thread pool): an image
    above `MAX_IMAGE_PIXELS` (width x height) is refused, before training
    decodes it. A folder
    checked before in this process is not read again while its class folders
    are unchanged (no file added, removed or renamed: their modification
    times), so `resolve` and `load` share one check.

    ```python
    import os, tempfile
    import numpy as np
    from PIL import Image
    import quantens.data as qd

    root = tempfile.mkdtemp()
    for split in ("train", "val"):
        for name in ("cat", "dog"):
            os.makedirs(os.path.join(root, split, name))
            Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(
                os.path.join(root, split, name, "0.png"))
    info = qd.validate_image_folder(root)
    assert info.classes == ("cat", "dog") and info.train_counts == (1, 1)
    ```

    Raises:
        DataError: (one line) `train/` or `val/` missing; fewer than 2
            classes; `val/`'s classes differ from `train/`'s (the differences
            listed); a class folder without images (named); a file with an
            image extension that does not decode, or an image above
            `MAX_IMAGE_PIXELS` (the first one named, with its size and the cap).
    """
    if not data_dir or not os.path.isdir(data_dir):
        raise DataError(f"--data-dir {data_dir!r} must be {_FOLDER_LAYOUT}")
    missing = [f"{s}/" for s in ("train", "val") if not os.path.isdir(os.path.join(data_dir, s))]
    if missing:
        raise DataError(
            f"--data-dir {data_dir} has no {' and no '.join(missing)}: it must be {_FOLDER_LAYOUT}"
        )
    root = os.path.realpath(data_dir)
    dirs = {s: _class_dirs(os.path.join(data_dir, s), root) for s in ("train", "val")}
    classes = sorted(dirs["train"])
    train_dir = os.path.join(data_dir, "train")
    if len(classes) < 2:
        raise DataError(
            f"{train_dir} has {len(classes)} class subfolder(s) ({_names(classes) or 'none'}): "
            "an image folder needs at least 2 classes, one subfolder each"
        )
    val_classes = sorted(dirs["val"])
    if val_classes != classes:
        missing_in_val = sorted(set(classes) - set(val_classes))
        only_in_val = sorted(set(val_classes) - set(classes))
        differences = [f"missing in val/: {_names(missing_in_val)}"] if missing_in_val else []
        differences += [f"only in val/: {_names(only_in_val)}"] if only_in_val else []
        raise DataError(
            f"{data_dir}: the class subfolders of val/ differ from train/'s "
            f"({'; '.join(differences)}): give train/ and val/ the same classes"
        )
    watched = [os.path.join(data_dir, s) for s in ("train", "val")]
    watched += [dirs[s][c] for s in ("train", "val") for c in classes]
    key = (root, tuple((path, os.stat(path).st_mtime_ns) for path in watched))
    if key in _folder_cache:
        return _folder_cache[key]
    files, counts = {"train": [], "val": []}, {"train": [], "val": []}
    for split in ("train", "val"):
        for name in classes:
            class_dir = dirs[split][name]
            images = _image_names(class_dir)
            if not images:
                raise DataError(
                    f"{class_dir} has no images ({', '.join(IMAGE_EXTENSIONS)}): add some, "
                    f"or remove class {name!r} from train/ and val/"
                )
            files[split] += [os.path.join(class_dir, image) for image in images]
            counts[split].append(len(images))
    bad = _first_bad_image(files["train"] + files["val"])
    if bad:
        raise DataError(f"{bad[0]} {bad[1]}: fix or remove it")
    info = FolderInfo(
        data_dir, tuple(classes), tuple(counts["train"]), tuple(counts["val"]),
        train_files=tuple(files["train"]), val_files=tuple(files["val"]),
    )
    while len(_folder_cache) >= _FOLDER_CACHE_SIZE:
        _folder_cache.pop(next(iter(_folder_cache)))
    _folder_cache[key] = info
    return info


def resolve(name: str, data_dir: str | None = None) -> DatasetSpec:
    """The `DatasetSpec` of a dataset name or alias (`folder`: from `data_dir`).

    ImageNet given as a folder with `train/` and `val/` subfolders (the layout
    the MXNet code read) is read as an image folder too. An image folder is
    checked by `validate_image_folder` here, before any training.

    ```python
    import quantens.data as qd

    assert qd.resolve("imagenet").tfds_name == "imagenet2012"
    assert qd.resolve("cifar-10").test_split == "test"
    ```

    Raises:
        DataError: an unknown name, or an image folder that cannot be read.
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


def _folder_spec(data_dir: str | None) -> DatasetSpec:
    info = validate_image_folder(data_dir)
    return DatasetSpec(
        FOLDER, "imagenet", (IMAGE_SIZE, IMAGE_SIZE, 3), info.num_classes,
        validation_split="val", test_split="val", mean=IMAGENET_MEAN, std=IMAGENET_STD,
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
    return _select_part(ds, n, split)


def _folder_source(info: FolderInfo, split: Split, training, shuffle_seed):
    paths, labels = info.files(split.name)
    if split.part != "all":
        keep = _part_mask(len(paths), split)
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
) -> tf.data.Dataset:
    """A batched `(image, label)` dataset, augmented, normalised, prefetched.

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

    Raises:
        DataError: unknown dataset or split, missing folder or files, a bad
            image folder (see `validate_image_folder`).
    """
    if augmentation not in ("low", "medium", "high"):
        raise DataError(f"unknown augmentation {augmentation!r}: choose low, medium or high")
    if data_dir is not None and not os.path.isdir(data_dir):
        raise DataError(f"--data-dir {data_dir} does not exist or is not a folder")
    split = _as_split(split)
    spec = resolve(name, data_dir)
    if spec.tfds_name == FOLDER:
        info = validate_image_folder(data_dir)  # checked by resolve: from its cache
        ds = _folder_source(info, split, training, shuffle_seed)
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

