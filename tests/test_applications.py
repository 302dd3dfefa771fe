"""zoo.applications: converted keras.applications networks and saved float models, by name.

`mobilenet_v2`, `resnet50`, `keras:NAME` and a saved model's path all become
`quantens.quantize_model` of a float Keras model; the last tests run them
through train.py as a user would.
"""

import json
import os
import re
import socket
import warnings

import numpy as np
import pytest
import tensorflow as tf
from conftest import MOCK_TRAIN, ROOT, run_script

import quantens
import zoo
from quantens.errors import ConfigError, DownloadError, PretrainedError, WeightsError
from quantens.layers import QuantDepthwiseConv2D
from zoo import applications


def _randomise_bn(model, seed=0):
    """BN statistics and affine parameters away from their initial values (a real test)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            gamma, beta, mean, variance = layer.get_weights()
            layer.set_weights([
                gamma * rng.uniform(0.5, 1.5, gamma.shape), beta + rng.normal(0, 0.1, beta.shape),
                mean + rng.normal(0, 0.1, mean.shape), variance * rng.uniform(0.5, 2, variance.shape),
            ])


def _float_file(tmp_path, model, name="float.h5"):
    path = str(tmp_path / name)
    model.save_weights(path)
    return path


@pytest.mark.parametrize("name, application, kwargs", [
    ("mobilenet_v2", tf.keras.applications.MobileNetV2, {"alpha": 0.35}),
    ("resnet50", tf.keras.applications.ResNet50, {}),
])
def test_the_32_bit_member_equals_the_float_keras_application(tmp_path, rng, name, application,
                                                             kwargs):
    original = application(weights=None, input_shape=(32, 32, 3), classes=10,
                           classifier_activation=None, **kwargs)
    _randomise_bn(original)
    bits = (32, 4, 1)
    model = zoo.create_model(name, input_shape=(32, 32, 3), num_classes=10, bit_widths=bits,
                             weights=_float_file(tmp_path, original), **kwargs)
    x = rng.normal(size=(2, 32, 32, 3)).astype("float32")
    expected = original(x, training=False).numpy()
    outputs = {}
    for b in bits:
        with quantens.bits(b):
            outputs[b] = model(x, training=False).numpy()
    np.testing.assert_allclose(outputs[32], expected, atol=1e-4)
    assert np.abs(outputs[4] - expected).max() > 1e-3  # the 4-bit member is quantized
    # the default policy: the stem and the classifier stay full precision in every member
    stem = next(layer for layer in model.layers if isinstance(layer, quantens.QuantConv2D))
    with quantens.bits(1):
        assert stem.kernel_quantizer.precision == 32
        assert model.get_layer("predictions").kernel_quantizer.precision == 32


def test_a_whole_model_h5_file_gives_its_weights(tmp_path, rng):
    """`model.save("m.h5")` (the whole model, weights under model_weights) as weights=PATH."""
    original = tf.keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3),
                                                 classes=10, classifier_activation=None,
                                                 alpha=0.35)
    _randomise_bn(original)
    path = str(tmp_path / "whole.h5")
    original.save(path)
    model = zoo.create_model("mobilenet_v2", input_shape=(32, 32, 3), num_classes=10,
                             bit_widths=(32, 1), weights=path, alpha=0.35)
    x = rng.normal(size=(2, 32, 32, 3)).astype("float32")
    with quantens.bits(32):
        np.testing.assert_allclose(model(x, training=False), original(x, training=False),
                                   atol=1e-4)


def test_a_backbone_weights_file_loads_with_a_fresh_classifier(tmp_path, rng):
    """keras' `*_no_top.h5` form: the backbone's weights, the classifier initialised."""
    backbone = tf.keras.applications.MobileNetV2(weights=None, include_top=False,
                                                 input_shape=(32, 32, 3), alpha=0.35)
    _randomise_bn(backbone, seed=1)
    model = zoo.create_model("mobilenet_v2", input_shape=(32, 32, 3), num_classes=10,
                             alpha=0.35, bit_widths=(32, 1),
                             weights=_float_file(tmp_path, backbone, "no_top.weights.h5"))
    x = rng.normal(size=(2, 32, 32, 3)).astype("float32")
    features = tf.keras.Model(model.inputs, model.get_layer("out_relu").output)
    with quantens.bits(32):
        np.testing.assert_allclose(features(x, training=False), backbone(x, training=False),
                                   atol=1e-4)


def test_a_weights_file_of_another_network_is_one_clear_error(tmp_path):
    other = tf.keras.applications.MobileNetV2(weights=None, include_top=False,
                                              input_shape=(32, 32, 3), alpha=0.5)
    path = _float_file(tmp_path, other, "alpha_0.5.h5")
    with pytest.raises(WeightsError, match="cannot load .*alpha_0.5.h5.*alpha=0.35") as error:
        zoo.create_model("mobilenet_v2", input_shape=(32, 32, 3), num_classes=10, alpha=0.35,
                         bit_widths=(32, 1), weights=path)
    assert "\n" not in str(error.value)
    with pytest.raises(WeightsError, match="no such file"):
        zoo.create_model("mobilenet_v2", input_shape=(32, 32, 3), num_classes=10, alpha=0.35,
                         weights=str(tmp_path / "missing.h5"))


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed once the socket is: connections are refused


def test_imagenet_float_offline_is_one_clear_error(tmp_path, monkeypatch):
    """keras' real download, pointed at a closed port on this machine: no network used."""
    from tf_keras.src.applications import mobilenet_v2

    monkeypatch.setattr(mobilenet_v2, "BASE_WEIGHT_PATH", f"http://127.0.0.1:{_closed_port()}/")
    monkeypatch.setenv("HOME", str(tmp_path))  # keras' cache (~/.keras/models) is empty
    from tf_keras.src.utils import data_utils

    attempts, urlopen = [], data_utils.urlopen

    def counted(url, *args, **kwargs):  # keras' own urlopen, counted
        attempts.append(url)
        return urlopen(url, *args, **kwargs)

    monkeypatch.setattr(data_utils, "urlopen", counted)
    with pytest.raises(DownloadError) as error:
        zoo.create_model("mobilenet_v2", input_shape=(32, 32, 3), num_classes=10, alpha=0.35,
                         bit_widths=(32, 1), weights="imagenet_float")
    message = str(error.value)
    assert len(attempts) == 1, attempts  # one refused connection, no retry loop
    assert "\n" not in message and isinstance(error.value, PretrainedError)
    assert "could not download the ImageNet float weights" in message
    assert "_no_top.h5" in message  # which file: the backbone's, for 10 classes
    assert "weights=PATH" in message and "include_top=False" in message


