import larq as lq
import numpy as np
import pytest
import tensorflow as tf

import quantens
from quantens.quantizers import (
    ActivationQuantizer,
    FullPrecisionActivation,
    NarrowRangeWeights,
    RoundActivation,
    SymmetricRoundActivation,
    WeightQuantizer,
)


def dorefa_weights_numpy(w, k):
    """DoReFa's weight quantizer, written out: tanh, normalise by max, round."""
    t = np.tanh(w)
    unit = t / (2 * np.abs(t).max()) + 0.5
    n = 2**k - 1
    return 2 * np.round(unit * n) / n - 1


def value_and_grad(quantizer, x, bits):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        with quantens.bits(bits):
            y = quantizer(x)
    return y.numpy(), tape.gradient(y, x).numpy()


@pytest.mark.parametrize("k", range(2, 9))
def test_dorefa_weights_equal_larq_and_the_formula(k, rng):
    w = rng.normal(0, 0.7, size=(3, 3, 4, 8)).astype("float32")
    with quantens.bits(k):
        ours = WeightQuantizer("dorefa")(w).numpy()
    larqs = lq.quantizers.DoReFa(k_bit=k, mode="weights")(w).numpy()
    np.testing.assert_array_equal(ours, larqs)
    np.testing.assert_allclose(ours, dorefa_weights_numpy(w, k), atol=1e-6)
    assert len(np.unique(ours)) <= 2**k
    assert ours.min() >= -1 and ours.max() <= 1


def test_dorefa_weight_gradient_is_straight_through_the_tanh(rng):
    w = rng.normal(0, 0.7, size=(50,)).astype("float32")
    _, grad = value_and_grad(WeightQuantizer(), w, 4)
    m = np.abs(np.tanh(w)).max()
    np.testing.assert_allclose(grad, (1 - np.tanh(w) ** 2) / m, rtol=1e-5)


def test_one_bit_weights_are_signs_with_identity_gradient():
    w = np.array([-2.0, -0.1, 0.0, 0.3, 5.0], "float32")
    y, grad = value_and_grad(WeightQuantizer(), w, 1)
    np.testing.assert_array_equal(y, [-1, -1, 1, 1, 1])
    np.testing.assert_array_equal(grad, np.ones_like(w))


@pytest.mark.parametrize("bits", [32, 8, 1])
def test_identity_and_full_precision_weights_pass_unchanged(bits, rng):
    w = rng.normal(size=(20,)).astype("float32")
    y, grad = value_and_grad(WeightQuantizer("identity"), w, bits)
    np.testing.assert_array_equal(y, w)
    np.testing.assert_array_equal(grad, np.ones_like(w))
    y32, _ = value_and_grad(WeightQuantizer("dorefa"), w, 32)
    np.testing.assert_array_equal(y32, w)


@pytest.mark.parametrize("k", range(1, 9))
def test_round_activations_take_exactly_2_to_the_k_levels_in_0_1(k):
    x = np.linspace(-2, 3, 20001).astype("float32")
    y, _ = value_and_grad(ActivationQuantizer("round"), x, k)
    levels = np.unique(y)
    assert len(levels) == 2**k
    np.testing.assert_allclose(levels, np.arange(2**k) / (2**k - 1), atol=1e-6)


@pytest.mark.parametrize("method", ["round", "det_sign"])
@pytest.mark.parametrize("k", [1, 2, 4])
def test_activation_gradient_is_straight_through_inside_clip_threshold_only(method, k):
    x = np.array([-2.0, -1.31, -1.3, -0.5, 0.0, 0.2, 0.7, 1.29, 1.3, 1.31, 4.0], "float32")
    _, grad = value_and_grad(ActivationQuantizer(method, clip_threshold=1.3), x, k)
    np.testing.assert_array_equal(grad, (np.abs(x) <= 1.3).astype("float32"))


def test_det_sign_gives_plus_minus_one_at_one_bit_and_symmetric_levels_above():
    x = np.linspace(-2, 2, 4001).astype("float32")
    y1, _ = value_and_grad(ActivationQuantizer("det_sign"), x, 1)
    np.testing.assert_array_equal(np.unique(y1), [-1, 1])
    y2, _ = value_and_grad(ActivationQuantizer("det_sign"), x, 2)
    np.testing.assert_allclose(np.unique(y2), [-1, -1 / 3, 1 / 3, 1], atol=1e-6)


