"""quantens.optimizers: RAdam against the paper's rule, the lr schedules, the factory."""

import json
import math
import re

import larq as lq
import numpy as np
import pytest
import tensorflow as tf
from conftest import run_script

import quantens
from quantens import defaults
from quantens.optimizers import (
    LR_MODES,
    OPTIMIZERS,
    MXNetSchedule,
    RAdam,
    make_optimizer,
    make_schedule,
)

# ------------------------------------------------------------- a NumPy reference


def numpy_radam(theta, grad_fn, lr_at, steps, beta_1=0.9, beta_2=0.999, eps=1e-8, threshold=4.0):
    """Algorithm 2 of Liu et al. (2019), ε added to sqrt(v_t), in float64.

    Returns the parameters after each step and, per step, whether the rectified
    (adaptive) update was used.
    """
    theta = np.array(theta, np.float64)
    m = np.zeros_like(theta)
    v = np.zeros_like(theta)
    rho_inf = 2.0 / (1.0 - beta_2) - 1.0
    trajectory, rectified = [], []
    for t in range(1, steps + 1):
        g = grad_fn(theta)
        m = beta_1 * m + (1.0 - beta_1) * g
        v = beta_2 * v + (1.0 - beta_2) * g * g
        m_hat = m / (1.0 - beta_1**t)
        rho_t = rho_inf - 2.0 * t * beta_2**t / (1.0 - beta_2**t)
        alpha = lr_at(t - 1)
        if rho_t > threshold:
            r_t = math.sqrt(
                (rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)
            )
            l_t = math.sqrt(1.0 - beta_2**t) / (np.sqrt(v) + eps)
            theta = theta - alpha * r_t * m_hat * l_t
        else:
            theta = theta - alpha * m_hat
        trajectory.append(theta.copy())
        rectified.append(rho_t > threshold)
    return np.array(trajectory), rectified


def mxnet_rate(num_update, mode, lr, max_update, warmup_steps=0, warmup_begin_lr=0.0,
               steps=(), factor=0.1, final_lr=0.0, power=2.0):
    """MXNet 1.x `lr_scheduler` at the 1-based `num_update`, in float64, without state.

    Linear warmup (`LRScheduler.get_warmup_lr`) while num_update < warmup_steps;
    then `MultiFactorScheduler` (one factor per step s with num_update > s),
    `PolyScheduler` and `CosineScheduler` (decay over max_update - warmup_steps
    updates, frozen after max_update), or a constant.
    """
    lr, warmup_begin_lr = np.float64(lr), np.float64(warmup_begin_lr)
    if num_update < warmup_steps:
        return warmup_begin_lr + (lr - warmup_begin_lr) * num_update / warmup_steps
    if mode == "constant":
        return lr
    if mode == "step":
        return lr * np.float64(factor) ** sum(num_update > s for s in steps)
    progress = (min(num_update, max_update) - warmup_steps) / (max_update - warmup_steps)
    if mode == "poly":
        return final_lr + (lr - final_lr) * (1.0 - progress) ** power
    assert mode == "cosine"
    return final_lr + (lr - final_lr) * (1.0 + np.cos(np.pi * progress)) / 2.0


