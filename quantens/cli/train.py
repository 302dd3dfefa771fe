"""`train.py`: parse, build, fit, export, report; the seed's flags and example commands.

With no flags it trains a 5-member ensemble (32 8 4 2 1 bits) of a small
ResNetE on the embedded `digits` dataset and prints the test accuracy of
every member. Bad input ends with one line `train.py: error: ...` and exit
code 2. In one process the trained ensemble and its datasets flow forward to
the export and the report; nothing is read back from the result directory.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from quantens import cli, defaults  # noqa: E402  (sets TF_USE_LEGACY_KERAS first)
from quantens.cli.description import RunDescription, RuntimeSettings, describe  # noqa: E402
from quantens.errors import (  # noqa: E402
    ConfigError,
    DataError,
    TeacherError,
    UsageError,
    WeightsError,
    one_line,
)
from quantens.layout import ResultDir  # noqa: E402


def accuracy_table(accuracy: dict, bit_widths, teacher: float | None = None,
                   best: dict | None = None, best_epoch: int | None = None) -> str:
    """The table printed at the end: test accuracy per member of the final weights
    (and of the best checkpoint, and the teacher's)."""
    best_label = f"best (epoch {best_epoch})" if best_epoch else "best"
    lines = ["bits   test accuracy" + (f"   {best_label}" if best else ""),
             "----   -------------" + (f"   {'-' * len(best_label)}" if best else "")]
    for b in bit_widths:
        line = f"{b:>4}   {accuracy[str(b)]:.4f}"
        if best:
            line += f"{'':>10}{best[str(b)]:.4f}"
        lines.append(line)
    if teacher is not None:
        lines.append(f"teacher {teacher:.4f}")
    return "\n".join(lines)


def _test_accuracy(ensemble, dataset) -> tuple[dict, float | None]:
    """(accuracy per member as {"32": ...}, the teacher's or None) on `dataset`."""
    logs = ensemble.evaluate(dataset, return_dict=True, verbose=0)
    accuracy = {str(b): float(logs[f"accuracy_{b}"]) for b in ensemble.bit_widths}
    teacher = logs.get("teacher_accuracy")
    return accuracy, None if teacher is None else float(teacher)


def _summarise_members(model, bit_widths) -> None:
    import larq as lq

    import quantens

    for b in bit_widths:
        print(f"\n== member {b} bit")
        with quantens.bits(b):
            lq.models.summary(model)


def _setup(runtime: RuntimeSettings):
    """Devices, seeds and dtype; before TensorFlow runs its first operation."""
    import tensorflow as tf

    from quantens import distribute

    strategy = distribute.strategy_from_flags(runtime.gpus, runtime.cpu_replicas)
    if runtime.deterministic:
        tf.config.experimental.enable_op_determinism()
    tf.keras.utils.set_random_seed(runtime.seed)
    if runtime.dtype != "float32":
        tf.keras.mixed_precision.set_global_policy(f"mixed_{runtime.dtype}")
    return strategy


def _teacher_flags(d: RunDescription) -> dict:
    """Flags of the ensemble teacher: its run's config.json beside the weights, if any.

    A first stage trained with --fp-weights is rebuilt with full-precision
    weights; without a config.json the current flags describe it.
    """
    import json

    config = ResultDir(os.path.dirname(os.path.abspath(d.teacher.params))).config
    flags = dict(d.flags)
    if os.path.isfile(config):
        with open(config, encoding="utf-8") as f:
            flags.update({k: v for k, v in json.load(f).items() if k in cli.ARCHITECTURE_FLAGS})
    return flags


def _kd_warmup_steps(d: RunDescription, steps_per_epoch: int) -> int:
    """The library's warm-up check (`quantens.run.kd_warmup_steps`) in the flag's words."""
    from quantens import run as recipe

    try:
        return recipe.kd_warmup_steps(d.distillation, d.schedule.epochs, steps_per_epoch)
    except ConfigError as error:
        raise UsageError(
            f"--kd-warmup-epochs {d.distillation.warmup_epochs:g}: {error}"
        ) from error


def _build_distillation(d: RunDescription, spec, steps_per_epoch: int):
    """The Distillation of the KD flags (None when there is nothing to distil)."""
    from quantens import run as recipe

    _kd_warmup_steps(d, steps_per_epoch)  # before a teacher is built
    if d.teacher.ensemble:
        teacher, mode = _ensemble_teacher(d, spec), defaults.ENSEMBLE_TEACHER
    elif d.teacher.float_teacher:
        from zoo.applications import float_teacher

        teacher = float_teacher(d.model.name, spec.input_shape, spec.num_classes)
        mode = "pretrained_external"
    elif d.teacher.mode == "none":
        if d.distillation.mode == "none":
            return None
        teacher, mode = None, "none"
    else:
        return _external_teacher_distillation(d, spec, steps_per_epoch)
    return recipe.distillation(teacher, d.ensemble.bit_widths, d.distillation,
                               epochs=d.schedule.epochs, steps_per_epoch=steps_per_epoch,
                               teacher_mode=mode)


def _ensemble_teacher(d: RunDescription, spec):
    """--ensemble-teacher: the first stage's ensemble, rebuilt from its flags, its weights
    loaded from --teacher-params."""
    import zoo
    from quantens import results

    flags = _teacher_flags(d)
    if list(flags["bit_widths"]) != list(d.ensemble.bit_widths):
        raise UsageError(
            f"--teacher-params {d.teacher.params}: the teacher ensemble has bit-widths "
            f"{flags['bit_widths']}, this run {list(d.ensemble.bit_widths)}; they must match"
        )
    teacher = zoo.create_model_from_flags(flags, spec.input_shape, spec.num_classes)
    try:
        results.load_weights(teacher, d.teacher.params)
    except Exception as error:
        raise WeightsError(
            f"--teacher-params {d.teacher.params}: cannot load it as a {d.model.name} "
            f"ensemble ({one_line(error)})"
        ) from error
    return teacher


def _external_teacher_distillation(d: RunDescription, spec, steps_per_epoch: int):
    """--teacher with --kd-teacher-mode pretrained_external (frozen) or untrained_external
    (trained alongside with the --teacher-* optimizer and schedule)."""
    import zoo
    from quantens import data
    from quantens import run as recipe

    weights = d.teacher.params
    if weights is None and d.teacher.mode == "pretrained_external":
        weights = "pretrained"
    # what a keras.applications teacher undoes to get back to the pixels
    mean, std, bgr = data.preprocessing_mean_std(d.data.input_preprocessing, spec)
    try:
        teacher = zoo.create_teacher(
            d.teacher.name, spec.input_shape, spec.num_classes, weights, mean, std, bgr=bgr
        )
    except TeacherError as error:
        raise TeacherError(f"--teacher {d.teacher.name}: {error}") from error
    trained = d.teacher.mode == "untrained_external"
    return recipe.distillation(
        teacher, d.ensemble.bit_widths, d.distillation, epochs=d.schedule.epochs,
        steps_per_epoch=steps_per_epoch, teacher_mode=d.teacher.mode,
        teacher_optimizer=recipe.make_optimizer(d.teacher.schedule, steps_per_epoch)
        if trained else None,
        teacher_weight_decay=d.teacher.weight_decay,
    )


def _is_converted(model: str) -> bool:
    from zoo.applications import is_converted

    return is_converted(model)


def _flag_data_error(error: DataError) -> DataError:
    """The library's "dataset X: ..." in the flag's words ("--dataset X: ...")."""
    message = str(error)
    return DataError(f"--{message}") if message.startswith("dataset ") else error


def _calibrate(ensemble, d: RunDescription, plan, batch_size: int) -> None:
    """A converted model's members fitted to the training split before the first epoch
    (`quantens.run.calibrate_members`: clip values and BN statistics of every member
    below 32 bits)."""
    from quantens import run as recipe
    from quantens.calibration import CALIBRATION_EXAMPLES

    low = [b for b in d.ensemble.bit_widths if b != defaults.FULL_PRECISION]
    if not low:
        return
    print(f"calibrating members {' '.join(map(str, low))} on up to {CALIBRATION_EXAMPLES} "
          f"training images ({d.ensemble.calibration})", flush=True)
    try:
        recipe.calibrate_members(ensemble, d.data, plan, method=d.ensemble.calibration,
                                 batch_size=batch_size, verbose=1 if sys.stdout.isatty() else 0)
    except DataError as error:
        raise _flag_data_error(error) from error


def _check_float_inputs(d: RunDescription, spec, plan) -> None:
    """--model PATH: the saved float model's validation accuracy under the stated
    --input-preprocessing and every other one (`quantens.data.check_preprocessing`), printed.

    One that fits it far better (`quantens.data.likely_preprocessing`) means it was
    trained on other inputs, and its members and float teacher would learn noise: refused
    before anything is trained (ConfigError naming the fix) when the flag was not given,
    a warning when it was. The random state is reseeded afterwards: the run is the same
    as without the check.
    """
    import warnings

    import tensorflow as tf

    from quantens import data
    from zoo.applications import SoftmaxRemovedWarning, load_float_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SoftmaxRemovedWarning)  # _create_model says so
        try:
            model = load_float_model(d.model.name, spec.input_shape, spec.num_classes)
        except (TypeError, ValueError):
            return  # _create_model reports it, in its words
    examples = d.data.batch_size if d.data.take_batches else data.COMPARE_MAX_EXAMPLES
    try:
        check = data.check_preprocessing(
            model, d.data.dataset, plan.validation, d.data.input_preprocessing,
            data_dir=d.data.data_dir, batch_size=d.data.batch_size, max_examples=examples,
        )
    except DataError:
        raise
    except Exception as error:  # TFDS raises many kinds; all mean "no data here"
        raise DataError(
            f"--dataset {d.data.dataset}: cannot load it ({one_line(error)})"
        ) from error
    finally:
        tf.keras.utils.set_random_seed(d.runtime.seed)  # as _setup left it
    others = ", ".join(f"{name} {accuracy:.4f}" for name, accuracy in check.accuracies.items()
                       if name != check.stated)
    print(f"float model: validation accuracy {check.accuracy:.4f} with --input-preprocessing "
          f"{check.stated} ({others}; {check.examples} images)", flush=True)
    better = check.better
    if better is None:
        return
    problem = (f"--model {d.model.name}: the float model scores {100 * check.accuracy:.1f} % "
               f"on validation with --input-preprocessing {check.stated} but "
               f"{100 * check.accuracies[better]:.1f} % with {better}")
    if not d.runtime.explicit_preprocessing:
        raise ConfigError(f"{problem}: it was trained on other inputs; pass "
                          f"--input-preprocessing {better}")
    print(f"warning: {problem}: it was most likely trained on other inputs, and its members "
          f"and teacher would learn from noise; the likely fix: --input-preprocessing {better}",
          file=sys.stderr, flush=True)


