"""Validation of parsed `train.py` flags: ranges, combinations, paths, flags without effect.

`validate` checks and normalises a parsed Namespace in a fixed order and
raises `UsageError` naming the flag (the first problem found); the command
line turns it into one line `train.py: error: ...` and exit code 2, before
anything is written.
"""

from __future__ import annotations

import argparse
import math
import os
import re

from quantens import defaults
from quantens.bits import validate_bit_widths
from quantens.checks import check_per_member
from quantens.cli.flags import DEFAULTS, bits_value
from quantens.defaults import KD_TEACHER_MODES
from quantens.errors import ConfigError, UsageError, one_line
from quantens.layout import ResultDir
from quantens.run import DistillationSettings, kd_warmup_steps

__all__ = [
    "FLOAT_FLAGS",
    "PER_MEMBER_FLAGS",
    "check_weights_file",
    "check_writable",
    "default_result_path",
    "validate",
]

# Float flags that must be finite numbers (checked before any range).
FLOAT_FLAGS = ("lr", "lr_factor", "warmup_epochs", "momentum", "wd", "clip_threshold",
               "kd_temperature", "kd_weight", "kd_attention_weight", "alpha",
               "kd_warmup_epochs")
PER_MEMBER_FLAGS = ("kd_weights", "kd_temperatures", "member_loss_weights")
"""Flags of BITS:VALUE pairs, one per member at most."""


def validate(args: argparse.Namespace) -> argparse.Namespace:
    """Checks and normalises parsed flags; raises UsageError naming the flag.

    In order (the first problem is the one reported): the members, counts and
    ranges, the model, the schedule, the inputs, distillation, TF_CONFIG, the
    outputs, and flags that would have no effect.
    """
    _validate_members(args)
    _validate_counts(args)
    _resolve_model(args)
    _validate_schedule(args)
    _validate_inputs(args)
    _validate_distillation(args)
    from quantens.cluster import read_tf_config

    read_tf_config()  # a malformed TF_CONFIG is bad input too (DeviceError)
    _validate_outputs(args)
    _refuse_flags_without_effect(args)
    return args


def _validate_members(args: argparse.Namespace) -> None:
    """--bit-widths checked and sorted high to low; --target-bits one of them (default: the
    lowest); --mixed-students >= 0, with 2 bit-widths or more to mix."""
    try:
        args.bit_widths = validate_bit_widths(args.bit_widths)
    except ValueError as error:
        raise UsageError(f"--bit-widths: {error}") from None
    if args.target_bits is None:
        args.target_bits = args.bit_widths[-1]
    if args.target_bits not in args.bit_widths:
        raise UsageError(
            f"--target-bits {args.target_bits} must be one of --bit-widths "
            f"{' '.join(map(str, args.bit_widths))}"
        )
    if args.mixed_students < 0:
        raise UsageError(
            f"--mixed-students must be a whole number >= 0 (mixes per step; 0: none), got "
            f"{args.mixed_students}"
        )
    if args.mixed_students and len(args.bit_widths) < 2:
        raise UsageError(
            f"--mixed-students {args.mixed_students} mixes the members' bit-widths per layer: "
            f"--bit-widths {' '.join(map(str, args.bit_widths))} has one; add a member or "
            "leave --mixed-students out"
        )


def _validate_counts(args: argparse.Namespace) -> None:
    """Counts at least 1, --seed in range, float flags finite, --alpha positive."""
    for flag in ("epochs", "batch_size", "log_interval", "max_trials"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag.replace('_', '-')} must be at least 1")
    if args.width is not None and args.width < 1:
        raise UsageError(f"--width must be at least 1, got {args.width}")
    if args.num_workers is not None and args.num_workers < 1:
        raise UsageError("-j/--num-workers must be at least 1")
    if not 0 <= args.seed < 2**32:
        raise UsageError(f"--seed must be an integer from 0 to {2**32 - 1}, got {args.seed}")
    for flag in FLOAT_FLAGS:  # NaN passes every comparison below: reject it first
        value = getattr(args, flag)
        if value is not None and not math.isfinite(value):
            raise UsageError(f"--{flag.replace('_', '-')} must be a finite number, got {value}")
    if args.alpha is not None and args.alpha <= 0:
        raise UsageError(f"--alpha must be positive, got {args.alpha}")


def _resolve_model(args: argparse.Namespace) -> None:
    """The model's own --weight-quantization default; a saved model's path made absolute."""
    if args.weight_quantization is None:  # the model's own default, recorded in config.json
        args.weight_quantization = defaults.default_weight_quantization(args.model)
    if defaults.is_model_file(args.model):  # config.json rebuilds it from any directory
        args.model = os.path.abspath(os.path.expanduser(args.model))