def regression_problem(seed=0, n=16, d=5):
    """A least-squares loss 0.5 * mean((A θ - b)²) and its gradient."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, d))
    b = rng.normal(size=n)
    theta0 = rng.normal(size=d)

    def grad(theta):
        return a.T @ (a @ theta - b) / n

    return a, b, theta0, grad


def tf_trajectory(optimizer, theta0, a, b, steps, dtype=tf.float64):
    """Runs `optimizer` on the regression loss; parameters after each step."""
    theta = tf.Variable(theta0, dtype=dtype)
    a_t, b_t = tf.constant(a, dtype), tf.constant(b, dtype)
    trajectory = []
    for _ in range(steps):
        with tf.GradientTape() as tape:
            residual = tf.linalg.matvec(a_t, theta) - b_t
            loss = 0.5 * tf.reduce_mean(residual**2)
        optimizer.apply_gradients([(tape.gradient(loss, theta), theta)])
        trajectory.append(theta.numpy().astype(np.float64))
    return np.array(trajectory)


# --------------------------------------------------------------------------- RAdam

STEPS = 25


def test_radam_follows_the_papers_update_rule_in_both_phases():
    a, b, theta0, grad = regression_problem()
    expected, rectified = numpy_radam(theta0, grad, lambda s: 0.05, STEPS)
    # β2 = 0.999: ρ_1..ρ_4 ≈ 1, 2, 3, 3.997 <= 4; ρ_5 ≈ 4.996 > 4
    assert rectified == [False] * 4 + [True] * (STEPS - 4)
    got = tf_trajectory(RAdam(learning_rate=0.05), theta0, a, b, STEPS)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=0)
    # the un-adapted phase really is momentum SGD: θ_1 = θ_0 - α g_1 (m̂_1 = g_1)
    # (to the float32 rounding of the learning-rate variable)
    np.testing.assert_allclose(got[0], theta0 - 0.05 * grad(theta0), rtol=1e-7)


def test_radam_threshold_is_a_constructor_argument():
    a, b, theta0, grad = regression_problem(seed=1)
    expected, rectified = numpy_radam(theta0, grad, lambda s: 0.05, STEPS, threshold=5.0)
    assert rectified == [False] * 5 + [True] * (STEPS - 5)  # ρ_5 ≈ 4.996 <= 5
    got = tf_trajectory(RAdam(learning_rate=0.05, rho_threshold=5.0), theta0, a, b, STEPS)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=0)
    default = tf_trajectory(RAdam(learning_rate=0.05), theta0, a, b, STEPS)
    assert not np.allclose(default[4], got[4])  # step 5 differs: rectified only with 4


def test_radam_with_other_betas_and_epsilon():
    a, b, theta0, grad = regression_problem(seed=2)
    kwargs = {"beta_1": 0.8, "beta_2": 0.99, "eps": 1e-3}
    expected, rectified = numpy_radam(theta0, grad, lambda s: 0.02, STEPS, **kwargs)
    assert rectified[:4] == [False] * 4 and all(rectified[4:])
    optimizer = RAdam(learning_rate=0.02, beta_1=0.8, beta_2=0.99, epsilon=1e-3)
    got = tf_trajectory(optimizer, theta0, a, b, STEPS)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=0)


def test_radam_follows_a_learning_rate_schedule():
    a, b, theta0, grad = regression_problem(seed=3)
    lr, warmup, total = 0.05, 6, STEPS

    def hand_cosine(step):  # MXNet counts updates from 1
        u = step + 1
        if u < warmup:
            return lr * u / warmup
        return lr * (1 + math.cos(math.pi * (u - warmup) / (total - warmup))) / 2

    expected, _ = numpy_radam(theta0, grad, hand_cosine, STEPS)
    schedule = make_schedule("cosine", lr, epochs=total, steps_per_epoch=1, warmup_epochs=warmup)
    optimizer = RAdam(learning_rate=schedule)
    got = tf_trajectory(optimizer, theta0, a, b, STEPS)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=0)
    # the last update had rate 0, so the last two points are the same
    np.testing.assert_array_equal(got[-1], got[-2])


def test_radam_in_float32_stays_close_to_the_float64_rule():
    a, b, theta0, grad = regression_problem(seed=4)
    expected, _ = numpy_radam(theta0, grad, lambda s: 0.05, STEPS)
    got = tf_trajectory(RAdam(learning_rate=0.05), theta0, a, b, STEPS, dtype=tf.float32)
    np.testing.assert_allclose(got, expected, rtol=2e-6, atol=1e-7)


def test_radam_update_compiles_with_xla():
    a, b, theta0, grad = regression_problem(seed=5)
    expected, _ = numpy_radam(theta0, grad, lambda s: 0.05, 8)
    optimizer = RAdam(learning_rate=0.05, jit_compile=True)
    optimizer.jit_compile = True  # tf-keras turns XLA off without a GPU; force it on
    got = tf_trajectory(optimizer, theta0, a, b, 8)
    assert optimizer._update_step_xla.experimental_get_tracing_count() >= 1  # XLA was used
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=0)


def test_radam_with_a_step_schedule_compiles_with_xla():
    """tf-keras' PiecewiseConstantDecay (a tf.case) inside the XLA-compiled update."""
    a, b, theta0, grad = regression_problem(seed=8)
    schedule = make_schedule(
        "step", 0.05, epochs=4, steps_per_epoch=3, lr_steps="1,2", lr_factor=0.5,
        warmup_epochs=1,
    )

    def lr_at(step):
        return mxnet_rate(step + 1, "step", 0.05, 12, warmup_steps=3, steps=(3, 6), factor=0.5)

    expected, _ = numpy_radam(theta0, grad, lr_at, 12)
    optimizer = RAdam(learning_rate=schedule, jit_compile=True)
    optimizer.jit_compile = True
    got = tf_trajectory(optimizer, theta0, a, b, 12)
    assert optimizer._update_step_xla.experimental_get_tracing_count() >= 1
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=0)


