"""`QuantEnsemble(mixed_students=N)`: per-layer mixes trained as extra students (issue 29).

Each step adds N mixes drawn from a seeded pool (`drawn_mixes(step)` says
which) with their cross-entropy and their distillation from the teacher. The
step is checked against a loss built here by hand from the same forward passes
and a manual SGD step on it; the mix leaves the moving BN statistics as the
members left them; `.keras` files and train.py's resume keep the setting; and
`mixed_students=0` is today's step, with no random op and no `switch_case`.
"""

import csv
import json

import numpy as np
import pytest
import tensorflow as tf
from conftest import batch, run_script, teacher_model, tiny_model

import quantens
from quantens.distillation import Distillation
from quantens.errors import ConfigError, UsageError

pytestmark = pytest.mark.trains  # trains or traces whole models: not in `make test-fast`

BITS = (8, 2, 1)
LR = 0.1
WEIGHTS = {8: 0.5, 2: 1.0, 1: 2.0}
ALPHA, T = 0.5, 2.0


def ensemble_with_teacher(member_backward="joint", run_eagerly=False, **mixed):
    tf.keras.utils.set_random_seed(0)
    ensemble = quantens.QuantEnsemble(tiny_model(BITS, width=4), BITS,
                                      member_loss_weights=WEIGHTS,
                                      member_backward=member_backward, **mixed)
    ensemble.set_distillation(Distillation(BITS, "simple", teacher_model(), temperature=T,
                                           weight=ALPHA))
    ensemble.compile(optimizer=tf.keras.optimizers.SGD(LR), run_eagerly=run_eagerly)
    return ensemble


def cross_entropy(y, logits):
    log_p = tf.nn.log_softmax(logits, axis=-1)
    return -tf.reduce_mean(tf.gather(log_p, y, axis=-1, batch_dims=1))


def distillation_term(student, target):
    """α·T²·KL(softmax(target/T) ‖ softmax(student/T)), averaged over the batch."""
    p = tf.nn.softmax(target / T, axis=-1)
    kl = tf.reduce_sum(p * (tf.nn.log_softmax(target / T, axis=-1)
                            - tf.nn.log_softmax(student / T, axis=-1)), axis=-1)
    return ALPHA * T * T * tf.reduce_mean(kl)


def hand_step(ensemble, x, y, policy):
    """The step computed here: (terms, weights after one SGD step, BN statistics the members
    leave). The model's weights are put back afterwards."""
    model = ensemble.model
    before = model.get_weights()
    variables = model.trainable_variables
    teacher = ensemble.distillation.teacher(x, training=False)
    with tf.GradientTape() as tape:
        members = {}
        for b in BITS:
            with quantens.bits(b):
                members[b] = model(x, training=True)
        statistics = [v.numpy() for v in model.non_trainable_variables]
        terms = {"ce": {b: cross_entropy(y, z) for b, z in members.items()},
                 "kd": sum(distillation_term(z, teacher) for z in members.values())}
        if policy is not None:
            with quantens.bits(policy):
                mixed = model(x, training=True)
            terms["mixed"] = mixed
            terms["mixed_ce"] = cross_entropy(y, mixed)
            terms["mixed_kd"] = distillation_term(mixed, teacher)
        total = sum(WEIGHTS[b] * terms["ce"][b] for b in BITS) + terms["kd"]
        if policy is not None:
            total += terms["mixed_ce"] + terms["mixed_kd"]
        terms["total"] = total
    grads = tape.gradient(total, variables)
    expected = [v.numpy() - LR * g.numpy() for v, g in zip(variables, grads, strict=True)]
    model.set_weights(before)
    return terms, expected, statistics


