"""Mixed members exported like uniform ones, and their bytes counted without exporting (issue 29).

`export_member(ensemble, policy, path, ...)` writes a mix of per-layer bits as one
TFLite file (int8 with INT4 filters where a layer's grid fits, LCE where a layer is at
1 bit, float32 where one is above 8 bits) and measures its agreement with its Keras
model; `member_bytes(ensemble, policy)` counts that file's bytes from the model. The
counts of int8 files must equal the files' sizes to the byte; those of LCE and float32
mixes are estimates within `ESTIMATE_TOLERANCE` (uniform members of those formats: exact).

Models: the pretrained digits ResNetE (`digits_w8`, 32 8 4 2 1 bits; `digits`, width 32,
for agreement), keras' MobileNetV2 (alpha 0.35, 32x32) converted with
`quantens.quantize_model`, and a MobileNetV2-shaped model (inverted residual blocks,
depthwise convolutions, ReLU6). The converted models are untrained; their BN statistics
are drawn at random (as a trained model's: nonzero offsets), since an untrained model's
zero BN offsets make biases that the converter stores once (see `quantens.export.size`).
"""

import os

import numpy as np
import pytest

import quantens
from quantens.errors import ExportError, UsageError
from quantens.export import (
    export_member,
    member_bytes,
    member_format,
    member_sizes,
    weight_bytes,
)
from quantens.export.size import ESTIMATE_TOLERANCE
from quantens.export.tflite import convert

BITS = (32, 8, 4, 2, 1)
INT8_BITS = (8, 4, 2)
POLICIES = 5  # random mixes per model and family
# A mix's int8 file rounds what a uniform member's int8 file rounds (the input, the
# full-precision layers, the tensors between grids): bound as export_ensemble's int8
# files (tests/test_export.py). Measured on the digits test split with the pretrained
# width-32 ResNetE: 99.4-100% for four mixes of 8, 4 and 2 bits. (At width 8 the same
# mixes agree on 98.6-99.2%, as the width-8 2-bit member's own file does.)
INT8_MIN_AGREEMENT = 0.99


def _named(ensemble) -> list[str]:
    return member_sizes(ensemble).named_layers


def _random_policies(ensemble, choices, count, seed) -> list[dict]:
    """`count` distinct policies, each mixing at least two of `choices`."""
    layers = _named(ensemble)
    rng = np.random.default_rng(seed)
    found: list[dict] = []
    while len(found) < count:
        policy = {name: int(rng.choice(choices)) for name in layers}
        if len(set(policy.values())) > 1 and policy not in found:
            found.append(policy)
    return found


def _file(ensemble, policy, x) -> bytes:
    """The file the export writes for `policy` (a mix's BN statistics re-estimated from x)."""
    from quantens.bits import is_policy, mix_bits

    if is_policy(policy):
        member = ensemble.member(policy, data=x, verbose=0)
        bits = mix_bits(ensemble.model, policy, ensemble.bit_widths)
    else:
        member, bits = ensemble.member(policy), policy
    return convert(member, bits, x)[0]