def test_radam_sparse_gradients_update_like_dense_ones():
    init = np.arange(12, dtype="float32").reshape(4, 3) / 10
    dense_var, sparse_var = tf.Variable(init), tf.Variable(init)
    dense_opt, sparse_opt = RAdam(0.1), RAdam(0.1)
    rng = np.random.default_rng(6)
    for step in range(7):
        rows = np.array([0, 2]) if step % 2 == 0 else np.array([1, 2])
        values = rng.normal(size=(2, 3)).astype("float32")
        dense = np.zeros((4, 3), "float32")
        dense[rows] = values
        dense_opt.apply_gradients([(tf.constant(dense), dense_var)])
        sparse = tf.IndexedSlices(tf.constant(values), tf.constant(rows), tf.constant([4, 3]))
        sparse_opt.apply_gradients([(sparse, sparse_var)])
    np.testing.assert_allclose(sparse_var.numpy(), dense_var.numpy(), rtol=1e-6)
    np.testing.assert_array_equal(sparse_var.numpy()[3], init[3])  # never a gradient


def quantized_model():
    inputs = tf.keras.Input((6, 6, 2))
    x = quantens.QuantConv2D(4, 3, padding="same", use_bias=False)(inputs)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    outputs = tf.keras.layers.Dense(3)(x)
    return tf.keras.Model(inputs, outputs)


