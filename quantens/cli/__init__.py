"""The command line: the seed's flags of `train.py`, same names and meanings, and the entry points.

The command-line layer is the only code that parses flags, prints
`prog: error: ...` and exits: `quantens.cli.train` (train.py), `quantens.cli.export`
(`python -m quantens.export`), `quantens.cli.report` (`python -m quantens.report`).
`pip install` puts them on PATH as `quantens-train`, `quantens-export` and
`quantens-report` (with `quantens-evaluate`, `zoo.evaluate`); started that way
they name themselves so in usage and error lines (`program_name`).
The library below it raises `quantens.errors.QuantensError`s; `run_main` turns
them into one line and the exit code.

Users of the MXNet/BMXNet code run their commands unchanged:

```python
from quantens.cli import parse_args

args = parse_args(["--model", "resnet18_e1", "--bit-widths", "32", "8", "4", "2", "1",
                   "--target-bits", "1", "--dataset", "cifar100"])
assert args.bit_widths == (32, 8, 4, 2, 1)
```

Bad input ends with one line `train.py: error: ...` naming the flag and what
is allowed, exit code 2, before anything is written.
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import re
import sys
from collections.abc import Callable

from quantens import defaults
from quantens.bits import validate_bit_widths
from quantens.defaults import (  # noqa: F401  (the CLI's names for them)
    ARCHITECTURE_FLAGS,
    DERIVED_KEYS,
    KD_MODES,
    KD_TEACHER_MODES,
    LR_MODES,
    OPTIMIZERS,
)
from quantens.errors import QuantensError, UsageError, one_line
from quantens.layout import ResultDir
from quantens.startup import load_tensorflow, quiet_native_logs  # noqa: F401  (re-exported)

# Float flags that must be finite numbers (checked before any range).
FLOAT_FLAGS = ("lr", "lr_factor", "warmup_epochs", "momentum", "wd", "clip_threshold",
               "kd_temperature", "kd_weight", "kd_attention_weight", "alpha",
               "kd_warmup_epochs")
PER_MEMBER_FLAGS = ("kd_weights", "kd_temperatures", "member_loss_weights")
"""Flags of BITS:VALUE pairs, one per member at most."""

DEFAULT_MODEL = defaults.MODEL
DEFAULT_DATASET = defaults.DATASET


class Parser(argparse.ArgumentParser):
    """argparse, but errors are one line (no usage wall) and exit code 2.

    `error_prog` names the program in error lines (default: `prog`).
    """

    def __init__(self, *args, error_prog: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.error_prog = error_prog or self.prog

    def error(self, message):
        self.exit(2, f"{self.error_prog}: error: {message} (see --help)\n")


_Parser = Parser


def _bits_value(value: str) -> list:
    """`B:V` (a member's bit-width and a number) as [B, V]."""
    bits, sep, number = str(value).partition(":")
    try:
        if not sep:
            raise ValueError
        return [int(bits), float(number)]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not BITS:VALUE (e.g. 1:2.0)") from None


def _bits_list(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None


CONSOLE_SCRIPTS = ("quantens-train", "quantens-export", "quantens-report", "quantens-evaluate")
"""The commands `pip install` puts on PATH (setup.py's console_scripts)."""


def program_name(script: str, default: str, argv0: str | None = None) -> str:
    """The name of the running command in usage lines and `prog: error: ...` lines.

    `script` (e.g. `quantens-export`) when the process was started as that
    console script, i.e. `sys.argv[0]`'s basename is `script` (`.exe` and
    `-script.py` of Windows launchers dropped); otherwise `default`, the
    name of the `python ...` form (`train.py`, `quantens.export`).

    ```python
    from quantens.cli import program_name

    assert program_name("quantens-train", "train.py", "/venv/bin/quantens-train") == "quantens-train"
    assert program_name("quantens-train", "train.py", "train.py") == "train.py"
    assert program_name("quantens-export", "quantens.export", "/x/quantens/export/__main__.py") == (
        "quantens.export")
    ```
    """
    name = os.path.basename(sys.argv[0] if argv0 is None else argv0 or "")
    name = re.sub(r"(-script\.pyw?|\.exe)$", "", name, flags=re.IGNORECASE)
    return script if name == script else default


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Each flag's default once, as `(default: X)`; description and epilog as written.

    A help text that states its default itself (`default: --lr`, `(default:
    lowest)`, for flags whose argparse default is None) gets no second one.
    """

    def _get_help_string(self, action):
        if re.search(r"\bdefault:", action.help or ""):
            return action.help
        return super()._get_help_string(action)


_EXAMPLE_4 = (
    "--model resnet18_e1 --weight-quantization dorefa --activation-method round \\\n"
    "    --clip-threshold 1.3 --fp-downsample-sc --pool-downsample-sc --dataset cifar100 \\\n"
    "    --epochs 150 --batch-size 128 --log test_run4 --log-interval 100 --gpus 0 --lr 0.01 \\\n"
    "    --lr-mode cosine --bit-widths 32 8 4 2 1 --target-bits 1 --optimizer radam \\\n"
    "    --result_path ../test_run4/ --fp-weights"
)


def _epilog(prog: str) -> str:
    """Three example commands, in the form the user started (script or `python ...`)."""
    installed = prog == "quantens-train"
    train = "quantens-train" if installed else "python train.py"
    export = "quantens-export" if installed else "python -m quantens.export"
    return (
        "examples:\n"
        "  # the default run: 5 members (32 8 4 2 1 bits) of a small ResNetE on digits\n"
        f"  {train}\n"
        "\n"
        "  # the seed's example 4: first stage of multi-stage training on CIFAR-100\n"
        f"  {train} {_EXAMPLE_4}\n"
        "\n"
        "  # export every member of a finished run (SavedModel, TFLite per member)\n"
        f"  {export} RESULT_DIR\n"
    )


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of `train.py` (every flag documented in `--help`).

    `prog` defaults to `quantens-train` when started as that console script,
    else `train.py` (`program_name`).
    """
    prog = prog or program_name("quantens-train", "train.py")
    p = _Parser(
        prog=prog,
        description=(
            "Train an ensemble of quantized networks with shared weights (one member per\n"
            "bit-width), optionally with knowledge distillation. The flags are those of the\n"
            "MXNet/BMXNet code: its example commands run unchanged."
        ),
        epilog=_epilog(prog),
        formatter_class=HelpFormatter,
    )
    g = p.add_argument_group("model")
    g.add_argument(
        "--model", default=DEFAULT_MODEL,
        help="architecture: a zoo name (digits_resnet_e, resnet18_e1, resnet34_e1, "
        "mobilenet_v2, resnet50), keras:NAME (any tf.keras.applications network, e.g. "
        "keras:EfficientNetB0, converted by quantens.quantize_model), or the path of your "
        "saved float Keras model (.keras/.h5, model.save(PATH); a final softmax is removed)",
    )
    g.add_argument(
        "--initial-layers", default=None, choices=defaults.INITIAL_LAYERS,
        help="stem of ResNetE models (default: imagenet for 224px inputs, thumbnail "
        "for small images)",
    )
    g.add_argument(
        "--weight-quantization", default=None,
        choices=defaults.WEIGHT_QUANTIZATIONS,
        help="weight quantizer below 32 bits: dorefa (sign at 1 bit), narrow (the "
        "symmetric narrow-range grid TFLite stores exactly: 2-4 bits as packed INT4; a "
        "scale per channel), identity (full precision) (default: dorefa for ResNetE "
        "models, narrow for converted networks)",
    )
    g.add_argument(
        "--activation-method", default=defaults.ACTIVATION_METHOD,
        choices=defaults.ACTIVATION_METHODS,
        help="activation quantizer: round to [0,1] levels, or sign",
    )
    g.add_argument(
        "--clip-threshold", type=float, default=defaults.CLIP_THRESHOLD,
        help="activation gradients are cancelled where |x| exceeds this",
    )
    g.add_argument("--fp-downsample-sc", action="store_true",
                   help="full-precision 1x1 convolution in downsampling shortcuts")
    g.add_argument("--pool-downsample-sc", action="store_true",
                   help="2x2 average pooling in downsampling shortcuts")
    g.add_argument("--fp-weights", action="store_true",
                   help="keep every member's weights in full precision")
    g.add_argument("--share-bn", action="store_true",
                   help="one BatchNormalization for all members instead of one per member")
    g.add_argument("--width", type=int, default=None,
                   help="first-stage channels of the small digits model (default: the "
                   "model's own, 32 for digits_resnet_e)")
    g.add_argument("--alpha", type=float, default=None,
                   help="width multiplier of mobilenet_v2 and keras:MobileNet* models, e.g. "
                   "0.35 (default: the model's own, 1.0)")
    g.add_argument("--calibration", default="mse", choices=(*defaults.CALIBRATION_METHODS, "none"),
                   help="how a converted model (mobilenet_v2, resnet50, keras:NAME, a saved "
                   "model) fits each member's activation clip values and BN statistics to the "
                   "training split before the first epoch: mse (least squared error), "
                   "percentile, or none")
    g.add_argument("--bit-widths", nargs="+", type=_bits_list, default=list(defaults.BIT_WIDTHS),
                   help="the members' bit-widths (1..32)")
    g.add_argument("--member-loss-weights", nargs="+", type=_bits_value, default=None,
                   metavar="BITS:W",
                   help="cross-entropy weight per member, e.g. 1:2.0 (default: 1 each)")
    g.add_argument("--target-bits", type=int, default=None,
                   help="member used for predict and the best checkpoint (default: the "
                   "lowest of --bit-widths)")

    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=DEFAULT_DATASET,
                   help="TFDS name (digits, mnist, cifar10, cifar100, imagenet2012) or "
                   "'imagenet'; 'folder' reads --data-dir/train and --data-dir/val")
    g.add_argument("--data-dir", default=None,
                   help="TFDS data directory (manual_dir for imagenet2012), or the "
                   "image folder for --dataset folder (default: TFDS's own, "
                   "$TFDS_DATA_DIR or ~/tensorflow_datasets)")
    g.add_argument("-j", "--num-workers", type=int, default=None,
                   help="parallel data-loading calls (default: AUTOTUNE)")
    g.add_argument("--val-split", type=float, default=None, metavar="FRACTION",
                   help="for datasets without a validation split (mnist, cifar): hold out "
                   "this seeded fraction of train for validation (default: validate on the "
                   "test split, as the seed did; the report then says so)")
    g.add_argument("--augmentation", default="medium", choices=defaults.AUGMENTATIONS,
                   help="strength of training augmentation")

    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=30, help="number of training epochs")
    g.add_argument("--batch-size", type=int, default=64, help="batch size per device")
    g.add_argument("--optimizer", default="adam", choices=OPTIMIZERS,
                   help="optimizer of the ensemble's weights")
    g.add_argument("--lr", type=float, default=0.005, help="learning rate")
    g.add_argument("--lr-mode", default="cosine", choices=LR_MODES,
                   help="learning-rate schedule over the epochs (after the warmup)")
    g.add_argument("--lr-steps", type=str, default="30,60,90",
                   help="epochs at which --lr-mode step multiplies the lr by --lr-factor")
    g.add_argument("--lr-factor", type=float, default=0.1,
                   help="factor of each --lr-steps step, in (0, 1]")
    g.add_argument("--warmup-epochs", type=float, default=0.0,
                   help="epochs of linear warmup from 0 to --lr (may be fractional)")
    g.add_argument("--momentum", type=float, default=0.9, help="for sgd and nag")
    g.add_argument("--wd", type=float, default=0.0,
                   help="weight decay of the full-precision weights (stem, classifier, "
                   "BN, full-precision shortcuts); quantized kernels get none, as in "
                   "BMXNet (wd_mult 0)")
    g.add_argument("--seed", type=int, default=0,
                   help="random seed (initial weights, data order)")
    g.add_argument("--mode", default="hybrid", choices=defaults.MODES,
                   help="hybrid/symbolic: graph (tf.function); imperative: eager")
    g.add_argument("--dtype", default="float32", choices=defaults.DTYPES,
                   help="compute dtype (float16/bfloat16: mixed precision)")
    g.add_argument("--jit", action="store_true", help="compile the train step with XLA")
    g.add_argument("--member-backward", default=defaults.MEMBER_BACKWARD,
                   choices=defaults.MEMBER_BACKWARDS,
                   help="joint: one backward pass through every member (the activations of "
                   "all members alive at once); sequential: each member's forward and backward "
                   "in turn, gradients added (the memory of one member, the same update)")
    g.add_argument("--test-run", action="store_true",
                   help="one batch per epoch (smoke runs)")
    g.add_argument("--dry-run", action="store_true",
                   help="build the model, summarise each member, exit")
    g.add_argument("--resume", default=None,
                   help="weights file (.weights.h5) or result directory to start from "
                   "(default: fresh initialisation)")

    g = p.add_argument_group("knowledge distillation")
    g.add_argument("--teacher", default=None,
                   help="teacher architecture (default: no external teacher)")
    g.add_argument("--kd-mode", default="none", choices=KD_MODES,
                   help="simple: the teacher teaches every member; progressive: a chain "
                   "(teacher ->) highest bit-width -> next lower -> ... -> lowest; highest: "
                   "the highest member teaches every other; average: every member learns "
                   "from the members' mean logits")
    g.add_argument("--kd-warmup-epochs", type=float, default=0.0,
                   help="distillation starts after this many epochs (0: from the start)")
    g.add_argument("--kd-weights", nargs="+", type=_bits_value, default=None,
                   metavar="BITS:ALPHA",
                   help="distillation weight per student member, e.g. 1:2.0 2:1.5 "
                   "(default: --kd-weight for every member)")
    g.add_argument("--kd-temperatures", nargs="+", type=_bits_value, default=None,
                   metavar="BITS:T",
                   help="distillation temperature per student member (default: "
                   "--kd-temperature)")
    g.add_argument("--kd-teacher-mode", default="none", choices=KD_TEACHER_MODES,
                   help="the --teacher's training: pretrained_external (frozen), "
                   "untrained_external (trained alongside with the --teacher-* settings)")
    g.add_argument("--teacher-params", default=None,
                   help="weights file of the teacher (or of the teacher ensemble) "
                   "(default: the zoo's pretrained weights for pretrained_external)")
    g.add_argument("--two-stage", action="store_true",
                   help="the seed's two-stage recipe in one command: <result-path>/stage1 "
                   "trains with --fp-weights, then <result-path>/stage2 starts from its "
                   "weights with it as --ensemble-teacher")
    g.add_argument("--float-teacher", action=argparse.BooleanOptionalAction, default=None,
                   help="distil every member from the float original of a converted model "
                   "with trained weights (--model PATH), with --kd-mode simple unless another "
                   "mode is given; --no-float-teacher turns it off (default: on for a saved "
                   "model without another teacher)")
    g.add_argument("--ensemble-teacher", action="store_true",
                   help="a trained ensemble (--teacher-params) teaches member b with "
                   "its own member b")
    g.add_argument("--kd-temperature", type=float, default=defaults.KD_TEMPERATURE,
                   help="softmax temperature T of the distillation loss")
    g.add_argument("--kd-weight", type=float, default=defaults.KD_WEIGHT,
                   help="weight of the distillation loss beside the cross-entropy")
    g.add_argument("--kd-attention-weight", type=float, default=0.0,
                   help="weight of attention matching between the stage outputs of each "
                   "distillation pair (0: off)")
    g.add_argument("--teacher-lr", type=float, default=None,
                   help="learning rate of an untrained_external teacher (default: --lr)")
    g.add_argument("--teacher-wd", type=float, default=None,
                   help="weight decay of an untrained_external teacher (default: --wd)")
    g.add_argument("--teacher-lr-mode", default=None, choices=LR_MODES,
                   help="schedule of an untrained_external teacher (default: --lr-mode)")
    g.add_argument("--teacher-optimizer", default=None, choices=OPTIMIZERS,
                   help="optimizer of an untrained_external teacher (default: --optimizer)")
    g.add_argument("--teacher-momentum", type=float, default=None,
                   help="momentum of an untrained_external teacher (default: --momentum)")

    g = p.add_argument_group("devices")
    g.add_argument("--gpus", default=None,
                   help="comma-separated GPU ids, e.g. 0,1 (MirroredStrategy); '' for the "
                   "CPU (default: TensorFlow's choice of device)")
    g.add_argument("--cpu-replicas", type=int, default=None,
                   help="N logical CPU devices under MirroredStrategy (testing, CPU hosts) "
                   "(default: none)")
    g.add_argument("--sync-bn", action="store_true",
                   help="synchronise BatchNormalization statistics across replicas")
    g.add_argument("--deterministic", action="store_true",
                   help="seed everything and enable TensorFlow's op determinism")

    g = p.add_argument_group("output")
    g.add_argument("--result-path", "--result_path", dest="result_path", default=None,
                   help="result directory (default: results/<model>_<dataset>)")
    g.add_argument("--log", default=None, help="log file (default: <result-path>/train.log)")
    g.add_argument("--log-interval", type=int, default=50, help="batches between log lines")
    g.add_argument("--tensorboard-dir", default=None,
                   help="TensorBoard logs: every per-member metric and the learning rate "
                   "(default: <result-path>/tensorboard)")
    g.add_argument("--no-tensorboard", action="store_true",
                   help="write no TensorBoard logs")
    g.add_argument("--export", action="store_true",
                   help="export every member (SavedModel, TFLite) to <result-path>/export")

    g = p.add_argument_group("hyperparameter search")
    g.add_argument("--tune", default=None, choices=defaults.TUNERS,
                   help="search lr, wd, optimizer, the KD settings and the recipe levers "
                   "with keras-tuner; "
                   "trials and best.json go to <result-path>/tuning (default: no search)")
    g.add_argument("--max-trials", type=int, default=10, help="trials of the search")
    g.add_argument("--tune-objective", default="target",
                   help="what the search maximises: target (val_accuracy of --target-bits), "
                   "mean (the mean over members) or a member's bit-width")
    g.add_argument("--config", default=None,
                   help="JSON file of flag values (e.g. tuning/best.json); flags given on "
                   "the command line win (default: none)")
    return p