def test_imagenet_float_arguments_keras_has_no_weights_for(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(PretrainedError, match="imagenet_float.*alpha"):  # checked before a download
        zoo.create_model("mobilenet_v2", input_shape=(32, 32, 3), num_classes=10, alpha=0.2,
                         weights="imagenet_float")


def test_weights_are_not_taken_for_a_pretrained_tag():
    from zoo import pretrained

    assert not pretrained.is_tag("mobilenet_v2", "imagenet_float")
    assert not pretrained.is_tag("resnet50", "weights/float.h5")


def test_train_flags_map_to_quantizer_options():
    flags = {"model": "mobilenet_v2", "bit_widths": [32, 2], "alpha": 0.35, "fp_weights": True,
             "share_bn": True, "sync_bn": True}
    kwargs = zoo.builder_kwargs(flags, (32, 32, 3), 10)
    assert "initial_layers" not in kwargs  # no ResNetE thumbnail stem for a converted network
    model = zoo.create_model_from_flags(flags, (32, 32, 3), 10)
    conv = model.get_layer("block_1_expand")
    assert conv.kernel_quantizer.method == "identity"
    bn = model.get_layer("block_1_expand_BN")
    assert list(bn.branches) == ["shared"] and bn.branches["shared"].synchronized
    assert model.get_layer("Conv1").filters == 16  # alpha 0.35 (32 at alpha 1)


@pytest.mark.parametrize("argument, value", [
    ("width", 8), ("activation_method", "det_sign"), ("clip_threshold", 1.0),
    ("initial_layers", "thumbnail"), ("fp_downsample_sc", True), ("pool_downsample_sc", True),
])
def test_flags_without_a_meaning_for_a_converted_network_are_refused(argument, value):
    flag = "--" + argument.replace("_", "-")
    with pytest.raises(ConfigError, match=f"mobilenet_v2: {argument}=.*\\({flag}\\)"):
        zoo.create_model("mobilenet_v2", input_shape=(32, 32, 3), num_classes=10,
                         **{argument: value})


def test_keras_names_build_any_application():
    model = zoo.create_model("keras:MobileNetV3Small", input_shape=(32, 32, 3), num_classes=10,
                             alpha=0.75, bit_widths=(32, 2))
    assert any(isinstance(layer, QuantDepthwiseConv2D) for layer in model.layers)
    with pytest.raises(ConfigError, match="ResNet50 has no width multiplier alpha"):
        zoo.create_model("keras:ResNet50", input_shape=(32, 32, 3), num_classes=10, alpha=0.5)
    with pytest.raises(ConfigError, match="unknown tf.keras.applications model 'NoSuchNet'"):
        zoo.get_builder("keras:NoSuchNet")
    with pytest.raises(ValueError, match="unknown model 'mobilenet'.*keras:NAME"):
        zoo.get_builder("mobilenet")


def test_a_network_the_converter_cannot_take_is_its_one_line_error():
    with pytest.raises(ValueError, match="LayerNormalization.*not supported") as error:
        zoo.create_model("keras:ConvNeXtTiny", input_shape=(32, 32, 3), num_classes=10)
    assert "\n" not in str(error.value)


def test_efficientnet_b0_converts_with_float_activations(rng):
    """Rescaling, Normalization, swish, sigmoid and Multiply are kept; only weights quantize."""
    float_model = applications.float_application("EfficientNetB0", (32, 32, 3), 10)
    model = quantens.quantize_model(float_model, (32, 4))
    assert not any(isinstance(layer, quantens.QuantActivation) for layer in model.layers)
    for kind in (tf.keras.layers.Rescaling, tf.keras.layers.Normalization,
                 tf.keras.layers.Multiply):
        assert any(type(layer) is kind for layer in model.layers), kind
    x = rng.normal(size=(2, 32, 32, 3)).astype("float32")
    with quantens.bits(32):
        np.testing.assert_allclose(model(x), float_model(x), atol=1e-4)


def test_the_1_bit_member_of_mobilenet_v2_has_finite_gradients(rng):
    """Its 1-bit member's ReLU6 are quantized on their own [0, 1] (default_clip_value): on
    [0, 6] the 1-bit member's activations were all 0 and BN's backward pass overflowed
    (quantens.convert)."""
    tf.keras.utils.set_random_seed(0)
    model = zoo.create_model("mobilenet_v2", input_shape=(32, 32, 3), num_classes=10,
                             alpha=0.35, bit_widths=(32, 1))
    x = rng.normal(size=(2, 32, 32, 3)).astype("float32")
    import larq as lq

    with quantens.bits(1), lq.context.quantized_scope(True), tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(
            [0, 1], model(x, training=True), from_logits=True))
    grads = tape.gradient(loss, model.trainable_variables)
    assert all(np.isfinite(g.numpy()).all() for g in grads if g is not None)


