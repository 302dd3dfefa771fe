"""`python -m quantens.report RESULT_DIR`: the command `quantens.cli.report`."""

import sys

from quantens.cli.report import main

sys.exit(main())
