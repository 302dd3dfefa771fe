"""`QuantEnsemble(member_backward="sequential")`: the joint step's update, one member at a time.

Two ensembles start from the same weights and take the same steps, one with
`member_backward="joint"` (one backward pass through every member) and one
with "sequential" (forward, loss, backward per member, gradients added):
their updates, BN statistics and PACT ranges must agree.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from conftest import ROOT, batch, teacher_model, tiny_model

import quantens
from quantens.distillation import Distillation

pytestmark = pytest.mark.trains  # trains or traces whole models: not in `make test-fast`

BITS = (32, 4, 1)


def ensemble_pair(kd=None, optimizer=lambda: tf.keras.optimizers.SGD(1.0), model_kwargs=None,
                  run_eagerly=True, **ensemble_kwargs):
    """(joint, sequential) ensembles of one model's weights (and one teacher's).

    Eager by default: a few steps cost less than tracing them (the traced step,
    with its control dependencies, is tested under 2 replicas and in the memory
    test).
    """
    tf.keras.utils.set_random_seed(0)
    teacher = teacher_model() if kd and kd.get("teacher") else None
    made = []
    for mode in ("joint", "sequential"):
        model = tiny_model(BITS, width=4, **(model_kwargs or {}))
        if made:
            model.set_weights(made[0].model.get_weights())
        ensemble = quantens.QuantEnsemble(model, BITS, member_backward=mode, **ensemble_kwargs)
        if kd is not None:
            options = {k: v for k, v in kd.items() if k != "teacher"}
            ensemble.set_distillation(Distillation(BITS, teacher=teacher, **options))
        ensemble.compile(optimizer=optimizer(), run_eagerly=run_eagerly)
        made.append(ensemble)
    return made


def relative_difference(a, b):
    scale = max(float(np.abs(a).max()), 1e-12)
    return float(np.abs(a - b).max()) / scale


KD_CASES = {  # every KD mode; attention matching and the warm-up below
    "none": None,
    "progressive, attention": {"mode": "progressive", "attention_weight": 0.5},
    "highest": {"mode": "highest", "weight": 2.0},
    "average": {"mode": "average", "temperature": 2.0},
    "simple teacher": {"mode": "simple", "teacher": True},
}


@pytest.mark.parametrize("kd", KD_CASES.values(), ids=KD_CASES.keys())
def test_one_step_updates_equal_the_joint_step(kd):
    joint, sequential = ensemble_pair(kd, member_loss_weights={32: 0.5, 1: 2.0})
    before = [w.numpy() for w in joint.model.trainable_weights]
    x, y = batch()
    logs = [e.train_on_batch(x, y, return_dict=True) for e in (joint, sequential)]
    for w0, a, b in zip(before, joint.model.trainable_weights, sequential.model.trainable_weights,
                        strict=True):
        step_a, step_b = a.numpy() - w0, b.numpy() - w0  # -gradient (SGD, lr 1)
        if np.abs(step_a).max() > 0:
            assert relative_difference(step_a, step_b) < 1e-6, a.name
        else:
            assert np.abs(step_b).max() == 0, a.name
    for key, value in logs[0].items():  # the same loss, per-member metrics and KD terms
        assert logs[1][key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    # BN moving statistics (one per member) and PACT ranges: updated exactly once
    for a, b in zip(joint.model.non_trainable_weights, sequential.model.non_trainable_weights,
                    strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7, err_msg=a.name)


def test_three_momentum_steps_with_pact_ranges_and_a_kd_warm_up_give_the_same_weights():
    # SGD with momentum: Adam divides each gradient by its own running scale, so the
    # rounding of gradients near 0 (summed in another order) can move a weight by lr
    joint, sequential = ensemble_pair(  # KD from the second step on
        {"mode": "progressive", "warmup_steps": 1},
        optimizer=lambda: tf.keras.optimizers.SGD(0.1, momentum=0.9),
        model_kwargs={"activation_method": "pact"}, weight_decay=1e-3)
    alphas = [w for w in sequential.model.trainable_weights if "alpha" in w.name]
    assert alphas, "no PACT ranges in the model"
    for step in range(3):
        x, y = batch(step)
        for ensemble in (joint, sequential):
            ensemble.train_on_batch(x, y)
    for a, b in zip(joint.model.weights, sequential.model.weights, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5, err_msg=a.name)


def test_the_mode_is_part_of_the_config_and_checked():
    model = tiny_model(BITS, width=4)
    ensemble = quantens.QuantEnsemble(model, BITS, member_backward="sequential")
    assert ensemble.get_config()["member_backward"] == "sequential"
    again = quantens.QuantEnsemble.from_config(ensemble.get_config())
    assert again.member_backward == "sequential"
    with pytest.raises(ValueError, match="member_backward must be one of joint, sequential"):
        quantens.QuantEnsemble(model, BITS, member_backward="serial")


REPLICAS = textwrap.dedent("""
    import sys
    sys.path.insert(0, "tests")
    import quantens, numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import test_member_backward as t
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        joint, sequential = t.ensemble_pair({"mode": "progressive"}, run_eagerly=False,
                                            member_loss_weights={1: 2.0})
    before = [w.numpy() for w in joint.model.trainable_weights]
    x, y = t.batch()
    for e in (joint, sequential):
        e.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    worst = max(t.relative_difference(a.numpy() - w0, b.numpy() - w0)
                for w0, a, b in zip(before, joint.model.trainable_weights,
                                    sequential.model.trainable_weights)
                if np.abs(a.numpy() - w0).max() > 0)
    print("worst", worst)