@pytest.mark.parametrize("member_backward", ["joint", "sequential"])
def test_one_step_is_the_hand_built_loss_and_its_sgd_step(member_backward):
    ensemble = ensemble_with_teacher(member_backward, mixed_students=1, mixed_pool=3,
                                     mixed_seed=4)
    x, y = batch()
    [policy] = ensemble.drawn_mixes(0)  # the first step's mix
    assert policy in ensemble.mixed_policies and len(set(policy.values())) >= 2
    terms, expected, statistics = hand_step(ensemble, x, y, policy)
    # the drawn mix is observable in the loss: every other mix of the pool scores otherwise
    before = ensemble.model.get_weights()
    for other in ensemble.mixed_policies:
        if other != policy:
            with quantens.bits(other):
                z = ensemble.model(x, training=True)
            assert abs(float(cross_entropy(y, z)) - float(terms["mixed_ce"])) > 1e-4
    ensemble.model.set_weights(before)  # training-mode passes moved the BN statistics
    logs = ensemble.train_on_batch(x, y, return_dict=True)  # traced: tf.switch_case
    np.testing.assert_allclose(logs["loss_mixed"], float(terms["mixed_ce"]), rtol=1e-5)
    np.testing.assert_allclose(logs["kd_loss"], float(terms["kd"] + terms["mixed_kd"]),
                               rtol=1e-5)
    np.testing.assert_allclose(logs["loss"], float(terms["total"]), rtol=1e-5)
    accuracy = np.mean(np.argmax(terms["mixed"], axis=-1) == y)
    np.testing.assert_allclose(logs["accuracy_mixed"], accuracy, atol=1e-6)
    assert float(terms["mixed_kd"]) > 1e-3  # the mix's distillation is part of the total
    for variable, want in zip(ensemble.model.trainable_variables, expected, strict=True):
        np.testing.assert_allclose(variable.numpy(), want, atol=1e-6, err_msg=variable.name)
    # the mix trains with batch statistics and leaves the members' moving ones as they were
    for variable, want in zip(ensemble.model.non_trainable_variables, statistics,
                              strict=True):
        np.testing.assert_allclose(variable.numpy(), want, atol=1e-6, err_msg=variable.name)


def test_the_draw_is_a_function_of_seed_and_step():
    model = tiny_model(BITS, width=4)
    ensemble = quantens.QuantEnsemble(model, BITS, mixed_students=2, mixed_seed=7)
    again = quantens.QuantEnsemble(model, BITS, mixed_students=2, mixed_seed=7)
    other = quantens.QuantEnsemble(model, BITS, mixed_students=2, mixed_seed=8)
    assert len(ensemble.mixed_policies) == quantens.ensemble.MIXED_POOL
    assert again.mixed_policies == ensemble.mixed_policies != other.mixed_policies
    for policy in ensemble.mixed_policies:  # quantized bits only, never a uniform member
        assert set(policy.values()) <= {8, 2, 1} and len(set(policy.values())) >= 2
    draws = [ensemble.drawn_mixes(step) for step in range(20)]
    assert draws == [again.drawn_mixes(step) for step in range(20)]
    assert all(len(d) == 2 and d[0] != d[1] for d in draws)  # distinct students per step
    assert len({json.dumps(d, sort_keys=True) for d in draws}) > 5  # it changes with the step


