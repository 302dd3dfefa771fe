"""quantize_model: float Keras models -> shared-weight ensembles of switchable layers."""

import json
import tempfile
import textwrap

import larq as lq
import numpy as np
import pytest
import tensorflow as tf
from conftest import ROOT, run_script

import quantens
from quantens.convert import default_policy, quantize_model
from quantens.distillation import Distillation
from quantens.errors import ConfigError
from quantens.layers import (
    QuantDepthwiseConv2D,
    QuantSeparableConv2D,
    SwitchableQuantizedVariable,
)
from quantens.quantizers import NarrowRangeWeights, RangeRoundActivation

pytestmark = pytest.mark.trains  # trains or traces whole models: not in `make test-fast`

BITS = (32, 8, 4, 2, 1)
L = tf.keras.layers
KERNEL_TYPES = {
    L.Conv2D: quantens.QuantConv2D,
    L.DepthwiseConv2D: QuantDepthwiseConv2D,
    L.SeparableConv2D: QuantSeparableConv2D,
    L.Dense: quantens.QuantDense,
}


def randomize_bn(model, seed=0):
    """Non-trivial BN statistics and affine parameters, so a missed copy would show."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([
                rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0.0, 0.2, beta.shape),
                rng.normal(0.0, 0.2, mean.shape), rng.uniform(0.5, 2.0, var.shape),
            ])
    return model


def handmade_cnn(classes=5):
    """Conv2D, DepthwiseConv2D, SeparableConv2D, BN, ReLU6, relu, fused activations,
    Add, Concatenate, a TF op, pooling, padding, Dropout and Dense."""
    inputs = tf.keras.Input((16, 16, 3))
    x = L.Rescaling(1 / 2.0, name="rescale")(inputs)
    x = L.Conv2D(8, 3, padding="same", use_bias=False, name="stem_conv")(x)
    x = L.BatchNormalization(name="stem_bn")(x)
    x = L.ReLU(6.0, name="stem_relu6")(x)
    y = L.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(x)
    y = L.BatchNormalization(name="dw_bn")(y)
    y = L.Activation("relu", name="dw_relu")(y)
    y = L.Conv2D(8, 1, activation="relu", name="pw")(y)
    x = L.Add(name="add")([x, y])
    z = L.SeparableConv2D(8, 3, padding="same", activation="relu6", name="sep")(x)
    z = L.ZeroPadding2D(1, name="pad")(z)
    z = L.Conv2D(8, 3, activation="swish", name="conv_swish")(z)
    x = L.Concatenate(name="concat")([x, z * 0.5])
    x = L.MaxPool2D(2, name="pool")(x)
    x = L.Conv2D(16, 3, padding="same", name="conv")(x)
    x = L.BatchNormalization(name="conv_bn")(x)
    x = L.ReLU(name="conv_relu")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    x = L.Dropout(0.2, name="drop")(x)
    x = L.Dense(16, activation="relu", name="fc")(x)
    outputs = L.Dense(classes, name="logits")(x)
    return tf.keras.Model(inputs, outputs, name="handmade")


def sequential_cnn(classes=5):
    return tf.keras.Sequential([
        L.Conv2D(8, 3, activation="relu", input_shape=(16, 16, 3), name="c1"),
        L.BatchNormalization(name="b1"),
        L.DepthwiseConv2D(3, activation="relu6", name="d1"),
        L.Conv2D(8, 1, name="c2"),
        L.BatchNormalization(name="b2"),
        L.Activation("relu6", name="a2"),
        L.Flatten(name="flat"),
        L.Dense(classes, name="out"),
    ], name="sequential_cnn")


def build(name):
    tf.keras.utils.set_random_seed(0)
    if name == "handmade":
        model = handmade_cnn()
    elif name == "sequential":
        model = sequential_cnn()
    elif name == "mobilenet_v2":
        model = tf.keras.applications.MobileNetV2(
            weights=None, input_shape=(32, 32, 3), classes=10, alpha=0.35,
            classifier_activation=None)
    else:
        model = tf.keras.applications.ResNet50(
            weights=None, input_shape=(32, 32, 3), classes=10, classifier_activation=None)
    return randomize_bn(model)


@pytest.fixture(scope="module")
def converted_models():
    """{name: (original, converted)}, each built once per module (ResNet50 is big)."""
    return {name: (model, quantize_model(model, BITS))
            for name, model in ((n, build(n)) for n in
                                ("handmade", "sequential", "mobilenet_v2", "resnet50"))}


def inputs_for(model, n=4, seed=1):
    shape = (n, *model.input_shape[1:])
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def run(model, x, b, training=False):
    with quantens.bits(b):
        return model(x, training=training).numpy()


def kernel_variables(model):
    return [w for w in model.weights if w.name.split("/")[-1].split(":")[0].endswith("kernel")]


# ------------------------------------------------------------------ 1: equivalence


@pytest.mark.parametrize("name", ["handmade", "sequential", "mobilenet_v2", "resnet50"])
def test_32_bit_member_equals_the_original_and_lower_members_differ(name, converted_models):
    original, converted = converted_models[name]
    x = inputs_for(original)
    expected = original(x, training=False).numpy()
    assert np.abs(expected).max() > 1e-3  # a real signal, not all zeros
    np.testing.assert_allclose(run(converted, x, 32), expected, atol=1e-4, rtol=1e-4)
    for b in BITS[1:]:
        y = run(converted, x, b)
        assert y.shape == expected.shape and np.isfinite(y).all()
        assert np.abs(y - expected).max() > 1e-3, f"the {b}-bit member equals the 32-bit one"


@pytest.mark.parametrize("name", ["handmade", "sequential", "mobilenet_v2", "resnet50"])
def test_one_kernel_per_converted_layer_and_statistics_per_member(name, converted_models):
    original, converted = converted_models[name]
    assert [v.shape for v in kernel_variables(converted)] == \
        [v.shape for v in kernel_variables(original)]
    convs = 0
    for layer in original.layers:
        new = converted.get_layer(layer.name)  # names are kept
        if type(layer) in KERNEL_TYPES:
            convs += 1
            assert type(new) is KERNEL_TYPES[type(layer)]
            kernels = kernel_variables(new)
            assert len(kernels) == len(kernel_variables(layer)) in (1, 2)
            assert all(isinstance(k, SwitchableQuantizedVariable) for k in kernels)
            for old_w, new_w in zip(layer.get_weights(), new.get_weights(), strict=True):
                np.testing.assert_array_equal(old_w, new_w)
            assert new.input_quantizer is None
        elif isinstance(layer, L.BatchNormalization):
            assert isinstance(new, quantens.SwitchableBatchNormalization)
            assert new.bit_widths == BITS
            assert new.branch(1).epsilon == layer.epsilon
            assert new.branch(1).momentum == layer.momentum
            for b in BITS:
                for old_w, new_w in zip(layer.get_weights(), new.branch(b).get_weights(),
                                        strict=True):
                    np.testing.assert_array_equal(old_w, new_w)
    assert convs == len([v for v in kernel_variables(original) if "pointwise" not in v.name])
    # the switchable layers add no kernels: only BN parameters grow (x5 members), and
    # each quantized activation has a clip value per member below 32 bits
    bn = sum(np.prod(w.shape) for layer in original.layers
             if isinstance(layer, L.BatchNormalization) for w in layer.weights)
    clips = sum(isinstance(layer, quantens.QuantActivation) for layer in converted.layers)
    assert converted.count_params() == original.count_params() + (len(BITS) - 1) * bn \
        + (len(BITS) - 1) * clips


def test_activations_are_quantized_where_the_original_has_them(converted_models):
    original, converted = converted_models["handmade"]
    types = {layer.name: type(layer) for layer in converted.layers}
    for name in ("stem_relu6", "dw_relu", "pw_relu", "sep_relu6", "conv_relu", "fc_relu"):
        assert types[name] is quantens.QuantActivation, name
    assert converted.get_layer("pw").activation.__name__ == "linear"  # the relu moved out
    # not ReLU-like: kept as they are
    assert converted.get_layer("conv_swish").activation.__name__ == "swish"
    assert "conv_swish_swish" not in types
    for name in ("add", "concat", "pool", "pad", "drop", "gap", "rescale"):
        assert types[name] is type(original.get_layer(name)), name
    # ranges: a default clip value per member (2 at 2 bits, never above a ReLU6's 6);
    # 2-bit grids of 3 steps
    x = np.linspace(-2.0, 8.0, 41, dtype="float32")[None, :]
    relu6, relu = converted.get_layer("sep_relu6"), converted.get_layer("dw_relu")
    with quantens.bits(2):
        np.testing.assert_allclose(np.unique(relu6(x)), [0.0, 2 / 3, 4 / 3, 2.0], rtol=1e-6)
        np.testing.assert_allclose(np.unique(relu(x)), [0.0, 2 / 3, 4 / 3, 2.0], rtol=1e-6)
        # the dw reads stem_relu6: at 8 bits or more (depthwise_bits), on [0, 6]
        np.testing.assert_allclose(
            converted.get_layer("stem_relu6")(x), np.round(np.clip(x, 0, 6) * 255 / 6) * 6 / 255,
            rtol=1e-5)
    with quantens.bits(8):  # from 4 bits up: a ReLU6's own [0, 6]
        assert float(tf.reduce_max(relu6(x))) == 6.0
    relu6 = converted.get_layer("stem_relu6")
    six = quantize_model(original, (32, 2), relu_range=6.0).get_layer("sep_relu6")
    with quantens.bits(2):
        np.testing.assert_allclose(np.unique(six(x)), [0.0, 2.0, 4.0, 6.0], rtol=1e-6)
    with quantens.bits(32):
        np.testing.assert_array_equal(relu6(x), np.clip(x, 0, 6))
        np.testing.assert_array_equal(relu(x), np.maximum(x, 0))  # unbounded at 32 bits


def test_relu_range_option_and_weight_quantization_identity():
    model = build("sequential")
    converted = quantize_model(model, (32, 1), relu_range=2.5, weight_quantization="identity")
    act = converted.get_layer("c1_relu")
    x = np.array([[-1.0, 1.0, 1.5, 9.0]], "float32")
    with quantens.bits(1):
        np.testing.assert_array_equal(act(x), [[0.0, 0.0, 2.5, 2.5]])
    assert converted.get_layer("d1_relu6").quantizer.clip == {"1": 2.5}  # min(6, 2.5)
    assert converted.get_layer("d1_relu6").quantizer.max_value == 6.0  # the 32-bit cap
    # identity weights: the 1-bit member differs from 32 only by its activations
    with quantens.bits(1):
        assert converted.get_layer("c2").kernel_quantizer(np.ones(3, "float32")).numpy().tolist() \
            == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="unknown quantizer option 'relu_max'.*relu_range"):
        quantize_model(model, (32, 1), relu_max=3)
    with pytest.raises(ValueError, match="relu_range must be a finite number > 0"):
        quantize_model(model, (32, 1), relu_range=0)


def test_nested_models_are_flattened_with_their_training_argument():
    tf.keras.utils.set_random_seed(0)
    body = tf.keras.Sequential([
        L.Conv2D(4, 3, input_shape=(8, 8, 3), name="inner_conv"),
        L.BatchNormalization(name="inner_bn"),
        L.ReLU(name="inner_relu"),
    ], name="body")
    randomize_bn(body)
    inputs = tf.keras.Input((8, 8, 3))
    x = body(inputs, training=False)
    x = L.GlobalAveragePooling2D()(x)
    model = tf.keras.Model(inputs, L.Dense(3, name="head")(x))
    converted = quantize_model(model, (32, 2))
    assert "body" not in [layer.name for layer in converted.layers]
    assert isinstance(converted.get_layer("inner_bn"), quantens.SwitchableBatchNormalization)
    x = inputs_for(model)
    # training=True of the outer call still runs the BN in inference mode (training=False)
    np.testing.assert_allclose(run(converted, x, 32, training=True),
                               model(x, training=True).numpy(), atol=1e-5)


# --------------------------------------------------------- 2: members and round trips


def colour_classes(n=32, classes=5):
    """Noise images whose class is a colour offset: learnable in a few steps."""
    tf.keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    y = rng.integers(0, classes, size=n)
    colours = rng.normal(size=(classes, 1, 1, 3))
    x = rng.normal(size=(n, 16, 16, 3)) + 2.0 * colours[y]
    return x.astype("float32"), y


@pytest.fixture(scope="module")
def trained_handmade():
    """A converted hand-made CNN after a few ensemble steps, and the losses per epoch."""
    converted = quantize_model(build("handmade"), BITS)
    x, y = colour_classes()
    ensemble = quantens.QuantEnsemble(converted, BITS)
    ensemble.compile(optimizer=tf.keras.optimizers.Adam(1e-2))
    history = ensemble.fit(x, y, batch_size=16, epochs=6, verbose=0, shuffle=False)
    return ensemble, x, history.history["loss"]


def test_members_equal_the_converted_model_in_each_bits_scope(trained_handmade):
    ensemble, x, _ = trained_handmade
    for b in BITS:
        member = ensemble.member(b)
        np.testing.assert_allclose(member(x, training=False).numpy(),
                                   run(ensemble.model, x, b), atol=1e-5)
        for layer in member.layers:  # a plain larq / Keras model
            assert not hasattr(layer, "fixed_layer"), layer.name


def test_json_and_weights_round_trip(trained_handmade):
    ensemble, x, _ = trained_handmade
    converted = ensemble.model
    path = tempfile.mkdtemp() + "/converted.weights.h5"
    converted.save_weights(path)
    restored = tf.keras.models.model_from_json(converted.to_json())
    assert [type(a) for a in restored.layers] == [type(a) for a in converted.layers]
    restored.load_weights(path)
    for b in BITS:
        np.testing.assert_array_equal(run(restored, x, b), run(converted, x, b))


# ------------------------------------------------------------------------ 3: training


def test_converted_model_trains_in_quant_ensemble(trained_handmade):
    _, _, losses = trained_handmade
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.8 * losses[0], losses


def test_converted_model_trains_with_progressive_distillation():
    converted = quantize_model(build("handmade"), BITS)
    x, y = colour_classes()
    ensemble = quantens.QuantEnsemble(converted, BITS)
    ensemble.set_distillation(Distillation(BITS, "progressive", teacher=None))
    ensemble.compile(optimizer=tf.keras.optimizers.Adam(1e-2))
    history = ensemble.fit(x, y, batch_size=16, epochs=6, verbose=0, shuffle=False).history
    assert history["kd_loss"][0] > 0
    assert history["loss"][-1] < 0.8 * history["loss"][0], history["loss"]
    members = [sum(history[f"loss_{b}"][epoch] for b in BITS) for epoch in (0, -1)]
    assert members[1] < 0.8 * members[0], members


def test_attention_matching_uses_the_converted_models_residual_outputs():
    """The hand-built CNN's Add is a stage output: attention matching has a loss."""
    from quantens.distillation import stage_outputs

    converted = quantize_model(build("handmade"), (32, 2))
    assert [t._keras_history.layer.name for t in stage_outputs(converted)] == ["add"]
    x, y = colour_classes()
    ensemble = quantens.QuantEnsemble(converted, (32, 2))
    ensemble.set_distillation(Distillation((32, 2), "progressive", teacher=None,
                                           attention_weight=1.0))
    ensemble.compile(optimizer=tf.keras.optimizers.Adam(1e-2))
    history = ensemble.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False).history
    assert history["attention_loss"][0] > 0 and np.isfinite(history["loss"]).all()