""")


def test_two_cpu_replicas_sequential_equals_joint():
    result = subprocess.run([sys.executable, "-c", REPLICAS], cwd=ROOT, capture_output=True,
                            text=True, timeout=600,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    worst = float(result.stdout.split("worst")[-1])
    assert worst < 1e-6


MEMORY = textwrap.dedent("""
    import sys
    sys.path.insert(0, "tests")
    import quantens, numpy as np, tensorflow as tf
    from conftest import tiny_model
    from quantens.distillation import Distillation

    BITS = (32, 8, 4, 2, 1)
    SHAPE = (16, 16, 1)
    x = np.random.default_rng(0).random((128, *SHAPE)).astype("float32")
    y = np.arange(128) % 10

    def peak(step):
        step(x[:2], y[:2])  # traced (for any batch size) before it is measured
        tf.config.experimental.reset_memory_stats("CPU:0")
        base = tf.config.experimental.get_memory_info("CPU:0")["current"]
        step(x, y)
        return tf.config.experimental.get_memory_info("CPU:0")["peak"] - base

    def member_step(model, b):  # one member's own step: forward, loss, backward, update
        loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        optimizer = tf.keras.optimizers.SGD(0.01)
        @tf.function(input_signature=[tf.TensorSpec((None, *SHAPE)),
                                      tf.TensorSpec((None,), tf.int64)])
        def step(xb, yb):
            with quantens.bits(b), tf.GradientTape() as tape:
                loss = loss_fn(yb, model(xb, training=True))
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients([(g, v) for g, v in zip(grads, model.trainable_variables)
                                       if g is not None])
        return step

    def ensemble_step(mode, kd):  # one traced step of `fit`
        ensemble = quantens.QuantEnsemble(tiny_model(BITS, width=16, input_shape=SHAPE), BITS,
                                          member_backward=mode)
        if kd != "none":
            ensemble.set_distillation(Distillation(BITS, mode=kd))
        ensemble.compile(optimizer=tf.keras.optimizers.SGD(0.01))
        def step(xb, yb):
            ensemble.fit(tf.data.Dataset.from_tensor_slices((xb, yb)).batch(len(xb)), verbose=0)
        return step

    model = tiny_model(BITS, width=16, input_shape=SHAPE)
    for b in BITS:
        print("peak member", b, peak(member_step(model, b)))
    for mode, kd in (("sequential", "none"), ("sequential", "average"), ("joint", "average")):
        print("peak", mode, kd, peak(ensemble_step(mode, kd)))
