"""Nothing that enters calibration or conversion silently breaks a member (issue 30).

Each class of bad input is one typed error (or `train.py: error:` line, exit 2)
naming the cause, and the weights or files it was given are unchanged.
"""

import json
import os
import zipfile

import numpy as np
import pytest
from conftest import ROOT, run_script

import quantens  # noqa: F401  (tf-keras before TensorFlow)

import tensorflow as tf  # isort: skip

from quantens import registry
from quantens.checks import check_model_io
from quantens.errors import ConfigError, DataError, UsageError, WeightsError

L = tf.keras.layers
BITS = (32, 8, 2)


def _cnn(input_shape=(8, 8, 1), name="cnn"):
    inputs = tf.keras.Input(input_shape)
    x = L.Conv2D(6, 3, padding="same", name="stem")(inputs)
    x = L.BatchNormalization(name="stem_bn")(x)
    x = L.ReLU(6.0, name="stem_relu")(x)
    x = L.Conv2D(8, 3, name="conv")(x)
    x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU(name="relu")(x)
    x = L.GlobalAveragePooling2D(name="pool")(x)
    return tf.keras.Model(inputs, L.Dense(10, name="logits")(x), name=name)


@pytest.fixture(scope="module")
def ensemble():
    return quantens.QuantEnsemble(quantens.quantize_model(_cnn(), BITS), BITS)


def _weights(model):
    return [w.numpy().copy() for w in model.weights]


def _assert_unchanged(model, before):
    after = _weights(model)
    assert len(after) == len(before)
    for a, b in zip(after, before, strict=True):
        np.testing.assert_array_equal(a, b)


def _member_32(model):
    """What the 32-bit member reads: every kernel and the 32-bit BN branches."""
    values = [layer.kernel.numpy().copy() for layer in model.layers if hasattr(layer, "kernel")]
    for layer in model.layers:
        if isinstance(layer, quantens.SwitchableBatchNormalization):
            values += [w.copy() for w in layer.branch(32).get_weights()]
    return values


def _forms(x, y):
    """Every form of calibration data the docs accept, holding the same inputs."""
    return {
        "array": x,
        "tensor": tf.constant(x),
        "(x, y) arrays": (x, y),
        "(x, y) tensors": (tf.constant(x), tf.constant(y)),
        "(x, y, w) tensors": (tf.constant(x), tf.constant(y), tf.ones(len(x))),
        "[x, y] list": [x, y],
        "dataset of x": tf.data.Dataset.from_tensor_slices(x).batch(32),
        "dataset of (x, y)": tf.data.Dataset.from_tensor_slices((x, y)).batch(32),
    }


# ------------------------------------------------------------ calibration, property-style


@pytest.mark.parametrize("draw", range(2))
def test_calibration_of_finite_data_in_any_accepted_form_keeps_members_finite(ensemble, draw):
    rng = np.random.default_rng(draw)
    scale = 10.0 ** rng.uniform(-3, 3)  # from near-constant inputs to large ones
    x = (rng.normal(size=(96, 8, 8, 1)) * scale + rng.normal()).astype("float32")
    y = rng.integers(0, 10, 96)
    model = ensemble.model
    member_32 = _member_32(model)
    results = []
    for form, data in _forms(x, y).items():
        clips = quantens.calibrate(ensemble, data, batch_size=32)
        results.append((form, clips))
        for b, values in clips.items():
            assert all(np.isfinite(v) and v > 0 for v in values.values()), (form, b, values)
        for layer in model.layers:
            if isinstance(layer, quantens.SwitchableBatchNormalization):
                for b in (8, 2):
                    for w in layer.branch(b).get_weights():
                        assert np.isfinite(w).all(), (form, layer.name, b)
        for got, want in zip(_member_32(model), member_32, strict=True):
            np.testing.assert_array_equal(got, want)  # the 32-bit member is untouched
    first = results[0][1]
    for form, clips in results[1:]:  # every form is the same data: the same clip values
        assert clips == first, form


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_input_in_any_form_is_one_error_and_changes_nothing(ensemble, bad):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(64, 8, 8, 1)).astype("float32")
    x[int(rng.integers(64)), int(rng.integers(8)), int(rng.integers(8)), 0] = bad
    y = rng.integers(0, 10, 64)
    before = _weights(ensemble.model)
    for form, data in _forms(x, y).items():
        with pytest.raises(DataError) as error:
            quantens.calibrate(ensemble, data)
        message = str(error.value)
        assert "non-finite values (NaN or inf)" in message and "\n" not in message, (form,
                                                                                    message)
        _assert_unchanged(ensemble.model, before)