# --------------------------------------------------------------- saved models


def _save_cnn(path, input_shape=(8, 8, 1), classes=10, softmax="fused"):
    inputs = tf.keras.Input(input_shape)
    x = tf.keras.layers.Conv2D(8, 3, padding="same", name="stem")(inputs)
    x = tf.keras.layers.BatchNormalization(name="stem_bn")(x)
    x = tf.keras.layers.ReLU(name="stem_relu")(x)
    x = tf.keras.layers.Conv2D(16, 3, strides=2, activation="relu", name="conv")(x)
    x = tf.keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = tf.keras.layers.Dense(classes, activation="softmax" if softmax == "fused" else None,
                              name="logits")(x)
    if softmax == "layer":
        x = tf.keras.layers.Softmax(name="probabilities")(x)
    model = tf.keras.Model(inputs, x)
    _randomise_bn(model)
    model.save(str(path))
    return model


@pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")
@pytest.mark.parametrize("softmax, suffix", [("fused", ".keras"), ("layer", ".h5"),
                                             (None, ".keras")])
def test_a_saved_model_converts_and_its_softmax_is_removed(tmp_path, rng, softmax, suffix):
    path = str(tmp_path / f"cnn{suffix}")
    original = _save_cnn(path, softmax=softmax)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = zoo.create_model(path, input_shape=(8, 8, 1), num_classes=10, bit_widths=(32, 2))
    removed = [w for w in caught if w.category is applications.SoftmaxRemovedWarning]
    assert len(removed) == (0 if softmax is None else 1)
    x = rng.normal(size=(3, 8, 8, 1)).astype("float32")
    with quantens.bits(32):
        logits = model(x, training=False).numpy()
    expected = original(x, training=False).numpy()
    if softmax is None:
        np.testing.assert_allclose(logits, expected, atol=1e-4)
    else:  # the saved model computed the softmax of the logits
        np.testing.assert_allclose(tf.nn.softmax(logits), expected, atol=1e-5)
    assert isinstance(model.get_layer("conv_relu"), quantens.QuantActivation)


