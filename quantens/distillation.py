"""Knowledge distillation between a teacher and the members of an ensemble.

The loss added to the members' cross-entropies is

    Σ_(s←t) α · T² · KL(softmax(z_t / T) ‖ softmax(z_s / T))

over the (student ← target) pairs of the plan (`kd_pairs`), every target
under `stop_gradient`:

- `none`: no pairs;
- `simple`: the teacher teaches every member;
- `progressive`: teacher → highest bit-width → next lower → … → lowest.

Teachers (`teacher_mode`): `pretrained_external` (frozen), `untrained_external`
(trained in the same step on cross-entropy with its own optimizer), and
`ensemble` (a trained ensemble whose member b teaches member b: the second
stage of Real-to-Binary-style multi-stage training).

```python
import numpy as np
import tensorflow as tf
from quantens.distillation import kd_loss, kd_pairs

assert kd_pairs("progressive", (32, 4, 1), has_teacher=True) == [
    (32, "teacher"), (4, 32), (1, 4)]
loss = kd_loss(tf.constant([[1.0, 0.0]]), tf.constant([[0.0, 1.0]]), temperature=2.0)
```
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from quantens.bits import bits as bits_scope

TEACHER = "teacher"
KD_MODES = ("none", "simple", "progressive")
TEACHER_MODES = ("none", "pretrained_external", "untrained_external", "ensemble")

Target = int | str


def kd_loss(student_logits, target_logits, temperature: float = 4.0) -> tf.Tensor:
    """Per-example T² · KL(softmax(target / T) ‖ softmax(student / T)) (Hinton et al.).

    The T² factor keeps the gradient scale independent of the temperature.
    """
    t = float(temperature)
    student = tf.cast(student_logits, tf.float32) / t
    target = tf.cast(target_logits, tf.float32) / t
    p_target = tf.nn.softmax(target, axis=-1)
    kl = tf.reduce_sum(
        p_target * (tf.nn.log_softmax(target, axis=-1) - tf.nn.log_softmax(student, axis=-1)),
        axis=-1,
    )
    return t * t * kl


def kd_pairs(mode: str, bit_widths: Sequence[int], has_teacher: bool) -> list[tuple[int, Target]]:
    """The (student bits, target) pairs of a KD mode; a target is a bit-width or "teacher".

    Raises:
        ValueError: unknown mode, or `simple` without a teacher.
    """
    bit_widths = sorted(bit_widths, reverse=True)
    if mode not in KD_MODES:
        raise ValueError(f"unknown kd mode {mode!r}: choose one of {', '.join(KD_MODES)}")
    if mode == "none":
        return []
    if mode == "simple":
        if not has_teacher:
            raise ValueError("kd mode 'simple' needs a teacher (--teacher, --kd-teacher-mode)")
        return [(b, TEACHER) for b in bit_widths]
    pairs: list[tuple[int, Target]] = [(bit_widths[0], TEACHER)] if has_teacher else []
    return pairs + list(zip(bit_widths[1:], bit_widths[:-1], strict=True))


class Distillation(tf.Module):
    """The distillation terms of a `QuantEnsemble`'s loss, with the teacher.

    Arguments:
        bit_widths: the ensemble's members.
        mode: `none`, `simple` or `progressive` (see `kd_pairs`).
        teacher: a Keras model returning logits (external teachers), or the
            functional model of a trained ensemble (`teacher_mode="ensemble"`);
            None for distillation inside the ensemble only (`progressive`).
        teacher_mode: `pretrained_external` (the default with a teacher),
            `untrained_external`, `ensemble`, or `none` (no teacher).
        temperature: T of the softened softmax.
        weight: α, the weight of every distillation pair.
        teacher_optimizer: the optimizer of an `untrained_external` teacher.
        teacher_weight_decay: L2 coefficient of the untrained teacher's variables.

    ```python
    import quantens
    from quantens.distillation import Distillation
    from zoo import create_model

    bits = (32, 8, 1)
    ensemble = quantens.QuantEnsemble(create_model("digits_resnet_e", bit_widths=bits), bits)
    ensemble.set_distillation(Distillation(bits, mode="progressive", teacher=None))
    ensemble.compile(optimizer="adam")
    ```
    """

    def __init__(
        self,
        bit_widths: Sequence[int],
        mode: str = "simple",
        teacher: tf.keras.Model | None = None,
        teacher_mode: str | None = None,
        temperature: float = 4.0,
        weight: float = 1.0,
        teacher_optimizer: tf.keras.optimizers.Optimizer | None = None,
        teacher_weight_decay: float = 0.0,
        name: str = "distillation",
    ):
        super().__init__(name=name)
        if teacher_mode is None:
            teacher_mode = "none" if teacher is None else "pretrained_external"
        if teacher_mode not in TEACHER_MODES:
            raise ValueError(
                f"unknown teacher mode {teacher_mode!r}: choose one of {', '.join(TEACHER_MODES)}"
            )
        if teacher is None and teacher_mode != "none":
            raise ValueError(f"teacher mode {teacher_mode!r} needs a teacher model")
        if temperature <= 0:
            raise ValueError(f"kd temperature must be positive, got {temperature}")
        if weight < 0:
            raise ValueError(f"kd weight must not be negative, got {weight}")
        self.bit_widths = tuple(sorted(bit_widths, reverse=True))
        self.teacher = teacher
        self.teacher_mode = teacher_mode if teacher is not None else "none"
        if self.teacher_mode == "ensemble" and mode == "none":
            mode = "simple"  # an ensemble teacher always teaches its own members
        self.mode = mode
        self.pairs = kd_pairs(mode, self.bit_widths, has_teacher=teacher is not None)
        self.temperature = float(temperature)
        self.weight = float(weight)
        self.teacher_weight_decay = float(teacher_weight_decay)
        if self.teacher_mode == "untrained_external":
            if teacher_optimizer is None:
                raise ValueError("an untrained_external teacher needs its own optimizer")
            self.teacher_optimizer = teacher_optimizer
        elif teacher is not None:
            teacher.trainable = False
        self.kd_loss_tracker = tf.keras.metrics.Mean(name="kd_loss")
        self.teacher_loss_tracker = tf.keras.metrics.Mean(name="teacher_loss")
        self.teacher_accuracy = tf.keras.metrics.SparseCategoricalAccuracy(
            name="teacher_accuracy"
        )
        self._ce = tf.keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction=tf.keras.losses.Reduction.NONE
        )

    @property
    def metrics(self) -> list[tf.keras.metrics.Metric]:
        """Metrics the ensemble reports: kd_loss, and the teacher's loss/accuracy."""
        metrics = [self.kd_loss_tracker] if self.pairs else []
        if self.teacher is not None and self.teacher_mode != "ensemble":
            metrics += [self.teacher_loss_tracker, self.teacher_accuracy]
        return metrics

    # ---------------------------------------------------------------- teacher

    def _teacher_forward(self, x, training: bool):
        if self.teacher_mode == "ensemble":
            outputs = {}
            for b in self.bit_widths:
                with bits_scope(b):
                    outputs[b] = tf.cast(self.teacher(x, training=False), tf.float32)
            return outputs
        return tf.cast(self.teacher(x, training=training), tf.float32)

    def _train_teacher(self, x, y, sample_weight):
        """One step of the untrained teacher on cross-entropy; returns its logits."""
        variables = self.teacher.trainable_variables
        with tf.GradientTape() as tape:
            logits = self._teacher_forward(x, training=True)
            loss = tf.nn.compute_average_loss(self._ce(y, logits), sample_weight=sample_weight)
            if self.teacher_weight_decay:
                l2 = tf.add_n([tf.reduce_sum(tf.square(v)) for v in variables])
                loss += tf.nn.scale_regularization_loss(0.5 * self.teacher_weight_decay * l2)
        self.teacher_optimizer.minimize(loss, variables, tape=tape)
        return logits

    def _update_teacher_metrics(self, y, logits, sample_weight):
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        loss = tf.nn.compute_average_loss(self._ce(y, logits), sample_weight=sample_weight)
        self.teacher_loss_tracker.update_state(loss * replicas)
        self.teacher_accuracy.update_state(y, logits, sample_weight=sample_weight)

    # ------------------------------------------------------------------- loss

    def targets(self, x, y, member_logits, training: bool, sample_weight=None) -> dict:
        """Target logits under stop_gradient: `{bits: ..., ("teacher", bits): ...}`."""
        targets = {b: tf.stop_gradient(z) for b, z in member_logits.items()}
        if self.teacher is None:
            return targets
        if self.teacher_mode == "untrained_external" and training:
            teacher_logits = self._train_teacher(x, y, sample_weight)
        else:
            teacher_logits = self._teacher_forward(x, training=False)
        if self.teacher_mode == "ensemble":
            for b, z in teacher_logits.items():
                targets[(TEACHER, b)] = tf.stop_gradient(z)
        else:
            targets[TEACHER] = tf.stop_gradient(teacher_logits)
            self._update_teacher_metrics(y, teacher_logits, sample_weight)
        return targets

    def pair_losses(self, member_logits, targets, sample_weight=None) -> dict:
        """α·T²·KL per pair, averaged per global batch: `{(student, target): loss}`."""
        losses = {}
        for student, target in self.pairs:
            key = (TEACHER, student) if target == TEACHER and self.teacher_mode == "ensemble" \
                else target
            per_example = kd_loss(member_logits[student], targets[key], self.temperature)
            losses[(student, target)] = self.weight * tf.nn.compute_average_loss(
                per_example, sample_weight=sample_weight
            )
        return losses

    def __call__(self, x, y, member_logits, training: bool = True, sample_weight=None):
        """The total distillation loss of one batch (and, in training, the teacher's step)."""
        targets = self.targets(x, y, member_logits, training, sample_weight)
        if not self.pairs:
            return tf.constant(0.0)
        total = tf.add_n(list(self.pair_losses(member_logits, targets, sample_weight).values()))
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        self.kd_loss_tracker.update_state(total * replicas)
        return total

    def evaluate(self, x, y, sample_weight=None) -> None:
        """Validation: the teacher's loss and accuracy."""
        if self.teacher is not None and self.teacher_mode != "ensemble":
            logits = self._teacher_forward(x, training=False)
            self._update_teacher_metrics(y, logits, sample_weight)