def test_inputs_whose_activations_overflow_are_refused_and_change_nothing():
    """Finite inputs far outside the training range: BN statistics would be inf."""
    ensemble = quantens.QuantEnsemble(quantens.quantize_model(_cnn(), BITS), BITS)
    stem = ensemble.model.get_layer("stem")
    stem.kernel.assign(tf.ones_like(stem.kernel))  # 9 taps of 3e38: inf in float32
    x = np.full((32, 8, 8, 1), 3e38, "float32")
    before = _weights(ensemble.model)
    with pytest.raises(DataError, match="non-finite|not finite") as error:
        quantens.calibrate(ensemble, x)
    assert "Nothing was changed" in str(error.value)
    _assert_unchanged(ensemble.model, before)


def test_forms_that_cannot_work_say_what_to_do_and_change_nothing(ensemble):
    x = np.zeros((16, 8, 8, 1), "float32")
    before = _weights(ensemble.model)
    cases = [
        (tf.data.Dataset.from_tensor_slices(x), UsageError, "pass dataset.batch(128)"),
        (x[0], DataError, "one input, not a batch: add a batch axis"),
        (x[:, :4], DataError, r"inputs of shape (4, 8, 1), the model takes (8, 8, 1)"),
        (iter([x[:8], x[:8, :4]]), DataError, "pass inputs of one shape"),
    ]
    for data, kind, phrase in cases:
        with pytest.raises(kind) as error:
            quantens.calibrate(ensemble, data)
        assert phrase in str(error.value) and "\n" not in str(error.value)
        _assert_unchanged(ensemble.model, before)


def test_a_failure_half_way_through_calibration_restores_every_member(ensemble, monkeypatch):
    from quantens import calibration

    x = np.random.default_rng(3).normal(size=(64, 8, 8, 1)).astype("float32")
    before = _weights(ensemble.model)
    calls = []
    original = calibration._set_statistics

    def fail_on_the_second_member(layer, bits, moments, reference):
        calls.append(bits)
        if bits == 2:  # member 8 is written by now
            raise DataError("planted")
        original(layer, bits, moments, reference)

    monkeypatch.setattr(calibration, "_set_statistics", fail_on_the_second_member)
    with pytest.raises(DataError, match="planted"):
        quantens.calibrate(ensemble, x)
    assert 8 in calls
    _assert_unchanged(ensemble.model, before)


def test_a_model_with_nothing_to_calibrate_is_refused_and_keeps_its_bn_statistics():
    import zoo

    model = zoo.create_model("digits_resnet_e", width=4, bit_widths=(32, 2, 1))
    ensemble = quantens.QuantEnsemble(model, (32, 2, 1))
    before = _weights(model)
    with pytest.raises(ConfigError, match="has no clip value to calibrate for members 2 1"):
        quantens.calibrate(ensemble, np.zeros((8, 8, 8, 1), "float32"))
    _assert_unchanged(model, before)


# -------------------------------------------------------------- non-finite options


@pytest.mark.parametrize("value", [float("inf"), float("nan"), -1.0, 0])
def test_a_relu_range_that_is_not_a_finite_positive_number_is_refused(value):
    with pytest.raises(UsageError, match="relu_range must be a finite number > 0"):
        quantens.quantize_model(_cnn(), BITS, relu_range=value)


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_clip_values_and_caps_must_be_finite(value):
    with pytest.raises(ValueError, match="must be a finite number > 0"):
        quantens.ClipActivation((32, 4), clip=value)
    with pytest.raises(ValueError, match="must be a finite number > 0"):
        quantens.ClipActivation((32, 4), max_value=value)


