"""The datasets quantens reads: each one's `DatasetSpec`, the seed's aliases, `resolve`.

Every dataset is a TFDS dataset (`digits`, `mnist`, `cifar10`, `cifar100`,
`imagenet2012`) or an image folder (`folder`, checked by
`quantens.data.folders`). A `DatasetSpec` says how it is read and
preprocessed and which split plays which part.
"""

from __future__ import annotations

import dataclasses
import os

from quantens.data.folders import validate_image_folder
from quantens.errors import DataError

__all__ = [
    "ALIASES",
    "DATASETS",
    "FOLDER",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_SIZE",
    "DatasetSpec",
    "resolve",
]

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
