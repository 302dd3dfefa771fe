import larq as lq
import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_model

import quantens
from quantens.layers import SwitchableQuantizedVariable


def kernel_variables(model):
    return [w for w in model.weights if "kernel" in w.name]


def bn_variables(model):
    return [w for w in model.weights if "bn" in w.name.split("/")[0]]


def test_one_kernel_per_layer_whatever_the_number_of_members():
    one = tiny_model(bit_widths=(32,), fp_downsample_sc=False)
    five = tiny_model(bit_widths=(32, 8, 4, 2, 1), fp_downsample_sc=False)
    convs = [layer for layer in five.layers if isinstance(layer, quantens.QuantConv2D)]
    assert len(convs) == 8  # 6 blocks and 2 quantized downsampling shortcuts
    for conv in convs:
        assert len([w for w in conv.weights if "kernel" in w.name]) == 1
    # the same kernels, the same shapes; only BN parameters grow with members
    assert [k.shape for k in kernel_variables(one)] == [k.shape for k in kernel_variables(five)]
    non_bn_one = one.count_params() - sum(np.prod(w.shape) for w in bn_variables(one))
    non_bn_five = five.count_params() - sum(np.prod(w.shape) for w in bn_variables(five))
    assert non_bn_one == non_bn_five
    switchable_one = sum(
        np.prod(w.shape) for layer in one.layers
        if isinstance(layer, quantens.SwitchableBatchNormalization) for w in layer.weights
    )
    switchable_five = sum(
        np.prod(w.shape) for layer in five.layers
        if isinstance(layer, quantens.SwitchableBatchNormalization) for w in layer.weights
    )
    assert switchable_five == 5 * switchable_one


def test_quantized_kernel_reports_the_active_precision():
    conv = quantens.QuantConv2D(4, 3)
    conv.build((None, 6, 6, 2))
    assert isinstance(conv.kernel, SwitchableQuantizedVariable)
    assert conv.kernel.precision == 32
    with quantens.bits(2):
        assert conv.kernel.precision == 2
        assert conv.input_quantizer.precision == 2


def test_conv_quantizes_its_kernel_and_inputs_at_the_active_bits(rng):
    conv = quantens.QuantConv2D(3, 3, padding="valid", use_bias=False)
    x = rng.normal(size=(2, 5, 5, 2)).astype("float32")
    conv(x)
    latent = conv.kernel.latent_variable.numpy()
    for b in (32, 4, 1):
        with quantens.bits(b):
            y = conv(x).numpy()
        w = quantens.WeightQuantizer().for_bits(b)
        w = latent if w is None else w(latent).numpy()
        xq = quantens.ActivationQuantizer().for_bits(b)(x).numpy()
        expected = tf.nn.conv2d(xq, w, 1, "VALID").numpy()
        np.testing.assert_allclose(y, expected, atol=1e-5)


def test_dense_uses_one_kernel_for_all_members(rng):
    dense = quantens.QuantDense(3, input_quantizer=None, use_bias=False)
    x = rng.normal(size=(4, 5)).astype("float32")
    with quantens.bits(1):
        y1 = dense(x).numpy()
    with quantens.bits(32):
        y32 = dense(x).numpy()
    latent = dense.kernel.latent_variable.numpy()
    np.testing.assert_allclose(y32, x @ latent, atol=1e-5)
    np.testing.assert_allclose(y1, x @ np.where(latent >= 0, 1.0, -1.0), atol=1e-5)
    assert len(dense.trainable_weights) == 1


def test_switchable_bn_keeps_statistics_per_member(rng):
    bn = quantens.SwitchableBatchNormalization(bit_widths=(32, 2), momentum=0.0)
    x = rng.normal(3.0, 2.0, size=(64, 4)).astype("float32")
    with quantens.bits(2):
        bn(x, training=True)
    np.testing.assert_allclose(bn.branch(2).moving_mean.numpy(), x.mean(0), rtol=1e-5)
    np.testing.assert_array_equal(bn.branch(32).moving_mean.numpy(), np.zeros(4))
    with pytest.raises(ValueError, match="has no member with 4 bits"):
        with quantens.bits(4):
            bn(x)


