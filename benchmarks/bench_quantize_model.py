#!/usr/bin/env python
"""A trained Keras MobileNetV2 converted to a 32/8/4/2/1 ensemble on digits, three ways.

Digits (the embedded dataset: train 1,294 / test 359 images) upsampled to
`--size` pixels (32: MobileNetV2's smallest input). Per seed, the float
`tf.keras.applications.MobileNetV2(alpha=--alpha, weights=None)` is trained
alone for `--epochs`, then, with quantens' defaults:

- (a) converted: `quantize_model` of the trained float model +
  `quantens.calibrate` on the training split, no training;
- (b) fine-tuned: (a) trained `--finetune-epochs` with the float model as
  teacher (`Distillation(mode="simple")`), then exported (TFLite accuracy,
  bytes, agreement with the Keras member, 1-thread batch-1 latency, and the
  runtime that measured them: LiteRT where installed, else tf.lite; LCE for
  the 1-bit file);
- (c) from scratch: `quantize_model` of the same untrained model, calibrated,
  trained `--epochs` (no teacher: there are no trained float weights).

Every training run uses Adam with a cosine decay of the learning rate to 0
(train.py's default schedule): `--lr` for the float model and (c),
`--finetune-lr` for (b). Reported per member: test accuracy and agreement
(top-1) with the float model. With TF Model Optimization installed (`pip install -e ".[bench]"`), its
quantization-aware int8 model of the trained float model, fine-tuned with the
budget of (b), is converted to int8 TFLite and reported beside the members.

keras' MobileNetV2 uses BN momentum 0.999: after a few hundred steps its moving
statistics are still near their initial values, and the inference accuracy of
the float model and of every member says little. All models here use
`--bn-momentum` (0.9 by default); the models are otherwise keras'.

```
python benchmarks/bench_quantize_model.py --seeds 0 1 --out /tmp/bench_qm
# or one process per seed, then one table:
python benchmarks/bench_quantize_model.py --seeds 0 --out /tmp/qm0 &
python benchmarks/bench_quantize_model.py --seeds 1 --out /tmp/qm1; wait
python benchmarks/bench_quantize_model.py --combine /tmp/qm0 /tmp/qm1 --out /tmp/bench_qm
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


def train(model, x, y, epochs: int, lr: float, batch_size: int, seed: int) -> float:
    """Adam with a cosine decay of `lr` to 0 over the run (train.py's default schedule)."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(seed)
    steps = epochs * -(-len(x) // batch_size)
    schedule = tf.keras.optimizers.schedules.CosineDecay(lr, steps)
    model.compile(optimizer=tf.keras.optimizers.Adam(schedule),
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    start = time.perf_counter()
    model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0, shuffle=True)
    return round(time.perf_counter() - start, 1)


def labels(model, x) -> np.ndarray:
    return np.argmax(model.predict(x, batch_size=256, verbose=0), -1)


def members(ensemble, x, y, reference) -> dict:
    out = {}
    for b in BITS:
        predicted = labels(ensemble.member(b), x)
        out[str(b)] = {"accuracy": float(np.mean(predicted == y)),
                       "agreement": float(np.mean(predicted == reference))}
    return out


def converted(float_model, x_train):
    ensemble = quantens.QuantEnsemble(quantens.quantize_model(float_model, BITS), BITS)
    start = time.perf_counter()
    quantens.calibrate(ensemble, x_train)
    return ensemble, round(time.perf_counter() - start, 1)


def tflite_accuracy(flatbuffer: bytes, x, y) -> tuple[float, dict]:
    """(accuracy, runtime) of a TFLite file, 1 thread (LiteRT where installed, as export)."""
    from quantens.export import TFLiteRunner

    runner = TFLiteRunner(flatbuffer, num_threads=1)
    return float(np.mean(runner(x).argmax(-1) == y)), runner.runtime_info


def latency_ms(flatbuffer: bytes, example, repeats: int) -> float:
    """Median ms of a 1-thread batch-1 call (XNNPACK, the runtime of bench_export)."""
    import statistics

    from quantens.export import TFLiteRunner

    runner = TFLiteRunner(flatbuffer, num_threads=1)
    for _ in range(3):
        runner.run_one(example)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        runner.run_one(example)
        times.append(time.perf_counter() - start)
    return round(1e3 * statistics.median(times), 4)


def tfmot_int8(float_model, x_train, y_train, x_test, y_test, args, seed: int) -> dict | None:
    """TF Model Optimization's QAT int8 model of the trained float model (None if absent)."""
    try:
        import tensorflow_model_optimization as tfmot
    except ImportError:
        return None
    import tensorflow as tf

    qat = tfmot.quantization.keras.quantize_model(float_model)
    seconds = train(qat, x_train, y_train, args.finetune_epochs, args.finetune_lr,
                    args.batch_size, seed)
    converter = tf.lite.TFLiteConverter.from_keras_model(qat)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    flatbuffer = converter.convert()
    reference = labels(float_model, x_test)
    keras_labels = labels(qat, x_test)
    accuracy, runtime = tflite_accuracy(flatbuffer, x_test, y_test)
    return {"train_seconds": seconds,
            "keras_accuracy": float(np.mean(keras_labels == y_test)),
            "agreement": float(np.mean(keras_labels == reference)),
            "tflite_accuracy": accuracy, "runtime": runtime,
            "bytes": len(flatbuffer),
            "latency_ms_1_thread": latency_ms(flatbuffer, x_test[:1], args.repeats)}


def run_seed(args, seed: int, data) -> dict:
    import tensorflow as tf
    from bench_export import bench_model

    from quantens import export
    from quantens.distillation import Distillation

    x_train, y_train, x_test, y_test = data
    result: dict = {"seed": seed}
    base = float_mobilenet_v2(args.size, args.alpha, args.bn_momentum, seed)
    initial = base.get_weights()
    result["float_train_seconds"] = train(base, x_train, y_train, args.epochs, args.lr,
                                          args.batch_size, seed)
    reference = labels(base, x_test)
    result["float_accuracy"] = float(np.mean(reference == y_test))
    print(f"seed {seed}: float alone {result['float_accuracy']:.4f}", file=sys.stderr)

    ensemble, result["calibrate_seconds"] = converted(base, x_train)
    result["converted"] = members(ensemble, x_test, y_test, reference)
    print(f"seed {seed}: (a) converted {result['converted']}", file=sys.stderr)

    ensemble.set_distillation(Distillation(BITS, "simple", teacher=base))
    result["finetune_seconds"] = train(ensemble, x_train, y_train, args.finetune_epochs,
                                       args.finetune_lr, args.batch_size, seed)
    result["finetuned"] = members(ensemble, x_test, y_test, reference)
    print(f"seed {seed}: (b) fine-tuned {result['finetuned']}", file=sys.stderr)
    ensemble.set_distillation(None)
    ensemble.save_weights(os.path.join(args.out, f"finetuned_seed{seed}.weights.h5"))
    out = os.path.join(args.out, f"export_seed{seed}")
    start = time.perf_counter()
    report = export.export_ensemble(ensemble, out, val_data=(x_test, y_test),
                                    calibration_data=x_train)
    result["export_seconds"] = round(time.perf_counter() - start, 1)
    timing = bench_model("mobilenet_v2", ensemble, x_train[:64], repeats=args.repeats,
                         threads=(1,))
    latency = {row["bits"]: row["latency_ms"]["1"] for row in timing["members"]
               if row["variant"] != "int8"}  # the unpacked twin of a packed file
    timed_on = {row["bits"]: row["runtime"] for row in timing["members"]
                if row["variant"] != "int8"}
    for b in BITS:
        entry = report["members"][str(b)]
        result["finetuned"][str(b)].update({
            "tflite_accuracy": entry["fidelity"]["tflite_accuracy"],
            "tflite_agreement_with_member": entry["fidelity"]["agreement"],
            "format": entry["format"], "bytes": entry["bytes"],
            "latency_ms_1_thread": latency.get(b),
            # the runtimes that measured accuracy and latency (name, version)
            "tflite_accuracy_runtime": {"name": entry["fidelity"]["interpreter"],
                                        "version": entry["fidelity"].get("interpreter_version")},
            "latency_runtime": timed_on.get(b),
        })

    scratch = float_mobilenet_v2(args.size, args.alpha, args.bn_momentum, seed)
    scratch.set_weights(initial)  # the float model's start
    ensemble = quantens.QuantEnsemble(quantens.quantize_model(scratch, BITS), BITS)
    quantens.calibrate(ensemble, x_train)
    result["scratch_seconds"] = train(ensemble, x_train, y_train, args.epochs, args.lr,
                                      args.batch_size, seed)
    result["scratch"] = members(ensemble, x_test, y_test, reference)
    print(f"seed {seed}: (c) from scratch {result['scratch']}", file=sys.stderr)
    tf.keras.backend.clear_session()
    if not args.no_tfmot:
        result["tfmot_int8"] = tfmot_int8(base, x_train, y_train, x_test, y_test, args, seed)
    return result


def table(result: dict) -> str:
    lines = [f"{result['model']} on digits {result['input'][0]}x{result['input'][1]}; float "
             f"alone {result['epochs']} epochs; (a) converted + calibrated, (b) + "
             f"{result['finetune_epochs']} epochs with the float model as teacher, (c) from "
             f"scratch {result['epochs']} epochs. Test accuracy (agreement with the float "
             "model), mean over seeds " + ", ".join(str(s["seed"]) for s in result["seeds"]), ""]
    seeds = result["seeds"]

    def mean(path) -> float:
        values = []
        for s in seeds:
            value = s
            for key in path:
                value = value[key]
            values.append(value)
        return float(np.mean(values))

    float_acc = mean(["float_accuracy"])
    lines += ["| bits | (a) converted | (b) fine-tuned | (c) scratch | (b) TFLite acc | format "
              "| bytes | 1-thread ms |", "|---|---|---|---|---|---|---|---|",
              f"| float | {float_acc:.4f} | | | | | | |"]
    for b in map(str, BITS):
        cells = [f"{mean([k, b, 'accuracy']):.4f} ({mean([k, b, 'agreement']):.4f})"
                 for k in ("converted", "finetuned", "scratch")]
        fine = seeds[0]["finetuned"][b]
        latency = fine["latency_ms_1_thread"]
        lines.append(f"| {b} | {' | '.join(cells)} | {mean(['finetuned', b, 'tflite_accuracy']):.4f}"
                     f" | {fine['format']} | {fine['bytes']:,} | "
                     f"{'' if latency is None else f'{latency:.3f}'} |")
    tfmot = [s.get("tfmot_int8") for s in seeds]
    if all(tfmot):
        acc = np.mean([t["keras_accuracy"] for t in tfmot])
        agree = np.mean([t["agreement"] for t in tfmot])
        lite = np.mean([t["tflite_accuracy"] for t in tfmot])
        lines.append(f"| TFMOT int8 (QAT) | | {acc:.4f} ({agree:.4f}) | | {lite:.4f} | int8 | "
                     f"{tfmot[0]['bytes']:,} | {tfmot[0]['latency_ms_1_thread']:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--alpha", type=float, default=0.35)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=30,
                        help="the float model's and (c)'s epochs")
    parser.add_argument("--finetune-epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--finetune-lr", type=float, default=3e-3)
    parser.add_argument("--bn-momentum", type=float, default=0.9)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--no-tfmot", action="store_true",
                        help="leave out TF Model Optimization's int8 model")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default="bench_quantize_model")
    parser.add_argument("--combine", nargs="+", default=None, metavar="DIR",
                        help="write one table (into --out) of the seeds of earlier runs' "
                        "directories (one seed per process runs seeds in parallel)")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if args.combine:
        import json

        runs = []
        for directory in args.combine:
            with open(os.path.join(directory, "result.json"), encoding="utf-8") as f:
                runs.append(json.load(f))
        result = {**runs[0], "seeds": [s for run in runs for s in run["seeds"]]}
        write_result(args.out, result, table(result))
        return 0
    data = digits(args.size, args.data_dir)
    result = {"model": f"MobileNetV2(alpha={args.alpha})", "input": [args.size, args.size, 1],
              "epochs": args.epochs, "finetune_epochs": args.finetune_epochs,
              "batch_size": args.batch_size, "lr": args.lr, "finetune_lr": args.finetune_lr,
              "bn_momentum": args.bn_momentum,
              "seeds": [run_seed(args, seed, data) for seed in args.seeds]}
    write_result(args.out, result, table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