def test_an_uncapped_relu_written_as_max_value_inf_converts_as_relu():
    inputs = tf.keras.Input((4,))
    x = L.ReLU(max_value=float("inf"), name="act")(L.Dense(4, name="d")(inputs))
    model = tf.keras.Model(inputs, L.Dense(3, name="logits")(x))
    converted = quantens.quantize_model(model, (32, 2), policy={})
    quantizer = converted.get_layer("act").quantizer
    assert quantizer.max_value is None and np.isfinite(quantizer.clip["2"])


# ---------------------------------------------------- models it cannot train or export


def _two_outputs():
    inputs = tf.keras.Input((8, 8, 1))
    x = L.GlobalAveragePooling2D()(L.Conv2D(4, 3, activation="relu")(inputs))
    return tf.keras.Model(inputs, [L.Dense(10, name="digits")(x), L.Dense(2, name="odd")(x)],
                          name="two_heads")


def test_a_model_with_two_outputs_is_refused_by_conversion_and_by_the_ensemble():
    with pytest.raises(ConfigError) as error:
        quantens.quantize_model(_two_outputs(), BITS)
    assert str(error.value).startswith("quantize_model: model 'two_heads' has 1 input and 2 "
                                       "outputs (digits, odd)")
    converted = quantens.quantize_model(_cnn(), BITS)
    heads = tf.keras.Model(converted.inputs, [converted.output, converted.output])
    with pytest.raises(ConfigError, match="QuantEnsemble: model .* has 1 input and 2 outputs"):
        quantens.QuantEnsemble(heads, BITS)


def test_an_output_that_is_not_one_logit_per_class_is_refused():
    inputs = tf.keras.Input((8, 8, 1))
    model = tf.keras.Model(inputs, L.Conv2D(10, 3, name="map")(inputs), name="dense_map")
    with pytest.raises(ConfigError, match=r"outputs shape \(None, 6, 6, 10\); quantens trains "
                                          r"logits of shape \(batch, classes\)"):
        quantens.quantize_model(model, BITS)


def test_a_model_of_unknown_input_size_converts_at_the_size_it_is_given():
    any_size = _cnn((None, None, 1), name="any_size")
    with pytest.raises(ConfigError, match=r"takes inputs of shape \(None, None, 1\), of unknown "
                                          r"size: a TFLite file needs a fixed one; pass "
                                          r"input_shape"):
        quantens.quantize_model(any_size, BITS)
    with pytest.raises(UsageError, match=r"input_shape \(8, 8, 3\) does not fit"):
        quantens.quantize_model(any_size, BITS, input_shape=(8, 8, 3))
    converted = quantens.quantize_model(any_size, BITS, input_shape=(8, 8, 1))
    assert converted.input_shape == (None, 8, 8, 1)
    x = np.random.default_rng(0).normal(size=(4, 8, 8, 1)).astype("float32")
    with quantens.bits(32):
        np.testing.assert_allclose(converted(x), any_size(x), atol=1e-5)
    assert check_model_io(converted, "f") == (8, 8, 1)


# ------------------------------------------------------------- files named for what they are


def test_load_ensemble_says_what_an_intact_file_of_something_else_holds(tmp_path):
    plain = tmp_path / "plain.keras"
    tf.keras.Sequential([L.Dense(3, input_shape=(4,))]).save(str(plain))
    no_model = tmp_path / "notes.keras"
    with zipfile.ZipFile(no_model, "w") as archive:
        archive.writestr("notes.txt", "not a model")
    cases = [
        (plain, "is an intact .keras file holding a Sequential, not a QuantEnsemble: load it "
                "with tf.keras.models.load_model"),
        (no_model, "is a zip archive without a Keras model in it (no config.json; it holds "
                   "notes.txt)"),
    ]
    for path, phrase in cases:
        content = path.read_bytes()
        with pytest.raises(WeightsError) as error:
            quantens.load_ensemble(str(path))
        message = str(error.value)
        assert phrase in message and "damaged" not in message, message
        assert path.read_bytes() == content