def validate(args: argparse.Namespace) -> argparse.Namespace:
    """Checks and normalises parsed flags; raises UsageError naming the flag."""
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
    if args.weight_quantization is None:  # the model's own default, recorded in config.json
        args.weight_quantization = defaults.default_weight_quantization(args.model)
    if defaults.is_model_file(args.model):  # config.json rebuilds it from any directory
        args.model = os.path.abspath(os.path.expanduser(args.model))
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
    _validate_distillation(args)
    from quantens.cluster import read_tf_config

    read_tf_config()  # a malformed TF_CONFIG is bad input too (DeviceError)
    if args.result_path is None:
        args.result_path = default_result_path(args.model, args.dataset)
    check_writable(args.result_path, "--result-path")
    if args.log is not None:
        if os.path.isdir(args.log):
            raise UsageError(f"--log {args.log} is a directory: name a file")
        if os.path.exists(args.log) and not os.access(args.log, os.W_OK):
            raise UsageError(f"--log {args.log} is not writable by this user")
        check_writable(os.path.dirname(os.path.abspath(args.log)), "--log")
    if args.tensorboard_dir is not None:
        if args.no_tensorboard:
            raise UsageError("--tensorboard-dir has no effect with --no-tensorboard: leave "
                             "one of them out")
        check_writable(args.tensorboard_dir, "--tensorboard-dir")
    _refuse_flags_without_effect(args)
    return args


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
    if given("calibration") and args.model in defaults.RESNET_E_MODELS:
        raise UsageError(
            f"--calibration {args.calibration} applies to converted networks (mobilenet_v2, "
            f"resnet50, keras:NAME, a saved model); --model {args.model} has learned its "
            "ranges: leave it out"
        )
    weights = dict(args.member_loss_weights or [])
    if all(weights.get(b, 1.0) == 0 for b in args.bit_widths):
        raise UsageError(
            "--member-loss-weights: every member's weight is 0, so no member would learn; "
            "give at least one member a positive weight"
        )