MIRRORED = textwrap.dedent(
    """
    import json
    import os

    import quantens  # tf-keras before TensorFlow
    import numpy as np
    import tensorflow as tf
    from quantens.convert import quantize_model

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    strategy = tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")])
    tf.keras.utils.set_random_seed(0)
    bits = (32, 4, 1)
    with strategy.scope():
        inputs = tf.keras.Input((8, 8, 3))
        x = tf.keras.layers.Conv2D(8, 3, activation="relu", name="stem")(inputs)
        x = tf.keras.layers.BatchNormalization()(x)
        x = tf.keras.layers.DepthwiseConv2D(3, activation="relu6")(x)
        x = tf.keras.layers.GlobalAveragePooling2D()(x)
        model = tf.keras.Model(inputs, tf.keras.layers.Dense(4)(x))
        ensemble = quantens.QuantEnsemble(quantize_model(model, bits), bits)
        ensemble.compile(optimizer=tf.keras.optimizers.Adam(1e-2))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 4, size=16)
    losses = ensemble.fit(x, y, batch_size=8, epochs=5, verbose=0, shuffle=False).history["loss"]
    print(json.dumps({"replicas": strategy.num_replicas_in_sync, "loss": losses}))
    """
)


def test_converted_model_trains_under_two_replicas(tmp_path):
    script = tmp_path / "mirrored_convert.py"
    script.write_text(MIRRORED)
    result = run_script([str(script)], env={"PYTHONPATH": ROOT}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["replicas"] == 2
    assert np.isfinite(report["loss"]).all()
    assert report["loss"][-1] < report["loss"][0]


# -------------------------------------------------------------------------- 4: policy


def kernel_precision(layer):
    """The precision of a member layer's kernel quantizer (None: full precision)."""
    quantizer = getattr(layer, "kernel_quantizer", None) or getattr(
        layer, "depthwise_quantizer", None)
    return 32 if quantizer is None else quantizer.precision


def activation_precision(layer):
    assert isinstance(layer.activation, RangeRoundActivation), layer.name
    return layer.activation.precision


def test_default_policy_keeps_the_first_conv_and_last_dense_full_precision(converted_models):
    for name, first, last in (("mobilenet_v2", "Conv1", "predictions"),
                              ("resnet50", "conv1_conv", "predictions"),
                              ("handmade", "stem_conv", "logits")):
        original, converted = converted_models[name]
        assert default_policy(original) == {first: 32, last: 32}
        assert converted.get_layer(first).kernel_quantizer.bits == 32
        assert converted.get_layer(last).kernel_quantizer.bits == 32
    ensemble = quantens.QuantEnsemble(converted_models["handmade"][1], BITS)
    for b in BITS:
        member = ensemble.member(b)
        assert kernel_precision(member.get_layer("stem_conv")) == 32
        assert kernel_precision(member.get_layer("logits")) == 32
        for other in ("pw", "conv", "fc"):
            assert kernel_precision(member.get_layer(other)) == b, (other, b)
        # depthwise kernels and the activation they read: depthwise_bits (8) or more
        assert kernel_precision(member.get_layer("dw")) == max(b, 8)
        assert activation_precision(member.get_layer("stem_relu6")) == max(b, 8)
        assert activation_precision(member.get_layer("dw_relu")) == b


def test_policy_fixes_precision_in_every_member_by_name_pattern():
    model = build("handmade")
    policy = {"stem_conv": 32, "logits": 8, "d*": 4, "pw_relu": 2, "fc": None}
    converted = quantize_model(model, BITS, policy=policy)
    ensemble = quantens.QuantEnsemble(converted, BITS)
    x = inputs_for(model, n=2)
    for b in BITS:
        member = ensemble.member(b)
        assert kernel_precision(member.get_layer("stem_conv")) == 32
        assert kernel_precision(member.get_layer("logits")) == 8
        assert kernel_precision(member.get_layer("dw")) == 4
        assert activation_precision(member.get_layer("dw_relu")) == 4  # "d*" matches it too
        assert activation_precision(member.get_layer("pw_relu")) == 2
        assert kernel_precision(member.get_layer("fc")) == b
        assert kernel_precision(member.get_layer("pw")) == b
        np.testing.assert_allclose(member(x).numpy(), run(converted, x, b), atol=1e-5)
    # a fixed 8-bit dense is on the 8-bit grid even inside the 1-bit member (narrow by
    # default, DoReFa when asked)
    dorefa = quantize_model(model, BITS, policy=policy, weight_quantization="dorefa")
    for model_, expected in ((converted, NarrowRangeWeights(8)),
                             (dorefa, lq.quantizers.DoReFa(k_bit=8, mode="weights"))):
        with quantens.bits(1):
            logits = model_.get_layer("logits")
            kernel = logits.kernel.latent_variable.numpy()
            np.testing.assert_allclose(logits.kernel_quantizer(kernel), expected(kernel),
                                       atol=1e-6)


def test_policy_callable_and_its_errors():
    model = build("handmade")
    seen = []

    def policy(layer):
        seen.append(layer.name)
        return 2 if isinstance(layer, L.DepthwiseConv2D) else None

    converted = quantize_model(model, BITS, policy=policy)
    assert "pw_relu" in seen and "stem_relu6" in seen and "add" not in seen
    member = quantens.QuantEnsemble(converted, BITS).member(8)
    assert kernel_precision(member.get_layer("dw")) == 2
    assert kernel_precision(member.get_layer("stem_conv")) == 8  # the default is replaced
    with pytest.raises(ValueError, match="policy pattern 'stem_cnv' matches no layer"):
        quantize_model(model, BITS, policy={"stem_cnv": 32})
    with pytest.raises(ValueError, match="policy for pattern 'dw'.*bit-widths range"):
        quantize_model(model, BITS, policy={"dw": 64})
    with pytest.raises(ValueError, match="policy for layer 'stem_conv'"):
        quantize_model(model, BITS, policy=lambda layer: "x")


# -------------------------------------------------------------------------- errors


class Subclassed(tf.keras.Model):
    def __init__(self):
        super().__init__(name="my_subclassed")
        self.dense = L.Dense(3)

    def call(self, x):
        return self.dense(x)


def shared_layer_model():
    inputs = tf.keras.Input((4,))
    dense = L.Dense(4, name="shared_dense")
    return tf.keras.Model(inputs, dense(dense(inputs)))


def lstm_model():
    inputs = tf.keras.Input((5, 3))
    x = L.LSTM(4, name="my_lstm")(inputs)
    return tf.keras.Model(inputs, L.Dense(2)(x))


def transpose_model():
    inputs = tf.keras.Input((4, 4, 3))
    return tf.keras.Model(inputs, L.Conv2DTranspose(2, 3, name="up")(inputs))


def nested_subclassed_model():
    inputs = tf.keras.Input((4,))
    return tf.keras.Model(inputs, Subclassed()(inputs))


def already_quantized_model():
    inputs = tf.keras.Input((4,))
    return tf.keras.Model(inputs, quantens.QuantDense(2, name="qd")(inputs))


@pytest.mark.parametrize("make, pattern", [
    (lambda: Subclassed(), "'my_subclassed' \\(Subclassed\\) is a subclassed.*functional or "
                           "Sequential"),
    (shared_layer_model, "'shared_dense' \\(Dense\\) is called more than once"),
    (lstm_model, "'my_lstm' \\(LSTM\\) is not supported.*converts Conv2D"),
    (transpose_model, "'up' \\(Conv2DTranspose\\) has weights and is not supported"),
    (nested_subclassed_model, "'my_subclassed' \\(Subclassed\\) is a subclassed"),
    (already_quantized_model, "'qd' \\(QuantDense\\) is already quantized"),
])
def test_unsupported_models_and_layers_are_one_clear_value_error(make, pattern):
    model = make()
    if not model.built:
        model(np.zeros((1, 4), "float32"))
    with pytest.raises(ValueError, match=pattern) as error:
        quantize_model(model, BITS)
    assert "\n" not in str(error.value)


# ------------------------------------------------------- quantizer and layer additions


def test_range_round_activation_levels_and_straight_through_gradient():
    x = tf.constant([-1.0, 0.4, 1.6, 3.1, 5.9, 7.0])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = RangeRoundActivation(2, value_range=6.0)(x)
    np.testing.assert_allclose(y, [0.0, 0.0, 2.0, 4.0, 6.0, 6.0])
    np.testing.assert_array_equal(tape.gradient(y, x), [0, 1, 1, 1, 1, 0])
    y1 = RangeRoundActivation(1, value_range=6.0)(x)
    np.testing.assert_array_equal(y1, [0, 0, 0, 6, 6, 6])
    np.testing.assert_array_equal(RangeRoundActivation(32, 6.0, max_value=6.0)(x),
                                  tf.nn.relu6(x))


@pytest.mark.parametrize("quantizer", [
    quantens.WeightQuantizer("dorefa", bits=4),
    quantens.ActivationQuantizer(max_value=6.0, bits=2),
    quantens.ActivationQuantizer(value_range=2.0),
    RangeRoundActivation(3, value_range=6.0, max_value=6.0),
])
def test_new_quantizer_options_round_trip_and_fix_the_precision(quantizer):
    config = tf.keras.utils.serialize_keras_object(quantizer)
    clone = tf.keras.utils.deserialize_keras_object(config)
    assert clone.get_config() == quantizer.get_config()
    x = np.linspace(-2, 8, 41).astype("float32")
    for b in (32, 1):
        with quantens.bits(b):
            np.testing.assert_array_equal(clone(x), quantizer(x))
    fixed = getattr(quantizer, "bits", None)
    if fixed is not None:
        with quantens.bits(1):
            assert quantizer.precision == fixed
        assert quantizer.for_bits(32).precision == fixed


def test_defaults_keep_todays_configs():
    assert quantens.WeightQuantizer().get_config()["method"] == "dorefa"
    assert "bits" not in quantens.WeightQuantizer().get_config()
    assert set(quantens.QuantActivation().get_config()) >= {"method", "clip_threshold"}
    assert not {"bits", "value_range", "max_value"} & set(quantens.QuantActivation().get_config())
    with pytest.raises(ValueError, match="apply to the 'round' activation method"):
        quantens.ActivationQuantizer("det_sign", max_value=6.0)


def test_depthwise_convolutions_and_the_activation_they_read_keep_depthwise_bits():
    """The floor reaches the activation through padding (MobileNetV2's stride-2 blocks), not
    through an Add; depthwise_bits=None switches it off; the summary names what is held."""
    inputs = tf.keras.Input((8, 8, 4))
    x = L.ReLU(6.0, name="expand_relu")(inputs)
    x = L.ZeroPadding2D(((0, 1), (0, 1)), name="pad")(x)
    x = L.DepthwiseConv2D(3, strides=2, name="dw")(x)
    y = L.ReLU(name="dw_relu")(x)
    y = L.Conv2D(3, 1, name="pw")(y)
    z = L.Add(name="add")([x, L.Conv2D(4, 1, name="side")(y)])
    z = L.ReLU(name="add_relu")(z)
    z = L.SeparableConv2D(4, 3, name="sep")(L.Add(name="add2")([z, z]))
    model = tf.keras.Model(inputs, L.Dense(2, name="logits")(L.Flatten()(z)))
    bits = (32, 4, 1)
    converted = quantize_model(model, bits, policy={})
    for b in (4, 1):
        with quantens.bits(b):
            assert converted.get_layer("expand_relu").quantizer.precision == 8
            assert converted.get_layer("dw").depthwise_quantizer.precision == 8
            assert converted.get_layer("sep").depthwise_quantizer.precision == 8
            assert converted.get_layer("sep").pointwise_quantizer.precision == b
            for name in ("dw_relu", "add_relu"):  # read by no depthwise conv (an Add between)
                assert converted.get_layer(name).quantizer.precision == b, name
    lines = []
    quantens.QuantEnsemble(converted, bits).summary(print_fn=lines.append)
    assert "    1-bit member keeps 3 layers at 8 bits (expand_relu, dw, sep)" in lines
    plain = quantize_model(model, bits, policy={}, depthwise_bits=None)
    with quantens.bits(1):
        assert plain.get_layer("expand_relu").quantizer.precision == 1
        assert plain.get_layer("dw").depthwise_quantizer.precision == 1
    with pytest.raises(ValueError, match="depthwise_bits"):
        quantize_model(model, bits, depthwise_bits=0)


# ------------------------------------------------------------ the output: logits


def _features():
    """A tiny CNN's pooled features: (input, features tensor)."""
    tf.keras.utils.set_random_seed(0)
    inputs = tf.keras.Input((8, 8, 2))
    x = L.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    return inputs, L.GlobalAveragePooling2D(name="gap")(x)


def _softmax_model(where):
    """A model whose softmax is in `where`; the Dense 'd' computes the logits."""
    inputs, x = _features()
    if where == "layer":
        outputs = L.Softmax(name="probs")(L.Dense(5, name="d")(x))
    elif where == "activation_layer":
        outputs = L.Activation("softmax", name="probs")(L.Dense(5, name="d")(x))
    elif where == "fused":
        outputs = L.Dense(5, activation="softmax", name="d")(x)
    elif where == "nested":  # two levels deep: head -> inner -> Dense(softmax)
        inner = tf.keras.Sequential([L.Dense(5, activation="softmax", name="d")], name="inner")
        head = tf.keras.Sequential([L.Dropout(0.5, name="drop"), inner], name="head")
        head.build((None, 4))
        outputs = head(x)
    else:  # a TF op in the functional graph: a TFOpLambda layer
        outputs = tf.nn.softmax(L.Dense(5, name="d")(x), axis=-1)
    return tf.keras.Model(inputs, outputs, name=f"softmax_{where}")


def _pre_softmax_logits(model, x):
    """What the model feeds its softmax: its pooled features times Dense 'd''s weights."""
    features = tf.keras.Model(model.inputs, model.get_layer("gap").output)(x).numpy()
    dense = next(layer for layer in _all_layers(model) if layer.name == "d")
    kernel, bias = dense.get_weights()
    return features @ kernel + bias


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, tf.keras.Model):
            yield from _all_layers(layer)


