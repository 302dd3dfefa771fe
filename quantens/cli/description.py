"""`train.py`'s validated flags as one typed run description, a dataclass per concern.

The steps of `quantens.cli.train` take a `RunDescription`, never the parsed
`argparse.Namespace`: the library's settings (`quantens.run`) for the data,
the ensemble, the schedule and distillation, and the command line's own for
the model (a zoo name or a saved file), the teacher, export, devices and
outputs. `flags` keeps every resolved flag for `config.json`.

```python
from quantens import cli
from quantens.cli.description import describe

run = describe(cli.parse_args(["--bit-widths", "32", "1", "--epochs", "3"]))
assert run.ensemble.bit_widths == (32, 1) and run.schedule.epochs == 3
assert run.flags["epochs"] == 3  # what config.json records
```
"""

from __future__ import annotations

import argparse
import dataclasses

from quantens import defaults
from quantens.run import DataSettings, DistillationSettings, EnsembleSettings, ScheduleSettings

__all__ = [
    "ExportSettings",
    "ModelSettings",
    "OutputSettings",
    "RunDescription",
    "RuntimeSettings",
    "TeacherSettings",
    "describe",
]

_SETTINGS = dataclasses.dataclass(frozen=True, kw_only=True)


@_SETTINGS
class ModelSettings:
    """`--model` (a zoo name, `keras:NAME` or a saved float model's path) and `--resume`."""

    name: str
    resume: str | None
    is_file: bool  # a saved float model (trained weights; checked inputs, float teacher)


@_SETTINGS
class TeacherSettings:
    """Where distillation's teacher comes from: none, the float original of a saved model,
    a zoo teacher (`--teacher`), or a first-stage ensemble (`--ensemble-teacher`)."""

    mode: str  # --kd-teacher-mode
    name: str | None  # --teacher
    params: str | None  # --teacher-params
    ensemble: bool  # --ensemble-teacher
    float_teacher: bool  # --float-teacher (resolved)
    schedule: ScheduleSettings  # an untrained_external teacher's --teacher-* optimizer
    weight_decay: float


@_SETTINGS
class ExportSettings:
    """`--export`: every member to `<result-path>/export`, checked on the test split."""

    export: bool
    batch_size: int
    max_val_examples: int | None  # --test-run: one batch
    budgets: tuple[int, ...] = ()  # --budget-kb, in bytes


@_SETTINGS
class RuntimeSettings:
    """Devices, seeds, dtype and how much of the run happens."""

    gpus: object
    cpu_replicas: int | None
    deterministic: bool
    seed: int
    dtype: str
    dry_run: bool
    explicit_preprocessing: bool  # --input-preprocessing given (not the default)


@_SETTINGS
class OutputSettings:
    """Where the run writes: the result directory, the log, TensorBoard."""

    result_path: str
    log: str | None
    log_interval: int
    tensorboard: bool
    tensorboard_dir: str | None


@_SETTINGS
class RunDescription:
    """One `train.py` run: what each step needs, typed, and the flags config.json records."""

    model: ModelSettings
    data: DataSettings
    ensemble: EnsembleSettings
    schedule: ScheduleSettings
    distillation: DistillationSettings
    teacher: TeacherSettings
    export: ExportSettings
    runtime: RuntimeSettings
    output: OutputSettings
    flags: dict


def _pairs(pairs) -> dict:
    return {int(b): float(v) for b, v in (pairs or [])}


def describe(args: argparse.Namespace, explicit_preprocessing: bool | None = None
             ) -> RunDescription:
    """The run description of validated flags (`quantens.cli.parse_args`).

    `explicit_preprocessing`: whether `--input-preprocessing` was given (default:
    whether it is set); a run resolves an unset one to the default first.
    """
    if explicit_preprocessing is None:
        explicit_preprocessing = args.input_preprocessing is not None
    schedule = ScheduleSettings(
        optimizer=args.optimizer, lr=args.lr, lr_mode=args.lr_mode, lr_steps=args.lr_steps,
        lr_factor=args.lr_factor, warmup_epochs=args.warmup_epochs, momentum=args.momentum,
        epochs=args.epochs, run_eagerly=args.mode == "imperative", jit_compile=args.jit,
    )
    teacher_schedule = dataclasses.replace(
        schedule, optimizer=args.teacher_optimizer or args.optimizer,
        lr=args.teacher_lr if args.teacher_lr is not None else args.lr,
        lr_mode=args.teacher_lr_mode or args.lr_mode,
        momentum=args.teacher_momentum if args.teacher_momentum is not None else args.momentum,
    )
    return RunDescription(
        model=ModelSettings(name=args.model, resume=args.resume,
                            is_file=defaults.is_model_file(args.model)),
        data=DataSettings(
            dataset=args.dataset, data_dir=args.data_dir, val_split=args.val_split,
            batch_size=args.batch_size, num_workers=args.num_workers,
            augmentation=args.augmentation,
            input_preprocessing=args.input_preprocessing or defaults.INPUT_PREPROCESSING,
            seed=args.seed, take_batches=1 if args.test_run else None,
        ),
        ensemble=EnsembleSettings(
            bit_widths=tuple(args.bit_widths), target_bits=args.target_bits,
            weight_decay=args.wd, member_loss_weights=_pairs(args.member_loss_weights),
            member_backward=args.member_backward, calibration=args.calibration,
            mixed_students=args.mixed_students,
            # the seed of the mixes; without mixed students nothing is drawn: the default
            mixed_seed=args.seed if args.mixed_students else defaults.SEED,
        ),
        schedule=schedule,
        distillation=DistillationSettings(
            mode=args.kd_mode, temperature=args.kd_temperature, weight=args.kd_weight,
            attention_weight=args.kd_attention_weight, warmup_epochs=args.kd_warmup_epochs,
            student_weights=_pairs(args.kd_weights),
            student_temperatures=_pairs(args.kd_temperatures),
        ),
        teacher=TeacherSettings(
            mode=args.kd_teacher_mode, name=args.teacher, params=args.teacher_params,
            ensemble=bool(args.ensemble_teacher),
            float_teacher=bool(getattr(args, "float_teacher", False)),
            schedule=teacher_schedule,
            weight_decay=args.teacher_wd if args.teacher_wd is not None else args.wd,
        ),
        export=ExportSettings(export=bool(args.export), batch_size=args.batch_size,
                              max_val_examples=args.batch_size if args.test_run else None,
                              budgets=tuple(args.budgets or ())),
        runtime=RuntimeSettings(
            gpus=args.gpus, cpu_replicas=args.cpu_replicas, deterministic=args.deterministic,
            seed=args.seed, dtype=args.dtype, dry_run=bool(args.dry_run),
            explicit_preprocessing=explicit_preprocessing,
        ),
        output=OutputSettings(
            result_path=args.result_path, log=args.log, log_interval=args.log_interval,
            tensorboard=not args.no_tensorboard, tensorboard_dir=args.tensorboard_dir,
        ),
        flags=dict(vars(args)),
    )