def test_full_precision_activations_are_relu_or_clip():
    x = np.array([-2.0, -0.5, 0.5, 2.0], "float32")
    y, grad = value_and_grad(ActivationQuantizer("round"), x, 32)
    np.testing.assert_array_equal(y, [0, 0, 0.5, 2.0])
    np.testing.assert_array_equal(grad, [0, 0, 1, 1])
    y, _ = value_and_grad(ActivationQuantizer("det_sign"), x, 32)
    np.testing.assert_array_equal(y, [-1, -0.5, 0.5, 1])


def test_switchable_quantizers_follow_the_scope_and_report_precision():
    q = ActivationQuantizer()
    assert q.precision == 32
    with quantens.bits(4):
        assert q.precision == 4
        assert isinstance(q.for_bits(4), RoundActivation)
    assert isinstance(q.for_bits(32), FullPrecisionActivation)
    assert isinstance(ActivationQuantizer("det_sign").for_bits(3), SymmetricRoundActivation)
    assert isinstance(ActivationQuantizer("det_sign").for_bits(1), lq.quantizers.SteSign)
    assert WeightQuantizer().for_bits(32) is None


@pytest.mark.parametrize(
    "quantizer",
    [
        WeightQuantizer("identity"),
        WeightQuantizer("narrow"),
        NarrowRangeWeights(3),
        ActivationQuantizer("det_sign", clip_threshold=0.7),
        RoundActivation(3, clip_threshold=None),
        SymmetricRoundActivation(2),
        FullPrecisionActivation("clip"),
    ],
)
def test_quantizer_config_round_trip(quantizer):
    config = tf.keras.utils.serialize_keras_object(quantizer)
    clone = tf.keras.utils.deserialize_keras_object(config)
    assert type(clone) is type(quantizer)
    assert clone.get_config() == quantizer.get_config()
    x = np.linspace(-2, 2, 33).astype("float32")
    with quantens.bits(2):
        np.testing.assert_array_equal(clone(x), quantizer(x))


def test_unknown_methods_are_named_in_the_error():
    with pytest.raises(ValueError, match="choose one of dorefa, identity, narrow"):
        WeightQuantizer("xnor")
    with pytest.raises(ValueError, match="choose one of round, det_sign"):
        ActivationQuantizer("tanh")
    with pytest.raises(ValueError, match="positive"):
        ActivationQuantizer(clip_threshold=0)


@pytest.mark.parametrize("k", range(2, 9))
def test_narrow_weights_lie_on_the_symmetric_narrow_grid_per_output_channel(k, rng):
    """q = s * round(w / s), s = max|w| / (2^(k-1) - 1) per output channel: the integers
    -(2^(k-1)-1) ... 2^(k-1)-1 (zero included), the channel's max at the top."""
    w = (rng.normal(size=(3, 3, 4, 5)) * np.arange(1, 6)).astype("float32")
    m = 2 ** (k - 1) - 1
    q = NarrowRangeWeights(k)(w).numpy()
    s = np.abs(w).reshape(-1, 5).max(axis=0) / m
    ints = q / s
    np.testing.assert_allclose(ints, np.round(ints), atol=1e-4)
    np.testing.assert_allclose(q, np.round(w / s) * s, rtol=1e-6, atol=1e-7)
    assert np.abs(np.round(ints)).max() == m
    assert len(np.unique(np.round(ints[..., 0]))) <= 2 * m + 1
    with quantens.bits(k):
        np.testing.assert_array_equal(WeightQuantizer("narrow")(w), q)


def test_narrow_weights_gradient_is_straight_through_and_1_bit_is_sign(rng):
    w = rng.normal(size=(4, 3)).astype("float32")
    _, grad = value_and_grad(WeightQuantizer("narrow"), w, 2)
    np.testing.assert_array_equal(grad, np.ones_like(w))
    signs, _ = value_and_grad(WeightQuantizer("narrow"), w, 1)
    np.testing.assert_array_equal(signs, np.where(w >= 0, 1.0, -1.0))
    full, _ = value_and_grad(WeightQuantizer("narrow"), w, 32)
    np.testing.assert_array_equal(full, w)
    with pytest.raises(ValueError, match="2 or more bits"):
        NarrowRangeWeights(1)