def _validate_schedule(args: argparse.Namespace) -> None:
    """--lr, --clip-threshold, --wd, --lr-factor, --warmup-epochs, --momentum in range;
    --lr-steps parsed into increasing epochs."""
    if args.lr <= 0:
        raise UsageError("--lr must be positive")
    if args.clip_threshold <= 0:
        raise UsageError("--clip-threshold must be positive")
    if args.wd < 0:
        raise UsageError("--wd must not be negative")
    if not 0 < args.lr_factor <= 1:
        raise UsageError(f"--lr-factor must be in (0, 1], got {args.lr_factor}")
    if not 0 <= args.warmup_epochs < args.epochs:
        raise UsageError(
            f"--warmup-epochs must be at least 0 and less than --epochs {args.epochs}, "
            f"got {args.warmup_epochs}"
        )
    if not 0 <= args.momentum < 1:
        raise UsageError(f"--momentum must be in [0, 1), got {args.momentum}")
    try:
        steps = args.lr_steps
        if not isinstance(steps, (list, tuple)):  # a run's config.json stores a list
            steps = str(steps).split(",")
        args.lr_steps = tuple(float(s) for s in steps if str(s).strip())
    except (TypeError, ValueError):
        raise UsageError(
            f"--lr-steps must be comma-separated epochs, got {args.lr_steps!r}"
        ) from None
    if not all(math.isfinite(e) and e > 0 for e in args.lr_steps) or any(
        a >= b for a, b in zip(args.lr_steps, args.lr_steps[1:], strict=False)
    ):
        raise UsageError(
            "--lr-steps must be increasing epochs > 0 such as 30,60,90, got "
            f"{','.join(f'{e:g}' for e in args.lr_steps)}"
        )


def _validate_inputs(args: argparse.Namespace) -> None:
    """--resume (a weights file or a result directory's), --dataset folder with --data-dir,
    --val-split a fraction, --cpu-replicas at least 1."""
    if args.resume is not None:
        if os.path.isdir(args.resume):  # a result directory: its final weights
            args.resume = ResultDir(args.resume).weights
        check_weights_file(args.resume, "--resume")
    if args.dataset == "folder" and args.data_dir is None:
        raise UsageError("--dataset folder reads its images from --data-dir DIR (DIR/train and "
                         "DIR/val, one subfolder per class): add --data-dir")
    if args.data_dir is not None and not os.path.isdir(args.data_dir):
        raise UsageError(f"--data-dir {args.data_dir} does not exist or is not a folder")
    if args.val_split is not None and not (math.isfinite(args.val_split)
                                           and 0 < args.val_split < 1):
        raise UsageError(f"--val-split must be a fraction between 0 and 1, got {args.val_split}")
    if args.cpu_replicas is not None and args.cpu_replicas < 1:
        raise UsageError("--cpu-replicas must be at least 1")


def _validate_outputs(args: argparse.Namespace) -> None:
    """--result-path (default: results/<model>_<dataset>), --log and --tensorboard-dir
    writable; --budget-kb with --export."""
    if args.result_path is None:
        args.result_path = default_result_path(args.model, args.dataset)
    check_writable(args.result_path, "--result-path")
    if args.log is not None:
        if os.path.isdir(args.log):
            raise UsageError(f"--log {args.log} is a directory: name a file")
        if os.path.exists(args.log) and not os.access(args.log, os.W_OK):
            raise UsageError(f"--log {args.log} is not writable by this user")
        check_writable(os.path.dirname(os.path.abspath(args.log)), "--log")
    if args.budgets and not args.export:
        raise UsageError("--budget-kb exports a member beside the uniform ones: add --export")
    if args.tensorboard_dir is not None:
        if args.no_tensorboard:
            raise UsageError("--tensorboard-dir has no effect with --no-tensorboard: leave "
                             "one of them out")
        check_writable(args.tensorboard_dir, "--tensorboard-dir")