def _randomize_batch_norm(model, seed=0):
    """BN statistics and offsets as a trained model has them (not an untrained one's zeros)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if not hasattr(layer, "moving_mean") and "BatchNorm" not in type(layer).__name__:
            continue
        values = []
        for variable, value in zip(layer.weights, layer.get_weights(), strict=True):
            name = variable.name.lower()
            positive = "variance" in name or "gamma" in name
            values.append((rng.uniform(0.5, 1.5, value.shape) if positive
                           else rng.normal(0.0, 0.3, value.shape)).astype(value.dtype))
        layer.set_weights(values)


def _mobilenet_v2_shaped(size=16, classes=10):
    """MobileNetV2's structure at digits' scale: inverted residual blocks (1x1 expand,
    3x3 depthwise, linear 1x1 project, Add), ReLU6, a dense classifier."""
    import tensorflow as tf

    layers = tf.keras.layers

    def block(x, expand, out, stride, name):
        cin = x.shape[-1]
        y = layers.Conv2D(cin * expand, 1, use_bias=False, name=f"{name}_expand")(x)
        y = layers.BatchNormalization(name=f"{name}_expand_bn")(y)
        y = layers.ReLU(6.0, name=f"{name}_expand_relu")(y)
        y = layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False,
                                   name=f"{name}_dw")(y)
        y = layers.BatchNormalization(name=f"{name}_dw_bn")(y)
        y = layers.ReLU(6.0, name=f"{name}_dw_relu")(y)
        y = layers.Conv2D(out, 1, use_bias=False, name=f"{name}_project")(y)
        y = layers.BatchNormalization(name=f"{name}_project_bn")(y)
        return layers.Add(name=f"{name}_add")([x, y]) if stride == 1 and cin == out else y

    inputs = tf.keras.Input((size, size, 1))
    x = layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False, name="stem")(inputs)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(6.0, name="stem_relu")(x)
    x = block(x, 1, 16, 1, "b0")
    x = block(x, 4, 24, 2, "b1")
    x = block(x, 4, 24, 1, "b2")
    x = layers.Conv2D(64, 1, use_bias=False, name="head")(x)
    x = layers.BatchNormalization(name="head_bn")(x)
    x = layers.ReLU(6.0, name="head_relu")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    return tf.keras.Model(inputs, layers.Dense(classes, name="logits")(x), name="mnv2_shaped")


def _converted(model, bits):
    ensemble = quantens.QuantEnsemble(quantens.quantize_model(model, bits), bits)
    _randomize_batch_norm(ensemble.model)
    return ensemble


@pytest.fixture(scope="module")
def digits_w8():
    from zoo import create_model

    return quantens.QuantEnsemble(create_model("digits_resnet_e", weights="digits_w8"), BITS)


# ------------------------------------------------------------------ formats


def test_the_format_of_a_mix_follows_all_its_layers():
    assert member_format({"a": 8, "b": 4, "c": 2}) == "int8"
    assert member_format({"a": 8, "b": 1}) == "lce"
    assert member_format({"a": 32, "b": 1}) == "lce"  # LCE files hold float32 layers
    assert member_format({"a": 32, "b": 2}) == "float32"
    assert member_format({"a": 16, "b": 8}) == "float32"
    assert member_format({"a": 4}) == member_format(4) == "int8"
    with pytest.raises(ExportError, match="empty"):
        member_format({})


# ------------------------------------------------------------- exact counts


@pytest.mark.trains
def test_int8_counts_equal_the_files_of_digits_resnet_e(digits_w8, digits_arrays):
    """Uniform members and random mixes of 8, 4 and 2 bits: the count is the file's size,
    and its weights are the file's filters as stored."""
    x = digits_arrays[0][:256]
    sizes = member_sizes(digits_w8)
    for policy in [*INT8_BITS, *_random_policies(digits_w8, INT8_BITS, POLICIES, seed=1)]:
        flatbuffer = _file(digits_w8, policy, x)
        counted = sizes.breakdown(policy)
        assert counted["format"] == "int8" and counted["exact"], policy
        assert counted["bytes"] == len(flatbuffer), (policy, counted["bytes"] - len(flatbuffer))
        assert counted["weights"] == weight_bytes(flatbuffer)["weights"], policy
    assert member_bytes(digits_w8, 2) < member_bytes(digits_w8, 4)  # INT4 from 3 bits down


@pytest.mark.trains
@pytest.mark.slow
def test_lce_and_float32_counts_of_digits_resnet_e(digits_w8, digits_arrays):
    """Uniform 32- and 1-bit members: exact. Mixes with a layer at 1 bit (LCE) or above 8
    bits (float32): within the estimate's tolerance (measured: at most 0.3%)."""
    x = digits_arrays[0][:256]
    sizes = member_sizes(digits_w8)
    for b in (32, 1):
        assert sizes.bytes(b) == len(_file(digits_w8, b, x)), b
    seen = set()
    for policy in _random_policies(digits_w8, BITS, POLICIES, seed=2):
        flatbuffer = _file(digits_w8, policy, x)
        counted = sizes.breakdown(policy)
        seen.add(counted["format"])
        assert counted["format"] in ("lce", "float32") and not counted["exact"], policy
        error = abs(counted["bytes"] - len(flatbuffer)) / len(flatbuffer)
        assert error <= ESTIMATE_TOLERANCE, (policy, counted["bytes"], len(flatbuffer))
    assert "lce" in seen