def _create_model(d: RunDescription, spec):
    """The model of the flags; the zoo's notes (a saved model's softmax removed) printed."""
    import warnings

    import zoo
    from zoo.applications import SoftmaxRemovedWarning

    name = d.model.name
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SoftmaxRemovedWarning)
        try:
            model = zoo.create_model_from_flags(d.flags, spec.input_shape, spec.num_classes)
        except (TypeError, ValueError) as error:
            message = one_line(error)
            if message.startswith(f"{name}: "):  # the zoo names the model itself
                message = message[len(name) + 2:]
            raise ConfigError(f"--model {name}: {message}") from error
    for warning in caught:
        if issubclass(warning.category, SoftmaxRemovedWarning):
            message = str(warning.message)
            if message.startswith(f"{name}: "):
                message = message[len(name) + 2:]
            print(f"note: --model {name}: {message}")
        else:  # everything else as Python would have shown it
            warnings.showwarning(warning.message, warning.category, warning.filename,
                                 warning.lineno)
    return model


def run(args: argparse.Namespace) -> dict:
    """Trains as the validated flags `args` say; returns what metrics.json holds.

    The flags become one typed `RunDescription` (`quantens.cli.description`)
    that every step takes. Raises a `quantens.errors.QuantensError` (one
    line, naming the flag) for input that cannot work; `main` turns it into
    `train.py: error: ...`. The run owns its result directory
    (`quantens.locking`) from its first write to its end: the chief the
    directory, another worker its own subdirectory.
    """
    import zoo
    from quantens import data
    from quantens.cluster import read_tf_config
    from quantens.locking import ResultDirLock

    # what can be checked without writing: before the lock creates the directory
    try:
        zoo.get_builder(args.model)
    except ValueError as error:
        raise UsageError(f"--model: {error}") from error
    try:
        spec = data.resolve(args.dataset, args.data_dir)
        plan = data.plan_splits(spec, args.val_split)
    except DataError as error:
        raise DataError(f"--dataset: {error}") from error
    # not given: the default, recorded in config.json (a saved model that scores far
    # better on other inputs is then refused, not only warned about: `_check_float_inputs`)
    explicit = args.input_preprocessing is not None
    args.input_preprocessing = args.input_preprocessing or defaults.INPUT_PREPROCESSING
    try:
        data.describe_preprocessing(args.input_preprocessing, spec)  # applies to the images?
    except DataError as error:
        raise UsageError(
            f"--{str(error).replace('input preprocessing ', 'input-preprocessing ', 1)}"
        ) from error
    try:
        zoo.check_flags(vars(args), spec.input_shape, spec.num_classes)
    except ConfigError as error:
        message = str(error).removeprefix(f"{args.model} ")
        raise ConfigError(f"--model {args.model} {message}") from error
    d = describe(args, explicit_preprocessing=explicit)
    if d.export.budgets and plan.validation_is_test:
        raise UsageError(
            f"--budget-kb searches members on the validation split, and --dataset "
            f"{args.dataset} validates on its test split ({plan.test}) here: add --val-split 0.1"
        )
    if d.runtime.dry_run:
        return _run(d, None, spec, plan)
    cluster = read_tf_config()
    run_dir = ResultDir(d.output.result_path)
    chief = cluster is None or not cluster.multi_worker or cluster.is_chief
    out = run_dir if chief else run_dir.worker(cluster.task_index)
    with ResultDirLock(out.root, "train.py"):
        return _run(d, out, spec, plan)