def _refuse_flags_without_effect(args: argparse.Namespace) -> None:
    """A flag that would change nothing in this run is an error naming why (not a silent no-op).

    Flags are compared with their defaults: a default value has its default effect.
    """
    def given(flag: str) -> bool:
        default = DEFAULTS.get(flag)
        if flag == "lr_steps":  # validated into a tuple of epochs
            default = tuple(float(s) for s in default.split(","))
        return getattr(args, flag) != default

    if "step" not in (args.lr_mode, args.teacher_lr_mode) and (
            given("lr_steps") or given("lr_factor")):
        raise UsageError(
            f"--lr-steps and --lr-factor shape --lr-mode step only, not --lr-mode "
            f"{args.lr_mode}: choose --lr-mode step or leave them out"
        )
    if not args.tune and (given("max_trials") or given("tune_objective")):
        raise UsageError("--max-trials and --tune-objective belong to a search: add --tune "
                         f"{defaults.TUNERS[0]} (or another tuner) or leave them out")
    if args.jit and args.mode == "imperative":
        raise UsageError("--jit compiles the graph of the train step; --mode imperative runs it "
                         "eagerly, without one: leave one of them out")
    if args.dry_run and args.export:
        raise UsageError("--export has no effect with --dry-run (nothing is trained): leave "
                         "one of them out")
    # --calibration for a model with nothing to calibrate: train.py asks the library
    # (quantens.calibration.check_calibratable) once the model is built
    weights = dict(args.member_loss_weights or [])
    if all(weights.get(b, 1.0) == 0 for b in args.bit_widths):
        raise UsageError(
            "--member-loss-weights: every member's weight is 0, so no member would learn; "
            "give at least one member a positive weight"
        )


def default_result_path(model: str, dataset: str) -> str:
    """`results/<model>_<dataset>`, with a file name for every form of `--model`.

    `keras:NAME` becomes `keras_NAME`, a saved model's path its file name
    without the suffix; characters other than letters, digits, `.`, `_`, `-`
    become `_`.

    ```python
    from quantens.cli import default_result_path

    assert default_result_path("mobilenet_v2", "cifar10") == "results/mobilenet_v2_cifar10"
    assert default_result_path("keras:MobileNetV2", "cifar10") == (
        "results/keras_MobileNetV2_cifar10")
    assert default_result_path("/home/me/my cnn.keras", "digits") == "results/my_cnn_digits"
    ```
    """
    name = str(model)
    if defaults.is_model_file(name):
        name = os.path.basename(name.rstrip("/" + os.sep))
        stem, suffix = os.path.splitext(name)
        name = stem if suffix.lower() in defaults.MODEL_FILE_SUFFIXES else name
    elif name.startswith(defaults.KERAS_MODEL_PREFIX):
        name = "keras_" + name[len(defaults.KERAS_MODEL_PREFIX):]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{name}_{dataset}").strip("._") or "run"
    return os.path.join("results", slug)


def check_weights_file(path: str, flag: str) -> None:
    """A readable, whole HDF5 weights file (before TensorFlow loads), else UsageError naming flag."""
    import h5py

    if os.path.isdir(path):
        raise UsageError(f"{flag} {path} is a directory without {ResultDir.WEIGHTS}: pass a "
                         "weights file or a finished result directory")
    if not os.path.isfile(path):
        raise UsageError(f"{flag} {path}: no such file")
    if not os.access(path, os.R_OK):
        raise UsageError(f"{flag} {path} is not readable by this user")
    if not h5py.is_hdf5(path):
        raise UsageError(f"{flag} {path} is not a weights file (HDF5, as save_weights writes "
                         "it): pass a .weights.h5 file or a result directory")
    try:
        with h5py.File(path, "r") as f:
            f.visititems(lambda name, obj: None)
    except (OSError, RuntimeError, KeyError) as error:
        raise UsageError(f"{flag} {path} is damaged (truncated or half-copied?): "
                         f"{one_line(error, 120)}; copy it again") from None


def check_writable(path: str, flag: str) -> None:
    """A directory that exists and is writable, or can be created where its parent is."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"{flag} {path} is a file, not a directory: choose another path")
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UsageError(f"{flag} {path}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(
            f"{flag} {path}: {existing} is not writable by this user; choose a path you can "
            "write to"
        )


def _validate_distillation(args: argparse.Namespace) -> None:
    """The KD flags: the teacher, the KD values, --tune-objective, flags without effect,
    and the --teacher-* flags that follow the student's."""
    has_teacher = _validate_teacher(args)
    _validate_kd_values(args)
    _validate_tune_objective(args)
    if args.kd_mode == "none" and not has_teacher and (
            args.kd_weights or args.kd_temperatures or args.kd_warmup_epochs
            or args.kd_attention_weight):
        raise UsageError(
            "--kd-weights, --kd-temperatures, --kd-warmup-epochs and --kd-attention-weight "
            "shape distillation: choose a --kd-mode (e.g. progressive) or a teacher"
        )
    _refuse_kd_without_effect(args, has_teacher)
    for flag in ("lr", "wd", "lr_mode", "optimizer", "momentum"):
        if getattr(args, f"teacher_{flag}") is None:
            setattr(args, f"teacher_{flag}", getattr(args, flag))
    if args.teacher_lr <= 0 or args.teacher_wd < 0:
        raise UsageError("--teacher-lr must be positive and --teacher-wd not negative")


