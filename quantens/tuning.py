"""Hyperparameter search over `train.py` runs with keras-tuner (`train.py --tune`).

```bash
python train.py --tune random --max-trials 20 --epochs 30 --result-path results/search
python train.py --config results/search/tuning/best.json --result-path results/best
```

Searched flags (their command-line values are replaced during the search):

| flag | values |
|---|---|
| `--lr` | log-uniform in `LR_RANGE` |
| `--wd` | one of `WD_CHOICES` |
| `--optimizer` | radam, adam, sgd, nag |
| `--kd-mode` | none, progressive, highest, average; simple too when there is a teacher |
| `--kd-temperature`, `--kd-weight` | uniform in their ranges, searched when `--kd-mode` is not none |
| `--kd-warmup-epochs` | one of `KD_WARMUP_CHOICES` below `--epochs`, when `--kd-mode` is not none |
| `--kd-weights LOWEST:α` | `kd_weight_lowest`: α of the lowest member, uniform in `LOWEST_KD_WEIGHT_RANGE`, when `--kd-mode` is not none |
| `--member-loss-weights LOWEST:W` | `member_weight_lowest`: one of `LOWEST_MEMBER_WEIGHTS` |
| `--activation-method` | round or pact (learned activation ranges), for ResNetE models with round or pact activations |

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

keras-tuner imports Keras 3; training uses tf-keras. The tuner only proposes
values and records the metrics that `run_fn` returns: no Keras-3 object ever
reaches tf-keras.

```python
import quantens
from quantens import cli, tuning

args = cli.parse_args(["--tune", "random", "--max-trials", "2", "--epochs", "1",
                       "--width", "8", "--test-run", "--result-path", "/tmp/search"])
space = tuning.search_space(args)
assert {"lr", "wd", "optimizer", "kd_mode"} <= set(space.values)
```
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Callable

from quantens import defaults
from quantens.errors import SearchFailed, TuningError, UsageError, one_line
from quantens.layout import ResultDir
from quantens.results import read_json, write_json

TUNING_DIR = ResultDir.TUNING
LR_RANGE = (1e-4, 1e-1)
WD_CHOICES = (0.0, 1e-5, 1e-4, 1e-3)
KD_TEMPERATURE_RANGE = (1.0, 8.0)
KD_WEIGHT_RANGE = (0.1, 2.0)
KD_WARMUP_CHOICES = (0.0, 1.0, 3.0, 5.0)
LOWEST_KD_WEIGHT_RANGE = (0.5, 4.0)
LOWEST_MEMBER_WEIGHTS = (1.0, 1.5, 2.0, 3.0)
SEARCHED_FLAGS = ("lr", "wd", "optimizer", "kd_mode", "kd_temperature", "kd_weight",
                  "kd_warmup_epochs", "activation_method")
ACTIVATION_CHOICES = ("round", "pact")  # the fixed [0, 1] grid or learned ranges
# searched values that stand for the lowest member's entry of a per-member flag
LOWEST_MEMBER_VALUES = {"kd_weight_lowest": "kd_weights",
                        "member_weight_lowest": "member_loss_weights"}
# flags of the search itself or of where it writes: not part of best.json
NOT_IN_BEST = ("tune", "max_trials", "tune_objective", "config", "result_path", "log",
               "test_run", "dry_run",
               *defaults.DERIVED_KEYS)
# flags that may change when a stopped search is resumed
MAY_CHANGE_ON_RESUME = ("max_trials", "log", "config")
# teacher flags that default to the student's value (see cli._validate_distillation)
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
    from quantens import cli, tuning

    assert tuning.kd_modes(cli.parse_args([])) == ["none", "progressive", "highest", "average"]
    ```
    """
    return ["none", "progressive", "highest", "average",
            *(["simple"] if has_teacher(args) else [])]


def search_space(args: argparse.Namespace):
    """The `keras_tuner.HyperParameters` searched for these flags (names = argparse dests).

    ```python
    from quantens import cli, tuning

    space = tuning.search_space(cli.parse_args([]))
    print([hp.name for hp in space.space])  # lr, wd, optimizer, kd_mode, kd_temperature, ...
    ```
    """
    import keras_tuner as kt

    hp = kt.HyperParameters()
    hp.Float("lr", *LR_RANGE, sampling="log")
    hp.Choice("wd", list(WD_CHOICES))
    hp.Choice("optimizer", list(defaults.OPTIMIZERS))
    modes = kd_modes(args)
    hp.Choice("kd_mode", modes)
    with hp.conditional_scope("kd_mode", [m for m in modes if m != "none"]):
        hp.Float("kd_temperature", *KD_TEMPERATURE_RANGE)
        hp.Float("kd_weight", *KD_WEIGHT_RANGE)
        hp.Choice("kd_warmup_epochs", [w for w in KD_WARMUP_CHOICES if w < args.epochs])
        hp.Float("kd_weight_lowest", *LOWEST_KD_WEIGHT_RANGE)
    hp.Choice("member_weight_lowest", list(LOWEST_MEMBER_WEIGHTS))
    if args.model in defaults.RESNET_E_MODELS and args.activation_method in ACTIVATION_CHOICES:
        hp.Choice("activation_method", list(ACTIVATION_CHOICES))
    return hp


