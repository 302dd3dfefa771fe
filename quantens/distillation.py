"""Knowledge distillation between a teacher and the members of an ensemble.

The loss added to the members' cross-entropies is

    Σ_(s←t) α · T² · KL(softmax(z_t / T) ‖ softmax(z_s / T))

over the (student ← target) pairs of the plan (`kd_pairs`), every target
under `stop_gradient`:

- `none`: no pairs;
- `simple`: the teacher teaches every member (a teacher is required);
- `progressive`: (teacher →) highest bit-width → next lower → … → lowest;
- `highest`: (teacher → highest,) the highest member teaches every other;
- `average`: (teacher → highest,) every member learns from the members' mean
  logits (`AVERAGE`: a self-ensemble, its target under `stop_gradient` too).

`quantens.defaults.KD_MODES` lists the modes, `kd_pairs` gives each one's
pairs. Without a teacher the teacher's pair is left out, and in `progressive`
and `highest` the highest member only teaches.

Teachers (`teacher_mode`, `quantens.defaults.TEACHER_MODES`): `none` (no
teacher: distillation inside the ensemble only), `pretrained_external`
(frozen), `untrained_external` (trained in the same step on cross-entropy with
its own optimizer), and `ensemble` (a trained ensemble whose member b teaches
member b: the second stage of Real-to-Binary-style multi-stage training).

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

import math
import numbers
from collections.abc import Mapping, Sequence

import tensorflow as tf

from quantens import defaults
from quantens.bits import bits as bits_scope
from quantens.defaults import (  # noqa: F401  (re-exported)
    AVERAGE,
    KD_MODES,
    TEACHER,
    TEACHER_MODES,
    kd_pairs,
)
from quantens.errors import UsageError

__all__ = [
    "AVERAGE",
    "KD_MODES",
    "TEACHER",
    "TEACHER_MODES",
    "Distillation",
    "Target",
    "attention_loss",
    "attention_map",
    "kd_loss",
    "kd_pairs",
    "stage_outputs",
    "with_stage_outputs",
]

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


def stage_outputs(model: tf.keras.Model) -> list:
    """The last residual output at each spatial resolution: a network's stage outputs.

    Residual outputs are `Add` layers or layers named `*_out` (zoo teachers,
    keras.applications ResNets). Returns KerasTensors of `model`'s graph.
    """
    last_at = {}
    for layer in model.layers:
        shape = layer.output.shape if hasattr(layer, "output") else None
        if shape is None or shape.rank != 4:
            continue
        if isinstance(layer, tf.keras.layers.Add) or layer.name.endswith("_out"):
            last_at[tuple(shape[1:3])] = layer.output
    return list(last_at.values())


def with_stage_outputs(model: tf.keras.Model) -> tf.keras.Model:
    """A model sharing `model`'s layers that returns `[logits, *stage outputs]`."""
    features = stage_outputs(model)
    if not features:
        raise ValueError(f"{model.name} has no residual stage outputs to match attention on")
    return tf.keras.Model(model.inputs, [model.outputs[0], *features], name=f"{model.name}_stages")


def attention_map(features) -> tf.Tensor:
    """Zagoruyko & Komodakis' spatial attention: mean_c F², flattened, L2-normalised."""
    features = tf.cast(features, tf.float32)
    q = tf.reduce_mean(tf.square(features), axis=-1)
    q = tf.reshape(q, (tf.shape(q)[0], -1))
    return tf.math.l2_normalize(q, axis=-1)


def attention_loss(student_features, target_features) -> tf.Tensor:
    """Per-example Σ over stages of equal resolution ‖Q_s − Q_t‖₂ (Martinez et al. 2020)."""
    by_size = {tuple(f.shape[1:3]): f for f in target_features}
    terms = [
        tf.norm(attention_map(f) - attention_map(by_size[tuple(f.shape[1:3])]), axis=-1)
        for f in student_features
        if tuple(f.shape[1:3]) in by_size
    ]
    if not terms:
        raise ValueError("no stage outputs of equal resolution for attention matching")
    return tf.add_n(terms)


def _students(pairs, mode: str, has_teacher: bool, argument: str, values,
              bit_widths: tuple[int, ...], positive: bool) -> dict[int, float]:
    """Per-student values checked: members, numbers, and students of the plan only."""
    from quantens.checks import check_per_member

    checked = check_per_member(values, bit_widths, "Distillation", argument, positive)
    students = [b for b in bit_widths if any(s == b for s, _ in pairs)]
    for key in checked:
        if key not in students:
            plan = f"mode {mode!r} {'with' if has_teacher else 'without'} a teacher"
            raise UsageError(
                f"Distillation: {argument} for {key} bits would have no effect: in {plan} the "
                f"{key}-bit member learns from no target (students: "
                f"{' '.join(map(str, students)) or 'none'}); give values for students only"
            )
    return checked