@dataclasses.dataclass
class _Callbacks:
    """The callbacks of `fit`, in order, and the two whose state the run reads afterwards."""

    callbacks: list
    history: object
    best: object


def _run(d: RunDescription, out: ResultDir | None, spec, plan) -> dict:
    """One run: (a saved model's inputs checked ->) build data -> build ensemble -> callbacks
    -> fit -> final metrics -> export -> report. `out` is None for --dry-run (which
    summarises the members and stops)."""
    strategy = _setup(d.runtime)
    if not d.runtime.dry_run and d.model.is_file:
        _check_float_inputs(d, spec, plan)
    model = _build_model(d, spec, strategy)
    _check_calibration(d, model)
    if d.runtime.dry_run:
        _summarise_members(model, d.ensemble.bit_widths)
        return {}
    global_batch = d.data.batch_size * strategy.num_replicas_in_sync
    started = time.time()
    datasets = _build_data(d, plan, global_batch)
    ensemble = _build_ensemble(d, spec, plan, model, strategy, datasets.steps_per_epoch,
                               global_batch)
    # The chief writes the result directory; other workers a private one (`run`).
    from quantens import distribute

    chief = distribute.is_chief(strategy)
    run_dir = ResultDir(d.output.result_path)
    config, logger = _prepare_result_dir(d, out, run_dir, model, spec)
    callbacks = _callbacks(d, out, run_dir, model, datasets.epoch_counter, logger,
                           global_batch, chief)
    _fit(d, ensemble, model, datasets, callbacks.callbacks, out)
    metrics = _final_metrics(d, ensemble, model, plan, datasets, callbacks.best, out,
                             train_seconds=round(time.time() - started, 1))
    exported = _export(d, ensemble, plan, datasets.test, run_dir) \
        if d.export.export and chief else None
    _report(d, metrics, config, callbacks.history, exported, model, plan, run_dir, logger,
            chief)
    return metrics