DEFAULTS = {action.dest: action.default for action in build_parser()._actions}
"""Every flag's default (what a flag that was not given holds)."""


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
    if args.kd_warmup_epochs and args.kd_warmup_epochs >= args.epochs:
        raise UsageError(
            f"--kd-warmup-epochs {args.kd_warmup_epochs:g} leaves no epoch of distillation "
            f"in --epochs {args.epochs}: choose fewer warm-up epochs"
        )
    for flag in PER_MEMBER_FLAGS:
        setattr(args, flag, _per_member(args, flag))
    objective = str(args.tune_objective)
    if objective.isdigit():
        objective = args.tune_objective = str(int(objective))  # 04 -> 4: the metric's name
    if objective not in ("target", "mean") and not (
            objective.isdigit() and int(objective) in args.bit_widths):
        raise UsageError(
            f"--tune-objective must be target, mean or a member's bit-width "
            f"({' '.join(map(str, args.bit_widths))}), got {objective}"
        )
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
                pair = _bits_value(pair)
            bits, value = int(pair[0]), float(pair[1])
        except (TypeError, ValueError, IndexError, argparse.ArgumentTypeError):
            raise UsageError(f"{name}: {pair!r} is not BITS:VALUE") from None
        if bits not in args.bit_widths:
            raise UsageError(
                f"{name}: {bits} bits is not a member (--bit-widths "
                f"{' '.join(map(str, args.bit_widths))})"
            )
        if bits in checked:
            raise UsageError(f"{name}: {bits} bits is given twice")
        positive = flag == "kd_temperatures"
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            raise UsageError(
                f"{name}: the value for {bits} bits must be a "
                f"{'positive' if positive else 'non-negative'} number, got {value}"
            )
        checked[bits] = value
    return [[b, v] for b, v in checked.items()]