def _validate_teacher(args: argparse.Namespace) -> bool:
    """--teacher-params, --two-stage, --ensemble-teacher, --teacher, --kd-teacher-mode and
    --float-teacher consistent; returns whether the run has a teacher."""
    teacher_modes = tuple(m for m in KD_TEACHER_MODES if m != "none")
    if args.teacher_params is not None:
        if os.path.isdir(args.teacher_params):  # a result directory: its final weights
            args.teacher_params = ResultDir(args.teacher_params).weights
        check_weights_file(args.teacher_params, "--teacher-params")
    if args.two_stage:
        given = [flag for flag, on in (
            ("--fp-weights", args.fp_weights), ("--ensemble-teacher", args.ensemble_teacher),
            ("--teacher-params", args.teacher_params is not None),
            ("--resume", args.resume is not None), ("--tune", args.tune is not None),
            ("--teacher", args.teacher is not None),
            ("--kd-teacher-mode", args.kd_teacher_mode != "none")) if on]
        if given:
            raise UsageError(
                f"--two-stage sets the stages' teacher and weights itself: leave out "
                f"{', '.join(given)}"
            )
    if args.ensemble_teacher:
        if args.teacher_params is None:
            raise UsageError(
                "--ensemble-teacher needs --teacher-params: the weights of the trained ensemble"
            )
        if args.kd_teacher_mode != "none":
            raise UsageError("--ensemble-teacher and --kd-teacher-mode exclude each other")
    elif args.kd_teacher_mode in teacher_modes and not args.teacher:
        raise UsageError(f"--kd-teacher-mode {args.kd_teacher_mode} needs --teacher NAME")
    elif args.teacher and args.kd_teacher_mode == "none":
        raise UsageError(
            f"--teacher {args.teacher} needs --kd-teacher-mode pretrained_external or "
            "untrained_external"
        )
    _resolve_float_teacher(args)
    has_teacher = (args.ensemble_teacher or args.two_stage or args.float_teacher
                   or args.kd_teacher_mode in teacher_modes)
    if args.kd_mode == "simple" and not has_teacher:
        raise UsageError(
            "--kd-mode simple needs a teacher: --teacher NAME --kd-teacher-mode "
            "pretrained_external|untrained_external, or --ensemble-teacher"
        )
    return has_teacher


def _validate_kd_values(args: argparse.Namespace) -> None:
    """The KD numbers in range; the per-member BITS:VALUE flags checked against the members."""
    for flag in ("teacher_lr", "teacher_wd", "teacher_momentum"):
        value = getattr(args, flag)
        if value is not None and not math.isfinite(value):
            raise UsageError(f"--{flag.replace('_', '-')} must be a finite number, got {value}")
    if args.kd_temperature <= 0:
        raise UsageError("--kd-temperature must be positive")
    if args.kd_weight < 0 or args.kd_attention_weight < 0:
        raise UsageError("--kd-weight and --kd-attention-weight must not be negative")
    if args.kd_warmup_epochs < 0:
        raise UsageError(f"--kd-warmup-epochs must not be negative, got {args.kd_warmup_epochs}")
    try:  # the library's check; the steps per epoch are known once the data is loaded
        kd_warmup_steps(DistillationSettings(warmup_epochs=args.kd_warmup_epochs), args.epochs,
                        steps_per_epoch=None)
    except ConfigError as error:
        raise UsageError(f"--kd-warmup-epochs {args.kd_warmup_epochs:g}: {error}") from error
    for flag in PER_MEMBER_FLAGS:
        setattr(args, flag, _per_member(args, flag))


def _validate_tune_objective(args: argparse.Namespace) -> None:
    """--tune-objective: target, mean or a member's bit-width (04 read as 4)."""
    objective = str(args.tune_objective)
    if objective.isdigit():
        objective = args.tune_objective = str(int(objective))  # 04 -> 4: the metric's name
    if objective not in ("target", "mean") and not (
            objective.isdigit() and int(objective) in args.bit_widths):
        raise UsageError(
            f"--tune-objective must be target, mean or a member's bit-width "
            f"({' '.join(map(str, args.bit_widths))}), got {objective}"
        )


