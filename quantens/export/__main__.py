"""`python -m quantens.export RESULT_DIR`: the command `quantens.cli.export`."""

import sys

from quantens.cli.export import main

sys.exit(main())
