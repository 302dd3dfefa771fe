"""Mixed members: a bit-width per layer (`QuantEnsemble.member(policy)`, `quantens.bits(policy)`),
the graph rules of `quantens.bits.mix_bits`, and BN statistics re-estimated for a mix
(`quantens.bn_statistics.reestimate_batch_norm`)."""

import warnings

import numpy as np
import pytest
import tensorflow as tf

import quantens
from quantens.bits import layer_bits, mix_bits
from quantens.bn_statistics import reestimate_batch_norm
from quantens.errors import DataError, UsageError

# ------------------------------------------------------------ a model small enough to do by hand


def _hand_model():
    """x -> QuantDense "first" -> SwitchableBN "bn" -> QuantDense "second": every weight set,
    each BN branch with statistics of its own, so a test can tell which branch runs."""
    inputs = tf.keras.Input((3,))
    h = quantens.QuantDense(4, name="first")(inputs)  # dorefa kernel, round inputs
    h = quantens.SwitchableBatchNormalization((32, 4, 1), name="bn")(h)
    outputs = quantens.QuantDense(2, name="second")(h)
    model = tf.keras.Model(inputs, outputs, name="hand")
    rng = np.random.default_rng(3)
    model.get_layer("first").set_weights([rng.normal(size=(3, 4)), rng.normal(size=4) * 0.1])
    model.get_layer("second").set_weights([rng.normal(size=(4, 2)), rng.normal(size=2) * 0.1])
    bn = model.get_layer("bn")
    for b in (32, 4, 1):
        gamma, beta = rng.uniform(0.5, 1.5, 4), rng.normal(size=4) * 0.2
        mean, variance = rng.normal(size=4) * 0.3, rng.uniform(0.5, 2.0, 4)
        bn.branch(b).set_weights([gamma, beta, mean, variance])
    return model


def _weights_by_hand(w, bits):
    """The kernel at `bits`: identity (32), sign (1, sign(0) = 1) or DoReFa's k-bit grid."""
    if bits == 32:
        return w
    if bits == 1:
        return np.where(w >= 0, 1.0, -1.0)
    t = np.tanh(w)
    t = t / np.abs(t).max() * 0.5 + 0.5
    levels = 2.0**bits - 1
    return 2 * np.round(t * levels) / levels - 1


def _inputs_by_hand(x, bits):
    """The `round` input quantizer at `bits`: relu at 32, else clip to [0, 1] on 2^k levels."""
    if bits == 32:
        return np.maximum(x, 0.0)
    levels = 2.0**bits - 1
    return np.round(np.clip(x, 0.0, 1.0) * levels) / levels


def _by_hand(model, x, first, second):
    """The hand model's output with "first" (and the BN it feeds) at `first` bits and
    "second" at `second` bits, in numpy (float64)."""
    w1, b1 = model.get_layer("first").get_weights()
    w2, b2 = model.get_layer("second").get_weights()
    gamma, beta, mean, variance = model.get_layer("bn").branch(first).get_weights()
    h = _inputs_by_hand(x, first) @ _weights_by_hand(w1, first) + b1
    h = (h - mean) / np.sqrt(variance + 1e-3) * gamma + beta  # Keras' default epsilon
    return _inputs_by_hand(h, second) @ _weights_by_hand(w2, second) + b2


def _ensemble(model):
    return quantens.QuantEnsemble(model, (32, 4, 1))


