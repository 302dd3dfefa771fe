"""`python -m quantens.export RESULT_DIR` (`quantens-export`): export every member of a run.

Bad input is one line `quantens.export: error: ...` (`quantens-export: error:
...` when started as the console script) and exit code 2. A result
directory written before model.json existed is rebuilt from its config.json
flags through the zoo.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable

from quantens.cli import Parser, check_writable, legacy_model, program_name, run_main
from quantens.cli.flags import budget_bytes
from quantens.errors import UsageError
from quantens.layout import ResultDir
from quantens.locking import ResultDirLock, check_unlocked
from quantens.startup import load_tensorflow

__all__ = ["PROG", "SCRIPT", "build_parser", "main", "validate"]

PROG = "quantens.export"
SCRIPT = "quantens-export"


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The parser; `prog` defaults to `quantens-export` as that console script, else PROG."""
    parser = Parser(
        prog=prog or program_name(SCRIPT, PROG),
        description="Export every member of a trained ensemble on its own: one SavedModel "
        "(a signature per bit-width) and a TFLite file per member (float32, int8 on the "
        "member's grid, or Larq Compute Engine for 1 bit), with export.json.",
    )
    parser.add_argument("result_dir", help="a result directory of train.py --result-path")
    parser.add_argument("--weights", default=ResultDir.WEIGHTS,
                        help="weights file inside RESULT_DIR (e.g. best.weights.h5)")
    parser.add_argument("--out", default=None, help="export directory (default RESULT_DIR/export)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="batch size for validation (default: the run's)")
    parser.add_argument("--no-eval", action="store_true",
                        help="skip the fidelity check on the test split")
    parser.add_argument("--eval-examples", type=int, default=None,
                        help="check fidelity on the first N test examples (default all)")
    parser.add_argument("--no-int4", action="store_true",
                        help="keep every int8 filter int8: no packed INT4 (XNNPACK, TFLite's "
                        "default CPU delegate, runs int8 filters only; INT4 ones run on the "
                        "slower builtin kernels)")
    parser.add_argument("--budget-kb", type=budget_bytes, action="append", default=None,
                        metavar="KB", dest="budgets",
                        help="also export the most accurate member whose file fits KB kilobytes "
                        "(1 kB = 1000 bytes), searched per layer on the run's validation split "
                        "(quantens.budget.search_policy): member_budget_<KB>kb.tflite; repeat "
                        "for more budgets (default: none)")
    return parser


def validate(args: argparse.Namespace) -> argparse.Namespace:
    """Checks the flags before anything is read or written; raises UsageError naming the flag."""
    for flag in ("batch_size", "eval_examples"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UsageError(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    if args.no_eval and args.eval_examples is not None:
        raise UsageError("--eval-examples has no effect with --no-eval: leave one of them out")
    if args.out is not None:
        check_writable(args.out, "--out")
    return args


def _export(args: argparse.Namespace, prog: str = PROG) -> int:
    from quantens.export import read_result_config

    check_unlocked(args.result_dir)  # a running directory: name its holder, nothing else
    config = read_result_config(args.result_dir, args.weights)  # before TensorFlow loads
    with ResultDirLock(args.result_dir, prog):  # no export while a run writes the directory
        load_tensorflow()  # quietly: its start-up lines would bury a one-line error
        from quantens.export import export_result_dir, summary_table

        run = ResultDir(args.result_dir)
        model = None if os.path.isfile(run.model) else legacy_model(config)
        report = export_result_dir(
            args.result_dir, args.out, weights=args.weights, batch_size=args.batch_size,
            evaluate=not args.no_eval, max_val_examples=args.eval_examples, model=model,
            remove_stale=True, pack_int4=not args.no_int4,
        )
        budgets = {}
        if args.budgets:
            from quantens.budget import export_result_budgets

            budgets = export_result_budgets(
                args.result_dir, args.budgets, args.out,
                weights=args.weights, batch_size=args.batch_size, evaluate=not args.no_eval,
                max_test_examples=args.eval_examples, model=model,
            )
    print(summary_table(report))
    for name, record in budgets.items():
        accuracy = (record.get("fidelity") or {}).get("tflite_accuracy")
        print(f"{name}: {record['file']} {record['format']} {record['bytes']} bytes, "
              f"validation accuracy {record['search']['validation_accuracy']:.4f}"
              + (f", TFLite test accuracy {accuracy:.4f}" if accuracy is not None else "")
              + f", {record['latency_ms']:.3f} ms; "
              + (f"member {record['policy']}" if isinstance(record["policy"], int) else
                 "bits per layer: " + " ".join(f"{layer}={b}"
                                               for layer, b in record["policy"].items())))
    print(f"export in {args.out or run.export} ({report['export_seconds']:.0f} s)")
    return 0


def main(argv: Iterable[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(None if argv is None else list(argv))
    try:
        validate(args)
    except UsageError as error:
        parser.error(str(error))
    return run_main(lambda: _export(args, parser.prog), parser.prog)


if __name__ == "__main__":
    sys.exit(main())
