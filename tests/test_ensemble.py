import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from conftest import ROOT, run_script, tiny_model

import quantens

pytestmark = pytest.mark.trains  # trains or traces whole models: not in `make test-fast`

BITS = (32, 8, 4, 2, 1)


@pytest.fixture(scope="module")
def batch(digits_arrays):
    x, y, _, _ = digits_arrays
    return x[:32], y[:32]


def make_ensemble(bit_widths=BITS, optimizer=None, **kwargs):
    tf.keras.utils.set_random_seed(0)
    ensemble = quantens.QuantEnsemble(tiny_model(bit_widths, **kwargs), bit_widths)
    ensemble.compile(optimizer=optimizer or tf.keras.optimizers.SGD(0.1))
    return ensemble


def cross_entropy(logits, y):
    logits = logits - logits.max(1, keepdims=True)
    log_softmax = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    return -log_softmax[np.arange(len(y)), y].mean()


def trained(ensemble, batch, steps=5):
    x, y = batch
    for _ in range(steps):
        ensemble.train_on_batch(x, y)
    return ensemble


@pytest.fixture(scope="module")
def trained_ensemble(batch):
    """An ensemble after a few steps; tests must not train it further."""
    return trained(make_ensemble(), batch)


def test_members_differ_on_the_same_input(batch, trained_ensemble):
    ensemble = trained_ensemble
    logits = ensemble.member_logits(batch[0], training=False)
    for i, a in enumerate(BITS):
        for b in BITS[i + 1:]:
            assert np.abs(logits[a].numpy() - logits[b].numpy()).max() > 1e-3, (a, b)


def plain_network(model):
    """The same network with quantization removed: Keras Conv2D/BN/ReLU only."""

    def clone(layer):
        if isinstance(layer, quantens.QuantConv2D):
            config = layer.get_config()
            for key in ("kernel_quantizer", "input_quantizer", "pad_values"):
                config.pop(key)
            return tf.keras.Sequential(
                [tf.keras.layers.ReLU(), tf.keras.layers.Conv2D.from_config(config)],
                name=layer.name,
            )
        if isinstance(layer, quantens.SwitchableBatchNormalization):
            return tf.keras.layers.BatchNormalization(name=layer.name, **layer.bn_config)
        return layer.__class__.from_config(layer.get_config())

    plain = tf.keras.models.clone_model(model, clone_function=clone)
    for layer in model.layers:
        target = plain.get_layer(layer.name)
        if isinstance(layer, quantens.QuantConv2D):
            target.layers[1].set_weights([layer.kernel.latent_variable.numpy()])
        elif isinstance(layer, quantens.SwitchableBatchNormalization):
            target.set_weights(layer.branch(32).get_weights())
        else:
            target.set_weights(layer.get_weights())
    return plain


def test_member_32_equals_the_network_without_quantization(batch):
    ensemble = trained(make_ensemble(fp_downsample_sc=False), batch)
    x = batch[0]
    expected = plain_network(ensemble.model)(x, training=False).numpy()
    got = ensemble.member_logits(x, training=False)[32].numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert np.abs(ensemble.member_logits(x, training=False)[8].numpy() - expected).max() > 1e-3


def test_train_step_loss_is_the_sum_of_member_cross_entropies(batch):
    ensemble = make_ensemble()
    x, y = batch
    by_hand = {}
    for b in BITS:
        with quantens.bits(b):
            by_hand[b] = cross_entropy(ensemble.model(x, training=True).numpy(), y)
    logs = ensemble.train_on_batch(x, y, return_dict=True)
    assert logs["loss"] == pytest.approx(sum(by_hand.values()), abs=1e-5)
    for b in BITS:
        assert logs[f"loss_{b}"] == pytest.approx(by_hand[b], abs=1e-5)