@pytest.mark.trains
@pytest.mark.slow
def test_int8_counts_equal_the_files_of_keras_mobilenet_v2(digits_arrays):
    """keras' MobileNetV2 (alpha 0.35, 32x32) converted: 53 conv, depthwise and dense
    layers, each at its own bits; filters stored int8, or INT4 where the narrow grid
    of 4 and 2 bits fits."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    base = tf.keras.applications.MobileNetV2(alpha=0.35, input_shape=(32, 32, 3),
                                             weights=None, classes=10,
                                             classifier_activation=None)
    ensemble = _converted(base, INT8_BITS)
    x = np.random.default_rng(0).normal(size=(64, 32, 32, 3)).astype("float32")
    sizes = member_sizes(ensemble)
    for policy in [*INT8_BITS, *_random_policies(ensemble, INT8_BITS, POLICIES, seed=3)]:
        flatbuffer = _file(ensemble, policy, x)
        counted = sizes.breakdown(policy)
        assert counted["exact"] and counted["bytes"] == len(flatbuffer), (
            policy, counted["bytes"] - len(flatbuffer))
        assert counted["non_weights"] == weight_bytes(flatbuffer)["non_weights"]


@pytest.mark.trains
@pytest.mark.slow
def test_counts_of_a_converted_mobilenet_v2_shaped_model_in_every_format():
    """Uniform members: exact in every format; int8 mixes: exact; LCE and float32 mixes
    (activation quantizers that follow the layers they feed): within the tolerance
    (measured: at most 1.6%)."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    ensemble = _converted(_mobilenet_v2_shaped(), BITS)
    x = np.random.default_rng(0).normal(size=(64, 16, 16, 1)).astype("float32")
    sizes = member_sizes(ensemble)
    for b in BITS:
        assert sizes.bytes(b) == len(_file(ensemble, b, x)), b
    for policy in _random_policies(ensemble, INT8_BITS, POLICIES, seed=4):
        assert sizes.bytes(policy) == len(_file(ensemble, policy, x)), policy
    for policy in _random_policies(ensemble, BITS, POLICIES, seed=5):
        flatbuffer = _file(ensemble, policy, x)
        error = abs(sizes.bytes(policy) - len(flatbuffer)) / len(flatbuffer)
        assert error <= ESTIMATE_TOLERANCE, (policy, sizes.bytes(policy), len(flatbuffer))


# ------------------------------------------------------------- the export


@pytest.mark.trains
def test_a_mixed_int8_file_agrees_with_its_keras_model(digits_arrays, tmp_path):
    """The pretrained width-32 ResNetE mixed 8/4/2: one int8 file whose 2-bit filters
    are INT4 and whose 8- and 4-bit filters int8, that agrees with its Keras model (BN
    statistics re-estimated from the training split) on the test split as int8 members
    do, and whose size the count gave."""
    from zoo import create_model

    x_train, _, x_test, y_test = digits_arrays
    ensemble = quantens.QuantEnsemble(create_model("digits_resnet_e", weights="digits"), BITS)
    policy = {"block1_conv": 8, "block2_conv": 4, "*": 2}
    path = tmp_path / "mixed.tflite"
    record = export_member(ensemble, policy, str(path), calibration_data=x_train,
                           val_data=(x_test, y_test))
    assert record["format"] == "int8" and record["bits"] == [8, 4, 2]
    assert record["policy"] == {"block1_conv": 8, "block2_conv": 4, "block3_conv": 2,
                                "block4_conv": 2, "block5_conv": 2, "block6_conv": 2}
    assert record["bn_statistics"] == "re-estimated"
    storage = record["weights_storage"]
    assert storage["int4_tensors"] == 4  # blocks 3-6 at 2 bits
    assert "its integers reach ±15" in " ".join(storage["int8_reasons"].values())  # 4 bits
    fid = record["fidelity"]
    assert fid["examples"] == len(x_test)
    assert fid["agreement"] >= INT8_MIN_AGREEMENT, fid
    assert abs(fid["tflite_accuracy"] - fid["keras_accuracy"]) <= 0.02, fid
    assert record["bytes"] == os.path.getsize(path) == member_bytes(ensemble, policy)
    assert record["weight_bytes"] + record["non_weight_bytes"] == record["bytes"]
    assert sorted(os.listdir(tmp_path)) == ["mixed.tflite"]  # no temporary file left