@pytest.mark.parametrize("where, removed", [
    ("layer", "probs"), ("activation_layer", "probs"), ("fused", "d"), ("nested", "d"),
    ("tf_op", None),  # the TF op's layer: tf.nn.softmax, tf.nn.softmax_1, ...
])
def test_a_final_softmax_is_removed_wherever_it_is_computed(where, removed):
    import warnings

    model = _softmax_model(where)
    removed = removed or model.layers[-1].name
    assert removed.startswith("tf.nn.softmax") or where != "tf_op"
    x = inputs_for(model, n=3)
    probabilities = model(x).numpy()
    expected = _pre_softmax_logits(model, x)
    np.testing.assert_allclose(tf.nn.softmax(expected), probabilities, atol=1e-5)  # the reference
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        converted = quantize_model(model, (32, 2))
    notes = [w for w in caught if w.category is quantens.SoftmaxRemovedWarning]
    assert len(notes) == 1 and f"removed the final softmax ('{removed}')" in str(notes[0].message)
    np.testing.assert_allclose(run(converted, x, 32), expected, atol=1e-5)
    # logits_model: the same logits; the user's model is left as it was
    plain, names = quantens.logits_model(model)
    assert names == (removed,)
    np.testing.assert_allclose(plain(x).numpy(), expected, atol=1e-5)
    np.testing.assert_array_equal(model(x).numpy(), probabilities)
    assert quantens.logits_model(plain) == (plain, ())


