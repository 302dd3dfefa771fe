#!/usr/bin/env python
"""Latency and size of every exported member: float32, int8 on the grid, LCE 1-bit.

For each model, every member is converted as `python -m quantens.export` does
(`quantens.export.convert_member`), then run one example at a time (batch 1)
with 1 and 2 threads: TensorFlow's TFLite interpreter (XNNPACK) for float32 and
int8 files, Larq Compute Engine's interpreter (XNNPACK for its float ops) for
the 1-bit file. Latency is the median of `--repeats` calls after warm-up, timed
in rounds that rotate over all members so that load from other processes hits
them alike; ratios are against the float32 (32-bit) member.

```
python benchmarks/bench_export.py                      # digits model, 1 and 2 threads
python benchmarks/bench_export.py --resnet18           # + resnet18_e1 at 224x224x3
python benchmarks/bench_export.py --result-dir DIR     # a trained result directory
```

Models: `digits_resnet_e` (width 32, the zoo's default, 8x8x1, trained weights
with `--result-dir`, random otherwise) and, with `--resnet18`,
`resnet18_e1` at 224x224x3 with 1000 classes and random weights (fine for
latency; int8 ranges are calibrated on random inputs). LCE runs its indirect
BGEMM binary kernel (exact; on x86 several times faster than its default
kernel, which `--lce-default-kernel` measures instead). LCE's kernels are tuned
for ARM (phones, Raspberry Pi); x86 numbers say little about those.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import quantens  # noqa: E402  (tf-keras before TensorFlow)
from quantens import export  # noqa: E402

BITS = (32, 8, 4, 2, 1)


def _digits(result_dir: str | None):
    import quantens.data as qd
    import zoo

    if result_dir:
        ensemble, config = export.load_result_ensemble(result_dir)
        data_dir = config.get("data_dir")
    else:
        model = zoo.create_model("digits_resnet_e", bit_widths=BITS)
        ensemble, data_dir = quantens.QuantEnsemble(model, BITS), None
    x, _ = next(iter(qd.load("digits", "train", 512, data_dir=data_dir)))
    return ensemble, x.numpy()


def _resnet18():
    import zoo

    model = zoo.create_model("resnet18_e1", input_shape=(224, 224, 3), num_classes=1000,
                             bit_widths=BITS)
    x = np.random.default_rng(0).normal(size=(8, 224, 224, 3)).astype(np.float32)
    return quantens.QuantEnsemble(model, BITS), x


def _timed_call(runner, example) -> float:
    start = time.perf_counter()
    runner.run_one(example)
    return time.perf_counter() - start


def bench_model(name: str, ensemble, x: np.ndarray, repeats: int, threads=(1, 2),
                lce_indirect_bgemm: bool = True, rounds: int = 5) -> dict:
    """Converts every member, then times them all in `rounds` rotating rounds.

    Each round times `repeats / rounds` calls of every (member, threads) pair
    in turn, so load from other processes hits all alike; latency is the median
    over all calls.
    """
    rows, runners = [], {}
    example = x[:1]
    for b in ensemble.bit_widths:
        start = time.perf_counter()
        flatbuffer, fmt, _ = export.convert(ensemble.member(b), b, calibration_data=x)
        convert_s = time.perf_counter() - start
        print(f"  {name}: {b:>2} bits converted in {convert_s:.1f} s", file=sys.stderr)
        rows.append({
            "bits": b,
            "format": fmt,
            "bytes": len(flatbuffer),
            "convert_seconds": round(convert_s, 2),
        })
        for t in threads:
            runner = export.TFLiteRunner(flatbuffer, num_threads=t,
                                         lce_indirect_bgemm=lce_indirect_bgemm)
            for _ in range(3):  # warm-up
                runner.run_one(example)
            runners[b, t] = runner
    times: dict[tuple, list[float]] = {key: [] for key in runners}
    keys = list(runners)
    per_round = max(1, repeats // rounds)
    for r in range(rounds):
        for key in keys[r % len(keys):] + keys[: r % len(keys)]:
            times[key] += [_timed_call(runners[key], example) for _ in range(per_round)]
    for row in rows:
        row["latency_ms"] = {str(t): round(1e3 * statistics.median(times[row["bits"], t]), 4)
                             for t in threads}
    base = next(r for r in rows if r["bits"] == max(ensemble.bit_widths))
    for row in rows:
        row["size_ratio"] = round(row["bytes"] / base["bytes"], 4)
        row["latency_ratio"] = {t: round(v / base["latency_ms"][t], 3)
                                for t, v in row["latency_ms"].items()}
    return {"model": name, "input_shape": list(x.shape[1:]), "calls_per_member": per_round * rounds,
            "members": rows}


def table(result: dict) -> str:
    threads = list(result["members"][0]["latency_ms"])
    head = "bits  format        bytes  size/fp32  " + "  ".join(
        f"{t} thr ms  /fp32" for t in threads)
    lines = [f"{result['model']} {tuple(result['input_shape'])}", head, "-" * len(head)]
    for r in result["members"]:
        cells = "  ".join(
            f"{r['latency_ms'][t]:>8.3f}  {r['latency_ratio'][t]:>5.2f}" for t in threads)
        lines.append(f"{r['bits']:>4}  {r['format']:<7}  {r['bytes']:>11}  "
                     f"{r['size_ratio']:>9.3f}  {cells}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resnet18", action="store_true",
                        help="also resnet18_e1 at 224x224x3 (about a minute of conversion)")
    parser.add_argument("--result-dir", default=None,
                        help="take the digits ensemble from a result directory of train.py")
    parser.add_argument("--repeats", type=int, default=200,
                        help="timed calls per member and thread count (resnet18: a tenth)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                        help="interpreter thread counts")
    parser.add_argument("--lce-default-kernel", action="store_true",
                        help="run the 1-bit files with LCE's default binary kernel")
    parser.add_argument("--out", default=os.path.join("benchmarks", "results",
                                                      "bench_export.json"),
                        help="JSON output path (results/ is not committed)")
    args = parser.parse_args(argv)

    import tensorflow as tf

    results = []
    ensemble, x = _digits(args.result_dir)
    indirect = not args.lce_default_kernel
    results.append(bench_model("digits_resnet_e", ensemble, x, args.repeats,
                               tuple(args.threads), lce_indirect_bgemm=indirect))
    print(table(results[-1]) + "\n")
    if args.resnet18:
        start = time.perf_counter()
        ensemble, x = _resnet18()
        results.append(bench_model("resnet18_e1", ensemble, x, max(5, args.repeats // 10),
                                   tuple(args.threads), lce_indirect_bgemm=indirect))
        results[-1]["total_seconds"] = round(time.perf_counter() - start, 1)
        print(table(results[-1]))
        print(f"(resnet18_e1: {results[-1]['total_seconds']:.0f} s for conversion and "
              "timing)\n")
    report = {
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "tensorflow": tf.__version__, "load_average": os.getloadavg()},
        "lce_kernel": "indirect_bgemm" if indirect else "default",
        "results": results,
    }
    from quantens.results import write_json

    write_json(args.out, report)
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
