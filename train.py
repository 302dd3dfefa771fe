#!/usr/bin/env python
"""Train a shared-weight ensemble of quantized networks: parse, build, fit, report.

With no flags it trains a 5-member ensemble (32 8 4 2 1 bits) of a small
ResNetE on the embedded `digits` dataset and prints the test accuracy of
every member. The flags are those of the MXNet/BMXNet code base
(`python train.py --help`).
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from quantens import cli  # noqa: E402  (sets TF_USE_LEGACY_KERAS first)


def _accuracy_table(metrics: dict, bit_widths) -> str:
    lines = ["bits   test accuracy", "----   -------------"]
    for b in bit_widths:
        lines.append(f"{b:>4}   {metrics[str(b)]:.4f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = cli.parse_args(argv)

    import zoo

    try:
        zoo.get_builder(args.model)
    except ValueError as error:
        cli.fail(f"--model: {error}")

    import tensorflow as tf

    import quantens
    from quantens import data, results

    try:
        spec = data.resolve(args.dataset)
    except ValueError as error:
        cli.fail(f"--dataset: {error}")

    tf.keras.utils.set_random_seed(args.seed)
    started = time.time()
    try:
        train_ds = data.load(
            args.dataset, spec.train_split, args.batch_size, training=True,
            data_dir=args.data_dir, num_workers=args.num_workers, shuffle_seed=args.seed,
            take_batches=1 if args.test_run else None,
        )
        val_ds = data.load(
            args.dataset, spec.eval_split, args.batch_size, training=False,
            data_dir=args.data_dir, num_workers=args.num_workers,
            take_batches=1 if args.test_run else None,
        )
        info = data.info(args.dataset, data_dir=args.data_dir)
    except Exception as error:  # TFDS raises many kinds; all mean "no data"
        cli.fail(f"--dataset {args.dataset}: cannot load it ({error})")
    input_shape = tuple(train_ds.element_spec[0].shape[1:])
    num_classes = info.features["label"].num_classes

    args.input_shape = list(input_shape)
    args.num_classes = int(num_classes)
    model = zoo.create_model_from_flags(vars(args), input_shape, num_classes)
    ensemble = quantens.QuantEnsemble(model, args.bit_widths, args.target_bits)
    ensemble.compile(
        optimizer=tf.keras.optimizers.Adam(args.lr),
        run_eagerly=args.mode == "imperative",
        jit_compile=args.jit,
    )

    os.makedirs(args.result_path, exist_ok=True)
    results.write_json(os.path.join(args.result_path, "config.json"), cli.config_dict(args))
    target = f"val_accuracy_{args.target_bits}"
    callbacks = [
        tf.keras.callbacks.BackupAndRestore(os.path.join(args.result_path, "backup")),
        results.HistoryCSV(os.path.join(args.result_path, "history.csv")),
        results.BestCheckpoint(
            os.path.join(args.result_path, "best.weights.h5"), monitor=target,
            save=lambda path: results.save_weights(model, path),
        ),
    ]
    verbose = 1 if sys.stdout.isatty() else 2
    ensemble.fit(
        train_ds, epochs=args.epochs, validation_data=val_ds, callbacks=callbacks,
        verbose=verbose,
    )
    results.save_weights(model, os.path.join(args.result_path, "ensemble.weights.h5"))
    logs = ensemble.evaluate(val_ds, return_dict=True, verbose=0)
    accuracy = {str(b): float(logs[f"accuracy_{b}"]) for b in args.bit_widths}
    results.write_json(
        os.path.join(args.result_path, "metrics.json"),
        {
            "bit_widths": list(args.bit_widths),
            "target_bits": args.target_bits,
            "val_accuracy": accuracy,
            "teacher_val_accuracy": None,
            "train_seconds": round(time.time() - started, 1),
        },
    )
    print(_accuracy_table(accuracy, args.bit_widths))
    print(f"results in {args.result_path} ({time.time() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
