"""`python -m quantens.report RESULT_DIR` (`quantens-report`): report.md and plots of a run.

Bad input is one line `quantens.report: error: ...` (`quantens-report: error:
...` when started as the console script) and exit code 2.
"""

from __future__ import annotations

import os
import sys

from quantens.cli import Parser, legacy_model, program_name, run_main
from quantens.errors import ConfigError
from quantens.layout import ResultDir
from quantens.locking import ResultDirLock, check_unlocked
from quantens.startup import load_tensorflow

__all__ = ["PROG", "SCRIPT", "main"]

PROG = "quantens.report"
SCRIPT = "quantens-report"


def _report(result_dir: str, prog: str = PROG) -> int:
    from quantens.report import load_result

    check_unlocked(result_dir)  # a running directory: name its holder, nothing else
    result = load_result(result_dir)  # fails before TensorFlow loads
    with ResultDirLock(result_dir, prog):
        load_tensorflow()  # quietly: the writers and the size estimate use it
        from quantens.report import write_report

        model = None
        if result.export is None and not os.path.isfile(ResultDir(result_dir).model):
            try:
                model = legacy_model(result.config, result.metrics["bit_widths"])
            except ConfigError:
                model = None  # the report then says the sizes are unknown
        print(write_report(result, model=model))
    return 0


def main(argv: list[str] | None = None) -> int:
    prog = program_name(SCRIPT, PROG)
    parser = Parser(
        prog=SCRIPT if prog == SCRIPT else f"python -m {PROG}", error_prog=prog,
        description="Write RESULT_DIR/report.md and PNG plots for a train.py result directory.",
    )
    parser.add_argument("result_dir", help="the --result-path of a train.py run")
    args = parser.parse_args(argv)
    return run_main(lambda: _report(args.result_dir, prog), prog)


if __name__ == "__main__":
    sys.exit(main())
