"""Exporting a finished run's result directory (what `python -m quantens.export` does)."""

from __future__ import annotations

import json
import math
import os

from quantens.defaults import INPUT_PREPROCESSING
from quantens.errors import ExportError, ResultDirError, one_line
from quantens.export.emit import MAX_CALIBRATION_EXAMPLES
from quantens.export.tflite import FLOAT32, member_format
from quantens.layout import ResultDir

__all__ = [
    "export_datasets",
    "export_result_dir",
    "input_preprocessing_field",
    "load_result_ensemble",
    "read_result_config",
]


def read_result_config(result_dir: str, weights: str | None = ResultDir.WEIGHTS) -> dict:
    """The `config.json` of a result directory, after checking that it can be exported.

    Needs no TensorFlow: raises `ResultDirError` (a FileNotFoundError) /
    `ExportError` with a one-line message saying what is missing and how to
    make it. `weights=None` skips the check of the weights file.

    ```python
    import tempfile
    from quantens.errors import ResultDirError
    from quantens.export import read_result_config

    try:
        read_result_config(tempfile.mkdtemp())
    except ResultDirError as error:
        assert "no config.json" in str(error)
    ```
    """
    if not os.path.isdir(result_dir):
        raise ResultDirError(
            f"{result_dir} is not a directory: pass a result directory of "
            "`python train.py --result-path DIR`"
        )
    run = ResultDir(result_dir)
    if not os.path.isfile(run.config):
        raise ResultDirError(
            f"{result_dir} has no config.json: it is not a result directory of "
            "`python train.py --result-path DIR`"
        )
    try:
        with open(run.config, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as error:
        raise ExportError(f"{run.config} cannot be read: {one_line(error)}") from error
    if not isinstance(config, dict):
        raise ExportError(f"{run.config} must hold a JSON object of flags: re-run train.py")
    missing = [k for k in ("model", "bit_widths", "input_shape", "num_classes", "dataset")
               if k not in config]
    if missing:
        raise ExportError(
            f"{run.config} lacks {', '.join(missing)}: re-run train.py to write a "
            "complete config.json"
        )
    if weights is not None and not os.path.isfile(run.path(weights)):
        raise ResultDirError(
            f"{result_dir} has no {weights}: training writes it when it ends; finish "
            f"(or resume) the run with `python train.py --result-path {result_dir} ...`"
        )
    return config


def load_result_ensemble(result_dir: str, weights: str = ResultDir.WEIGHTS, model=None):
    """Rebuilds the ensemble of a finished run: `(QuantEnsemble, config)`.

    The model is rebuilt from the directory's model.json (its Keras config),
    unless `model` (an untrained model of the run's architecture) is given.
    The weights file must hold exactly that model's weights; otherwise
    `ExportError` says so.

    ```python
    import tempfile
    import quantens
    from quantens.export import load_result_ensemble
    from quantens.results import save_run
    from zoo import create_model

    run = tempfile.mkdtemp()
    save_run(run, create_model("digits_resnet_e", width=8, bit_widths=(32, 1)),
             {"model": "digits_resnet_e", "bit_widths": [32, 1], "input_shape": [8, 8, 1],
              "num_classes": 10, "dataset": "digits"})
    ensemble, config = load_result_ensemble(run)
    assert ensemble.bit_widths == (32, 1)
    ```
    """
    config = read_result_config(result_dir, weights)
    from quantens.ensemble import QuantEnsemble
    from quantens.results import read_model

    run = ResultDir(result_dir)
    if model is None:
        model = read_model(run.model)
    weights_path = run.path(weights)
    _check_weights_file(model, weights_path, config)
    try:
        model.load_weights(weights_path)
    except Exception as error:  # h5py / Keras raise many kinds; all mean "does not fit"
        raise ExportError(
            f"{weights_path} does not fit the model of config.json: {one_line(error)}"
        ) from error
    ensemble = QuantEnsemble(model, config["bit_widths"], config.get("target_bits"))
    return ensemble, config


def _check_weights_file(model, path: str, config: dict) -> None:
    """Compares the file's variables (names and shapes) with the model's own.

    Keras loads a weights file of another ensemble silently when the layers
    line up but some are missing (e.g. fewer bit-widths); comparing with a file
    the rebuilt model writes catches every difference.
    """
    describe = (f"model {config['model']!r} with bit-widths "
                f"{' '.join(map(str, config['bit_widths']))}"
                + (f", width {config['width']}" if config.get("width") else ""))
    from quantens.results import weights_mismatch

    try:
        detail = weights_mismatch(model, path)
    except Exception as error:
        raise ExportError(f"{path} is not a weights file: {one_line(error)}") from error
    if detail is None:
        return
    raise ExportError(
        f"{path} holds weights of another architecture than config.json's {describe}: "
        f"{detail}; export the result directory that trained these weights"
    )


def export_datasets(dataset: str, bit_widths, *, batch_size: int = 256,
                    data_dir: str | None = None, evaluate: bool = True,
                    preprocessing: str = INPUT_PREPROCESSING):
    """(validation data or None, calibration data or None) of a dataset, for `export_ensemble`.

    Validation data (fidelity) is the dataset's test split; calibration data (only
    when a member may be stored as int8: 1..8 bits) the first examples of its training split,
    both without augmentation, with the run's input `preprocessing`
    (`quantens.data.preprocessing_fn`).

    ```python
    from quantens.export import export_datasets

    val, calibration = export_datasets("digits", (32, 4, 1), batch_size=128)
    x, y = next(iter(calibration))
    assert x.shape[1:] == (8, 8, 1)
    ```
    """
    from quantens import data

    try:
        spec = data.resolve(dataset, data_dir)
        val = data.load(dataset, spec.test_split, batch_size, data_dir=data_dir,
                        preprocessing=preprocessing) if evaluate else None
        calibration = None
        if any(member_format(b) != FLOAT32 for b in bit_widths):
            calibration = data.load(
                dataset, spec.train_split, batch_size, data_dir=data_dir,
                take_batches=max(1, math.ceil(MAX_CALIBRATION_EXAMPLES / batch_size)),
                preprocessing=preprocessing)
    except Exception as error:  # TFDS raises many kinds; all mean "no data"
        raise ExportError(
            f"dataset {dataset} cannot be loaded (data_dir {data_dir}): {one_line(error)}"
        ) from error
    return val, calibration


def input_preprocessing_field(name: str, spec) -> dict:
    """export.json's `input_preprocessing`: what the exported models expect as input.

    `{"name": ..., "description": ...}`, the description a formula with the
    numbers of the dataset `spec` (`quantens.data.describe_preprocessing`).

    ```python
    import quantens.data as qd
    from quantens.export import input_preprocessing_field

    field = input_preprocessing_field("unit", qd.DATASETS["digits"])
    assert field == {"name": "unit", "description": "x / 255: pixels in [0, 1]"}
    ```
    """
    from quantens.data.preprocessing import describe_preprocessing

    return {"name": name, "description": describe_preprocessing(name, spec)}


def export_result_dir(result_dir: str, out_dir: str | None = None, *,
                      weights: str = ResultDir.WEIGHTS, batch_size: int | None = None,
                      evaluate: bool = True, max_val_examples: int | None = None,
                      model=None, remove_stale: bool = False, pack_int4: bool = True) -> dict:
    """Exports a finished run's result directory to `RESULT_DIR/export/`.

    The ensemble is rebuilt by `load_result_ensemble` (from model.json, or
    from `model`), the data by `export_datasets`. Returns the content of
    export.json. (Within a run, train.py passes its ensemble to
    `export_ensemble` instead.)

    ```python
    import os, tempfile
    import quantens
    from quantens.export import export_result_dir
    from quantens.results import save_run
    from zoo import create_model

    run = tempfile.mkdtemp()
    save_run(run, create_model("digits_resnet_e", width=8, bit_widths=(32, 1)),
             {"model": "digits_resnet_e", "bit_widths": [32, 1], "input_shape": [8, 8, 1],
              "num_classes": 10, "dataset": "digits"})
    report = export_result_dir(run, max_val_examples=8)
    assert os.path.isfile(os.path.join(run, "export", "member_1.tflite"))
    ```
    """
    ensemble, config = load_result_ensemble(result_dir, weights, model=model)
    batch_size = int(batch_size or config.get("batch_size") or 256)
    # runs before --input-preprocessing were standardised
    preprocessing = config.get("input_preprocessing") or INPUT_PREPROCESSING
    val, calibration = export_datasets(
        config["dataset"], ensemble.bit_widths, batch_size=batch_size,
        data_dir=config.get("data_dir"), evaluate=evaluate, preprocessing=preprocessing,
    )
    from quantens import data
    from quantens.export.ensemble_export import export_ensemble

    spec = data.resolve(config["dataset"], config.get("data_dir"))
    return export_ensemble(
        ensemble, out_dir or ResultDir(result_dir).export, val_data=val,
        calibration_data=calibration, batch_size=batch_size, max_val_examples=max_val_examples,
        extra={"model": config["model"], "dataset": config["dataset"],
               "split": spec.test_split if evaluate else None, "weights": weights,
               "input_preprocessing": input_preprocessing_field(preprocessing, spec)},
        remove_stale=remove_stale, pack_int4=pack_int4,
    )