def test_radam_trains_the_latent_kernel_of_a_quantized_conv(rng):
    tf.keras.utils.set_random_seed(0)
    x = rng.normal(size=(32, 6, 6, 2)).astype("float32")
    y = rng.integers(0, 3, size=32)
    model = quantized_model()
    conv = model.layers[1]
    assert isinstance(conv.kernel, lq.quantized_variable.QuantizedVariable)
    latent_before = conv.kernel.latent_variable.numpy().copy()
    model.compile(
        optimizer=RAdam(learning_rate=0.01),
        loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    with quantens.bits(2):  # a 2-bit member: DoReFa kernel, 2-bit activations
        first = model.evaluate(x, y, verbose=0)
        history = model.fit(x, y, batch_size=8, epochs=6, shuffle=False, verbose=0)
        last = model.evaluate(x, y, verbose=0)
    assert model.optimizer.iterations.numpy() == 24  # both phases (rectified from step 5)
    assert not np.allclose(conv.kernel.latent_variable.numpy(), latent_before)
    losses = history.history["loss"]
    assert losses[-1] < losses[0] and last < first
    # one m and one v per trainable variable, shaped like it
    names = [v.name for v in model.optimizer.variables()]
    assert sum("/m/" in n for n in names) == sum("/v/" in n for n in names) == 3
    kernel_slots = [v for v in model.optimizer.variables() if v.shape == conv.kernel.shape]
    assert len(kernel_slots) == 2


def test_radam_state_survives_a_checkpoint(tmp_path):
    """Resuming from a checkpoint (as BackupAndRestore does) continues the same run."""
    a, b, theta0, grad = regression_problem(seed=7)
    expected, _ = numpy_radam(theta0, grad, lambda s: 0.05, 10)
    theta = tf.Variable(theta0, dtype=tf.float64)
    optimizer = RAdam(learning_rate=0.05)
    ckpt = tf.train.Checkpoint(theta=theta, optimizer=optimizer)
    a_t, b_t = tf.constant(a), tf.constant(b)

    def step(opt, var):
        with tf.GradientTape() as tape:
            loss = 0.5 * tf.reduce_mean((tf.linalg.matvec(a_t, var) - b_t) ** 2)
        opt.apply_gradients([(tape.gradient(loss, var), var)])

    for _ in range(3):  # stop in the un-adapted phase
        step(optimizer, theta)
    path = ckpt.save(str(tmp_path / "ckpt"))
    theta2 = tf.Variable(np.zeros_like(theta0), dtype=tf.float64)
    optimizer2 = RAdam(learning_rate=0.05)
    optimizer2.build([theta2])
    tf.train.Checkpoint(theta=theta2, optimizer=optimizer2).restore(path).assert_consumed()
    assert optimizer2.iterations.numpy() == 3
    for _ in range(7):
        step(optimizer2, theta2)
    np.testing.assert_allclose(theta2.numpy(), expected[-1], rtol=1e-6)


def test_radam_config_round_trip():
    optimizer = RAdam(learning_rate=0.003, beta_1=0.8, beta_2=0.99, epsilon=1e-6,
                      rho_threshold=5.0)
    config = optimizer.get_config()
    assert config["rho_threshold"] == 5.0 and config["weight_decay"] is None
    clone = RAdam.from_config(config)
    assert clone.get_config() == config
    restored = tf.keras.optimizers.deserialize(tf.keras.optimizers.serialize(optimizer))
    assert isinstance(restored, RAdam)
    assert restored.get_config() == config
    assert tf.keras.utils.get_registered_name(RAdam) == "quantens>RAdam"


def test_radam_config_round_trip_with_a_schedule():
    schedule = make_schedule("cosine", 0.01, epochs=3, steps_per_epoch=5, warmup_epochs=1)
    optimizer = RAdam(learning_rate=schedule)
    restored = tf.keras.optimizers.deserialize(tf.keras.optimizers.serialize(optimizer))
    assert isinstance(restored._learning_rate, MXNetSchedule)
    assert isinstance(restored._learning_rate.schedule, tf.keras.optimizers.schedules.CosineDecay)
    assert restored._learning_rate.get_config() == schedule.get_config()


@pytest.mark.parametrize(
    "kwargs",
    [{"beta_1": 1.0}, {"beta_2": 1.0}, {"beta_2": 0.0}, {"epsilon": -1.0},
     {"rho_threshold": 3.0}],
)
def test_radam_rejects_bad_hyperparameters(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        RAdam(**kwargs)


MIRRORED_SCRIPT = r"""
import json
import quantens
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import larq as lq
import numpy as np
from quantens.optimizers import RAdam, make_schedule

rng = np.random.default_rng(0)
x = rng.normal(size=(32, 6, 6, 2)).astype("float32")
y = rng.integers(0, 3, size=32)


def train(strategy):
    with strategy.scope():
        tf.keras.utils.set_random_seed(1)
        model = tf.keras.Sequential([
            tf.keras.Input((6, 6, 2)),
            lq.layers.QuantConv2D(4, 3, kernel_quantizer="ste_sign", use_bias=False),
            tf.keras.layers.Flatten(),
            tf.keras.layers.Dense(3),
        ])
        initial = [w.numpy() for w in model.weights]
        schedule = make_schedule("cosine", 0.01, epochs=2, steps_per_epoch=4, warmup_epochs=0.5)
        model.compile(RAdam(schedule), tf.keras.losses.SparseCategoricalCrossentropy(True))
    model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    kernel = model.layers[0].kernel
    return {
        "replicas": strategy.num_replicas_in_sync,
        "quantized": isinstance(kernel, lq.quantized_variable.QuantizedVariable),
        "latent_type": type(kernel.latent_variable).__name__,
        "iterations": int(model.optimizer.iterations.numpy()),
        "initial": [w.tolist() for w in initial],
        "final": [w.numpy().tolist() for w in model.weights],
    }


mirrored = train(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
single = train(tf.distribute.get_strategy())
print("RESULT" + json.dumps({"mirrored": mirrored, "single": single}))
"""


def test_radam_under_mirrored_strategy_equals_one_device(tmp_path):
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED_SCRIPT)
    proc = run_script([str(script)], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))
    result = json.loads(line[len("RESULT"):])
    mirrored, single = result["mirrored"], result["single"]
    assert mirrored["replicas"] == 2 and single["replicas"] == 1
    assert mirrored["quantized"] and single["quantized"]
    assert mirrored["latent_type"] == "MirroredVariable"
    assert mirrored["iterations"] == single["iterations"] == 8
    for m_init, s_init in zip(mirrored["initial"], single["initial"], strict=True):
        np.testing.assert_array_equal(m_init, s_init)
    for m_w, s_w, init in zip(mirrored["final"], single["final"], single["initial"], strict=True):
        assert not np.allclose(s_w, init)
        np.testing.assert_allclose(m_w, s_w, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------- schedules

SCHEDULES = tf.keras.optimizers.schedules


def values(schedule, steps):
    return [float(schedule(s)) for s in steps]


def reference_values(mode, lr, epochs, steps_per_epoch, steps, lr_steps=(), lr_factor=0.1,
                     warmup_epochs=0.0, warmup_begin_lr=0.0, final_lr=0.0, power=2.0):
    """`mxnet_rate` for `make_schedule`'s arguments: step s is MXNet's update s + 1."""
    if isinstance(lr_steps, str):
        lr_steps = [float(e) for e in lr_steps.split(",")]
    kwargs = {
        "warmup_steps": round(warmup_epochs * steps_per_epoch),
        "warmup_begin_lr": warmup_begin_lr,
        "steps": [round(e * steps_per_epoch) for e in lr_steps],
        "factor": lr_factor,
        "final_lr": final_lr,
        "power": power,
    }
    return [mxnet_rate(s + 1, mode, lr, epochs * steps_per_epoch, **kwargs) for s in steps]


MODE_CASES = [
    ("constant", {}),
    ("step", {"lr_steps": "1,2", "lr_factor": 0.1}),
    ("step", {"lr_steps": [0.5, 2.5], "lr_factor": 0.3}),
    ("cosine", {}),
    ("cosine", {"final_lr": 0.01}),
    ("poly", {}),
    ("poly", {"power": 0.5, "final_lr": 0.01}),
]
WARMUPS = [{}, {"warmup_epochs": 1}, {"warmup_epochs": 0.5, "warmup_begin_lr": 0.02}]


@pytest.mark.parametrize("warmup", WARMUPS, ids=["no-warmup", "warmup", "warmup-from-lr"])
@pytest.mark.parametrize("mode, kwargs", MODE_CASES, ids=[f"{m}{k}" for m, k in MODE_CASES])
def test_schedules_equal_mxnets_at_every_step_of_a_3_epoch_run(mode, kwargs, warmup):
    for steps_per_epoch in (7, 32):
        args = {"lr": 0.1, "epochs": 3, "steps_per_epoch": steps_per_epoch, **kwargs, **warmup}
        steps = range(3 * steps_per_epoch + 4)  # every update, and a few past the end
        schedule = make_schedule(mode, **args)
        expected = reference_values(mode, steps=steps, **args)
        np.testing.assert_allclose(values(schedule, steps), expected, rtol=0, atol=1e-7)


def test_schedules_are_tf_keras_schedules_behind_one_wrapper():
    kwargs = {"epochs": 3, "steps_per_epoch": 7, "lr_steps": "1,2", "warmup_epochs": 1}
    inner = {mode: make_schedule(mode, 0.1, **kwargs) for mode in LR_MODES}
    assert all(type(schedule) is MXNetSchedule for schedule in inner.values())
    assert isinstance(inner["step"].schedule, SCHEDULES.PiecewiseConstantDecay)
    assert isinstance(inner["poly"].schedule, SCHEDULES.PolynomialDecay)
    assert inner["poly"].start_after_warmup and inner["poly"].warmup_steps == 7
    # tf-keras' CosineDecay has MXNet's warmup: the wrapper adds none
    cosine = inner["cosine"]
    assert isinstance(cosine.schedule, SCHEDULES.CosineDecay) and cosine.warmup_steps == 0
    assert cosine.schedule.warmup_steps == 7 and cosine.schedule.warmup_target == 0.1
    assert inner["constant"].schedule == 0.1


def test_wrapper_is_the_tf_keras_schedule_one_update_later_in_float64():
    decay = SCHEDULES.ExponentialDecay(0.1, decay_steps=3, decay_rate=0.5)
    schedule = MXNetSchedule(decay)
    expected = [0.1 * 0.5 ** ((s + 1) / 3) for s in range(10)]
    np.testing.assert_allclose(values(schedule, range(10)), expected, rtol=1e-7)
    assert schedule(0).dtype == tf.float32
    assert schedule.schedule(1).dtype == tf.float64  # rebuilt with float64 rates
    assert decay(1).dtype == tf.float32  # the given schedule is left as it was


def test_wrapper_warmup_and_start_after_warmup():
    poly = SCHEDULES.PolynomialDecay(1.0, 8, end_learning_rate=0.0, power=1.0)
    after = MXNetSchedule(poly, warmup_steps=4, warmup_begin_lr=0.2, warmup_target=1.0,
                          start_after_warmup=True)
    # updates 1..3 warm up, update 4 (step 3) is poly(0), update 12 poly(8)
    expected = [0.4, 0.6, 0.8, 1.0, 0.875, 0.5, 0.0, 0.0]
    np.testing.assert_allclose(values(after, [0, 1, 2, 3, 4, 7, 11, 30]), expected, rtol=1e-6)
    from_start = MXNetSchedule(poly, warmup_steps=4, warmup_begin_lr=0.2, warmup_target=1.0)
    np.testing.assert_allclose(values(from_start, [2, 3, 7]), [0.8, 0.5, 0.0], rtol=1e-6)


def test_linear_warmup_starts_above_zero_and_reaches_the_rate_at_its_last_step():
    schedule = make_schedule("constant", 0.2, epochs=3, steps_per_epoch=4, warmup_epochs=1)
    # 4 warmup updates at 1/4, 2/4, 3/4, 4/4 of the rate, then the rate
    np.testing.assert_allclose(
        values(schedule, range(7)), [0.05, 0.1, 0.15, 0.2, 0.2, 0.2, 0.2], rtol=1e-6
    )


def test_warmup_may_start_from_a_small_rate_and_last_a_fraction_of_an_epoch():
    schedule = make_schedule(
        "constant", 0.5, epochs=2, steps_per_epoch=10, warmup_epochs=0.5, warmup_begin_lr=0.1
    )
    assert schedule.warmup_steps == 5
    expected = [0.1 + 0.4 * u / 5 for u in range(1, 6)] + [0.5]
    np.testing.assert_allclose(values(schedule, range(6)), expected, rtol=1e-6)


def test_constant_without_warmup_is_constant():
    schedule = make_schedule("constant", 0.3, epochs=2, steps_per_epoch=5)
    np.testing.assert_allclose(values(schedule, [0, 1, 9, 1000]), [0.3] * 4, rtol=1e-6)


def test_step_decays_exactly_at_the_given_epochs():
    schedule = make_schedule(
        "step", 0.1, epochs=10, steps_per_epoch=7, lr_steps="3,6", lr_factor=0.5
    )
    assert schedule.schedule.boundaries == [21, 42]
    steps = [0, 20, 21, 41, 42, 69]
    expected = [0.1, 0.1, 0.05, 0.05, 0.025, 0.025]
    np.testing.assert_allclose(values(schedule, steps), expected, rtol=1e-6)


def test_step_with_warmup_and_fractional_epochs():
    schedule = make_schedule(
        "step", 1.0, epochs=5, steps_per_epoch=4, lr_steps=[2.5, 4], lr_factor=0.1,
        warmup_epochs=0.5,
    )
    assert schedule.schedule.boundaries == [10, 16] and schedule.warmup_steps == 2
    steps = [0, 1, 9, 10, 15, 16, 19]
    expected = [0.5, 1.0, 1.0, 0.1, 0.1, 0.01, 0.01]
    np.testing.assert_allclose(values(schedule, steps), expected, rtol=1e-6)


def test_step_epochs_past_the_end_never_take_effect():
    schedule = make_schedule("step", 0.1, epochs=40, steps_per_epoch=2, lr_steps="30,60,90")
    np.testing.assert_allclose(values(schedule, [59, 60, 79]), [0.1, 0.01, 0.01], rtol=1e-6)


def test_cosine_halves_at_the_middle_and_ends_at_zero():
    # 100 updates, 20 of warmup, 80 of decay: p = (step + 1 - 20) / 80
    schedule = make_schedule("cosine", 0.1, epochs=10, steps_per_epoch=10, warmup_epochs=2)
    assert values(schedule, [18, 19]) == pytest.approx([0.1 * 19 / 20, 0.1], rel=1e-6)
    assert float(schedule(59)) == pytest.approx(0.05, rel=1e-6)  # p = 1/2
    assert float(schedule(39)) == pytest.approx(0.1 * (1 + math.cos(math.pi / 4)) / 2, rel=1e-6)
    assert float(schedule(99)) == 0.0  # the last update
    assert float(schedule(500)) == 0.0  # and after


def test_cosine_decays_to_a_final_rate():
    schedule = make_schedule("cosine", 0.1, epochs=4, steps_per_epoch=25, final_lr=0.01)
    assert float(schedule(49)) == pytest.approx(0.055, rel=1e-6)
    assert float(schedule(99)) == pytest.approx(0.01, rel=1e-6)


def test_cosine_ignores_the_step_flags():
    schedule = make_schedule(
        "cosine", 0.1, epochs=2, steps_per_epoch=5, lr_steps="30,20", lr_factor=7.0
    )
    assert isinstance(schedule.schedule, SCHEDULES.CosineDecay)


def test_poly_is_mxnets_quadratic_decay():
    schedule = make_schedule("poly", 0.1, epochs=10, steps_per_epoch=10)
    assert float(schedule(0)) == pytest.approx(0.1 * (1 - 1 / 100) ** 2, rel=1e-6)
    assert float(schedule(49)) == pytest.approx(0.025, rel=1e-6)  # (1 - 1/2)^2
    assert float(schedule(99)) == 0.0
    with_warmup = make_schedule(
        "poly", 0.1, epochs=10, steps_per_epoch=10, warmup_epochs=2, final_lr=0.02
    )
    # p = (59 + 1 - 20) / 80 = 1/2
    assert float(with_warmup(59)) == pytest.approx(0.02 + 0.08 * 0.25, rel=1e-6)
    assert float(with_warmup(9)) == pytest.approx(0.1 * 10 / 20, rel=1e-6)
    cubic = make_schedule("poly", 0.1, epochs=10, steps_per_epoch=10, power=3)
    assert float(cubic(49)) == pytest.approx(0.0125, rel=1e-6)


def test_schedules_work_on_tensors_inside_tf_function():
    schedule = make_schedule("step", 0.1, epochs=10, steps_per_epoch=7, lr_steps="3,6")
    compiled = tf.function(lambda s: schedule(s))
    assert float(compiled(tf.constant(21, tf.int64))) == pytest.approx(0.01, rel=1e-6)
    assert schedule(tf.constant(0, tf.int64)).dtype == tf.float32


@pytest.mark.parametrize("warmup", WARMUPS[1:2] + WARMUPS[:1], ids=["warmup", "no-warmup"])
@pytest.mark.parametrize("mode", LR_MODES)
def test_schedule_round_trips_through_config_and_keras_serialization(mode, warmup):
    schedule = make_schedule(
        mode, 0.3, epochs=3, steps_per_epoch=7, lr_steps="1,2", lr_factor=0.5,
        final_lr=0.03, power=3.0, warmup_begin_lr=0.01, **warmup,
    )
    config = schedule.get_config()
    serialized = json.loads(json.dumps(SCHEDULES.serialize(schedule)))  # as saved in a file
    assert serialized["registered_name"] == "quantens>MXNetSchedule"
    clone = MXNetSchedule.from_config(json.loads(json.dumps(config)))
    restored = SCHEDULES.deserialize(serialized)
    steps = range(3 * 7 + 3)
    for copy in (clone, restored):
        assert type(copy) is MXNetSchedule
        assert copy.get_config() == config
        np.testing.assert_array_equal(values(copy, steps), values(schedule, steps))
        if mode != "constant":  # still float64 after the JSON round trip
            assert copy.schedule(1).dtype == tf.float64


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"mode": "linear"}, re.escape(", ".join(LR_MODES))),
        ({"lr": 0.0}, "lr must be"),
        ({"lr": -0.1}, "lr must be"),
        ({"lr": float("nan")}, "lr must be"),
        ({"epochs": 0}, "epochs must be"),
        ({"steps_per_epoch": 0}, "steps_per_epoch must be"),
        ({"steps_per_epoch": 2.5}, "steps_per_epoch must be"),
        ({"warmup_epochs": -1}, "warmup_epochs must be"),
        ({"warmup_epochs": 10}, "warmup_epochs must be"),
        ({"warmup_epochs": 9.99}, "no step of training after the warmup"),
        ({"mode": "step", "lr_steps": "30,20"}, "strictly increasing"),
        ({"mode": "step", "lr_steps": [3, 3]}, "strictly increasing"),
        ({"mode": "step", "lr_steps": ""}, "at least one epoch"),
        ({"mode": "step", "lr_steps": "3,x"}, "comma-separated"),
        ({"mode": "step", "lr_steps": [0, 3]}, "epochs > 0"),
        ({"mode": "step", "lr_steps": [1.01, 1.02]}, "same or the first step"),
        ({"mode": "step", "lr_steps": [3], "lr_factor": 0}, "lr_factor"),
        ({"mode": "step", "lr_steps": [3], "lr_factor": 2}, "lr_factor"),
        ({"final_lr": 0.5}, "final_lr"),
        ({"warmup_epochs": 1, "warmup_begin_lr": 0.5}, "warmup_begin_lr"),
        ({"mode": "poly", "power": 0}, "power"),
    ],
)
def test_make_schedule_rejects_bad_values(kwargs, message):
    args = {"mode": "cosine", "lr": 0.1, "epochs": 10, "steps_per_epoch": 10, **kwargs}
    with pytest.raises(ValueError, match=message):
        make_schedule(**args)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"schedule": 0.0}, "schedule must be"),
        ({"schedule": "cosine"}, "schedule must be"),
        ({"warmup_steps": -1}, "warmup_steps"),
        ({"warmup_steps": 2.5}, "warmup_steps"),
        ({"warmup_steps": 3}, "warmup_target"),
        ({"warmup_steps": 3, "warmup_target": 0.1, "warmup_begin_lr": 0.2}, "warmup_begin_lr"),
    ],
)
def test_wrapper_validates_its_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MXNetSchedule(**{"schedule": 0.1, **kwargs})