@pytest.mark.parametrize("first, second", [(4, 1), (1, 4), (32, 1), (4, 32)])
def test_each_layer_runs_its_own_bits_as_computed_by_hand(first, second):
    model = _hand_model()
    x = np.random.default_rng(0).normal(size=(16, 3)).astype("float32") * 0.8 + 0.3
    expected = _by_hand(model, x.astype(np.float64), first, second)
    policy = {"first": first, "second": second}
    with quantens.bits(policy):
        scoped = model(x).numpy()
    with pytest.warns(UserWarning):  # no data: the uniform members' statistics
        member = _ensemble(model).member(policy)
    np.testing.assert_allclose(scoped, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(member(x).numpy(), expected, rtol=1e-5, atol=1e-5)
    # the uniform member at `first` differs in "second" only: the mix changed what it named
    assert not np.allclose(_ensemble(model).member(first)(x), expected, atol=1e-3)


def test_the_bn_follows_the_layer_feeding_it_and_summary_shows_every_layers_bits():
    model = _hand_model()
    assert mix_bits(model, {"first": 4, "second": 1}) == {"first": 4, "bn": 4, "second": 1}
    member = _ensemble(model).member({"first": 4, "*": 1}, data=np.ones((8, 3), "float32"))
    lines = []
    member.summary(line_length=120, print_fn=lines.append)
    text = "\n".join(lines)
    assert 'Model: "hand_mixed_4_1bit"' in text
    for name, kind in (("first_4bit", "QuantDense"), ("bn_4bit", "BatchNormalization"),
                       ("second_1bit", "QuantDense")):
        assert f"{name} ({kind})" in text
    assert member.get_layer("second_1bit").kernel_quantizer.precision == 1
    assert member.get_layer("first_4bit").input_quantizer.precision == 4


def test_the_graph_rules_for_activation_quantizers_and_bns():
    inputs = tf.keras.Input((6, 6, 2))
    a = quantens.QuantConv2D(4, 3, padding="same", input_quantizer=None, name="a")(inputs)
    bn_a = quantens.SwitchableBatchNormalization((8, 2, 1), name="bn_a")(a)
    act = quantens.QuantActivation(name="act")(bn_a)  # feeds b and c: the highest of them
    b = quantens.QuantConv2D(4, 3, padding="same", input_quantizer=None, name="b")(act)
    c = quantens.QuantConv2D(4, 1, input_quantizer=None, name="c")(act)
    added = tf.keras.layers.Add(name="add")([b, c])
    bn_sum = quantens.SwitchableBatchNormalization((8, 2, 1), name="bn_sum")(added)
    fp = tf.keras.layers.Conv2D(4, 1, name="fp")(bn_sum)  # full precision: ends a walk
    bn_fp = quantens.SwitchableBatchNormalization((8, 2, 1), name="bn_fp")(fp)
    act_fp = quantens.QuantActivation(name="act_fp")(bn_fp)
    pooled = tf.keras.layers.GlobalAveragePooling2D(name="pool")(act_fp)
    outputs = quantens.QuantDense(3, input_quantizer=None, name="d")(pooled)
    model = tf.keras.Model(inputs, outputs)

    resolved = mix_bits(model, {"a": 8, "b": 1, "c": 2, "d": 1}, (8, 2, 1))
    assert resolved == {"a": 8, "bn_a": 8, "act": 2, "b": 1, "c": 2, "bn_sum": 2,
                        "bn_fp": 1, "act_fp": 1, "d": 1}
    # bn_fp: nothing switchable feeds it (a full-precision conv does): the layers it feeds
    assert mix_bits(model, {"d": 2, "*": 1})["bn_fp"] == 2
    # a callable policy, asked about the conv and dense layers
    named = []
    assert mix_bits(model, lambda layer: named.append(layer.name) or 2) == dict.fromkeys(
        resolved, 2)
    assert sorted(set(named)) == ["a", "b", "c", "d"]
    # in a scope, each layer asks for its own bits
    with quantens.bits({"a": 8, "b": 1, "c": 2, "d": 1}):
        assert {name: layer_bits(model.get_layer(name)) for name in resolved} == resolved
        with pytest.raises(UsageError, match="per-layer policy"):
            quantens.active_bits()
        with quantens.bits(2):
            assert quantens.active_bits() == 2
    assert quantens.active_bits() is None


@pytest.mark.parametrize("policy, error", [
    ({"first": 4}, "gives no bits to 1 layer (second)"),
    ({"first": 4, "secnd": 1, "*": 1}, "pattern 'secnd' matches no switchable conv or dense"),
    ({"*": 1, "first": 4}, "pattern 'first' decides no layer: the earlier pattern '*'"),
    ({"first": 2, "*": 1}, "'first': 2 bits is not a member; the members are 32 4 1"),
    ({"first": 0, "*": 1}, "invalid bit-width 0"),
    ({"first": "many", "*": 1}, "invalid bit-width 'many'"),
    ({"first": None, "*": 1}, "has no bits (None)"),
    ({1: 4, "*": 1}, "keys are layer names or fnmatch patterns"),
    ({"stem*": 4, "*": 1}, "matches no switchable conv or dense"),
    (lambda layer: 8, "gives layer 'first' 8 bits, not a member"),
])
def test_a_policy_that_does_not_fit_is_refused_in_one_line(policy, error):
    ensemble = _ensemble(_hand_model())
    with pytest.raises(UsageError) as raised:
        ensemble.member(policy)
    assert error in str(raised.value) and "\n" not in str(raised.value)


def test_member_with_an_int_is_unchanged_and_refuses_data():
    ensemble = _ensemble(_hand_model())
    assert ensemble.member(4).name == "hand_4bit"
    assert [layer.name for layer in ensemble.member(1).layers][1:] == ["first", "bn", "second"]
    with pytest.raises(ValueError, match="no member with 2 bits"):
        ensemble.member(2)
    with pytest.raises(UsageError, match="leave data out"):
        ensemble.member(4, data=np.ones((2, 3), "float32"))
    with pytest.raises(ValueError, match="no member with"):  # a list: neither bits nor a policy
        ensemble.member([4, 1])


def test_a_mix_without_data_warns_once_and_a_uniform_one_does_not():
    ensemble = _ensemble(_hand_model())
    with pytest.warns(UserWarning, match=r"costs accuracy: re-estimate them with "
                                         r"member\(policy, data="):
        ensemble.member({"first": 4, "*": 1})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ensemble.member({"*": 4})


# ----------------------------------------------------------------- BN re-estimation


def _dense_bn(momentum=0.99):
    inputs = tf.keras.Input((3,))
    hidden = tf.keras.layers.Dense(4, name="fc")(inputs)
    bn = tf.keras.layers.BatchNormalization(momentum=momentum, name="bn")(hidden)
    return tf.keras.Model(inputs, tf.keras.layers.Dense(2, name="out")(bn))


def test_reestimation_is_the_exact_mean_and_variance_over_every_batch_not_a_moving_average():
    model = _dense_bn()
    x = (np.random.default_rng(1).normal(size=(300, 3)) * [1, 5, 0.1] + 2).astype("float32")
    assert reestimate_batch_norm(model, (x, np.zeros(300)), batch_size=64) == 300  # 64 ... 44
    h = model.get_layer("fc")(x).numpy().astype(np.float64)
    bn = model.get_layer("bn")
    np.testing.assert_allclose(bn.moving_mean.numpy(), h.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), h.var(0), rtol=1e-5)
    # the same from a batched dataset of (x, y), and from the first 100 only
    other = _dense_bn()
    other.set_weights([w for w in model.get_weights()])
    dataset = tf.data.Dataset.from_tensor_slices((x, np.zeros(300))).batch(64)
    reestimate_batch_norm(other, dataset)
    np.testing.assert_allclose(other.get_layer("bn").moving_mean, bn.moving_mean, rtol=1e-6)
    assert reestimate_batch_norm(other, x, max_examples=100, batch_size=64) == 100
    np.testing.assert_allclose(other.get_layer("bn").moving_mean, h[:100].mean(0), rtol=1e-5,
                               atol=1e-5)