""")


@pytest.mark.slow  # 8 traced steps: 33 s on 2 idle cores, 2 min on busy ones
def test_the_sequential_step_peaks_at_one_members_forward_and_backward_with_and_without_kd():
    """The TensorFlow allocator's peak of one step of batch 128 over what it held before
    (allocations, not time: the same on a busy machine).

    docs/getting-started.md: the sequential step "needs about the memory of one
    member, whatever the number of members". The reference is each member's own
    step (its forward, loss, backward and update, alone), the largest of the 5.
    The sequential step of all 5 members peaks at that, without KD and with KD mode "average" (every student reads
    the mean of all members' logits, from an extra forward pass without a tape);
    measured: 1.00x and 1.03x. A step that kept a second member's activations
    alive (its backward after the next member's forward) peaked at 2.2x. The
    joint step with "average" holds every member's activations at once (4.3x):
    the measurement sees them.
    """
    result = subprocess.run([sys.executable, "-c", MEMORY], cwd=ROOT, capture_output=True,
                            text=True, timeout=600,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    peak = {tuple(words[1:-1]): int(words[-1]) for words in
            (line.split() for line in result.stdout.splitlines() if line.startswith("peak"))}
    assert len(peak) == 8, result.stdout
    one = max(value for key, value in peak.items() if key[0] == "member")
    assert peak["sequential", "none"] < 1.25 * one, peak
    assert peak["sequential", "average"] < 1.25 * one, peak
    assert peak["joint", "average"] > 3 * one, peak


def test_float16_loss_scaling_of_the_members_equals_scaling_their_sum():
    """mixed_float16: each member's loss is scaled, the summed gradients unscaled once."""
    tf.keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        joint, sequential = ensemble_pair(
            {"mode": "progressive"},
            optimizer=lambda: tf.keras.mixed_precision.LossScaleOptimizer(
                tf.keras.optimizers.SGD(1.0)))
        assert isinstance(sequential.optimizer, tf.keras.mixed_precision.LossScaleOptimizer)
        before = [w.numpy() for w in joint.model.trainable_weights]
        x, y = batch()
        for ensemble in (joint, sequential):
            ensemble.train_on_batch(x, y)
        for w0, a, b in zip(before, joint.model.trainable_weights,
                            sequential.model.trainable_weights, strict=True):
            step_a, step_b = a.numpy() - w0, b.numpy() - w0
            if np.abs(step_a).max() > 0:  # float16 activations: agreement to their precision
                assert relative_difference(step_a, step_b) < 1e-3, a.name
        assert float(joint.optimizer.loss_scale) == float(sequential.optimizer.loss_scale)
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")


# the seed's example 3 (progressive KD from an untrained external teacher), on digits;
# make train's own run (30 epochs) gave a bit-identical history.csv in both modes
SEED_EXAMPLE_3 = ["--width", "4", "--epochs", "2", "--test-run", "--bit-widths", "32", "8", "4",
                  "2", "--target-bits", "4", "--kd-mode", "progressive", "--teacher",
                  "cifar_resnet20_v1", "--kd-teacher-mode", "untrained_external",
                  "--teacher-lr", "0.1", "--teacher-optimizer", "sgd", "--wd", "0.0001",
                  "--mode", "imperative"]  # eager: two steps cost less than tracing them


def test_train_py_gives_the_same_run_in_both_modes(tmp_path, argv=SEED_EXAMPLE_3):
    import csv
    import json

    from quantens.cli import train as train_cli

    runs = {}
    for mode in ("joint", "sequential"):
        path = tmp_path / mode
        assert train_cli.main([*argv, "--no-tensorboard", "--member-backward", mode,
                               "--result-path", str(path)]) == 0
        with open(path / "history.csv") as f:
            history = list(csv.DictReader(f))
        runs[mode] = json.loads((path / "metrics.json").read_text()), history
        assert json.loads((path / "config.json").read_text())["member_backward"] == mode
    (joint, joint_history), (sequential, sequential_history) = runs.values()
    assert sequential["test_accuracy"] == joint["test_accuracy"]  # to the last digit
    for a, b in zip(joint_history, sequential_history, strict=True):
        for key in a:
            assert float(b[key]) == pytest.approx(float(a[key]), rel=1e-5, abs=1e-7), key