def test_logits_seen_through_linear_layers_are_kept_as_they_are():
    inputs, x = _features()
    a, b = L.Dense(5, name="a")(x), L.Dense(5, name="b")(x)
    summed = L.Dropout(0.1, name="drop")(L.Add(name="add")([a, b])) / 2.0  # a temperature
    conv = L.Conv2D(5, 1, name="conv_logits")(L.Reshape((1, 1, 4), name="to_map")(x))
    head = tf.keras.Sequential([L.Flatten(name="flat")], name="head")  # a nested model's output
    model = tf.keras.Model(inputs, [summed, head(conv)], name="two_heads")
    assert quantens.logits_model(model) == (model, ())
    with pytest.raises(ConfigError, match="has 1 input and 2 outputs"):  # cannot be trained
        quantize_model(model, (32, 2), policy={})
    x = inputs_for(model, n=2)
    for i, output in enumerate(model.outputs):  # each head alone converts as it is
        head_model = tf.keras.Model(inputs, output, name=f"head_{i}")
        assert quantens.logits_model(head_model) == (head_model, ())
        converted = quantize_model(head_model, (32, 2), policy={})
        with quantens.bits(32):
            np.testing.assert_allclose(converted(x), head_model(x), atol=1e-5)


def _ends_in(kind):
    inputs, x = _features()
    logits = L.Dense(5, name="d")(x)
    if kind == "fused_sigmoid":
        outputs = L.Dense(5, activation="sigmoid", name="out")(x)
    elif kind == "sigmoid_layer":
        outputs = L.Activation("sigmoid", name="out")(logits)
    elif kind == "relu":
        outputs = L.ReLU(name="out")(logits)
    elif kind == "lambda":
        outputs = L.Lambda(lambda t: t * 2.0, name="out")(logits)
    elif kind == "tf_op":
        outputs = tf.math.sigmoid(logits, name="out")
    else:  # a softmax that is not the last step: pooled after it
        probs = L.Conv2D(5, 1, activation="softmax", name="out")(L.Reshape((1, 1, 4))(x))
        outputs = L.GlobalAveragePooling2D(name="pool")(probs)
    return tf.keras.Model(inputs, outputs, name=f"ends_in_{kind}")


