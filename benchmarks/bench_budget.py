#!/usr/bin/env python
"""Members chosen by budget: the frontier of uniform and searched members, side by side.

For a trained ensemble, every uniform member is exported (bytes, TFLite test
accuracy, latency: 1 thread, batch 1, XNNPACK on); then, at budgets of each
uniform member's bytes, halfway between consecutive ones, and down to the
smallest file, `quantens.budget.search_policy` chooses a per-layer mix on the
validation split (BN statistics re-estimated from the training split) and
`quantens.export.export_member` writes it. Reported per budget: the searched
member's bytes, validation and TFLite test accuracy, latency, search time, its
bits per layer, and the best uniform member that fits. `--no-bn` searches
once more with the mixes' BN statistics left as trained (what re-estimation
buys).

Models:
- `digits_w8`: the zoo's pretrained `digits_resnet_e` tag `digits_w8`
  (`train.py --width 8`, 30 epochs, 32 8 4 2 1 bits, DoReFa weights); its
  validation split is digits' own (144 images), test 359.
- `result`: the ensemble of a digits run's `--result-dir` (e.g. the
  `digits_w8` recipe trained with `--mixed-students 1`).
- `mobilenet_v2`: `bench_quantize_model.py`'s Keras MobileNetV2 (alpha 0.35,
  digits at 32x32) trained alone `--epochs`, converted, calibrated and
  fine-tuned `--finetune-epochs` with the float model as teacher (seed
  `--seeds`); `--weights DIR` reuses `finetuned_seed<N>.weights.h5` that
  bench_quantize_model.py saved in DIR.

```
python benchmarks/bench_budget.py --model digits_w8 --no-bn --out /tmp/bench_budget_digits
python benchmarks/bench_budget.py --model mobilenet_v2 --seeds 0 --out /tmp/bench_budget_mnv2
python train.py --epochs 30 --width 8 --deterministic --mixed-students 1 --result-path /tmp/w8_ms
python benchmarks/bench_budget.py --model result --result-dir /tmp/w8_ms --out /tmp/bench_budget_ms
```
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
from _report import write_result  # noqa: E402

import quantens  # noqa: E402  (tf-keras before TensorFlow)

BITS = (32, 8, 4, 2, 1)


def _digits(size: int | None, data_dir: str | None):
    import tensorflow as tf

    import quantens.data as qd

    def arrays(split):
        x, y = next(iter(qd.load("digits", split, batch_size=4096, data_dir=data_dir)))
        if size:
            x = tf.image.resize(x, (size, size))
        return x.numpy(), y.numpy()

    return {split: arrays(split) for split in ("train", "validation", "test")}


def _digits_w8(args):
    import zoo

    model = zoo.create_model("digits_resnet_e", weights="digits_w8", bit_widths=BITS)
    return quantens.QuantEnsemble(model, BITS), _digits(None, args.data_dir), {}


def _result_dir(args):
    """The trained ensemble of a digits result directory (`train.py --result-path DIR`)."""
    from quantens.export import load_result_ensemble

    ensemble, config = load_result_ensemble(args.result_dir)
    return ensemble, _digits(None, args.data_dir), {"result_dir": args.result_dir,
                                                    "mixed_students": config.get(
                                                        "mixed_students", 0)}


def _mobilenet_v2(args, seed: int):
    import bench_quantize_model as qm

    from quantens.distillation import Distillation

    data = _digits(args.size, args.data_dir)
    x_train, y_train = data["train"]
    base = qm.float_mobilenet_v2(args.size, args.alpha, args.bn_momentum, seed)
    info = {}
    weights = args.weights and os.path.join(args.weights, f"finetuned_seed{seed}.weights.h5")
    if weights and os.path.isfile(weights):
        ensemble = quantens.QuantEnsemble(quantens.quantize_model(base, BITS), BITS)
        ensemble.load_weights(weights)
        info["weights"] = weights
        return ensemble, data, info
    info["float_train_seconds"] = qm.train(base, x_train, y_train, args.epochs, args.lr,
                                           args.batch_size, seed)
    ensemble, info["calibrate_seconds"] = qm.converted(base, x_train)
    ensemble.set_distillation(Distillation(BITS, "simple", teacher=base))
    info["finetune_seconds"] = qm.train(ensemble, x_train, y_train, args.finetune_epochs,
                                        args.finetune_lr, args.batch_size, seed)
    ensemble.set_distillation(None)
    os.makedirs(args.out, exist_ok=True)
    ensemble.save_weights(os.path.join(args.out, f"finetuned_seed{seed}.weights.h5"))
    return ensemble, data, info


def _keras_accuracy(model, x, y) -> float:
    return float(np.mean(np.argmax(model.predict(x, batch_size=256, verbose=0), -1) == y))


def _budgets(sizes: dict[int, int]) -> list[int]:
    """Each uniform member's bytes and halfway between consecutive ones (distinct, large first)."""
    ladder = sorted(set(sizes.values()), reverse=True)
    budgets = list(ladder)
    budgets += [(a + b) // 2 for a, b in zip(ladder, ladder[1:], strict=False)]
    return sorted(set(budgets), reverse=True)


def run(args, name: str, ensemble, data, info: dict) -> dict:
    from quantens import export
    from quantens.budget import search_policy
    from quantens.export.runtime import measure_latency

    x_train, _ = data["train"]
    x_val, y_val = data["validation"]
    x_test, y_test = data["test"]
    out = os.path.join(args.out, name)
    result: dict = {"model": name, **info, "uniform": {}, "budgets": []}
    start = time.perf_counter()
    report = export.export_ensemble(ensemble, os.path.join(out, "export"),
                                    val_data=(x_test, y_test), calibration_data=x_train)
    result["export_seconds"] = round(time.perf_counter() - start, 1)
    for b in BITS:
        entry = report["members"][str(b)]
        with open(os.path.join(out, "export", entry["file"]), "rb") as f:
            latency = measure_latency(f.read(), x_test[:1], runs=args.repeats)
        result["uniform"][b] = {
            "bytes": entry["bytes"], "format": entry["format"],
            "val_accuracy": _keras_accuracy(ensemble.member(b), x_val, y_val),
            "test_accuracy": entry["fidelity"]["tflite_accuracy"],
            "latency_ms": latency["ms"], "runtime": latency["runtime"],
            "weight_bytes": entry.get("weight_bytes"),
            "non_weight_bytes": entry.get("non_weight_bytes"),
        }
        print(f"{name}: member {b}: {result['uniform'][b]}", file=sys.stderr)
    sizes = {b: u["bytes"] for b, u in result["uniform"].items() if b <= 8}
    sensitivity = {True: None, False: None}
    for budget in _budgets(sizes):
        row = {"max_bytes": budget}
        for with_bn in (True, False) if args.no_bn else (True,):
            found = search_policy(ensemble, (x_val, y_val), budget,
                                  train_data=x_train if with_bn else None,
                                  sensitivity=sensitivity[with_bn], verbose=0)
            sensitivity[with_bn] = found.sensitivity
            key = "searched" if with_bn else "searched_without_bn"
            path = os.path.join(out, f"member_budget_{budget}.tflite" if with_bn
                                else f"member_budget_{budget}_no_bn.tflite")
            uniform = found.uniform_bits  # exported as scored: the ensemble's BN statistics
            record = export.export_member(
                ensemble, found.policy if uniform is None else uniform, path,
                calibration_data=x_train, val_data=(x_test, y_test),
                data=None if uniform is not None else x_train if with_bn else False)
            with open(path, "rb") as f:
                latency = measure_latency(f.read(), x_test[:1], runs=args.repeats)
            row[key] = {
                "bytes": record["bytes"], "format": record["format"],
                "val_accuracy": found.accuracy,
                "test_accuracy": record["fidelity"]["tflite_accuracy"],
                "agreement": record["fidelity"]["agreement"],
                "latency_ms": latency["ms"], "search_seconds": found.seconds,
                "policy": found.policy,
                "candidates": [{k: c[k] for k in ("name", "bytes", "accuracy", "loss")}
                               for c in found.candidates],
            }
        fitting = [b for b, u in result["uniform"].items() if u["bytes"] <= budget]
        best = max(fitting, key=lambda b: (result["uniform"][b]["test_accuracy"],
                                           -result["uniform"][b]["bytes"]), default=None)
        row["best_uniform"] = best
        result["budgets"].append(row)
        print(f"{name}: budget {budget}: {row['searched']['bytes']} B, val "
              f"{row['searched']['val_accuracy']:.4f}, test {row['searched']['test_accuracy']:.4f}"
              f" (best uniform {best}), {row['searched']['search_seconds']:.1f} s",
              file=sys.stderr)
    return result


def table(results: list[dict]) -> str:
    lines = []
    for result in results:
        lines += [f"### {result['model']}", "",
                  "| member | bytes | format | val acc | TFLite test acc | ms | search s | "
                  "best uniform that fits (test acc) |",
                  "|---|---:|---|---:|---:|---:|---:|---|"]
        for b, u in result["uniform"].items():
            lines.append(f"| {b} bit | {u['bytes']:,} | {u['format']} | {u['val_accuracy']:.4f} "
                         f"| {u['test_accuracy']:.4f} | {u['latency_ms']:.3f} | | |")
        for row in result["budgets"]:
            for key, label in (("searched", ""), ("searched_without_bn", " (BN as trained)")):
                if key not in row:
                    continue
                s = row[key]
                best = row["best_uniform"]
                uniform = (f"{best} bit ({result['uniform'][best]['test_accuracy']:.4f})"
                           if best is not None else "none")
                lines.append(
                    f"| budget {row['max_bytes']:,}{label} | {s['bytes']:,} | {s['format']} | "
                    f"{s['val_accuracy']:.4f} | {s['test_accuracy']:.4f} | {s['latency_ms']:.3f} "
                    f"| {s['search_seconds']:.1f} | {uniform} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("digits_w8", "mobilenet_v2", "result"),
                        default="digits_w8",
                        help="result: the ensemble of --result-dir (a digits run of train.py)")
    parser.add_argument("--result-dir", default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--no-bn", action="store_true",
                        help="also search with the mixes' BN statistics as trained")
    parser.add_argument("--weights", default=None,
                        help="mobilenet_v2: a bench_quantize_model.py --out directory")
    parser.add_argument("--alpha", type=float, default=0.35)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--finetune-epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--finetune-lr", type=float, default=3e-3)
    parser.add_argument("--bn-momentum", type=float, default=0.9)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results",
                                                      "bench_budget"))
    args = parser.parse_args(argv)
    results = []
    if args.model == "digits_w8":
        results.append(run(args, "digits_w8", *_digits_w8(args)))
    elif args.model == "result":
        if not args.result_dir:
            parser.error("--model result needs --result-dir")
        name = os.path.basename(os.path.normpath(args.result_dir))
        results.append(run(args, name, *_result_dir(args)))
    else:
        for seed in args.seeds:
            results.append(run(args, f"mobilenet_v2_seed{seed}", *_mobilenet_v2(args, seed)))
    write_result(args.out, {"results": results}, table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