def _build_model(d: RunDescription, spec, strategy):
    """The model of the flags under `strategy`, with the --resume weights loaded (not for
    --dry-run)."""
    import tensorflow_datasets as tfds

    from quantens import results

    if not sys.stdout.isatty():
        tfds.disable_progress_bar()
    with strategy.scope():
        model = _create_model(d, spec)
    if d.runtime.dry_run or not d.model.resume:
        return model
    try:
        results.load_weights(model, d.model.resume)
    except Exception as error:  # h5py's OSError, Keras' ValueError on a mismatch
        raise WeightsError(
            f"--resume {d.model.resume}: cannot load these weights into {d.model.name} "
            f"({one_line(error)})"
        ) from error
    return model


def _build_data(d: RunDescription, plan, global_batch: int):
    """Build data: the train, validation and test datasets of `plan`
    (`quantens.run.load_datasets`).

    Validation chooses (best checkpoint, tuner); test is reported and chooses
    nothing. The data order of an epoch is a function of (seed, epoch).
    """
    from quantens import run as recipe

    try:
        return recipe.load_datasets(d.data, global_batch, plan)
    except DataError as error:
        raise _flag_data_error(error) from error


def _build_ensemble(d: RunDescription, spec, plan, model, strategy,
                    steps_per_epoch: int, global_batch: int):
    """Build ensemble: the compiled `QuantEnsemble` of `model` with its optimizer, schedule
    and distillation (`quantens.run.build_ensemble`); a converted model's members
    calibrated before the first epoch."""
    from quantens import run as recipe

    with strategy.scope():
        distillation = _build_distillation(d, spec, steps_per_epoch)
        ensemble = recipe.build_ensemble(model, d.ensemble, d.schedule, steps_per_epoch,
                                         distillation=distillation)
    if d.ensemble.calibration != "none" and not d.model.resume and _is_converted(d.model.name):
        _calibrate(ensemble, d, plan, global_batch)
    return ensemble