def objective_name(args: argparse.Namespace) -> str:
    """The metric the search maximises: `val_accuracy_<b>` or `val_accuracy_mean`."""
    objective = str(getattr(args, "tune_objective", "target") or "target")
    if objective == "target":
        return f"val_accuracy_{args.target_bits}"
    return f"val_accuracy_{objective}"


def trial_args(
    args: argparse.Namespace, values: dict, result_path: str | None
) -> argparse.Namespace:
    """A copy of the validated flags with a trial's values and result directory.

    Teacher flags that followed the student's (`--teacher-lr` defaults to
    `--lr`, ...) follow the trial's values; `tuner/epochs` (Hyperband)
    becomes `--epochs`; KD settings for members that the trial's `kd_mode`
    does not teach are dropped (they would have no effect).

    ```python
    from quantens import cli, tuning

    args = cli.parse_args([])
    trial = tuning.trial_args(args, {"lr": 0.01, "tuner/epochs": 3}, "/tmp/trial_0")
    assert trial.lr == trial.teacher_lr == 0.01 and trial.epochs == 3 and args.lr == 0.005
    ```
    """
    new = argparse.Namespace(**vars(args))
    for flag in SEARCHED_FLAGS:
        if flag in values:
            setattr(new, flag, values[flag])
    lowest = min(args.bit_widths)
    for name, flag in LOWEST_MEMBER_VALUES.items():
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


def flat_metrics(metrics: dict) -> dict[str, float]:
    """`run`'s metrics.json as keras-tuner metrics: `val_accuracy_<b>` (and the teacher's)."""
    flat = {f"val_accuracy_{b}": float(a) for b, a in metrics["val_accuracy"].items()}
    flat["val_accuracy_mean"] = sum(flat.values()) / len(flat)
    if metrics.get("teacher_val_accuracy") is not None:
        flat["teacher_val_accuracy"] = float(metrics["teacher_val_accuracy"])
    return flat


def _make_oracle(args: argparse.Namespace):
    import keras_tuner as kt

    common = dict(
        objective=kt.Objective(objective_name(args), direction="max"),
        hyperparameters=search_space(args),
        seed=args.seed + 1,  # keras-tuner draws a random seed for 0
    )
    if args.tune == "random":
        return kt.oracles.RandomSearchOracle(max_trials=args.max_trials, **common)
    if args.tune == "bayesian":
        return kt.oracles.BayesianOptimizationOracle(max_trials=args.max_trials, **common)
    if args.tune == "hyperband":
        oracle = kt.oracles.HyperbandOracle(max_epochs=args.epochs, factor=3, **common)
        oracle.max_trials = args.max_trials  # the oracle stops creating trials there
        return oracle
    raise ValueError(f"unknown search {args.tune!r}: choose random, hyperband or bayesian")


def _make_tuner(args, run_fn, oracle):
    import keras_tuner as kt

    class TrainPyTuner(kt.Tuner):
        """Each trial is one `run_fn(args)`; the metrics it returns go to the oracle."""

        def run_trial(self, trial, *fit_args, **fit_kwargs):
            import tensorflow as tf

            values = trial.hyperparameters.values
            trial_dir = self.get_trial_dir(trial.trial_id)
            tf.keras.backend.clear_session()  # a fresh tf-keras graph per trial
            try:
                metrics = run_fn(trial_args(args, values, trial_dir))
            finally:
                tf.keras.backend.clear_session()
            return flat_metrics(metrics)

        def on_trial_end(self, trial):
            super().on_trial_end(trial)
            _write_best(args, self.oracle)

    return TrainPyTuner(
        oracle, directory=args.result_path, project_name=TUNING_DIR, overwrite=False
    )


def _check_resume(args: argparse.Namespace, tuning_dir: str) -> None:
    """A search resumes only with the flags it started with (`search.json`)."""
    path = os.path.join(tuning_dir, "search.json")
    flags = {
        k: v for k, v in _flags(args).items()
        if k not in MAY_CHANGE_ON_RESUME and k not in defaults.DERIVED_KEYS
    }
    if not os.path.exists(path):
        write_json(path, flags)
        return
    before = read_json(path)
    changed = sorted(k for k in set(before) | set(flags) if before.get(k) != flags.get(k))
    if changed:
        shown = ", ".join(f"--{k.replace('_', '-')} {before.get(k)} -> {flags.get(k)}"
                          for k in changed[:4])
        raise TuningError(
            f"{tuning_dir} holds a search with other flags ({shown}); resume it with the "
            "same flags or choose another --result-path"
        )