@pytest.mark.trains
def test_mixes_with_a_1_bit_or_a_32_bit_layer_are_lce_and_float32_files(tmp_path):
    """A 1-bit conv that reads its own 1-bit activation is a binary convolution in an LCE
    file; a 32-bit layer makes the whole file float32. Both compute what the mix's
    Keras model computes."""
    from zoo import create_model

    bits = (32, 2, 1)
    ensemble = quantens.QuantEnsemble(create_model("digits_resnet_e", width=4,
                                                   bit_widths=bits), bits)
    x = np.random.default_rng(0).normal(size=(32, 8, 8, 1)).astype("float32")
    lce = export_member(ensemble, {"block4_conv": 1, "block5_conv": 1, "*": 2},
                        str(tmp_path / "lce.tflite"), calibration_data=x, val_data=x)
    assert lce["format"] == "lce" and lce["ops"]["LceBconv2d"] == 2
    assert lce["lce"]["binary_convs"] == ["block4_conv_1bit", "block5_conv_1bit"]
    fp = export_member(ensemble, {"block1_conv": 32, "*": 2}, str(tmp_path / "fp.tflite"),
                       calibration_data=x, val_data=x)
    assert fp["format"] == "float32"
    for record in (lce, fp):
        assert record["fidelity"]["agreement"] == 1.0, record["fidelity"]
        assert record["fidelity"]["max_abs_logit_diff"] < 1e-4, record["fidelity"]
    assert fp["bn_statistics"] == "re-estimated"  # from calibration_data, by default
    # data=False: the BNs keep the uniform members' statistics (what re-estimation buys)
    kept = export_member(ensemble, {"block1_conv": 32, "*": 2}, str(tmp_path / "kept.tflite"),
                         calibration_data=x, val_data=x, data=False)
    assert kept["bn_statistics"] == "the uniform members'"
    assert kept["fidelity"]["agreement"] == 1.0
    with quantens.bits({"block1_conv": 32, "*": 2}):  # the ensemble's own statistics
        expected = ensemble.model(x, training=False).numpy()
    from quantens.export import TFLiteRunner

    np.testing.assert_allclose(TFLiteRunner(open(tmp_path / "kept.tflite", "rb").read())(x),
                               expected, atol=1e-4)


@pytest.mark.trains
def test_the_same_member_is_the_same_file_twice():
    """Keras numbers each quantizer object it builds (`round_activation_18`); the file's
    tensor names leave those numbers out, so a member's file, and its size, do not
    depend on how many members the process built before."""
    from zoo import create_model

    bits = (32, 4, 1)
    ensemble = quantens.QuantEnsemble(create_model("digits_resnet_e", width=4,
                                                   bit_widths=bits), bits)
    x = np.random.default_rng(0).normal(size=(8, 8, 8, 1)).astype("float32")
    policies = (32, 1, {"block2_conv": 4, "*": 1})
    first = [_file(ensemble, policy, x) for policy in policies]
    for _ in range(10):  # the quantizers' numbers gain a digit
        ensemble.member(4)
    for policy, flatbuffer in zip(policies, first, strict=True):
        assert _file(ensemble, policy, x) == flatbuffer, policy


@pytest.mark.trains
def test_export_member_refuses_misuse_before_writing_anything(tmp_path):
    from zoo import create_model

    bits = (8, 2)
    ensemble = quantens.QuantEnsemble(create_model("digits_resnet_e", width=4,
                                                   bit_widths=bits), bits)
    x = np.zeros((4, 8, 8, 1), "float32")
    path = str(tmp_path / "m.tflite")
    cases = [
        (lambda: export_member(ensemble.model, 8, path), "must be a QuantEnsemble"),
        (lambda: export_member(ensemble, 8, str(tmp_path)), "is a directory"),
        (lambda: export_member(ensemble, 4, path), "no member with 4 bits"),
        (lambda: export_member(ensemble, 8, path, data=x), "leave data out"),
        (lambda: export_member(ensemble, {"block1_conv": 4, "*": 2}, path), "not a member"),
        (lambda: export_member(ensemble, 8, path, batch_size=0), "batch_size"),
        (lambda: export_member(ensemble, {"*": 2}, path, lce_int8="some"), "lce_int8"),
    ]
    for call, phrase in cases:
        with pytest.raises(UsageError, match=phrase):
            call()
    with pytest.raises(ExportError, match="calibration_data"):
        export_member(ensemble, {"block1_conv": 8, "*": 2}, path)
    assert os.listdir(tmp_path) == []
