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


def _setup(args):
    """Devices, seeds and dtype; before TensorFlow runs its first operation."""
    import tensorflow as tf

    from quantens import distribute

    strategy = distribute.strategy_from_flags(args.gpus, args.cpu_replicas)
    if args.deterministic:
        tf.config.experimental.enable_op_determinism()
    tf.keras.utils.set_random_seed(args.seed)
    if args.dtype != "float32":
        tf.keras.mixed_precision.set_global_policy(f"mixed_{args.dtype}")
    return strategy


def _steps(dataset, fallback: int) -> int:
    import tensorflow as tf

    n = int(dataset.cardinality())
    return n if n > 0 and n != tf.data.INFINITE_CARDINALITY else fallback


def _teacher_flags(args) -> dict:
    """Flags of the ensemble teacher: its run's config.json beside the weights, if any.

    A first stage trained with --fp-weights is rebuilt with full-precision
    weights; without a config.json the current flags describe it.
    """
    import json

    config = ResultDir(os.path.dirname(os.path.abspath(args.teacher_params))).config
    flags = dict(vars(args))
    if os.path.isfile(config):
        with open(config, encoding="utf-8") as f:
            flags.update({k: v for k, v in json.load(f).items() if k in cli.ARCHITECTURE_FLAGS})
    return flags


def _build_distillation(args, spec, steps_per_epoch):
    """The Distillation of the KD flags (None when there is nothing to distil)."""
    from quantens.distillation import Distillation

    kd = _kd_settings(args, steps_per_epoch)
    if args.ensemble_teacher:
        return Distillation(args.bit_widths, args.kd_mode, _ensemble_teacher(args, spec),
                            "ensemble", **kd)
    if getattr(args, "float_teacher", False):
        from zoo.applications import float_teacher

        teacher = float_teacher(args.model, spec.input_shape, spec.num_classes)
        return Distillation(args.bit_widths, args.kd_mode, teacher, "pretrained_external", **kd)
    if args.kd_teacher_mode == "none":
        if args.kd_mode == "none":
            return None
        return Distillation(args.bit_widths, args.kd_mode, None, "none", **kd)
    return _external_teacher_distillation(args, spec, steps_per_epoch, kd)


def _kd_settings(args, steps_per_epoch: int) -> dict:
    """The Distillation keywords of the KD flags (temperatures, weights, warm-up steps)."""
    warmup_steps = round(args.kd_warmup_epochs * steps_per_epoch)
    if warmup_steps and warmup_steps >= args.epochs * steps_per_epoch:
        raise UsageError(
            f"--kd-warmup-epochs {args.kd_warmup_epochs:g} covers all {warmup_steps} training "
            f"steps ({steps_per_epoch} per epoch): no step would distil; choose fewer warm-up "
            "epochs"
        )
    return dict(
        temperature=args.kd_temperature, weight=args.kd_weight,
        attention_weight=args.kd_attention_weight,
        warmup_steps=warmup_steps,
        student_weights=dict(args.kd_weights or []),
        student_temperatures=dict(args.kd_temperatures or []),
    )


def _ensemble_teacher(args, spec):
    """--ensemble-teacher: the first stage's ensemble, rebuilt from its flags, its weights
    loaded from --teacher-params."""
    import zoo
    from quantens import results

    flags = _teacher_flags(args)
    if list(flags["bit_widths"]) != list(args.bit_widths):
        raise UsageError(
            f"--teacher-params {args.teacher_params}: the teacher ensemble has bit-widths "
            f"{flags['bit_widths']}, this run {list(args.bit_widths)}; they must match"
        )
    teacher = zoo.create_model_from_flags(flags, spec.input_shape, spec.num_classes)
    try:
        results.load_weights(teacher, args.teacher_params)
    except Exception as error:
        raise WeightsError(
            f"--teacher-params {args.teacher_params}: cannot load it as a {args.model} "
            f"ensemble ({one_line(error)})"
        ) from error
    return teacher