def test_lr_modes_are_the_seeds():
    assert set(LR_MODES) == {"step", "cosine", "poly", "constant"}
    assert LR_MODES is defaults.LR_MODES and OPTIMIZERS is defaults.OPTIMIZERS
    for mode in LR_MODES:
        assert make_schedule(mode, 0.1, 3, 4, lr_steps=[1]) is not None


# ----------------------------------------------------------------------- optimizers


def test_make_optimizer_returns_the_named_optimizers():
    radam = make_optimizer("radam", 0.002)
    assert type(radam) is RAdam
    assert radam.learning_rate.numpy() == pytest.approx(0.002)
    adam = make_optimizer("adam", 0.001)
    assert type(adam) is tf.keras.optimizers.Adam
    assert adam.epsilon == 1e-8 and not adam.amsgrad
    sgd = make_optimizer("sgd", 0.1)
    assert type(sgd) is tf.keras.optimizers.SGD
    assert sgd.momentum == 0.9 and not sgd.nesterov
    nag = make_optimizer("nag", 0.1, momentum=0.8)
    assert type(nag) is tf.keras.optimizers.SGD
    assert nag.momentum == 0.8 and nag.nesterov
    assert nag.learning_rate.numpy() == pytest.approx(0.1)
    for optimizer in (radam, adam, sgd, nag):
        assert optimizer.weight_decay is None
    assert set(OPTIMIZERS) == {"radam", "adam", "sgd", "nag"}


