"""Hyperparameter search with keras-tuner: the search space, oracles, the loop, the table.

The library half of `train.py --tune` (the command-line half, which turns
flags into a search and a trial's values into flags, is `quantens.cli.tune`).
Nothing here reads flags: the search is described by plain values, and each
trial is one call of `run_trial(values, trial_dir)` returning what
metrics.json holds.

Searched values (names are `train.py`'s argparse names):

| name | values |
|---|---|
| `lr` | log-uniform in `LR_RANGE` |
| `wd` | one of `WD_CHOICES` |
| `optimizer` | radam, adam, sgd, nag |
| `kd_mode` | none, progressive, highest, average; simple too when there is a teacher |
| `kd_temperature`, `kd_weight` | uniform in their ranges, searched when `kd_mode` is not none |
| `kd_warmup_epochs` | one of `KD_WARMUP_CHOICES` below the epochs, when `kd_mode` is not none |
| `kd_weight_lowest` | α of the lowest member, uniform in `LOWEST_KD_WEIGHT_RANGE`, when `kd_mode` is not none |
| `member_weight_lowest` | the lowest member's CE weight: one of `LOWEST_MEMBER_WEIGHTS` |
| `activation_method` | round or pact (learned activation ranges), when asked for |

keras-tuner keeps its state beside the trials (`oracle.json`, `trial.json`
under `<directory>/tuning/`), so running the same search again resumes it:
finished trials are kept and a larger `max_trials` extends it. keras-tuner
imports Keras 3; training uses tf-keras. The tuner only proposes values and
records the metrics that `run_trial` returns: no Keras-3 object ever reaches
tf-keras.

```python
from quantens import tuning

space = tuning.search_space(epochs=30)
assert {"lr", "wd", "optimizer", "kd_mode"} <= set(space.values)
assert tuning.objective_name(1) == "val_accuracy_1"
```
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

from quantens import defaults
from quantens.errors import SearchFailed, TuningError, one_line
from quantens.layout import ResultDir
from quantens.results import read_json, write_json

__all__ = [
    "ACTIVATION_CHOICES",
    "KD_TEMPERATURE_RANGE",
    "KD_WARMUP_CHOICES",
    "KD_WEIGHT_RANGE",
    "LOWEST_KD_WEIGHT_RANGE",
    "LOWEST_MEMBER_VALUES",
    "LOWEST_MEMBER_WEIGHTS",
    "LR_RANGE",
    "SEARCHED_FLAGS",
    "TUNING_DIR",
    "WD_CHOICES",
    "check_resume",
    "flat_metrics",
    "kd_modes",
    "make_oracle",
    "make_tuner",
    "objective_name",
    "search",
    "search_space",
    "searches_activation",
    "trials_table",
    "write_best",
]

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


def kd_modes(teacher: bool = False) -> list[str]:
    """The KD modes a search chooses from: simple only with a teacher.

    ```python
    from quantens import tuning

    assert tuning.kd_modes() == ["none", "progressive", "highest", "average"]
    assert tuning.kd_modes(teacher=True)[-1] == "simple"
    ```
    """
    return ["none", "progressive", "highest", "average", *(["simple"] if teacher else [])]


def searches_activation(model: str, activation_method: str) -> bool:
    """Whether a search chooses the activation method: ResNetE models with round or pact."""
    return model in defaults.RESNET_E_MODELS and activation_method in ACTIVATION_CHOICES


def search_space(epochs: int, teacher: bool = False, activation: bool = False):
    """The `keras_tuner.HyperParameters` searched (names = `train.py`'s argparse dests).

    `epochs` bounds the KD warm-up choices; `teacher` adds `kd_mode` simple;
    `activation` searches `activation_method` (see `searches_activation`).

    ```python
    from quantens import tuning

    space = tuning.search_space(epochs=30)
    print([hp.name for hp in space.space])  # lr, wd, optimizer, kd_mode, kd_temperature, ...
    ```
    """
    import keras_tuner as kt

    hp = kt.HyperParameters()
    hp.Float("lr", *LR_RANGE, sampling="log")
    hp.Choice("wd", list(WD_CHOICES))
    hp.Choice("optimizer", list(defaults.OPTIMIZERS))
    modes = kd_modes(teacher)
    hp.Choice("kd_mode", modes)
    with hp.conditional_scope("kd_mode", [m for m in modes if m != "none"]):
        hp.Float("kd_temperature", *KD_TEMPERATURE_RANGE)
        hp.Float("kd_weight", *KD_WEIGHT_RANGE)
        hp.Choice("kd_warmup_epochs", [w for w in KD_WARMUP_CHOICES if w < epochs])
        hp.Float("kd_weight_lowest", *LOWEST_KD_WEIGHT_RANGE)
    hp.Choice("member_weight_lowest", list(LOWEST_MEMBER_WEIGHTS))
    if activation:
        hp.Choice("activation_method", list(ACTIVATION_CHOICES))
    return hp


def objective_name(target_bits: int, objective: str | None = "target") -> str:
    """The metric a search maximises: `val_accuracy_<b>` or `val_accuracy_mean`.

    `objective` is `target` (the `target_bits` member), `mean` or a member's
    bit-width.
    """
    objective = str(objective or "target")
    if objective == "target":
        return f"val_accuracy_{target_bits}"
    return f"val_accuracy_{objective}"


def flat_metrics(metrics: dict) -> dict[str, float]:
    """metrics.json as keras-tuner metrics: `val_accuracy_<b>` (and the teacher's)."""
    flat = {f"val_accuracy_{b}": float(a) for b, a in metrics["val_accuracy"].items()}
    flat["val_accuracy_mean"] = sum(flat.values()) / len(flat)
    if metrics.get("teacher_val_accuracy") is not None:
        flat["teacher_val_accuracy"] = float(metrics["teacher_val_accuracy"])
    return flat


def make_oracle(kind: str, objective: str, hyperparameters, max_trials: int, max_epochs: int,
                seed: int = 0):
    """The keras-tuner oracle of `kind` (random, bayesian or hyperband) maximising `objective`.

    Hyperband gives each trial at most `max_epochs` epochs (`tuner/epochs`)
    and stops creating trials at `max_trials`. keras-tuner draws a random
    seed for 0, so the oracle's seed is `seed + 1`.
    """
    import keras_tuner as kt

    common = dict(
        objective=kt.Objective(objective, direction="max"),
        hyperparameters=hyperparameters,
        seed=seed + 1,  # keras-tuner draws a random seed for 0
    )
    if kind == "random":
        return kt.oracles.RandomSearchOracle(max_trials=max_trials, **common)
    if kind == "bayesian":
        return kt.oracles.BayesianOptimizationOracle(max_trials=max_trials, **common)
    if kind == "hyperband":
        oracle = kt.oracles.HyperbandOracle(max_epochs=max_epochs, factor=3, **common)
        oracle.max_trials = max_trials  # the oracle stops creating trials there
        return oracle
    raise ValueError(f"unknown search {kind!r}: choose random, hyperband or bayesian")


def make_tuner(directory: str, oracle, run_trial: Callable[[dict, str], dict],
               on_trial_end: Callable[[object], None] | None = None):
    """A keras-tuner `Tuner` whose trials are `run_trial(values, trial_dir)` calls.

    `run_trial` returns what metrics.json holds; `flat_metrics` of it goes to
    the oracle. Each trial starts and ends with a fresh tf-keras session.
    `on_trial_end(oracle)` runs after each trial (e.g. `write_best`). The
    tuner's state lives in `directory/tuning`.
    """
    import keras_tuner as kt

    class TrainPyTuner(kt.Tuner):
        """Each trial is one `run_trial(values, trial_dir)`; its metrics go to the oracle."""

        def run_trial(self, trial, *fit_args, **fit_kwargs):
            import tensorflow as tf

            values = trial.hyperparameters.values
            trial_dir = self.get_trial_dir(trial.trial_id)
            tf.keras.backend.clear_session()  # a fresh tf-keras graph per trial
            try:
                metrics = run_trial(values, trial_dir)
            finally:
                tf.keras.backend.clear_session()
            return flat_metrics(metrics)

        def on_trial_end(self, trial):
            super().on_trial_end(trial)
            if on_trial_end is not None:
                on_trial_end(self.oracle)

    return TrainPyTuner(oracle, directory=directory, project_name=TUNING_DIR, overwrite=False)


def check_resume(tuning_dir: str, flags: dict) -> None:
    """A search resumes only with the flags it started with (`search.json`).

    The first call writes `flags` to `tuning_dir/search.json`; a later one
    raises `TuningError` naming the flags that changed.
    """
    path = os.path.join(tuning_dir, "search.json")
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


def write_best(tuning_dir: str, oracle, best_flags: Callable[[dict], dict]) -> dict | None:
    """Writes `tuning_dir/best.json` (`best_flags` of the best completed trial's values)
    and returns it; None while no trial has completed."""
    import keras_tuner as kt

    completed = kt.engine.trial.TrialStatus.COMPLETED
    best = [t for t in oracle.get_best_trials(1) if t.status == completed]
    if not best:
        return None
    flags = best_flags(best[0].hyperparameters.values)
    write_json(os.path.join(tuning_dir, "best.json"), flags)
    return flags


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "-" if value is None else str(value)


def trials_table(oracle, max_epochs: int) -> str:
    """One line per trial: id, status, searched values, epochs, objective (* = best).

    A `-` marks a value the trial did not search (`kd_temperature` and
    `kd_weight` without distillation): it kept the command line's value.
    A trial's epochs are its `tuner/epochs` (Hyperband), at most `max_epochs`.
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
            str(min(int(values.get("tuner/epochs", max_epochs)), max_epochs)),
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


def search(directory: str, oracle, run_trial: Callable[[dict, str], dict],
           best_flags: Callable[[dict], dict], max_epochs: int, kind: str) -> dict:
    """Runs (or resumes) a search in `directory/tuning`; returns best.json's contents.

    Each trial is `run_trial(values, trial_dir)`; `best_flags(values)` makes
    best.json of the best trial's values, rewritten after every trial. Prints
    the table of trials (`trials_table`) at the end.

    Raises:
        SearchFailed: keras-tuner stopped (too many failed trials) or no
            trial completed.
    """
    tuning_dir = os.path.join(directory, TUNING_DIR)
    tuner = make_tuner(directory, oracle, run_trial,
                       lambda oracle: write_best(tuning_dir, oracle, best_flags))
    try:
        tuner.search()
    except RuntimeError as error:  # keras-tuner: too many consecutive failed trials
        print(trials_table(tuner.oracle, max_epochs))
        raise SearchFailed(f"the search stopped: {one_line(error)}") from error
    best = write_best(tuning_dir, tuner.oracle, best_flags)
    print(f"\n{kind} search: {len(tuner.oracle.trials)} trials in {tuning_dir}")
    print(trials_table(tuner.oracle, max_epochs))
    if best is None:
        raise SearchFailed(f"no trial of the search in {tuning_dir} completed")
    best_path = os.path.join(tuning_dir, "best.json")
    print(f"best flags: {best_path}  (train with: train.py --config {best_path})")
    return best