def _check_calibration(d: RunDescription, model) -> None:
    """--calibration given for a model with no clip value to calibrate: the library's
    answer (`quantens.calibration.check_calibratable`), before anything is trained."""
    from quantens.calibration import check_calibratable

    method = d.ensemble.calibration
    if method == defaults.CALIBRATION:
        return  # the default: a model with nothing to calibrate is not calibrated
    try:
        check_calibratable(model, d.ensemble.bit_widths)
    except ConfigError as error:
        raise ConfigError(f"--calibration {method}: {error}") from error


def _prepare_result_dir(d: RunDescription, out: ResultDir, run_dir: ResultDir, model, spec):
    """The result directory made ready: stale temporaries removed, what a resumed run
    starts from checked before anything is rewritten, config.json (every flag, the
    dataset's input shape and classes) and model.json written. Returns (config, logger)."""
    from quantens import results

    os.makedirs(out.root, exist_ok=True)
    results.remove_stale_temporaries(out.root)  # of a killed run: never taken for a result
    # what a resumed run starts from, checked before anything of the directory is rewritten
    results.read_history(out.history)
    results.check_backup(run_dir.backup)
    config = cli.config_dict({**d.flags, "input_shape": list(spec.input_shape),
                              "num_classes": spec.num_classes})
    results.write_json(out.config, config)
    results.write_model(model, out.model)
    logger = results.file_logger(d.output.log or out.log)
    logger.info("train.py %s", " ".join(sys.argv[1:]))
    return config, logger


def _callbacks(d: RunDescription, out: ResultDir, run_dir: ResultDir, model,
               epoch_counter, logger, global_batch: int, chief: bool) -> _Callbacks:
    """Callbacks: backup, epoch counter, divergence guard, history, log, best checkpoint,
    the backup's end of epoch (and TensorBoard on the chief).

    At the end of an epoch, in this order: the divergence check, the history
    row, the log line, the best checkpoint, and last the backup that marks the
    epoch done: a kill at any instant repeats at most that epoch, its row once.
    """
    import tensorflow as tf

    from quantens import results

    history = results.HistoryCSV(out.history)
    best = results.BestCheckpoint(
        out.best_weights, monitor=f"val_accuracy_{d.ensemble.target_bits}",
        save=lambda p: results.save_weights(model, p), history_path=out.history,
    )
    # one backup folder for all workers: Keras keeps the chief's
    backup = results.BackupLast(run_dir.backup, delete_checkpoint=False)
    callbacks = [
        backup,  # first: it restores the training state the others start from
        epoch_counter,  # after the backup: it reads the restored step count
        results.DivergenceGuard(),
        history,
        results.LogFile(logger, d.output.log_interval, global_batch),
        best,
        backup.after_epoch(),
    ]
    if chief and d.output.tensorboard:  # per-member metrics and the learning rate
        callbacks.insert(-2, tf.keras.callbacks.TensorBoard(
            d.output.tensorboard_dir or run_dir.path(ResultDir.TENSORBOARD)))
    return _Callbacks(callbacks, history, best)


