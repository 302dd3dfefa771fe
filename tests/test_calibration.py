"""Per-member clip values (`ClipActivation`) and `quantens.calibrate`."""

import numpy as np
import pytest

import quantens  # noqa: F401  (tf-keras before TensorFlow)

import tensorflow as tf  # isort: skip

from quantens.calibration import choose_clip
from quantens.errors import ConfigError, DataError, UsageError
from quantens.quantizers import ClipActivation, PACTActivation

pytestmark = pytest.mark.trains  # trains or traces whole models: not in `make test-fast`

L = tf.keras.layers


# ------------------------------------------------------------------ ClipActivation


def test_each_member_has_its_own_clip_value_and_the_32_bit_member_is_the_float_activation():
    q = ClipActivation((32, 8, 2, 1), clip={8: 6.0, 2: 3.0, 1: 0.5}, max_value=6.0)
    x = np.array([-1.0, 0.3, 1.2, 2.6, 7.0], "float32")
    np.testing.assert_array_equal(q(x), np.clip(x, 0, 6))  # outside a scope: 32 bits
    with quantens.bits(2):  # steps of 1 on [0, 3]
        np.testing.assert_allclose(q(x), [0.0, 0.0, 1.0, 3.0, 3.0])
    with quantens.bits(1):  # {0, 0.5}, threshold 0.25
        np.testing.assert_allclose(q(x), [0.0, 0.5, 0.5, 0.5, 0.5])
    assert sorted(w.name.split("/")[-1] for w in q.weights) == ["alpha_1:0", "alpha_2:0", "alpha_8:0"]
    assert not q.trainable_weights  # set by calibration, not trained
    assert q.for_bits(2).value_range == 3.0 and q.for_bits(32).max_value == 6.0


def test_default_clip_values_keep_a_cap_from_4_bits_up_and_give_low_bits_their_own():
    relu6 = ClipActivation((32, 8, 4, 3, 2, 1), max_value=6.0)
    assert relu6.clip == {"8": 6.0, "4": 6.0, "3": 4.0, "2": 2.0, "1": 1.0}
    assert ClipActivation((32, 8, 1), max_value=0.5).clip == {"8": 0.5, "1": 0.5}
    assert ClipActivation((32, 8), clip=2.5).clip == {"8": 2.5}
    with pytest.raises(ValueError, match=r"clip values for \[3\] bits: not a member"):
        ClipActivation((32, 8), clip={3: 1.0})
    with pytest.raises(ValueError, match="clip value of the 8-bit member must be a finite number > 0"):
        ClipActivation((32, 8), clip={8: 0.0})


def test_a_learned_clip_value_of_one_member_moves_only_through_that_members_loss():
    q = ClipActivation((32, 4, 2), clip=1.0, learned=True)
    x = tf.constant([0.2, 0.9, 1.5, 3.0])
    with tf.GradientTape(persistent=True) as tape:
        with quantens.bits(2):
            loss_2 = tf.reduce_sum(q(x))
    grads = tape.gradient(loss_2, [q.alphas["4"], q.alphas["2"]])
    assert grads[0] is None  # member 4's range gets nothing from member 2's loss
    assert float(grads[1]) == 2.0  # PACT: dy/dα = 1 for each x >= α (1.5 and 3.0)
    assert len(q.trainable_weights) == 2


def test_clip_activation_round_trips_through_its_config_and_pact_is_a_learned_one():
    q = ClipActivation((32, 8, 1), clip={8: 4.0}, max_value=6.0, learned=True)
    clone = tf.keras.utils.deserialize_keras_object(tf.keras.utils.serialize_keras_object(q))
    assert clone.get_config() == q.get_config()
    assert clone.clip == {"8": 4.0, "1": 1.0} and clone.learned
    pact = PACTActivation((32, 4), init=2.0)
    assert pact.learned and pact.clip == {"4": 2.0}
    assert set(pact.get_config()) >= {"bit_widths", "init"} and "clip" not in pact.get_config()