def test_shared_bn_has_one_set_of_parameters():
    bn = quantens.SwitchableBatchNormalization(bit_widths=(32, 8, 1), shared=True)
    bn.build((None, 4))
    assert len(bn.weights) == 4
    assert bn.branch(1) is bn.branch(32)


def test_summary_describes_the_active_member(capsys):
    model = tiny_model(bit_widths=(32, 1))
    with quantens.bits(1):
        lq.models.summary(model)
    one_bit = capsys.readouterr().out
    with quantens.bits(32):
        lq.models.summary(model)
    full = capsys.readouterr().out
    assert "1-bit" in one_bit and "1-bit" not in full


@pytest.mark.parametrize(
    "layer, shape",
    [
        (quantens.QuantConv2D(4, 3, padding="same", kernel_quantizer="identity",
                              input_quantizer=quantens.ActivationQuantizer("det_sign", 0.9)),
         (2, 5, 5, 3)),
        (quantens.QuantDense(3, input_quantizer=None), (2, 6)),
        (quantens.SwitchableBatchNormalization((8, 2), momentum=0.5), (2, 6)),
        (quantens.QuantActivation("round", clip_threshold=1.3), (2, 6)),
    ],
)
def test_layer_config_round_trip(layer, shape, rng):
    x = rng.normal(size=shape).astype("float32")
    layer(x)
    config = tf.keras.utils.serialize_keras_object(layer)
    clone = tf.keras.utils.deserialize_keras_object(config)
    assert type(clone) is type(layer)
    clone(x)
    clone.set_weights(layer.get_weights())
    assert clone.get_config() == layer.get_config()
    with quantens.bits(2):
        np.testing.assert_allclose(clone(x), layer(x), atol=1e-6)


def test_every_registered_layer_kind_is_a_switchable_layer_of_its_float_class():
    from quantens import registry
    from quantens.layers import SwitchableLayer

    entries = registry.registered_layers()
    assert [e.name for e in entries][:4] == ["Conv2D", "DepthwiseConv2D", "SeparableConv2D",
                                             "Dense"]
    for entry in entries:
        assert issubclass(entry.switchable_class, entry.float_class)
        assert issubclass(entry.switchable_class, SwitchableLayer)
        assert issubclass(entry.member_classes[1], entry.float_class)  # larq's layer
    for layer in (quantens.QuantActivation(), quantens.SwitchableBatchNormalization((32, 1))):
        assert isinstance(layer, SwitchableLayer)


def test_register_layer_refuses_what_would_break_the_table():
    from quantens import registry
    from quantens.layers import QuantConv1D

    conv1d = registry.layer_entry_for(tf.keras.layers.Conv1D(2, 3))
    with pytest.raises(ValueError, match="registered already"):
        registry.register_layer(tf.keras.layers.Conv1D, QuantConv1D,
                                kernels=("kernel_quantizer",), export=conv1d.export)
    with pytest.raises(ValueError, match="must subclass Conv2D"):
        registry.register_layer(tf.keras.layers.Conv2D, QuantConv1D,
                                kernels=("kernel_quantizer",), export=conv1d.export,
                                replace=True)
    with pytest.raises(ValueError, match="role"):
        registry.register_layer(tf.keras.layers.Conv1D, QuantConv1D,
                                kernels=("kernel_quantizer",), export=conv1d.export,
                                role="pooling", replace=True)
    assert registry.layer_entry_for(tf.keras.layers.Conv1D(2, 3)) is conv1d


def test_a_layer_kinds_kernel_quantizers_are_named_once_by_its_switchable_class():
    from quantens import registry
    from quantens.layers import QuantConv1D

    for entry in registry.registered_layers():  # derived, never written twice
        assert entry.kernels == entry.switchable_class._QUANTIZER_KEYS, entry.name
    conv1d = registry.layer_entry_for(tf.keras.layers.Conv1D(2, 3))
    with pytest.raises(ValueError, match=r"kernels \('depthwise_quantizer',\) differ from "
                                         r"QuantConv1D's kernel quantizer arguments"):
        registry.register_layer(tf.keras.layers.Conv1D, QuantConv1D,
                                kernels=("depthwise_quantizer",), export=conv1d.export,
                                replace=True)
    assert registry.layer_entry_for(tf.keras.layers.Conv1D(2, 3)) is conv1d