def _checked_arguments(bit_widths, mode, teacher, teacher_mode, temperature, weight,
                       teacher_optimizer, teacher_weight_decay, attention_weight, warmup_steps,
                       student_weights, student_temperatures) -> dict:
    """`Distillation`'s arguments checked, with the plan they make (`pairs`)."""
    from quantens.checks import check_bit_widths, check_number

    bit_widths = check_bit_widths(bit_widths, "Distillation")
    if mode not in KD_MODES:
        raise UsageError(f"Distillation: unknown mode {mode!r}: choose one of {', '.join(KD_MODES)}")
    if teacher is not None and not isinstance(teacher, tf.keras.Model):
        raise UsageError(
            "Distillation: teacher must be a Keras model returning logits (tf.keras.Model) or "
            f"None, got {type(teacher).__name__}"
        )
    if teacher_mode is None:
        teacher_mode = "none" if teacher is None else "pretrained_external"
    if teacher_mode not in TEACHER_MODES:
        raise UsageError(
            f"Distillation: unknown teacher_mode {teacher_mode!r}: choose one of "
            f"{', '.join(TEACHER_MODES)}"
        )
    if teacher is None and teacher_mode != "none":
        raise UsageError(
            f"Distillation: teacher_mode {teacher_mode!r} needs a teacher model: pass "
            "teacher=<a Keras model returning logits>, or leave teacher_mode out"
        )
    if teacher is not None and teacher_mode == "none":
        raise UsageError(
            "Distillation: teacher_mode 'none' but a teacher model was given: leave "
            "teacher_mode out (a teacher is 'pretrained_external' by default), or pass "
            "teacher=None"
        )
    if teacher_mode == "ensemble" and mode == "none":
        mode = "simple"  # an ensemble teacher always teaches its own members
    if mode == "simple" and teacher is None:
        raise UsageError(
            "Distillation: mode 'simple' needs a teacher (it teaches every member): pass "
            "teacher=<a Keras model>, or choose mode 'progressive', 'highest' or 'average' "
            "(distillation inside the ensemble)"
        )
    if teacher_mode == "untrained_external" and teacher_optimizer is None:
        raise UsageError(
            "Distillation: an untrained_external teacher needs its own optimizer: pass "
            "teacher_optimizer=tf.keras.optimizers.SGD(...) (or another)"
        )
    if teacher_mode != "untrained_external" and teacher_optimizer is not None:
        raise UsageError(
            f"Distillation: teacher_optimizer would have no effect: only an untrained_external "
            f"teacher is trained, this one is {teacher_mode!r}; leave teacher_optimizer out"
        )
    for argument, value, positive in (
            ("temperature", temperature, True), ("weight", weight, False),
            ("teacher_weight_decay", teacher_weight_decay, False),
            ("attention_weight", attention_weight, False)):
        check_number(value, "Distillation", argument, positive)
    integral = isinstance(warmup_steps, numbers.Real) and not isinstance(warmup_steps, bool) \
        and math.isfinite(warmup_steps) and float(warmup_steps).is_integer()
    if not integral or warmup_steps < 0:
        raise UsageError(
            "Distillation: warmup_steps must be a whole number >= 0 (optimizer steps before "
            f"distillation starts), got {warmup_steps!r}"
        )
    has_teacher = teacher is not None
    pairs = kd_pairs(mode, bit_widths, has_teacher=has_teacher)
    return {
        "bit_widths": bit_widths, "mode": mode, "teacher_mode": teacher_mode, "pairs": pairs,
        "warmup_steps": int(warmup_steps),
        "student_weights": _students(pairs, mode, has_teacher, "student_weights",
                                     student_weights, bit_widths, positive=False),
        "student_temperatures": _students(pairs, mode, has_teacher, "student_temperatures",
                                          student_temperatures, bit_widths, positive=True),
    }


