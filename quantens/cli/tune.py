"""`train.py --tune`: the command-line half of the search (flags in, flags out).

The search itself (space, oracles, loop, table) is the library's
`quantens.tuning`; this module turns validated `train.py` flags into a
search, a trial's values into the flags of one `train.run`, and the best
trial into best.json.

```bash
python train.py --tune random --max-trials 20 --epochs 30 --result-path results/search
python train.py --config results/search/tuning/best.json --result-path results/best
```

Searched flags (their command-line values are replaced during the search):
`--lr`, `--wd`, `--optimizer`, `--kd-mode` (simple only with a teacher),
`--kd-temperature`, `--kd-weight`, `--kd-warmup-epochs` and the lowest
member's `--kd-weights` (when `--kd-mode` is not none), the lowest member's
`--member-loss-weights`, and `--activation-method` (round or pact, for
ResNetE models with round or pact activations); the ranges are in
`quantens.tuning`.

The objective (`--tune-objective`) is `val_accuracy_<target bits>` (`target`,
the default: the final accuracy of the `--target-bits` member that
`train.py` reports), `val_accuracy_mean` (`mean`: over the members) or
`val_accuracy_<b>` of a member b, maximised. Every trial is a
complete `train.py` run whose result directory is
`<result-path>/tuning/trial_<id>/`; keras-tuner keeps its state beside them
(`oracle.json`, `trial.json`), so running the same command again resumes the
search: finished trials are kept, an interrupted trial resumes from its
backup, and a larger `--max-trials` extends it. `tuning/best.json` holds the
flags of the best trial (argparse names; every flag of the search except
`--tune`, `--max-trials`, `--config`, `--result-path`, `--log` and
`--test-run`), so `train.py --config .../best.json` trains with them.

`--tune hyperband` gives each trial `tuner/epochs` epochs (at most `--epochs`),
trained from scratch; `--max-trials` caps its number of trials.

```python
from quantens import cli
from quantens.cli import tune

args = cli.parse_args(["--tune", "random", "--max-trials", "2", "--epochs", "1",
                       "--width", "8", "--test-run", "--result-path", "/tmp/search"])
space = tune.search_space(args)
assert {"lr", "wd", "optimizer", "kd_mode"} <= set(space.values)
```
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable

from quantens import defaults, tuning
from quantens.errors import UsageError

__all__ = [
    "MAY_CHANGE_ON_RESUME",
    "NOT_IN_BEST",
    "TEACHER_FOLLOWS",
    "best_flags",
    "has_teacher",
    "kd_modes",
    "objective_name",
    "search_space",
    "trial_args",
    "tune",
]

# flags of the search itself or of where it writes: not part of best.json
NOT_IN_BEST = ("tune", "max_trials", "tune_objective", "config", "result_path", "log",
               "test_run", "dry_run",
               *defaults.DERIVED_KEYS)
# flags that may change when a stopped search is resumed
MAY_CHANGE_ON_RESUME = ("max_trials", "log", "config")
# teacher flags that default to the student's value (see quantens.cli.validation)
TEACHER_FOLLOWS = ("lr", "wd", "optimizer", "lr_mode", "momentum")


def _flags(args: argparse.Namespace) -> dict:
    """The flags as JSON values (as config.json holds them)."""
    return json.loads(json.dumps(vars(args), default=list))


def has_teacher(args: argparse.Namespace) -> bool:
    """Whether the flags give a teacher (`--kd-mode simple` needs one)."""
    return (bool(args.ensemble_teacher) or bool(getattr(args, "float_teacher", False))
            or args.kd_teacher_mode not in (None, "none"))


def kd_modes(args: argparse.Namespace) -> list[str]:
    """The `--kd-mode` values valid with these flags: simple only with a teacher.

    ```python
    from quantens import cli
    from quantens.cli import tune

    assert tune.kd_modes(cli.parse_args([])) == ["none", "progressive", "highest", "average"]
    ```
    """
    return tuning.kd_modes(has_teacher(args))


def search_space(args: argparse.Namespace):
    """The `keras_tuner.HyperParameters` searched for these flags (`tuning.search_space`)."""
    return tuning.search_space(
        args.epochs, teacher=has_teacher(args),
        activation=tuning.searches_activation(args.model, args.activation_method),
    )


def objective_name(args: argparse.Namespace) -> str:
    """The metric the search maximises: `val_accuracy_<b>` or `val_accuracy_mean`."""
    return tuning.objective_name(args.target_bits, getattr(args, "tune_objective", "target"))


def trial_args(
    args: argparse.Namespace, values: dict, result_path: str | None
) -> argparse.Namespace:
    """A copy of the validated flags with a trial's values and result directory.

    Teacher flags that followed the student's (`--teacher-lr` defaults to
    `--lr`, ...) follow the trial's values; `tuner/epochs` (Hyperband)
    becomes `--epochs`; KD settings for members that the trial's `kd_mode`
    does not teach are dropped (they would have no effect).

    ```python
    from quantens import cli
    from quantens.cli import tune

    args = cli.parse_args([])
    trial = tune.trial_args(args, {"lr": 0.01, "tuner/epochs": 3}, "/tmp/trial_0")
    assert trial.lr == trial.teacher_lr == 0.01 and trial.epochs == 3 and args.lr == 0.005
    ```
    """
    new = argparse.Namespace(**vars(args))
    for flag in tuning.SEARCHED_FLAGS:
        if flag in values:
            setattr(new, flag, values[flag])
    lowest = min(args.bit_widths)
    for name, flag in tuning.LOWEST_MEMBER_VALUES.items():
        if values.get(name) is not None:
            others = [pair for pair in (getattr(args, flag) or []) if pair[0] != lowest]
            setattr(new, flag, [*others, [lowest, float(values[name])]])
    for flag in TEACHER_FOLLOWS:
        if getattr(args, f"teacher_{flag}", None) == getattr(args, flag):
            setattr(new, f"teacher_{flag}", getattr(new, flag))
    if "tuner/epochs" in values:
        new.epochs = max(1, min(int(values["tuner/epochs"]), args.epochs))
    _keep_kd_of_students(new)  # what the search keeps for one of its modes, this trial's
    new.result_path = result_path
    new.log = None  # each trial logs into its own directory
    new.tune = None
    return new


def best_flags(args: argparse.Namespace, values: dict) -> dict:
    """The contents of best.json: the search's flags with the trial's values.

    Keys are argparse names, values what `--config` accepts (teacher flags that
    follow the student's are null, `lr_steps` a comma-separated string).
    """
    flags = _flags(trial_args(args, values, None))
    flags["epochs"] = args.epochs  # the full budget, not a Hyperband trial's
    flags["lr_steps"] = ",".join(f"{s:g}" for s in args.lr_steps)
    for flag in TEACHER_FOLLOWS:
        if flags.get(f"teacher_{flag}") == flags[flag]:
            flags[f"teacher_{flag}"] = None
    return {k: v for k, v in flags.items() if k not in NOT_IN_BEST}


def _keep_kd_of_students(args: argparse.Namespace) -> None:
    """Drops the KD settings the trial's mode gives no member (refused by Distillation)."""
    mode = args.kd_mode
    if mode == "none" and has_teacher(args):
        mode = "simple"
    students = {s for s, _ in defaults.kd_pairs(mode, args.bit_widths, has_teacher(args))}
    for flag in ("kd_weights", "kd_temperatures"):
        kept = [pair for pair in getattr(args, flag) or [] if pair[0] in students]
        setattr(args, flag, kept or None)
    if not students:
        args.kd_warmup_epochs, args.kd_attention_weight = 0.0, 0.0


def tune(args: argparse.Namespace, run_fn: Callable[[argparse.Namespace], dict]) -> dict:
    """Searches the flags in `tuning.SEARCHED_FLAGS` with keras-tuner; returns best.json's flags.

    Raises `UsageError` / `TuningError` for a search that cannot start or
    resume as asked, `SearchFailed` when no trial completes.

    Arguments:
        args: validated `train.py` flags with `args.tune` set (random,
            hyperband or bayesian) and `args.max_trials`.
        run_fn: trains with the given flags and returns what metrics.json
            holds (`train.run`); each trial calls it once.

    ```python
    import tempfile
    from quantens import cli
    from quantens.cli import tune
    from quantens.cli.train import run
    from quantens.tuning import SEARCHED_FLAGS

    args = cli.parse_args(["--tune", "random", "--max-trials", "1", "--epochs", "1",
                           "--width", "4", "--test-run", "--result-path", tempfile.mkdtemp()])
    best = tune.tune(args, run)   # <result-path>/tuning/{trial_0, best.json}
    assert set(SEARCHED_FLAGS) & set(best)
    ```
    """
    if args.dry_run:
        raise UsageError("--tune and --dry-run exclude each other")
    from quantens.locking import ResultDirLock

    with ResultDirLock(args.result_path, "train.py --tune"):  # one search per directory
        return _search(args, run_fn)


def _search(args: argparse.Namespace, run_fn: Callable[[argparse.Namespace], dict]) -> dict:
    """The search of `tune`, in its locked result directory."""
    tuning_dir = os.path.join(args.result_path, tuning.TUNING_DIR)
    os.makedirs(tuning_dir, exist_ok=True)
    tuning.check_resume(tuning_dir, {
        k: v for k, v in _flags(args).items()
        if k not in MAY_CHANGE_ON_RESUME and k not in defaults.DERIVED_KEYS
    })
    oracle = tuning.make_oracle(args.tune, objective_name(args), search_space(args),
                                args.max_trials, args.epochs, seed=args.seed)
    return tuning.search(
        args.result_path, oracle,
        run_trial=lambda values, trial_dir: run_fn(trial_args(args, values, trial_dir)),
        best_flags=lambda values: best_flags(args, values),
        max_epochs=args.epochs, kind=args.tune,
    )