@pytest.mark.parametrize("input_shape, classes, match", [
    ((28, 28, 1), 10, r"input shape is \(28, 28, 1\), the dataset's images are \(8, 8, 1\)"),
    ((8, 8, 1), 5, r"output has shape \(5,\), the dataset has 10 classes"),
])
def test_a_saved_model_for_other_data_is_refused(tmp_path, input_shape, classes, match):
    path = str(tmp_path / "other.keras")
    _save_cnn(path, input_shape, classes)
    with pytest.raises(ConfigError, match=match):
        zoo.create_model(path, input_shape=(8, 8, 1), num_classes=10)


def test_files_that_are_no_saved_model_are_refused_before_loading(tmp_path):
    weights_only = tmp_path / "weights_only.h5"
    tf.keras.Sequential([tf.keras.layers.Dense(2, input_shape=(3,))]).save_weights(
        str(weights_only))
    corrupt = tmp_path / "corrupt.keras"
    corrupt.write_text("not a zip archive")
    cases = [(weights_only, "weights only, not a model"), (corrupt, "not a .keras file"),
             (tmp_path / "missing.keras", "no such file"), (tmp_path, "is a directory")]
    for path, match in cases:
        with pytest.raises(ConfigError, match=match):
            zoo.get_builder(str(path))


# ------------------------------------------------------------------ train.py


def _train(tmp_path, argv, mock=False, env=None):
    script = tmp_path / "mock_train.py"
    script.write_text(MOCK_TRAIN)
    command = [str(script)] if mock else [os.path.join(ROOT, "train.py")]
    return run_script([*command, *argv], cwd=str(tmp_path),
                      env={"PYTHONPATH": ROOT, **(env or {})})


def _check_run(result_path, bit_widths):
    for name in ("config.json", "model.json", "metrics.json", "ensemble.weights.h5"):
        assert (result_path / name).is_file(), name
    metrics = json.loads((result_path / "metrics.json").read_text())
    assert metrics["bit_widths"] == list(bit_widths)
    # the commands that work on a finished run rebuild the model from model.json
    from quantens.results import load_weights, read_model

    model = read_model(str(result_path / "model.json"))
    load_weights(model, str(result_path / "ensemble.weights.h5"))
    return json.loads((result_path / "config.json").read_text())


