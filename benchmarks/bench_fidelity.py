#!/usr/bin/env python
"""How often each exported member agrees with its Keras member, by width, epochs and seed.

For every (width, epochs, seed), `digits_resnet_e` is trained on digits as
`tests/test_export.py` trains it (Adam, cosine decay from 0.005, batch 64,
`tf.keras.utils.set_random_seed(seed)`), every member is converted as
`python -m quantens.export` converts it, and `quantens.export.fidelity`
compares the file with the Keras member on the 359 test images: top-1
agreement, max |logit difference|, accuracy of both.

```
python benchmarks/bench_fidelity.py                              # width 32 and 8, 4 epochs, seeds 0-2
python benchmarks/bench_fidelity.py --widths 32 --seeds 0 1 2 3 4 5 6 7
python benchmarks/bench_fidelity.py --widths 8 --epochs 4 30 --bits 2 8
```

The agreement of an int8 file depends on the model, not only on the export:
every 8-bit rounding of a tensor that a coarse member then thresholds can flip
an activation, and a narrow, briefly trained model has more predictions near a
tie. Prints a table; the rows are saved as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import quantens  # noqa: E402,F401  (tf-keras before TensorFlow)

BITS = (32, 8, 4, 2, 1)


def digits(split: str, data_dir: str | None):
    import quantens.data as qd

    x, y = next(iter(qd.load("digits", split, batch_size=4096, data_dir=data_dir)))
    return x.numpy(), y.numpy()


def train(width: int, epochs: int, seed: int, x, y):
    """The ensemble of `tests/test_export.py` at another width, epochs and seed."""
    import tensorflow as tf

    import zoo

    tf.keras.utils.set_random_seed(seed)
    model = zoo.create_model("digits_resnet_e", width=width, bit_widths=BITS)
    ensemble = quantens.QuantEnsemble(model, BITS, target_bits=1)
    steps = epochs * -(-len(x) // 64)
    ensemble.compile(optimizer=tf.keras.optimizers.Adam(
        tf.keras.optimizers.schedules.CosineDecay(0.005, steps)))
    ensemble.fit(x, y, batch_size=64, epochs=epochs, verbose=0)
    return ensemble


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[32, 8])
    parser.add_argument("--epochs", type=int, nargs="+", default=[4])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--bits", type=int, nargs="+", default=[8, 4, 2, 1],
                        help="members to convert and compare (of 32 8 4 2 1)")
    parser.add_argument("--data-dir", default=None, help="TFDS data directory")
    parser.add_argument("--out", default=os.path.join("benchmarks", "results",
                                                      "bench_fidelity.json"))
    args = parser.parse_args(argv)
    if not set(args.bits) <= set(BITS):
        parser.error(f"--bits must be among {' '.join(map(str, BITS))}")

    from quantens import export

    x_train, y_train = digits("train", args.data_dir)
    x_test, y_test = digits("test", args.data_dir)
    rows = []
    head = "width  epochs  seed  bits  format  agreement  max|dlogit|  keras acc  tflite acc"
    print(head)
    print("-" * len(head))
    for width in args.widths:
        for epochs in args.epochs:
            for seed in args.seeds:
                start = time.time()
                ensemble = train(width, epochs, seed, x_train, y_train)
                for b in args.bits:
                    flatbuffer = export.convert_member(ensemble, b, calibration_data=x_train)
                    fid = export.fidelity(ensemble.member(b), flatbuffer, (x_test, y_test))
                    row = {"width": width, "epochs": epochs, "seed": seed, "bits": b,
                           "format": export.member_format(b), **fid}
                    rows.append(row)
                    print(f"{width:>5}  {epochs:>6}  {seed:>4}  {b:>4}  {row['format']:<6}  "
                          f"{fid['agreement']:>9.4f}  {fid['max_abs_logit_diff']:>11.3g}  "
                          f"{fid['keras_accuracy']:>9.4f}  {fid['tflite_accuracy']:>10.4f}",
                          flush=True)
                print(f"  ({time.time() - start:.0f} s)", file=sys.stderr)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
