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

The package by concern (every public name is also here, `quantens.data.X`):

| module | what |
|---|---|
| `digits` | the embedded `digits` TFDS builder and its seeded splits |
| `catalog` | `DatasetSpec`, `DATASETS`, the seed's `ALIASES`, `resolve` |
| `splits` | `Split`, `SplitPlan`, `plan_splits`: split planning and seeded holdouts |
| `folders` | image folders: `validate_image_folder`, `FolderInfo`, `MAX_IMAGE_PIXELS` |
| `augmentation` | `preprocess_fn` (crops, flips) and normalisation |
| `preprocessing` | the input preprocessings: `preprocessing_fn`, `describe_preprocessing` |
| `preprocessing_check` | `check_preprocessing`: which preprocessing a float model fits, measured |
| `pipeline` | `load` (source, preprocessing, batches) and `EpochCounter` |

```python
import tempfile
import quantens.data as qd

train = qd.load("digits", "train", batch_size=64, training=True, data_dir=tempfile.mkdtemp())
images, labels = next(iter(train))
assert images.shape == (64, 8, 8, 1)
```
"""

from quantens.data.augmentation import preprocess_fn
from quantens.data.catalog import (
    ALIASES,
    DATASETS,
    FOLDER,
    IMAGE_SIZE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    DatasetSpec,
    resolve,
)
from quantens.data.digits import (
    DIGITS_SPLIT_SEED,
    DIGITS_TRAIN_FRACTION,
    DIGITS_VALIDATION_FRACTION,
    DIGITS_VALIDATION_SEED,
    Digits,
)
from quantens.data.folders import (
    IMAGE_EXTENSIONS,
    MAX_IMAGE_PIXELS,
    FolderInfo,
    validate_image_folder,
)
from quantens.data.pipeline import EpochCounter, load
from quantens.data.preprocessing import (
    CAFFE_BGR_MEAN,
    RGB_ONLY,
    applicable_preprocessings,
    checked_preprocessing,
    describe_preprocessing,
    preprocessing_fn,
    preprocessing_mean_std,
)
from quantens.data.preprocessing_check import (
    COMPARE_MAX_EXAMPLES,
    MISMATCH_MIN_GAIN,
    MISMATCH_MIN_RATIO,
    PreprocessingCheck,
    check_preprocessing,
    compare_preprocessings,
    likely_preprocessing,
)
from quantens.data.splits import SPLIT_PARTS, Split, SplitPlan, plan_splits
from quantens.errors import DataError

__all__ = [
    "ALIASES",
    "CAFFE_BGR_MEAN",
    "COMPARE_MAX_EXAMPLES",
    "DATASETS",
    "DIGITS_SPLIT_SEED",
    "DIGITS_TRAIN_FRACTION",
    "DIGITS_VALIDATION_FRACTION",
    "DIGITS_VALIDATION_SEED",
    "FOLDER",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "IMAGE_SIZE",
    "MAX_IMAGE_PIXELS",
    "MISMATCH_MIN_GAIN",
    "MISMATCH_MIN_RATIO",
    "RGB_ONLY",
    "SPLIT_PARTS",
    "DataError",
    "DatasetSpec",
    "Digits",
    "EpochCounter",
    "FolderInfo",
    "PreprocessingCheck",
    "Split",
    "SplitPlan",
    "applicable_preprocessings",
    "check_preprocessing",
    "checked_preprocessing",
    "compare_preprocessings",
    "describe_preprocessing",
    "likely_preprocessing",
    "load",
    "plan_splits",
    "preprocess_fn",
    "preprocessing_fn",
    "preprocessing_mean_std",
    "resolve",
    "validate_image_folder",
]
