"""The flags of `train.py`: the parser, one function per flag group, every default.

The seed's flags, same names and meanings; `--help` lists them in the groups
model, data, training, knowledge distillation, devices, output and
hyperparameter search, each default once.
"""

from __future__ import annotations

import argparse
import math
import re

from quantens import defaults
from quantens.cli.programs import Parser, program_name
from quantens.defaults import KD_MODES, KD_TEACHER_MODES, LR_MODES, OPTIMIZERS

__all__ = [
    "DEFAULTS",
    "DEFAULT_DATASET",
    "DEFAULT_MODEL",
    "HelpFormatter",
    "bits_list",
    "bits_value",
    "budget_bytes",
    "build_parser",
]

DEFAULT_MODEL = defaults.MODEL
DEFAULT_DATASET = defaults.DATASET


def bits_value(value: str) -> list:
    """`B:V` (a member's bit-width and a number) as [B, V]."""
    bits, sep, number = str(value).partition(":")
    try:
        if not sep:
            raise ValueError
        return [int(bits), float(number)]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not BITS:VALUE (e.g. 1:2.0)") from None


def bits_list(value: str) -> int:
    """A --bit-widths entry as an integer (argparse's type for it)."""
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None


def budget_bytes(value: str) -> int:
    """A --budget-kb value (kilobytes of 1000 bytes, a finite number > 0) as bytes
    (argparse's type for it, in train.py and quantens-export)."""
    try:
        kb = float(value)
    except ValueError:
        kb = math.nan
    if not math.isfinite(kb) or kb <= 0:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a positive number of kilobytes (1 kB = 1000 bytes)")
    return round(kb * defaults.KB)


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
    p = Parser(
        prog=prog,
        description=(
            "Train an ensemble of quantized networks with shared weights (one member per\n"
            "bit-width), optionally with knowledge distillation. The flags are those of the\n"
            "MXNet/BMXNet code: its example commands run unchanged."
        ),
        epilog=_epilog(prog),
        formatter_class=HelpFormatter,
    )
    _add_model_flags(p)
    _add_data_flags(p)
    _add_training_flags(p)
    _add_distillation_flags(p)
    _add_device_flags(p)
    _add_output_flags(p)
    _add_search_flags(p)
    return p


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    """The "model" flags: architecture, quantizers and members."""
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
        choices=defaults.ACTIVATION_METHOD_CHOICES,
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
    g.add_argument("--calibration", default=defaults.CALIBRATION, choices=(*defaults.CALIBRATION_METHODS, "none"),
                   help="how a converted model (mobilenet_v2, resnet50, keras:NAME, a saved "
                   "model) fits each member's activation clip values and BN statistics to the "
                   "training split before the first epoch: mse (least squared error), "
                   "percentile, or none")
    g.add_argument("--bit-widths", nargs="+", type=bits_list, default=list(defaults.BIT_WIDTHS),
                   help="the members' bit-widths (1..32)")
    g.add_argument("--member-loss-weights", nargs="+", type=bits_value, default=None,
                   metavar="BITS:W",
                   help="cross-entropy weight per member, e.g. 1:2.0 (default: 1 each)")
    g.add_argument("--target-bits", type=int, default=None,
                   help="member used for predict and the best checkpoint (default: the "
                   "lowest of --bit-widths)")
    g.add_argument("--mixed-students", type=int, default=0, metavar="N",
                   help="each training step adds N per-layer mixes of the bit-widths below "
                   "32 as extra students (cross-entropy, and distillation from the teacher or "
                   "else the highest member), drawn from a pool of max(8, N) mixes seeded by "
                   "--seed (Bit-Mixer's last stage), for mixed members "
                   "(QuantEnsemble.member(policy)); 0: the uniform members only")


def _add_data_flags(p: argparse.ArgumentParser) -> None:
    """The "data" flags: dataset, data directory, splits, augmentation and input preprocessing."""
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
    g.add_argument("--augmentation", default=defaults.AUGMENTATION, choices=defaults.AUGMENTATIONS,
                   help="strength of training augmentation")
    g.add_argument("--input-preprocessing", default=None, choices=defaults.INPUT_PREPROCESSINGS,
                   help="what the model is fed in place of the pixels x in [0, 255]: "
                   "standardized ((x - mean) / std, the dataset's), none (x: a model with its "
                   "own Rescaling), unit (x / 255), symmetric (x / 127.5 - 1), caffe or torch "
                   "(keras.applications' modes, RGB only); a saved float model (--model PATH) "
                   "is checked against the others before training (default: standardized)")


def _add_training_flags(p: argparse.ArgumentParser) -> None:
    """The "training" flags: epochs, optimizer, schedule, seed and run modes."""
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=defaults.EPOCHS, help="number of training epochs")
    g.add_argument("--batch-size", type=int, default=defaults.BATCH_SIZE, help="batch size per device")
    g.add_argument("--optimizer", default=defaults.OPTIMIZER, choices=OPTIMIZERS,
                   help="optimizer of the ensemble's weights")
    g.add_argument("--lr", type=float, default=defaults.LR, help="learning rate")
    g.add_argument("--lr-mode", default=defaults.LR_MODE, choices=LR_MODES,
                   help="learning-rate schedule over the epochs (after the warmup)")
    g.add_argument("--lr-steps", type=str, default="30,60,90",
                   help="epochs at which --lr-mode step multiplies the lr by --lr-factor")
    g.add_argument("--lr-factor", type=float, default=defaults.LR_FACTOR,
                   help="factor of each --lr-steps step, in (0, 1]")
    g.add_argument("--warmup-epochs", type=float, default=0.0,
                   help="epochs of linear warmup from 0 to --lr (may be fractional)")
    g.add_argument("--momentum", type=float, default=defaults.MOMENTUM, help="for sgd and nag")
    g.add_argument("--wd", type=float, default=defaults.WEIGHT_DECAY,
                   help="weight decay of the full-precision weights (stem, classifier, "
                   "BN, full-precision shortcuts); quantized kernels get none, as in "
                   "BMXNet (wd_mult 0)")
    g.add_argument("--seed", type=int, default=defaults.SEED,
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


def _add_distillation_flags(p: argparse.ArgumentParser) -> None:
    """The "knowledge distillation" flags: teachers and the KD loss."""
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
    g.add_argument("--kd-weights", nargs="+", type=bits_value, default=None,
                   metavar="BITS:ALPHA",
                   help="distillation weight per student member, e.g. 1:2.0 2:1.5 "
                   "(default: --kd-weight for every member)")
    g.add_argument("--kd-temperatures", nargs="+", type=bits_value, default=None,
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


def _add_device_flags(p: argparse.ArgumentParser) -> None:
    """The "devices" flags: GPUs, CPU replicas, synchronised BN, determinism."""
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


def _add_output_flags(p: argparse.ArgumentParser) -> None:
    """The "output" flags: result directory, logs, TensorBoard, export."""
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
    g.add_argument("--budget-kb", type=budget_bytes, action="append", default=None,
                   metavar="KB", dest="budgets",
                   help="with --export: also export the most accurate member whose file fits "
                   "KB kilobytes (1 kB = 1000 bytes), searched per layer on the validation "
                   "split: export/member_budget_<KB>kb.tflite; repeat for more budgets (default: "
                   "none)")


def _add_search_flags(p: argparse.ArgumentParser) -> None:
    """The "hyperparameter search" flags: the keras-tuner search and --config."""
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


DEFAULTS = {action.dest: action.default for action in build_parser()._actions}
"""Every flag's default (what a flag that was not given holds)."""