def _refuse_kd_without_effect(args: argparse.Namespace, has_teacher: bool) -> None:
    """KD flags that would change nothing in the chosen mode are errors naming why.

    A search (--tune) chooses the mode and the KD weight per trial: what is
    meaningful in one of its modes is kept (best.json drops the rest).
    """
    if args.tune:
        return
    mode = "simple" if args.kd_mode == "none" and has_teacher else args.kd_mode
    students = sorted({student for student, _ in defaults.kd_pairs(
        mode, args.bit_widths, has_teacher)}, reverse=True)
    for flag in ("kd_weights", "kd_temperatures"):
        others = [bits for bits, _ in getattr(args, flag) or [] if bits not in students]
        if others:
            who = (f"the {'-, '.join(map(str, others))}-bit "
                   + ("member learns" if len(others) == 1 else "members learn"))
            raise UsageError(
                f"--{flag.replace('_', '-')}: {who} from no target in --kd-mode {mode}"
                f"{'' if has_teacher else ' without a teacher'} (its students: "
                f"{' '.join(map(str, students))} bits): leave {'it' if len(others) == 1 else 'them'}"
                " out"
            )
    if mode != "none" and args.kd_weight == 0 and not args.kd_attention_weight and not any(
            weight for _, weight in args.kd_weights or []):
        raise UsageError(
            f"--kd-weight 0 and no positive --kd-weights: --kd-mode {mode} would distil "
            "nothing; give distillation a weight or choose --kd-mode none"
        )
    untrained = args.kd_teacher_mode == "untrained_external"
    given = [f"--teacher-{flag.replace('_', '-')}" for flag in
             ("lr", "wd", "lr_mode", "optimizer", "momentum")
             if getattr(args, f"teacher_{flag}") not in (None, getattr(args, flag))]
    if given and not untrained:
        raise UsageError(
            f"{', '.join(given)} set the training of an untrained_external teacher; this run "
            "trains no teacher: add --kd-teacher-mode untrained_external or leave them out"
        )
    if args.teacher_params is not None and not (
            args.ensemble_teacher or args.kd_teacher_mode != "none"):
        raise UsageError(
            f"--teacher-params {args.teacher_params}: this run has no teacher to load it "
            "into: add --teacher NAME --kd-teacher-mode ... or --ensemble-teacher"
        )


def _resolve_float_teacher(args: argparse.Namespace) -> None:
    """--float-teacher: on by default for a saved float model (trained weights), unless
    another teacher is chosen; it makes --kd-mode none simple (teacher -> every member)."""
    others = [flag for flag, on in (
        ("--teacher", bool(args.teacher)), ("--kd-teacher-mode", args.kd_teacher_mode != "none"),
        ("--ensemble-teacher", args.ensemble_teacher), ("--two-stage", args.two_stage)) if on]
    trained = defaults.is_model_file(args.model)
    if args.float_teacher is None:
        args.float_teacher = trained and not others
    elif not args.float_teacher and not trained:
        raise UsageError(
            f"--no-float-teacher has no effect: --model {args.model} is not a saved float "
            "model, so it has no float teacher to turn off; leave the flag out"
        )
    elif args.float_teacher:
        if not trained:
            raise UsageError(
                f"--float-teacher distils from the float original of a saved model: "
                f"--model {args.model} has no trained float weights (pass --model PATH of "
                "your saved float model, or leave the flag out)"
            )
        if others:
            raise UsageError(f"--float-teacher and {', '.join(others)} exclude each other")
    args.float_teacher = bool(args.float_teacher)
    if args.float_teacher and args.kd_mode == "none":
        args.kd_mode = "simple"


def _per_member(args: argparse.Namespace, flag: str) -> list | None:
    """The BITS:VALUE pairs of `flag` checked against the members: [[bits, value], ...]."""
    pairs = getattr(args, flag)
    if pairs is None:
        return None
    name = "--" + flag.replace("_", "-")
    checked: dict[int, float] = {}
    for pair in pairs:
        try:
            if isinstance(pair, str):  # "B:V" from a --config file
                pair = bits_value(pair)
            bits, value = int(pair[0]), float(pair[1])
        except (TypeError, ValueError, IndexError, argparse.ArgumentTypeError):
            raise UsageError(f"{name}: {pair!r} is not BITS:VALUE") from None
        if bits in checked:
            raise UsageError(f"{name}: {bits} bits is given twice")
        checked[bits] = value
    # members and values: the library's check (quantens.checks), in the flag's name
    checked = check_per_member(checked, args.bit_widths, name, None,
                               positive=flag == "kd_temperatures")
    return [[b, v] for b, v in checked.items()]