def test_pact_forward_and_gradients_equal_the_paper_by_hand(rng):
    """y = round(clip(x, 0, α) / s) s with s = α / (2^k - 1); dy/dx = 1 on [0, α),
    dy/dα = 1 where x >= α (Choi et al. 2018), through an arbitrary upstream gradient."""
    from quantens.quantizers import pact

    x = tf.constant(rng.uniform(-1, 3, size=(64,)).astype("float32"))
    upstream = rng.normal(size=(64,)).astype("float32")
    alpha, k = tf.Variable(1.7), 3
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        loss = tf.reduce_sum(pact(x, alpha, k) * upstream)
    xs = x.numpy()
    step = 1.7 / 7
    np.testing.assert_allclose(pact(x, alpha, k), np.round(np.clip(xs, 0, 1.7) / step) * step,
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(tape.gradient(loss, x), upstream * ((xs >= 0) & (xs < 1.7)))
    np.testing.assert_allclose(tape.gradient(loss, alpha), upstream[xs >= 1.7].sum(), rtol=1e-5)


def test_pact_has_one_clip_value_per_member_that_only_its_member_trains():
    import zoo

    bits = (32, 4, 1)
    model = zoo.create_model("digits_resnet_e", width=8, bit_widths=bits, activation_method="pact")
    alphas = [w for w in model.trainable_weights if "alpha" in w.name]
    assert len(alphas) == 2 * 6 and all(float(a.numpy()) == 1.0 for a in alphas)
    x = np.random.default_rng(0).normal(size=(8, 8, 8, 1)).astype("float32")
    with tf.GradientTape() as tape:
        with quantens.bits(4):
            loss = tf.reduce_sum(model(x, training=True) ** 2)
    grads = dict(zip([a.name for a in alphas], tape.gradient(loss, alphas), strict=True))
    assert all(g is None for name, g in grads.items() if "alpha_1" in name)
    assert any(g is not None and float(g) != 0 for name, g in grads.items() if "alpha_4" in name)
    # the standalone member uses the learned range: a RangeRoundActivation on [0, α]
    alphas[0].assign(2.5)
    conv = quantens.QuantEnsemble(model, bits).member(4).get_layer(alphas[0].name.split("/")[0])
    assert conv.input_quantizer.value_range == 2.5 and conv.input_quantizer.precision == 4
    clone = tf.keras.utils.deserialize_keras_object(
        tf.keras.utils.serialize_keras_object(quantens.PACTActivation((32, 2), init=0.5)))
    assert clone.get_config()["bit_widths"] == [32, 2] and clone.init == 0.5


def test_narrow_depthwise_kernels_get_a_scale_per_channel(rng):
    """A depthwise kernel (h, w, c, m): one narrow scale per (channel, multiplier), set by
    the depthwise layers themselves; a PACT clip value never falls to 0."""
    from quantens.layers import QuantDepthwiseConv2D
    from quantens.quantizers import PACT_MIN_ALPHA, PACTActivation

    w = (rng.normal(size=(3, 3, 4, 1)) * np.arange(1, 5)[None, None, :, None]).astype("float32")
    q = NarrowRangeWeights(2, depthwise=True)(w).numpy()
    s = np.abs(w).max(axis=(0, 1), keepdims=True)  # m = 1 level each side
    np.testing.assert_allclose(q, np.round(w / s) * s, rtol=1e-6, atol=1e-7)
    layer = QuantDepthwiseConv2D(3, depthwise_quantizer="narrow")
    assert layer.depthwise_quantizer.depthwise and layer.depthwise_quantizer.for_bits(2).depthwise
    pact = PACTActivation((32, 2))
    pact.build(None)
    assert float(pact.alphas["2"].constraint(tf.constant(-1.0))) == pytest.approx(PACT_MIN_ALPHA)


# ------------------------------------------------------------- larq aliases


def test_every_method_name_is_a_registered_alias():
    """Weight methods, ActivationQuantizer's methods and --activation-method's pact, all aliased."""
    from quantens import defaults, quantizers

    names = set(defaults.WEIGHT_QUANTIZATIONS) | set(defaults.ACTIVATION_METHOD_CHOICES)
    assert set(quantizers.QUANTIZER_ALIASES) == names
    registered = tf.keras.utils.get_custom_objects()
    for name in names:
        assert registered[f"quantens.{name}"] is quantizers.QUANTIZER_ALIASES[name]
        for identifier in (name, f"quantens.{name}"):
            def config(q):
                return {k: v for k, v in q.get_config().items() if k != "name"}

            assert config(quantizers.get(identifier)) == config(
                lq.quantizers.get(f"quantens.{name}"))
    assert quantizers.get("dorefa").method == "dorefa"
    assert quantizers.get("quantens.identity").method == "identity"
    assert quantizers.get("det_sign").method == "det_sign"
    assert isinstance(quantizers.get("pact"), quantens.PACTActivation)
    assert isinstance(quantizers.get("ste_sign"), lq.quantizers.SteSign)  # larq's own names
    with pytest.raises(ValueError, match="no_such_quantizer"):
        quantizers.get("no_such_quantizer")


def test_an_alias_config_reaches_the_quantizer():
    q = lq.quantizers.get({"class_name": "quantens.narrow", "config": {"bits": 4}})
    assert isinstance(q, WeightQuantizer) and q.method == "narrow" and q.bits == 4


@pytest.mark.parametrize("bits", [32, 8, 3, 2, 1])
@pytest.mark.parametrize("weights, activations", [
    ("dorefa", "round"), ("narrow", "det_sign"), ("identity", "round"),
])
def test_a_larq_layer_with_aliases_computes_what_quantens_quantizers_compute(
        bits, weights, activations):
    rng = np.random.default_rng(bits)
    x = rng.normal(size=(2, 6, 6, 3)).astype("float32")
    larq_conv = lq.layers.QuantConv2D(4, 3, kernel_quantizer=f"quantens.{weights}",
                                      input_quantizer=f"quantens.{activations}")
    own_conv = quantens.QuantConv2D(4, 3, kernel_quantizer=weights, input_quantizer=activations)
    larq_dense = lq.layers.QuantDense(5, kernel_quantizer=f"quantens.{weights}",
                                      input_quantizer=f"quantens.{activations}")
    own_dense = quantens.QuantDense(5, kernel_quantizer=weights, input_quantizer=activations)
    for larq_layer, own_layer, inputs in ((larq_conv, own_conv, x),
                                          (larq_dense, own_dense, x.reshape(2, -1))):
        larq_layer.build(inputs.shape)
        own_layer.build(inputs.shape)
        own_layer.set_weights([rng.normal(size=w.shape).astype("float32")
                               for w in own_layer.get_weights()])
        larq_layer.set_weights(own_layer.get_weights())
        with quantens.bits(bits):
            got = larq_layer(inputs).numpy()
            np.testing.assert_array_equal(got, own_layer(inputs).numpy())
            kernel = WeightQuantizer(weights)(own_layer.get_weights()[0])
            quantized_inputs = ActivationQuantizer(activations)(inputs)
        if larq_layer is larq_dense:  # written out: quantized inputs times quantized kernel
            expected = quantized_inputs.numpy() @ kernel.numpy() + own_layer.get_weights()[1]
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert {type(larq_conv.kernel_quantizer), type(larq_conv.input_quantizer)} == {
        WeightQuantizer, ActivationQuantizer}


def test_a_larq_model_with_aliases_survives_save_and_load(tmp_path):
    inputs = tf.keras.Input((6, 6, 3))
    y = lq.layers.QuantConv2D(4, 3, kernel_quantizer="quantens.narrow",
                              input_quantizer="quantens.det_sign", name="conv")(inputs)
    y = tf.keras.layers.Flatten()(y)
    y = lq.layers.QuantDense(5, kernel_quantizer="quantens.dorefa",
                             input_quantizer="quantens.pact", name="dense")(y)
    model = tf.keras.Model(inputs, y)
    pact = model.get_layer("dense").input_quantizer
    pact.alphas["2"].assign(0.75)  # a trained clip value, not the initial one
    x = np.random.default_rng(0).normal(size=(3, 6, 6, 3)).astype("float32")
    path = str(tmp_path / "aliases.keras")
    model.save(path)
    loaded = tf.keras.models.load_model(path)  # no custom_objects: the quantizers are registered
    for layer in ("conv", "dense"):
        for key in ("kernel_quantizer", "input_quantizer"):
            before = getattr(model.get_layer(layer), key)
            after = getattr(loaded.get_layer(layer), key)
            assert type(after) is type(before)
            assert after.get_config() == before.get_config()
    assert float(loaded.get_layer("dense").input_quantizer.alphas["2"].numpy()) == 0.75
    for bits in (32, 8, 2, 1):
        with quantens.bits(bits):
            np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())
