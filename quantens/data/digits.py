"""The embedded default dataset `digits`: scikit-learn's 8x8 digits as a TFDS builder.

1,797 images, 10 classes, no download: `test` is a seeded 20% (359 images),
`validation` a seeded, stratified 10% of the rest (144) and `train` the
remaining 1,294. Importing `quantens.data` registers the builder with TFDS.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

__all__ = [
    "DIGITS_SPLIT_SEED",
    "DIGITS_TRAIN_FRACTION",
    "DIGITS_VALIDATION_FRACTION",
    "DIGITS_VALIDATION_SEED",
    "Digits",
]

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