def test_reestimation_shows_progress_when_asked(capsys):
    reestimate_batch_norm(_dense_bn(), np.ones((40, 3), "float32"), batch_size=8, verbose=1)
    assert "5/5" in capsys.readouterr().out


@pytest.mark.parametrize("data, error, kind", [
    (np.full((4, 3), np.nan, "float32"), "non-finite values (NaN or inf)", DataError),
    (np.ones((4, 5), "float32"), "inputs of shape (5,), the model takes (3,)", DataError),
    (np.ones((0, 3), "float32"), "data is empty", DataError),
    (tf.data.Dataset.from_tensor_slices(np.ones((4, 3), "float32")), "dataset.batch(", UsageError),
    (None, "data is None", UsageError),
])
def test_reestimation_refuses_bad_data_and_changes_nothing(data, error, kind):
    ensemble = _ensemble(_hand_model())
    before = [w.numpy() for w in ensemble.weights]
    with pytest.raises(kind) as raised:
        reestimate_batch_norm(ensemble.member(4), data)
    assert error in str(raised.value) and "\n" not in str(raised.value)
    with pytest.raises(kind):
        ensemble.member({"first": 4, "*": 1}, data=data) if data is not None else \
            reestimate_batch_norm(ensemble.member(4), data)
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(before, ensemble.weights, strict=True))


def test_a_nan_half_way_leaves_the_model_as_it_was():
    model = _dense_bn()
    before = [w.numpy() for w in model.weights]
    x = np.ones((100, 3), "float32")
    x[90, 1] = np.inf
    with pytest.raises(DataError, match="batch 2"):
        reestimate_batch_norm(model, x, batch_size=32)
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(before, model.weights, strict=True))


