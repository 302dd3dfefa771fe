#!/usr/bin/env python
"""Latency and size of every exported member: float32, int8 on the grid, LCE 1-bit.

For each model, every member is converted as `python -m quantens.export` does
(`quantens.export.convert_member`), then run one example at a time (batch 1)
with 1 and 2 threads: LiteRT's interpreter (`ai_edge_litert`, where installed;
TensorFlow's `tf.lite.Interpreter` otherwise or with `--runtime tensorflow`;
XNNPACK) for float32 and int8 files, Larq Compute Engine's interpreter (XNNPACK
for its float ops) for the 1-bit file; each row's `runtime` names the one used. Latency is the median of `--repeats` calls after warm-up, timed
in rounds that rotate over all members so that load from other processes hits
them alike; ratios are against the float32 (32-bit) member.

```
python benchmarks/bench_export.py                      # digits model, 1 and 2 threads
python benchmarks/bench_export.py --resnet18           # + resnet18_e1 at 224x224x3
python benchmarks/bench_export.py --result-dir DIR     # a trained result directory
python benchmarks/bench_export.py --weight-quantization narrow --bit-widths 32 8 4 3 2 1 \
    --threads 1 --no-xnnpack                           # packed INT4 vs int8, XNNPACK on/off
python benchmarks/bench_export.py --runtime litert tensorflow  # LiteRT and tf.lite side by side
```

Members whose filters are packed as INT4 are timed next to their int8 twin
(rows `packed` and `int8`).

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
from quantens.export.runtime import choose_runtime  # noqa: E402

BITS = (32, 8, 4, 2, 1)


def _digits(result_dir: str | None, weight_quantization: str = "dorefa", bits=BITS):
    import quantens.data as qd
    import zoo

    if result_dir:
        ensemble, config = export.load_result_ensemble(result_dir)
        data_dir = config.get("data_dir")
    else:
        model = zoo.create_model("digits_resnet_e", bit_widths=bits,
                                 weight_quantization=weight_quantization)
        ensemble, data_dir = quantens.QuantEnsemble(model, bits), None
    x, _ = next(iter(qd.load("digits", "train", 512, data_dir=data_dir)))
    return ensemble, x.numpy()


def _resnet18(weight_quantization: str = "dorefa", bits=BITS):
    import zoo

    model = zoo.create_model("resnet18_e1", input_shape=(224, 224, 3), num_classes=1000,
                             bit_widths=bits, weight_quantization=weight_quantization)
    x = np.random.default_rng(0).normal(size=(8, 224, 224, 3)).astype(np.float32)
    return quantens.QuantEnsemble(model, bits), x


def _timed_call(runner, example) -> float:
    start = time.perf_counter()
    runner.run_one(example)
    return time.perf_counter() - start


def bench_model(name: str, ensemble, x: np.ndarray, repeats: int, threads=(1, 2),
                lce_indirect_bgemm: bool = True, rounds: int = 5,
                xnnpack=(True,), runtimes=(None,)) -> dict:
    """Converts every member, then times them all in `rounds` rotating rounds.

    An int8 member whose filters were packed as INT4 is timed twice: the
    packed file (`variant` "packed") and its int8 twin ("int8"). `xnnpack`
    lists the interpreter settings to time: True (the default XNNPACK
    delegate) and/or False (TFLite's builtin kernels only). Each round times
    `repeats / rounds` calls of every (member, variant, threads, xnnpack) in
    turn, so load from other processes hits all alike; latency is the median
    over all calls. `runtimes` lists the `runtime` arguments of
    `quantens.export.TFLiteRunner` (None: its choice, LiteRT where installed);
    with more than one, each file is timed on each (row `runtime`; an LCE file
    runs on LCE's interpreter once), and `same_outputs` says, per setting,
    whether its logits on `x` equal those of the first runtime's row exactly.
    """
    rows, runners = [], {}
    example = x[:1]
    for b in ensemble.bit_widths:
        start = time.perf_counter()
        member = ensemble.member(b)
        flatbuffer, fmt, details = export.convert(member, b, calibration_data=x)
        convert_s = time.perf_counter() - start
        print(f"  {name}: {b:>2} bits converted in {convert_s:.1f} s", file=sys.stderr)
        variants = {"file": flatbuffer}
        storage = details.get("weights_storage") or {}
        if storage.get("int4_tensors"):
            variants = {"packed": flatbuffer,
                        "int8": export.convert(member, b, x, pack_int4=False)[0]}
        for variant, data in variants.items():
            chosen = {}  # runtime name -> the `runtime` argument that picks it
            for asked in runtimes:
                chosen.setdefault(choose_runtime(data, asked), asked)
            for runtime_name, asked in chosen.items():
                rows.append({
                    "bits": b, "format": fmt, "variant": variant, "bytes": len(data),
                    "int4_tensors": storage.get("int4_tensors", 0) if variant != "int8" else 0,
                    "convert_seconds": round(convert_s, 2),
                })
                for t in threads:
                    for delegate in xnnpack:
                        runner = export.TFLiteRunner(data, num_threads=t, use_xnnpack=delegate,
                                                     lce_indirect_bgemm=lce_indirect_bgemm,
                                                     runtime=asked)
                        rows[-1]["runtime"] = runner.runtime_info
                        for _ in range(3):  # warm-up
                            runner.run_one(example)
                        runners[b, variant, runtime_name, t, delegate] = runner
    times: dict[tuple, list[float]] = {key: [] for key in runners}
    keys = list(runners)
    per_round = max(1, repeats // rounds)
    for r in range(rounds):
        for key in keys[r % len(keys):] + keys[: r % len(keys)]:
            times[key] += [_timed_call(runners[key], example) for _ in range(per_round)]
    settings = [(t, d) for t in threads for d in xnnpack]

    def label(t, d):
        return f"{t}" if xnnpack == (True,) else f"{t}{'' if d else ' no-xnnpack'}"

    for row in rows:
        row["latency_ms"] = {label(t, d): round(
            1e3 * statistics.median(
                times[row["bits"], row["variant"], row["runtime"]["name"], t, d]), 4)
            for t, d in settings}
    first: dict[tuple, str] = {}  # (bits, variant) -> the runtime of its first row
    for row in rows:
        key = row["bits"], row["variant"]
        first.setdefault(key, row["runtime"]["name"])
        if row["runtime"]["name"] != first[key]:
            row["same_outputs"] = {label(t, d): bool(np.array_equal(
                runners[(*key, row["runtime"]["name"], t, d)](x),
                runners[(*key, first[key], t, d)](x))) for t, d in settings}
    for row in rows:  # against the float32 member on the same runtime (else the first)
        base = next((r for r in rows if r["bits"] == max(ensemble.bit_widths)
                     and r["runtime"] == row["runtime"]),
                    next(r for r in rows if r["bits"] == max(ensemble.bit_widths)))
        row["size_ratio"] = round(row["bytes"] / base["bytes"], 4)
        row["latency_ratio"] = {k: round(v / base["latency_ms"][k], 3)
                                for k, v in row["latency_ms"].items()}
    return {"model": name, "input_shape": list(x.shape[1:]), "calls_per_member": per_round * rounds,
            "members": rows}


def table(result: dict) -> str:
    settings = list(result["members"][0]["latency_ms"])
    head = (f"bits  format  variant  {'runtime':<26} {'bytes':>11}  size/fp32  "
            + "  ".join(f"{t} thr ms  /fp32" for t in settings))
    if any("same_outputs" in r for r in result["members"]):
        head += "  outputs as the first runtime's"
    lines = [f"{result['model']} {tuple(result['input_shape'])}", head, "-" * len(head)]
    for r in result["members"]:
        cells = "  ".join(
            f"{r['latency_ms'][t]:>8.3f}  {r['latency_ratio'][t]:>5.2f}" for t in settings)
        if "same_outputs" in r:
            cells += "  " + " ".join("same" if r["same_outputs"][t] else "DIFFERENT"
                                     for t in settings)
        runtime = f"{r['runtime']['name']} {r['runtime']['version']}"
        lines.append(f"{r['bits']:>4}  {r['format']:<7} {r['variant']:<7}  {runtime:<26} "
                     f"{r['bytes']:>11}  {r['size_ratio']:>9.3f}  {cells}")
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
    parser.add_argument("--no-xnnpack", action="store_true",
                        help="also time every file with TFLite's builtin kernels only "
                        "(XNNPACK off): packed INT4 filters run there")
    parser.add_argument("--weight-quantization", default="dorefa",
                        choices=("dorefa", "narrow"),
                        help="weight grid of the digits ensemble built here (not with "
                        "--result-dir)")
    parser.add_argument("--bit-widths", type=int, nargs="+", default=list(BITS))
    parser.add_argument("--runtime", nargs="+", default=["auto"],
                        choices=("auto", "litert", "tensorflow"),
                        help="interpreter(s) of the float32 and int8 files: auto (LiteRT "
                        "where installed, else tf.lite), litert, tensorflow; several are "
                        "timed side by side (LCE files always run on LCE)")
    parser.add_argument("--out", default=os.path.join("benchmarks", "results",
                                                      "bench_export.json"),
                        help="JSON output path (results/ is not committed)")
    args = parser.parse_args(argv)

    import tensorflow as tf

    results = []
    ensemble, x = _digits(args.result_dir, args.weight_quantization, tuple(args.bit_widths))
    indirect = not args.lce_default_kernel
    xnnpack = (True, False) if args.no_xnnpack else (True,)
    results.append(bench_model("digits_resnet_e", ensemble, x, args.repeats,
                               tuple(args.threads), lce_indirect_bgemm=indirect,
                               xnnpack=xnnpack, runtimes=tuple(args.runtime)))
    print(table(results[-1]) + "\n")
    if args.resnet18:
        start = time.perf_counter()
        ensemble, x = _resnet18(args.weight_quantization, tuple(args.bit_widths))
        results.append(bench_model("resnet18_e1", ensemble, x, max(5, args.repeats // 10),
                                   tuple(args.threads), lce_indirect_bgemm=indirect,
                                   xnnpack=xnnpack, runtimes=tuple(args.runtime)))
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