@pytest.mark.slow
def test_train_py_trains_mobilenet_v2_on_mock_cifar10(tmp_path):
    result = _train(tmp_path, [
        "--model", "mobilenet_v2", "--alpha", "0.35", "--dataset", "cifar10", "--epochs", "1",
        "--test-run", "--batch-size", "2", "--bit-widths", "32", "4", "1", "--no-tensorboard",
        "--mode", "imperative",  # one step of MobileNetV2: less than tracing it
    ], mock=True)
    assert result.returncode == 0, result.stderr[-3000:]
    config = _check_run(tmp_path / "results" / "mobilenet_v2_cifar10", (32, 4, 1))
    assert config["model"] == "mobilenet_v2" and config["alpha"] == 0.35


@pytest.mark.slow
def test_train_py_trains_and_resumes_a_saved_float_model(tmp_path, tfds_dir):
    path = tmp_path / "my cnn.keras"
    _save_cnn(path)
    argv = ["--model", str(path), "--data-dir", tfds_dir, "--test-run", "--bit-widths", "32",
            "4", "1", "--no-tensorboard", "--mode", "imperative"]  # one step each: eager
    first = _train(tmp_path, [*argv, "--epochs", "1"])
    assert first.returncode == 0, first.stderr[-3000:]
    assert "note: --model" in first.stdout and "removed the final softmax" in first.stdout
    result_path = tmp_path / "results" / "my_cnn_digits"  # the file's name, made safe
    config = _check_run(result_path, (32, 4, 1))
    assert config["model"] == str(path)
    # its members were calibrated, and the float original teaches them (recorded)
    assert "calibrating members 4 1 on up to 512 training images (mse)" in first.stdout
    assert config["float_teacher"] is True and config["kd_mode"] == "simple"
    assert config["weight_quantization"] == "narrow" and config["calibration"] == "mse"
    assert "teacher_accuracy" in (result_path / "history.csv").read_text().splitlines()[0]
    second = _train(tmp_path, [*argv, "--epochs", "2"])  # the same command resumes
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Epoch 2/2" in second.stdout and "Epoch 1/2" not in second.stdout
    # the finished run exports like a zoo model's: every member, the 1-bit one in LCE
    exported = run_script(["-m", "quantens.export", str(result_path)], cwd=str(tmp_path),
                          env={"PYTHONPATH": ROOT})
    assert exported.returncode == 0, exported.stderr[-3000:]
    report = json.loads((result_path / "export" / "export.json").read_text())
    assert {b: m["format"] for b, m in report["members"].items()} == {
        "32": "float32", "4": "int8", "1": "lce"}
    assert report["members"]["1"]["lce"]["binary_convs"] == ["conv"]  # reads stem_relu
    assert report["members"]["32"]["fidelity"]["agreement"] == 1.0


def test_train_py_refuses_a_saved_model_of_another_shape_in_one_line(tmp_path, tfds_dir):
    path = tmp_path / "mnist_cnn.keras"
    _save_cnn(path, input_shape=(28, 28, 1))
    result_path = tmp_path / "result"
    result = _train(tmp_path, ["--model", str(path), "--data-dir", tfds_dir, "--dry-run",
                               "--result-path", str(result_path)])
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("train.py: error: --model ") and "input shape" in lines[0]
    assert not result_path.exists()


# ------------------------------------------------- saved models: softmax and damage


def _saved_softmax_model(path, where):
    """A tiny saved model whose softmax is in a nested head or a TF op; its logits model."""
    tf.keras.utils.set_random_seed(0)
    inputs = tf.keras.Input((8, 8, 1))
    x = tf.keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    x = tf.keras.layers.GlobalAveragePooling2D(name="pool")(x)
    dense = tf.keras.layers.Dense(10, name="logits")
    if where == "nested":
        head_in = tf.keras.Input((4,))
        head = tf.keras.Model(head_in, tf.keras.layers.Softmax(name="probs")(dense(head_in)),
                              name="head")
        outputs = head(x)
    else:
        outputs = tf.nn.softmax(dense(x))
    model = tf.keras.Model(inputs, outputs, name=f"softmax_{where}")
    model.save(str(path))
    features = tf.keras.Model(inputs, x)
    return lambda images: features(images).numpy() @ dense.kernel.numpy() + dense.bias.numpy()


