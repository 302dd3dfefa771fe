#!/usr/bin/env python
"""DoReFa vs the narrow-range weight grid: accuracy, file size and latency per member.

For each weight grid and seed, `train.py --weight-quantization GRID --seed S
--export` trains the default digits ensemble (its default budget) and exports
it; the table gives, per member, the test accuracy of the Keras member and of
its TFLite file (mean ± std over seeds, from export.json), the file's size and
how many filters are packed INT4, and the 1-thread batch-1 latency of the
seed-0 files with XNNPACK on and off (`bench_export.bench_model`, all files of
both grids timed in the same rotating rounds).

```
python benchmarks/bench_weight_grid.py --seeds 0 1 2 --out /tmp/bench_grid
```
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _report import write_result  # noqa: E402

GRIDS = ("dorefa", "narrow")


def train(grid: str, seed: int, bits, out: str, extra) -> str:
    run = os.path.join(out, f"{grid}_seed{seed}")
    if not os.path.isfile(os.path.join(run, "export", "export.json")):
        command = [sys.executable, os.path.join(ROOT, "train.py"), "--weight-quantization",
                   grid, "--seed", str(seed), "--bit-widths", *map(str, bits), "--export",
                   "--no-tensorboard", "--result-path", run, *extra]
        print(" ".join(command[1:]), file=sys.stderr)
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return run


def mean_std(values) -> str:
    values = [100 * v for v in values]
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {std:.2f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--bit-widths", type=int, nargs="+", default=[32, 8, 4, 2, 1])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--out", default="bench_weight_grid")
    args, extra = parser.parse_known_args(argv)  # the rest goes to train.py
    os.makedirs(args.out, exist_ok=True)
    runs = {g: [train(g, s, args.bit_widths, args.out, extra) for s in args.seeds]
            for g in GRIDS}

    from bench_export import bench_model

    from quantens import export
    from quantens.data import load

    timing = {}
    for grid in GRIDS:
        ensemble, config = export.load_result_ensemble(runs[grid][0])
        x, _ = next(iter(load("digits", "train", 256, data_dir=config.get("data_dir"))))
        timing[grid] = bench_model(f"digits_resnet_e ({grid})", ensemble, x.numpy(),
                                   args.repeats, threads=(1,), xnnpack=(True, False))
    result = {"bit_widths": args.bit_widths, "seeds": args.seeds, "train_flags": extra,
              "grids": {}}
    lines = ["| grid | bits | Keras test acc % | TFLite test acc % | bytes | INT4 filters | "
             "1-thread ms (XNNPACK) | 1-thread ms (builtin) |", "|---|---|---|---|---|---|---|---|"]
    for grid in GRIDS:
        reports = []
        for run in runs[grid]:
            with open(os.path.join(run, "export", "export.json")) as f:
                reports.append(json.load(f))
        rows = {}
        for b in args.bit_widths:
            members = [r["members"][str(b)] for r in reports]
            row = next(t for t in timing[grid]["members"]
                       if t["bits"] == b and t["variant"] != "int8")
            rows[b] = {
                "keras_accuracy": [m["fidelity"]["keras_accuracy"] for m in members],
                "tflite_accuracy": [m["fidelity"]["tflite_accuracy"] for m in members],
                "format": members[0]["format"], "bytes": members[0]["bytes"],
                "int4_tensors": (members[0].get("weights_storage") or {}).get("int4_tensors", 0),
                "latency_ms": row["latency_ms"],
                # the runtimes that measured them (quantens.export.runtime)
                "tflite_accuracy_runtime": sorted({
                    f"{m['fidelity']['interpreter']} {m['fidelity'].get('interpreter_version')}"
                    for m in members}),
                "latency_runtime": row["runtime"],
            }
            r = rows[b]
            lines.append(
                f"| {grid} | {b} | {mean_std(r['keras_accuracy'])} | "
                f"{mean_std(r['tflite_accuracy'])} | {r['bytes']:,} ({r['format']}) | "
                f"{r['int4_tensors']} | {r['latency_ms']['1']:.3f} | "
                f"{r['latency_ms']['1 no-xnnpack']:.3f} |")
        result["grids"][grid] = {"runs": runs[grid], "members": rows,
                                 "timing": timing[grid]}
    write_result(args.out, result, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