def _config_defaults(parser: argparse.ArgumentParser, argv: list[str] | None) -> None:
    """Makes the values of `--config FILE` the defaults, so explicit flags win."""
    known, _ = parser.parse_known_args(argv)
    if known.config is None:
        return
    try:
        with open(known.config, encoding="utf-8") as f:
            values = json.load(f)
    except (OSError, ValueError) as error:
        parser.error(f"--config {known.config}: cannot read it as JSON ({error})")
    if not isinstance(values, dict):
        parser.error(f"--config {known.config}: expected a JSON object of flag values")
    actions = {action.dest: action for action in parser._actions}
    values = {k: v for k, v in values.items() if k not in DERIVED_KEYS}
    unknown = sorted(set(values) - set(actions))
    if unknown:
        parser.error(f"--config {known.config}: unknown flags {', '.join(unknown)}")
    for key, value in values.items():
        problem = _config_value_problem(actions[key], value)
        if problem:
            flag = max(actions[key].option_strings, key=len)
            parser.error(f"--config {known.config}: {key} ({flag}) {problem}, got {value!r}")
    parser.set_defaults(**{k: v for k, v in values.items() if k != "config"})


def _config_value_problem(action: argparse.Action, value) -> str | None:
    """Why a --config value cannot stand for the flag (None when it can), as argparse types it."""
    def number(v, kind):
        if kind is _bits_value:  # config.json stores [bits, value] pairs; "B:V" works too
            pair = isinstance(v, list) and len(v) == 2 and number(v[0], int) is None \
                and number(v[1], float) is None
            return None if pair or isinstance(v, str) else "a [bits, value] pair"
        if kind is int or kind is _bits_list:
            return None if isinstance(v, int) and not isinstance(v, bool) else "an integer"
        if kind is float:
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            return None if ok else "a finite number"
        return None if isinstance(v, str) else "a string"

    if value is None:
        return None if action.default is None else "must not be null"
    if isinstance(action, (argparse._StoreTrueAction, argparse.BooleanOptionalAction)):
        return None if isinstance(value, bool) else "must be true or false"
    if action.dest == "lr_steps" and isinstance(value, list):  # config.json stores a list
        return None if all(number(v, float) is None for v in value) else "must list numbers"
    if action.nargs in ("+", "*"):
        if not isinstance(value, list) or not value:
            return "must be a non-empty list"
        wanted = {number(v, action.type) for v in value} - {None}
        return f"must list only {wanted.pop().split(' ', 1)[1]}s" if wanted else None
    wanted = number(value, action.type)
    if wanted:
        return f"must be {wanted}"
    if action.choices is not None and value not in action.choices:
        return f"must be one of {', '.join(map(str, action.choices))}"
    return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses and validates; on bad input prints one line and exits with 2."""
    parser = build_parser()
    _config_defaults(parser, argv)
    args = parser.parse_args(argv)
    try:
        return validate(args)
    except QuantensError as error:
        parser.error(str(error))


def config_dict(args: argparse.Namespace) -> dict:
    """Every resolved flag, JSON-serialisable (written to config.json)."""
    return json.loads(json.dumps(vars(args), default=list))


def fail(message: str, code: int = 2, prog: str | None = None) -> None:
    """Prints `prog: error: <message>` and exits (no traceback)."""
    prog = prog or os.path.basename(sys.argv[0]) or "train.py"
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def legacy_model(config: dict, bit_widths=None):
    """The model of a result directory written before model.json, from its config.json flags.

    Raises `ConfigError` when the flags cannot be rebuilt (the zoo lives above
    the library, so only the command line does this).
    """
    from quantens.errors import ConfigError

    try:
        import zoo

        flags = config if bit_widths is None else {**config, "bit_widths": bit_widths}
        return zoo.create_model_from_flags(flags, config["input_shape"], config["num_classes"])
    except (ValueError, TypeError, KeyError) as error:
        raise ConfigError(f"cannot rebuild the model of config.json: {one_line(error)}") from error


def run_main(main: Callable[[], int], prog: str) -> int:
    """Runs an entry point; errors become one line `prog: error: ...` and an exit code.

    A `QuantensError` exits with its `exit_code`; a full disk with 1 and
    Ctrl-C with 130, each with what to do next (results are written whole,
    so re-running the same command resumes).
    """
    try:
        return main()
    except QuantensError as error:
        print(f"{prog}: error: {one_line(error, limit=1000)}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted: re-run the same command to resume", file=sys.stderr)
        return 130
    except Exception as error:
        full = _disk_full(error)
        if full is None:
            raise
        where = f" while writing {full}" if full else ""
        print(f"{prog}: error: no space left on device{where}; free space and re-run the "
              "same command to resume", file=sys.stderr)
        return 1


def _disk_full(error: BaseException) -> str | None:
    """The file being written when `error` (or its cause) says the disk is full ("" if unknown).

    None when it is another error. Python raises OSError(ENOSPC / EDQUOT);
    TensorFlow's writers an `OpError` whose message ends "No space left on device"
    (or "Disk quota exceeded") after the file name.
    """
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return error.filename or ""
        text = str(getattr(error, "message", "") or error)
        for phrase in (os.strerror(errno.ENOSPC), os.strerror(errno.EDQUOT)):
            if phrase in text:
                where = text[:text.index(phrase)].strip().rstrip(";:,").strip()
                return where if where.startswith(os.sep) and "\n" not in where else ""
        error = error.__cause__ or error.__context__
    return None