def test_kernel_gradient_is_the_sum_of_member_gradients(batch):
    ensemble = make_ensemble()
    x, y = batch
    kernels = [w for w in ensemble.model.trainable_weights if "block" in w.name and "kernel" in w.name]
    with tf.GradientTape() as tape:
        total, _ = ensemble.compute_ensemble_loss(x, y, ensemble.member_logits(x, True), None)
    joint = tape.gradient(total, kernels)
    separate = []
    for b in BITS:
        with tf.GradientTape() as tape:
            with quantens.bits(b):
                logits = ensemble.model(x, training=True)
            loss = tf.reduce_mean(ensemble.member_loss_fn(y, logits))
        separate.append(tape.gradient(loss, kernels))
    for i, kernel_grad in enumerate(joint):
        summed = sum(g[i] for g in separate)
        np.testing.assert_allclose(kernel_grad, summed, atol=1e-5)
        assert np.abs(summed.numpy()).max() > 0


def test_member_models_equal_the_ensemble_members_without_stale_traces(batch, trained_ensemble):
    ensemble = trained_ensemble
    x = batch[0]
    expected = {b: v.numpy() for b, v in ensemble.member_logits(x, training=False).items()}
    members = {b: ensemble.member(b) for b in BITS}
    for b in BITS:
        np.testing.assert_allclose(members[b](x, training=False), expected[b], atol=1e-5)
    # predict traces a function per model: member 1 after member 4 is member 1
    out4 = members[4].predict(x, verbose=0)
    out1 = members[1].predict(x, verbose=0)
    np.testing.assert_allclose(out4, expected[4], atol=1e-5)
    np.testing.assert_allclose(out1, expected[1], atol=1e-5)
    # the ensemble's own predict runs the target member
    np.testing.assert_allclose(ensemble.predict(x, verbose=0), expected[1], atol=1e-5)
    with pytest.raises(ValueError, match="no member with 3 bits"):
        ensemble.member(3)


def test_member_is_a_plain_larq_model(trained_ensemble):
    member = trained_ensemble.member(1)
    import larq as lq

    convs = [layer for layer in member.layers if isinstance(layer, lq.layers.QuantConv2D)]
    assert convs and not any(isinstance(layer, quantens.QuantConv2D) for layer in member.layers)
    assert all(conv.kernel_quantizer.precision == 1 for conv in convs)


def test_evaluate_reports_metrics_per_member(batch, trained_ensemble):
    ensemble = trained_ensemble
    x, y = batch
    logs = ensemble.evaluate(x, y, return_dict=True, verbose=0)
    expected_names = {"loss"} | {f"loss_{b}" for b in BITS} | {f"accuracy_{b}" for b in BITS}
    assert set(logs) == expected_names
    logits = ensemble.member_logits(x, training=False)
    for b in BITS:
        accuracy = np.mean(np.argmax(logits[b].numpy(), 1) == y)
        assert logs[f"accuracy_{b}"] == pytest.approx(accuracy, abs=1e-6)


def test_weights_save_and_load_round_trip(batch, trained_ensemble, tmp_path):
    ensemble = trained_ensemble
    path = str(tmp_path / "ensemble.weights.h5")
    ensemble.save_weights(path)
    tf.keras.utils.set_random_seed(1)
    other = quantens.QuantEnsemble(tiny_model(BITS), BITS)
    other.load_weights(path)
    a = ensemble.member_logits(batch[0], training=False)
    b = other.member_logits(batch[0], training=False)
    for bits in BITS:
        np.testing.assert_array_equal(a[bits], b[bits])


def test_bad_target_bits_and_loss_weights_are_rejected():
    with pytest.raises(ValueError, match="target_bits 3 is not one of"):
        quantens.QuantEnsemble(tiny_model((8, 1)), (8, 1), target_bits=3)
    with pytest.raises(ValueError, match="not members"):
        quantens.QuantEnsemble(tiny_model((8, 1)), (8, 1), member_loss_weights={4: 1.0})


