#!/usr/bin/env python
"""A converted keras.applications MobileNetV2 ensemble on digits vs the float model alone.

Digits (the embedded dataset: train 1,294 / test 359 images) upsampled to
`--size` pixels (32: MobileNetV2's smallest input). The float
`tf.keras.applications.MobileNetV2(alpha=--alpha, weights=None)` is trained
alone, and `quantens.quantize_model` of the same initial model as a 32/8/4/2/1
ensemble, with the same budget (epochs, batch, Adam and learning rate, data
order, no augmentation). Reported per member: test accuracy, the exported
file's format, size, agreement with the Keras member, and 1-thread batch-1
latency (`bench_export.bench_model`, TFLite/XNNPACK and LCE interpreters).

keras' MobileNetV2 uses BN momentum 0.999: after a few hundred steps its moving
statistics are still near their initial values, and the inference accuracy of
the float model and of every member says little. Both models here use
`--bn-momentum` (0.9 by default); the models are otherwise keras'.

```
python benchmarks/bench_quantize_model.py --epochs 30 --out /tmp/bench_qm
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


def digits(size: int, data_dir: str | None):
    import tensorflow as tf

    import quantens.data as qd

    def arrays(split):
        x, y = next(iter(qd.load("digits", split, batch_size=4096, data_dir=data_dir)))
        return tf.image.resize(x, (size, size)).numpy(), y.numpy()

    return (*arrays("train"), *arrays("test"))


def float_mobilenet_v2(size: int, alpha: float, momentum: float, seed: int):
    import tensorflow as tf

    tf.keras.utils.set_random_seed(seed)
    model = tf.keras.applications.MobileNetV2(
        input_shape=(size, size, 1), alpha=alpha, weights=None, classes=10,
        classifier_activation=None)
    for layer in model.layers:
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            layer.momentum = momentum  # get_config reads it: quantize_model keeps it
    return model


def train(model, x, y, args, seed: int):
    import tensorflow as tf

    tf.keras.utils.set_random_seed(seed)
    model.compile(optimizer=tf.keras.optimizers.Adam(args.lr),
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  **({} if isinstance(model, quantens.QuantEnsemble) else
                     {"metrics": ["accuracy"]}))
    start = time.perf_counter()
    model.fit(x, y, epochs=args.epochs, batch_size=args.batch_size, verbose=0, shuffle=True)
    return time.perf_counter() - start


def accuracy(model, x, y) -> float:
    return float(np.mean(np.argmax(model.predict(x, batch_size=256, verbose=0), -1) == y))


def run(args) -> dict:
    from bench_export import bench_model

    from quantens import export

    x_train, y_train, x_test, y_test = digits(args.size, args.data_dir)
    result = {"model": f"MobileNetV2(alpha={args.alpha})", "input": [args.size, args.size, 1],
              "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
              "bn_momentum": args.bn_momentum, "seed": args.seed, "members": {}}
    base = float_mobilenet_v2(args.size, args.alpha, args.bn_momentum, args.seed)
    initial = base.get_weights()
    result["float_train_seconds"] = round(train(base, x_train, y_train, args, args.seed), 1)
    result["float_accuracy"] = accuracy(base, x_test, y_test)
    print(f"float alone: test accuracy {result['float_accuracy']:.4f}", file=sys.stderr)

    model = float_mobilenet_v2(args.size, args.alpha, args.bn_momentum, args.seed)
    model.set_weights(initial)  # the same start as the float model
    ensemble = quantens.QuantEnsemble(quantens.quantize_model(model, BITS), BITS)
    result["ensemble_train_seconds"] = round(train(ensemble, x_train, y_train, args, args.seed), 1)
    out = os.path.join(args.out, "export")
    report = export.export_ensemble(ensemble, out, val_data=(x_test, y_test),
                                    calibration_data=x_train)
    timing = bench_model("mobilenet_v2", ensemble, x_train[:64], repeats=args.repeats,
                         threads=(1,))
    for row in timing["members"]:
        if row["variant"] == "int8":  # the unpacked twin of a packed file: not exported
            continue
        b = row["bits"]
        entry = report["members"][str(b)]
        fid = entry["fidelity"]
        result["members"][str(b)] = {
            "keras_accuracy": fid["keras_accuracy"], "tflite_accuracy": fid["tflite_accuracy"],
            "keras_input_rounding_agreement": fid["keras_input_rounding_agreement"],
            "format": entry["format"], "bytes": entry["bytes"], "agreement": fid["agreement"],
            "latency_ms_1_thread": row["latency_ms"]["1"],
            "binary_convs": len(entry.get("lce", {}).get("binary_convs", [])) or None,
            "int4_tensors": (entry.get("weights_storage") or {}).get("int4_tensors", 0),
        }
        print(f"{b:>2} bits: {result['members'][str(b)]}", file=sys.stderr)
    return result


def table(result: dict) -> str:
    lines = [
        f"{result['model']} on digits {result['input'][0]}x{result['input'][1]}, "
        f"{result['epochs']} epochs; float model alone: test accuracy "
        f"{result['float_accuracy']:.4f}",
        "",
        "| bits | Keras test acc | TFLite test acc | format | bytes | agreement | 1-thread ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for b, m in result["members"].items():
        lines.append(f"| {b} | {m['keras_accuracy']:.4f} | {m['tflite_accuracy']:.4f} | "
                     f"{m['format']} | {m['bytes']:,} | {m['agreement']:.4f} | "
                     f"{m['latency_ms_1_thread']:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--alpha", type=float, default=0.35)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--bn-momentum", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default="bench_quantize_model")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    result = run(args)
    write_result(args.out, result, table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