def _fit(d: RunDescription, ensemble, model, datasets, callbacks: list,
         out: ResultDir) -> None:
    """Fit: trains for --epochs (validating each epoch), then saves the final weights."""
    from quantens import results

    ensemble.fit(
        datasets.train, epochs=d.schedule.epochs, validation_data=datasets.validation,
        callbacks=callbacks, verbose=1 if sys.stdout.isatty() else 2,
    )
    results.save_weights(model, out.weights)


def _final_metrics(d: RunDescription, ensemble, model, plan, datasets, best,
                   out: ResultDir, train_seconds: float) -> dict:
    """Final metrics: validation and test accuracy of the final weights, test accuracy of
    the checkpoint validation chose; written to metrics.json and returned."""
    from quantens import results

    val_accuracy, teacher = _test_accuracy(ensemble, datasets.validation)
    test_accuracy, teacher_test = (
        (val_accuracy, teacher) if plan.validation_is_test
        else _test_accuracy(ensemble, datasets.test)
    )
    best_test = None
    if best.best_epoch is not None:  # the checkpoint validation chose, on the test split
        final_weights = ensemble.get_weights()  # BestCheckpoint kept the ensemble's
        if best.best_weights is not None:
            ensemble.set_weights(best.best_weights)
        else:  # chosen by an earlier, resumed process and not beaten since
            results.load_weights(model, out.best_weights)
        best_test, _ = _test_accuracy(ensemble, datasets.test)
        ensemble.set_weights(final_weights)
    metrics = {
        "bit_widths": list(d.ensemble.bit_widths),
        "target_bits": d.ensemble.target_bits,
        "val_accuracy": val_accuracy,
        "teacher_val_accuracy": teacher,
        "test_accuracy": test_accuracy,
        "teacher_test_accuracy": teacher_test,
        "best_epoch": best.best_epoch,
        "best_test_accuracy": best_test,
        "validation_split": str(plan.validation),
        "test_split": str(plan.test),
        "validation_is_test": plan.validation_is_test,
        "train_seconds": train_seconds,
    }
    results.write_json(out.metrics, metrics)
    return metrics


def _export(d: RunDescription, ensemble, plan, test_ds, run_dir: ResultDir):
    """Export (--export, the chief): every member to <result-path>/export, checked on the
    test split; prints the summary table and returns what `export_ensemble` returns."""
    from quantens import data, export

    _, calibration = export.export_datasets(
        d.data.dataset, d.ensemble.bit_widths, batch_size=d.export.batch_size,
        data_dir=d.data.data_dir, evaluate=False, preprocessing=d.data.input_preprocessing,
    )
    spec = data.resolve(d.data.dataset, d.data.data_dir)
    exported = export.export_ensemble(
        ensemble, run_dir.export, val_data=test_ds, calibration_data=calibration,
        batch_size=d.export.batch_size, max_val_examples=d.export.max_val_examples,
        remove_stale=True,
        extra={"model": d.model.name, "dataset": d.data.dataset, "split": str(plan.test),
               "weights": ResultDir.WEIGHTS,
               "input_preprocessing": export.input_preprocessing_field(
                   d.data.input_preprocessing, spec)},
    )
    print(export.summary_table(exported))
    if d.export.budgets:
        _export_budgets(d, ensemble, plan, test_ds, run_dir, exported)
    return exported