MIRRORED = textwrap.dedent(
    """
    import json, os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import quantens
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    def build():
        tf.keras.utils.set_random_seed(1)
        inputs = tf.keras.Input((6, 6, 2))
        x = quantens.QuantConv2D(4, 3, padding="same", input_quantizer=None)(inputs)
        x = quantens.QuantConv2D(4, 3, padding="same")(x)
        x = tf.keras.layers.Flatten()(x)
        outputs = quantens.QuantDense(5, input_quantizer=None)(x)
        return tf.keras.Model(inputs, outputs)

    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 6, 6, 2)).astype("float32")
    y = rng.integers(0, 5, size=16)

    def run(strategy):
        with strategy.scope():
            model = build()
            ensemble = quantens.QuantEnsemble(model, (32, 4, 1))
            ensemble.compile(optimizer=tf.keras.optimizers.SGD(0.5))
        initial = [w.numpy() for w in model.weights]
        ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
        logs = ensemble.fit(ds, epochs=1, verbose=0).history
        return initial, [w.numpy() for w in model.weights], logs["loss"][0]

    init1, one, loss1 = run(tf.distribute.OneDeviceStrategy("/cpu:0"))
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    init2, two, loss2 = run(mirrored)
    print(json.dumps({
        "replicas": mirrored.num_replicas_in_sync,
        "same_init": max(float(np.abs(a - b).max()) for a, b in zip(init1, init2)),
        "moved": max(float(np.abs(a - b).max()) for a, b in zip(init1, one)),
        "diff": max(float(np.abs(a - b).max()) for a, b in zip(one, two)),
        "loss": [loss1, loss2],
    }))
    """
)


def test_two_replica_mirrored_step_equals_one_device(tmp_path):
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED)
    result = run_script([str(script)], env={"PYTHONPATH": ROOT})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["replicas"] == 2
    assert report["same_init"] == 0
    assert report["moved"] > 1e-3
    assert report["diff"] < 1e-5
    assert report["loss"][0] == pytest.approx(report["loss"][1], abs=1e-5)


