"""Writing a benchmark's result: `result.json` and the Markdown table `result.md`."""

from __future__ import annotations

import json
import os

import numpy as np


def write_result(out_dir: str, result: dict, table: str) -> None:
    """Writes `out_dir/result.json` (numpy numbers as Python ones) and `result.md`; prints the table."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "result.json"), "w") as f:
        json.dump(result, f, indent=1,
                  default=lambda o: o.item() if isinstance(o, np.generic) else str(o))
    with open(os.path.join(out_dir, "result.md"), "w") as f:
        f.write(table + "\n")
    print(table)