def test_nag_takes_the_nesterov_step():
    """Two steps on f(w) = w²/2 from w = 1 (gradient w), lr 0.1, momentum 0.9."""
    def run(name):
        w = tf.Variable(1.0)
        optimizer = make_optimizer(name, 0.1, momentum=0.9)
        for _ in range(2):
            optimizer.apply_gradients([(tf.identity(w), w)])
        return float(w.numpy())

    # heavy ball: v1 = -0.1, w1 = 0.9; v2 = 0.9 v1 - 0.1 * 0.9 = -0.18, w2 = 0.72
    assert run("sgd") == pytest.approx(0.72, rel=1e-6)
    # Nesterov: w1 = 1 + 0.9 v1 - 0.1 = 0.81; v2 = -0.09 - 0.081 = -0.171,
    # w2 = 0.81 + 0.9 v2 - 0.081 = 0.5751
    assert run("nag") == pytest.approx(0.5751, rel=1e-6)


def test_make_optimizer_takes_a_schedule_and_keyword_arguments():
    schedule = make_schedule("step", 0.1, epochs=10, steps_per_epoch=7, lr_steps="3,6")
    optimizer = make_optimizer("sgd", schedule, momentum=0.5, clipnorm=1.0)
    assert optimizer._learning_rate is schedule
    assert optimizer.clipnorm == 1.0 and optimizer.momentum == 0.5
    assert make_optimizer("RAdam", 0.1).__class__ is RAdam


@pytest.mark.parametrize(
    "args, message",
    [
        (("adamw", 0.1), "radam, adam, sgd, nag"),
        (("sgd", 0.0), "learning rate"),
        (("radam", -1.0), "learning rate"),
        (("sgd", 0.1, 1.0), "momentum"),
        (("nag", 0.1, -0.1), "momentum"),
    ],
)
def test_make_optimizer_rejects_bad_values(args, message):
    with pytest.raises(ValueError, match=message):
        make_optimizer(*args)