def _export_budgets(d: RunDescription, ensemble, plan, test_ds, run_dir: ResultDir,
                    exported: dict) -> None:
    """--budget-kb: per budget the most accurate member that fits, searched on the
    validation split (`quantens.budget.export_budget_members`), written beside the
    uniform members and added to export.json (and to `exported`) with the frontier."""
    from quantens import data
    from quantens.budget import export_budget_members
    from quantens.frontier import export_frontier

    def split(which):
        return data.load(d.data.dataset, which, d.export.batch_size, data_dir=d.data.data_dir,
                         take_batches=d.data.take_batches,
                         preprocessing=d.data.input_preprocessing)

    records = export_budget_members(
        ensemble, d.export.budgets, run_dir.export, train_data=split(plan.train),
        val_data=split(plan.validation), test_data=test_ds,
        batch_size=d.export.batch_size, max_test_examples=d.export.max_val_examples,
    )
    exported["members"].update(records)
    exported["frontier"] = export_frontier(exported["members"])
    for name, record in records.items():
        print(f"{name}: {record['file']} {record['format']} {record['bytes']} bytes, "
              f"validation accuracy {record['search']['validation_accuracy']:.4f}")


def _report(d: RunDescription, metrics: dict, config: dict, history, exported, model,
            plan, run_dir: ResultDir, logger, chief: bool) -> None:
    """Report: the chief writes the report; the table of test accuracy per member goes to
    the log (every worker) and to stdout (the chief)."""
    if chief:
        from quantens import report

        result = report.ResultData(
            run_dir.root, metrics, config, report.parse_history(history.rows), exported
        )
        report.write_report(result, model=model)
    table = accuracy_table(metrics["test_accuracy"], d.ensemble.bit_widths,
                           metrics["teacher_test_accuracy"], metrics["best_test_accuracy"],
                           metrics["best_epoch"])
    note = (f"test split: {plan.test}; checkpoints chosen on: {plan.validation}"
            + (" (the test split: pass --val-split to hold out a validation part of train)"
               if plan.validation_is_test else ""))
    logger.info("test accuracy per member (%s)\n%s", note, table)
    if chief:
        print(table)
        print(note)
        print(f"results in {d.output.result_path} ({metrics['train_seconds']:.0f} s)")


def two_stage(args: argparse.Namespace) -> dict:
    """`--two-stage`: the seed's examples 4 and 5 in one command.

    Stage 1 (`<result-path>/stage1`) trains the ensemble with `--fp-weights`
    and no distillation; stage 2 (`<result-path>/stage2`) starts from stage
    1's final weights with them as `--ensemble-teacher` (member b teaches
    member b; `--kd-mode` and the other KD flags apply here). Each stage is
    an ordinary run: re-running the command resumes where it stopped. Returns
    `{"stage1": metrics, "stage2": metrics}`.
    """
    root = args.result_path
    first = argparse.Namespace(**vars(args))
    first.two_stage, first.fp_weights, first.kd_mode = False, True, "none"
    first.kd_weights = first.kd_temperatures = None
    first.kd_warmup_epochs = 0.0
    first.result_path, first.export = os.path.join(root, "stage1"), False
    metrics = {"stage1": run(first)}
    weights = ResultDir(first.result_path).weights
    second = argparse.Namespace(**vars(args))
    second.two_stage, second.ensemble_teacher = False, True
    second.teacher_params = second.resume = weights
    second.result_path = os.path.join(root, "stage2")
    metrics["stage2"] = run(second)
    return metrics


def _main(args: argparse.Namespace) -> int:
    cli.load_tensorflow()
    if args.tune:
        from quantens.cli import tune

        tune.tune(args, run)
        return 0
    if args.two_stage:
        two_stage(args)
        return 0
    run(args)
    return 0


def main(argv: list[str] | None = None) -> int:
    """The `train.py` / `quantens-train` entry point: returns the exit code."""
    args = cli.parse_args(argv)
    return cli.run_main(lambda: _main(args), os.path.basename(sys.argv[0]) or "train.py")


__all__ = ["accuracy_table", "main", "run", "two_stage"]


if __name__ == "__main__":
    sys.exit(main())