# ------------------------------------------------------------------- choose_clip


@pytest.mark.parametrize("bits", [1, 2, 3])
def test_the_least_squares_clip_value_of_uniform_inputs_is_the_hand_computed_one(bits):
    """On U[0, 1] with n = 2^k - 1 steps on [0, α]: rounding error α (α/n)² / 12 inside,
    (1 - α)³ / 3 clipped; the derivative vanishes at α = 2n / (2n + 1)."""
    n = 2**bits - 1
    x = np.random.default_rng(bits).uniform(0.0, 1.0, 400_000)
    assert choose_clip(x, bits) == pytest.approx(2 * n / (2 * n + 1), abs=0.01)


def test_percentile_clip_values_caps_and_dead_activations():
    x = np.concatenate([-np.ones(500), np.arange(1, 10001, dtype=float)])  # 1 ... 10000
    assert choose_clip(x, 8, method="percentile", percentile=99.0) == pytest.approx(9900.01)
    # the documented default: the 99.99th percentile of the positive values (linear
    # interpolation between order statistics 9999 and 10000 of 1 ... 10000)
    assert choose_clip(x, 8, method="percentile") == pytest.approx(9999.0001)
    assert choose_clip(x, 8, cap=6.0) == 6.0  # an 8-bit grid wants the whole range, up to the cap
    assert choose_clip(-np.ones(10), 4) is None  # nothing positive: keep what it has
    with pytest.raises(ValueError, match="unknown calibration method 'max'"):
        choose_clip(x, 4, method="max")


# -------------------------------------------------------------------- calibrate


def _act_model():
    inputs = tf.keras.Input((16,))
    x = L.ReLU(name="act")(inputs)
    outputs = L.Dense(3, name="logits")(x)
    return tf.keras.Model(inputs, outputs)


def test_calibrate_sets_each_members_clip_from_data_and_leaves_32_bits_alone():
    bits = (32, 8, 2, 1)
    ensemble = quantens.QuantEnsemble(quantens.quantize_model(_act_model(), bits), bits)
    x = np.random.default_rng(0).uniform(0.0, 1.0, (4096, 16)).astype("float32")
    before = ensemble.member(32).predict(x[:64], verbose=0)
    clips = quantens.calibrate(ensemble, x, max_examples=4096)
    # the activation reads the inputs: U[0, 1], so each member's α is 2n / (2n + 1)
    for b, n in ((8, 255), (2, 3), (1, 1)):
        assert clips[b]["act"] == pytest.approx(2 * n / (2 * n + 1), abs=0.01), b
        alpha = ensemble.model.get_layer("act").quantizer.alphas[str(b)]
        assert float(alpha.numpy()) == pytest.approx(clips[b]["act"])
    assert 32 not in clips
    np.testing.assert_array_equal(ensemble.member(32).predict(x[:64], verbose=0), before)
    assert ensemble.member(1).get_layer("act").activation.value_range == pytest.approx(
        clips[1]["act"])


