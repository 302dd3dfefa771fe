#!/usr/bin/env python
"""Train a shared-weight ensemble of quantized networks: parse, build, fit, report.

With no flags it trains a 5-member ensemble (32 8 4 2 1 bits) of a small
ResNetE on the embedded `digits` dataset and prints the test accuracy of
every member. The flags are those of the MXNet/BMXNet code base
(`python train.py --help`); its example commands run unchanged. The command
itself is `quantens.cli.train` (also installed as `quantens-train`).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from quantens.cli.train import accuracy_table, main, run  # noqa: E402,F401

if __name__ == "__main__":
    sys.exit(main())