class Distillation(tf.Module):
    """The distillation terms of a `QuantEnsemble`'s loss, with the teacher.

    Arguments:
        bit_widths: the ensemble's members.
        mode: `none`, `simple`, `progressive`, `highest` or `average` (see `kd_pairs`).
        teacher: a Keras model returning logits (external teachers), or the
            functional model of a trained ensemble (`teacher_mode="ensemble"`);
            None for distillation inside the ensemble only (`progressive`,
            `highest`, `average`).
        teacher_mode: `pretrained_external` (the default with a teacher),
            `untrained_external`, `ensemble`, or `none` (no teacher).
        temperature: T of the softened softmax.
        weight: α, the weight of every distillation pair.
        teacher_optimizer: the optimizer of an `untrained_external` teacher.
        teacher_weight_decay: L2 coefficient of the untrained teacher's variables.
        attention_weight: weight of attention matching between the stage
            outputs of each pair (Martinez et al., "Training binary neural
            networks with real-to-binary convolutions", 2020); 0 turns it off.
        warmup_steps: the distillation terms are 0 before this optimizer step
            (KD warm-up: the members first learn from the labels alone).
        student_weights: α per student bit-width, replacing `weight` for every
            pair that student learns in (one pair per student, except the
            highest member of `average` with a teacher: two).
        student_temperatures: T per student bit-width, replacing `temperature`.

    A student is a member that learns from a target in the chosen plan: in
    `progressive` and `highest` without a teacher the highest member only
    teaches, so a weight or temperature for it is refused (it would have no
    effect). The total number of training steps is not known here: a
    warm-up as long as training is the caller's to refuse (train.py does).

    Raises:
        UsageError: (one line naming the argument) an unknown mode or teacher
            mode, a teacher that is not a Keras model, a teacher mode without a
            teacher (or `simple` without one), a temperature <= 0, a negative
            or non-finite weight, a warm-up that is not a whole number >= 0,
            per-student values for a non-member or a member that is no
            student, a teacher optimizer for a teacher that is not trained.

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
        temperature: float = defaults.KD_TEMPERATURE,
        weight: float = defaults.KD_WEIGHT,
        teacher_optimizer: tf.keras.optimizers.Optimizer | None = None,
        teacher_weight_decay: float = 0.0,
        attention_weight: float = 0.0,
        warmup_steps: int = 0,
        student_weights: Mapping[int, float] | None = None,
        student_temperatures: Mapping[int, float] | None = None,
        name: str = "distillation",
    ):
        c = _checked_arguments(
            bit_widths, mode, teacher, teacher_mode, temperature, weight, teacher_optimizer,
            teacher_weight_decay, attention_weight, warmup_steps, student_weights,
            student_temperatures,
        )
        super().__init__(name=name)
        self.bit_widths = c["bit_widths"]
        self.teacher = teacher
        self.teacher_mode = c["teacher_mode"]
        self.mode = c["mode"]
        self.pairs = c["pairs"]
        self.temperature = float(temperature)
        self.weight = float(weight)
        self.warmup_steps = c["warmup_steps"]
        self.student_weights = c["student_weights"]
        self.student_temperatures = c["student_temperatures"]
        self.teacher_weight_decay = float(teacher_weight_decay)
        self.attention_weight = float(attention_weight)
        if self.attention_weight and teacher is not None:
            self.teacher = with_stage_outputs(teacher)  # shares the teacher's layers
        if self.teacher_mode == "untrained_external":
            self.teacher_optimizer = teacher_optimizer
        elif teacher is not None:
            teacher.trainable = False
        self.kd_loss_tracker = tf.keras.metrics.Mean(name="kd_loss")
        self.attention_loss_tracker = tf.keras.metrics.Mean(name="attention_loss")
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
        if self.attention_weight and self.pairs:
            metrics.append(self.attention_loss_tracker)
        if self.teacher is not None and self.teacher_mode != "ensemble":
            metrics += [self.teacher_loss_tracker, self.teacher_accuracy]
        return metrics

    # ---------------------------------------------------------------- teacher

    @property
    def trains_teacher(self) -> bool:
        """Whether the teacher is trained alongside the ensemble (`untrained_external`)."""
        return self.teacher is not None and self.teacher_mode == "untrained_external"

    def _teacher_call(self, x, training: bool):
        """(logits as float32, stage outputs or [])."""
        outputs = self.teacher(x, training=training)
        if self.attention_weight:
            return tf.cast(outputs[0], tf.float32), list(outputs[1:])
        return tf.cast(outputs, tf.float32), []

    def teacher_outputs(self, x, training: bool = False):
        """The teacher's (logits, stage outputs) of a batch; per member for an ensemble teacher.

        A forward pass only: nothing is updated. None without a teacher.
        """
        if self.teacher is None:
            return None
        if self.teacher_mode == "ensemble":
            logits, features = {}, {}
            for b in self.bit_widths:
                with bits_scope(b):
                    logits[b], features[b] = self._teacher_call(x, training=False)
            return logits, features
        return self._teacher_call(x, training=training)

    def train_teacher(self, x, y, sample_weight=None):
        """One optimizer step of an `untrained_external` teacher on cross-entropy.

        `QuantEnsemble.train_step` calls it before the ensemble's own step (as
        the keras.io Distiller trains its parts in `train_step`); it returns the
        teacher's (logits, stage outputs) of the batch, computed before the
        update, which then serve as the distillation targets.
        """
        if not self.trains_teacher:
            raise ValueError(f"a {self.teacher_mode} teacher is not trained")
        variables = self.teacher.trainable_variables
        with tf.GradientTape() as tape:
            logits, features = self.teacher_outputs(x, training=True)
            loss = tf.nn.compute_average_loss(self._ce(y, logits), sample_weight=sample_weight)
            if self.teacher_weight_decay:
                l2 = tf.add_n([tf.reduce_sum(tf.square(v)) for v in variables])
                loss += tf.nn.scale_regularization_loss(0.5 * self.teacher_weight_decay * l2)
        self.teacher_optimizer.minimize(loss, variables, tape=tape)
        return logits, features

    # ------------------------------------------------------------------- loss

    def targets(self, member_logits, member_features=None, teacher_outputs=None
                ) -> tuple[dict, dict]:
        """Target logits and stage outputs under stop_gradient, keyed by target.

        Keys: a member's bit-width, `"teacher"`, `("teacher", b)` for the
        members of an ensemble teacher (`teacher_outputs` is what
        `teacher_outputs()` or `train_teacher()` returned), and `"average"`
        (the members' mean logits and stage outputs) when a pair needs it.
        """
        stop = tf.stop_gradient
        logits = {b: stop(z) for b, z in member_logits.items()}
        features = {b: [stop(f) for f in fs] for b, fs in (member_features or {}).items()}
        if any(target == AVERAGE for _, target in self.pairs):
            logits[AVERAGE] = tf.add_n(list(logits[b] for b in member_logits)) / len(member_logits)
            if features:
                stages = zip(*(features[b] for b in member_logits), strict=True)
                features[AVERAGE] = [tf.add_n(list(fs)) / len(fs) for fs in stages]
        if teacher_outputs is None:
            return logits, features
        teacher_logits, teacher_features = teacher_outputs
        if self.teacher_mode == "ensemble":
            for b in self.bit_widths:
                logits[(TEACHER, b)] = stop(teacher_logits[b])
                features[(TEACHER, b)] = [stop(f) for f in teacher_features[b]]
        else:
            logits[TEACHER] = stop(teacher_logits)
            features[TEACHER] = [stop(f) for f in teacher_features]
        return logits, features

    def _key(self, student, target):
        if target == TEACHER and self.teacher_mode == "ensemble":
            return (TEACHER, student)
        return target

    @property
    def needs_average(self) -> bool:
        """Whether a pair learns from the members' mean (every member's logits first)."""
        return any(target == AVERAGE for _, target in self.pairs)

    def _pairs_of(self, students) -> list:
        return [p for p in self.pairs if students is None or p[0] in students]

    def pair_losses(self, member_logits, targets, sample_weight=None, students=None) -> dict:
        """α·T²·KL per pair, averaged per global batch: `{(student, target): loss}`.

        α and T are the student's (`student_weights`, `student_temperatures`)
        where given, else `weight` and `temperature`. `students`: only the
        pairs of these members (default all).
        """
        losses = {}
        for student, target in self._pairs_of(students):
            per_example = kd_loss(
                member_logits[student], targets[self._key(student, target)],
                self.student_temperatures.get(student, self.temperature),
            )
            losses[(student, target)] = self.student_weights.get(
                student, self.weight) * tf.nn.compute_average_loss(
                per_example, sample_weight=sample_weight)
        return losses

    def active(self, step=None):
        """1.0 from optimizer step `warmup_steps` on, 0.0 before (always 1.0 without warm-up)."""
        if not self.warmup_steps or step is None:
            return tf.constant(1.0)
        return tf.cast(tf.greater_equal(step, self.warmup_steps), tf.float32)

    def attention_losses(self, member_features, target_features, sample_weight=None,
                         students=None) -> dict:
        """β·Σ_stages ‖Q_s − Q_t‖ per pair, averaged per global batch."""
        return {
            (student, target): self.attention_weight * tf.nn.compute_average_loss(
                attention_loss(
                    member_features[student], target_features[self._key(student, target)]
                ),
                sample_weight=sample_weight,
            )
            for student, target in self._pairs_of(students)
        }

    def student_losses(self, student, logits, features, targets, target_features,
                       sample_weight=None) -> dict[str, tf.Tensor]:
        """The terms of one student's pairs (ungated): `{"kd_loss": ..., "attention_loss": ...}`.

        `targets` / `target_features` hold every target the student's pairs
        read (as `targets()` makes them); the per-member backward of
        `QuantEnsemble(member_backward="sequential")` calls it member by member.
        Empty when `student` learns from nothing.
        """
        pairs = self._pairs_of((student,))
        if not pairs:
            return {}
        terms = {"kd_loss": tf.add_n(list(self.pair_losses(
            {student: logits}, targets, sample_weight, students=(student,)).values()))}
        if self.attention_weight:
            terms["attention_loss"] = tf.add_n(list(self.attention_losses(
                {student: features}, target_features, sample_weight,
                students=(student,)).values()))
        return terms

    def losses(self, member_logits, member_features=None, teacher_outputs=None,
               sample_weight=None, step=None) -> dict[str, tf.Tensor]:
        """The distillation terms of one batch: `{"kd_loss": ..., "attention_loss": ...}`.

        Pure: no teacher step and no metric update (see `train_teacher` and
        `update_metrics`). `attention_loss` is there when attention matching is on.
        `step` (the optimizer's iterations) switches the terms on after
        `warmup_steps`.
        """
        logits, features = self.targets(member_logits, member_features, teacher_outputs)
        terms = {"kd_loss": tf.constant(0.0)}
        if not self.pairs:
            return terms
        gate = self.active(step)
        terms["kd_loss"] = gate * tf.add_n(
            list(self.pair_losses(member_logits, logits, sample_weight).values())
        )
        if self.attention_weight:
            terms["attention_loss"] = gate * tf.add_n(list(
                self.attention_losses(member_features, features, sample_weight).values()
            ))
        return terms

    def mixed_target(self, member_logits, teacher_outputs=None) -> tf.Tensor | None:
        """The logits a mixed student learns from (`QuantEnsemble(mixed_students=N)`), under
        stop_gradient; None when the plan has no pairs (nothing distils).

        The teacher's where there is one (an ensemble teacher: its highest member's,
        as a mix has no member of its own to learn from), else the ensemble's
        highest member's: Bit-Mixer distils its mixes from the full-precision
        network. `member_logits` holds the highest member's logits of the batch.

        ```python
        import tensorflow as tf
        from quantens.distillation import Distillation

        d = Distillation((32, 4, 1), mode="progressive")
        z = {32: tf.constant([[2.0, 0.0]]), 4: tf.constant([[0.0, 1.0]])}
        assert d.mixed_target(z).numpy().tolist() == [[2.0, 0.0]]  # no teacher: the highest
        assert Distillation((32, 1), mode="none").mixed_target(z) is None
        ```
        """
        if not self.pairs:
            return None
        if teacher_outputs is not None:
            logits = teacher_outputs[0]
            if self.teacher_mode == "ensemble":
                logits = logits[self.bit_widths[0]]
        else:
            logits = member_logits[self.bit_widths[0]]
        return tf.stop_gradient(tf.cast(logits, tf.float32))

    def mixed_loss(self, logits, target, sample_weight=None) -> tf.Tensor:
        """α·T²·KL of a mixed student against `mixed_target`, averaged per global batch.

        α and T are `weight` and `temperature` (the per-student values belong to
        members); ungated: the caller multiplies by `active(step)`.

        ```python
        import tensorflow as tf
        from quantens.distillation import Distillation

        d = Distillation((8, 1), mode="progressive", weight=0.5)
        z = tf.constant([[1.0, 0.0]])
        assert float(d.mixed_loss(z, z)) == 0.0  # the target's own logits: nothing to learn
        ```
        """
        return self.weight * tf.nn.compute_average_loss(
            kd_loss(logits, target, self.temperature), sample_weight=sample_weight)

    def update_metrics(self, y, terms, teacher_outputs=None, sample_weight=None) -> None:
        """Updates kd_loss / attention_loss (per replica batch) and the teacher's loss and accuracy."""
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        if self.pairs:
            self.kd_loss_tracker.update_state(terms["kd_loss"] * replicas)
            if "attention_loss" in terms:
                self.attention_loss_tracker.update_state(terms["attention_loss"] * replicas)
        if teacher_outputs is not None and self.teacher_mode != "ensemble":
            logits = teacher_outputs[0]
            loss = tf.nn.compute_average_loss(self._ce(y, logits), sample_weight=sample_weight)
            self.teacher_loss_tracker.update_state(loss * replicas)
            self.teacher_accuracy.update_state(y, logits, sample_weight=sample_weight)
