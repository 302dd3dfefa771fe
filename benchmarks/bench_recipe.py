#!/usr/bin/env python
"""The low-bit gap in a narrow model: distillation recipes, chosen on validation, reported on test.

The regime of the issue "Distillation that closes the low-bit gap":
`digits_resnet_e` at `--width` 4 (6.9 k parameters), 32 8 4 2 1 bits, Adam
1e-3, batch 64, `--epochs` 15, no augmentation, several seeds. Digits' own
splits: train 1,294 / validation 144 / test 359 images. Each recipe (a set of
levers, see `RECIPES`) trains once per seed; the table gives per member the
test accuracy (mean ± std over seeds) and the paired difference against
`none` (no distillation), and marks the recipe chosen on validation: the one
with the best mean validation accuracy of the lowest member among those whose
members above 4 bits lose at most `--max-loss` points against `none` on
validation.

```
python benchmarks/bench_recipe.py --width 4 --seeds 0 1 2 3 4 --out /tmp/recipe_w4
python benchmarks/bench_recipe.py --width 32 --recipes none progressive --seeds 0 1 2
```
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _report import write_result  # noqa: E402

import quantens  # noqa: E402  (tf-keras before TensorFlow)

BITS = (32, 8, 4, 2, 1)

# name -> levers: kd mode and Distillation arguments, member loss weights, activation method
RECIPES = {
    "none": {},
    "progressive": {"kd_mode": "progressive"},
    "highest": {"kd_mode": "highest"},
    "average": {"kd_mode": "average"},
    "progressive+warmup3": {"kd_mode": "progressive", "warmup_epochs": 3},
    "progressive+kd1x2": {"kd_mode": "progressive", "student_weights": {1: 2.0, 2: 1.5}},
    "progressive+ce1x2": {"kd_mode": "progressive", "member_loss_weights": {1: 2.0, 2: 1.5}},
    "progressive+T2": {"kd_mode": "progressive", "temperature": 2.0},
    "pact": {"activation_method": "pact"},
    "progressive+pact": {"kd_mode": "progressive", "activation_method": "pact"},
    "average+pact+ce1x2": {"kd_mode": "average", "activation_method": "pact",
                           "member_loss_weights": {1: 2.0, 2: 1.5}},
}


def arrays(data_dir: str | None):
    import quantens.data as qd

    spec = qd.resolve("digits", data_dir)

    def load(split):
        x, y = next(iter(qd.load("digits", split, batch_size=4096, data_dir=data_dir)))
        return x.numpy(), y.numpy()

    return {"train": load(spec.train_split), "validation": load(spec.validation_split),
            "test": load(spec.test_split)}


def train_once(recipe: dict, seed: int, data: dict, args) -> dict:
    import tensorflow as tf

    import zoo
    from quantens.distillation import Distillation

    tf.keras.backend.clear_session()
    tf.keras.utils.set_random_seed(seed)
    model = zoo.create_model("digits_resnet_e", width=args.width, bit_widths=BITS,
                             activation_method=recipe.get("activation_method", "round"))
    ensemble = quantens.QuantEnsemble(model, BITS,
                                      member_loss_weights=recipe.get("member_loss_weights"))
    x, y = data["train"]
    steps = -(-len(x) // args.batch_size)
    if recipe.get("kd_mode", "none") != "none":
        ensemble.set_distillation(Distillation(
            BITS, recipe["kd_mode"], teacher=None,
            temperature=recipe.get("temperature", 4.0), weight=recipe.get("weight", 1.0),
            warmup_steps=recipe.get("warmup_epochs", 0) * steps,
            student_weights=recipe.get("student_weights"),
        ))
    ensemble.compile(optimizer=tf.keras.optimizers.Adam(args.lr))
    start = time.perf_counter()
    ensemble.fit(x, y, batch_size=args.batch_size, epochs=args.epochs, verbose=0,
                 shuffle=True)
    seconds = time.perf_counter() - start
    result = {"seconds": round(seconds, 1)}
    for split in ("train", "validation", "test"):
        logs = ensemble.evaluate(*data[split], batch_size=512, verbose=0, return_dict=True)
        result[split] = {str(b): float(logs[f"accuracy_{b}"]) for b in BITS}
    return result


def summarise(runs: dict, args) -> tuple[dict, str]:
    """Per recipe and member: test mean/std, paired test difference vs none; the choice."""
    def acc(recipe, split, b):
        return [100 * r[split][str(b)] for r in runs[recipe]]

    summary, eligible = {}, []
    for name in runs:
        entry = {"test": {}, "validation": {}, "paired_test_diff_vs_none": {}}
        for b in BITS:
            test, val = acc(name, "test", b), acc(name, "validation", b)
            entry["test"][b] = (statistics.mean(test), statistics.pstdev(test))
            entry["validation"][b] = statistics.mean(val)
            if "none" in runs:
                diffs = [t - n for t, n in zip(test, acc("none", "test", b), strict=True)]
                entry["paired_test_diff_vs_none"][b] = (statistics.mean(diffs), diffs)
        summary[name] = entry
        if "none" in runs:
            ok = all(entry["validation"][b] >= summary_none_val(runs, b, acc) - args.max_loss
                     for b in BITS if b > 4)
            if ok:
                eligible.append(name)
    lowest = min(BITS)
    chosen = max(eligible or list(runs), key=lambda n: summary[n]["validation"][lowest])
    lines = [f"digits_resnet_e width {args.width}, {args.epochs} epochs, seeds "
             f"{' '.join(map(str, args.seeds))}: test accuracy % (mean ± std); Δ = paired "
             "difference vs none (mean over seeds); * = chosen on validation", "",
             "| recipe | " + " | ".join(f"{b} bit" for b in BITS) + " | gap 32→1 |",
             "|---|" + "---|" * (len(BITS) + 1)]
    for name, entry in summary.items():
        cells = []
        for b in BITS:
            mean, std = entry["test"][b]
            cell = f"{mean:.2f} ± {std:.2f}"
            if name != "none" and entry["paired_test_diff_vs_none"]:
                cell += f" (Δ {entry['paired_test_diff_vs_none'][b][0]:+.2f})"
            cells.append(cell)
        gap = entry["test"][max(BITS)][0] - entry["test"][lowest][0]
        lines.append(f"| {name}{' *' if name == chosen else ''} | " + " | ".join(cells)
                     + f" | {gap:.2f} |")
    return {"recipes": summary, "chosen": chosen, "eligible": eligible}, "\n".join(lines)


def summary_none_val(runs, b, acc) -> float:
    return statistics.mean(acc("none", "validation", b))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--max-loss", type=float, default=0.5,
                        help="points a member above 4 bits may lose against none (validation)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default="bench_recipe")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    data = arrays(args.data_dir)
    path = os.path.join(args.out, "runs.json")
    runs: dict = {}
    if os.path.isfile(path):  # a stopped benchmark continues
        with open(path) as f:
            runs = {k: v for k, v in json.load(f).items() if k in args.recipes}
    for name in args.recipes:
        done = runs.setdefault(name, [])
        for seed in args.seeds[len(done):]:
            done.append({"seed": seed, **train_once(RECIPES[name], seed, data, args)})
            print(f"{name} seed {seed}: test {done[-1]['test']} ({done[-1]['seconds']} s)",
                  file=sys.stderr)
            with open(path, "w") as f:
                json.dump(runs, f, indent=1)
    summary, text = summarise(runs, args)
    write_result(args.out, {"args": vars(args), "runs": runs, **summary}, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
