"""Conv1D (keyword spotting, sensor models): supported through one `quantens.registry` entry.

A 1-D functional model (Conv1D -> BN -> ReLU -> Conv1D -> GlobalAveragePooling1D
-> Dense) is converted with `quantens.quantize_model`, trained briefly on a
synthetic sensor task (which of three frequencies a noisy 3-channel signal
carries) and every member is exported to TFLite; the exporter runs each
Conv1D as a 2-D convolution on the (N, 1, W, C) view of its input, as the
registry entry's export hook says.
"""

import os

import numpy as np
import pytest
import tensorflow as tf

import quantens
from quantens import export, registry
from quantens.convert import supported_layers
from quantens.layers import QuantConv1D

pytestmark = pytest.mark.trains  # trains or traces whole models: not in `make test-fast`

BITS = (32, 8, 4, 2, 1)
L = tf.keras.layers
LENGTH, CHANNELS, CLASSES = 32, 3, 3
FLOAT_LOGIT_BOUND = 1e-4
INT8_MIN_AGREEMENT = 0.99


def sensor_model():
    inputs = tf.keras.Input((LENGTH, CHANNELS))
    x = L.Conv1D(16, 5, padding="same", use_bias=False, name="conv1")(inputs)
    x = L.BatchNormalization(momentum=0.9, name="bn1")(x)
    x = L.ReLU(name="relu1")(x)
    x = L.Conv1D(16, 3, strides=2, padding="valid", name="conv2")(x)
    x = L.BatchNormalization(momentum=0.9, name="bn2")(x)
    x = L.ReLU(name="relu2")(x)
    x = L.Conv1D(16, 3, padding="same", dilation_rate=2, name="conv3")(x)
    x = L.GlobalAveragePooling1D(name="gap")(x)
    return tf.keras.Model(inputs, L.Dense(CLASSES, name="logits")(x), name="sensor")


def sensor_data(n, seed):
    """Noisy 3-channel signals; the label is which of three frequencies they carry."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, n)
    t = np.arange(LENGTH) / LENGTH
    freq = np.array([1.0, 3.0, 6.0])[y][:, None, None]
    phase = rng.uniform(0, 2 * np.pi, (n, 1, CHANNELS))
    x = np.sin(2 * np.pi * freq * t[None, :, None] + phase) + 0.3 * rng.normal(
        size=(n, LENGTH, CHANNELS))
    return x.astype("float32"), y.astype("int64")


def test_conv1d_is_one_registry_entry_that_converter_and_exporter_read():
    entry = registry.layer_entry_for(L.Conv1D(4, 3))
    assert entry.switchable_class is QuantConv1D and entry.kernels == ("kernel_quantizer",)
    assert "Conv1D" in supported_layers() and "Conv1D" in export.supported_layers()


def test_converted_conv1d_model_keeps_the_original_at_32_bits():
    tf.keras.utils.set_random_seed(0)
    model = sensor_model()
    converted = quantens.quantize_model(model, BITS)
    assert isinstance(converted.get_layer("conv2"), QuantConv1D)
    x, _ = sensor_data(16, seed=1)
    ensemble = quantens.QuantEnsemble(converted, BITS)
    np.testing.assert_allclose(ensemble.member(32)(x), model(x), atol=1e-4)
    # one kernel for every member, members that differ
    assert len([w for w in converted.get_layer("conv2").weights if "kernel" in w.name]) == 1
    assert not np.allclose(ensemble.member(2)(x), ensemble.member(32)(x), atol=1e-3)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(ensemble, export.json, export dir) after a short training."""
    x_train, y_train = sensor_data(512, seed=0)
    x_test, y_test = sensor_data(200, seed=1)
    tf.keras.utils.set_random_seed(0)
    ensemble = quantens.QuantEnsemble(quantens.quantize_model(sensor_model(), BITS), BITS)
    ensemble.compile(optimizer=tf.keras.optimizers.Adam(3e-3),
                     loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    ensemble.fit(x_train, y_train, epochs=4, batch_size=32, verbose=0)
    out = str(tmp_path_factory.mktemp("conv1d") / "export")
    report = export.export_ensemble(ensemble, out, val_data=(x_test, y_test),
                                    calibration_data=x_train)
    return ensemble, report, out


def test_every_member_of_a_trained_conv1d_model_is_exported(exported):
    _, report, out = exported
    for b in BITS:
        assert os.path.getsize(os.path.join(out, export.member_file(b))) == \
            report["members"][str(b)]["bytes"]
    members = report["members"]
    assert [members[str(b)]["format"] for b in (32, 8, 4, 2)] == [
        "float32", "int8", "int8", "int8"]
    fid = {b: members[str(b)]["fidelity"] for b in BITS}
    assert fid[32]["max_abs_logit_diff"] < FLOAT_LOGIT_BOUND
    for b in (8, 4, 2):  # every grid member's file computes what its Keras member computes
        assert fid[b]["agreement"] >= INT8_MIN_AGREEMENT, (b, fid[b])
    # the 1-bit member: an int8 file in which LCE binarizes no convolution (measured: the
    # Conv1D's 2-D view is not bitpacked), agreeing on 99 % of the test examples
    assert members["1"]["format"] == "int8" and members["1"]["lce"]["binary_convs"] == []
    assert fid[1]["agreement"] >= 0.95, fid[1]
    assert members["1"]["bytes"] <= members["2"]["bytes"]
    # the members learned the task: agreeing files are classifiers, not noise
    assert fid[32]["keras_accuracy"] > 0.9 and fid[8]["tflite_accuracy"] > 0.9
    # a Conv1D is a CONV_2D between two reshapes in every file
    assert members["8"]["ops"]["CONV_2D"] >= 3 and members["8"]["ops"]["RESHAPE"] >= 3


def test_conv1d_int8_file_matches_the_keras_member_on_held_out_data(exported):
    ensemble, report, out = exported
    x_test, _ = sensor_data(200, seed=2)  # neither trained nor validated on
    with open(os.path.join(out, export.member_file(8)), "rb") as f:
        runner = export.TFLiteRunner(f.read())
    tflite = np.argmax(runner(x_test), axis=-1)
    keras = np.argmax(ensemble.member(8).predict(x_test, verbose=0), axis=-1)
    assert np.mean(tflite == keras) >= INT8_MIN_AGREEMENT