@pytest.mark.parametrize("where, removed", [("nested", "probs"), ("tf_op", None)])
def test_a_saved_models_softmax_in_a_nested_model_or_tf_op_is_removed(tmp_path, rng, where,
                                                                      removed):
    assert applications.SoftmaxRemovedWarning is quantens.SoftmaxRemovedWarning  # the CLI's
    path = str(tmp_path / f"{where}.keras")
    logits = _saved_softmax_model(path, where)
    if removed is None:  # the TF op's layer: tf.nn.softmax, tf.nn.softmax_1, ...
        removed = tf.keras.models.load_model(path, compile=False).layers[-1].name
        assert removed.startswith("tf.nn.softmax")
    x = rng.normal(size=(3, 8, 8, 1)).astype("float32")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = zoo.create_model(path, input_shape=(8, 8, 1), num_classes=10, bit_widths=(32, 2))
    notes = [str(w.message) for w in caught if w.category is applications.SoftmaxRemovedWarning]
    assert notes == [f"{path}: removed the final softmax ('{removed}'); quantens trains on "
                     "logits (the ensemble's predictions are logits, softmax them for "
                     "probabilities)"]
    with quantens.bits(32):
        np.testing.assert_allclose(model(x, training=False), logits(x), atol=1e-5)
    teacher = applications.float_teacher(path, (8, 8, 1), 10)
    np.testing.assert_allclose(teacher(x, training=False), logits(x), atol=1e-5)


def test_a_saved_model_that_does_not_end_in_logits_is_one_config_error(tmp_path):
    inputs = tf.keras.Input((8, 8, 1))
    x = tf.keras.layers.GlobalAveragePooling2D()(tf.keras.layers.Conv2D(4, 3)(inputs))
    path = str(tmp_path / "sigmoid.keras")
    tf.keras.Model(inputs, tf.keras.layers.Dense(10, activation="sigmoid", name="out")(x)).save(
        path)
    with pytest.raises(ConfigError, match=f"^{path}: model .* does not end in logits: its output "
                                          "comes from 'out' \\(Dense with activation='sigmoid'\\)"
                       ) as error:
        zoo.create_model(path, input_shape=(8, 8, 1), num_classes=10)
    assert "\n" not in str(error.value)


def _damage(path, how):
    """A saved model file cut short or overwritten, as a half-finished copy leaves it."""
    data = bytearray(open(path, "rb").read())
    if how == "truncated":
        data = data[:len(data) // 2]
    elif how == "central_directory":  # the zip's index, found from its end record
        start = int.from_bytes(data[-6:-2], "little")
        data[start:start + 16] = b"\xff" * 16
    else:  # bytes in the middle: a member's data no longer fits its checksum
        data[len(data) // 3:len(data) // 3 + 256] = b"\xa5" * 256
    with open(path, "wb") as f:
        f.write(bytes(data))


@pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")
@pytest.mark.parametrize("suffix, how, reason", [
    (".h5", "truncated", "truncated file"),
    (".keras", "truncated", "its zip archive has no end"),
    (".keras", "central_directory", "central directory"),
    (".keras", "middle", "fails its checksum"),
])
def test_a_damaged_model_file_is_one_config_error_naming_it(tmp_path, monkeypatch, suffix, how,
                                                           reason):
    path = str(tmp_path / f"copied model{suffix}")
    tf.keras.Sequential([tf.keras.layers.Conv2D(4, 3, input_shape=(8, 8, 1)),
                         tf.keras.layers.Flatten(), tf.keras.layers.Dense(10)]).save(path)
    _damage(path, how)
    damaged = f"^{re.escape(path)} is damaged \\(truncated or partly copied\\?\\): .*"
    with pytest.raises(ConfigError, match=f"{damaged}{reason}.*; save the model again$") as error:
        zoo.get_builder(path)  # checked before anything is built or written
    assert "\n" not in str(error.value)
    # and where the loader itself meets the damage: still one line naming the file
    monkeypatch.setattr(applications, "check_model_file", lambda path: None)
    with pytest.raises(ConfigError, match=damaged) as error:
        applications.load_float_model(path)
    assert "\n" not in str(error.value)
