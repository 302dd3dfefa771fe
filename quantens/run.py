"""What a training run builds, described by typed settings: data, ensemble, schedule, distillation.

`train.py` validates its flags into these settings (`quantens.cli.description`)
and calls the functions below; a Python user calls the same functions and gets
the same run. `train.py --model cnn.keras --epochs 1`, in a few lines:

```python
import os, tempfile
import quantens  # before TensorFlow: selects tf-keras
import tensorflow as tf
from quantens import run

path = os.path.join(tempfile.mkdtemp(), "cnn.keras")
tf.keras.Sequential([
    tf.keras.layers.Conv2D(8, 3, activation="relu", input_shape=(8, 8, 1)),
    tf.keras.layers.GlobalAveragePooling2D(),
    tf.keras.layers.Dense(10, activation="softmax"),
]).save(path)

tf.keras.utils.set_random_seed(0)
data = run.DataSettings(dataset="digits", batch_size=64, take_batches=2)
float_model = tf.keras.models.load_model(path)
model = quantens.quantize_model(float_model, (32, 4, 1))  # the softmax removed: logits
datasets = run.load_datasets(data)
ensemble = run.build_ensemble(
    model, run.EnsembleSettings(bit_widths=(32, 4, 1)), run.ScheduleSettings(epochs=1),
    datasets.steps_per_epoch,
    distillation=run.distillation(run.float_teacher(float_model), (32, 4, 1),
                                  run.DistillationSettings(), epochs=1,
                                  steps_per_epoch=datasets.steps_per_epoch),
)
run.calibrate_members(ensemble, data, datasets.plan)
history = ensemble.fit(datasets.train, epochs=1, validation_data=datasets.validation,
                       callbacks=[datasets.epoch_counter], verbose=0)
assert "val_accuracy_1" in history.history
```

The settings are frozen dataclasses with keyword-only fields and the defaults
of `train.py`'s flags (`quantens.defaults`); `dataclasses.replace` changes one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from quantens import defaults
from quantens.errors import ConfigError, DataError, one_line

__all__ = [
    "DataSettings",
    "Datasets",
    "DistillationSettings",
    "EnsembleSettings",
    "ScheduleSettings",
    "build_ensemble",
    "calibrate_members",
    "distillation",
    "float_teacher",
    "kd_warmup_steps",
    "load_datasets",
    "make_optimizer",
]

_SETTINGS = dataclasses.dataclass(frozen=True, kw_only=True)


@_SETTINGS
class DataSettings:
    """Which images, how many at a time, and how they reach the model (`--dataset` ...).

    ```python
    from quantens.run import DataSettings

    assert DataSettings().dataset == "digits"
    ```
    """

    dataset: str = "digits"
    data_dir: str | None = None
    val_split: float | None = None
    batch_size: int = defaults.BATCH_SIZE
    num_workers: int | None = None
    augmentation: str = defaults.AUGMENTATION
    input_preprocessing: str = defaults.INPUT_PREPROCESSING
    seed: int = defaults.SEED
    take_batches: int | None = None  # --test-run: one batch of each split


@_SETTINGS
class EnsembleSettings:
    """The members and how their losses add up (`--bit-widths`, `--target-bits` ...).

    `calibration` is `quantens.calibrate`'s method for a converted model's
    members before the first step, or `"none"`. `mixed_students` and
    `mixed_seed` are `QuantEnsemble`'s (`--mixed-students`, `--seed`): per-layer
    mixes trained as extra students each step.

    ```python
    from quantens.run import EnsembleSettings

    assert EnsembleSettings(bit_widths=(32, 1)).target_bits is None  # the lowest
    ```
    """

    bit_widths: tuple[int, ...] = defaults.BIT_WIDTHS
    target_bits: int | None = None
    weight_decay: float = defaults.WEIGHT_DECAY
    member_loss_weights: Mapping[int, float] = dataclasses.field(default_factory=dict)
    member_backward: str = defaults.MEMBER_BACKWARD
    calibration: str = defaults.CALIBRATION
    mixed_students: int = 0
    mixed_seed: int = defaults.SEED


@_SETTINGS
class ScheduleSettings:
    """Optimizer and learning-rate schedule (`--optimizer`, `--lr`, `--lr-mode` ...).

    ```python
    from quantens.run import ScheduleSettings, make_optimizer

    optimizer = make_optimizer(ScheduleSettings(optimizer="sgd", epochs=2), steps_per_epoch=10)
    assert type(optimizer).__name__ == "SGD"
    assert 0 < float(optimizer.learning_rate) <= ScheduleSettings().lr  # cosine from --lr
    ```
    """

    optimizer: str = defaults.OPTIMIZER
    lr: float = defaults.LR
    lr_mode: str = defaults.LR_MODE
    lr_steps: Sequence[float] | str = ()
    lr_factor: float = defaults.LR_FACTOR
    warmup_epochs: float = 0.0
    momentum: float = defaults.MOMENTUM
    epochs: int = defaults.EPOCHS
    run_eagerly: bool = False
    jit_compile: bool = False


@_SETTINGS
class DistillationSettings:
    """How members learn from a teacher and from each other (`--kd-*`).

    ```python
    from quantens.run import DistillationSettings, kd_warmup_steps

    settings = DistillationSettings(warmup_epochs=0.5)
    assert kd_warmup_steps(settings, epochs=2, steps_per_epoch=10) == 5
    ```
    """

    mode: str = "simple"
    temperature: float = defaults.KD_TEMPERATURE
    weight: float = defaults.KD_WEIGHT
    attention_weight: float = 0.0
    warmup_epochs: float = 0.0
    student_weights: Mapping[int, float] = dataclasses.field(default_factory=dict)
    student_temperatures: Mapping[int, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Datasets:
    """The datasets of a run: train (augmented, its order keyed by `epoch_counter`, a
    callback `fit` needs), validation (chooses checkpoints), test (only reported)."""

    train: object
    validation: object
    test: object
    epoch_counter: object
    steps_per_epoch: int
    spec: object
    plan: object


def _load(data: DataSettings, split, batch_size: int, **kwargs):
    from quantens import data as data_module

    try:
        return data_module.load(
            data.dataset, split, batch_size, data_dir=data.data_dir,
            num_workers=data.num_workers, take_batches=data.take_batches,
            preprocessing=data.input_preprocessing, **kwargs,
        )
    except DataError:
        raise
    except Exception as error:  # TFDS raises many kinds; all mean "no data here"
        raise DataError(f"dataset {data.dataset}: cannot load it ({one_line(error)})") from error


def load_datasets(data: DataSettings, global_batch: int | None = None, plan=None) -> Datasets:
    """The train, validation and test datasets of `data` (`quantens.data.plan_splits`).

    Validation chooses (best checkpoint, tuner); test is reported and chooses
    nothing. The data order of an epoch is a function of (seed, epoch): pass
    `datasets.epoch_counter` to `fit`'s callbacks. `global_batch` defaults to
    `data.batch_size` (one replica).
    """
    from quantens import data as data_module

    spec = data_module.resolve(data.dataset, data.data_dir)
    plan = plan if plan is not None else data_module.plan_splits(spec, data.val_split)
    batch = global_batch or data.batch_size
    epoch_counter = data_module.EpochCounter()
    train = _load(data, plan.train, batch, training=True, shuffle_seed=data.seed,
                  augmentation=data.augmentation, epoch=epoch_counter.variable)
    validation = _load(data, plan.validation, batch, training=False)
    test = validation if plan.validation_is_test else _load(data, plan.test, batch,
                                                            training=False)
    steps = int(train.cardinality())
    if steps <= 0:  # unknown or infinite: one step per epoch is the schedule's unit
        steps = 1
    epoch_counter.steps_per_epoch = steps
    return Datasets(train, validation, test, epoch_counter, steps, spec, plan)


def make_optimizer(schedule: ScheduleSettings, steps_per_epoch: int):
    """The optimizer of `schedule`, its learning rate a schedule over `epochs` epochs."""
    from quantens import optimizers

    learning_rate = optimizers.make_schedule(
        schedule.lr_mode, schedule.lr, schedule.epochs, steps_per_epoch,
        lr_steps=schedule.lr_steps, lr_factor=schedule.lr_factor,
        warmup_epochs=schedule.warmup_epochs,
    )
    return optimizers.make_optimizer(schedule.optimizer, learning_rate,
                                     momentum=schedule.momentum)


def kd_warmup_steps(settings: DistillationSettings, epochs: int,
                    steps_per_epoch: int | None) -> int | None:
    """The steps without distillation at the start: `warmup_epochs` rounded to steps.

    With `steps_per_epoch=None` (not known yet) it checks only what holds for
    any number of steps per epoch, and returns None.

    Raises:
        ConfigError: when the warm-up covers every training step (nothing would distil).
    """
    warmup = settings.warmup_epochs
    if steps_per_epoch is None:
        if warmup and warmup >= epochs:
            raise ConfigError(
                f"the distillation warm-up covers all {epochs} training epochs: no step would "
                "distil; choose fewer warm-up epochs"
            )
        return None
    steps = round(warmup * steps_per_epoch)
    if steps and steps >= epochs * steps_per_epoch:
        raise ConfigError(
            f"the distillation warm-up covers all {steps} training steps ({warmup:g} of "
            f"{epochs} epochs, {steps_per_epoch} steps each): no step would distil; choose "
            "fewer warm-up epochs"
        )
    return steps


def distillation(teacher, bit_widths, settings: DistillationSettings, *, epochs: int,
                 steps_per_epoch: int, teacher_mode: str | None = None, **kwargs):
    """The `quantens.Distillation` of `settings` from `teacher` (None: between members only).

    `teacher_mode` defaults to `"pretrained_external"` with a teacher and
    `"none"` without; other keywords (`teacher_optimizer`,
    `teacher_weight_decay`) go to `Distillation`.
    """
    from quantens.distillation import Distillation

    if teacher_mode is None:
        teacher_mode = "none" if teacher is None else "pretrained_external"
    return Distillation(
        bit_widths, settings.mode, teacher, teacher_mode,
        temperature=settings.temperature, weight=settings.weight,
        attention_weight=settings.attention_weight,
        warmup_steps=kd_warmup_steps(settings, epochs, steps_per_epoch),
        student_weights=dict(settings.student_weights),
        student_temperatures=dict(settings.student_temperatures), **kwargs,
    )


def float_teacher(float_model):
    """The float model as a frozen teacher of its members: its logits (a final softmax
    removed, `quantens.convert.logits_model`), `trainable = False`."""
    from quantens.convert import logits_model

    teacher, _ = logits_model(float_model)
    teacher.trainable = False
    return teacher


def build_ensemble(model, ensemble: EnsembleSettings, schedule: ScheduleSettings,
                   steps_per_epoch: int, distillation=None):
    """The compiled `QuantEnsemble` of `model`: members, optimizer, schedule, distillation.

    Build it inside `strategy.scope()` to train under `tf.distribute`.
    """
    from quantens.ensemble import QuantEnsemble

    optimizer = make_optimizer(schedule, steps_per_epoch)
    result = QuantEnsemble(
        model, ensemble.bit_widths, ensemble.target_bits, weight_decay=ensemble.weight_decay,
        member_loss_weights=dict(ensemble.member_loss_weights),
        member_backward=ensemble.member_backward, mixed_students=ensemble.mixed_students,
        mixed_seed=ensemble.mixed_seed,
    )
    if distillation is not None:
        result.set_distillation(distillation)
    result.compile(optimizer=optimizer, run_eagerly=schedule.run_eagerly,
                   jit_compile=schedule.jit_compile)
    return result


def calibrate_members(ensemble, data: DataSettings, plan, *, method: str | None = None,
                      batch_size: int | None = None, verbose: int = 0) -> list[int]:
    """A converted model's members below 32 bits fitted to the training split of `plan`
    (`quantens.calibrate`: clip values and BN statistics), before the first step.

    `method` defaults to `EnsembleSettings().calibration`; `"none"` calibrates
    nothing. Returns the calibrated bit-widths (none when every member is at 32
    bits or the method is `"none"`).
    """
    from quantens.calibration import calibrate

    if method == "none":
        return []
    low = [b for b in ensemble.bit_widths if b != defaults.FULL_PRECISION]
    if low:
        images = _load(data, plan.train, batch_size or data.batch_size, training=False)
        calibrate(ensemble, images, low, method=method or defaults.CALIBRATION,
                  verbose=verbose)
    return low