# ------------------------------------------------------------------------- the registry


def test_register_layer_refuses_a_string_of_kernels_and_keeps_the_table():
    before = registry.registered_layers()
    with pytest.raises(UsageError, match="kernels must be a sequence of kernel quantizer "
                                         r"argument names, e.g. \('kernel_quantizer',\)"):
        registry.register_layer(L.Conv2D, quantens.QuantConv2D, kernels="kernel_quantizer",
                                export=lambda layer, build: [], replace=True)
    with pytest.raises(UsageError, match="export must be a function"):
        registry.register_layer(L.Conv2D, quantens.QuantConv2D, kernels=("kernel_quantizer",),
                                export=None, replace=True)
    assert registry.registered_layers() == before


# ------------------------------------------------- the library and train.py agree


def _train(tmp_path, argv, tfds_dir):
    result_path = tmp_path / "result"
    result = run_script([os.path.join(ROOT, "train.py"), *argv, "--data-dir", tfds_dir,
                         "--result-path", str(result_path), "--no-tensorboard"],
                        cwd=str(tmp_path), env={"PYTHONPATH": ROOT})
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and lines[0].startswith("train.py: error: ")
    assert not result_path.exists()  # nothing trained, nothing written
    return lines[0]


def _library_two_outputs(tmp_path):
    from zoo.applications import load_float_model

    path = tmp_path / "two_heads.keras"
    _two_outputs().save(str(path))
    with pytest.raises(ConfigError) as error:
        load_float_model(str(path), (8, 8, 1), 10)
    return ["--model", str(path), "--dry-run"], str(error.value).removeprefix(f"{path}: ")


def _library_nothing_to_calibrate(tmp_path):
    import zoo

    model = zoo.create_model("digits_resnet_e", width=4, bit_widths=(32, 1))
    with pytest.raises(ConfigError) as error:
        quantens.calibrate(quantens.QuantEnsemble(model, (32, 1)),
                           np.zeros((4, 8, 8, 1), "float32"))
    return (["--model", "digits_resnet_e", "--width", "4", "--bit-widths", "32", "1",
             "--calibration", "percentile", "--dry-run"],
            str(error.value).removeprefix("calibrate: "))


@pytest.mark.parametrize("misuse", [_library_two_outputs, _library_nothing_to_calibrate])
def test_the_library_and_train_py_refuse_the_same_misuse_with_the_same_words(
        tmp_path, tfds_dir, misuse):
    argv, library = misuse(tmp_path)
    line = _train(tmp_path, argv, tfds_dir)
    assert library in line, (library, line)


def test_no_float_teacher_for_a_model_without_one_is_refused(tmp_path, tfds_dir):
    line = _train(tmp_path, ["--no-float-teacher", "--dry-run"], tfds_dir)
    assert "--no-float-teacher has no effect" in line and "not a saved float model" in line


# ------------------------------------------- a run that trains from a saved model exports


@pytest.mark.slow
def test_a_saved_model_of_unknown_input_size_trains_and_exports(tmp_path, tfds_dir):
    path = tmp_path / "any_size.keras"
    _cnn((None, None, 1), name="any_size").save(str(path))
    result_path = tmp_path / "run"
    result = run_script([os.path.join(ROOT, "train.py"), "--model", str(path), "--epochs", "1",
                         "--test-run", "--bit-widths", "32", "8", "1", "--mode", "imperative",
                         "--data-dir", tfds_dir, "--result-path", str(result_path),
                         "--no-tensorboard", "--export"],
                        cwd=str(tmp_path), env={"PYTHONPATH": ROOT})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((result_path / "export" / "export.json").read_text())
    assert {b: m["format"] for b, m in report["members"].items()} == {
        "32": "float32", "8": "int8", "1": "lce"}
    for b in ("32", "8", "1"):
        assert (result_path / "export" / f"member_{b}.tflite").stat().st_size > 0
    assert report["members"]["32"]["fidelity"]["agreement"] == 1.0