def test_keras_file_round_trip_keeps_the_students_and_trains_on(tmp_path):
    ensemble = quantens.QuantEnsemble(tiny_model(BITS, width=4), BITS, mixed_students=1,
                                      mixed_pool=2, mixed_seed=3)
    ensemble.compile(optimizer="adam", run_eagerly=True)
    x, y = batch()
    ensemble.fit(x, y, epochs=1, verbose=0)
    path = tmp_path / "run.keras"
    ensemble.save(path)
    loaded = quantens.load_ensemble(path)
    config = loaded.get_config()
    assert {k: config[k] for k in ("mixed_students", "mixed_pool", "mixed_seed")} == {
        "mixed_students": 1, "mixed_pool": 2, "mixed_seed": 3}
    assert config == ensemble.get_config()
    assert loaded.mixed_policies == ensemble.mixed_policies
    assert loaded.drawn_mixes(5) == ensemble.drawn_mixes(5)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), ensemble.predict(x, verbose=0),
                               atol=1e-6)
    assert int(loaded.optimizer.iterations) == 1
    history = loaded.fit(x, y, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss_mixed"][0])
    assert int(loaded.optimizer.iterations) == 2


def test_zero_mixed_students_is_the_members_step_without_random_ops():
    ensemble = ensemble_with_teacher(mixed_students=0, run_eagerly=True)  # traced below
    assert ensemble.mixed_students == 0 and ensemble.mixed_policies == ()
    x, y = batch(1)
    terms, expected, statistics = hand_step(ensemble, x, y, None)
    logs = ensemble.train_on_batch(x, y, return_dict=True)
    assert not any("mixed" in key for key in logs)
    np.testing.assert_allclose(logs["loss"], float(terms["total"]), rtol=1e-5)
    for variable, want in zip(ensemble.model.trainable_variables, expected, strict=True):
        np.testing.assert_allclose(variable.numpy(), want, atol=1e-6, err_msg=variable.name)
    for variable, want in zip(ensemble.model.non_trainable_variables, statistics,
                              strict=True):
        np.testing.assert_allclose(variable.numpy(), want, atol=1e-6, err_msg=variable.name)

    # the traced step: no random op and no switch_case without students, both with one
    def op_types(ensemble):
        step = tf.function(ensemble.train_step)
        graph = step.get_concrete_function((tf.TensorSpec((16, 8, 8, 1)),
                                            tf.TensorSpec((16,), tf.int32))).graph
        types = {op.type for op in graph.get_operations()}
        for function in graph.as_graph_def().library.function:  # a switch_case's branches
            types |= {node.op for node in function.node_def}
        return types

    with_students = ensemble_with_teacher(mixed_students=1, mixed_pool=2)
    with_students.optimizer.build(with_students.model.trainable_variables)
    random = lambda types: {t for t in types if "Random" in t}  # noqa: E731
    assert random(op_types(with_students)) and {"Case", "StatelessCase"} & op_types(
        with_students)
    types = op_types(ensemble)
    assert not random(types) and not {"Case", "StatelessCase", "If", "StatelessIf"} & types


def test_bad_arguments_are_one_line_errors():
    model = tiny_model(BITS, width=4)
    for bad in (-1, 1.5, True, "1"):
        with pytest.raises(UsageError, match="mixed_students must be a whole number"):
            quantens.QuantEnsemble(model, BITS, mixed_students=bad)
    with pytest.raises(UsageError, match="exceeds mixed_pool=2"):
        quantens.QuantEnsemble(model, BITS, mixed_students=3, mixed_pool=2)
    with pytest.raises(UsageError, match="needs at least 2 bit-widths"):
        quantens.QuantEnsemble(tiny_model((2,), width=4), (2,), mixed_students=1)
    inputs = tf.keras.Input((4,))
    hidden = tf.keras.layers.Dense(8)(inputs)
    one_layer = tf.keras.Model(inputs, quantens.QuantDense(2, name="out")(hidden))
    with pytest.raises(ConfigError, match="at least 2 switchable conv or dense layers"):
        quantens.QuantEnsemble(one_layer, BITS, mixed_students=1)
    # a 2-layer model has 2**2 - 2 mixes of 2 bit-widths: a pool of 8 holds 2
    two_layers = tf.keras.Model(inputs, quantens.QuantDense(2, name="out2")(
        quantens.QuantDense(8, input_quantizer=None, name="hidden")(inputs)))
    assert len(quantens.QuantEnsemble(two_layers, (2, 1), mixed_students=2).mixed_policies) == 2
    with pytest.raises(UsageError, match="only 2 distinct mixes"):
        quantens.QuantEnsemble(two_layers, (2, 1), mixed_students=3)


def test_the_flag_is_checked_described_and_recorded(tmp_path, capsys):
    from quantens import cli
    from quantens.cli.description import describe

    args = cli.parse_args(["--mixed-students", "2", "--seed", "5",
                           "--result-path", str(tmp_path / "r")])
    d = describe(args)
    assert (d.ensemble.mixed_students, d.ensemble.mixed_seed) == (2, 5)
    assert cli.config_dict(args)["mixed_students"] == 2
    for argv, words in ((["--mixed-students", "-1"], "must be a whole number >= 0"),
                        (["--mixed-students", "1", "--bit-widths", "4"], "has one")):
        with pytest.raises(SystemExit):
            cli.parse_args([*argv, "--result-path", str(tmp_path / "r")])
        error = capsys.readouterr().err
        assert "--mixed-students" in error and words in error, error


@pytest.mark.slow  # two train.py runs
def test_train_py_resumes_a_run_with_mixed_students(tfds_dir, tmp_path):
    base = ["train.py", "--test-run", "--width", "8", "--bit-widths", "8", "2", "1",
            "--mixed-students", "1", "--data-dir", tfds_dir, "--result-path",
            str(tmp_path / "r"), "--mode", "imperative", "--no-tensorboard"]
    first = run_script([*base, "--epochs", "1"])
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_script([*base, "--epochs", "2"])
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Epoch 2/2" in second.stdout and "Epoch 1/2" not in second.stdout
    rows = list(csv.DictReader(open(tmp_path / "r" / "history.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for row in rows:
        assert np.isfinite(float(row["loss_mixed"])) and 0 <= float(row["accuracy_mixed"]) <= 1
        assert "val_loss_mixed" not in row  # validation runs the uniform members only
    config = json.load(open(tmp_path / "r" / "config.json"))
    assert config["mixed_students"] == 1
