"""The command line: the seed's flags of `train.py`, same names and meanings, and the entry points.

With the zoo's two commands (`zoo.evaluate`, `zoo.pretrained`), the command-line
layer is the only code that parses flags, prints `prog: error: ...` and exits:
`quantens.cli.train` (train.py), `quantens.cli.export` (`python -m quantens.export`),
`quantens.cli.report` (`python -m quantens.report`).
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

The package by concern (its public names are also here, `quantens.cli.X`):

| module | what |
|---|---|
| `programs` | every command's name, one-line errors and exit codes (`run_main`) |
| `flags` | `train.py`'s parser: one function per flag group, `DEFAULTS` |
| `validation` | `validate`: ranges, combinations, paths, flags without effect |
| `config_file` | `--config FILE`: a JSON file of flag values as the defaults |
| `train` | `train.py`: build data, ensemble, callbacks, fit, metrics, export, report |
| `tune` | `train.py --tune`: flags into a search (`quantens.tuning`) and back |
| `export`, `report` | `python -m quantens.export` / `quantens.report` |
"""

from __future__ import annotations

import argparse
import json

from quantens.cli.config_file import config_defaults
from quantens.cli.flags import (
    DEFAULT_DATASET,
    DEFAULT_MODEL,
    DEFAULTS,
    HelpFormatter,
    build_parser,
)
from quantens.cli.programs import CONSOLE_SCRIPTS, Parser, fail, program_name, run_main
from quantens.cli.validation import (
    FLOAT_FLAGS,
    PER_MEMBER_FLAGS,
    check_weights_file,
    check_writable,
    default_result_path,
    validate,
)
from quantens.defaults import (  # noqa: F401  (the CLI's names for them)
    ARCHITECTURE_FLAGS,
    DERIVED_KEYS,
    KD_MODES,
    KD_TEACHER_MODES,
    LR_MODES,
    OPTIMIZERS,
)
from quantens.errors import QuantensError, one_line
from quantens.startup import load_tensorflow, quiet_native_logs  # noqa: F401  (re-exported)

__all__ = [
    "ARCHITECTURE_FLAGS",
    "CONSOLE_SCRIPTS",
    "DEFAULTS",
    "DEFAULT_DATASET",
    "DEFAULT_MODEL",
    "DERIVED_KEYS",
    "FLOAT_FLAGS",
    "KD_MODES",
    "KD_TEACHER_MODES",
    "LR_MODES",
    "OPTIMIZERS",
    "PER_MEMBER_FLAGS",
    "HelpFormatter",
    "Parser",
    "build_parser",
    "check_weights_file",
    "check_writable",
    "config_dict",
    "default_result_path",
    "fail",
    "legacy_model",
    "load_tensorflow",
    "parse_args",
    "program_name",
    "quiet_native_logs",
    "run_main",
    "validate",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses and validates; on bad input prints one line and exits with 2."""
    parser = build_parser()
    config_defaults(parser, argv)
    args = parser.parse_args(argv)
    try:
        return validate(args)
    except QuantensError as error:
        parser.error(str(error))


def config_dict(args: argparse.Namespace | dict) -> dict:
    """Every resolved flag, JSON-serialisable (written to config.json)."""
    flags = args if isinstance(args, dict) else vars(args)
    return json.loads(json.dumps(flags, default=list))


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
