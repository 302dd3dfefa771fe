"""Augmentation and normalisation: the per-image functions the pipelines map.

Augmentations are stateless: each draws from a seed of (epoch seed, element
index), so an epoch's batches are a function of (seed, epoch) and a resumed
run sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

import tensorflow as tf

from quantens.data.catalog import DatasetSpec

__all__ = ["normalizer", "preprocess_fn"]

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


def normalizer(spec: DatasetSpec):
    """image -> (image - mean) / std, with `spec`'s mean and std scaled to [0, 255]."""
    mean = tf.constant(spec.mean, tf.float32) * 255.0
    std = tf.constant(spec.std, tf.float32) * 255.0
    return lambda image: (image - mean) / std