def test_importing_after_keras_3_fails_with_a_clear_message():
    code = "import tensorflow as tf; tf.keras.layers; import quantens"
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    result = subprocess.run(
        [sys.executable, "-c", code], env={**env, "TF_CPP_MIN_LOG_LEVEL": "2"},
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode != 0
    assert "TensorFlow was already imported with Keras 3" in result.stderr


def test_weight_decay_skips_quantized_kernels(batch):
    from larq.quantized_variable import QuantizedVariable

    x, y = batch
    ensemble = quantens.QuantEnsemble(tiny_model(BITS), BITS, weight_decay=0.01)
    decayed = ensemble.decayed_variables()
    names = [v.name for v in decayed]
    assert not any(isinstance(v, QuantizedVariable) for v in decayed)
    assert any("stem_conv" in n for n in names) and any("logits/kernel" in n for n in names)
    assert any("gamma" in n for n in names)
    assert not any("block1_conv" in n for n in names)
    logits = ensemble.member_logits(x, training=True)
    total, losses = ensemble.compute_ensemble_loss(x, y, logits)
    l2 = sum(float(np.sum(np.square(v.numpy()))) for v in decayed)
    assert float(total) == pytest.approx(sum(float(v) for v in losses.values()) + 0.005 * l2,
                                         rel=1e-5)


def test_member_leaves_the_larq_logger_as_it_found_it():
    import logging

    ensemble = quantens.QuantEnsemble(tiny_model(BITS), BITS)
    logger = logging.getLogger("larq.layers_base")
    before = logger.level
    try:
        for level in (logging.NOTSET, logging.DEBUG, logging.WARNING):
            logger.setLevel(level)
            ensemble.member(1)
            assert logger.level == level
    finally:
        logger.setLevel(before)


def test_keras_file_round_trip_evaluates_identically_and_keeps_training(tmp_path):
    tf.keras.utils.set_random_seed(0)
    bits = (32, 4, 1)
    ensemble = quantens.QuantEnsemble(tiny_model(bits), bits, target_bits=4, weight_decay=1e-4,
                                      member_loss_weights={1: 2.0})
    ensemble.compile(optimizer="adam")
    x = np.random.default_rng(0).normal(size=(32, 8, 8, 1)).astype("float32")
    y = np.arange(32) % 10
    ensemble.fit(x, y, epochs=1, batch_size=8, verbose=0)
    path = str(tmp_path / "run.keras")
    ensemble.save(path)
    loaded = tf.keras.models.load_model(path)
    assert isinstance(loaded, quantens.QuantEnsemble)
    assert (loaded.bit_widths, loaded.target_bits, loaded.weight_decay) == (bits, 4, 1e-4)
    assert loaded.member_loss_weights == {32: 1.0, 4: 1.0, 1: 2.0}
    for b in bits:
        with quantens.bits(b):
            np.testing.assert_allclose(loaded.model(x, training=False),
                                       ensemble.model(x, training=False), atol=1e-6)
    assert int(loaded.optimizer.iterations) == int(ensemble.optimizer.iterations) == 4
    before = loaded.evaluate(x, y, verbose=0, return_dict=True)["loss"]
    loaded.fit(x, y, epochs=3, batch_size=8, verbose=0)
    assert int(loaded.optimizer.iterations) == 16
    assert loaded.evaluate(x, y, verbose=0, return_dict=True)["loss"] < before
    # a full-model checkpoint is such a file too
    checkpoint = str(tmp_path / "checkpoint.keras")
    ensemble.fit(x, y, epochs=1, verbose=0,
                 callbacks=[tf.keras.callbacks.ModelCheckpoint(checkpoint)])
    assert isinstance(tf.keras.models.load_model(checkpoint), quantens.QuantEnsemble)


def test_other_whole_model_formats_and_distillation_are_clear_refusals(tmp_path):
    from quantens.distillation import Distillation

    ensemble = quantens.QuantEnsemble(tiny_model((32, 1)), (32, 1))
    with pytest.raises(ValueError, match="saved as a .keras file.*save_serving_model"):
        ensemble.save(str(tmp_path / "saved_model"))
    with pytest.raises(ValueError, match="saved as a .keras file"):
        ensemble.save(str(tmp_path / "run.h5"))
    ensemble.set_distillation(Distillation((32, 1), "progressive", teacher=None))
    with pytest.raises(NotImplementedError, match="with distillation cannot be saved"):
        ensemble.save(str(tmp_path / "run.keras"))
    assert not os.listdir(tmp_path)


def test_summary_lists_the_members_and_their_sizes():
    from quantens.ensemble import member_table
    from quantens.report import estimate_member_bytes

    bits = (32, 8, 1)
    ensemble = quantens.QuantEnsemble(tiny_model(bits), bits)
    lines = []
    ensemble.summary(print_fn=lines.append)
    rows = member_table(ensemble)
    sizes = estimate_member_bytes(ensemble.model, bits)
    assert [r["bits"] for r in rows] == list(bits)
    assert all(r["bytes"] == sizes[r["bits"]] for r in rows)
    # every weight is shared or one member's own: BN statistics and affine per member
    total = sum(int(v.shape.num_elements()) for v in ensemble.model.weights)
    assert rows[0]["shared_parameters"] + sum(r["own_parameters"] for r in rows) == total
    assert len({r["own_parameters"] for r in rows}) == 1 and rows[0]["own_parameters"] > 0
    assert f"{rows[0]['shared_parameters']:,} parameters" in lines[0]
    for r in rows:
        assert any(line.split()[:3] == [str(r["bits"]), f"{r['own_parameters']:,}",
                                        f"{r['bytes']:,}"] for line in lines)


def test_larq_summary_of_the_ensemble_describes_the_member_in_scope():
    import larq as lq

    bits = (32, 4, 1)
    ensemble = quantens.QuantEnsemble(tiny_model(bits, width=4), bits)
    quantized = sum(layer.kernel.shape.num_elements() for layer in ensemble.model.layers
                    if isinstance(getattr(layer, "kernel_quantizer", None),
                                  quantens.WeightQuantizer))
    for b in bits:
        lines = []
        with quantens.bits(b):
            lq.models.summary(ensemble, print_fn=lines.append)
        header, total = (line for line in lines[0].splitlines()
                         if "Layer" in line or "Total" in line)
        if b == 32:
            assert "# 32-bit" in header and "-bit" not in header.replace("32-bit", "")
        else:
            assert f"# {b}-bit" in header and total.strip("| ").split()[1] == str(quantized)


# ------------------------------------------------------- every input checked (issue 23)


@pytest.fixture(scope="module")
def small_model():
    """A (32, 1) model for arguments that are refused before the model is used."""
    return tiny_model((32, 1), width=4)


def test_quant_ensemble_refuses_misuse_with_one_line_naming_the_argument(small_model):
    from quantens.errors import ConfigError, UsageError

    nan = float("nan")
    cases = [
        (("model", (32, 1)), {}, UsageError, ["model must be a Keras model", "got str"]),
        ((small_model, None), {}, UsageError, ["bit_widths must list", "got None"]),
        ((small_model, ()), {}, UsageError, ["bit_widths ()", "at least one bit-width"]),
        ((small_model, 3.5), {}, UsageError, ["bit_widths must list", "got 3.5"]),
        ((small_model, (32, 33)), {}, UsageError, ["bit_widths (32, 33)", "from 1 to 32"]),
        ((small_model, (32, 4, 1)), {}, ConfigError,
         ["bit_widths 32 4 1 do not fit the model", "has members 32 1 only (no 4)"]),
        ((small_model, (32, 1)), {"target_bits": 4}, UsageError,
         ["target_bits 4 is not one of the bit-widths 32 1"]),
        ((small_model, (32, 1)), {"member_loss_weights": {4: 1.0}}, UsageError,
         ["member_loss_weights names bit-widths [4] that are not members (32 1)"]),
        ((small_model, (32, 1)), {"member_loss_weights": {1: -1.0}}, UsageError,
         ["member_loss_weights[1] must be a finite number >= 0, got -1.0"]),
        ((small_model, (32, 1)), {"member_loss_weights": {1: nan}}, UsageError,
         ["member_loss_weights[1] must be a finite number >= 0, got nan"]),
        ((small_model, (32, 1)), {"member_loss_weights": [1.0, 2.0]}, UsageError,
         ["member_loss_weights must be a dict", "got list"]),
        ((small_model, (32, 1)), {"weight_decay": -1e-4}, UsageError,
         ["weight_decay must be a finite number >= 0", "got -0.0001"]),
        ((small_model, (32, 1)), {"weight_decay": "1e-4"}, UsageError,
         ["weight_decay must be a finite number >= 0", "got '1e-4'"]),
    ]
    for args, kwargs, kind, phrases in cases:
        with pytest.raises(kind) as error:
            quantens.QuantEnsemble(*args, **kwargs)
        message = str(error.value)
        assert type(error.value) is kind and message.startswith("QuantEnsemble: "), message
        assert "\n" not in message and all(p in message for p in phrases), (message, phrases)
    # keys as a config file gives them ("1") count as members
    ensemble = quantens.QuantEnsemble(small_model, (32, 1), member_loss_weights={"1": 2.0})
    assert ensemble.member_loss_weights == {32: 1.0, 1: 2.0}


def test_all_zero_loss_weights_refuse_to_train_unless_distillation_teaches(small_model):
    from quantens.distillation import Distillation
    from quantens.errors import UsageError

    x = np.random.default_rng(0).normal(size=(4, 8, 8, 1)).astype("float32")
    y = np.arange(4)
    ensemble = quantens.QuantEnsemble(small_model, (32, 1), member_loss_weights={32: 0, 1: 0.0})
    ensemble.compile(optimizer=tf.keras.optimizers.SGD(0.1))
    with pytest.raises(UsageError, match=r"member_loss_weights are 0 for every member \(32 1\) "
                                         "and no distillation is set: training would change "
                                         "nothing"):
        ensemble.train_on_batch(x, y)
    with pytest.raises(UsageError, match="are 0 for every member"):
        ensemble.fit(x, y, verbose=0)
    ensemble.set_distillation(Distillation((32, 1), "progressive", teacher=None))
    logs = ensemble.train_on_batch(x, y, return_dict=True)  # the 1 bit learns from the 32
    assert logs["kd_loss"] > 0 and logs["loss"] == pytest.approx(logs["kd_loss"])


def test_set_distillation_refuses_another_object_or_other_bit_widths(small_model):
    from quantens.distillation import Distillation
    from quantens.errors import UsageError

    ensemble = quantens.QuantEnsemble(small_model, (32, 1))
    with pytest.raises(UsageError, match="distillation must be a quantens.distillation."
                                         "Distillation or None, got str"):
        ensemble.set_distillation("progressive")
    with pytest.raises(UsageError, match=r"bit_widths 32 4 1 differ from the ensemble's 32 1: "
                                         r"build it with Distillation\(ensemble.bit_widths"):
        ensemble.set_distillation(Distillation((32, 4, 1), "progressive"))
    assert ensemble.distillation is None


def test_load_ensemble_round_trips_and_names_a_damaged_file(small_model, tmp_path):
    from quantens.ensemble import load_ensemble
    from quantens.errors import WeightsError

    ensemble = quantens.QuantEnsemble(small_model, (32, 1), target_bits=32)
    ensemble.compile(optimizer="adam")
    path = tmp_path / "run.keras"
    ensemble.save(str(path))
    loaded = load_ensemble(path)
    assert isinstance(loaded, quantens.QuantEnsemble)
    assert (loaded.bit_widths, loaded.target_bits) == ((32, 1), 32)
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 1)).astype("float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), ensemble.predict(x, verbose=0),
                               atol=1e-6)
    data = path.read_bytes()

    def refused(name, content, *phrases):
        bad = tmp_path / name
        if content is not None:
            bad.write_bytes(content)
        with pytest.raises(WeightsError) as error:
            load_ensemble(str(bad))
        message = str(error.value)
        assert message.startswith(str(bad) + " ") and "\n" not in message, message
        assert all(p in message for p in phrases), (message, phrases)
        return bad

    half = refused("half.keras", data[: len(data) // 2], "is damaged",
                   "not a complete .keras (zip) file: truncated", "use another copy")
    with pytest.raises(OSError, match="file signature not found"):  # what Keras says
        tf.keras.models.load_model(str(half))
    flipped = bytearray(data)
    start = data.index(b"model.weights.h5") + 200  # inside the weights entry
    flipped[start:start + 8] = bytes(b ^ 0xFF for b in flipped[start:start + 8])
    refused("flipped.keras", bytes(flipped), "is damaged", "fails its checksum")
    import zipfile

    with zipfile.ZipFile(tmp_path / "empty.keras", "w") as archive:
        archive.writestr("metadata.json", "{}")
    refused("empty.keras", None, "is damaged", "has no config.json and no model.weights.h5")
    plain = tf.keras.Sequential([tf.keras.layers.Dense(2, input_shape=(3,))])
    plain.save(str(tmp_path / "plain.keras"))
    refused("plain.keras", None, "is an intact .keras file holding a Sequential, not a "
            "QuantEnsemble", "tf.keras.models.load_model")  # not called damaged: it is not
    refused("missing.keras", None, "does not exist")
    refused("run.h5", data, "is not a .keras file")


def test_load_weights_of_a_truncated_file_names_it_as_damaged(small_model, tmp_path):
    import h5py

    from quantens.errors import WeightsError
    from quantens.results import load_weights, save_weights

    path = tmp_path / "ensemble.weights.h5"
    save_weights(small_model, str(path))
    data = path.read_bytes()
    for name in ("half.weights.h5", "first_stage.params"):  # a .weights.h5 renamed: the seed's
        bad = tmp_path / name
        bad.write_bytes(data[: len(data) // 2])
        assert h5py.is_hdf5(str(bad))  # the signature is there, the rest is not
        with pytest.raises(WeightsError) as error:
            load_weights(small_model, str(bad))
        message = str(error.value)
        assert message.startswith(f"{bad} is damaged (truncated?") and "\n" not in message
        assert message.endswith("use another copy of the file")
    load_weights(small_model, str(path))  # the whole file still loads