def _external_teacher_distillation(args, spec, steps_per_epoch: int, kd: dict):
    """--teacher with --kd-teacher-mode pretrained_external (frozen) or untrained_external
    (trained alongside with the --teacher-* optimizer and schedule)."""
    import zoo
    from quantens import data, optimizers
    from quantens.distillation import Distillation

    weights = args.teacher_params
    if weights is None and args.kd_teacher_mode == "pretrained_external":
        weights = "pretrained"
    # what a keras.applications teacher undoes to get back to the pixels
    mean, std, bgr = data.preprocessing_mean_std(args.input_preprocessing, spec)
    try:
        teacher = zoo.create_teacher(
            args.teacher, spec.input_shape, spec.num_classes, weights, mean, std, bgr=bgr
        )
    except TeacherError as error:
        raise TeacherError(f"--teacher {args.teacher}: {error}") from error
    teacher_optimizer = None
    if args.kd_teacher_mode == "untrained_external":
        schedule = optimizers.make_schedule(
            args.teacher_lr_mode, args.teacher_lr, args.epochs, steps_per_epoch,
            lr_steps=args.lr_steps, lr_factor=args.lr_factor, warmup_epochs=args.warmup_epochs,
        )
        teacher_optimizer = optimizers.make_optimizer(
            args.teacher_optimizer, schedule, momentum=args.teacher_momentum
        )
    return Distillation(
        args.bit_widths, args.kd_mode, teacher, args.kd_teacher_mode,
        teacher_optimizer=teacher_optimizer, teacher_weight_decay=args.teacher_wd, **kd,
    )


def _is_converted(model: str) -> bool:
    from zoo.applications import is_converted

    return is_converted(model)


def _calibrate(ensemble, args, plan, batch_size: int) -> None:
    """A converted model's members fitted to the training split before the first epoch
    (`quantens.calibrate`: clip values and BN statistics of every member below 32 bits)."""
    import quantens
    from quantens import data
    from quantens.calibration import CALIBRATION_EXAMPLES

    low = [b for b in args.bit_widths if b != 32]
    if not low:
        return
    try:
        images = data.load(args.dataset, plan.train, batch_size, training=False,
                           data_dir=args.data_dir, num_workers=args.num_workers,
                           take_batches=1 if args.test_run else None,
                           preprocessing=args.input_preprocessing)
    except Exception as error:  # TFDS raises many kinds; all mean "no data here"
        raise DataError(f"--dataset {args.dataset}: cannot load it ({one_line(error)})") from error
    print(f"calibrating members {' '.join(map(str, low))} on up to {CALIBRATION_EXAMPLES} "
          f"training images ({args.calibration})", flush=True)
    quantens.calibrate(ensemble, images, low, method=args.calibration,
                       verbose=1 if sys.stdout.isatty() else 0)


def _check_float_inputs(args, spec, plan, explicit: bool) -> None:
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
            model = load_float_model(args.model, spec.input_shape, spec.num_classes)
        except (TypeError, ValueError):
            return  # _create_model reports it, in its words
    examples = args.batch_size if args.test_run else data.COMPARE_MAX_EXAMPLES
    try:
        check = data.check_preprocessing(
            model, args.dataset, plan.validation, args.input_preprocessing,
            data_dir=args.data_dir, batch_size=args.batch_size, max_examples=examples,
        )
    except DataError:
        raise
    except Exception as error:  # TFDS raises many kinds; all mean "no data here"
        raise DataError(f"--dataset {args.dataset}: cannot load it ({one_line(error)})") from error
    finally:
        tf.keras.utils.set_random_seed(args.seed)  # as _setup left it
    others = ", ".join(f"{name} {accuracy:.4f}" for name, accuracy in check.accuracies.items()
                       if name != check.stated)
    print(f"float model: validation accuracy {check.accuracy:.4f} with --input-preprocessing "
          f"{check.stated} ({others}; {check.examples} images)", flush=True)
    better = check.better
    if better is None:
        return
    problem = (f"--model {args.model}: the float model scores {100 * check.accuracy:.1f} % on "
               f"validation with --input-preprocessing {check.stated} but "
               f"{100 * check.accuracies[better]:.1f} % with {better}")
    if not explicit:
        raise ConfigError(f"{problem}: it was trained on other inputs; pass "
                          f"--input-preprocessing {better}")
    print(f"warning: {problem}: it was most likely trained on other inputs, and its members "
          f"and teacher would learn from noise; the likely fix: --input-preprocessing {better}",
          file=sys.stderr, flush=True)