# ------------------------------------------------------- a ResNetE ensemble (traces whole models)


@pytest.fixture(scope="module")
def resnet():
    from zoo import create_model

    bits = (32, 4, 1)
    ensemble = quantens.QuantEnsemble(create_model("digits_resnet_e", width=4, bit_widths=bits),
                                      bits)
    x = np.random.default_rng(0).normal(size=(96, 8, 8, 1)).astype("float32")
    return ensemble, x


@pytest.mark.trains
def test_a_mix_of_one_bit_width_equals_that_member(resnet):
    ensemble, x = resnet
    for b in ensemble.bit_widths:
        uniform = ensemble.member(b)(x).numpy()
        np.testing.assert_allclose(ensemble.member({"*": b})(x), uniform, atol=1e-6)
        with quantens.bits({"*": b}):
            np.testing.assert_allclose(ensemble.model(x), uniform, atol=1e-5)


@pytest.mark.trains
def test_a_mixed_member_with_data_leaves_the_uniform_members_and_the_ensemble_unchanged(
        resnet, tmp_path):
    ensemble, x = resnet
    before = {b: ensemble.member(b)(x).numpy() for b in ensemble.bit_widths}
    weights = [w.numpy() for w in ensemble.weights]
    policy = {"block[12]_conv": 4, "block[34]_conv": 32, "*": 1}
    with pytest.warns(UserWarning):
        as_trained = ensemble.member(policy)
    mixed = ensemble.member(policy, data=x, batch_size=32, verbose=0)
    for b in ensemble.bit_widths:
        np.testing.assert_allclose(ensemble.member(b)(x), before[b], atol=1e-6)
    assert all(np.array_equal(a, w.numpy())
               for a, w in zip(weights, ensemble.weights, strict=True))
    # its own statistics: re-estimated, unlike the mix as trained; the kernels are the same
    assert not np.allclose(mixed.get_layer("block1_bn_4bit").moving_mean,
                           as_trained.get_layer("block1_bn_4bit").moving_mean)
    np.testing.assert_array_equal(mixed.get_layer("block1_conv_4bit").kernel.latent_variable,
                                  ensemble.model.get_layer("block1_conv").kernel.latent_variable)
    assert mixed.get_layer("final_bn_1bit") is not None
    # and a .keras round trip keeps it
    path = str(tmp_path / "mixed.keras")
    mixed.save(path)
    loaded = tf.keras.models.load_model(path)
    np.testing.assert_allclose(loaded(x), mixed(x), atol=1e-6)
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in mixed.layers]


@pytest.mark.trains  # about 20 s: a pretrained model, the digits splits, 6 members traced
def test_mixes_of_2_and_1_bits_with_their_own_bn_statistics_match_the_1_bit_member(tfds_dir):
    """digits_w8: 3 random per-layer mixes of {2, 1} bits, BN statistics re-estimated from
    one pass over the training split, are each at least as accurate on the validation split
    as the uniform 1-bit member (the as-trained accuracies are printed)."""
    import quantens.data as qd
    import zoo

    def arrays(split):
        x, y = next(iter(qd.load("digits", split, batch_size=4096, data_dir=tfds_dir)))
        return x.numpy(), y.numpy()

    def accuracy(model):
        return float(np.mean(np.argmax(model(x_val, training=False), axis=1) == y_val))

    model = zoo.create_model("digits_resnet_e", weights="digits_w8")
    ensemble = quantens.QuantEnsemble(model, (32, 8, 4, 2, 1))
    (x_train, y_train), (x_val, y_val) = arrays("train"), arrays("validation")
    one_bit = accuracy(ensemble.member(1))
    convs = [layer.name for layer in model.layers if isinstance(layer, quantens.QuantConv2D)]
    rng = np.random.default_rng(0)
    print(f"uniform 1-bit member: {one_bit:.4f}")
    for _ in range(3):
        choice = rng.choice([2, 1], size=len(convs))
        while len(set(choice)) < 2:
            choice = rng.choice([2, 1], size=len(convs))
        policy = dict(zip(convs, map(int, choice), strict=True))
        with pytest.warns(UserWarning):
            as_trained = accuracy(ensemble.member(policy))
        own = accuracy(ensemble.member(policy, data=(x_train, y_train), verbose=0))
        print(f"mix {list(policy.values())}: as trained {as_trained:.4f}, "
              f"BN re-estimated {own:.4f}")
        assert own >= one_bit, (policy, own, one_bit)
