#!/usr/bin/env python
"""Accuracy per bit-width on `digits` for KD modes none / simple / progressive.

Each configuration runs `train.py` as a user would, once per seed, and the
table reports mean ± std of the test accuracy of every member. The model is
the small digits ResNetE made narrow (`--width 4`) so that the 1-bit member is
clearly below the 32-bit one. The teacher (cifar_resnet20_v1) is trained
jointly (`--kd-teacher-mode untrained_external`).

    python benchmarks/bench_kd.py --seeds 0 1 2 --out benchmarks/results/kd_digits.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

from quantens.layout import ResultDir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = ["--width", "4", "--epochs", "30"]
TEACHER = ["--teacher", "cifar_resnet20_v1", "--kd-teacher-mode", "untrained_external"]
CONFIGS = {
    "none": ["--kd-mode", "none"],
    "simple": ["--kd-mode", "simple", *TEACHER],
    "progressive": ["--kd-mode", "progressive", *TEACHER],
}


def run(mode: str, seed: int, work: str, extra: list[str]) -> dict:
    result_path = os.path.join(work, f"{mode}_{seed}")
    command = [sys.executable, "train.py", *BASE, *CONFIGS[mode], "--seed", str(seed),
               "--result-path", result_path, *extra]
    print("$", " ".join(command[1:]), flush=True)
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    with open(ResultDir(result_path).metrics) as f:
        return json.load(f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--modes", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--out", default=None, help="JSON file for the results")
    parser.add_argument("extra", nargs="*", help="more train.py flags (after --)")
    args = parser.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as work:
        for mode in args.modes:
            runs = [run(mode, seed, work, args.extra) for seed in args.seeds]
            bits = runs[0]["bit_widths"]
            acc = {b: [r["val_accuracy"][str(b)] for r in runs] for b in bits}
            teacher = [r["teacher_val_accuracy"] for r in runs if r["teacher_val_accuracy"]]
            rows[mode] = {
                "bit_widths": bits,
                "mean": {str(b): float(np.mean(v)) for b, v in acc.items()},
                "std": {str(b): float(np.std(v)) for b, v in acc.items()},
                "runs": [r["val_accuracy"] for r in runs],
                "teacher_mean": float(np.mean(teacher)) if teacher else None,
            }
    bits = next(iter(rows.values()))["bit_widths"]
    print(f"\ntest accuracy on digits, width 4, seeds {args.seeds} (mean ± std)")
    print("mode         " + "".join(f"{b:>17}" for b in bits) + "          teacher")
    for mode, row in rows.items():
        cells = "".join(f"  {row['mean'][str(b)]:.4f} ± {row['std'][str(b)]:.4f}" for b in bits)
        teacher = f"  {row['teacher_mean']:.4f}" if row["teacher_mean"] else "  -"
        print(f"{mode:<12} {cells}{teacher}")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"seeds": args.seeds, "flags": BASE, "configs": CONFIGS, "rows": rows},
                      f, indent=2)


if __name__ == "__main__":
    main()