def _create_model(args, spec):
    """The model of the flags; the zoo's notes (a saved model's softmax removed) printed."""
    import warnings

    import zoo
    from zoo.applications import SoftmaxRemovedWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SoftmaxRemovedWarning)
        try:
            model = zoo.create_model_from_flags(vars(args), spec.input_shape, spec.num_classes)
        except (TypeError, ValueError) as error:
            message = one_line(error)
            if message.startswith(f"{args.model}: "):  # the zoo names the model itself
                message = message[len(args.model) + 2:]
            raise ConfigError(f"--model {args.model}: {message}") from error
    for warning in caught:
        if issubclass(warning.category, SoftmaxRemovedWarning):
            message = str(warning.message)
            if message.startswith(f"{args.model}: "):
                message = message[len(args.model) + 2:]
            print(f"note: --model {args.model}: {message}")
        else:  # everything else as Python would have shown it
            warnings.showwarning(warning.message, warning.category, warning.filename,
                                 warning.lineno)
    return model


def run(args: argparse.Namespace) -> dict:
    """Trains as the validated flags `args` say; returns what metrics.json holds.

    Raises a `quantens.errors.QuantensError` (one line, naming the flag) for
    input that cannot work; `main` turns it into `train.py: error: ...`. The
    run owns its result directory (`quantens.locking`) from its first write to
    its end: the chief the directory, another worker its own subdirectory.
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
    if args.dry_run:
        return _run(args, None, spec, plan, explicit)
    cluster = read_tf_config()
    run_dir = ResultDir(args.result_path)
    chief = cluster is None or not cluster.multi_worker or cluster.is_chief
    out = run_dir if chief else run_dir.worker(cluster.task_index)
    with ResultDirLock(out.root, "train.py"):
        return _run(args, out, spec, plan, explicit)


@dataclasses.dataclass
class _Data:
    """The datasets of a run: train (augmented, keyed by `epoch_counter`), validation, test."""

    train: object
    validation: object
    test: object
    epoch_counter: object
    steps_per_epoch: int


@dataclasses.dataclass
class _Callbacks:
    """The callbacks of `fit`, in order, and the two whose state the run reads afterwards."""

    callbacks: list
    history: object
    best: object


def _run(args: argparse.Namespace, out: ResultDir | None, spec, plan,
         explicit_preprocessing: bool = True) -> dict:
    """One run: (a saved model's inputs checked ->) build data -> build ensemble -> callbacks
    -> fit -> final metrics -> export -> report. `out` is None for --dry-run (which
    summarises the members and stops)."""
    strategy = _setup(args)
    if not args.dry_run and defaults.is_model_file(args.model):
        _check_float_inputs(args, spec, plan, explicit_preprocessing)
    model = _build_model(args, spec, strategy)
    _check_calibration(args, model)
    if args.dry_run:
        _summarise_members(model, args.bit_widths)
        return {}
    global_batch = args.batch_size * strategy.num_replicas_in_sync
    started = time.time()
    datasets = _build_data(args, plan, global_batch)
    ensemble = _build_ensemble(args, spec, plan, model, strategy, datasets.steps_per_epoch,
                               global_batch)
    # The chief writes the result directory; other workers a private one (`run`).
    from quantens import distribute

    chief = distribute.is_chief(strategy)
    run_dir = ResultDir(args.result_path)
    config, logger = _prepare_result_dir(args, out, run_dir, model)
    callbacks = _callbacks(args, out, run_dir, model, datasets.epoch_counter, logger,
                           global_batch, chief)
    _fit(args, ensemble, model, datasets, callbacks.callbacks, out)
    metrics = _final_metrics(args, ensemble, model, plan, datasets, callbacks.best, out,
                             train_seconds=round(time.time() - started, 1))
    exported = _export(args, ensemble, plan, datasets.test, run_dir) if args.export and chief \
        else None
    _report(args, metrics, config, callbacks.history, exported, model, plan, run_dir, logger,
            chief)
    return metrics


def _build_model(args: argparse.Namespace, spec, strategy):
    """The model of the flags under `strategy`, with the --resume weights loaded (not for
    --dry-run); records the dataset's input shape and classes in `args` (config.json)."""
    import tensorflow_datasets as tfds

    from quantens import results

    if not sys.stdout.isatty():
        tfds.disable_progress_bar()
    args.input_shape, args.num_classes = list(spec.input_shape), spec.num_classes
    with strategy.scope():
        model = _create_model(args, spec)
    if args.dry_run or not args.resume:
        return model
    try:
        results.load_weights(model, args.resume)
    except Exception as error:  # h5py's OSError, Keras' ValueError on a mismatch
        raise WeightsError(
            f"--resume {args.resume}: cannot load these weights into {args.model} "
            f"({one_line(error)})"
        ) from error
    return model


def _build_data(args: argparse.Namespace, plan, global_batch: int) -> _Data:
    """Build data: the train, validation and test datasets of `plan`.

    Validation chooses (best checkpoint, tuner); test is reported and chooses
    nothing. The data order of an epoch is a function of (seed, epoch).
    """
    from quantens import data

    take = 1 if args.test_run else None
    epoch_counter = data.EpochCounter()  # the data order of an epoch = f(seed, epoch)
    try:
        train_ds = data.load(
            args.dataset, plan.train, global_batch, training=True,
            data_dir=args.data_dir, num_workers=args.num_workers, shuffle_seed=args.seed,
            take_batches=take, augmentation=args.augmentation, epoch=epoch_counter.variable,
            preprocessing=args.input_preprocessing,
        )
        val_ds = data.load(
            args.dataset, plan.validation, global_batch, training=False,
            data_dir=args.data_dir, num_workers=args.num_workers, take_batches=take,
            preprocessing=args.input_preprocessing,
        )
        test_ds = val_ds if plan.validation_is_test else data.load(
            args.dataset, plan.test, global_batch, training=False,
            data_dir=args.data_dir, num_workers=args.num_workers, take_batches=take,
            preprocessing=args.input_preprocessing,
        )
    except DataError:
        raise
    except Exception as error:  # TFDS raises many kinds; all mean "no data here"
        raise DataError(f"--dataset {args.dataset}: cannot load it ({one_line(error)})") from error
    steps_per_epoch = epoch_counter.steps_per_epoch = _steps(train_ds, fallback=1)
    return _Data(train_ds, val_ds, test_ds, epoch_counter, steps_per_epoch)


def _build_ensemble(args: argparse.Namespace, spec, plan, model, strategy,
                    steps_per_epoch: int, global_batch: int):
    """Build ensemble: the compiled `QuantEnsemble` of `model` with its optimizer, schedule
    and distillation; a converted model's members calibrated before the first epoch."""
    import quantens
    from quantens import optimizers

    with strategy.scope():
        distillation = _build_distillation(args, spec, steps_per_epoch)
        schedule = optimizers.make_schedule(
            args.lr_mode, args.lr, args.epochs, steps_per_epoch, lr_steps=args.lr_steps,
            lr_factor=args.lr_factor, warmup_epochs=args.warmup_epochs,
        )
        optimizer = optimizers.make_optimizer(args.optimizer, schedule, momentum=args.momentum)
        ensemble = quantens.QuantEnsemble(
            model, args.bit_widths, args.target_bits, weight_decay=args.wd,
            member_loss_weights=dict(args.member_loss_weights or []),
            member_backward=args.member_backward,
        )
        if distillation is not None:
            ensemble.set_distillation(distillation)
        ensemble.compile(
            optimizer=optimizer, run_eagerly=args.mode == "imperative", jit_compile=args.jit
        )
    if args.calibration != "none" and not args.resume and _is_converted(args.model):
        _calibrate(ensemble, args, plan, global_batch)
    return ensemble


def _check_calibration(args: argparse.Namespace, model) -> None:
    """--calibration given for a model with no clip value to calibrate: the library's
    answer (`quantens.calibration.check_calibratable`), before anything is trained."""
    from quantens.calibration import check_calibratable

    if args.calibration == cli.DEFAULTS["calibration"]:
        return  # the default: a model with nothing to calibrate is not calibrated
    try:
        check_calibratable(model, args.bit_widths)
    except ConfigError as error:
        raise ConfigError(f"--calibration {args.calibration}: {error}") from error


def _prepare_result_dir(args: argparse.Namespace, out: ResultDir, run_dir: ResultDir, model):
    """The result directory made ready: stale temporaries removed, what a resumed run
    starts from checked before anything is rewritten, config.json and model.json
    written. Returns (config, logger)."""
    from quantens import results

    os.makedirs(out.root, exist_ok=True)
    results.remove_stale_temporaries(out.root)  # of a killed run: never taken for a result
    # what a resumed run starts from, checked before anything of the directory is rewritten
    results.read_history(out.history)
    results.check_backup(run_dir.backup)
    config = cli.config_dict(args)
    results.write_json(out.config, config)
    results.write_model(model, out.model)
    logger = results.file_logger(args.log or out.log)
    logger.info("train.py %s", " ".join(sys.argv[1:]))
    return config, logger


def _callbacks(args: argparse.Namespace, out: ResultDir, run_dir: ResultDir, model,
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
        out.best_weights, monitor=f"val_accuracy_{args.target_bits}",
        save=lambda p: results.save_weights(model, p), history_path=out.history,
    )
    # one backup folder for all workers: Keras keeps the chief's
    backup = results.BackupLast(run_dir.backup, delete_checkpoint=False)
    callbacks = [
        backup,  # first: it restores the training state the others start from
        epoch_counter,  # after the backup: it reads the restored step count
        results.DivergenceGuard(),
        history,
        results.LogFile(logger, args.log_interval, global_batch),
        best,
        backup.after_epoch(),
    ]
    if chief and not args.no_tensorboard:  # per-member metrics and the learning rate
        callbacks.insert(-2, tf.keras.callbacks.TensorBoard(
            args.tensorboard_dir or run_dir.path(ResultDir.TENSORBOARD)))
    return _Callbacks(callbacks, history, best)


def _fit(args: argparse.Namespace, ensemble, model, datasets: _Data, callbacks: list,
         out: ResultDir) -> None:
    """Fit: trains for --epochs (validating each epoch), then saves the final weights."""
    from quantens import results

    ensemble.fit(
        datasets.train, epochs=args.epochs, validation_data=datasets.validation,
        callbacks=callbacks, verbose=1 if sys.stdout.isatty() else 2,
    )
    results.save_weights(model, out.weights)


def _final_metrics(args: argparse.Namespace, ensemble, model, plan, datasets: _Data, best,
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
        "bit_widths": list(args.bit_widths),
        "target_bits": args.target_bits,
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


def _export(args: argparse.Namespace, ensemble, plan, test_ds, run_dir: ResultDir):
    """Export (--export, the chief): every member to <result-path>/export, checked on the
    test split; prints the summary table and returns what `export_ensemble` returns."""
    from quantens import data, export

    _, calibration = export.export_datasets(
        args.dataset, args.bit_widths, batch_size=args.batch_size,
        data_dir=args.data_dir, evaluate=False, preprocessing=args.input_preprocessing,
    )
    spec = data.resolve(args.dataset, args.data_dir)
    exported = export.export_ensemble(
        ensemble, run_dir.export, val_data=test_ds, calibration_data=calibration,
        batch_size=args.batch_size,
        max_val_examples=args.batch_size if args.test_run else None, remove_stale=True,
        extra={"model": args.model, "dataset": args.dataset, "split": str(plan.test),
               "weights": ResultDir.WEIGHTS,
               "input_preprocessing": export.input_preprocessing_field(
                   args.input_preprocessing, spec)},
    )
    print(export.summary_table(exported))
    return exported


def _report(args: argparse.Namespace, metrics: dict, config: dict, history, exported, model,
            plan, run_dir: ResultDir, logger, chief: bool) -> None:
    """Report: the chief writes the report; the table of test accuracy per member goes to
    the log (every worker) and to stdout (the chief)."""
    if chief:
        from quantens import report

        result = report.ResultData(
            run_dir.root, metrics, config, report.parse_history(history.rows), exported
        )
        report.write_report(result, model=model)
    table = accuracy_table(metrics["test_accuracy"], args.bit_widths,
                           metrics["teacher_test_accuracy"], metrics["best_test_accuracy"],
                           metrics["best_epoch"])
    note = (f"test split: {plan.test}; checkpoints chosen on: {plan.validation}"
            + (" (the test split: pass --val-split to hold out a validation part of train)"
               if plan.validation_is_test else ""))
    logger.info("test accuracy per member (%s)\n%s", note, table)
    if chief:
        print(table)
        print(note)
        print(f"results in {args.result_path} ({metrics['train_seconds']:.0f} s)")


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