def _write_best(args: argparse.Namespace, oracle) -> dict | None:
    import keras_tuner as kt

    completed = kt.engine.trial.TrialStatus.COMPLETED
    best = [t for t in oracle.get_best_trials(1) if t.status == completed]
    if not best:
        return None
    flags = best_flags(args, best[0].hyperparameters.values)
    write_json(os.path.join(args.result_path, TUNING_DIR, "best.json"), flags)
    return flags


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "-" if value is None else str(value)


def trials_table(args: argparse.Namespace, oracle) -> str:
    """One line per trial: id, status, searched values, epochs, objective (* = best).

    A `-` marks a flag the trial did not search (`--kd-temperature` and
    `--kd-weight` without distillation): it kept the command line's value.
    """
    objective = oracle.objective.name
    best = oracle.get_best_trials(1)
    best_id = best[0].trial_id if best and best[0].score is not None else None
    columns = (*SEARCHED_FLAGS, *LOWEST_MEMBER_VALUES)
    header = ["trial", "status", *columns, "epochs", objective]
    rows = []
    for trial_id in sorted(oracle.trials):
        trial = oracle.trials[trial_id]
        values = trial.hyperparameters.values
        score = trial.score
        rows.append([
            f"{trial_id}{'*' if trial_id == best_id else ''}",
            str(trial.status).split(".")[-1],
            *[_format(values.get(flag)) for flag in columns],
            str(min(int(values.get("tuner/epochs", args.epochs)), args.epochs)),
            "-" if score is None or math.isnan(score) else f"{score:.4f}",
        ])
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=True)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
             for line in (header, *rows)]
    lines.insert(1, "  ".join("-" * w for w in widths))
    failed = [oracle.trials[t] for t in sorted(oracle.trials)
              if str(oracle.trials[t].status).endswith("FAILED") and oracle.trials[t].message]
    for trial in failed:
        last = [line for line in trial.message.splitlines() if line.strip()][-1]
        lines.append(f"trial {trial.trial_id} failed: {last.strip()}")
    return "\n".join(lines)


def tune(args: argparse.Namespace, run_fn: Callable[[argparse.Namespace], dict]) -> dict:
    """Searches the flags in `SEARCHED_FLAGS` with keras-tuner; returns best.json's flags.

    Raises `UsageError` / `TuningError` for a search that cannot start or
    resume as asked, `SearchFailed` when no trial completes.

    Arguments:
        args: validated `train.py` flags with `args.tune` set (random,
            hyperband or bayesian) and `args.max_trials`.
        run_fn: trains with the given flags and returns what metrics.json
            holds (`train.run`); each trial calls it once.

    ```python
    import tempfile
    from quantens import cli, tuning
    from quantens.cli.train import run

    args = cli.parse_args(["--tune", "random", "--max-trials", "1", "--epochs", "1",
                           "--width", "4", "--test-run", "--result-path", tempfile.mkdtemp()])
    best = tuning.tune(args, run)   # <result-path>/tuning/{trial_0, best.json}
    assert set(tuning.SEARCHED_FLAGS) & set(best)
    ```
    """
    if args.dry_run:
        raise UsageError("--tune and --dry-run exclude each other")
    from quantens.locking import ResultDirLock

    with ResultDirLock(args.result_path, "train.py --tune"):  # one search per directory
        return _search(args, run_fn)


def _search(args: argparse.Namespace, run_fn: Callable[[argparse.Namespace], dict]) -> dict:
    tuning_dir = os.path.join(args.result_path, TUNING_DIR)
    os.makedirs(tuning_dir, exist_ok=True)
    _check_resume(args, tuning_dir)
    tuner = _make_tuner(args, run_fn, _make_oracle(args))
    try:
        tuner.search()
    except RuntimeError as error:  # keras-tuner: too many consecutive failed trials
        print(trials_table(args, tuner.oracle))
        raise SearchFailed(f"the search stopped: {one_line(error)}") from error
    best = _write_best(args, tuner.oracle)
    print(f"\n{args.tune} search: {len(tuner.oracle.trials)} trials in {tuning_dir}")
    print(trials_table(args, tuner.oracle))
    if best is None:
        raise SearchFailed(f"no trial of the search in {tuning_dir} completed")
    best_path = os.path.join(tuning_dir, "best.json")
    print(f"best flags: {best_path}  (train with: train.py --config {best_path})")
    return best