def test_calibrate_re_estimates_each_members_bn_statistics_from_its_own_inputs():
    bits = (32, 4)
    inputs = tf.keras.Input((6, 6, 2))
    x = L.Conv2D(5, 3, use_bias=False, name="conv")(inputs)
    x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU(name="relu")(x)
    model = tf.keras.Model(inputs, L.Dense(3, name="logits")(L.Flatten()(x)))
    converted = quantens.quantize_model(model, bits, policy={})
    ensemble = quantens.QuantEnsemble(converted, bits)
    data = np.random.default_rng(1).normal(size=(300, 6, 6, 2)).astype("float32")
    bn = converted.get_layer("bn")
    before_32 = bn.branch(32).get_weights()
    quantens.calibrate(ensemble, data, batch_size=64)
    # by hand: the conv's output over all 300 inputs with member 4's kernel and with the
    # float kernel; member 4 gets the original's statistics (mean 0, variance 1 here)
    # moved by the difference its quantized kernel makes
    conv = converted.get_layer("conv")
    kernel = conv.kernel_quantizer.for_bits(4)(conv.kernel).numpy()
    out_4 = tf.nn.conv2d(data, kernel, 1, "VALID").numpy().reshape(-1, 5).astype("float64")
    out_32 = tf.nn.conv2d(data, conv.kernel, 1, "VALID").numpy().reshape(-1, 5)
    branch = bn.branch(4)
    np.testing.assert_allclose(branch.moving_mean.numpy(), before_32[2] + out_4.mean(0)
                               - out_32.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(branch.moving_variance.numpy(),
                               before_32[3] * out_4.var(0) / out_32.var(0), rtol=1e-4)
    assert not np.allclose(out_4.var(0), out_32.var(0))  # the 4-bit kernel changed something
    for got, want in zip(bn.branch(32).get_weights(), before_32, strict=True):
        np.testing.assert_array_equal(got, want)  # the 32-bit member's BN is the original's


def test_calibrate_refuses_bad_input_with_one_clear_line():
    bits = (32, 2)
    ensemble = quantens.QuantEnsemble(quantens.quantize_model(_act_model(), bits), bits)
    with pytest.raises(ValueError, match="calibration data is empty"):
        quantens.calibrate(ensemble, np.zeros((0, 16), "float32"))
    with pytest.raises(ValueError, match="unknown calibration method 'minmax'"):
        quantens.calibrate(ensemble, np.zeros((4, 16), "float32"), method="minmax")
    with pytest.raises(ValueError, match=r"\[4\] bits are not members"):
        quantens.calibrate(ensemble, np.zeros((4, 16), "float32"), bit_widths=(4,))
    with pytest.raises(UsageError, match="calibration data must be an array"):
        quantens.calibrate(ensemble, 3.0)
    with pytest.raises(ValueError, match=r"inputs of shape \(8,\), the model takes \(16,\)"):
        quantens.calibrate(ensemble, np.zeros((4, 8), "float32"))


# ------------------------------------------ converted trained float models, before training

AGREEMENT_8_BITS = 0.99
AGREEMENT_4_BITS = 0.95
FLOAT_EPOCHS = 8


def plain_cnn():
    inputs = tf.keras.Input((8, 8, 1))
    x = L.Conv2D(16, 3, padding="same", use_bias=False, name="stem")(inputs)
    x = L.BatchNormalization(momentum=0.9, name="stem_bn")(x)
    x = L.ReLU(name="stem_relu")(x)
    x = L.Conv2D(32, 3, strides=2, padding="same", use_bias=False, name="conv")(x)
    x = L.BatchNormalization(momentum=0.9, name="conv_bn")(x)
    x = L.ReLU(name="conv_relu")(x)
    x = L.Conv2D(32, 3, padding="same", activation="relu", name="conv2")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return tf.keras.Model(inputs, L.Dense(10, name="logits")(x), name="plain_cnn")


@pytest.fixture(scope="module")
def trained_floats(digits_arrays):
    """{name: (float model, x_train, x_test, y_test)}: trained briefly as float models."""
    from test_export_converted import mobilenet_v2_shaped, upsample

    x_train, y_train, x_test, y_test = digits_arrays
    out = {}
    for name, build, size in (("cnn", plain_cnn, 8), ("mnv2", mobilenet_v2_shaped, 16)):
        tf.keras.utils.set_random_seed(0)
        model = build()
        xtr, xte = (x_train, x_test) if size == 8 else (upsample(x_train), upsample(x_test))
        model.compile(optimizer=tf.keras.optimizers.Adam(3e-3),
                      loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(xtr, y_train, epochs=FLOAT_EPOCHS, batch_size=32, verbose=0)
        out[name] = (model, xtr, y_train, xte, y_test)
    return out


def _labels(model, x):
    return np.argmax(model.predict(x, batch_size=256, verbose=0), -1)


@pytest.mark.parametrize("name", ["cnn", "mnv2"])
def test_a_converted_trained_model_agrees_with_the_original_after_calibration(trained_floats,
                                                                              name):
    """No training: quantize_model + calibrate on 512 training images; held-out agreement."""
    model, x_train, _, x_test, y_test = trained_floats[name]
    bits = (32, 8, 4, 2, 1)
    ensemble = quantens.QuantEnsemble(quantens.quantize_model(model, bits), bits)
    quantens.calibrate(ensemble, x_train)
    reference = _labels(model, x_test)
    assert np.mean(reference == y_test) > 0.85  # the float model learned digits
    np.testing.assert_allclose(ensemble.member(32).predict(x_test, verbose=0),
                               model.predict(x_test, verbose=0), atol=1e-4)
    agreement = {b: float(np.mean(_labels(ensemble.member(b), x_test) == reference))
                 for b in (8, 4)}
    assert agreement[8] >= AGREEMENT_8_BITS, agreement
    assert agreement[4] >= AGREEMENT_4_BITS, agreement


def test_the_float_original_as_teacher_gives_the_hand_computed_kd_term(trained_floats):
    from quantens.distillation import Distillation

    model, x_train, y_train, _, _ = trained_floats["cnn"]
    bits, temperature = (32, 4, 1), 4.0
    ensemble = quantens.QuantEnsemble(quantens.quantize_model(model, bits), bits)
    ensemble.set_distillation(Distillation(bits, "simple", teacher=model,
                                           temperature=temperature, weight=0.5))
    x, y = x_train[:32], y_train[:32]
    member_logits = ensemble.member_logits(x, training=False)
    total, losses = ensemble.compute_ensemble_loss(x, y, member_logits, training=False)
    # by hand: 0.5 * T^2 * KL(softmax(original / T) || softmax(member / T)), batch mean, summed
    def log_softmax(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    target = log_softmax(model.predict(x, verbose=0).astype("float64") / temperature)
    hand = sum(0.5 * temperature**2 * np.mean(np.sum(np.exp(target) * (
        target - log_softmax(member_logits[b].numpy().astype("float64") / temperature)), -1))
        for b in bits)
    kd = float(total) - sum(float(v) for v in losses.values())
    assert kd == pytest.approx(hand, rel=1e-4)
    assert hand > 0.01  # the low-bit members differ from the original: a real term


def test_a_converted_model_fine_tuned_from_the_float_original_trains_without_nan(
        trained_floats):
    """The MobileNetV2-shaped model, calibrated, then 2 epochs with the original as teacher:
    every member's loss stays finite (the divergence guard raises otherwise) and the 2- and
    1-bit members learn."""
    from test_export_converted import upsample  # noqa: F401  (the fixture's size)

    from quantens.distillation import Distillation
    from quantens.results import DivergenceGuard

    model, x_train, y_train, x_test, y_test = trained_floats["mnv2"]
    bits = (32, 8, 4, 2, 1)
    ensemble = quantens.QuantEnsemble(quantens.quantize_model(model, bits), bits)
    quantens.calibrate(ensemble, x_train)
    ensemble.set_distillation(Distillation(bits, "simple", teacher=model))
    ensemble.compile(optimizer=tf.keras.optimizers.Adam(1e-3))
    before = ensemble.evaluate(x_test, y_test, verbose=0, return_dict=True)
    history = ensemble.fit(x_train, y_train, epochs=2, batch_size=32, verbose=0,
                           callbacks=[DivergenceGuard()])
    for b in bits:
        assert np.isfinite(history.history[f"loss_{b}"]).all(), b
    after = ensemble.evaluate(x_test, y_test, verbose=0, return_dict=True)
    for b in (2, 1):
        assert after[f"accuracy_{b}"] > before[f"accuracy_{b}"], (b, before, after)


def test_calibrated_clip_values_survive_save_and_load_of_the_ensemble(tmp_path):
    bits = (32, 4, 1)
    ensemble = quantens.QuantEnsemble(quantens.quantize_model(_act_model(), bits), bits)
    x = np.random.default_rng(2).uniform(0.0, 3.0, (256, 16)).astype("float32")
    clips = quantens.calibrate(ensemble, x)
    ensemble.compile(optimizer="adam")
    ensemble.save(str(tmp_path / "run.keras"))
    loaded = tf.keras.models.load_model(str(tmp_path / "run.keras"))
    act = loaded.model.get_layer("act")
    assert isinstance(act.quantizer, ClipActivation) and act.quantizer.learned
    for b in (4, 1):
        assert float(act.quantizer.alphas[str(b)].numpy()) == pytest.approx(clips[b]["act"])
        np.testing.assert_array_equal(loaded.member(b).predict(x[:8], verbose=0),
                                      ensemble.member(b).predict(x[:8], verbose=0))


def test_calibrate_without_batch_norm_leaves_every_bn_statistic_as_it_was():
    bits = (32, 4)
    inputs = tf.keras.Input((6, 6, 2))
    x = L.Conv2D(5, 3, name="conv")(inputs)
    x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU(name="relu")(x)
    model = tf.keras.Model(inputs, L.Dense(3, name="logits")(L.Flatten()(x)))
    for share in (False, True):
        converted = quantens.quantize_model(model, bits, share_bn=share)
        before = converted.get_layer("bn").get_weights()
        data = np.random.default_rng(3).normal(2.0, 3.0, size=(64, 6, 6, 2)).astype("float32")
        quantens.calibrate(quantens.QuantEnsemble(converted, bits), data,
                           batch_norm=share)  # a shared BN is never re-estimated
        for got, want in zip(converted.get_layer("bn").get_weights(), before, strict=True):
            np.testing.assert_array_equal(got, want)


def test_calibrate_refuses_misuse_with_a_typed_error_naming_the_argument():
    bits = (32, 2)
    ensemble = quantens.QuantEnsemble(quantens.quantize_model(_act_model(), bits), bits)
    x = np.zeros((4, 16), "float32")
    cases = [
        ((np.zeros(3), x), {}, UsageError,
         ["calibrate: ensemble must be a QuantEnsemble", "got ndarray"]),
        ((ensemble.model, x), {}, UsageError,
         ["calibrate: ensemble is a Functional, not a QuantEnsemble: pass bit_widths"]),
        ((ensemble.model, x), {"bit_widths": (4,)}, ConfigError,
         ["calibrate: bit_widths 4 do not fit the model", "(no 4)"]),
        ((ensemble, x), {"bit_widths": (4,)}, UsageError,
         ["calibrate: bit_widths: [4] bits are not members (32 2)"]),
        ((ensemble, x), {"bit_widths": ()}, UsageError,
         ["calibrate: bit_widths ()", "at least one bit-width"]),
        ((ensemble, 3.0), {"method": "minmax"}, UsageError,  # before the data is read
         ["calibrate: unknown calibration method 'minmax': choose one of mse, percentile"]),
        ((ensemble, x), {"max_examples": 0}, UsageError,
         ["calibrate: max_examples must be a whole number >= 1, got 0"]),
        ((ensemble, x), {"batch_size": 0}, UsageError,
         ["calibrate: batch_size must be a whole number >= 1, got 0"]),
        ((ensemble, x), {"batch_size": 2.5}, UsageError,
         ["calibrate: batch_size must be a whole number >= 1, got 2.5"]),
        ((ensemble, np.zeros((0, 16), "float32")), {}, DataError,
         ["calibration data is empty"]),
        ((ensemble, 3.0), {}, UsageError, ["calibration data must be an array", "got float"]),
    ]
    for args, kwargs, kind, phrases in cases:
        with pytest.raises(kind) as error:
            quantens.calibrate(*args, **kwargs)
        message = str(error.value)
        assert type(error.value) is kind and "\n" not in message, message
        assert all(p in message for p in phrases), (message, phrases)
    # the functional model with its members named works as the ensemble does
    assert set(quantens.calibrate(ensemble.model, x + 1.0, bit_widths=(2,))) == {2}