@pytest.mark.parametrize("kind, match", [
    ("fused_sigmoid", r"'out' \(Dense with activation='sigmoid'\)"),
    ("sigmoid_layer", r"'out' \(Activation 'sigmoid'\)"),
    ("relu", r"'out' \(ReLU\)"),
    ("lambda", r"'out' \(Lambda\)"),
    ("tf_op", r"\(the TF op tf\.math\.sigmoid\)"),
    ("softmax_then_pooling", r"the softmax of 'out' .* is not its last step \('pool'"),
])
def test_an_output_that_is_not_logits_is_one_config_error(kind, match):
    from quantens.errors import ConfigError

    model = _ends_in(kind)
    for convert in (lambda: quantize_model(model, (32, 2)), lambda: quantens.logits_model(model)):
        with pytest.raises(ConfigError, match=match) as error:
            convert()
        message = str(error.value)
        assert "\n" not in message and message.startswith(f"model 'ends_in_{kind}'")
        assert "end the model in a layer without activation" in message


def test_misused_arguments_are_typed_one_line_errors():
    from quantens.errors import ConfigError, UsageError

    model = build("sequential")
    cases = [
        (lambda: quantize_model(model, bit_widths=None), UsageError,
         r"quantize_model: bit_widths must list the members' bit-widths, distinct integers "
         r"from 1 to 32, e\.g\. \(32, 8, 4, 2, 1\); got None"),
        (lambda: quantize_model(model, (32, 64)), UsageError,
         r"quantize_model: bit_widths \(32, 64\): invalid bit-width 64"),
        (lambda: quantize_model("model.keras", BITS), UsageError,
         r"quantize_model needs a tf.keras functional or Sequential model, got builtins\.str"),
        (lambda: quantize_model(Subclassed(), BITS), ConfigError, r"is a subclassed"),
        (lambda: quantize_model(model, BITS, bits=4), UsageError,
         r"unknown quantizer option 'bits'"),
        (lambda: quantize_model(model, BITS, learn_ranges="no"), UsageError,
         r"learn_ranges must be True or False, got 'no'"),
        (lambda: quantize_model(model, BITS, weight_quantization="sign"), UsageError,
         r"unknown weight_quantization 'sign'"),
        (lambda: quantize_model(model, BITS, policy=[("c1", 8)]), UsageError,
         r"policy must map layer-name patterns"),
    ]
    for call, kind, match in cases:
        with pytest.raises(kind, match=match) as error:
            call()
        assert "\n" not in str(error.value)


def test_a_model_with_nothing_to_quantize_is_a_config_error():
    """Every member would compute the same: nothing varies with the bit-width."""
    from quantens.errors import ConfigError

    inputs = tf.keras.Input((4,))
    dense_only = tf.keras.Model(inputs, L.Dense(3, name="logits")(inputs), name="dense_only")
    bn_only = tf.keras.Model(inputs, L.BatchNormalization(name="bn")(inputs), name="bn_only")
    cases = [
        (dense_only, {}, r"'dense_only' has nothing to quantize: its members 32, 2 would all "
                         r"compute the same, because the policy fixes the precision of every "
                         r"layer it could quantize \(logits;.*policy=\{\} fixes nothing"),
        (dense_only, {"policy": {}, "weight_quantization": "identity"},
         r"weight_quantization='identity' keeps every kernel full precision"),
        # the layer kinds of quantens.registry, in the order registered
        (bn_only, {}, r"'bn_only' has nothing to quantize.*no Conv2D, DepthwiseConv2D, "
                      r"SeparableConv2D, Dense or Conv1D layer and no ReLU-like activation"),
    ]
    for model, kwargs, match in cases:
        with pytest.raises(ConfigError, match=match) as error:
            quantize_model(model, (32, 2), **kwargs)
        assert "\n" not in str(error.value)
    assert quantize_model(dense_only, (32, 2), policy={}).get_layer("logits")  # it varies
    assert quantize_model(dense_only, (4,))  # one member: nothing to compare
